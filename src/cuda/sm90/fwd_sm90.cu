/*
 * Hopper (sm_90a) forward: the launch of the kernel in fwd_kernel.cuh (what
 * it supports is decided in sm90.cu).
 */
#include "fa_internal.h"

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "fwd_kernel.cuh"
#include "problem_params.h"
#include "tensor_maps.h"

/* ------------------------------------------------------------------------ */
/* Launch                                                                   */

template <class Cfg> static fa_status launch(fa_problem *p, const char *kernel_name)
{
    fa_sm90_params prm;
    memset(&prm, 0, sizeof prm);
    fa_status st;
    if ((st = fa_sm90_encode_map(&prm.map_q, p, &p->q, 1, Cfg::kBlockM, "q")) != FA_SUCCESS ||
        (st = fa_sm90_encode_map(&prm.map_k, p, &p->k, 0, Cfg::kBlockN, "k")) != FA_SUCCESS ||
        (st = fa_sm90_encode_map(&prm.map_v, p, &p->v, 0, Cfg::kBlockN, "v")) != FA_SUCCESS ||
        (Cfg::kTmaStore && (st = fa_sm90_encode_map(&prm.map_o, p, &p->out, 1, 64, "out")) != FA_SUCCESS))
        return st;
    prm.out = p->out.data;
    prm.out_stride_batch = p->out.stride_batch;
    prm.out_stride_seq = p->out.stride_seq;
    prm.out_stride_head = p->out.stride_head;
    fa_sm90_fill_problem(prm, p);
    prm.score_scale = p->softcap > 0.0f ? 1.0f : p->softmax_scale;
    prm.num_m_blocks = (int)((p->seqlen_q + Cfg::kBlockM - 1) / Cfg::kBlockM);
    int64_t tiles = (int64_t)prm.num_m_blocks * p->heads_q * p->batch;
    if (tiles > 0x7fffffff)
        return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: %lld tiles exceed the scheduler's int range", (long long)tiles);
    prm.num_tiles = (int)tiles;
    prm.heaviest_first = p->window_right >= 0 || p->window_left >= 0;
    /* heaviest-first sections (fa_sm90_tile_of): as many (batch, head) pairs
     * as keep their K and V within 32 MB of the 50 MB L2 (FA3's choice), at
     * least one; without a window one section of all */
    int64_t head_batches = p->heads_q * p->batch;
    int64_t kv_bytes = 4 * p->seqlen_k * p->head_dim / (p->heads_q / p->heads_kv); /* K + V, 2 bytes each */
    int64_t per_section = prm.heaviest_first ? ((int64_t)32 << 20) / (kv_bytes > 0 ? kv_bytes : 1) : head_batches;
    prm.heads_per_section = (int)(per_section < 1 ? 1 : per_section > head_batches ? head_batches : per_section);
    if (tiles == 0) {
        p->kernel_name = kernel_name;
        return FA_SUCCESS;
    }

    /* Persistent: one CTA per SM (a tile needs all of an SM's smem), so the
     * producer loads the next tile while the consumers finish this one.
     * Causal/window tiles differ in work; the snake order of fa_tile_iter
     * keeps the CTAs' totals even (a plain stride left ~12% on the first
     * CTAs: hdim128 causal 16k 459 vs 555 TFLOP/s for one CTA per tile; the
     * snake matches one CTA per tile at long seqlens and beats it by 5-15% at
     * seqlen <= 4k). */
    int device = 0, sms = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess)
        err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (err == cudaSuccess)
        err = cudaFuncSetAttribute(fa_sm90_fwd_kernel<Cfg>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   Cfg::kSmemBytes);
    if (err != cudaSuccess)
        return fa_fail(FA_ERROR_DEVICE, "sm90: launch setup: %s", cudaGetErrorString(err));
    unsigned grid = (unsigned)(tiles < sms ? tiles : sms);
    fa_sm90_fwd_kernel<Cfg><<<grid, Cfg::kThreads, Cfg::kSmemBytes, (cudaStream_t)p->stream>>>(prm);
    err = cudaGetLastError();
    if (err != cudaSuccess)
        return fa_fail(FA_ERROR_DEVICE, "sm90: launch of %s failed: %s", kernel_name, cudaGetErrorString(err));
    p->kernel_name = kernel_name;
    return FA_SUCCESS;
}

/* Tile shape per head dim (FA3's tile_size.h, adapted to 2 consumer WGs):
 * the key block shrinks as the head dim grows so that Q, two stages of K and
 * V, and the accumulators fit in shared memory and registers. Every shape
 * runs the intra-warpgroup overlap; at hdim 256 (key block 80) it fits in
 * registers since P is double-buffered and measured 632 -> 722 TFLOP/s at
 * 16k against the kernel without it (docs/perf-sm90.md, v8). */
template <typename Elem> static fa_status launch_for_head_dim(fa_problem *p)
{
    const bool bf16 = !fa_is_half<Elem>::value;
    switch (p->head_dim) {
    case 64:
        /* long sequences: three consumer warpgroups (192 query rows, key
         * block 96, 160 registers each), since one warpgroup's GEMMs of a key
         * block are too short to hide another's softmax; short ones keep two
         * (192-row tiles waste more of a short sequence). Three K/V stages:
         * the short key blocks of three warpgroups outrun two (+2-6% at
         * 2k-4k; at 512-1k a third or fourth stage measured no gain) */
        if (p->seqlen_q >= 2048)
            return launch<fa_sm90_config<Elem, 64, 96, 3, 3>>(p, bf16 ? "sm90.fwd.hdim64.wg3.bf16"
                                                                     : "sm90.fwd.hdim64.wg3.fp16");
        return launch<fa_sm90_config<Elem, 64, 128, 2>>(p, bf16 ? "sm90.fwd.hdim64.bf16" : "sm90.fwd.hdim64.fp16");
    case 96:
        return launch<fa_sm90_config<Elem, 128, 128, 2>>(p, bf16 ? "sm90.fwd.hdim96.bf16" : "sm90.fwd.hdim96.fp16");
    case 128:
        return launch<fa_sm90_config<Elem, 128, 128, 2>>(p,
                                                         bf16 ? "sm90.fwd.hdim128.bf16" : "sm90.fwd.hdim128.fp16");
    case 192:
        return launch<fa_sm90_config<Elem, 192, 96, 2>>(p, bf16 ? "sm90.fwd.hdim192.bf16" : "sm90.fwd.hdim192.fp16");
    case 256:
        return launch<fa_sm90_config<Elem, 256, 80, 2>>(p, bf16 ? "sm90.fwd.hdim256.bf16" : "sm90.fwd.hdim256.fp16");
    default:
        return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: head_dim %lld", (long long)p->head_dim);
    }
}

extern "C" fa_status fa_sm90_forward(fa_problem *p)
{
    if (p->dtype == FA_DTYPE_BF16)
        return launch_for_head_dim<__nv_bfloat16>(p);
    if (p->dtype == FA_DTYPE_F16)
        return launch_for_head_dim<__half>(p);
    return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: dtype %s", fa_dtype_name(p->dtype));
}
