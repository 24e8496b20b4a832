/*
 * Internal interface between the public API (validation + dispatch, in
 * src/api.c and src/dispatch.c) and the backends (src/cpu/, src/cuda/).
 *
 * The API validates every argument, resolves defaults, and hands a backend a
 * fa_problem in which everything is explicit: head_dim_v set, the scale
 * resolved, causal folded into window_right = 0, strides and pointers as
 * given. A backend may assume the problem is valid; it still returns a
 * status (out of memory, device error, unsupported combination).
 */
#ifndef FA_INTERNAL_H
#define FA_INTERNAL_H

#include "flashattn.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__CUDACC__)
#  define FA_HOSTDEV __host__ __device__ __forceinline__
#else
#  define FA_HOSTDEV static inline
#endif

/* ---------------------------------------------------------------------- */
/* Errors: set the thread-local message and return the status.            */

/* printf-style; returns status so that callers can `return fa_fail(...)`. */
fa_status fa_fail(fa_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void fa_clear_error(void);

/* ---------------------------------------------------------------------- */
/* Problem                                                                 */

typedef enum fa_direction { FA_FORWARD = 0, FA_BACKWARD = 1 } fa_direction;

typedef struct fa_problem {
    /* shapes (seqlen_q/k are the max over the batch for varlen) */
    int64_t batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, head_dim_v;
    fa_dtype dtype;

    /* varlen: both non-NULL, pointers on the context's device; the host
     * copies are always valid (the API copies device cu_seqlens to host
     * for validation and keeps them for backends that need them). */
    int varlen;
    const int32_t *cu_seqlens_q, *cu_seqlens_k;           /* device */
    const int32_t *cu_seqlens_q_host, *cu_seqlens_k_host; /* host */
    int64_t total_q, total_k; /* varlen: cu_seqlens[batch]; else b*s */

    /* resolved options */
    float softmax_scale;          /* > 0 */
    int64_t window_left;          /* -1 = unbounded; else < seqlen_k */
    int64_t window_right;         /* -1 = unbounded; else < seqlen_q; 0
                                     when causal */
    int causal;                   /* informational: window_right == 0 came
                                     from causal */
    float softcap;                /* 0 = off */
    const float *alibi_slopes;    /* NULL = off */
    int64_t alibi_stride_batch;
    float dropout_p;              /* 0 = off */
    uint64_t dropout_seed, dropout_offset;
    const uint8_t *block_mask;    /* NULL = dense */
    int64_t block_size_q, block_size_k;
    int64_t block_mask_blocks_q, block_mask_blocks_k;
    int64_t block_mask_stride_batch, block_mask_stride_head;
    int deterministic;

    /* tensors (dout, dq, dk, dv only for the backward) */
    fa_tensor q, k, v, out, dout, dq, dk, dv;
    float *lse;                   /* forward: may be NULL */

    /* execution */
    void *workspace;              /* at least the backend's size */
    size_t workspace_size;
    int num_threads;              /* CPU: resolved, >= 1 */
    void *stream;                 /* CUDA stream */
    const char *kernel_name;      /* set by the backend: what ran */

    /* KV cache (forward only; last, so that the fields before keep their
     * offsets in the kernels' parameter blocks). seqused_k: NULL, or each
     * sequence's used key count (device; the host copy is always valid).
     * Paged K/V (kv_block_table != NULL, on the context's device): k and v
     * are (pages, kv_page_size, heads_kv, dim), see fa_attn. */
    const int32_t *seqused_k, *seqused_k_host;
    const int32_t *kv_block_table;
    int64_t kv_block_table_stride, kv_page_size, kv_num_pages;

    /* FP8 forward (dtype e4m3 / e5m2; out is bf16): descales on the
     * context's device, NULL = 1; blocks of rows as fa_attn says, resolved:
     * descale_block_x is the block's rows (the longest sequence where the
     * caller gave 0), descale_blocks_x the blocks per (batch, head). */
    const float *q_descale, *k_descale, *v_descale;
    int64_t descale_block_q, descale_block_k;
    int64_t descale_blocks_q, descale_blocks_k;
} fa_problem;

/* ---------------------------------------------------------------------- */
/* Validation shared by the entry points (src/api.c)                       */

/* A view of (outer, rows, heads, dim) elements (outer ignored for a packed
 * varlen tensor): data non-NULL where it touches any element, strides
 * non-negative, no two elements at one address (each stride clears the
 * span of the dimensions inside it; the innermost is contiguous), every
 * offset within int64. `name` goes into the message. */
fa_status fa_check_view(const char *name, const fa_tensor *t, int64_t outer,
                        int64_t rows, int64_t heads, int64_t dim, int varlen);
/* Host cu_seqlens of batch + 1 entries: [0] = 0, non-decreasing, each
 * length <= max_seqlen. */
fa_status fa_check_cu_seqlens(const char *name, const int32_t *host,
                              int64_t batch, int64_t max_seqlen);

/* ---------------------------------------------------------------------- */
/* FP8                                                                     */

FA_HOSTDEV int fa_dtype_is_fp8(fa_dtype dtype)
{
    return dtype == FA_DTYPE_FP8_E4M3 || dtype == FA_DTYPE_FP8_E5M2;
}

/* The dtype of out: that of q, k, v, except bf16 for an FP8 forward. */
FA_HOSTDEV fa_dtype fa_out_dtype(fa_dtype dtype)
{
    return fa_dtype_is_fp8(dtype) ? FA_DTYPE_BF16 : dtype;
}

/* Exponent and mantissa bits of the two formats (OCP 8-bit floats). */
#define FA_FP8_E4M3_MAX 448.0f
#define FA_FP8_E5M2_MAX 57344.0f

/* The value of an 8-bit float (e4m3: 0x7f / 0xff are NaN, no infinity;
 * e5m2: IEEE-like with infinities): normal values by moving the fields
 * into a float's, subnormals as mantissa · 2^(1 - bias - mbits). */
static inline float fa_fp8_to_f32(uint8_t bits, fa_dtype dtype)
{
    const int e5m2 = dtype == FA_DTYPE_FP8_E5M2;
    const int mbits = e5m2 ? 2 : 3, bias = e5m2 ? 15 : 7, exp_max = e5m2 ? 31 : 15;
    const uint32_t exp = (bits & 0x7fu) >> mbits, mant = bits & ((1u << mbits) - 1);
    const uint32_t sign = (uint32_t)(bits & 0x80u) << 24;
    uint32_t f;
    if (exp == (uint32_t)exp_max && (e5m2 || mant == 7))
        f = sign | 0x7f800000u | (mant ? 0x400000u : 0); /* NaN, or e5m2's infinity */
    else if (exp == 0) {
        float sub = (float)mant * (e5m2 ? 1.0f / 65536.0f : 1.0f / 512.0f);
        return (bits & 0x80u) ? -sub : sub;
    } else
        f = sign | ((exp - (uint32_t)bias + 127u) << 23) | (mant << (23 - mbits));
    float value;
    memcpy(&value, &f, sizeof value);
    return value;
}

/* x rounded to the nearest 8-bit float (ties to even), saturated to the
 * largest finite value (as cvt.satfinite); NaN becomes 0x7f, whatever its
 * sign (as the GPU's conversion gives it). */
static inline uint8_t fa_f32_to_fp8(float x, fa_dtype dtype)
{
    const int e5m2 = dtype == FA_DTYPE_FP8_E5M2;
    const int mbits = e5m2 ? 2 : 3, bias = e5m2 ? 15 : 7;
    const float max = e5m2 ? FA_FP8_E5M2_MAX : FA_FP8_E4M3_MAX;
    const uint8_t sign = signbit(x) ? 0x80 : 0;
    if (isnan(x))
        return 0x7f;
    float a = fabsf(x);
    if (a >= max) /* the largest finite: 0x7e (e4m3), 0x7b (e5m2) */
        return (uint8_t)(sign | (e5m2 ? 0x7b : 0x7e));
    /* the spacing of the values around a: that of the subnormals below
     * 2^(1 - bias), else 2^(exponent - mbits) */
    int e;
    frexpf(a, &e); /* a = f 2^e, f in [0.5, 1) */
    int quantum_exp = (e - 1 < 1 - bias ? 1 - bias : e - 1) - mbits;
    float q = ldexpf(nearbyintf(ldexpf(a, -quantum_exp)), quantum_exp);
    if (q > max)
        q = max;
    if (q < ldexpf(1.0f, 1 - bias)) /* subnormal (or 0) */
        return (uint8_t)(sign | (int)ldexpf(q, bias - 1 + mbits));
    frexpf(q, &e);
    int mant = (int)ldexpf(q, mbits - (e - 1)) - (1 << mbits);
    return (uint8_t)(sign | ((e - 1 + bias) << mbits) | mant);
}

/* ---------------------------------------------------------------------- */
/* Helpers shared by every backend (host and device)                       */

/* Token range of sequence b: rows [q0, q0+sq) of q/out and [k0, k0+sk) of
 * k/v, in the packed index space for varlen, per-batch for fixed. */
typedef struct fa_seq {
    int64_t q0, sq, k0, sk;
} fa_seq;

FA_HOSTDEV fa_seq fa_seq_of(int varlen, const int32_t *cu_q, const int32_t *cu_k,
                            const int32_t *seqused_k, int64_t seqlen_q, int64_t seqlen_k,
                            int64_t b)
{
    fa_seq s;
    if (varlen) {
        s.q0 = cu_q[b];
        s.sq = cu_q[b + 1] - cu_q[b];
        s.k0 = cu_k[b];
        s.sk = cu_k[b + 1] - cu_k[b];
    } else {
        s.q0 = 0;
        s.sq = seqlen_q;
        s.k0 = 0;
        s.sk = seqlen_k;
    }
    if (seqused_k)
        s.sk = seqused_k[b];
    return s;
}

/* Element offset of row `row` (within sequence b, already including q0/k0
 * for varlen) and head h. */
FA_HOSTDEV int64_t fa_row_offset(const fa_tensor *t, int varlen, int64_t b,
                                 int64_t row, int64_t h)
{
    return (varlen ? 0 : b * t->stride_batch) + row * t->stride_seq +
           h * t->stride_head;
}

/* Element offset of key position j of sequence b (j counted from the
 * sequence's first key k0) in K/V head h: through the page table when the
 * cache is paged (then k0 is 0), else as fa_row_offset. */
FA_HOSTDEV int64_t fa_kv_row_offset(const fa_tensor *t, int varlen, const int32_t *block_table,
                                    int64_t table_stride, int64_t page_size, int64_t b,
                                    int64_t k0, int64_t j, int64_t h)
{
    if (block_table) {
        int64_t page = block_table[b * table_stride + j / page_size];
        return page * t->stride_batch + (j % page_size) * t->stride_seq + h * t->stride_head;
    }
    return fa_row_offset(t, varlen, b, k0 + j, h);
}

/* Index into lse: (batch, heads_q, seqlen_q) fixed, (heads_q, total_q)
 * varlen; `row` as for fa_row_offset. */
FA_HOSTDEV int64_t fa_lse_index(int varlen, int64_t b, int64_t h, int64_t row,
                                int64_t heads_q, int64_t seqlen_q,
                                int64_t total_q)
{
    return varlen ? h * total_q + row : (b * heads_q + h) * seqlen_q + row;
}

/* Visible-key range [*lo, *hi) of query row i for the window (bottom-right
 * aligned); empty when *lo >= *hi. Block masks are applied separately. */
FA_HOSTDEV void fa_window_range(int64_t i, int64_t sq, int64_t sk,
                                int64_t window_left, int64_t window_right,
                                int64_t *lo, int64_t *hi)
{
    int64_t shift = sk - sq;
    int64_t l = window_left < 0 ? 0 : i + shift - window_left;
    int64_t h = window_right < 0 ? sk : i + shift + window_right + 1;
    *lo = l < 0 ? 0 : l;
    *hi = h > sk ? sk : h;
}

/* ---------------------------------------------------------------------- */
/* Philox4x32-10 (Salmon et al., SC'11), the dropout stream.               */

typedef struct fa_u32x4 {
    uint32_t x[4];
} fa_u32x4;

FA_HOSTDEV fa_u32x4 fa_philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2,
                                     uint32_t c3, uint32_t k0, uint32_t k1)
{
    const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
    const uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
    for (int round = 0; round < 10; ++round) {
        uint64_t p0 = (uint64_t)M0 * c0;
        uint64_t p1 = (uint64_t)M1 * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        uint32_t n0 = hi1 ^ c1 ^ k0;
        uint32_t n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
        k0 += W0;
        k1 += W1;
    }
    fa_u32x4 r;
    r.x[0] = c0;
    r.x[1] = c1;
    r.x[2] = c2;
    r.x[3] = c3;
    return r;
}

