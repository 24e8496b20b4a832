/*
 * TMA (the bulk tensor copy engine): global -> shared tile copies described
 * by a CUtensorMap that the host encodes (cuTensorMapEncodeTiled) and the
 * kernel receives by value as a `const __grid_constant__ CUtensorMap`
 * parameter; the PTX takes the generic address of that parameter.
 *
 * Coordinates are element indices, innermost dimension first. Loads of boxes
 * that stick out of the tensor fill the outside with zeros and still count
 * the full box bytes on the mbarrier; stores of such boxes write only the
 * part inside the tensor.
 */
#ifndef FA_PTX_TMA_CUH
#define FA_PTX_TMA_CUH

#include <cuda.h>
#include <stdint.h>

// Pulls the tensor map into the descriptor cache ahead of the first copy.
__device__ __forceinline__ void fa_tma_prefetch_map(const CUtensorMap *map)
{
    asm volatile("prefetch.tensormap [%0];" ::"l"(map) : "memory");
}

// Loads the box at (c0, c1, c2, c3) of a rank-4 map into shared memory at
// `dst`; the copy completes its bytes on the transaction count of barrier `bar`.
__device__ __forceinline__ void fa_tma_load_4d(uint32_t dst, const CUtensorMap *map, uint32_t bar,
                                               int c0, int c1, int c2, int c3)
{
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%3, %4, %5, %6}], [%2];" ::"r"(dst),
                 "l"(map), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
                 : "memory");
}

// fa_tma_load_4d for every CTA of the cluster in `cta_mask` (bit i = rank
// i): the box lands at `dst` and completes its bytes on the barrier at `bar`
// in each of them.
__device__ __forceinline__ void fa_tma_load_4d_multicast(uint32_t dst, const CUtensorMap *map, uint32_t bar,
                                                         int c0, int c1, int c2, int c3, uint16_t cta_mask)
{
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
                 " [%0], [%1, {%3, %4, %5, %6}], [%2], %7;" ::"r"(dst),
                 "l"(map), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "h"(cta_mask)
                 : "memory");
}

// Stores the box at (c0, c1, c2, c3) of a rank-4 map from shared memory at
// `src`, as part of this thread's bulk async-group (ptx/bulk_copy.cuh:
// fa_bulk_commit, then fa_bulk_wait_read before `src` is written again).
// The writers of `src` fence the async proxy and synchronize first.
__device__ __forceinline__ void fa_tma_store_4d(const CUtensorMap *map, uint32_t src, int c0, int c1, int c2, int c3)
{
    asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];" ::"l"(map),
                 "r"(src), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
                 : "memory");
}

#endif
