/*
 * Portable C build of the CPU micro-kernels (cpu_kernels_impl.h): a "vector"
 * of one float. This is the path for machines without AVX2 and for
 * FA_CPU_ISA=scalar.
 */
#include "cpu_kernels.h"

#include <math.h>

typedef float VF;
#define VW 1
#define GEMM_MR 4
#define GEMM_NR 4

#define v_load(p) (*(p))
#define v_store(p, v) (*(p) = (v))
#define v_set1(x) (x)
#define v_zero() 0.0f
#define v_fma(a, b, c) ((a) * (b) + (c))
#define v_add(a, b) ((a) + (b))
#define v_sub(a, b) ((a) - (b))
#define v_mul(a, b) ((a) * (b))
#define v_div(a, b) ((a) / (b))
#define v_iota() 0.0f
#define v_max(a, b) ((a) > (b) ? (a) : (b))
#define v_round(x) rintf(x)
#define v_ldexp(p, n) ldexpf((p), (int)(n))
#define v_load_f16(p) fa_f16_to_f32(*(p))
#define v_load_bf16(p) fa_bf16_to_f32(*(p))
#define v_store_f16(p, v) (*(p) = fa_f32_to_f16(v))
#define v_store_bf16(p, v) (*(p) = fa_f32_to_bf16(v))

typedef uint32_t VI;
#define vi_load(p) (*(p))
#define vi_set1(x) ((uint32_t)(x))
#define vi_add(a, b) ((a) + (b))
#define vi_xor(a, b) ((a) ^ (b))
#define v_keep(w, t, s) ((w) >= (t) ? (s) : 0.0f)

static inline void vi_mul_wide(uint32_t a, uint32_t m, uint32_t *hi, uint32_t *lo)
{
    uint64_t product = (uint64_t)a * m;
    *hi = (uint32_t)(product >> 32);
    *lo = (uint32_t)product;
}

#define KERNELS_NAME fa_cpu_kernels_scalar
#define KERNEL_NAME "cpu.scalar"
#include "cpu_kernels_impl.h"
