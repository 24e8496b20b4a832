/*
 * AVX2 + FMA + F16C build of the CPU micro-kernels (cpu_kernels_impl.h):
 * 8-float vectors, a 6 × 2-vector GEMM register block (12 accumulators of
 * the 16 ymm registers). CMake compiles this file with -mavx2 -mfma -mf16c;
 * cpu_attention.c only calls it after checking the CPU supports them.
 */
#include "cpu_kernels.h"

#include <immintrin.h>

typedef __m256 VF;
#define VW 8
#define GEMM_MR 6
#define GEMM_NR 2

#define v_load(p) _mm256_loadu_ps(p)
#define v_store(p, v) _mm256_storeu_ps((p), (v))
#define v_set1(x) _mm256_set1_ps(x)
#define v_zero() _mm256_setzero_ps()
#define v_fma(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define v_add(a, b) _mm256_add_ps((a), (b))
#define v_sub(a, b) _mm256_sub_ps((a), (b))
#define v_mul(a, b) _mm256_mul_ps((a), (b))
#define v_div(a, b) _mm256_div_ps((a), (b))
#define v_iota() _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7)
#define v_max(a, b) _mm256_max_ps((a), (b))
#define v_round(x) _mm256_round_ps((x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

/* p · 2^n through the exponent field; results below 2^-126 become 0 (no
 * subnormals: they are negligible next to a softmax sum >= 1). */
static inline __m256 v_ldexp(__m256 p, __m256 n)
{
    __m256 n_clamped = _mm256_max_ps(n, _mm256_set1_ps(-126.0f));
    __m256i bits = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n_clamped), _mm256_set1_epi32(127)), 23);
    __m256 r = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    return _mm256_and_ps(r, _mm256_cmp_ps(n, _mm256_set1_ps(-126.0f), _CMP_GE_OQ));
}

#define v_load_f16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define v_store_f16(p, v)                                                     \
    _mm_storeu_si128((__m128i *)(p),                                          \
                     _mm256_cvtps_ph((v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))
#define v_load_bf16(p)                                                        \
    _mm256_castsi256_ps(_mm256_slli_epi32(                                    \
        _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))

/* Round to nearest even as fa_f32_to_bf16 does, NaN quieted. */
static inline void v_store_bf16(uint16_t *dst, __m256 v)
{
    __m256i u = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_srli_epi32(
        _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    __m256 is_nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    __m256i h = _mm256_castps_si256(_mm256_blendv_ps(
        _mm256_castsi256_ps(rounded), _mm256_castsi256_ps(quiet), is_nan));
    _mm_storeu_si128((__m128i *)dst,
                     _mm_packus_epi32(_mm256_castsi256_si128(h),
                                      _mm256_extracti128_si256(h, 1)));
}

typedef __m256i VI;
#define vi_load(p) _mm256_loadu_si256((const __m256i *)(p))
#define vi_set1(x) _mm256_set1_epi32((int)(x))
#define vi_add(a, b) _mm256_add_epi32((a), (b))
#define vi_xor(a, b) _mm256_xor_si256((a), (b))
#define vi_unpack_lo32(a, b) _mm256_unpacklo_epi32((a), (b))
#define vi_unpack_hi32(a, b) _mm256_unpackhi_epi32((a), (b))
#define vi_unpack_lo64(a, b) _mm256_unpacklo_epi64((a), (b))
#define vi_unpack_hi64(a, b) _mm256_unpackhi_epi64((a), (b))

/* w >= t unsigned as max(w, t) == w (AVX2 has no unsigned compare). */
#define v_keep(w, t, s)                                                       \
    _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(                      \
                      _mm256_max_epu32((w), (t)), (w))),                      \
                  (s))

/* vpmuludq multiplies the even lanes; the odd ones are shifted down into
 * them for a second multiply, and the halves are blended back. */
static inline void vi_mul_wide(__m256i a, uint32_t m, __m256i *hi, __m256i *lo)
{
    __m256i vm = _mm256_set1_epi32((int)m);
    __m256i even = _mm256_mul_epu32(a, vm);
    __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), vm);
    *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xaa);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xaa);
}

#define KERNELS_NAME fa_cpu_kernels_avx2
#define KERNEL_NAME "cpu.avx2"
#include "cpu_kernels_impl.h"
