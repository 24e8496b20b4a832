/*
 * Thin wrappers over the sm80 PTX instructions the portable kernels use:
 * the m16n8k16 tensor-core product, ldmatrix (plain and transposing) and
 * cp.async. Each wrapper is one instruction; the fragment layouts are the
 * ones the PTX ISA documents for mma.m16n8k16 (g = lane / 4, t = lane % 4):
 *   A (16x16, row-major)  a[0]: (g, 2t..2t+1)   a[1]: (g+8, 2t..)
 *                         a[2]: (g, 2t+8..)     a[3]: (g+8, 2t+8..)
 *   B (16x8, k x n)       b[0]: (k 2t..2t+1, n g)   b[1]: (k 2t+8.., n g)
 *   C (16x8, fp32)        c[0..1]: (g, 2t..2t+1)    c[2..3]: (g+8, 2t..)
 */
#ifndef FA_PTX_MMA_SM80_CUH
#define FA_PTX_MMA_SM80_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace fa {

/* Which 16-bit floating type a kernel runs on: selects the mma variant and
 * the float -> 16-bit conversion. */
template <typename T> struct dtype_traits;
template <> struct dtype_traits<__half> {
    static constexpr bool is_bf16 = false;
};
template <> struct dtype_traits<__nv_bfloat16> {
    static constexpr bool is_bf16 = true;
};

/* The 32-bit shared-state-space address of a generic pointer into smem. */
__device__ __forceinline__ uint32_t smem_address(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* c += a · b for one 16x8x16 tile, fp32 accumulate. */
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float c[4], const uint32_t a[4],
                                             const uint32_t b[2])
{
    if constexpr (dtype_traits<T>::is_bf16)
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* Loads four 8x8 16-bit matrices from smem; lane l gives the address of row
 * l % 8 of matrix l / 8, and receives in r[i] its (l / 4, 2(l % 4)..+1)
 * pair of matrix i. */
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *row)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(row)));
}

/* As ldmatrix_x4, each matrix transposed: r[i] holds elements
 * (2(l % 4), l / 4) and (2(l % 4) + 1, l / 4) of matrix i. */
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void *row)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(row)));
}

/* Two matrices (lanes 0..15 give the row addresses). */
__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void *row)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_address(row)));
}

__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void *row)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_address(row)));
}

/* Starts an asynchronous 16-byte copy global -> smem that reads only the
 * first src_bytes (0..16) bytes and zero-fills the rest: tails of rows and
 * rows past the end of a sequence arrive as zeros. */
__device__ __forceinline__ void cp_async_16(void *smem_dst, const void *gmem_src,
                                            int src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :
                 : "r"(smem_address(smem_dst)), "l"(gmem_src), "r"(src_bytes)
                 : "memory");
}

/* Closes the group of cp.async copies issued so far by this thread. */
__device__ __forceinline__ void cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

/* Waits until at most `pending` committed groups of this thread are still
 * in flight (0: all copies have landed; a __syncthreads() must follow
 * before other threads read them). */
template <int pending> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(pending) : "memory");
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
/* p[0..3] += (a, b, c, d), atomically per element, as one vector reduction
 * (sm90+; p 16-byte aligned). */
__device__ __forceinline__ void red_add_v4(float *p, float a, float b, float c, float d)
{
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(p), "f"(a), "f"(b), "f"(c), "f"(d)
                 : "memory");
}
#endif

/* Two floats rounded to one 32-bit register of two 16-bit values, `lo` in
 * the low half (the element with the smaller column index). */
template <typename T> __device__ __forceinline__ uint32_t pack_pair(float lo, float hi)
{
    uint32_t r;
    if constexpr (dtype_traits<T>::is_bf16) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        r = *reinterpret_cast<uint32_t *>(&v);
    } else {
        __half2 v = __floats2half2_rn(lo, hi);
        r = *reinterpret_cast<uint32_t *>(&v);
    }
    return r;
}

} // namespace fa

#endif
