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
#include <stdlib.h>
#include <string.h>

#include "fwd_kernel.cuh"
#include "problem_params.h"
#include "tensor_maps.h"

/* ------------------------------------------------------------------------ */
/* Launch                                                                   */

/* Whether a window (causal included) hides any key: validation made every
 * window that cannot unbounded. */
static bool has_window(const fa_problem *p) { return p->window_left >= 0 || p->window_right >= 0; }

/* Clusters of two CTAs on adjacent m blocks of one head share each K/V
 * block (each loads half, TMA multicasts it to both), halving the L2 -> SM
 * traffic per FLOP. Both CTAs must walk the same key blocks: no window, no
 * varlen, and an even number of m blocks. FA_SM90_CLUSTER=0 in the
 * environment turns clusters off (to measure one against the other). */
static bool cluster_fits(const fa_problem *p, int64_t block_m)
{
    const char *env = getenv("FA_SM90_CLUSTER");
    if (env != NULL && strcmp(env, "0") == 0)
        return false;
    return !p->varlen && !has_window(p) && ((p->seqlen_q + block_m - 1) / block_m) % 2 == 0;
}

template <class Cfg> static fa_status launch(fa_problem *p, const char *kernel_name)
{
    fa_sm90_params prm;
    memset(&prm, 0, sizeof prm);
    fa_sm90_fill_problem(prm, p);
    prm.seqused_k = p->seqused_k;
    prm.kv_block_table = p->kv_block_table;
    prm.kv_block_table_stride = (int)p->kv_block_table_stride;
    prm.kv_page_size = (int)p->kv_page_size;
    prm.tail_rows_readable = p->varlen || p->seqused_k || p->kv_block_table;
    prm.num_m_blocks = (int)((p->seqlen_q + Cfg::kBlockM - 1) / Cfg::kBlockM);
    /* a CTA's share of a K/V block per TMA box, or a page where pages are
     * smaller (sm90.cu: a page size that divides it) */
    int kv_box_rows = Cfg::kBlockN / Cfg::kClusterSize;
    if (p->kv_block_table && p->kv_page_size < kv_box_rows)
        kv_box_rows = (int)p->kv_page_size;
    prm.kv_box_rows = kv_box_rows;
    fa_status st;
    if ((st = fa_sm90_encode_map(&prm.map_q, p, &p->q, 1, Cfg::kBlockM, "q")) != FA_SUCCESS ||
        (st = fa_sm90_encode_map(&prm.map_k, p, &p->k, 0, kv_box_rows, "k")) != FA_SUCCESS ||
        (st = fa_sm90_encode_map(&prm.map_v, p, &p->v, 0, kv_box_rows, "v")) != FA_SUCCESS ||
        (Cfg::kTmaStore && (st = fa_sm90_encode_map(&prm.map_o, p, &p->out, 1, 64, "out")) != FA_SUCCESS))
        return st;
    prm.out = p->out.data;
    prm.out_stride_batch = p->out.stride_batch;
    prm.out_stride_seq = p->out.stride_seq;
    prm.out_stride_head = p->out.stride_head;
    prm.score_scale = p->softcap > 0.0f ? 1.0f : p->softmax_scale;
    int64_t tiles = (int64_t)prm.num_m_blocks * p->heads_q * p->batch;
    if (tiles > 0x7fffffff)
        return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: %lld tiles exceed the scheduler's int range", (long long)tiles);
    prm.num_tiles = (int)tiles;
    prm.heaviest_first = p->window_right >= 0 || p->window_left >= 0;
    int device = 0, sms = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess)
        err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (err != cudaSuccess)
        return fa_fail(FA_ERROR_DEVICE, "sm90: device query: %s", cudaGetErrorString(err));
    /* heaviest-first sections (fa_sm90_tile_of): as many (batch, head) pairs
     * as keep their K and V within 32 MB of the 50 MB L2 (FA3's choice), at
     * least one; without a window one section of all. Where a head has at
     * most 8 m blocks, fewer: as many as give each CTA at most one tile
     * (one round of the snake per section, never a fraction more: the
     * CTAs that take a section's last few tiles hold back the next one).
     * Measured against 32 MB (perf-sm90.md, v17): hdim 128 causal 512 270
     * -> 315 TFLOP/s, 1k +2-3%; sections of 1.03 rounds lost 13-17% at 1k,
     * of 1.45 rounds 11% (hdim 256 causal 512); at 16 m blocks (2k) one
     * round read -4 to +4%, so longer sequences keep 32 MB. */
    int64_t head_batches = p->heads_q * p->batch;
    int64_t kv_bytes = 4 * p->seqlen_k * p->head_dim / (p->heads_q / p->heads_kv); /* K + V, 2 bytes each */
    int64_t per_section = prm.heaviest_first ? ((int64_t)32 << 20) / (kv_bytes > 0 ? kv_bytes : 1) : head_batches;
    if (prm.heaviest_first && prm.num_m_blocks >= 1 && prm.num_m_blocks <= 8) {
        int64_t one_round = sms / prm.num_m_blocks;
        if (one_round >= 1 && one_round < per_section)
            per_section = one_round;
    }
    prm.heads_per_section = (int)(per_section < 1 ? 1 : per_section > head_batches ? head_batches : per_section);
    prm.num_units = prm.num_tiles / Cfg::kClusterSize;
    prm.section_units = prm.heads_per_section * prm.num_m_blocks / Cfg::kClusterSize;
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
    err = cudaFuncSetAttribute(fa_sm90_fwd_kernel<Cfg>, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
    cudaLaunchConfig_t config;
    memset(&config, 0, sizeof config);
    cudaLaunchAttribute cluster_dims;
    cluster_dims.id = cudaLaunchAttributeClusterDimension;
    cluster_dims.val.clusterDim.x = (unsigned)Cfg::kClusterSize;
    cluster_dims.val.clusterDim.y = cluster_dims.val.clusterDim.z = 1;
    config.blockDim = dim3(Cfg::kThreads);
    config.dynamicSmemBytes = Cfg::kSmemBytes;
    config.stream = (cudaStream_t)p->stream;
    config.attrs = &cluster_dims;
    config.numAttrs = 1;
    /* one CTA per SM, or as many clusters as fit at once (a GPC with an odd
     * number of free SMs leaves one of them out) */
    int64_t resident = sms;
    if (err == cudaSuccess && Cfg::kClusterSize > 1) {
        /* per device, asked once (the query costs about as much as a launch) */
        static int clusters_of_device[64];
        int clusters = device < 64 ? clusters_of_device[device] : 0;
        if (clusters == 0) {
            config.gridDim = dim3((unsigned)(sms - sms % Cfg::kClusterSize));
            err = cudaOccupancyMaxActiveClusters(&clusters, fa_sm90_fwd_kernel<Cfg>, &config);
            if (err == cudaSuccess && clusters < 1)
                return fa_fail(FA_ERROR_DEVICE, "sm90: no cluster of %d CTAs fits on this device", Cfg::kClusterSize);
            if (err == cudaSuccess && device < 64)
                clusters_of_device[device] = clusters;
        }
        resident = clusters;
    }
    if (err != cudaSuccess)
        return fa_fail(FA_ERROR_DEVICE, "sm90: launch setup: %s", cudaGetErrorString(err));
    config.gridDim = dim3((unsigned)((prm.num_units < resident ? prm.num_units : resident) * Cfg::kClusterSize));
    err = cudaLaunchKernelEx(&config, fa_sm90_fwd_kernel<Cfg>, prm);
    if (err == cudaSuccess)
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
    /* the kernel's name in debug/bench output */
#define FA_LAUNCH(label, ...) launch<__VA_ARGS__>(p, bf16 ? "sm90.fwd." label ".bf16" : "sm90.fwd." label ".fp16")
    /* hdim >= 128: clusters of two where they fit (".x2") */
#define FA_LAUNCH_PAIRS(label, hdim, block_n)                                                                \
    (cluster_fits(p, 128) ? FA_LAUNCH(label ".x2", fa_sm90_config<Elem, hdim, block_n, 2, 2, 2>)             \
                          : FA_LAUNCH(label, fa_sm90_config<Elem, hdim, block_n, 2>))
    switch (p->head_dim) {
    case 64:
        /* three consumer warpgroups (192 query rows, 160 registers each),
         * since one warpgroup's GEMMs of a key block are too short to hide
         * another's softmax: key block 128 with one P buffer
         * (fa_sm90_config::kPBuffers; +3-11% over 96 with two, non-causal
         * at every seqlen and causal at >= 8k; and, since v21 / v22
         * shortened its step, 4% fewer cycles than 96 with three K/V stages
         * at causal 2k-4k, which it replaced: perf-sm90.md, v25); short
         * causal sequences keep two warpgroups (a 192-row tile wastes more
         * of the triangle) */
        if (!has_window(p) || p->seqlen_q >= 2048)
            return FA_LAUNCH("hdim64.wg3", fa_sm90_config<Elem, 64, 128, 2, 3>);
        return FA_LAUNCH("hdim64", fa_sm90_config<Elem, 64, 128, 2>);
    case 96:
        return FA_LAUNCH_PAIRS("hdim96", 128, 128);
    case 128:
        return FA_LAUNCH_PAIRS("hdim128", 128, 128);
    case 192:
        return FA_LAUNCH_PAIRS("hdim192", 192, 96);
    case 256:
        /* short sequences: 64-key blocks, whose edges meet the 128-row
         * tiles' causal diagonal (80-key blocks cross it, 11% more key
         * columns at seqlen 512): 2.7% / 1% fewer cycles at causal 512 /
         * 1k, and 2% at non-causal 512 (one CTA against 80-key pairs); but
         * 2.5-5% more at non-causal 1k-2k and causal 2k (perf-sm90.md,
         * v27, v28). One instance: without clusters, which a window rules
         * out anyway. */
        if (p->seqlen_k <= 512 || (has_window(p) && p->seqlen_k <= 1024))
            return FA_LAUNCH("hdim256.n64", fa_sm90_config<Elem, 256, 64, 2>);
        return FA_LAUNCH_PAIRS("hdim256", 256, 80);
    default:
        return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: head_dim %lld", (long long)p->head_dim);
    }
#undef FA_LAUNCH_PAIRS
#undef FA_LAUNCH
}

extern "C" fa_status fa_sm90_forward(fa_problem *p)
{
    if (p->dtype == FA_DTYPE_BF16)
        return launch_for_head_dim<__nv_bfloat16>(p);
    if (p->dtype == FA_DTYPE_F16)
        return launch_for_head_dim<__half>(p);
    return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: dtype %s", fa_dtype_name(p->dtype));
}
