/*
 * FlashAttention-3-style backward kernel for Hopper (sm_90a).
 *
 * One CTA per (key block of BlockN keys (128; 64 at head dim 256), kv
 * head, batch). K and V are loaded once; the CTA walks the query blocks
 * (BlockM rows) of every query head of its GQA group that can see one of
 * its keys, so dK and dV stay in registers for the whole walk. Three
 * warpgroups:
 *
 *   warpgroup 0   producer: one thread issues the TMA loads of K and V, then
 *                 per query block Q, dO (tensor maps) and the block's lse and
 *                 D rows (bulk copies) into a 2-stage ring (full/empty
 *                 mbarriers).
 *   warpgroups 1, 2  consumers: warpgroup w owns keys 64w..64w+63; per query
 *                 block (FA3's "SdP swapAB" form, so P and dS come out
 *                 transposed, i.e. ready as the A operand of dV and dK):
 *                   Sᵀ  = K Qᵀ,  dPᵀ = V dOᵀ          (SS)
 *                   Pᵀ  = exp2(Sᵀ·c − lse_log2[query]),  dSᵀ = Pᵀ∘(dPᵀ − D[query])
 *                   dV += Pᵀ dO,  dK += dSᵀ Q          (RS; dO, Q MN-major)
 *                   dSᵀ -> smem;  dQ = dS K            (SS; dS, K MN-major)
 *                 and stores its 64x64 part of dQ (fp32) in shared memory.
 *   warpgroup 0, warp 1  dQ writer: adds each part to the fp32 accumulator
 *                 in global memory with one bulk reduce-add (TMA), so the
 *                 consumers spend no time on atomics.
 *
 * BlockM is 128 for head dim 64 and 64 for head dim 128, so that each
 * consumer's part of dQ is 64 x 64: query rows 64w.. (BlockM 128) or head
 * columns 64w.. (BlockM 64), both whole 128-byte swizzle slabs.
 *
 * Head dim 256 (config::kSplitDim) has no room for 64 keys x 256 dims of dK
 * and dV per warpgroup (256 accumulator registers): BlockN = 64 keys shared
 * by both consumers, warpgroup w computes Sᵀ, dPᵀ for queries 32w..32w+31
 * of the 64-query block, both store Pᵀ and dSᵀ to smem, and each then owns
 * head columns 128w..128w+127 of dV += Pᵀ dO, dK += dSᵀ Q (SS wgmma) and
 * of dQ (two 64 x 64 parts, one after the other). One Q/dO stage.
 *
 * The workspace rows (lse_log2, D, dQ accumulator) are padded per (batch,
 * head) to a multiple of 128 rows, with lse_log2 = +inf and D = 0 in the
 * padding: query rows past the sequence get P = 0 without a test, and their
 * dQ lands in the padding. The dQ accumulator of a query block is stored as
 * the two 64 x 64 parts the consumers produce, each the swizzled image of
 * its shared-memory buffer (dq_offset); the conversion kernel undoes it.
 */
#ifndef FA_SM90_BWD_KERNEL_CUH
#define FA_SM90_BWD_KERNEL_CUH

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#include "common.cuh"
#include "../kv_order.cuh"
#include "../ptx/bulk_copy.cuh"
#include "../ptx/mbarrier.cuh"
#include "../ptx/tma.cuh"
#include "../ptx/warpgroup.cuh"
#include "../ptx/wgmma.cuh"

