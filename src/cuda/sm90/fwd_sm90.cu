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

#include "../key_split.cuh"
#include "fwd_kernel.cuh"
#include "problem_params.h"
#include "tensor_maps.h"

/* ------------------------------------------------------------------------ */
/* FP8: Vᵀ                                                                   */

/* The FP8 PV needs V as a K-major operand (8-bit wgmma has no transpose),
 * i.e. [dim][key]. Either the kernel transposes each V block itself
 * (fa_sm90_transpose_v; hdim 128, see vt_in_kernel) or a pass before the
 * kernel writes it to the workspace,
 * [kv head][dim][vt_keys], each sequence's keys from a multiple of 128 on
 * (fa_sm90_vt_start: one TMA box per key block, fa_sm90_encode_vt_map), so
 * that varlen sequences take their own length, not the longest. Keys go in
 * P's register order (fa_probs_to_operand): position c = 4t + e of each 16
 * keys holds key 2t + e (e < 2) or 8 + 2t + e - 2. Keys past a sequence's
 * used keys are zero up to its last key block, so that the kernel never
 * reads a neighbour's (varlen) or stale (seqused_k) V; blocks past that
 * are neither written nor read. */
static int64_t vt_seq_keys(const fa_problem *p) { return (p->seqlen_k + 127) / 128 * 128; }
static int64_t vt_keys(const fa_problem *p)
{
    return p->varlen ? 128 * ((p->total_k + 127) / 128 + p->batch) : p->batch * vt_seq_keys(p);
}

/* Whether the FP8 forward of p transposes V in the kernel (hdim 128 only:
 * fa_sm90_config::kVtInKernel). The transpose in the kernel costs it ~5%
 * (hdim 128 16k, FA3 grid: 700 against 745 TFLOP/s), the pass a copy of
 * V (32 µs for 16k tokens of 2048 columns: 20% of the forward at seqlen
 * 512). The kernel's work per key of V goes with its query rows per kv
 * head (halved by a causal mask): below 3072 of them the kernel
 * transposes (FA3 grid, call 5 of perf.md's twenty-eighth session:
 * +20% / +31% at 512, +1-6% at 2k; at 4k -3% / 0%, at 16k -6%), and
 * decoding (one row over a long cache) never pays for a copy of the whole
 * cache. FA_SM90_FP8_VT=kernel / pass forces one (tests, benchmarks). */
static bool vt_in_kernel(const fa_problem *p)
{
    if (p->head_dim != 128)
        return false;
    const char *force = getenv("FA_SM90_FP8_VT");
    if (force != NULL && (!strcmp(force, "kernel") || !strcmp(force, "pass")))
        return !strcmp(force, "kernel");
    const double rows = (p->varlen ? (double)p->total_q / (double)p->batch : (double)p->seqlen_q) *
                        (double)(p->heads_q / p->heads_kv) * (p->window_right == 0 ? 0.5 : 1.0);
    return rows < 3072.0;
}

extern "C" size_t fa_sm90_fp8_vt_bytes(const fa_problem *p)
{
    if (!fa_dtype_is_fp8(p->dtype) || vt_in_kernel(p))
        return 0;
    return (size_t)(p->heads_kv * p->head_dim * vt_keys(p));
}

/* ------------------------------------------------------------------------ */
/* The key split (../key_split.cuh)                                         */

/* A grid of fewer 128-row tiles than SMs (decoding: a few query rows per
 * head over a long cache) leaves SMs idle while each CTA walks every key,
 * at the cost of 128 rows' GEMMs per key block however few rows there
 * are: FP8, one row over 128k keys took 1569 µs against the bf16 split's
 * 197 (perf.md, twenty-eighth session); bf16, four causal rows over 128k
 * keys 1320 µs (twenty-ninth). Each tile then runs as parts over a share
 * of its key blocks (fa_sm90_tile_of), as many as last_wave_parts finds
 * worth it with the whole grid as its last wave (a part's extra cost, in
 * key blocks: its Q load and pipeline fill, its fp32 store and its share
 * of the combine), and fa_split_combine_kernel merges them. Fixed lengths
 * only (the combine finds a tile's rows from seqlen_q); windows and KV
 * caches split each tile's own key range. The parts are instances of
 * their own (fa_sm90_config::kKeySplit) at FP8 hdim 128 / 256 and 16-bit
 * hdim 64 / 128 / 256; hdim 96 / 192 do not split here (sm80's split takes
 * 16-bit decoding there: fa_sm90_forward_splits).
 * With GQA the split packs the query heads of a KV head into one tile
 * (FA3's PackGQA; fa_sm90_params::pack_gqa): one query row per
 * head and 4 heads per KV head fill 4 of a tile's 128 rows, not 1, so
 * there are a quarter of the tiles, each split into more parts, and each
 * K / V block is read once per group. FA_SM90_FWD_SPLIT=k forces k parts
 * where the split can run, FA_SM90_PACK_GQA=0 turns packing off (tests,
 * benchmarks). */
