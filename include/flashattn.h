/*
 * flashattn — exact, IO-aware attention (FlashAttention) in C.
 *
 * This is the library's one public header. It computes
 *
 *     out = softmax(mask(scale · Q Kᵀ)) V        (per batch and query head)
 *
 * without ever materialising the seqlen_q × seqlen_k score matrix: Q, K and V
 * are walked in tiles with an online softmax (running row max and row sum),
 * and the backward pass recomputes the scores per tile from the saved
 * log-sum-exp (LSE). Extra memory is O(seqlen), not O(seqlen²).
 *
 * Backends: a vectorized, multithreaded CPU backend (always present, also
 * the reference the GPU paths are tested against) and CUDA backends for
 * sm80+ and Hopper (sm90a) when the library was built with CUDA. One entry
 * point per direction serves all of them; the context says where the
 * pointers live (host memory or CUDA device memory) and which stream to use.
 *
 * Conventions
 *  - Every function returns an fa_status. On failure it writes nothing to
 *    its outputs and fa_last_error() returns a thread-local message that
 *    names the offending argument and value. The library never aborts,
 *    exits or asserts on user input.
 *  - Sizes are int64_t; strides are in elements (not bytes); the last
 *    (head_dim) dimension of every tensor is contiguous.
 *  - Outputs (out, lse; dq, dk, dv) must not share memory with the inputs
 *    (checked by address range, so a buffer interleaving an output with an
 *    input is refused too); dq, dk and dv may interleave in one buffer but
 *    not start at the same address.
 *  - Layouts follow FlashAttention (flash_attn_func):
 *      q   (batch, seqlen_q, heads_q,  head_dim)
 *      k   (batch, seqlen_k, heads_kv, head_dim)
 *      v   (batch, seqlen_k, heads_kv, head_dim_v)
 *      out (batch, seqlen_q, heads_q,  head_dim_v)
 *      lse fp32, contiguous (batch, heads_q, seqlen_q)
 *    Variable-length batches (flash_attn_varlen_func): the tensors are
 *    packed (total_tokens, heads, dim), stride_batch is ignored,
 *    cu_seqlens_q/k (int32, batch+1 entries, starting at 0, non-decreasing)
 *    give each sequence's token range, and lse is (heads_q, total_q).
 */
#ifndef FLASHATTN_H
#define FLASHATTN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------- */
/* Version                                                                 */

#define FA_VERSION_MAJOR 0
#define FA_VERSION_MINOR 1
#define FA_VERSION_PATCH 0
#define FA_VERSION_NUMBER \
    (FA_VERSION_MAJOR * 10000 + FA_VERSION_MINOR * 100 + FA_VERSION_PATCH)

#if defined(_WIN32) && defined(FLASHATTN_SHARED)
#  ifdef FLASHATTN_BUILDING
#    define FA_API __declspec(dllexport)
#  else
#    define FA_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__)
#  define FA_API __attribute__((visibility("default")))
#else
#  define FA_API
#endif

/* The library's version as FA_VERSION_NUMBER; compare with the macro to
 * detect a header/library mismatch. */
FA_API unsigned fa_version(void);
/* "MAJOR.MINOR.PATCH". */
FA_API const char *fa_version_string(void);

/* ---------------------------------------------------------------------- */
/* Status                                                                  */

typedef enum fa_status {
    FA_SUCCESS = 0,
    FA_ERROR_INVALID_ARGUMENT = 1, /* a caller error; see fa_last_error() */
    FA_ERROR_UNSUPPORTED = 2,      /* valid, but this backend/build cannot
                                      do it: the caller may fall back */
    FA_ERROR_OUT_OF_MEMORY = 3,
    FA_ERROR_DEVICE = 4,           /* a CUDA runtime/driver error */
    FA_ERROR_INTERNAL = 5
} fa_status;

/* A static string naming the status ("success", "invalid argument", ...). */
FA_API const char *fa_status_string(fa_status status);
/* The detail message of the last failed call on this thread ("" if none). */
FA_API const char *fa_last_error(void);

/* ---------------------------------------------------------------------- */
/* Types                                                                   */