namespace fa_sm90_bwd {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kRowPad = 128; /* workspace rows per (batch, head): multiple of this */

/* Everything the kernels read; __grid_constant__ so that the tensor maps
 * stay in parameter space (TMA needs their address). */
struct params {
    CUtensorMap map_q, map_k, map_v, map_do; /* (dim, seq, head, batch) */
    const void *out, *dout;
    void *dq, *dk, *dv;
    fa_tensor t_out, t_dout, t_dq, t_dk, t_dv; /* strides (elements) */
    const float *lse;
    const int32_t *cu_seqlens_q, *cu_seqlens_k; /* varlen */
    int varlen;
    int batch, seqlen_q, seqlen_k, heads_q, heads_kv, heads_per_kv, head_dim;
    int64_t total_q;
    int window_left, window_right; /* -1 = unbounded */
    float softmax_scale;
    float softcap;             /* 0 = off */
    float softcap_input_scale; /* softmax_scale / softcap */
    float score_scale_log2;    /* softmax_scale·log2(e), or log2(e) with softcap */
    /* workspace, rows ((b·heads_q + h)·rows_per_head + i) */
    int64_t rows_per_head;
    float *dq_accum; /* x padded head dim */
    float *lse_log2; /* lse·log2(e), +inf for empty and padding rows */
    float *dsum;     /* D = rowsum(dO∘O), 0 in the padding */
    bool heads_first;  /* the grid's order (kv_order.cuh) */
};

/* Compile-time shape of one kernel instance. */
template <typename Elem_, int HeadDimPadded_> struct config {
    typedef Elem_ Elem;
    static constexpr bool kBf16 = !fa_is_half<Elem>::value;
    static constexpr int kHeadDim = HeadDimPadded_; /* 64, 128 or 256 */
    /* Head dim 256: dK and dV of 64 keys x 256 dims would take 256
     * accumulator registers per thread. The two warpgroups then share 64
     * keys and split the head dim of dK, dV and dQ; each computes the scores
     * of half the query block, and Pᵀ / dSᵀ go through shared memory (SS
     * wgmma for dV and dK). Q, dO of a 64-query block are 64 KB, so one
     * stage fits next to K and V. */
    static constexpr bool kSplitDim = kHeadDim == 256;
    static constexpr int kBlockN = kSplitDim ? 64 : 128; /* keys; 64 per warpgroup otherwise */
    static constexpr int kBlockM = kHeadDim == 64 ? 128 : 64;
    static constexpr int kStages = kSplitDim ? 1 : 2;
    static constexpr int kScoreN = kSplitDim ? kBlockM / 2 : kBlockM; /* queries of one warpgroup's Sᵀ */
    static constexpr int kKeyStride = kSplitDim ? 0 : 64;             /* first key of warpgroup w: w·this */
    static constexpr int kDimsPerWg = kSplitDim ? kHeadDim / 2 : kHeadDim; /* columns of dK, dV */
    static constexpr int kDqPartsPerWg = kBlockM * kHeadDim / 4096 / 2;    /* 64 x 64 parts of dQ */
    static constexpr int kConsumerWarpgroups = 2;
    static constexpr int kThreads = 128 * (1 + kConsumerWarpgroups);
    static constexpr int kConsumerWarps = 4 * kConsumerWarpgroups;
    static constexpr int kSlabs = kHeadDim / 64;
    static constexpr int kKVSlabBytes = kBlockN * 128;
    static constexpr int kQSlabBytes = kBlockM * 128;
    static constexpr int kKVBytes = kSlabs * kKVSlabBytes;
    static constexpr int kQBytes = kSlabs * kQSlabBytes;
    /* dSᵀ: keys x queries, slabs of 64 queries */
    static constexpr int kDsSlabBytes = kBlockN * 128;
    static constexpr int kDsBytes = (kBlockM / 64) * kDsSlabBytes;
    static constexpr int kRowBytes = kBlockM * 4; /* lse or D of one query block */
    static constexpr int kDqPartBytes = 64 * 64 * 4; /* one consumer's part of dQ, fp32 */
    static constexpr int kPBytes = kSplitDim ? kDsBytes : 0; /* Pᵀ, as dSᵀ */
    /* K, V, then per stage Q, dO, then 2 dSᵀ buffers, 2 Pᵀ buffers (split
     * head dim), 2 dQ part buffers, then per stage lse and D, barriers */
    static constexpr int kOffV = kKVBytes;
    static constexpr int kOffQ = 2 * kKVBytes;
    static constexpr int kOffDo = kOffQ + kStages * kQBytes;
    static constexpr int kOffDs = kOffDo + kStages * kQBytes;
    static constexpr int kOffP = kOffDs + 2 * kDsBytes;
    static constexpr int kOffDq = kOffP + 2 * kPBytes;
    static constexpr int kOffLse = kOffDq + 2 * kDqPartBytes;
    static constexpr int kOffDsum = kOffLse + kStages * kRowBytes;
    static constexpr int kOffBar = kOffDsum + kStages * kRowBytes;
    /* barriers: kv_full, q_full[S], q_empty[S] */
    static constexpr int kSmemBytes = 1024 + kOffBar + 8 * (1 + 2 * kStages);
    /* setmaxnreg moves registers within the CTA's launch allocation (168 per
     * thread): the producer warpgroup spilled 12 bytes at 40 with head dim
     * 256, whose consumers need fewer (Sᵀ, dPᵀ of 32 queries). */
    static constexpr int kProducerRegs = kSplitDim ? 56 : 40;
    static constexpr int kConsumerRegs = kSplitDim ? 224 : 232;
    static_assert(128 * kProducerRegs + 128 * kConsumerWarpgroups * kConsumerRegs <= 168 * kThreads,
                  "setmaxnreg.inc would wait forever");
    static constexpr int kTxBytesPerQueryBlock = 2 * kQBytes + 2 * kRowBytes;
    /* Pass 1's mask (probs). A test per element under the runtime flag
     * puts each exponential in its own basic block, which ptxas schedules
     * poorly; without the branch it needs registers it does not have, and
     * spills. Measured per head dim (same calls, whole backward):
     *   64:  in the loop with selects, per key the interval of queries that
     *        see it: +15-30% on every cell (56 bytes of spill);
     *   128: as a pass of its own, before the exponentials (-inf; after
     *        them with softcap: 0): +6-12% (20 bytes of spill; as selects
     *        in the loop 412 bytes and no gain);
     *   256: under the branch (any other form spilled >600 bytes and ran a
     *        third slower). */
    static constexpr int kMaskInLoopSelect = 0, kMaskPass = 1, kMaskInLoopBranch = 2;
    static constexpr int kMaskForm = kHeadDim == 64 ? kMaskInLoopSelect : kHeadDim == 128 ? kMaskPass : kMaskInLoopBranch;
    static_assert(kHeadDim == 64 || kHeadDim == 128 || kHeadDim == 256, "head dim");
    static_assert(kSmemBytes <= 232448, "shared memory of one CTA");
};

template <class Cfg> struct smem_layout {
    uint32_t base;
    __device__ uint32_t k() const { return base; }
    __device__ uint32_t v() const { return base + Cfg::kOffV; }
    __device__ uint32_t q(int s) const { return base + Cfg::kOffQ + s * Cfg::kQBytes; }
    __device__ uint32_t dout(int s) const { return base + Cfg::kOffDo + s * Cfg::kQBytes; }
    __device__ uint32_t ds(int buf) const { return base + Cfg::kOffDs + buf * Cfg::kDsBytes; }
    __device__ uint32_t pt(int buf) const { return base + Cfg::kOffP + buf * Cfg::kPBytes; }
    __device__ uint32_t dq(int part) const { return base + Cfg::kOffDq + part * Cfg::kDqPartBytes; }
    __device__ uint32_t lse(int s) const { return base + Cfg::kOffLse + s * Cfg::kRowBytes; }
    __device__ uint32_t dsum(int s) const { return base + Cfg::kOffDsum + s * Cfg::kRowBytes; }
    __device__ uint32_t kv_full() const { return base + Cfg::kOffBar; }
    __device__ uint32_t q_full(int s) const { return base + Cfg::kOffBar + 8 * (1 + s); }
    __device__ uint32_t q_empty(int s) const { return base + Cfg::kOffBar + 8 * (1 + Cfg::kStages + s); }
};

/* The key block of this CTA and the query blocks it walks: for each query
 * head of the group, blocks [mb_begin, mb_end) (those with a query row that
 * sees one of the keys; the visible rows of a key block are one interval).
 * Work item `it` is head h0 + it / blocks, block mb_begin + it % blocks. */
struct work {
    int b, hk, n0;      /* batch, kv head, first key */
    int q0, k0, sq, sk; /* packed offsets (varlen) and lengths */
    int mb_begin, blocks, count;
};

template <class Cfg> __device__ __forceinline__ work work_of(const params &p)
{
    work w;
    int key_block;
    w.b = blockIdx.z;
    fa_kv_block_of(p.heads_first, w.hk, key_block);
    w.n0 = key_block * Cfg::kBlockN;
    if (p.varlen) {
        w.q0 = p.cu_seqlens_q[w.b];
        w.sq = p.cu_seqlens_q[w.b + 1] - w.q0;
        w.k0 = p.cu_seqlens_k[w.b];
        w.sk = p.cu_seqlens_k[w.b + 1] - w.k0;
    } else {
        w.q0 = w.k0 = 0;
        w.sq = p.seqlen_q;
        w.sk = p.seqlen_k;
    }
    w.mb_begin = w.blocks = w.count = 0;
    if (w.n0 >= w.sk)
        return w;
    /* rows i see keys [i + shift - left, i + shift + right] (bottom-right) */
    int shift = w.sk - w.sq, n_last = min(w.n0 + Cfg::kBlockN, w.sk) - 1;
    int m_begin = p.window_right < 0 ? 0 : max(0, w.n0 - shift - p.window_right);
    int m_end = p.window_left < 0 ? w.sq : min(w.sq, n_last - shift + p.window_left + 1);
    if (m_begin < m_end) {
        w.mb_begin = m_begin / Cfg::kBlockM;
        w.blocks = (m_end + Cfg::kBlockM - 1) / Cfg::kBlockM - w.mb_begin;
        w.count = w.blocks * p.heads_per_kv;
    }
    return w;
}

__device__ __forceinline__ int64_t workspace_row(const params &p, int b, int h, int row)
{
    return ((int64_t)b * p.heads_q + h) * p.rows_per_head + row;
}

/* Named barriers (0 is __syncthreads): dSᵀ of both consumers is in smem
 * (256 threads); dQ part w is in smem / was read by the writer (one consumer
 * warpgroup + the writer warp). */
constexpr uint32_t kDsReady = 1, kDqFull = 2, kDqEmpty = 4, kDqBarrierThreads = 128 + 32;

/* Float offset of (row r, column c) of a 64 x 64 dQ part: rows of 64 floats,
 * 8-float groups XOR-swizzled by the row so that the consumers' stores of 8
 * rows x 8 bytes per quad spread over the banks. */
__device__ __forceinline__ int dq_offset(int r, int c) { return r * 64 + (c ^ ((r & 7) << 3)); }

/* The dQ part and its (row, column) of element (row, col) of a query block:
 * parts are 64-row halves (BlockM 128) or 64-column halves (BlockM 64). */
template <class Cfg> __device__ __forceinline__ int dq_block_offset(int row, int col)
{
    if constexpr (Cfg::kBlockM == 128)
        return (row / 64) * 4096 + dq_offset(row % 64, col);
    else
        return (col / 64) * 4096 + dq_offset(row, col % 64);
}

/* ------------------------------------------------------------------------ */
/* Producer                                                                 */

template <class Cfg> __device__ __forceinline__ void produce(const params &p, const work &w, const smem_layout<Cfg> &sm)
{
    fa_tma_prefetch_map(&p.map_q);
    fa_tma_prefetch_map(&p.map_k);
    fa_tma_prefetch_map(&p.map_v);
    fa_tma_prefetch_map(&p.map_do);
    const int batch = p.varlen ? 0 : w.b; /* packed tensors are one batch */
    fa_mbar_arrive_expect_tx(sm.kv_full(), 2 * Cfg::kKVBytes);
    for (int s = 0; s < Cfg::kSlabs; ++s) {
        fa_tma_load_4d(sm.k() + s * Cfg::kKVSlabBytes, &p.map_k, sm.kv_full(), s * 64, w.k0 + w.n0, w.hk, batch);
        fa_tma_load_4d(sm.v() + s * Cfg::kKVSlabBytes, &p.map_v, sm.kv_full(), s * 64, w.k0 + w.n0, w.hk, batch);
    }
    fa_pipe_state<Cfg::kStages> ps = {0, 1}; /* every stage starts free */
    for (int it = 0; it < w.count; ++it) {
        int h = w.hk * p.heads_per_kv + it / w.blocks, m0 = (w.mb_begin + it % w.blocks) * Cfg::kBlockM;
        uint32_t full = sm.q_full(ps.stage);
        fa_mbar_wait(sm.q_empty(ps.stage), ps.phase);
        fa_mbar_arrive_expect_tx(full, Cfg::kTxBytesPerQueryBlock);
        for (int s = 0; s < Cfg::kSlabs; ++s) {
            fa_tma_load_4d(sm.q(ps.stage) + s * Cfg::kQSlabBytes, &p.map_q, full, s * 64, w.q0 + m0, h, batch);
            fa_tma_load_4d(sm.dout(ps.stage) + s * Cfg::kQSlabBytes, &p.map_do, full, s * 64, w.q0 + m0, h, batch);
        }
        int64_t row = workspace_row(p, w.b, h, m0);
        fa_bulk_load(sm.lse(ps.stage), p.lse_log2 + row, Cfg::kRowBytes, full);
        fa_bulk_load(sm.dsum(ps.stage), p.dsum + row, Cfg::kRowBytes, full);
        ps.advance();
    }
}

/* dQ writer (one warp): per query block and part, waits until the consumer
 * has stored it, adds it to the accumulator with one bulk reduce-add, and
 * hands the buffer back once the copy has read it. Warpgroup w stores its
 * parts w·kDqPartsPerWg + j, j = 0.., one after the other in its buffer. */
template <class Cfg>
__device__ __forceinline__ void write_dq(const params &p, const work &w, const smem_layout<Cfg> &sm)
{
    for (int it = 0; it < w.count; ++it) {
        int h = w.hk * p.heads_per_kv + it / w.blocks, m0 = (w.mb_begin + it % w.blocks) * Cfg::kBlockM;
        float *block = p.dq_accum + workspace_row(p, w.b, h, m0) * Cfg::kHeadDim;
        for (int j = 0; j < Cfg::kDqPartsPerWg; ++j)
            for (int wg = 0; wg < 2; ++wg) {
                const int part = wg * Cfg::kDqPartsPerWg + j;
                fa_named_barrier_sync(kDqFull + wg, kDqBarrierThreads);
                if (threadIdx.x % 32 == 0) {
                    fa_bulk_reduce_add_f32(block + part * (Cfg::kDqPartBytes / 4), sm.dq(wg), Cfg::kDqPartBytes);
                    fa_bulk_commit();
                    fa_bulk_wait_read<0>();
                }
                __syncwarp();
                /* the consumers wait only before a next store */
                if (it + 1 < w.count || j + 1 < Cfg::kDqPartsPerWg)
                    fa_named_barrier_arrive(kDqEmpty + wg, kDqBarrierThreads);
            }
    }
}

/* ------------------------------------------------------------------------ */
/* Consumer helpers                                                         */

/* Issues acc (64 x N) = A Bᵀ with A = 64 rows at a_rows and B = N rows at
 * b_rows, both K-major over the head dim (slabs a_slab / b_slab bytes apart). */
template <class Cfg, int N>
__device__ __forceinline__ void issue_over_dim(float (&acc)[N / 2], uint32_t a_rows, int a_slab, uint32_t b_rows,
                                               int b_slab)
{
    const uint64_t a0 = fa_wgmma_desc(a_rows, 16, 1024), b0 = fa_wgmma_desc(b_rows, 16, 1024);
#pragma unroll
    for (int kk = 0; kk < Cfg::kHeadDim / 16; ++kk) {
        uint32_t slab = kk / 4, in_slab = (kk % 4) * 32;
        fa_wgmma<N>::template ss<Cfg::kBf16, 0>(acc, a0 + ((slab * a_slab + in_slab) >> 4),
                                                b0 + ((slab * b_slab + in_slab) >> 4), kk > 0);
    }
    fa_wgmma_commit();
}

/* Issues acc (64 x D) += A B with A from registers (64 x BlockM, k-blocks of
 * 16 queries) and B = a query tile [query][dim] (MN-major, 16 rows per k). */
template <class Cfg>
__device__ __forceinline__ void issue_over_queries(float (&acc)[Cfg::kHeadDim / 2],
                                                   const uint32_t (&a)[Cfg::kBlockM / 16][4], uint32_t tile)
{
    const uint64_t b0 = fa_wgmma_desc(tile, Cfg::kQSlabBytes, 1024);
#pragma unroll
    for (int kk = 0; kk < Cfg::kBlockM / 16; ++kk)
        fa_wgmma<Cfg::kHeadDim>::template rs<Cfg::kBf16, 1>(acc, a[kk], b0 + ((kk * 16 * 128) >> 4), 1);
}

/* Split head dim: issues acc (64 x D/2) += A B with A = a [key][query] tile
 * in smem (Pᵀ or dSᵀ, K-major, one slab) and B = columns from `tile` on of
 * a query tile [query][dim] (MN-major, 16 rows per k). */
template <class Cfg>
__device__ __forceinline__ void issue_over_queries_ss(float (&acc)[Cfg::kDimsPerWg / 2], uint32_t a_tile,
                                                      uint32_t tile)
{
    static_assert(Cfg::kBlockM == 64, "one slab of queries");
    const uint64_t a0 = fa_wgmma_desc(a_tile, 16, 1024), b0 = fa_wgmma_desc(tile, Cfg::kQSlabBytes, 1024);
#pragma unroll
    for (int kk = 0; kk < Cfg::kBlockM / 16; ++kk)
        fa_wgmma<Cfg::kDimsPerWg>::template ss<Cfg::kBf16, 1>(acc, a0 + ((kk * 32) >> 4),
                                                             b0 + ((kk * 16 * 128) >> 4), 1);
}


/* Queries that see key `key`: [lo, hi], empty when lo > hi (bottom-right
 * aligned window, -1 = unbounded; the sentinel: common.cuh). */
__device__ __forceinline__ void visible_queries(int key, int sk, int shift, int window_left, int window_right, int &lo,
                                                int &hi)
{
    lo = key >= sk ? kFaMaskUnbounded : window_right < 0 ? -kFaMaskUnbounded : key - shift - window_right;
    hi = key >= sk ? -kFaMaskUnbounded : window_left < 0 ? kFaMaskUnbounded : key - shift + window_left;
}

/* This thread's two keys (key0, key0 + 8) -> the queries that see them,
 * relative to its first query m0 + 2t. */
__device__ __forceinline__ void visible_query_offsets(const params &p, const work &w, int key0, int m0, int (&lo)[2],
                                                      int (&hi)[2])
{
    const int first_query = m0 + 2 * (threadIdx.x % 4);
#pragma unroll
    for (int k = 0; k < 2; ++k) {
        visible_queries(key0 + 8 * k, w.sk, w.sk - w.sq, p.window_left, p.window_right, lo[k], hi[k]);
        lo[k] -= first_query;
        hi[k] -= first_query;
    }
}

/* Sᵀ elements the tile's mask hides -> `value` (kMaskPass). Layout as in
 * probs: element 4j + e is key key0 + 8 (e >> 1), query m0 + 8j + 2t + (e & 1). */
template <class Cfg>
__device__ __forceinline__ void mask_scores(const params &p, const work &w, int key0, int m0,
                                            float (&s)[Cfg::kScoreN / 2], float value)
{
    int lo[2], hi[2];
    visible_query_offsets(p, w, key0, m0, lo, hi);
#pragma unroll
    for (int i = 0; i < Cfg::kScoreN / 2; ++i) {
        const int c = 8 * (i >> 2) + (i & 1), k = (i >> 1) & 1;
        if (c < lo[k] || c > hi[k])
            s[i] = value;
    }
}

/* Pass 1: Sᵀ (64 keys x kScoreN queries) -> Pᵀ in place (fp32), 0 where the
 * tile's mask hides the element (only when needs_mask; how: Cfg::kMaskForm).
 * With softcap, dPᵀ (already complete) becomes (dPᵀ − D)·tanh' here, where
 * tanh is at hand, and pass 2 only multiplies by Pᵀ. key0: this thread's
 * first key (in the sequence), m0: the tile's first query row; lse, dsum
 * from that row. */
template <class Cfg, bool Softcap>
__device__ __forceinline__ void probs(const params &p, const work &w, int key0, int m0, bool needs_mask,
                                      float (&s)[Cfg::kScoreN / 2], float (&dp)[Cfg::kScoreN / 2], const float *lse,
                                      const float *dsum)
{
    constexpr int BM = Cfg::kScoreN;
    const int t = threadIdx.x % 4, shift = w.sk - w.sq;
    if (Cfg::kMaskForm == Cfg::kMaskPass && !Softcap && needs_mask)
        mask_scores<Cfg>(p, w, key0, m0, s, -INFINITY); /* exp2(-inf) = 0 */
    int lo[2], hi[2];
    if constexpr (Cfg::kMaskForm == Cfg::kMaskInLoopSelect)
        visible_query_offsets(p, w, key0, m0, lo, hi);
    /* accumulator elements 4j..4j+3: keys key0 + {0, 0, 8, 8}, queries
     * 8j + 2t + {0, 1, 0, 1} */
#pragma unroll
    for (int j = 0; j < BM / 8; ++j) {
        const float2 l = *reinterpret_cast<const float2 *>(lse + 8 * j + 2 * t);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int i = 4 * j + e;
            const float li = (e & 1) ? l.y : l.x;
            if constexpr (Softcap) {
                const float di = dsum[8 * j + 2 * t + (e & 1)];
                float th = fa_softcap_tanh(s[i], p.softcap_input_scale), score = p.softcap * th;
                s[i] = exp2f(fmaf(score, p.score_scale_log2, -li));
                dp[i] = (dp[i] - di) * (1.0f - th * th);
            } else {
                s[i] = exp2f(fmaf(s[i], p.score_scale_log2, -li));
            }
            if constexpr (Cfg::kMaskForm == Cfg::kMaskInLoopSelect) {
                const int c = 8 * j + (e & 1), k = e >> 1;
                if (needs_mask && (c < lo[k] || c > hi[k]))
                    s[i] = 0.0f;
            } else if (Cfg::kMaskForm == Cfg::kMaskInLoopBranch && needs_mask) {
                const int key = key0 + 8 * (e >> 1), row = m0 + 8 * j + 2 * t + (e & 1);
                const bool visible = key < w.sk && (p.window_right < 0 || key <= row + shift + p.window_right) &&
                                     (p.window_left < 0 || key >= row + shift - p.window_left);
                if (!visible)
                    s[i] = 0.0f;
            }
        }
    }
    if (Cfg::kMaskForm == Cfg::kMaskPass && Softcap && needs_mask)
        mask_scores<Cfg>(p, w, key0, m0, s, 0.0f);
}

