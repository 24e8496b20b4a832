/*
 * Naive attention, forward and backward, written from the definitions in
 * flashattn.h (one score row at a time, no tiling, no online softmax) for
 * the tests to compare the library against.
 *
 * Two precisions from the same code:
 *  - exact: every operation in float64 (the ground truth);
 *  - naive low precision (emulate = 1): what a straightforward framework
 *    implementation in the low dtype computes — float32 arithmetic, with P
 *    (and dS in the backward) rounded to the dtype before their matmuls and
 *    the outputs rounded to the dtype (an FP8 forward: ref_set_lowp). Its
 *    error against the exact result scales the tolerance of the tested path
 *    (FlashAttention's test rule).
 *
 * Arrays are dense, in token-major "packed" order whatever the library's
 * layout: q (total_q, heads_q, d), k (total_k, heads_kv, d),
 * v (total_k, heads_kv, dv), out/dout (total_q, heads_q, dv),
 * lse (heads_q, total_q). Sequence b owns rows [q_start[b], +q_len[b]) and
 * [k_start[b], +k_len[b]); fixed-length batches are the special case
 * q_start[b] = b * seqlen_q.
 */
#ifndef FA_TEST_REFERENCE_H
#define FA_TEST_REFERENCE_H

#include "flashattn.h"

#include <stdint.h>

typedef struct ref_problem {
    int64_t batch, heads_q, heads_kv, head_dim, head_dim_v;
    const int64_t *q_start, *q_len, *k_start, *k_len; /* [batch] */
    int64_t total_q, total_k;

    double softmax_scale;         /* resolved (> 0) */
    int64_t window_left;          /* -1 = unbounded */
    int64_t window_right;         /* -1 = unbounded; causal folded in as 0 */
    double softcap;               /* 0 = off */
    const float *alibi_slopes;    /* host, NULL = off */
    int64_t alibi_stride_batch;
    float dropout_p;
    uint64_t dropout_seed, dropout_offset;
    const uint8_t *block_mask;    /* host, NULL = dense */
    int64_t block_size_q, block_size_k, blocks_k;
    int64_t block_mask_stride_batch, block_mask_stride_head;

    int emulate;                  /* 0: float64; 1: naive low precision */
    fa_dtype lowp;                /* the dtype emulate rounds the backward
                                     to (P, dS, the gradients) ... */
    fa_dtype prob_dtype;          /* ... P before P·V in the forward ... */
    fa_dtype out_dtype;           /* ... and out: ref_set_lowp() sets all
                                     three */
} ref_problem;

/*
 * The naive model of a problem in dtype: everything rounded to dtype, but
 * for an FP8 forward (FP8 q, k, v given dequantized: stored value ×
 * descale) what an FP8 kernel does: P rounded to e4m3 (whatever the input
 * format: the tensor cores' operand) and out to bf16. The P an FP8 kernel
 * rounds is exp(s - row max) in (0, 1], normalized after P·V; so is the
 * model's (normalized probabilities of a long row would sit in e4m3's
 * subnormals, a model no kernel follows).
 */
void ref_set_lowp(ref_problem *p, fa_dtype dtype);

/* Is key j visible to query i of sequence b, head h (window + block mask)? */
int ref_visible(const ref_problem *p, int64_t b, int64_t h, int64_t i,
                int64_t j);

/*
 * Magnitudes (optional, exact mode): the same sums with every term's
 * absolute value, e.g. Σ_j |P_j v_j| for out, scale·Σ_x |q_x k_x| for a
 * score. A float32 implementation's rounding error of an element is a
 * small multiple of u32 times its magnitude whatever the summation order;
 * where terms cancel (a gradient that is exactly 0 because a row sees one
 * key) the magnitude, not the result, says how much noise is legitimate.
 */

/* out (total_q, hq, dv), lse (hq, total_q); fully masked rows: 0 / -inf.
 * out_mag, lse_mag: NULL or arrays shaped like out, lse. */
void ref_forward(const ref_problem *p, const double *q, const double *k,
                 const double *v, double *out, double *lse, double *out_mag,
                 double *lse_mag);

/* dq (total_q, hq, d), dk (total_k, hkv, d), dv (total_k, hkv, dv).
 * out is the forward output used for D = rowsum(dout ∘ out).
 * mag: NULL, or three arrays shaped like dq, dk, dv. */
void ref_backward(const ref_problem *p, const double *q, const double *k,
                  const double *v, const double *out, const double *dout,
                  double *dq, double *dk, double *dv, double *const *mag);

#endif /* FA_TEST_REFERENCE_H */
