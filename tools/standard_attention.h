/*
 * Standard attention: the textbook algorithm that FlashAttention replaces.
 * It materialises the scores S = scale·Q Kᵀ of every (batch, head), turns
 * them into probabilities P = softmax(mask(S)) in place, keeps P for the
 * backward (as an autograd framework does), and multiplies O = P V. The
 * backward uses the kept P: dV = Pᵀ dO, dP = dO Vᵀ, dS = P∘(dP − D) with
 * D = rowsum(dO∘O), dQ = scale·dS K, dK = scale·dSᵀ Q.
 *
 * Everything is fp32 (row statistics in fp64) on contiguous fixed-length
 * tensors in the library's layouts: q (b, sq, hq, d), k (b, sk, hkv, d),
 * v (b, sk, hkv, dv), out (b, sq, hq, dv), lse (b, hq, sq). Supported
 * options: softmax_scale, causal, window, softcap, dropout (the mask from
 * fa_dropout_keep), GQA. Not: varlen, ALiBi, block masks.
 *
 * The matrix products go through a caller-chosen GEMM so that the same
 * algorithm serves as the tool's plain-C reference and as the benchmark's
 * OpenBLAS baseline.
 */
#ifndef FA_STANDARD_ATTENTION_H
#define FA_STANDARD_ATTENTION_H

#include "flashattn.h"
#include "harness.h"

#include <stddef.h>
#include <stdint.h>

/* Row-major C (m, n) = alpha · op(A) (m, k) · op(B) (k, n) + beta · C, with
 * op(X) = Xᵀ when trans_x; lda/ldb/ldc are row strides in elements. With
 * beta = 0, C is not read. */
typedef void (*std_gemm_fn)(int trans_a, int trans_b, int64_t m, int64_t n,
                            int64_t k, float alpha, const float *a, int64_t lda,
                            const float *b, int64_t ldb, float beta, float *c,
                            int64_t ldc);

/* The plain-C GEMM (OpenMP over rows of C, fp32 accumulation). */
void std_gemm_reference(int trans_a, int trans_b, int64_t m, int64_t n,
                        int64_t k, float alpha, const float *a, int64_t lda,
                        const float *b, int64_t ldb, float beta, float *c,
                        int64_t ldc);

/* Bytes of the kept probabilities P: (b, hq, sq, sk) fp32. */
size_t std_probs_bytes(const fa_attn *attn);
/* Bytes of the scratch: one (sq, sk) fp32 matrix per buffer; the forward
 * needs 1 with dropout (else 0), the backward 1, or 2 with dropout. */
size_t std_scratch_bytes(const fa_attn *attn, int backward);

/* out, lse and probs (std_probs_bytes) are written; scratch as above. */
int std_forward(const fa_attn *attn, std_gemm_fn gemm, const float *q,
                const float *k, const float *v, float *out, float *lse,
                float *probs, float *scratch);

/* probs, out and lse from std_forward with the same inputs. */
int std_backward(const fa_attn *attn, std_gemm_fn gemm, const float *q,
                 const float *k, const float *v, const float *out,
                 const float *lse, const float *probs, const float *dout,
                 float *dq, float *dk, float *dv, float *scratch);

/* Standard attention as a measured job (tools/harness.h): phase 0 forward,
 * phase 1 backward, P kept in between. With attn->dtype f32 the tensors are
 * used as they are; with f16/bf16 the inputs are converted to fp32 and the
 * results back inside the timed calls (the backward converts only dout: the
 * fp32 q, k, v, out of the forward are kept, as autograd would). */
typedef struct std_job_args {
    const fa_attn *attn;
    std_gemm_fn gemm;
    int threads;                      /* OpenMP threads; 0 = default */
    void (*set_threads)(int threads); /* also called in the job, e.g. the
                                         BLAS's; NULL if none */
    h_tensors tensors;
} std_job_args;

h_job std_job(std_job_args *args, int warmup, int reps);

#endif /* FA_STANDARD_ATTENTION_H */
