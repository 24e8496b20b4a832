/*
 * The CPU micro-kernels, written once against a small vector abstraction.
 * Included by exactly one translation unit per ISA, which first defines:
 *
 *   VF                      the vector type of VW floats
 *   VW                      floats per vector
 *   GEMM_MR, GEMM_NR        register block of the GEMM: GEMM_MR rows ×
 *                           GEMM_NR vectors of accumulators
 *   v_load(p) v_store(p, v) unaligned loads / stores of VW floats
 *   v_set1(x) v_zero()
 *   v_fma(a, b, c)          a·b + c
 *   v_add v_sub v_mul v_div v_max
 *   v_iota()                the lane indices 0, 1, ..., VW-1
 *   v_round(x)              round to nearest integer (as float)
 *   v_ldexp(p, n)           p · 2^n for integral n in [-150, 128]; 0 where
 *                           the result is below 2^-126 is acceptable
 *   v_load_f16(p) v_load_bf16(p)       VW halves -> VF
 *   v_store_f16(p, v) v_store_bf16(p, v)  VF -> VW halves, nearest even
 *   VI                      the vector type of VW uint32 lanes
 *   vi_load(p) vi_set1(x) vi_add(a, b) vi_xor(a, b)
 *   vi_mul_wide(a, m, hi, lo)  the 64-bit products a·m lane by lane (m a
 *                           constant): *hi, *lo their upper, lower halves
 *   v_keep(w, t, s)         VF: s where w >= t (unsigned), else 0
 *   vi_unpack_lo32 vi_unpack_hi32 vi_unpack_lo64 vi_unpack_hi64
 *                           (VW >= 4 only) interleave the low / high
 *                           halves of each group of 4 lanes, as the x86
 *                           unpack instructions do within 128-bit lanes
 *   KERNELS_NAME            the table's C name, KERNEL_NAME its string
 *
 * Shapes follow cpu_kernels.h. Row tails shorter than VW go through the
 * scalar conversions of cpu_kernels.h.
 */
#include "cpu_kernels.h"

#define FA_ALWAYS_INLINE static inline __attribute__((always_inline))

/* 2^x, accurate to about 1 ulp: x = n + f with n integral and |f| <= 1/2,
 * 2^f by a degree-6 polynomial (relative error 1.6e-8, fitted for minimax
 * relative error on [-1/2, 1/2]), times 2^n. x is clamped below at -150,
 * where the result underflows to exactly 0, so 2^-inf = 0 and masked scores
 * drop out without NaN. Callers keep x <= 128 (scores minus a max or LSE). */
FA_ALWAYS_INLINE VF v_exp2(VF x)
{
    x = v_max(x, v_set1(-150.0f));
    VF n = v_round(x);
    VF f = v_sub(x, n);
    VF p = v_set1(1.534579205e-4f);
    p = v_fma(p, f, v_set1(1.339992974e-3f));
    p = v_fma(p, f, v_set1(9.618489072e-3f));
    p = v_fma(p, f, v_set1(5.550328642e-2f));
    p = v_fma(p, f, v_set1(2.402264625e-1f));
    p = v_fma(p, f, v_set1(6.931471825e-1f));
    p = v_fma(p, f, v_set1(1.0f));
    return v_ldexp(p, n);
}

/* ---------------------------------------------------------------------- */
/* GEMM: c (m × n) [+]= a (m × k, strided) · b (k × n, row-major)          */

/* One register block: mr <= GEMM_MR rows × nr <= GEMM_NR vectors, kept in
 * registers across the whole k loop. Called with constant mr/nr so that
 * every instance is fully unrolled. */
FA_ALWAYS_INLINE void gemm_block(int mr, int nr, int64_t k, const float *a,
                                 int64_t a_rs, int64_t a_cs, const float *b,
                                 int64_t ldb, float *c, int64_t ldc,
                                 int accumulate)
{
    VF acc[GEMM_MR][GEMM_NR];
    for (int r = 0; r < mr; ++r)
        for (int v = 0; v < nr; ++v)
            acc[r][v] = accumulate ? v_load(c + r * ldc + v * VW) : v_zero();
    for (int64_t t = 0; t < k; ++t) {
        VF bv[GEMM_NR];
        for (int v = 0; v < nr; ++v)
            bv[v] = v_load(b + t * ldb + v * VW);
        const float *at = a + t * a_cs;
        for (int r = 0; r < mr; ++r) {
            VF av = v_set1(at[r * a_rs]);
            for (int v = 0; v < nr; ++v)
                acc[r][v] = v_fma(av, bv[v], acc[r][v]);
        }
    }
    for (int r = 0; r < mr; ++r)
        for (int v = 0; v < nr; ++v)
            v_store(c + r * ldc + v * VW, acc[r][v]);
}

/* A panel of up to GEMM_MR rows over all n columns: full GEMM_NR-vector
 * blocks, then single vectors. */