/* Drop threshold: an element is dropped iff its word r < threshold. */
FA_HOSTDEV uint32_t fa_dropout_threshold(float p)
{
    double t = (double)p * 4294967296.0;
    if (!(t > 0.0)) /* p <= 0 or NaN: keep everything */
        return 0;
    return t >= 4294967295.0 ? 0xffffffffu : (uint32_t)t;
}

/* The Philox subsequence of (b, h): offset + b·heads_q + h, modulo 2^64
 * as the definition says (unsigned: never an overflow). */
FA_HOSTDEV uint64_t fa_dropout_subsequence(uint64_t offset, int64_t heads_q,
                                           int64_t b, int64_t h)
{
    return offset + (uint64_t)b * (uint64_t)heads_q + (uint64_t)h;
}

/* The four random words for columns 4*(j>>2) .. 4*(j>>2)+3 of row i of
 * (b, h): see fa_dropout_keep() in flashattn.h. */
FA_HOSTDEV fa_u32x4 fa_dropout_words(uint64_t seed, uint64_t offset,
                                     int64_t heads_q, int64_t b, int64_t h,
                                     int64_t i, int64_t j)
{
    uint64_t sub = fa_dropout_subsequence(offset, heads_q, b, h);
    return fa_philox4x32_10((uint32_t)((uint64_t)j >> 2), (uint32_t)i,
                            (uint32_t)sub, (uint32_t)(sub >> 32),
                            (uint32_t)seed, (uint32_t)(seed >> 32));
}

