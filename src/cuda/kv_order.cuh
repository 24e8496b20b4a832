/*
 * Launch order of the backward kernels' CTAs (sm80 and sm90), one per
 * (key block, kv head, batch entry).
 *
 * The hardware starts CTAs in blockIdx order (x fastest). In the plain grid
 * (key blocks, kv heads, batch) each (batch, kv head) pair's key blocks run
 * together. With a right window bound (causal) a pair's first key block sees
 * the most query rows and its last the fewest, so the last pair's heavy
 * first blocks start late and the others' SMs idle while they finish: a
 * list-scheduling model of the FA3 grid puts that tail at 3-7% of the
 * kernel at 512-8k keys (up to 64 blocks of 128), under 2% at 16k. Up to
 * 2/3 of the SMs' count of key blocks (88 on an H100) the grid turns into
 * (kv heads, key blocks, batch) instead: a batch entry's heads run
 * their block 0 first, then block 1, ..., so the lightest blocks come last
 * (the model's tail: 0.5-2.5% from 1k keys on; perf-gpu.md). Longer
 * sequences keep the plain grid, whose neighbours in time share a pair's
 * Q/dO and dQ accumulator in L2.
 */
#ifndef FA_CUDA_KV_ORDER_CUH
#define FA_CUDA_KV_ORDER_CUH

#include <cuda_runtime.h>

/* Host: the grid of key_blocks x heads_kv x batch CTAs on `sms` SMs; sets
 * *heads_first when it is (kv heads, key blocks, batch). heaviest_first:
 * the caller's work falls with the key block (a right window bound). */
static inline dim3 fa_kv_order_grid(bool *heads_first, unsigned key_blocks, int heads_kv, int batch, int sms,
                                    bool heaviest_first)
{
    *heads_first = heaviest_first && 3 * (long long)key_blocks <= 2LL * sms;
    if (*heads_first)
        return dim3((unsigned)heads_kv, key_blocks, (unsigned)batch);
    return dim3(key_blocks, (unsigned)heads_kv, (unsigned)batch);
}

/* Device: this CTA's kv head and key block. The batch entry is blockIdx.z
 * in both orders. */
__device__ __forceinline__ void fa_kv_block_of(bool heads_first, int &hk, int &kb)
{
    hk = heads_first ? blockIdx.x : blockIdx.y;
    kb = heads_first ? blockIdx.y : blockIdx.x;
}

#endif
