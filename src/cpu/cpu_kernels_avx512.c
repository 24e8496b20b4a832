/*
 * AVX-512 (F/BW/VL/DQ) + F16C build of the CPU micro-kernels
 * (cpu_kernels_impl.h): 16-float vectors, a 6 × 4-vector GEMM register block
 * (24 accumulators of the 32 zmm registers, B loads and the A broadcast in
 * the rest). CMake compiles this file with the AVX-512 flags;
 * cpu_attention.c only calls it after checking the CPU supports them.
 */
#include "cpu_kernels.h"

#include <immintrin.h>

typedef __m512 VF;
#define VW 16
#define GEMM_MR 6
#define GEMM_NR 4

#define v_load(p) _mm512_loadu_ps(p)
#define v_store(p, v) _mm512_storeu_ps((p), (v))
#define v_set1(x) _mm512_set1_ps(x)
#define v_zero() _mm512_setzero_ps()
#define v_fma(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define v_add(a, b) _mm512_add_ps((a), (b))
#define v_sub(a, b) _mm512_sub_ps((a), (b))
#define v_mul(a, b) _mm512_mul_ps((a), (b))
#define v_div(a, b) _mm512_div_ps((a), (b))
#define v_iota() _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#define v_max(a, b) _mm512_max_ps((a), (b))
#define v_round(x) _mm512_roundscale_ps((x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define v_ldexp(p, n) _mm512_scalef_ps((p), (n))

#define v_load_f16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define v_store_f16(p, v)                                                     \
    _mm256_storeu_si256((__m256i *)(p),                                       \
                        _mm512_cvtps_ph((v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))
#define v_load_bf16(p)                                                        \
    _mm512_castsi512_ps(_mm512_slli_epi32(                                    \
        _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))

/* Round to nearest even as fa_f32_to_bf16 does, NaN quieted. */
static inline void v_store_bf16(uint16_t *dst, __m512 v)
{
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_srli_epi32(
        _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    __mmask16 is_nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    __m512i h = _mm512_mask_blend_epi32(is_nan, rounded, quiet);
    _mm256_storeu_si256((__m256i *)dst, _mm512_cvtepi32_epi16(h));
}

typedef __m512i VI;
#define vi_load(p) _mm512_loadu_si512((const void *)(p))
#define vi_set1(x) _mm512_set1_epi32((int)(x))
#define vi_add(a, b) _mm512_add_epi32((a), (b))
#define vi_xor(a, b) _mm512_xor_si512((a), (b))
#define vi_unpack_lo32(a, b) _mm512_unpacklo_epi32((a), (b))
#define vi_unpack_hi32(a, b) _mm512_unpackhi_epi32((a), (b))
#define vi_unpack_lo64(a, b) _mm512_unpacklo_epi64((a), (b))
#define vi_unpack_hi64(a, b) _mm512_unpackhi_epi64((a), (b))
#define v_keep(w, t, s) _mm512_maskz_mov_ps(_mm512_cmpge_epu32_mask((w), (t)), (s))

/* vpmuludq multiplies the even lanes; the odd ones are shifted down into
 * them for a second multiply, and the halves are blended back. */
static inline void vi_mul_wide(__m512i a, uint32_t m, __m512i *hi, __m512i *lo)
{
    __m512i vm = _mm512_set1_epi32((int)m);
    __m512i even = _mm512_mul_epu32(a, vm);
    __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), vm);
    *lo = _mm512_mask_blend_epi32(0xaaaa, even, _mm512_slli_epi64(odd, 32));
    *hi = _mm512_mask_blend_epi32(0xaaaa, _mm512_srli_epi64(even, 32), odd);
}

#define KERNELS_NAME fa_cpu_kernels_avx512
#define KERNEL_NAME "cpu.avx512"
#include "cpu_kernels_impl.h"
