/*
 * Ordinary shared-memory accesses around async-proxy readers (wgmma, TMA
 * stores): what a thread writes with these is visible to such a reader only
 * after the proxy fence (fa_fence_proxy_async_shared), which must come
 * before any barrier that lets the reader go.
 */
#ifndef FA_PTX_SMEM_CUH
#define FA_PTX_SMEM_CUH

#include <stdint.h>

#include "bulk_copy.cuh" /* fa_fence_proxy_async_shared */

// 16 zero bytes at shared address `addr` (16-byte aligned).
__device__ __forceinline__ void fa_smem_zero16(uint32_t addr)
{
    asm volatile("st.shared.v4.b32 [%0], {%1, %1, %1, %1};" ::"r"(addr), "r"(0) : "memory");
}

// One 4-byte word at shared address `addr` (4-byte aligned): volatile, so
// that loads stay after the barrier wait that makes the data valid.
__device__ __forceinline__ uint32_t fa_smem_ld32(uint32_t addr)
{
    uint32_t value;
    asm volatile("ld.shared.b32 %0, [%1];" : "=r"(value) : "r"(addr) : "memory");
    return value;
}
__device__ __forceinline__ void fa_smem_st32(uint32_t addr, uint32_t value)
{
    asm volatile("st.shared.b32 [%0], %1;" ::"r"(addr), "r"(value) : "memory");
}

#endif