/* Pass 2: Pᵀ and dSᵀ = Pᵀ∘(dPᵀ − D[query]) (softcap: Pᵀ∘dp, see pass 1)
 * packed into A operand fragments pa, da (k-block kk = queries
 * 16kk..16kk+15, see ptx/wgmma.cuh; elements 4j..4j+3 are registers 2(j%2),
 * 2(j%2)+1 of k-block j/2). Masked elements have P = 0. Packing as it goes
 * lets pr and dp die as pa and da fill. */
template <class Cfg, bool Softcap>
__device__ __forceinline__ void dscores(const float (&pr)[Cfg::kScoreN / 2], const float (&dp)[Cfg::kScoreN / 2],
                                        const float *dsum, uint32_t (&pa)[Cfg::kScoreN / 16][4],
                                        uint32_t (&da)[Cfg::kScoreN / 16][4])
{
    typedef typename Cfg::Elem Elem;
    const int t = threadIdx.x % 4;
#pragma unroll
    for (int j = 0; j < Cfg::kScoreN / 8; ++j) {
        const float2 d = Softcap ? make_float2(0.0f, 0.0f) : *reinterpret_cast<const float2 *>(dsum + 8 * j + 2 * t);
        const int i = 4 * j;
        pa[j / 2][2 * (j % 2)] = fa_pack2<Elem>(pr[i], pr[i + 1]);
        pa[j / 2][2 * (j % 2) + 1] = fa_pack2<Elem>(pr[i + 2], pr[i + 3]);
        da[j / 2][2 * (j % 2)] = fa_pack2<Elem>(pr[i] * (dp[i] - d.x), pr[i + 1] * (dp[i + 1] - d.y));
        da[j / 2][2 * (j % 2) + 1] = fa_pack2<Elem>(pr[i + 2] * (dp[i + 2] - d.x), pr[i + 3] * (dp[i + 3] - d.y));
    }
}

