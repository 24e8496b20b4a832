/*
 * FP8 block quantization (fa_quantize_fp8 in flashattn.h): the validated
 * job that src/quantize.c hands its CPU loop or the CUDA kernel
 * (src/cuda/quantize.cu), and the rotation signs both of them use.
 *
 * Both implementations compute, for each row of a block, in float:
 *   x_c = src value (exact in float), negated where the sign of column c is
 *         -1 (rotate only);
 *   rotate: the in-place Walsh-Hadamard butterflies, stages h = 1, 2, ...,
 *         dim/2, (a, b) -> (a + b, a - b), then y_c = x_c * inv_sqrt_dim;
 *         else y_c = x_c;
 *   amax = max |y| over the block's finite values (NaN and inf ignored);
 *   descale = 1 if amax == 0, else max(amax / fp8_max, FLT_MIN);
 *   dst = fp8(y / descale), round to nearest even, saturated.
 * Every step is one IEEE operation in the same order on both sides (the
 * GPU's with subnormals kept: see quantize.cu), so that they give the same
 * bits. The FLT_MIN floor keeps descale a normal, positive float (as the
 * FP8 forward requires) for blocks of values below ~5e-36, where
 * amax / fp8_max would be subnormal or 0.
 */
#ifndef FA_QUANTIZE_H
#define FA_QUANTIZE_H

#include "fa_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A validated fa_quantize_fp8 call. Rows of sequence b: [0, len) with
 * len = seqlen (fixed) or cu_seqlens[b + 1] - cu_seqlens[b] (varlen, rows
 * counted from cu_seqlens[b] in the packed tensors). Block i of (b, h) is
 * rows [i·block, min((i + 1)·block, len)); descale[(b·heads + h)·nblocks
 * + i]. */
typedef struct fa_quant_job {
    fa_tensor src, dst;        /* validated views */
    float *descale;
    fa_dtype src_dtype, dst_dtype;
    int64_t batch, seqlen, heads, dim;
    int varlen;
    const int32_t *cu_seqlens; /* on the context's device (varlen) */
    int64_t rows;              /* of each batch entry of the views: seqlen,
                                  or cu_seqlens[batch] (varlen, packed) */
    int64_t block;             /* rows per block (block_rows 0: seqlen, at
                                  least 1) */
    int64_t nblocks;           /* blocks per (b, h) */
    int rotate;
    uint64_t rotate_seed;
    float inv_sqrt_dim;        /* (float)(1 / sqrt(dim)), rounded once */
    float fp8_max;             /* 448 (e4m3) or 57344 (e5m2) */
} fa_quant_job;

/* s_c of fa_rotation_sign(): splitmix64 of seed + (c + 1)·golden ratio,
 * whose top bit picks -1. Unsigned throughout, so any c is defined. */
FA_HOSTDEV int fa_quant_sign(uint64_t seed, int64_t c)
{
    uint64_t z = seed + ((uint64_t)c + 1u) * 0x9E3779B97F4A7C15ull;
    z ^= z >> 30;
    z *= 0xBF58476D1CE4E5B9ull;
    z ^= z >> 27;
    z *= 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (z >> 63) ? -1 : 1;
}

#ifdef FA_HAVE_CUDA
/* Launches the quantizer on `stream` (src/cuda/quantize.cu): f16 / bf16
 * sources. FA_ERROR_DEVICE with the runtime's message if the launch
 * fails. */
fa_status fa_cuda_quantize_fp8(const fa_quant_job *job, void *stream);
#endif

#ifdef __cplusplus
}
#endif

#endif /* FA_QUANTIZE_H */