constexpr double kSplitPartExtra = 3.0;
constexpr int kSplitMaxParts = 32;
constexpr size_t kSplitMaxBytes = (size_t)128 << 20;

/* The key block of p's split instance (launch_fp8, launch_for_head_dim),
 * 0 where none exists. */
static int split_block_n(const fa_problem *p)
{
    if (fa_dtype_is_fp8(p->dtype))
        return 128;
    if (p->head_dim == 64 || p->head_dim == 128)
        return 128;
    return p->head_dim == 256 ? 80 : 0;
}

struct fa_sm90_key_split {
    int64_t tiles; /* the grid's tiles */
    int parts;     /* per tile (1: no split) */
    int pack;      /* query heads per tile (fa_sm90_params::pack_gqa) */
    int block_m;   /* query rows per tile: the instance's fa_sm90_config::kBlockM */
    int64_t m_blocks; /* tiles per (head group, batch entry) */
    size_t bytes;  /* part_o, then part_lse */
};

/* Query rows per tile of the split: 128 (two consumer warpgroups), or for
 * 16-bit problems of at most 64 packed rows a decoding tile of 64 (one
 * warpgroup: half the GEMMs of padded rows per key block).
 * FA_SM90_SPLIT_BLOCK_M=128 keeps the two-warpgroup tile (A/B). */
static int split_block_m(const fa_problem *p, int pack)
{
    const char *env = getenv("FA_SM90_SPLIT_BLOCK_M");
    if (fa_dtype_is_fp8(p->dtype) || p->seqlen_q * pack > 64 || (env != NULL && strcmp(env, "128") == 0))
        return 128;
    return 64;
}

/* Query heads per tile of the split: the heads per KV head where they are
 * a power of two up to 64 (a TMA box of block_m / pack rows of pack heads).
 * A window (causal included) masks a packed row by its query, row /
 * pack (fa_sm90_tile_of, fa_scores_to_max). */
static int pack_of(const fa_problem *p)
{
    const int64_t ratio = p->heads_q / p->heads_kv;
    const char *env = getenv("FA_SM90_PACK_GQA");
    if ((env != NULL && strcmp(env, "0") == 0) || ratio < 2 || ratio > 64 || (ratio & (ratio - 1)) != 0)
        return 1;
    return (int)ratio;
}

static fa_sm90_key_split plan_key_split(const fa_problem *p, int sms)
{
    const int pack = pack_of(p), block_n = split_block_n(p), block_m = split_block_m(p, pack);
    const int64_t m_blocks = (p->seqlen_q * pack + block_m - 1) / block_m;
    const int64_t tiles = m_blocks * (p->heads_q / pack) * p->batch;
    fa_sm90_key_split plan = {tiles, 1, pack, block_m, m_blocks, 0};
    if (block_n == 0 || p->varlen || p->seqlen_k <= 0 || tiles <= 0 || tiles >= sms)
        return plan;
    const int key_blocks = widest_tile_key_blocks(p, (block_m + pack - 1) / pack + 1, block_n);
    const size_t part_bytes = (size_t)block_m * (p->head_dim + 1) * 4;
    int64_t max_parts = (int64_t)(kSplitMaxBytes / part_bytes) / tiles;
    max_parts = max_parts < key_blocks ? max_parts : key_blocks;
    max_parts = max_parts < kSplitMaxParts ? max_parts : kSplitMaxParts;
    plan.parts = last_wave_parts(tiles, tiles, sms, key_blocks, kSplitPartExtra, (int)max_parts,
                                 getenv("FA_SM90_FWD_SPLIT"));
    plan.bytes = plan.parts > 1 ? (size_t)(tiles * plan.parts) * part_bytes : 0;
    return plan;
}

