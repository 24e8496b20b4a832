/*
 * Zeroing shared memory that an async-proxy reader (wgmma, TMA store) reads
 * next: ordinary 16-byte stores, then the proxy fence that makes them visible
 * to the async proxy (needed before any barrier that lets the reader go).
 */
#ifndef FA_PTX_SMEM_CLEAR_CUH
#define FA_PTX_SMEM_CLEAR_CUH

#include <stdint.h>

#include "bulk_copy.cuh" /* fa_fence_proxy_async_shared */

// 16 zero bytes at shared address `addr` (16-byte aligned).
__device__ __forceinline__ void fa_smem_zero16(uint32_t addr)
{
    asm volatile("st.shared.v4.b32 [%0], {%1, %1, %1, %1};" ::"r"(addr), "r"(0) : "memory");
}

#endif