/* Stores dSᵀ or Pᵀ (this warpgroup's 64 keys x kScoreN queries from query
 * q_off on, already packed as operand fragments) into the 128B-swizzled
 * buffer [key][query]: slab query/64, row key, 16-byte chunk
 * ((query%64)/8) ^ (key%8). */
template <class Cfg>
__device__ __forceinline__ void store_ds(uint32_t buf, int key_local, int q_off,
                                         const uint32_t (&da)[Cfg::kScoreN / 16][4])
{
    const int t = threadIdx.x % 4;
#pragma unroll
    for (int kk = 0; kk < Cfg::kScoreN / 16; ++kk)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            /* register r of k-block kk: key +8 if r is odd, queries 16kk + 8(r/2) + 2t.. */
            int key = key_local + 8 * (r & 1), query = q_off + 16 * kk + 8 * (r >> 1);
            uint32_t chunk = ((query % 64) / 8) ^ (key % 8);
            uint32_t addr = buf + (query / 64) * Cfg::kDsSlabBytes + key * 128 + chunk * 16 + 4 * t;
            asm volatile("st.shared.b32 [%0], %1;" ::"r"(addr), "r"(da[kk][r]) : "memory");
        }
}

/* ------------------------------------------------------------------------ */
/* Consumer: one warpgroup, 64 keys (all head dims, or half of them).       */