/* Where the split's partial results start: after the FP8 Vᵀ pass's copy
 * where the split reads one (hdim 256; at hdim 128 its instance transposes
 * V in the kernel: launch_fp8), 256-byte aligned. */
static size_t split_offset(const fa_problem *p)
{
    return p->head_dim == 128 ? 0 : (fa_sm90_fp8_vt_bytes(p) + 255) / 256 * 256;
}

extern "C" size_t fa_sm90_forward_workspace_size(const fa_problem *p, const fa_cuda_device_info *dev)
{
    const fa_sm90_key_split split = plan_key_split(p, dev->num_sms);
    return split.parts > 1 ? split_offset(p) + split.bytes : fa_sm90_fp8_vt_bytes(p);
}

/* The split that runs: the plan, where the workspace was sized for it (a
 * size query under another FA_SM90_FWD_SPLIT runs whole tiles). */
static fa_sm90_key_split key_split_of(const fa_problem *p, const fa_cuda_device_info *dev)
{
    fa_sm90_key_split split = plan_key_split(p, dev->num_sms);
    if (split.parts > 1 && (p->workspace == NULL || p->workspace_size < split_offset(p) + split.bytes))
        split.parts = 1;
    return split;
}

extern "C" int fa_sm90_forward_splits(const fa_problem *p, const fa_cuda_device_info *dev)
{
    return plan_key_split(p, dev->num_sms).parts > 1;
}

/* The combine's arguments (fa_split_combine_kernel reads these names). */
struct fa_sm90_combine_args {
    fa_problem p;
    int split_parts, pack_gqa;
    float *part_o, *part_lse;
    bool out_vectorized;
};

template <class Cfg> static fa_status combine_parts(const fa_problem *p, const fa_sm90_key_split &split, float *part_o)
{
    constexpr int D = Cfg::kHeadDim, BM = Cfg::kBlockM; /* = split.block_m (launch) */
    fa_sm90_combine_args args;
    args.p = *p;
    args.split_parts = split.parts;
    args.pack_gqa = split.pack;
    args.part_o = part_o;
    args.part_lse = part_o + split.tiles * split.parts * BM * D;
    args.out_vectorized = true; /* TMA's rules (sm90.cu): 16-byte aligned rows */
    const int per_tile = combine_blocks_per_tile(p->seqlen_q * split.pack, BM, combine_rows(D));
    fa_split_combine_kernel<typename Cfg::OutElem, D, BM, fa_sm90_combine_args>
        <<<(unsigned)(split.tiles * per_tile), 128, 0, (cudaStream_t)p->stream>>>(args);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        return fa_fail(FA_ERROR_DEVICE, "sm90: launch of the key split's combine failed: %s",
                       cudaGetErrorString(err));
    return FA_SUCCESS;
}

struct fa_vt_params {
    const uint8_t *v;
    int64_t stride_batch, stride_seq, stride_head; /* bytes (fp8); paged: stride_batch per page */
    const int32_t *cu_seqlens_k, *seqused_k;        /* varlen / KV cache, or NULL */
    const int32_t *block_table;                     /* a paged cache, or NULL */
    int64_t block_table_stride, page_size;
    int seqlen_k, dim, heads_kv;
    int keys, seq_keys; /* per Vᵀ row; per sequence (fixed length) */
    uint8_t *vt;
};

/* One CTA per 64 keys of one (batch, kv head): the keys' V rows into shared
 * memory (16 bytes per thread, zeros past the used keys; a paged cache's
 * rows from the sequence's pages), then each thread writes 16 permuted
 * keys of one Vᵀ row; key blocks past the sequence's last one are left
 * unwritten (never read). v (b, s, hk, d) or (pages, page_size, hk, d) ->
 * vt [b][hk][d][keys] */
