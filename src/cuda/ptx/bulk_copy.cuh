/*
 * Non-tensor bulk copies and reductions (the TMA engine without a tensor
 * map), and the proxy fence between ordinary shared-memory stores and
 * async-proxy readers.
 */
#ifndef FA_PTX_BULK_COPY_CUH
#define FA_PTX_BULK_COPY_CUH

#include <stdint.h>

// Copies `bytes` (a multiple of 16; both addresses 16-byte aligned) from
// global `src` to shared `dst`; completes on the transaction count of `bar`.
__device__ __forceinline__ void fa_bulk_load(uint32_t dst, const void *src, uint32_t bytes, uint32_t bar)
{
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}

// Adds `bytes` (a multiple of 16; both addresses 16-byte aligned) of f32 from
// shared `src` to global `dst` element-wise (atomically per element), as one
// asynchronous bulk operation of this thread's current bulk group.
__device__ __forceinline__ void fa_bulk_reduce_add_f32(float *dst, uint32_t src, uint32_t bytes)
{
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;" ::"l"(dst), "r"(src),
                 "r"(bytes)
                 : "memory");
}

// Closes this thread's current bulk group; then waits until at most
// `Pending` of its groups still read their shared-memory source.
__device__ __forceinline__ void fa_bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
template <int Pending> __device__ __forceinline__ void fa_bulk_wait_read()
{
    asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(Pending) : "memory");
}

// Makes this thread's generic-proxy shared-memory stores visible to later
// async-proxy reads (wgmma operands, TMA stores); follow with a barrier.
__device__ __forceinline__ void fa_fence_proxy_async_shared()
{
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

#endif