typedef enum fa_dtype {
    FA_DTYPE_F32 = 0,
    FA_DTYPE_F16 = 1,
    FA_DTYPE_BF16 = 2,
    FA_DTYPE_FP8_E4M3 = 3, /* q, k, v of an FP8 forward (fa_attn): OCP e4m3,
                              max 448, NaN 0x7f / 0xff, no infinity */
    FA_DTYPE_FP8_E5M2 = 4  /* OCP e5m2 (IEEE-like, max 57344) */
} fa_dtype;

/* Size of one element in bytes (0 for an unknown dtype). */
FA_API size_t fa_dtype_size(fa_dtype dtype);
FA_API const char *fa_dtype_name(fa_dtype dtype);

typedef enum fa_device {
    FA_DEVICE_CPU = 0,  /* pointers are host memory */
    FA_DEVICE_CUDA = 1  /* pointers are CUDA device memory */
} fa_device;

typedef enum fa_backend {
    FA_BACKEND_AUTO = 0,      /* the fastest backend that supports the call */
    FA_BACKEND_CPU = 1,
    FA_BACKEND_CUDA_SM80 = 2, /* portable tensor-core kernels (sm80+) */
    FA_BACKEND_CUDA_SM90 = 3  /* Hopper TMA + WGMMA kernels (sm90a) */
} fa_backend;

FA_API const char *fa_backend_name(fa_backend backend);
/* 1 if this build contains the backend (CUDA ones also need a GPU at run
 * time to be used), 0 otherwise. */
FA_API int fa_backend_compiled(fa_backend backend);

/* A tensor view: data pointer plus strides, in elements, of the three outer
 * dimensions (batch, sequence, head). The innermost dimension is contiguous.
 * For packed variable-length tensors stride_batch is ignored and stride_seq
 * is the stride between tokens. */
typedef struct fa_tensor {
    void *data;
    int64_t stride_batch;
    int64_t stride_seq;
    int64_t stride_head;
} fa_tensor;

/* A dense tensor of shape (batch, seqlen, heads, dim) with no padding. */
FA_API fa_tensor fa_tensor_contiguous(void *data, int64_t seqlen,
                                      int64_t heads, int64_t dim);

/* ---------------------------------------------------------------------- */
/* Problem description                                                     */

/*
 * Shapes and options of one attention call. Fill it with fa_attn_init()
 * (which sets every default), then change what you need. The same struct is
 * passed to the forward and the backward pass.
 *
 * Masking, in FlashAttention's semantics. Let row i in [0, seqlen_q) and
 * column j in [0, seqlen_k) of one sequence, and shift = seqlen_k - seqlen_q
 * (the diagonal is aligned to the bottom-right corner). Key j is visible to
 * query i iff
 *     (window_left  < 0 or j >= i + shift - window_left) and
 *     (window_right < 0 or j <= i + shift + window_right) and
 *     the block (i / block_size_q, j / block_size_k) is on in block_mask.
 * causal is window_right = 0 (window_left is kept). A row with no visible
 * key has out = 0 and lse = -inf.
 *
 * Score of a visible (i, j):
 *     s = softmax_scale · q_i·k_j
 *     if softcap > 0:  s = softcap · tanh(s / softcap)
 *     if alibi_slopes: s -= slope · |i + shift - j|
 * Dropout (dropout_p > 0) zeroes each probability with probability p and
 * scales the kept ones by 1/(1-p); the mask is a pure function of
 * (dropout_seed, dropout_offset, batch index, query head, i, j), drawn from
 * Philox4x32-10 as fa_dropout_keep() defines, so that every backend
 * reproduces the same mask.
 */