__global__ void __launch_bounds__(256) fa_sm90_fp8_transpose_v(const __grid_constant__ fa_vt_params p)
{
    constexpr int kKeys = 64;
    __shared__ __align__(16) uint8_t tile[kKeys][256 + 16]; /* + 16: fewer bank conflicts in the column reads */
    const int b = blockIdx.z, head = blockIdx.y, key0 = blockIdx.x * kKeys;
    int64_t first = 0;
    int used = p.seqlen_k;
    if (p.cu_seqlens_k != nullptr) {
        first = p.cu_seqlens_k[b];
        used = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
    }
    if (p.seqused_k != nullptr)
        used = p.seqused_k[b];
    /* the kernel reads the key blocks of 128 that hold used keys, no more:
     * a shorter sequence (varlen, seqused_k) costs only its own keys */
    if (key0 >= (used + 127) / 128 * 128)
        return;
    const int chunks = p.dim / 16; /* 16-byte chunks per row */
    for (int i = threadIdx.x; i < kKeys * chunks; i += blockDim.x) {
        const int r = i / chunks, c = i % chunks, key = key0 + r;
        uint4 value = make_uint4(0, 0, 0, 0);
        if (key < used) {
            int64_t outer = p.cu_seqlens_k != nullptr ? 0 : b, row = p.cu_seqlens_k != nullptr ? first + key : key;
            if (p.block_table != nullptr) {
                outer = p.block_table[b * p.block_table_stride + key / p.page_size];
                row = key % p.page_size;
            }
            const int64_t at = outer * p.stride_batch + row * p.stride_seq + head * p.stride_head + 16 * c;
            value = *reinterpret_cast<const uint4 *>(p.v + at);
        }
        *reinterpret_cast<uint4 *>(&tile[r][16 * c]) = value;
    }
    __syncthreads();
    const int first_vt = fa_sm90_vt_start(p.cu_seqlens_k != nullptr, p.cu_seqlens_k, p.seq_keys, b);
    uint8_t *out = p.vt + (int64_t)head * p.dim * p.keys + first_vt + key0;
    for (int i = threadIdx.x; i < p.dim * (kKeys / 16); i += blockDim.x) {
        const int x = i / (kKeys / 16), group = i % (kKeys / 16);
        uint32_t word[4];
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            uint32_t packed = 0;
#pragma unroll
            for (int e = 0; e < 4; ++e) { /* position 4w + e holds key 2w + e or 8 + 2w + e - 2 */
                const int key = 16 * group + (e < 2 ? 2 * w + e : 8 + 2 * w + e - 2);
                packed |= (uint32_t)tile[key][x] << (8 * e);
            }
            word[w] = packed;
        }
        *reinterpret_cast<uint4 *>(out + (int64_t)x * p.keys + 16 * group) =
            make_uint4(word[0], word[1], word[2], word[3]);
    }
}

/* Vᵀ of p's V into vt (fa_sm90_fp8_vt_bytes), on p's stream. */
static fa_status transpose_v(const fa_problem *p, uint8_t *vt)
{
    fa_vt_params prm;
    prm.v = static_cast<const uint8_t *>(p->v.data);
    prm.stride_batch = p->v.stride_batch;
    prm.stride_seq = p->v.stride_seq;
    prm.stride_head = p->v.stride_head;
    prm.cu_seqlens_k = p->varlen ? p->cu_seqlens_k : nullptr;
    prm.seqused_k = p->seqused_k;
    prm.block_table = p->kv_block_table;
    prm.block_table_stride = p->kv_block_table_stride;
    prm.page_size = p->kv_page_size;
    prm.seqlen_k = (int)p->seqlen_k;
    prm.dim = (int)p->head_dim;
    prm.heads_kv = (int)p->heads_kv;
    prm.keys = (int)vt_keys(p);
    prm.seq_keys = (int)vt_seq_keys(p);
    prm.vt = vt;
    dim3 grid((unsigned)(prm.seq_keys / 64), (unsigned)p->heads_kv, (unsigned)p->batch);
    fa_sm90_fp8_transpose_v<<<grid, 256, 0, (cudaStream_t)p->stream>>>(prm);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        return fa_fail(FA_ERROR_DEVICE, "sm90: launch of the FP8 V transpose failed: %s", cudaGetErrorString(err));
    return FA_SUCCESS;
}

/* An FP8 forward without keys (seqlen_k or total_k 0; no tensor map can
 * describe them): every row is fully masked, out 0 and lse -inf. One CTA per
 * (query row, head). out (b, sq, hq, d) bf16, lse (b, hq, sq) or (hq,
 * total_q). */