/* ---------------------------------------------------------------------- */
/* Backends                                                                */

/* CPU (src/cpu/). Pointers are host memory. */
size_t fa_cpu_workspace_size(const fa_problem *p, fa_direction dir);
fa_status fa_cpu_forward(fa_problem *p);
fa_status fa_cpu_backward(fa_problem *p);
/* "avx512", "avx2" or "scalar": the vector path this machine runs. */
const char *fa_cpu_isa(void);
/* Number of cores (the default thread count). */
int fa_cpu_num_cores(void);

#ifdef FA_HAVE_CUDA
/* CUDA runtime glue (src/cuda/runtime.cu). */
typedef struct fa_cuda_device_info {
    int sm;          /* 10*major + minor, e.g. 90 */
    int num_sms;
    size_t smem_per_block_optin;
} fa_cuda_device_info;
fa_status fa_cuda_device_query(int device_index, fa_cuda_device_info *info);
fa_status fa_cuda_set_device(int device_index);
fa_status fa_cuda_malloc(void **ptr, size_t bytes, void *stream);
void fa_cuda_free(void *ptr, void *stream);
fa_status fa_cuda_copy_to_host(void *dst, const void *src, size_t bytes,
                               void *stream); /* synchronous */

/* Portable tensor-core kernels (src/cuda/sm80/). supports() returns
 * FA_SUCCESS or FA_ERROR_UNSUPPORTED with a message saying why. */