template <class Cfg, bool Softcap>
__device__ __forceinline__ void consume(const params &p, const work &w, const smem_layout<Cfg> &sm, int wg)
{
    typedef typename Cfg::Elem Elem;
    constexpr int BM = Cfg::kBlockM, SN = Cfg::kScoreN, DW = Cfg::kDimsPerWg;
    const int lane = threadIdx.x % 32, warp = (threadIdx.x / 32) % 4;
    const int key_local = Cfg::kKeyStride * wg + 16 * warp + lane / 4; /* this thread's first key in the block */
    const int q_off = Cfg::kSplitDim ? SN * wg : 0; /* first query of this warpgroup's Sᵀ */
    const int dim0 = Cfg::kSplitDim ? DW * wg : 0;  /* first column of this warpgroup's dK, dV */

    float dv[DW / 2], dk[DW / 2];
#pragma unroll
    for (int i = 0; i < DW / 2; ++i)
        dv[i] = dk[i] = 0.0f;

    if (w.count > 0) {
        fa_mbar_wait(sm.kv_full(), 0);
        const int shift = w.sk - w.sq;
        /* this warpgroup's parts of dQ: query rows 64wg.. (BlockM 128) or
         * head columns 64·kDqPartsPerWg·wg.. (BlockM 64) */
        const int dq_row0 = BM == 128 ? 64 * wg : 0, dq_col0 = BM == 128 ? 0 : 64 * Cfg::kDqPartsPerWg * wg;
        fa_pipe_state<Cfg::kStages> ps = {0, 0};
        for (int it = 0; it < w.count; ++it) {
            const int m0 = (w.mb_begin + it % w.blocks) * BM;
            const bool needs_mask = w.n0 + Cfg::kBlockN > w.sk ||
                                    (p.window_right >= 0 && w.n0 + Cfg::kBlockN - 1 > m0 + shift + p.window_right) ||
                                    (p.window_left >= 0 && w.n0 < m0 + BM - 1 + shift - p.window_left);
            fa_mbar_wait(sm.q_full(ps.stage), ps.phase);

            float s[SN / 2], dp[SN / 2];
            fa_wgmma_fence();
            const uint32_t k_rows = sm.k() + Cfg::kKeyStride * wg * 128, v_rows = sm.v() + Cfg::kKeyStride * wg * 128;
            issue_over_dim<Cfg, SN>(s, k_rows, Cfg::kKVSlabBytes, sm.q(ps.stage) + q_off * 128, Cfg::kQSlabBytes);
            issue_over_dim<Cfg, SN>(dp, v_rows, Cfg::kKVSlabBytes, sm.dout(ps.stage) + q_off * 128,
                                    Cfg::kQSlabBytes);
            /* Pᵀ while dPᵀ is still in flight (softcap needs dPᵀ in pass 1) */
            if constexpr (Softcap)
                fa_wgmma_wait<0>();
            else
                fa_wgmma_wait<1>();
            fa_wgmma_fence_regs(s);
            if constexpr (Softcap)
                fa_wgmma_fence_regs(dp);
            const float *lse = reinterpret_cast<const float *>(__cvta_shared_to_generic(sm.lse(ps.stage))) + q_off;
            const float *dsum = reinterpret_cast<const float *>(__cvta_shared_to_generic(sm.dsum(ps.stage))) + q_off;
            probs<Cfg, Softcap>(p, w, w.n0 + key_local, m0 + q_off, needs_mask, s, dp, lse, dsum);
            fa_wgmma_wait<0>();
            fa_wgmma_fence_regs(dp);
            uint32_t pa[SN / 16][4], da[SN / 16][4];
            dscores<Cfg, Softcap>(s, dp, dsum, pa, da);

            /* dV += Pᵀ dO, dK += dSᵀ Q; dSᵀ of both warpgroups into smem for
             * dQ (split head dim: Pᵀ too, and both products read them there) */
            const uint32_t ds = sm.ds(it & 1);
            fa_wgmma_fence_regs(dv);
            fa_wgmma_fence_regs(dk);
            if constexpr (Cfg::kSplitDim) {
                store_ds<Cfg>(sm.pt(it & 1), key_local, q_off, pa);
                store_ds<Cfg>(ds, key_local, q_off, da);
                fa_fence_proxy_async_shared();
                fa_named_barrier_sync(kDsReady, 256);
                fa_wgmma_fence();
                issue_over_queries_ss<Cfg>(dv, sm.pt(it & 1), sm.dout(ps.stage) + (dim0 / 64) * Cfg::kQSlabBytes);
                issue_over_queries_ss<Cfg>(dk, ds, sm.q(ps.stage) + (dim0 / 64) * Cfg::kQSlabBytes);
                fa_wgmma_commit();
            } else {
                fa_wgmma_fence();
                issue_over_queries<Cfg>(dv, pa, sm.dout(ps.stage));
                issue_over_queries<Cfg>(dk, da, sm.q(ps.stage));
                fa_wgmma_commit();
                store_ds<Cfg>(ds, key_local, 0, da);
                fa_fence_proxy_async_shared();
                fa_named_barrier_sync(kDsReady, 256);
            }

            /* dQ = dS K, one 64 x 64 part at a time */
#pragma unroll
            for (int j = 0; j < Cfg::kDqPartsPerWg; ++j) {
                float dq[32]; /* the first wgmma ignores its old value */
                fa_wgmma_fence_regs(dq);
                fa_wgmma_fence();
                {
                    const uint64_t a0 =
                        fa_wgmma_desc(ds + (dq_row0 / 64) * Cfg::kDsSlabBytes, Cfg::kDsSlabBytes, 1024);
                    const uint64_t b0 = fa_wgmma_desc(sm.k() + (dq_col0 / 64 + j) * Cfg::kKVSlabBytes,
                                                      Cfg::kKVSlabBytes, 1024);
#pragma unroll
                    for (int kk = 0; kk < Cfg::kBlockN / 16; ++kk)
                        fa_wgmma<64>::template ss<Cfg::kBf16, 1, 1>(dq, a0 + ((kk * 16 * 128) >> 4),
                                                                  b0 + ((kk * 16 * 128) >> 4), kk > 0);
                }
                fa_wgmma_commit();
                if (j == 0) {
                    /* dV, dK done: Q, dO, lse, D of this stage are no longer
                     * read; the proxy fence orders this thread's generic
                     * reads of lse / D before the next bulk copy (async
                     * proxy) into the stage. Every thread arrives: an arrive
                     * releases only its own thread's reads. */
                    fa_wgmma_wait<1>();
                    fa_wgmma_fence_regs(dv);
                    fa_wgmma_fence_regs(dk);
#pragma unroll
                    for (int kk = 0; kk < SN / 16; ++kk) {
                        fa_wgmma_fence_regs(pa[kk]);
                        fa_wgmma_fence_regs(da[kk]);
                    }
                    fa_fence_proxy_async_shared();
                    fa_mbar_arrive(sm.q_empty(ps.stage));
                }
                fa_wgmma_wait<0>();
                fa_wgmma_fence_regs(dq);

                /* this 64 x 64 part of dQ (unscaled) to smem for the writer */
                if (it > 0 || j > 0)
                    fa_named_barrier_sync(kDqEmpty + wg, kDqBarrierThreads);
                const uint32_t part = sm.dq(wg);
#pragma unroll
                for (int i = 0; i < 32; i += 2) {
                    int r = 16 * warp + lane / 4 + 8 * ((i >> 1) & 1), c = 8 * (i >> 2) + 2 * (lane % 4);
                    asm volatile("st.shared.v2.f32 [%0], {%1, %2};" ::"r"(part + 4 * dq_offset(r, c)),
                                 "f"(dq[i]), "f"(dq[i + 1])
                                 : "memory");
                }
                fa_fence_proxy_async_shared();
                fa_named_barrier_arrive(kDqFull + wg, kDqBarrierThreads);
            }
            ps.advance();
        }
    }

    /* dK = softmax_scale·Σ dSᵀ Q, dV = Σ Pᵀ dO, for the keys that exist */
    Elem *dk_out = static_cast<Elem *>(p.dk), *dv_out = static_cast<Elem *>(p.dv);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        int key = w.n0 + key_local + 8 * r;
        if (key >= w.sk)
            continue;
        int64_t row = w.k0 + key, b = p.varlen ? 0 : w.b;
        int64_t k_off = b * p.t_dk.stride_batch + row * p.t_dk.stride_seq + (int64_t)w.hk * p.t_dk.stride_head;
        int64_t v_off = b * p.t_dv.stride_batch + row * p.t_dv.stride_seq + (int64_t)w.hk * p.t_dv.stride_head;
#pragma unroll
        for (int i = 2 * r; i < DW / 2; i += 4) {
            int col = dim0 + 8 * (i >> 2) + 2 * (lane % 4);
            if (Cfg::kHeadDim == p.head_dim || col < p.head_dim) {
                *reinterpret_cast<uint32_t *>(dk_out + k_off + col) =
                    fa_pack2<Elem>(dk[i] * p.softmax_scale, dk[i + 1] * p.softmax_scale);
                *reinterpret_cast<uint32_t *>(dv_out + v_off + col) = fa_pack2<Elem>(dv[i], dv[i + 1]);
            }
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Kernels                                                                  */

/* q, k, v, dout (via maps), lse_log2 / dsum (workspace) -> dk, dv, and
 * dq_accum += dS K. Grid: key blocks x kv heads x batch, in the order of p.heads_first. */
template <class Cfg> __global__ void __launch_bounds__(Cfg::kThreads, 1) main_kernel(const __grid_constant__ params p)
{
    extern __shared__ uint8_t smem_raw[];
    smem_layout<Cfg> sm;
    sm.base = ((uint32_t)__cvta_generic_to_shared(smem_raw) + 1023u) & ~1023u;
    const work w = work_of<Cfg>(p);
    if (w.n0 >= w.sk) /* varlen: this sequence has fewer keys */
        return;

    if (threadIdx.x == 0) {
        fa_mbar_init(sm.kv_full(), 1);
        for (int s = 0; s < Cfg::kStages; ++s) {
            fa_mbar_init(sm.q_full(s), 1);
            fa_mbar_init(sm.q_empty(s), 32 * Cfg::kConsumerWarps);
        }
        fa_mbar_init_fence();
    }
    __syncthreads();

    int wg = fa_warpgroup_index();
    if (wg == 0) {
        fa_setmaxnreg_dec<Cfg::kProducerRegs>();
        if (threadIdx.x == 0 && w.count > 0)
            produce<Cfg>(p, w, sm);
        else if (threadIdx.x / 32 == 1)
            write_dq<Cfg>(p, w, sm);
    } else {
        fa_setmaxnreg_inc<Cfg::kConsumerRegs>();
        /* softcap changes the inner loops: one branch, two whole variants */
        if (p.softcap > 0.0f)
            consume<Cfg, true>(p, w, sm, wg - 1);
        else
            consume<Cfg, false>(p, w, sm, wg - 1);
    }
}

/* out, dout, lse -> dsum, lse_log2 for every workspace row (padding: 0 and
 * +inf); dq_accum is zeroed by a memset. Dp/8 threads per row, 8 columns
 * (one 16-byte load of each tensor) per thread; Dp = padded head dim. */
template <typename Elem, int Dp> __global__ void __launch_bounds__(256) preprocess_kernel(const params p)
{
    constexpr int kThreadsPerRow = Dp / 8;
    const int64_t item = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / kThreadsPerRow;
    const int col = (int)(threadIdx.x % kThreadsPerRow) * 8;
    /* rows never straddle a warp, so the whole warp is in or out */
    if (item >= (int64_t)p.batch * p.heads_q * p.rows_per_head)
        return;
    const int b = (int)(item / ((int64_t)p.heads_q * p.rows_per_head));
    const int h = (int)(item / p.rows_per_head % p.heads_q), i = (int)(item % p.rows_per_head);
    const int q0 = p.varlen ? p.cu_seqlens_q[b] : 0;
    const int sq = p.varlen ? p.cu_seqlens_q[b + 1] - q0 : p.seqlen_q;
    float acc = 0.0f;
    const int64_t bb = p.varlen ? 0 : b, row = q0 + i;
    if (i < sq && col < p.head_dim) {
        const Elem *o = static_cast<const Elem *>(p.out) + bb * p.t_out.stride_batch + row * p.t_out.stride_seq +
                        (int64_t)h * p.t_out.stride_head + col;
        const Elem *g = static_cast<const Elem *>(p.dout) + bb * p.t_dout.stride_batch +
                        row * p.t_dout.stride_seq + (int64_t)h * p.t_dout.stride_head + col;
        const uint4 ov = *reinterpret_cast<const uint4 *>(o), gv = *reinterpret_cast<const uint4 *>(g);
        const uint32_t ow[4] = {ov.x, ov.y, ov.z, ov.w}, gw[4] = {gv.x, gv.y, gv.z, gv.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            float2 of, gf;
            if constexpr (fa_is_half<Elem>::value) {
                of = __half22float2(*reinterpret_cast<const __half2 *>(&ow[k]));
                gf = __half22float2(*reinterpret_cast<const __half2 *>(&gw[k]));
            } else {
                of = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&ow[k]));
                gf = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&gw[k]));
            }
            acc += of.x * gf.x + of.y * gf.y;
        }
    }
