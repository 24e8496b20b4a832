/*
 * Small pieces both Hopper kernels (forward and backward) use: the element
 * type's traits, the ring position of a multi-stage pipeline, 16-bit packing
 * of accumulator pairs, and the softcap transform.
 */
#ifndef FA_SM90_COMMON_CUH
#define FA_SM90_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

#include "../flag.cuh"

template <typename T> struct fa_is_half {
    static constexpr bool value = false;
};
template <> struct fa_is_half<__half> {
    static constexpr bool value = true;
};

/* 8-bit element types (the FP8 forward): e4m3 or e5m2. */
template <typename T> struct fa_is_fp8 {
    static constexpr bool value = false;
    static constexpr bool e5m2 = false;
};
template <> struct fa_is_fp8<__nv_fp8_e4m3> {
    static constexpr bool value = true;
    static constexpr bool e5m2 = false;
};
template <> struct fa_is_fp8<__nv_fp8_e5m2> {
    static constexpr bool value = true;
    static constexpr bool e5m2 = true;
};

/* The element type of out: bf16 for an FP8 forward, else the input's. */
template <typename T, bool Fp8 = fa_is_fp8<T>::value> struct fa_out_elem {
    typedef T type;
};
template <typename T> struct fa_out_elem<T, true> {
    typedef __nv_bfloat16 type;
};

/* Position in the ring: which buffer, and the parity of its barrier phase.
 * The parity flips each time the stage index wraps around. */
template <int Stages> struct fa_pipe_state {
    int stage;
    uint32_t phase;
    __device__ void advance()
    {
        if (++stage == Stages) {
            stage = 0;
            phase ^= 1;
        }
    }
};

/* Two floats as one register of two 16-bit values, `lo` in the low half. */
template <typename Elem> __device__ __forceinline__ uint32_t fa_pack2(float lo, float hi)
{
    if constexpr (fa_is_half<Elem>::value) {
        __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&v);
    } else {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&v);
    }
}

/* Four floats as one register of four e4m3 values, `b0` in the low byte
 * (rounded to nearest even, saturated to ±448). */
__device__ __forceinline__ uint32_t fa_pack4_e4m3(float b0, float b1, float b2, float b3)
{
    const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(b0, b1), __NV_SATFINITE, __NV_E4M3);
    const uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(b2, b3), __NV_SATFINITE, __NV_E4M3);
    return lo | (hi << 16);
}

/* tanh(x * input_scale), with tanh(y) = 1 - 2 / (e^{2y} + 1): absolute error
 * near float rounding, and ±1 at the ends (inf and 0 in the division). The
 * softcapped score is cap * this; the backward also needs it for tanh'. */
__device__ __forceinline__ float fa_softcap_tanh(float x, float input_scale)
{
    float e = exp2f(x * input_scale * 2.8853900817779268f); /* 2 * log2(e) */
    return 1.0f - __fdividef(2.0f, e + 1.0f);
}

/* Sentinel for the mask intervals of both kernels (fa_visible_keys,
 * visible_queries): beyond any row or key offset, since sm90.cu declines
 * sequences of 2^29 tokens or more. */
static constexpr int kFaMaskUnbounded = 1 << 30;

#endif