typedef struct fa_attn {
    /* shapes */
    int64_t batch;
    int64_t seqlen_q;        /* fixed-length: every sequence's length;
                                varlen: max_seqlen_q */
    int64_t seqlen_k;        /* likewise (max_seqlen_k for varlen) */
    int64_t heads_q;
    int64_t heads_kv;        /* heads_q % heads_kv == 0 (GQA / MQA) */
    int64_t head_dim;        /* 1..256 */
    int64_t head_dim_v;      /* 1..256; 0 means equal to head_dim */
    fa_dtype dtype;          /* of q, k, v, out, dout, dq, dk, dv */

    /* variable-length batches: both NULL for fixed-length. Pointers live on
     * the context's device. total_q = cu_seqlens_q[batch]. */
    const int32_t *cu_seqlens_q;
    const int32_t *cu_seqlens_k;

    /* options */
    float softmax_scale;     /* 0 means 1/sqrt(head_dim); at most 1e30 */
    int causal;              /* bottom-right aligned */
    int64_t window_left;     /* -1 = unbounded */
    int64_t window_right;    /* -1 = unbounded */
    float softcap;           /* 0 = off; at most 1e4 (the score's error is
                                ~1e-7·softcap) */

    const float *alibi_slopes;   /* NULL = off; fp32 (batch?, heads_q) */
    int64_t alibi_stride_batch;  /* 0: one slope per head; heads_q: per
                                    batch × head */

    float dropout_p;         /* in [0, 1) */
    uint64_t dropout_seed;
    uint64_t dropout_offset;

    /* Block-sparse attention (FlashAttention §3.3): NULL = dense. A uint8
     * mask, 0 = skip the block, over (batch, heads_q, num_blocks_q,
     * num_blocks_k) with num_blocks_x = ceil(seqlen_x / block_size_x); the
     * last two dims contiguous, the outer two strided (0 broadcasts).
     * Skipped blocks cost no work. */
    const uint8_t *block_mask;
    int64_t block_size_q;
    int64_t block_size_k;
    int64_t block_mask_blocks_q;  /* must equal ceil(seqlen_q/block_size_q) */
    int64_t block_mask_blocks_k;  /* must equal ceil(seqlen_k/block_size_k) */
    int64_t block_mask_stride_batch;
    int64_t block_mask_stride_head;

    int deterministic;       /* backward: bit-identical results run to run */

    /* KV-cache inference (forward only: fa_backward refuses both).
     *
     * seqused_k: NULL, or int32 (batch) on the context's device: sequence b
     * attends to its first seqused_k[b] keys only (0 <= seqused_k[b] <= its
     * key length: seqlen_k, or its cu_seqlens_k range for varlen), as
     * FlashAttention's seqused_k. The mask's bottom-right alignment uses
     * the used length: shift = seqused_k[b] - seqlen_q. Keys past it take
     * no part: whatever they hold (NaN included) never reaches the
     * output.
     *
     * kv_block_table: NULL for k and v as described above; else the K/V
     * cache is paged (vLLM's layout, flash_attn_with_kvcache's block_table):
     * k is (kv_num_pages, kv_page_size, heads_kv, head_dim) and v
     * (kv_num_pages, kv_page_size, heads_kv, head_dim_v), stride_batch
     * stepping between pages, and key position j of sequence b lives in
     * page kv_block_table[b * kv_block_table_stride + j / kv_page_size] at
     * row j % kv_page_size. int32 on the context's device; entries for the
     * positions a sequence uses must be in [0, kv_num_pages) (pages may be
     * shared between sequences); the others are never read. Fixed-length q only (no cu_seqlens);
     * every sequence has seqlen_k keys, or seqused_k[b]. Any page size
     * >= 1. */
    const int32_t *seqused_k;
    const int32_t *kv_block_table;
    int64_t kv_block_table_stride; /* entries; >= ceil(seqlen_k / page) */
    int64_t kv_page_size;          /* rows per page, >= 1 */
    int64_t kv_num_pages;          /* pages in k and v, >= 1 */

    /* FP8 forward (dtype FA_DTYPE_FP8_E4M3 / _E5M2; forward only, as
     * FlashAttention-3's): q, k and v hold 8-bit floats; out is bf16 (lse
     * fp32 as always).
     *
     * Block quantization (FlashAttention-3 §3.3): an element's value is its
     * stored value times the descale of its block:
     *   q_descale: fp32 (batch, heads_q, ceil(seqlen_q / descale_block_q))
     *   k_descale, v_descale: fp32 (batch, heads_kv,
     *                               ceil(seqlen_k / descale_block_k))
     * contiguous, on the context's device; NULL = 1 everywhere. Block i of
     * sequence b covers its rows [i·block, (i + 1)·block) (varlen: counted
     * from the sequence's start, and the arrays' last dim comes from
     * seqlen_x as passed here, the longest: quantize with the same seqlen).
     * A block size of 0 is one block per sequence (one scale per batch
     * entry and head, FlashAttention-3's per-head descales). Descales must
     * be finite and > 0: checked on the host where the KV-cache checks are
     * on (fa_context_set_kv_cache_checks), trusted otherwise; the Hopper
     * kernel also needs each q_descale·k_descale and the ratios of one
     * head's block descales within float's normal range.
     * fa_quantize_fp8() makes such tensors, optionally with incoherent
     * processing. The Hopper kernel takes head_dim = head_dim_v = 128 or
     * 256, descale blocks of 0 or a multiple of 128 rows, and neither a
     * paged cache, dropout, ALiBi nor a block mask; the CPU backend any.
     * No GPU kernel of an older architecture runs FP8. */
    const float *q_descale;
    const float *k_descale;
    const float *v_descale;
    int64_t descale_block_q;       /* rows per q descale, 0 = the sequence */
    int64_t descale_block_k;       /* rows per k / v descale, likewise */
} fa_attn;