FA_ALWAYS_INLINE void gemm_panel(int mr, int64_t n, int64_t k, const float *a,
                                 int64_t a_rs, int64_t a_cs, const float *b,
                                 int64_t ldb, float *c, int64_t ldc,
                                 int accumulate)
{
    int64_t col = 0;
    for (; col + GEMM_NR * VW <= n; col += GEMM_NR * VW)
        gemm_block(mr, GEMM_NR, k, a, a_rs, a_cs, b + col, ldb, c + col, ldc,
                   accumulate);
    for (; col < n; col += VW)
        gemm_block(mr, 1, k, a, a_rs, a_cs, b + col, ldb, c + col, ldc,
                   accumulate);
}

/* Instantiates the panel for one constant row count. */
#define GEMM_PANEL_CASE(rows)                                                 \
    case rows:                                                                \
        gemm_panel(rows, n, k, a + row * a_rs, a_rs, a_cs, b, ldb,            \
                   c + row * ldc, ldc, accumulate);                           \
        break;

static void gemm(int64_t m, int64_t n, int64_t k, const float *a, int64_t a_rs,
                 int64_t a_cs, const float *b, int64_t ldb, float *c,
                 int64_t ldc, int accumulate)
{
    for (int64_t row = 0; row < m; row += GEMM_MR) {
        int64_t rows = m - row < GEMM_MR ? m - row : GEMM_MR;
        switch (rows) {
            GEMM_PANEL_CASE(GEMM_MR)
#if GEMM_MR > 1
            GEMM_PANEL_CASE(1)
#endif
#if GEMM_MR > 2
            GEMM_PANEL_CASE(2)
#endif
#if GEMM_MR > 3
            GEMM_PANEL_CASE(3)
#endif
#if GEMM_MR > 4
            GEMM_PANEL_CASE(4)
#endif
#if GEMM_MR > 5
            GEMM_PANEL_CASE(5)
#endif
#if GEMM_MR > 6
            GEMM_PANEL_CASE(6)
#endif
#if GEMM_MR > 7
            GEMM_PANEL_CASE(7)
#endif
        default:
            break;
        }
    }
}
#undef GEMM_PANEL_CASE

/* ---------------------------------------------------------------------- */
/* Conversions                                                             */

/* src (n elements of dtype) -> dst (n fp32 · scale, zero to n_pad). */
static void load_row(float *dst, const void *src, fa_dtype dtype, int64_t n,
                     int64_t n_pad, float scale)
{
    VF vs = v_set1(scale);
    int64_t i = 0;
    if (dtype == FA_DTYPE_F32) {
        const float *s = (const float *)src;
        for (; i + VW <= n; i += VW)
            v_store(dst + i, v_mul(v_load(s + i), vs));
        for (; i < n; ++i)
            dst[i] = s[i] * scale;
    } else if (dtype == FA_DTYPE_F16) {
        const uint16_t *s = (const uint16_t *)src;
        for (; i + VW <= n; i += VW)
            v_store(dst + i, v_mul(v_load_f16(s + i), vs));
        for (; i < n; ++i)
            dst[i] = fa_f16_to_f32(s[i]) * scale;
    } else if (fa_dtype_is_fp8(dtype)) {
        const uint8_t *s = (const uint8_t *)src;
        for (; i < n; ++i)
            dst[i] = fa_fp8_to_f32(s[i], dtype) * scale;
    } else {
        const uint16_t *s = (const uint16_t *)src;
        for (; i + VW <= n; i += VW)
            v_store(dst + i, v_mul(v_load_bf16(s + i), vs));
        for (; i < n; ++i)
            dst[i] = fa_bf16_to_f32(s[i]) * scale;
    }
    for (; i < n_pad; ++i)
        dst[i] = 0.0f;
}

/* src (n fp32) · scale -> dst (n elements of dtype). */
static void store_row(void *dst, const float *src, fa_dtype dtype, int64_t n,
                      float scale)
{
    VF vs = v_set1(scale);
    int64_t i = 0;
    if (dtype == FA_DTYPE_F32) {
        float *d = (float *)dst;
        for (; i + VW <= n; i += VW)
            v_store(d + i, v_mul(v_load(src + i), vs));
        for (; i < n; ++i)
            d[i] = src[i] * scale;
    } else if (dtype == FA_DTYPE_F16) {
        uint16_t *d = (uint16_t *)dst;
        for (; i + VW <= n; i += VW)
            v_store_f16(d + i, v_mul(v_load(src + i), vs));
        for (; i < n; ++i)
            d[i] = fa_f32_to_f16(src[i] * scale);
    } else {
        uint16_t *d = (uint16_t *)dst;
        for (; i + VW <= n; i += VW)
            v_store_bf16(d + i, v_mul(v_load(src + i), vs));
        for (; i < n; ++i)
            d[i] = fa_f32_to_bf16(src[i] * scale);
    }
}