__global__ void __launch_bounds__(128) fa_sm90_fp8_no_keys(fa_tensor out, float *lse, int varlen,
                                                            int64_t seqlen_q, int64_t total_q, int64_t heads,
                                                            int dim)
{
    const int64_t row = blockIdx.x, h = blockIdx.y; /* row: packed, or b · seqlen_q + i */
    const int64_t b = varlen ? 0 : row / seqlen_q, i = varlen ? row : row % seqlen_q;
    __nv_bfloat16 *o = static_cast<__nv_bfloat16 *>(out.data) + b * out.stride_batch + i * out.stride_seq +
                       h * out.stride_head;
    for (int x = threadIdx.x; x < dim; x += blockDim.x)
        o[x] = __float2bfloat16(0.0f);
    if (lse != nullptr && threadIdx.x == 0)
        lse[varlen ? h * total_q + row : (b * heads + h) * seqlen_q + i] = -INFINITY;
}

static fa_status fp8_no_keys(fa_problem *p)
{
    const int64_t rows = p->varlen ? p->total_q : p->batch * p->seqlen_q;
    p->kernel_name = "sm90.fwd.fp8.nokeys";
    if (rows == 0)
        return FA_SUCCESS;
    if (rows > 0x7fffffff || p->heads_q > 65535)
        return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: %lld rows x %lld heads without keys", (long long)rows,
                       (long long)p->heads_q);
    fa_sm90_fp8_no_keys<<<dim3((unsigned)rows, (unsigned)p->heads_q), 128, 0, (cudaStream_t)p->stream>>>(
        p->out, p->lse, p->varlen, p->seqlen_q, p->total_q, p->heads_q, (int)p->head_dim_v);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        return fa_fail(FA_ERROR_DEVICE, "sm90: launch of the FP8 no-key kernel failed: %s", cudaGetErrorString(err));
    return FA_SUCCESS;
}

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