/* Defaults: no options, window (-1, -1), softmax_scale 0, dtype f32,
 * every shape 0 (the caller must set them). */
FA_API void fa_attn_init(fa_attn *attn);

/* ---------------------------------------------------------------------- */
/* Context                                                                 */

/*
 * Where the data lives and how to run: the device (host memory or one CUDA
 * device), the CUDA stream, the CPU thread count, the backend choice, and a
 * cached workspace. A context is not thread-safe: use one per thread.
 */
typedef struct fa_context fa_context;

/* device_index is the CUDA ordinal (ignored for FA_DEVICE_CPU). Returns
 * FA_ERROR_UNSUPPORTED for FA_DEVICE_CUDA in a build without CUDA or on a
 * machine without a GPU. */
FA_API fa_status fa_context_create(fa_context **ctx, fa_device device,
                                   int device_index);
/* Accepts NULL. */
FA_API void fa_context_destroy(fa_context *ctx);

/* The CUDA stream (a cudaStream_t; NULL = the default stream). */
FA_API fa_status fa_context_set_stream(fa_context *ctx, void *stream);
/* CPU worker threads, 0..FA_MAX_THREADS; 0 = all cores (the default). */
#define FA_MAX_THREADS 1024
FA_API fa_status fa_context_set_num_threads(fa_context *ctx, int threads);
/* Force a backend, or FA_BACKEND_AUTO (the default). A forced backend that
 * cannot run the call returns FA_ERROR_UNSUPPORTED. */
FA_API fa_status fa_context_set_backend(fa_context *ctx, fa_backend backend);
/* Whether the forward checks seqused_k, kv_block_table and the FP8
 * descales (fa_attn) on a CUDA context: 1 (the default) copies them to the
 * host and checks every length, used page and descale before the call,
 * which waits for the stream; 0 trusts them, so that a decoding step
 * neither waits nor copies (and can be captured in a CUDA graph): a length
 * or page out of range, or a descale that is not finite and > 0, is then
 * undefined behavior, as in FlashAttention. cu_seqlens are always read.
 * CPU contexts always check (no copy, no wait). */
FA_API fa_status fa_context_set_kv_cache_checks(fa_context *ctx, int check);
/* The name of the kernel the last successful call ran (e.g. "cpu.avx512",
 * "sm90.fwd.hdim128"), for debug and benchmark output. */
FA_API const char *fa_context_last_kernel(const fa_context *ctx);

/* ---------------------------------------------------------------------- */
/* Forward and backward                                                    */

/*
 * Workspace: scratch memory on the context's device. Query the size, then
 * pass at least that much to the call (256-byte aligned on a CUDA context,
 * as cudaMalloc returns it); or pass workspace = NULL and the library
 * allocates (and caches in the context, stream-ordered on its stream; a
 * new stream gets a new one) what it needs.
 */
FA_API fa_status fa_forward_workspace_size(const fa_context *ctx,
                                           const fa_attn *attn,
                                           size_t *bytes);
FA_API fa_status fa_backward_workspace_size(const fa_context *ctx,
                                            const fa_attn *attn,
                                            size_t *bytes);

/*
 * out = attention(q, k, v); lse = log-sum-exp of each row's scores (natural
 * log; -inf for fully masked rows). lse may be NULL if no backward will run.
 * q (b, sq, hq, d), k (b, sk, hkv, d), v (b, sk, hkv, dv) -> out (b, sq, hq, dv)
 */