/* ---------------------------------------------------------------------- */
/* Softmax pieces                                                          */

static void col_max(const float *x, int64_t rows, int64_t cols, int64_t ld,
                    float *out)
{
    for (int64_t c = 0; c < cols; c += VW) {
        VF m = v_load(out + c);
        for (int64_t r = 0; r < rows; ++r)
            m = v_max(m, v_load(x + r * ld + c));
        v_store(out + c, m);
    }
}

static void exp2_bias(float *x, int64_t rows, int64_t cols, int64_t ld,
                      const float *row_bias, const float *col_bias,
                      float *col_sum)
{
    for (int64_t c = 0; c < cols; c += VW) {
        VF cb = col_bias ? v_load(col_bias + c) : v_zero();
        VF sum = v_zero();
        for (int64_t r = 0; r < rows; ++r) {
            VF bias = row_bias ? v_add(cb, v_set1(row_bias[r])) : cb;
            VF e = v_exp2(v_sub(v_load(x + r * ld + c), bias));
            v_store(x + r * ld + c, e);
            sum = v_add(sum, e);
        }
        if (col_sum)
            v_store(col_sum + c, v_add(v_load(col_sum + c), sum));
    }
}

static void softmax_grad(float *dp, const float *p, int64_t rows, int64_t cols,
                         int64_t ld, const float *row_d, const float *col_d)
{
    for (int64_t c = 0; c < cols; c += VW) {
        VF cd = col_d ? v_load(col_d + c) : v_zero();
        for (int64_t r = 0; r < rows; ++r) {
            VF d = row_d ? v_add(cd, v_set1(row_d[r])) : cd;
            VF g = v_sub(v_load(dp + r * ld + c), d);
            v_store(dp + r * ld + c, v_mul(v_load(p + r * ld + c), g));
        }
    }
}

/* tanh(y) = (1 - e) / (1 + e) with e = 2^(-2·log2(e)·y), e kept <= 2^64
 * so that large negative y gives -1 rather than inf/inf. The absolute
 * error is about 1e-7 (not relative: small |y| lose digits to 1 - e),
 * the size of the rounding of a score near the cap anyway. */
FA_ALWAYS_INLINE VF v_tanh(VF y)
{
    VF w = v_max(v_mul(y, v_set1(2.0f * 1.44269504088896340736f)), v_set1(-64.0f));
    VF e = v_exp2(v_sub(v_zero(), w));
    VF one = v_set1(1.0f);
    return v_div(v_sub(one, e), v_add(one, e));
}

static void score_mods(float *x, int64_t rows, int64_t cols, int64_t ld,
                       float cap, float *tanh_out, float slope,
                       float offset, float row_step, float col_step)
{
    VF lanes = v_iota();
    for (int64_t r = 0; r < rows; ++r) {
        float *xr = x + r * ld;
        float base = offset + (float)r * row_step;
        for (int64_t c = 0; c < cols; c += VW) {
            VF v = v_load(xr + c);
            if (cap > 0) {
                VF t = v_tanh(v_div(v, v_set1(cap)));
                if (tanh_out)
                    v_store(tanh_out + r * ld + c, t);
                v = v_mul(t, v_set1(cap));
            }
            if (slope != 0) {
                VF dist = v_fma(v_add(lanes, v_set1((float)c)), v_set1(col_step),
                                v_set1(base));
                dist = v_max(dist, v_sub(v_zero(), dist));
                v = v_sub(v, v_mul(dist, v_set1(slope)));
            }
            v_store(xr + c, v);
        }
    }
}

static void scale_row(float *x, int64_t n, float s)
{
    VF vs = v_set1(s);
    for (int64_t i = 0; i < n; i += VW)
        v_store(x + i, v_mul(v_load(x + i), vs));
}

/* ---------------------------------------------------------------------- */
/* Dropout: Philox4x32-10 on VW counters at once                           */

/* fa_philox4x32_10() (fa_internal.h, the reference) lane by lane: c holds
 * the counters' four words and becomes the four output words. The
 * 32 × 32 -> 64-bit multiplies are the whole cost. */