template <class Cfg> static fa_status launch(fa_problem *p, const fa_cuda_device_info *dev, const char *kernel_name)
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
    /* the workspace was sized by the same rule (vt_in_kernel); should it
     * have answered otherwise then (FA_SM90_FP8_VT changed in between),
     * refuse rather than write past it */
    if (Cfg::kFp8 && !Cfg::kVtInKernel && (p->workspace == NULL || p->workspace_size < fa_sm90_fp8_vt_bytes(p)))
        return fa_fail(FA_ERROR_INTERNAL, "sm90: the FP8 Vᵀ pass needs %zu bytes of workspace, has %zu",
                       fa_sm90_fp8_vt_bytes(p), p->workspace == NULL ? (size_t)0 : p->workspace_size);
    fa_sm90_key_split split = key_split_of(p, dev);
    if (!Cfg::kKeySplit)
        split.parts = split.pack = 1;
    else if (split.parts < 2 || split.block_m != Cfg::kBlockM) /* launch_fp8 / launch_for_head_dim asked the same */
        return fa_fail(FA_ERROR_INTERNAL, "sm90: a key-split instance launched without its split");
    prm.pack_gqa = split.pack;
    if (split.pack > 1)
        prm.num_m_blocks = (int)split.m_blocks;
    float *part_o = split.parts > 1 ? (float *)((uint8_t *)p->workspace + split_offset(p)) : NULL;
    prm.split_parts = split.parts;
    prm.part_o = part_o;
    prm.part_lse = part_o != NULL ? part_o + split.tiles * split.parts * Cfg::kBlockM * Cfg::kHeadDim : NULL;
    if ((split.pack > 1 ? (st = fa_sm90_encode_packed_q_map(&prm.map_q, p, split.pack, Cfg::kBlockM))
                        : (st = fa_sm90_encode_map(&prm.map_q, p, &p->q, 1, Cfg::kBlockM, "q"))) != FA_SUCCESS ||
        (st = fa_sm90_encode_map(&prm.map_k, p, &p->k, 0, kv_box_rows, "k")) != FA_SUCCESS ||
        (Cfg::kFp8 && !Cfg::kVtInKernel ? (st = fa_sm90_encode_vt_map(&prm.map_v, p, p->workspace, vt_keys(p))) != FA_SUCCESS
                   : (st = fa_sm90_encode_map(&prm.map_v, p, &p->v, 0, kv_box_rows, "v")) != FA_SUCCESS) ||
        (Cfg::kTmaStore && (st = fa_sm90_encode_map(&prm.map_o, p, &p->out, 1, 64, "out")) != FA_SUCCESS))
        return st;
    prm.q_descale = p->q_descale;
    prm.k_descale = p->k_descale;
    prm.v_descale = p->v_descale;
    prm.descale_block_q = (int)(p->descale_block_q < 0x40000000 ? p->descale_block_q : 0x40000000);
    prm.descale_block_k = (int)(p->descale_block_k < 0x40000000 ? p->descale_block_k : 0x40000000);
    prm.descale_blocks_q = (int)p->descale_blocks_q;
    prm.descale_blocks_k = (int)p->descale_blocks_k;
    prm.vt_seq_keys = (int)vt_seq_keys(p);
    prm.out = p->out.data;
    prm.out_stride_batch = p->out.stride_batch;
    prm.out_stride_seq = p->out.stride_seq;
    prm.out_stride_head = p->out.stride_head;
    prm.score_scale = p->softcap > 0.0f ? 1.0f : p->softmax_scale;
    /* split tiles: one after another per tile (the combine's order), no
     * heaviest-first (the grid is one round) */
    int64_t tiles = (int64_t)prm.num_m_blocks * (p->heads_q / split.pack) * p->batch * split.parts;
    if (tiles > 0x7fffffff)
        return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: %lld tiles exceed the scheduler's int range", (long long)tiles);
    prm.num_tiles = (int)tiles;
    prm.heaviest_first = split.parts == 1 && (p->window_right >= 0 || p->window_left >= 0);
    const int sms = dev->num_sms;
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
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
     * round read -4 to +4%, so longer sequences keep 32 MB. But never less
     * than one round: a section of fewer tiles than CTAs leaves the rest
     * idle (the snake gives a section's tiles to its first CTAs), which
     * few query rows over long keys hit (4 causal rows, b 1, 32 heads, 128k
     * keys: sections of 3 tiles, 6 CTAs working; perf.md, twenty-ninth
     * session). The FA3 grid's causal cells all have a round or more. */
    int64_t head_batches = p->heads_q / split.pack * p->batch * split.parts;
    int64_t kv_bytes = 2 * (int64_t)fa_dtype_size(p->dtype) * p->seqlen_k * p->head_dim / (p->heads_q / p->heads_kv);
    int64_t per_section = prm.heaviest_first ? ((int64_t)32 << 20) / (kv_bytes > 0 ? kv_bytes : 1) : head_batches;
    if (prm.heaviest_first && prm.num_m_blocks >= 1) {
        const int64_t one_round = sms / prm.num_m_blocks, round_up = (sms + prm.num_m_blocks - 1) / prm.num_m_blocks;
        if (prm.num_m_blocks <= 8 && one_round >= 1)
            per_section = one_round;
        else if (per_section < round_up)
            per_section = round_up;
    }
    prm.heads_per_section = (int)(per_section < 1 ? 1 : per_section > head_batches ? head_batches : per_section);
    prm.num_units = prm.num_tiles / Cfg::kClusterSize;
    prm.section_units = prm.heads_per_section * prm.num_m_blocks / Cfg::kClusterSize;
    if (tiles == 0) {
        p->kernel_name = kernel_name;
        return FA_SUCCESS;
    }
    if (Cfg::kFp8 && !Cfg::kVtInKernel && (st = transpose_v(p, static_cast<uint8_t *>(p->workspace))) != FA_SUCCESS)
        return st;

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
    if constexpr (Cfg::kKeySplit)
        if ((st = combine_parts<Cfg>(p, split, part_o)) != FA_SUCCESS)
            return st;
    p->kernel_name = kernel_name;
    return FA_SUCCESS;
}

/* Tile shape per head dim (FA3's tile_size.h, adapted to 2 consumer WGs):
 * the key block shrinks as the head dim grows so that Q, two stages of K and
 * V, and the accumulators fit in shared memory and registers. Every shape
 * runs the intra-warpgroup overlap; at hdim 256 (key block 80) it fits in
 * registers since P is double-buffered and measured 632 -> 722 TFLOP/s at
 * 16k against the kernel without it (docs/perf-sm90.md, v8). */