FA_API fa_status fa_forward(fa_context *ctx, const fa_attn *attn,
                            const fa_tensor *q, const fa_tensor *k,
                            const fa_tensor *v, fa_tensor *out, float *lse,
                            void *workspace, size_t workspace_size);

/*
 * Gradients of the forward with the same attn. dq has q's shape, dk k's,
 * dv v's (for GQA the gradients of the heads sharing a K/V head are summed).
 * out and lse are those the forward returned.
 */
FA_API fa_status fa_backward(fa_context *ctx, const fa_attn *attn,
                             const fa_tensor *q, const fa_tensor *k,
                             const fa_tensor *v, const fa_tensor *out,
                             const float *lse, const fa_tensor *dout,
                             fa_tensor *dq, fa_tensor *dk, fa_tensor *dv,
                             void *workspace, size_t workspace_size);

/* ---------------------------------------------------------------------- */
/* FP8 quantization                                                        */

/*
 * Quantizes a (batch, seqlen, heads, dim) tensor to FP8 by blocks of rows,
 * in the form fa_attn's descales describe: for each (batch entry, head,
 * block of block_rows rows of the sequence)
 *     descale = max(amax / fp8_max, FLT_MIN)   (1 where the block is all
 *               zeros; the floor keeps it a normal float > 0),
 *     dst     = src / descale, rounded to nearest even (|dst| <= fp8_max);
 * CPU and GPU give the same bytes. NaN elements become NaN (0x7f) and
 * infinities saturate; neither counts in amax, so the descales stay finite.
 * descale: fp32 (batch, heads, ceil(seqlen / block_rows)), or (batch, heads)
 * for block_rows 0; dst has src's shape in dst_dtype.
 *
 * Incoherent processing (FlashAttention-3 §3.3), rotate = 1: each row x of
 * dim values is first replaced by x·M, M = diag(s)·H / sqrt(dim), with H the
 * dim × dim Walsh-Hadamard matrix and s_c = ±1 the sign that
 * fa_rotation_sign(rotate_seed, c) gives. M is orthogonal, so rotating q and
 * k with the same seed leaves q·kᵀ unchanged while it spreads outliers over
 * the row (less quantization error); never rotate v. dim must be a power of
 * two.
 */
typedef struct fa_quant {
    int64_t batch;
    int64_t seqlen;                /* varlen: the longest sequence */
    int64_t heads;
    int64_t dim;                   /* 1..256 */
    const int32_t *cu_seqlens;     /* NULL, or varlen (batch + 1, on the
                                      context's device; src / dst packed) */
    fa_dtype src_dtype;            /* f32, f16 or bf16 (f16 / bf16 on CUDA) */
    fa_dtype dst_dtype;            /* FA_DTYPE_FP8_E4M3 or _E5M2 */
    int64_t block_rows;            /* rows per descale, 0 = the sequence */
    int rotate;                    /* incoherent processing */
    uint64_t rotate_seed;
} fa_quant;

/* Defaults: bf16 -> e4m3, block_rows 0, no rotation; shapes 0. */
FA_API void fa_quant_init(fa_quant *quant);
FA_API fa_status fa_quantize_fp8(fa_context *ctx, const fa_quant *quant,
                                 const fa_tensor *src, fa_tensor *dst,
                                 float *descale);
/* The sign s_c (+1 or -1) of column c in the rotation of seed. */
FA_API int fa_rotation_sign(uint64_t seed, int64_t c);

/* ---------------------------------------------------------------------- */
/* Dropout stream                                                          */

/*
 * The dropout mask, defined once for every backend. For the element (b, h,
 * i, j) — batch index, query head, query row and key column within the
 * sequence — run Philox4x32-10 with
 *     key     = (seed & 0xffffffff, seed >> 32)
 *     counter = (j >> 2, i, lo32(offset + b·heads_q + h),
 *                         hi32(offset + b·heads_q + h))
 * take output word (j & 3) as r; the element is dropped iff
 *     r < (uint32_t)(p · 2^32)   (computed as p · 4294967296.0, floored).
 * Returns 1 if kept, 0 if dropped.
 */
FA_API int fa_dropout_keep(uint64_t seed, uint64_t offset, int64_t heads_q,
                           int64_t b, int64_t h, int64_t i, int64_t j,
                           float p);

#ifdef __cplusplus
}
#endif

#endif /* FLASHATTN_H */