#pragma unroll
    for (int off = kThreadsPerRow / 2; off > 0; off /= 2)
        acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (col == 0) {
        float lse_log2 = INFINITY;
        if (i < sq) {
            float lse = p.lse[p.varlen ? (int64_t)h * p.total_q + row : ((int64_t)b * p.heads_q + h) * p.seqlen_q + i];
            lse_log2 = lse == -INFINITY ? INFINITY : lse * kLog2e;
        }
        p.dsum[item] = acc;
        p.lse_log2[item] = lse_log2;
    }
}

/* dq = softmax_scale · dq_accum (stored as dq_block_offset says), 8 columns
 * per thread (one 16-byte store). */
template <class Cfg> __global__ void __launch_bounds__(256) convert_dq_kernel(const params p)
{
    typedef typename Cfg::Elem Elem;
    constexpr int Dp = Cfg::kHeadDim;
    const int64_t item = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t rows = (int64_t)p.batch * p.heads_q * p.rows_per_head;
    if (item >= rows * (Dp / 8))
        return;
    const int64_t ws_row = item / (Dp / 8);
    const int col = (int)(item % (Dp / 8)) * 8;
    const int b = (int)(ws_row / ((int64_t)p.heads_q * p.rows_per_head));
    const int h = (int)(ws_row / p.rows_per_head % p.heads_q), i = (int)(ws_row % p.rows_per_head);
    const int q0 = p.varlen ? p.cu_seqlens_q[b] : 0;
    const int sq = p.varlen ? p.cu_seqlens_q[b + 1] - q0 : p.seqlen_q;
    if (i >= sq || col >= p.head_dim)
        return;
    const int r = i % Cfg::kBlockM; /* 8 columns stay 8 adjacent floats */
    const float4 *src =
        reinterpret_cast<const float4 *>(p.dq_accum + (ws_row - r) * Dp + dq_block_offset<Cfg>(r, col));
    float4 x = src[0], y = src[1];
    const float c = p.softmax_scale;
    uint4 packed = make_uint4(fa_pack2<Elem>(x.x * c, x.y * c), fa_pack2<Elem>(x.z * c, x.w * c),
                              fa_pack2<Elem>(y.x * c, y.y * c), fa_pack2<Elem>(y.z * c, y.w * c));
    const int64_t bb = p.varlen ? 0 : b, row = q0 + i;
    Elem *dst = static_cast<Elem *>(p.dq) + bb * p.t_dq.stride_batch + row * p.t_dq.stride_seq +
                (int64_t)h * p.t_dq.stride_head + col;
    *reinterpret_cast<uint4 *>(dst) = packed;
}

} // namespace fa_sm90_bwd

#endif