template <typename Elem> static fa_status launch_for_head_dim(fa_problem *p, const fa_cuda_device_info *dev)
{
    const fa_sm90_key_split plan = key_split_of(p, dev);
    const bool bf16 = !fa_is_half<Elem>::value, split = plan.parts > 1;
    /* the kernel's name in debug/bench output */
#define FA_LAUNCH(label, ...) launch<__VA_ARGS__>(p, dev, bf16 ? "sm90.fwd." label ".bf16" : "sm90.fwd." label ".fp16")
    /* hdim >= 128: clusters of two where they fit (".x2") */
#define FA_LAUNCH_PAIRS(label, hdim, block_n)                                                                \
    (cluster_fits(p, 128) ? FA_LAUNCH(label ".x2", fa_sm90_config<Elem, hdim, block_n, 2, 2, 2>)             \
                          : FA_LAUNCH(label, fa_sm90_config<Elem, hdim, block_n, 2>))
    /* the key split's parts (split_block_n, split_block_m): tiles of 128
     * rows (two consumer warpgroups) or 64 (one: ".m64"), each head dim's
     * key block (hdim 256: 80) */
#define FA_LAUNCH_SPLIT(label, hdim, block_n)                                                                \
    if (split && plan.block_m == 64)                                                                         \
        return FA_LAUNCH(label ".split.m64", fa_sm90_config<Elem, hdim, block_n, 2, 1, 1, false, true>);     \
    if (split)                                                                                               \
        return FA_LAUNCH(label ".split", fa_sm90_config<Elem, hdim, block_n, 2, 2, 1, false, true>);
    switch (p->head_dim) {
    case 64:
        FA_LAUNCH_SPLIT("hdim64", 64, 128)
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
        FA_LAUNCH_SPLIT("hdim128", 128, 128)
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
        FA_LAUNCH_SPLIT("hdim256", 256, 80)
        if (p->seqlen_k <= 512 || (has_window(p) && p->seqlen_k <= 1024))
            return FA_LAUNCH("hdim256.n64", fa_sm90_config<Elem, 256, 64, 2>);
        return FA_LAUNCH_PAIRS("hdim256", 256, 80);
    default:
        return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: head_dim %lld", (long long)p->head_dim);
    }
#undef FA_LAUNCH_SPLIT
#undef FA_LAUNCH_PAIRS
#undef FA_LAUNCH
}

/* FP8: 128 x 128 tiles, two consumer warpgroups, one CTA per cluster
 * (fa_sm90_config's FP8 rules); sm90.cu lets hdim 128 and 256 through.
 * Names: ".vt" V transposed in the kernel, ".split" the key split, whose
 * instance at hdim 128 always transposes V in the kernel (one instance
 * fewer; its grids are small, and decoding's one query row per key of V
 * is where the in-kernel form gains most). */
template <typename Elem> static fa_status launch_fp8(fa_problem *p, const fa_cuda_device_info *dev)
{
    const bool e5m2 = fa_is_fp8<Elem>::e5m2, split = key_split_of(p, dev).parts > 1;
#define FA_FP8_NAME(label) (e5m2 ? "sm90.fwd." label ".e5m2" : "sm90.fwd." label ".e4m3")
    if (p->head_dim == 128 && split)
        return launch<fa_sm90_config<Elem, 128, 128, 2, 2, 1, true, true>>(p, dev, FA_FP8_NAME("hdim128.vt.split"));
    if (p->head_dim == 128 && vt_in_kernel(p))
        return launch<fa_sm90_config<Elem, 128, 128, 2, 2, 1, true>>(p, dev, FA_FP8_NAME("hdim128.vt"));
    if (p->head_dim == 128)
        return launch<fa_sm90_config<Elem, 128, 128, 2>>(p, dev, FA_FP8_NAME("hdim128"));
    if (split)
        return launch<fa_sm90_config<Elem, 256, 128, 2, 2, 1, false, true>>(p, dev, FA_FP8_NAME("hdim256.split"));
    return launch<fa_sm90_config<Elem, 256, 128, 2>>(p, dev, FA_FP8_NAME("hdim256"));
#undef FA_FP8_NAME
}

extern "C" fa_status fa_sm90_forward(fa_problem *p, const fa_cuda_device_info *dev)
{
    if (fa_dtype_is_fp8(p->dtype) && fa_sm90_rows_of(p, 0) == 0)
        return fp8_no_keys(p);
    if (p->dtype == FA_DTYPE_BF16)
        return launch_for_head_dim<__nv_bfloat16>(p, dev);
    if (p->dtype == FA_DTYPE_F16)
        return launch_for_head_dim<__half>(p, dev);
    if (p->dtype == FA_DTYPE_FP8_E4M3)
        return launch_fp8<__nv_fp8_e4m3>(p, dev);
    if (p->dtype == FA_DTYPE_FP8_E5M2)
        return launch_fp8<__nv_fp8_e5m2>(p, dev);
    return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: dtype %s", fa_dtype_name(p->dtype));
}