fa_status fa_sm80_supports(const fa_problem *p, fa_direction dir,
                           const fa_cuda_device_info *dev);
size_t fa_sm80_workspace_size(const fa_problem *p, fa_direction dir, const fa_cuda_device_info *dev);
/* dev: the context's device (its shared memory per block picks the tiles,
 * its SM count orders the grid and plans the forward's key split and the
 * backward's last-wave split) */
fa_status fa_sm80_forward(fa_problem *p, const fa_cuda_device_info *dev);
/* Nonzero where the sm80 forward's key split runs p on a grid much smaller
 * than the GPU (decoding): the dispatcher then prefers it to sm90's
 * unsplit forward (not to sm90's split: fa_sm90_forward_splits). */
int fa_sm80_forward_prefers_split(const fa_problem *p, const fa_cuda_device_info *dev);
fa_status fa_sm80_backward(fa_problem *p, const fa_cuda_device_info *dev);

/* Hopper kernels (src/cuda/sm90/). */
fa_status fa_sm90_supports(const fa_problem *p, fa_direction dir,
                           const fa_cuda_device_info *dev);
size_t fa_sm90_workspace_size(const fa_problem *p, fa_direction dir, const fa_cuda_device_info *dev);
/* dev: the context's device (its SM count orders the grid, and plans the
 * forward's key split) */
fa_status fa_sm90_forward(fa_problem *p, const fa_cuda_device_info *dev);
fa_status fa_sm90_backward(fa_problem *p, const fa_cuda_device_info *dev);
size_t fa_sm90_backward_workspace_size(const fa_problem *p);
/* The forward's workspace: the FP8 Vᵀ pass's copy (fa_sm90_fp8_vt_bytes,
 * 0 for other dtypes) and the key split's partial results. */
size_t fa_sm90_fp8_vt_bytes(const fa_problem *p);
size_t fa_sm90_forward_workspace_size(const fa_problem *p, const fa_cuda_device_info *dev);
/* Nonzero where the sm90 forward runs p as a key split (decoding). */
int fa_sm90_forward_splits(const fa_problem *p, const fa_cuda_device_info *dev);
#endif

#ifdef __cplusplus
}
#endif

#endif /* FA_INTERNAL_H */