FA_ALWAYS_INLINE void vi_philox(VI c[4], uint32_t k0, uint32_t k1)
{
    for (int round = 0; round < 10; ++round) {
        VI hi0, lo0, hi1, lo1;
        vi_mul_wide(c[0], 0xD2511F53u, &hi0, &lo0);
        vi_mul_wide(c[2], 0xCD9E8D57u, &hi1, &lo1);
        c[0] = vi_xor(vi_xor(hi1, c[1]), vi_set1(k0));
        c[1] = lo1;
        c[2] = vi_xor(vi_xor(hi0, c[3]), vi_set1(k1));
        c[3] = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
}

#if VW >= 4
/* Query rows per block of the queries-major layout: 4, one per word. */
enum { DROPOUT_QUERY_ROWS = 4 };

/* 4 × 4 transposes within each group of 4 lanes: afterwards w[b] holds, in
 * every group, the words 0..3 that lane b of the group had. */
FA_ALWAYS_INLINE void vi_transpose4(VI w[4])
{
    VI t0 = vi_unpack_lo32(w[0], w[1]), t1 = vi_unpack_hi32(w[0], w[1]);
    VI t2 = vi_unpack_lo32(w[2], w[3]), t3 = vi_unpack_hi32(w[2], w[3]);
    w[0] = vi_unpack_lo64(t0, t2);
    w[1] = vi_unpack_hi64(t0, t2);
    w[2] = vi_unpack_lo64(t1, t3);
    w[3] = vi_unpack_hi64(t1, t3);
}
#else
/* One lane: its four words are four consecutive keys of one query row. */
enum { DROPOUT_QUERY_ROWS = 1 };
FA_ALWAYS_INLINE void vi_transpose4(VI w[4])
{
    (void)w;
}
#endif

/* dst[at..] = src[at..] · factor and also[at..] *= factor (if not NULL),
 * factor = kept_scale where the word keeps the element, else 0. */
FA_ALWAYS_INLINE void dropout_apply(float *dst, const float *src, float *also,
                                    int64_t at, VI words, VI threshold,
                                    VF kept_scale)
{
    VF factor = v_keep(words, threshold, kept_scale);
    v_store(dst + at, v_mul(v_load(src + at), factor));
    if (also)
        v_store(also + at, v_mul(v_load(also + at), factor));
}

/*
 * A counter (key group g, query i) gives the words of keys 4g..4g+3 of
 * query i. Keys-major (a row per key, lanes over queries): lane l
 * evaluates (g, i + l), and its four words are lane l of rows 4g..4g+3 —
 * no rearrangement. Queries-major (a row per query, lanes over keys): lane
 * l evaluates (g + l / 4, i + l % 4), and a 4 × 4 transpose within each
 * group of 4 lanes turns the words into 4 query rows of VW consecutive
 * keys (the scalar build: one lane, 4 consecutive keys of one row). Either
 * way every Philox output word is used once.
 */
static void dropout(float *dst, const float *src, float *also, int64_t rows,
                    int64_t cols, int64_t ld, int keys_major, int64_t i0,
                    int64_t j0, const fa_cpu_dropout *stream, float kept_scale)
{
    enum { QR = DROPOUT_QUERY_ROWS, KEYS_PER_BLOCK = 4 * VW / QR };
    uint32_t lane_query[VW], lane_group[VW];
    for (int l = 0; l < VW; ++l) {
        lane_query[l] = (uint32_t)(keys_major ? l : l % QR);
        lane_group[l] = (uint32_t)(keys_major ? 0 : l / QR);
    }
    VI query = vi_load(lane_query), group = vi_load(lane_group);
    VI sub0 = vi_set1(stream->sub[0]), sub1 = vi_set1(stream->sub[1]);
    VI threshold = vi_set1(stream->threshold);
    VF scale = v_set1(kept_scale);
    if (keys_major) {
        for (int64_t g = j0 >> 2; 4 * g < j0 + rows; ++g)
            for (int64_t c = 0; c < cols; c += VW) {
                VI w[4] = {vi_set1((uint32_t)g),
                           vi_add(query, vi_set1((uint32_t)(i0 + c))), sub0, sub1};
                vi_philox(w, stream->key[0], stream->key[1]);
                for (int k = 0; k < 4; ++k) {
                    int64_t r = 4 * g + k - j0;
                    if (r >= 0 && r < rows)
                        dropout_apply(dst, src, also, r * ld + c, w[k],
                                      threshold, scale);
                }
            }
        return;
    }
    for (int64_t r0 = 0; r0 < rows; r0 += QR)
        for (int64_t c = 0; c < cols; c += KEYS_PER_BLOCK) {
            VI w[4] = {vi_add(group, vi_set1((uint32_t)((j0 + c) >> 2))),
                       vi_add(query, vi_set1((uint32_t)(i0 + r0))), sub0, sub1};
            vi_philox(w, stream->key[0], stream->key[1]);
            vi_transpose4(w);
            for (int t = 0; t < 4; ++t) {
                int64_t r = r0 + t * QR / 4, col = c + t % (4 / QR) * VW;
                if (r < rows && col < cols)
                    dropout_apply(dst, src, also, r * ld + col, w[t],
                                  threshold, scale);
            }
        }
}

const fa_cpu_kernels KERNELS_NAME = {
    KERNEL_NAME, VW, gemm, load_row, store_row,
    col_max, exp2_bias, softmax_grad, score_mods, scale_row, dropout,
};
