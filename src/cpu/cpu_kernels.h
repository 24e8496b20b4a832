/*
 * CPU micro-kernels: the small, vectorized building blocks the CPU
 * FlashAttention algorithm (cpu_attention.c) is made of. Every tile the
 * algorithm works on is fp32 scratch memory; these kernels are the only code
 * that differs between instruction sets.
 *
 * One source, three builds: cpu_kernels_impl.h holds the kernels written
 * against a tiny vector abstraction (a vector type, load/store/fma/...);
 * cpu_kernels_scalar.c, cpu_kernels_avx2.c and cpu_kernels_avx512.c each
 * define that abstraction for their ISA and include it, producing one
 * fa_cpu_kernels table each. The algorithm calls through the table.
 */
#ifndef FA_CPU_KERNELS_H
#define FA_CPU_KERNELS_H

#include "fa_internal.h"

#include <stdint.h>
#include <string.h>

/* Widest vector of any build, in floats: every padded row length in the
 * scratch tiles is a multiple of this, so one layout serves every ISA. */
#define FA_CPU_MAX_VEC 16

/* The dropout stream of one (batch, query head), as fa_dropout_keep()
 * defines it: the Philox key, the counter's upper two words and the drop
 * threshold (an element is dropped iff its word < threshold). */
typedef struct fa_cpu_dropout {
    uint32_t key[2];     /* lo32, hi32 of the seed */
    uint32_t sub[2];     /* lo32, hi32 of offset + b·heads_q + h */
    uint32_t threshold;
} fa_cpu_dropout;

typedef struct fa_cpu_kernels {
    const char *kernel_name; /* "cpu.avx512", "cpu.avx2", "cpu.scalar" */
    int vec_width;           /* floats per vector; divides FA_CPU_MAX_VEC */

    /* c (m × n, row stride ldc) = [c +] a · b, where a is m × k with element
     * (r, t) at a[r*a_rs + t*a_cs] (so a transposed operand costs nothing)
     * and b is k × n, row-major with row stride ldb. n is a multiple of
     * vec_width; b and c rows hold at least n floats. */
    void (*gemm)(int64_t m, int64_t n, int64_t k, const float *a, int64_t a_rs,
                 int64_t a_cs, const float *b, int64_t ldb, float *c,
                 int64_t ldc, int accumulate);

    /* dst[0..n) = scale · src[0..n) converted from dtype to fp32, and
     * dst[n..n_pad) = 0. */
    void (*load_row)(float *dst, const void *src, fa_dtype dtype, int64_t n,
                     int64_t n_pad, float scale);
    /* dst[0..n) = scale · src[0..n), converted to dtype (round to nearest
     * even). */
    void (*store_row)(void *dst, const float *src, fa_dtype dtype, int64_t n,
                      float scale);

    /* x is rows × cols (row stride ld), cols a multiple of vec_width:
     * col_max[c] = max(col_max[c], max_r x[r][c]). */
    void (*col_max)(const float *x, int64_t rows, int64_t cols, int64_t ld,
                    float *col_max);
    /* x[r][c] = 2^(x[r][c] - row_bias[r] - col_bias[c]) (a NULL bias is 0;
     * 2^-inf = 0 exactly); if col_sum is not NULL, col_sum[c] += the new
     * column sums. */
    void (*exp2_bias)(float *x, int64_t rows, int64_t cols, int64_t ld,
                      const float *row_bias, const float *col_bias,
                      float *col_sum);
    /* The softmax gradient: dp[r][c] = p[r][c] · (dp[r][c] - row_d[r] -
     * col_d[c]) (a NULL term is 0). */
    void (*softmax_grad)(float *dp, const float *p, int64_t rows, int64_t cols,
                         int64_t ld, const float *row_d, const float *col_d);
    /* Softcap and ALiBi on scores x (rows × cols, ld; cols a multiple of
     * vec_width), all in log2 units: if cap > 0, x = cap·tanh(x/cap), and
     * tanh_out (same layout; may be NULL) receives the tanh; then
     * x -= slope·|offset + r·row_step + c·col_step| (slope 0: no ALiBi). */
    void (*score_mods)(float *x, int64_t rows, int64_t cols, int64_t ld,
                       float cap, float *tanh_out, float slope, float offset,
                       float row_step, float col_step);
    /* x[0..n) *= s, n a multiple of vec_width. */
    void (*scale_row)(float *x, int64_t n, float s);
    /* Dropout over a score tile (rows × cols, row stride ld; cols a
     * multiple of vec_width): element (r, c) is query i0 + c and key j0 + r
     * if keys_major, else query i0 + r and key j0 + c (then j0 must be a
     * multiple of 4). dst = src · kept_scale where fa_dropout_keep() keeps
     * the element, else 0 (dst may be src); if also is not NULL, it is
     * multiplied by the same factor in place. */
    void (*dropout)(float *dst, const float *src, float *also, int64_t rows,
                    int64_t cols, int64_t ld, int keys_major, int64_t i0,
                    int64_t j0, const fa_cpu_dropout *stream,
                    float kept_scale);
} fa_cpu_kernels;

extern const fa_cpu_kernels fa_cpu_kernels_scalar;
#if defined(__x86_64__) || defined(_M_X64)
#  define FA_CPU_HAVE_X86 1
extern const fa_cpu_kernels fa_cpu_kernels_avx2;
extern const fa_cpu_kernels fa_cpu_kernels_avx512;
#endif

/* ---------------------------------------------------------------------- */
/* Portable scalar conversions (the scalar build, and row tails of the     */
/* vector builds).                                                         */

static inline uint32_t fa_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float fa_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float fa_bf16_to_f32(uint16_t h)
{
    return fa_bits_f32((uint32_t)h << 16);
}

/* Round to nearest even; NaN stays NaN (quieted). */
static inline uint16_t fa_f32_to_bf16(float f)
{
    uint32_t u = fa_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float fa_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1fu) /* inf / NaN */
        return fa_bits_f32(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) { /* zero / subnormal: mant · 2^-24 */
        float v = (float)mant * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return fa_bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

/* Round to nearest even, overflow to inf, subnormals kept. */
static inline uint16_t fa_f32_to_f16(float f)
{
    uint32_t u = fa_f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) /* NaN */
        return (uint16_t)(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
    if (abs >= 0x477ff000u) /* rounds to >= 65520: inf */
        return (uint16_t)(sign | 0x7c00u);
    if (abs < 0x38800000u) { /* below 2^-14: subnormal or zero */
        /* Adding 0.5 (2^-1) makes the float hardware round the value at
         * the f16 subnormal step 2^-24 (nearest even), leaving it in the
         * low mantissa bits. */
        float v = fa_bits_f32(abs) + 0.5f;
        return (uint16_t)(sign | (fa_f32_bits(v) - 0x3f000000u));
    }
    uint32_t mant_odd = (abs >> 13) & 1u;
    abs += 0xc8000fffu + mant_odd; /* rebias exponent by -112, round */
    return (uint16_t)(sign | (abs >> 13));
}

#endif /* FA_CPU_KERNELS_H */
