/*
 * FlashAttention-3 forward kernel for Hopper (sm_90a).
 *
 * A persistent grid (one CTA per SM) walks the tiles of BlockM = 64·W query
 * rows of one (batch, head); each CTA has 1 + W warpgroups (W = 2, or 3 at
 * hdim 64 except on short causal sequences):
 *
 *   warpgroup 0   producer: one lane of warp 0 issues TMA loads of Q (once
 *                 per tile, two buffers where shared memory allows) and of
 *                 K, V blocks (BlockN rows each) into a ring of Stages
 *                 shared-memory buffers, guarded by full/empty mbarriers.
 *                 At hdim >= 128 without a window, pairs of CTAs (a
 *                 cluster) on adjacent m blocks of one head load half of
 *                 each K/V block each and multicast it to both.
 *   warpgroups 1..W  consumers: each owns 64 of the rows and walks the
 *                 key blocks:  S = Q Kᵀ (wgmma, both from smem)
 *                              online softmax of S in registers
 *                              O += P V (wgmma, P from registers)
 *                 then writes the LSE and O / rowsum (TMA stores from
 *                 shared memory; at hdim <= 128 under the next tile's
 *                 first QKᵀ, see fa_sm90_consume_tile).
 *
 * Two overlaps keep the tensor cores busy during the softmax (FA3 §3.1-3.2):
 *   intra-warpgroup: the QKᵀ of block j and the PV of block j+1 are issued
 *     together, and the softmax of block j runs while the PV is in flight;
 *   pingpong: the consumer warpgroups take turns issuing their GEMMs (round
 *     robin on named barriers), so one's softmax runs under the others' GEMMs.
 *
 * Tiles in shared memory are slabs of 64 columns with the 128-byte swizzle
 * that the TMA writes and wgmma reads (see ptx/wgmma.cuh). Head dims that are
 * not a multiple of 64 (96) are padded to the next multiple: the TMA box
 * reaches past the tensor and fills zeros, which add nothing to Q Kᵀ.
 */
#ifndef FA_SM90_FWD_KERNEL_CUH
#define FA_SM90_FWD_KERNEL_CUH

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#include "common.cuh"
#include "../ptx/bulk_copy.cuh"
#include "../ptx/cluster.cuh"
#include "../ptx/mbarrier.cuh"
#include "../ptx/smem.cuh"
#include "../ptx/tma.cuh"
#include "../ptx/warpgroup.cuh"
#include "../ptx/wgmma.cuh"

/* Everything the kernel reads, passed as one __grid_constant__ parameter so
 * that the tensor maps stay in parameter space (TMA needs their address). */
struct fa_sm90_params {
    CUtensorMap map_q, map_k, map_v; /* (dim, seq, head, batch), see host */
    CUtensorMap map_o;                /* boxes of 64 rows; encoded when the config has kTmaStore */
    void *out;
    int64_t out_stride_batch, out_stride_seq, out_stride_head; /* elements */
    float *lse;                                                 /* may be NULL */
    const int32_t *cu_seqlens_q, *cu_seqlens_k;                 /* varlen */
    const int32_t *seqused_k;                                   /* NULL, or keys used per sequence */
    const int32_t *kv_block_table; /* NULL, or a paged K/V cache: map_k / map_v span its pages */
    int kv_block_table_stride, kv_page_size; /* page_size: a multiple of kBlockN or a divisor of
                                                its share per CTA, >= 8 rows (sm90.cu) */
    int kv_box_rows;               /* rows per K/V TMA box: the CTA's share of a block, or a page */
    int tail_rows_readable; /* varlen, seqused_k, pages: the rows past a sequence's last key
                               that its last key block reads are another's (or stale), not
                               TMA's zeros */
    int varlen;
    int batch, seqlen_q, seqlen_k, heads_q, heads_per_kv, head_dim;
    int64_t total_q;
    int window_left, window_right; /* -1 = unbounded */
    float softcap;                 /* 0 = off */
    float softcap_input_scale;     /* softmax_scale / softcap */
    float score_scale;             /* what turns S into the score: softmax_scale,
                                      or 1 when softcap already applied it */
    float score_scale_log2;        /* score_scale * log2(e) */
    int num_m_blocks, num_tiles; /* tiles = m blocks x heads x batches */
    int heaviest_first;          /* causal/window: tiles with the most key
                                    blocks first, so the tail of the
                                    persistent loop is short */
    int heads_per_section;       /* heaviest_first: (batch, head) pairs whose
                                    K and V fit in L2 together, see
                                    fa_sm90_tile_of */
    int num_units, section_units; /* of kClusterSize tiles each: in all, and
                                     per heads_per_section heads */
    /* FP8 without kVtInKernel (hdim 256; hdim 128 where vt_in_kernel of
     * fwd_sm90.cu says so): V is read transposed from the workspace, [kv
     * head][dim][keys] with keys permuted to P's register order and zeros
     * past each sequence's keys; map_v spans it. Descales as in
     * fa_problem, NULL = 1; blocks a multiple of 128 rows (BlockM,
     * BlockN). */
    const float *q_descale, *k_descale, *v_descale;
    int descale_block_q, descale_block_k, descale_blocks_q, descale_blocks_k;
    int vt_seq_keys; /* FP8 Vᵀ, fixed length: keys per sequence (fa_sm90_vt_start) */
    /* Key split (kKeySplit instances; ../key_split.cuh, fwd_sm90.cu
     * plans it): each tile runs as split_parts parts over a share of its
     * key blocks (tile index = tile · split_parts + part, no heaviest-first
     * order), writing O / l and the LSE in fp32 to part_o / part_lse */
    int split_parts;
    float *part_o, *part_lse;
    /* kKeySplit, GQA packed (decoding): the pack_gqa query heads of a KV
     * head share a tile, packed row r being query r / pack_gqa of head
     * h + r % pack_gqa (t.h, the group's first); map_q reads them in that
     * order (fwd_sm90.cu). 1: one head per tile */
    int pack_gqa;
};

/* FP8: where sequence b's keys start in a Vᵀ row (fwd_sm90.cu): b times
 * the longest sequence in whole 128-key blocks, or for varlen its first
 * packed key rounded up to 128, plus 128 per earlier sequence (each ends
 * at most 127 keys past its packed end). */
__host__ __device__ __forceinline__ int fa_sm90_vt_start(bool varlen, const int32_t *cu_seqlens_k, int seq_keys,
                                                         int b)
{
    return varlen ? 128 * ((cu_seqlens_k[b] + 127) / 128 + b) : b * seq_keys;
}

/* Compile-time shape of one kernel instance. */
template <typename Elem_, int HeadDimPadded_, int BlockN_, int Stages_, int ConsumerWarpgroups_ = 2,
          int ClusterSize_ = 1, bool VtInKernel_ = false, bool KeySplit_ = false>
struct fa_sm90_config {
    typedef Elem_ Elem;
    /* FP8 (e4m3 / e5m2 q, k, v; out bf16): K = 32 per wgmma, V transposed
     * (both operands K-major), P in e4m3 */
    static constexpr bool kFp8 = fa_is_fp8<Elem>::value;
    static constexpr bool kE5m2 = fa_is_fp8<Elem>::e5m2;
    typedef typename fa_out_elem<Elem>::type OutElem;
    static constexpr bool kBf16 = !fa_is_half<Elem>::value; /* of 16-bit types; else fp16 */
    static constexpr int kElemBytes = kFp8 ? 1 : 2;
    static constexpr int kHeadDim = HeadDimPadded_; /* 64 columns (16-bit) or 128 (8-bit) per slab */
    /* consumer warpgroups of 64 query rows each: two, or three where the
     * GEMMs of one key block are short (hdim 64), or one for the key
     * split's decoding tiles (a few real rows: half the GEMMs of two) */
    static constexpr int kConsumerWarpgroups = ConsumerWarpgroups_;
    static constexpr int kBlockM = 64 * kConsumerWarpgroups;
    static constexpr int kBlockN = BlockN_;
    static constexpr int kStages = Stages_;
    /* CTAs per cluster (1 or 2): a cluster works on adjacent m blocks of one
     * head and shares each K/V block (TMA multicast) */
    static constexpr int kClusterSize = ClusterSize_;
    static constexpr int kThreads = 128 * (1 + kConsumerWarpgroups);
    static constexpr int kConsumerWarps = 4 * kConsumerWarpgroups;
    static constexpr int kSlabCols = 128 / kElemBytes; /* columns of a 128-byte slab */
    static constexpr int kSlabs = kHeadDim / kSlabCols;
    /* P as the PV's A operand: one register array of 4 per K step (16
     * keys of 16-bit, 32 keys of 8-bit values), covering kStepElems
     * accumulator elements of each thread */
    static constexpr int kPSteps = kBlockN * kElemBytes / 32;
    static constexpr int kStepElems = 16 / kElemBytes;
    /* FP8: exponentials offset by 2^8 (fa_softmax_max) */
    static constexpr int kPOffset = kFp8 ? 8 : 0;
    static constexpr int kQSlabBytes = kBlockM * 128;
    static constexpr int kKVSlabBytes = kBlockN * 128;
    static constexpr int kQBytes = kSlabs * kQSlabBytes;
    static constexpr int kKVBytes = kSlabs * kKVSlabBytes;
    /* FP8, V transposed in the kernel (FA3's form; else read from the Vᵀ
     * pass's workspace, fwd_sm90.cu chooses): V arrives by TMA as it is
     * stored ([key][dim], like K) in raw buffers of its own, and the
     * producer warpgroup's other warps transpose each block into the V
     * ring as the K-major operand (fa_sm90_transpose_v). As many raw
     * buffers as V stages: buffer i goes with stage i, so producer and
     * transposing warps walk both with one position. hdim 128 only: at
     * hdim 256 the consumers need all of their 240 registers, which leaves
     * the transposing warps too few to keep up (perf.md, twenty-eighth
     * session). */
    static constexpr bool kVtInKernel = VtInKernel_;
    /* The key split's parts (fwd_sm90.cu): their own instances, so that
     * the others carry none of its code (as a runtime flag it cost the FP8
     * hdim-128 forward 4% at 16k: perf.md, twenty-ninth session) */
    static constexpr bool kKeySplit = KeySplit_;
    static constexpr int kTransposeWarps = kVtInKernel ? 3 : 0;
    static constexpr int kRawVBuffers = kVtInKernel ? kStages : 0;
    /* barriers: q_full[2], q_empty[2], k_full[S], v_full[S], k_empty[S],
     * v_empty[S], o_empty, raw_v_full[R], raw_v_empty[R] */
    static constexpr int kBarrierBytes = 8 * (5 + 4 * kStages + 2 * kRawVBuffers);
    /* one word per consumer thread for fa_wgmma_wait_after */
    static constexpr int kScratchBytes = 4 * 128 * kConsumerWarpgroups;
    static constexpr int kSmemLimit = 232448;
    /* + 1024 so the kernel can align the base to the swizzle atom */
    static constexpr int kSmemMinBytes =
        1024 + kQBytes + (2 * kStages + kRawVBuffers) * kKVBytes + kBarrierBytes + kScratchBytes;
    /* The epilogue stages O (BlockM rows, like Q) in shared memory for TMA
     * stores: in a buffer of its own where one fits (hdim <= 128), else over
     * the V ring (FA3's layout; hdim 192/256), which the consumers write
     * once every warpgroup's last PV is done and the producer refills only
     * after the stores have read it (the o_empty barrier). Where shared
     * memory allows, Q also has a second buffer so that the producer loads
     * the next tile's Q and first K/V while the consumers finish this one. */
    /* O's tile: BlockM rows of 16-bit values (bf16 for FP8: twice Q's
     * bytes), in slabs of 64 columns */
    static constexpr int kOTileBytes = kBlockM * kHeadDim * 2;
    static constexpr int kOSlabs = kHeadDim / 64;
    static constexpr bool kOwnOBuffer = kSmemMinBytes + kOTileBytes <= kSmemLimit;
    static constexpr bool kOInV = !kOwnOBuffer && kStages * kKVBytes >= kOTileBytes;
    static constexpr bool kTmaStore = kOwnOBuffer || kOInV;
    static constexpr int kOBytes = kOwnOBuffer ? kOTileBytes : 0;
    static constexpr int kQBuffers = kSmemMinBytes + kOBytes + kQBytes <= kSmemLimit ? 2 : 1;
    static constexpr int kQAllBytes = kQBuffers * kQBytes;
    static constexpr int kSmemBytes = kSmemMinBytes + kOBytes + (kQBuffers - 1) * kQBytes;
    /* registers after setmaxnreg: (producer + W * consumer) * 128 <= 168
     * x 384 = 64512, the pool the CTA holds from its launch (not the SM's
     * 65536: more, and the consumers' setmaxnreg.inc waits forever). With
     * V transposed in the kernel, 40 for the transposing warps, so that
     * four units of it are in flight (fa_transpose_v_block); the hdim-128
     * consumers fit in 232 */
    static constexpr int kProducerRegs = kVtInKernel ? 40 : 24;
    /* (one consumer warpgroup: 256 threads may enter with up to 256
     * registers each, and setmaxnreg.inc may not go below the entry count:
     * FA3's 256) */
    static constexpr int kConsumerRegs = kConsumerWarpgroups == 3   ? 160
                                         : kConsumerWarpgroups == 1 ? 256
                                         : kVtInKernel              ? 232
                                                                    : 240;
    /* P buffers of the intra-warpgroup overlap (fa_sm90_consume_tile): two
     * where S, both P and O leave 32 registers per thread for the rest,
     * else one (FA3's form: P packed after the PV that read it is done),
     * which lets larger key blocks fit without spills */
    static constexpr int kPBuffers =
        kBlockN / 2 + 2 * (kPSteps * 4) + kHeadDim / 2 <= kConsumerRegs - 32 ? 2 : 1;
    /* How many of a thread's kBlockN / 2 exponentials per key block run
     * under the PV (fa_sm90_consume_tile); the rest follow the wait for it,
     * among the O rescale's multiplies, which ptxas spreads between them
     * (FA3's order). Chosen per tile by locked-clock cycles (perf-sm90.md,
     * v21-v23): none at hdim 64, whose short GEMMs leave the softmax chain
     * critical (5% / 1.8% fewer cycles on the 192 x 128 / 128 x 128
     * tiles); half, in whole P fragments, on the 128 x 128 tile
     * of hdim 96 / 128 (~1% fewer); all with the packing at hdim 192 / 256
     * (FA3's order measured 0.5-6% more cycles there). With one P buffer
     * none, since P can only be packed after the PV that reads it. None for
     * FP8 either, whose GEMMs are half as long as 16-bit ones (hdim 128:
     * +1% over half, 748 -> 764 TFLOP/s at 16k; perf.md, twenty-seventh
     * session). */
    static constexpr int kExpsUnderPV = kPBuffers == 1 || kHeadDim == 64 || kFp8 ? 0
                                        : kHeadDim == 128 ? kBlockN / 4 / kStepElems * kStepElems
                                                          : kBlockN / 2;
    /* How many key blocks the producer's K loads run ahead of its V loads
     * (fa_sm90_produce). A K stage is freed after the QKᵀ, half a step
     * before the V stage of the same block, so with one block of lead K no
     * longer waits behind V: 1-1.6% fewer cycles at hdim 128 / 256 on short
     * sequences, level on long ones. On the hdim-64 tiles it cost 2-5%
     * (three warpgroups) and 1% (two), probably because a K stage is
     * freed only after the last warpgroup's QKᵀ there, and V then waits
     * behind K (perf-sm90.md, v26). */
    static constexpr int kKLead = kHeadDim >= 128 ? 1 : 0;
    static_assert(kHeadDim % kSlabCols == 0 && kBlockN % 16 == 0, "tile shape");
    /* FP8: a V tile is kHeadDim rows of the block's 128 keys (one 128-byte
     * row each); one CTA per cluster (the halves of multicast loads would
     * be halves of the head dim) */
    static_assert(!kFp8 || (kBlockN == 128 && kClusterSize == 1 && kConsumerWarpgroups == 2), "FP8 tile shape");
    static_assert(!kKeySplit || (kConsumerWarpgroups <= 2 && kClusterSize == 1), "the key split's tile");
    static_assert(kConsumerWarpgroups > 1 || kKeySplit, "one consumer warpgroup: the key split's decoding tile");
    static_assert(kClusterSize == 1 || kClusterSize == 2, "clusters of one or two CTAs (the producer loads halves)");
    static_assert(kSmemBytes <= kSmemLimit, "shared memory of one CTA");
    static_assert(!kVtInKernel || (kFp8 && kHeadDim == 128 && !kOInV),
                  "V transposed in the kernel: FP8 at hdim 128, whose O has a buffer of its own");
};

/* Shared-memory addresses of the tile buffers and barriers. */
template <class Cfg> struct fa_sm90_smem {
    uint32_t base;
    __device__ uint32_t q(int buf) const { return base + buf * Cfg::kQBytes; }
    __device__ uint32_t k(int stage) const { return base + Cfg::kQAllBytes + stage * Cfg::kKVBytes; }
    __device__ uint32_t v(int stage) const
    {
        return base + Cfg::kQAllBytes + (Cfg::kStages + stage) * Cfg::kKVBytes;
    }
    /* kVtInKernel: V block as loaded, before the transpose into the V ring */
    __device__ uint32_t raw_v(int buf) const
    {
        return base + Cfg::kQAllBytes + (2 * Cfg::kStages + buf) * Cfg::kKVBytes;
    }
    /* consumer warpgroup wg's 64 output rows, slabs of 64 x 64 (kTmaStore) */
    __device__ uint32_t o(int wg) const
    {
        return (Cfg::kOInV ? v(0) : raw_v(Cfg::kRawVBuffers)) + wg * (Cfg::kOTileBytes / Cfg::kConsumerWarpgroups);
    }
    __device__ uint32_t bar(int i) const { return raw_v(Cfg::kRawVBuffers) + Cfg::kOBytes + 8 * i; }
    /* this consumer thread's scratch word */
    __device__ uint32_t scratch() const { return bar(Cfg::kBarrierBytes / 8) + 4 * (threadIdx.x - 128); }
    __device__ uint32_t q_full(int buf) const { return bar(buf); }
    __device__ uint32_t q_empty(int buf) const { return bar(2 + buf); }
    __device__ uint32_t k_full(int s) const { return bar(4 + s); }
    __device__ uint32_t v_full(int s) const { return bar(4 + Cfg::kStages + s); }
    __device__ uint32_t k_empty(int s) const { return bar(4 + 2 * Cfg::kStages + s); }
    __device__ uint32_t v_empty(int s) const { return bar(4 + 3 * Cfg::kStages + s); }
    /* kOInV: O of the last tile staged in the V ring has been read by its TMA stores */
    __device__ uint32_t o_empty() const { return bar(4 + 4 * Cfg::kStages); }
    __device__ uint32_t raw_v_full(int buf) const { return bar(5 + 4 * Cfg::kStages + buf); }
    __device__ uint32_t raw_v_empty(int buf) const { return bar(5 + 4 * Cfg::kStages + Cfg::kRawVBuffers + buf); }
};

/* The tile a CTA works on, and its key-block range. Shared by producer and
 * consumers so that both walk exactly the same blocks. */
struct fa_sm90_tile {
    int b, h, m0;      /* batch, query head, first query row of the tile */
    int q0, k0;        /* packed row offset of the sequence (varlen), else 0 */
    int sq, sk;        /* this sequence's lengths */
    int n_begin, n_end; /* key blocks [n_begin, n_end); empty when n_end <= n_begin */
    /* the blocks of [n_full_begin, n_full_end) show every key to every row
     * of the tile (no sequence end, no window edge): no per-element mask */
    int n_full_begin, n_full_end;
    int slot; /* kKeySplit: the part (its tile index), where its O / l and LSE go */
};

/* Tile `index` of the persistent loop. Without a window the m blocks of one
 * head are adjacent, so CTAs running at the same time share K/V in L2. With
 * one (causal included) the (batch, head) pairs are cut into sections of
 * heads_per_section whose K/V fit in L2, and within a section the last
 * (longest) m blocks of all its heads come first (FA3's scheduler does the
 * same). Heaviest first over all heads made the CTAs of a round read as many
 * different heads' K/V as there are CTAs (short causal problems were ~25%
 * slower that way). */
template <class Cfg>
__device__ __forceinline__ fa_sm90_tile fa_sm90_tile_of(const fa_sm90_params &p, int index)
{
    fa_sm90_tile t;
    int part = 0;
    if constexpr (Cfg::kKeySplit) { /* (set unused elsewhere, the slot moved 16-bit hdim 192 / 256's code) */
        t.slot = index;
        part = index % p.split_parts;
        index /= p.split_parts;
    }
    int m_block, head_batch;
    if (p.heaviest_first) {
        int section = index / (p.heads_per_section * p.num_m_blocks);
        int first_head = section * p.heads_per_section;
        int heads = min(p.heads_per_section, p.heads_q * p.batch - first_head); /* the last one may be short */
        int in_section = index - first_head * p.num_m_blocks;
        m_block = p.num_m_blocks - 1 - in_section / heads;
        head_batch = first_head + in_section % heads;
    } else {
        m_block = index % p.num_m_blocks;
        head_batch = index / p.num_m_blocks;
    }
    int b = head_batch / p.heads_q, h = head_batch % p.heads_q;
    if constexpr (Cfg::kKeySplit) { /* tiles of (packed rows, head group, batch) */
        const int groups = p.heads_q / p.pack_gqa;
        b = head_batch / groups;
        h = head_batch % groups * p.pack_gqa;
    }
    t.b = b;
    t.h = h;
    t.m0 = m_block * Cfg::kBlockM;
    if (p.varlen) {
        t.q0 = p.cu_seqlens_q[b];
        t.sq = p.cu_seqlens_q[b + 1] - t.q0;
        t.k0 = p.cu_seqlens_k[b];
        t.sk = p.cu_seqlens_k[b + 1] - t.k0;
    } else {
        t.q0 = t.k0 = 0;
        t.sq = Cfg::kKeySplit ? p.seqlen_q * p.pack_gqa : p.seqlen_q; /* kKeySplit: packed rows */
        t.sk = p.seqlen_k;
    }
    if (p.seqused_k)
        t.sk = p.seqused_k[b];
    /* keys visible to some row of [m0, m_last]: bottom-right aligned window */
    int shift = t.sk - t.sq;
    int m_last = min(t.m0 + Cfg::kBlockM, t.sq) - 1;
    int col_end = p.window_right < 0 ? t.sk : min(t.sk, m_last + shift + p.window_right + 1);
    int col_begin = p.window_left < 0 ? 0 : max(0, t.m0 + shift - p.window_left);
    /* packed GQA: a row's window is its query's, row / pack_gqa. (Written
     * apart, as the general form changed the other kernels' code.) */
    int q_first = 0, q_end = 0; /* the queries of the first row and of the last as if the tile were full */
    if constexpr (Cfg::kKeySplit) {
        shift = t.sk - p.seqlen_q;
        q_first = t.m0 / p.pack_gqa;
        q_end = (t.m0 + Cfg::kBlockM - 1) / p.pack_gqa;
        col_end = p.window_right < 0 ? t.sk : min(t.sk, m_last / p.pack_gqa + shift + p.window_right + 1);
        col_begin = p.window_left < 0 ? 0 : max(0, q_first + shift - p.window_left);
    }
    t.n_begin = col_begin / Cfg::kBlockN;
    t.n_end = col_end <= col_begin ? t.n_begin : (col_end + Cfg::kBlockN - 1) / Cfg::kBlockN;
    if (t.m0 >= t.sq) /* varlen: this sequence is shorter than the longest */
        t.n_end = t.n_begin;
    if constexpr (Cfg::kKeySplit)
        if (t.n_end > t.n_begin) { /* this part's share (maybe none) */
            const int first = t.n_begin, blocks = t.n_end - t.n_begin;
            t.n_begin = first + blocks * part / p.split_parts;
            t.n_end = first + blocks * (part + 1) / p.split_parts;
        }
    /* block n is full when (n + 1) BlockN <= sk, its last key is within the
     * right window of the tile's first row, and its first key within the
     * left window of the tile's last row (row m0 + BlockM - 1, as the mask
     * of rows past sq does not matter) */
    t.n_full_end = t.sk / Cfg::kBlockN;
    if (p.window_right >= 0)
        t.n_full_end = min(t.n_full_end, max(t.m0 + shift + p.window_right + 1, 0) / Cfg::kBlockN);
    int first_key = t.m0 + Cfg::kBlockM - 1 + shift - p.window_left;
    if constexpr (Cfg::kKeySplit) {
        t.n_full_end = t.sk / Cfg::kBlockN;
        if (p.window_right >= 0)
            t.n_full_end = min(t.n_full_end, max(q_first + shift + p.window_right + 1, 0) / Cfg::kBlockN);
        first_key = q_end + shift - p.window_left;
    }
    t.n_full_begin = p.window_left >= 0 && first_key > 0 ? (first_key + Cfg::kBlockN - 1) / Cfg::kBlockN : 0;
    return t;
}

/* The persistent loop's tiles for this CTA. Tiles come in sections of
 * heads_per_section heads (one section without a window), heaviest first
 * within a section (fa_sm90_tile_of). In round r of section c the CTA takes
 * the section's tile r*G + b (G CTAs, b this one) when r + c is even, and
 * r*G + G-1-b when odd: the snake pairs a CTA's heavy tiles with light ones,
 * so every CTA ends up with about the same work (a plain stride gives the
 * first CTAs the heaviest tile of every round), and the rounds restart with
 * each section so that its heavy tiles are spread the same way.
 * With clusters of C CTAs the same walk runs over units of C adjacent tiles
 * (G = clusters, b = this cluster), and the CTA of rank r takes tile r of
 * each unit: the CTAs of a cluster always hold the same head. */
template <int ClusterSize> struct fa_tile_iter {
    int section, round, index; /* index: the tile, num_tiles when done */
    __device__ static fa_tile_iter first(const fa_sm90_params &p)
    {
        fa_tile_iter it = {0, -1, 0};
        it.next(p);
        return it;
    }
    __device__ bool valid(const fa_sm90_params &p) const { return index < p.num_tiles; }
    __device__ void next(const fa_sm90_params &p)
    {
        const int g = ClusterSize > 1 ? (int)fa_cluster_count_x() : gridDim.x;
        const int b = ClusterSize > 1 ? (int)fa_cluster_id_x() : blockIdx.x;
        for (int first = section * p.section_units; first < p.num_units; first = ++section * p.section_units) {
            int pos = ++round * g + (((round + section) & 1) ? g - 1 - b : b);
            if (pos < min(p.section_units, p.num_units - first)) {
                index = ClusterSize > 1 ? (first + pos) * ClusterSize + (int)fa_cluster_rank() : first + pos;
                return;
            }
            round = -1; /* this CTA is done with the section */
        }
        index = p.num_tiles;
    }
};

/* Producer and consumers skip the same tiles: those with no key block (no
 * rows, or a window that hides every key) have nothing to load; their
 * consumers still write zeros and -inf for the rows that exist. */
__device__ __forceinline__ bool fa_sm90_has_keys(const fa_sm90_tile &t) { return t.n_end > t.n_begin; }

/* Whether the epilogue of tile t stages O in shared memory for TMA stores
 * (else it stores from registers): not for varlen tiles that cross their
 * sequence's end (the box would overwrite the next sequence's rows; fixed
 * length, TMA skips rows past the tensor), nor for tiles without keys (so
 * that with O over the V ring, producer and consumers count the same
 * stores: those of tiles the producer loads), nor for parts of the key
 * split. */
template <class Cfg> __device__ __forceinline__ bool fa_sm90_o_staged(const fa_sm90_params &p, const fa_sm90_tile &t)
{
    if constexpr (Cfg::kKeySplit)
        return false;
    return Cfg::kTmaStore && fa_sm90_has_keys(t) && (!p.varlen || t.m0 + Cfg::kBlockM <= t.sq);
}

/* ------------------------------------------------------------------------ */
/* Producer: one warp walks the tiles, one elected lane of it streams Q     */
/* once and K/V block by block. The warp's loop state is uniform, so it     */
/* lives in uniform registers: a lone thread's 24 registers spilled once    */
/* the multicast loads came in.                                             */

template <class Cfg> __device__ __forceinline__ void fa_sm90_produce(const fa_sm90_params &p, const fa_sm90_smem<Cfg> &sm)
{
    fa_tma_prefetch_map(&p.map_q);
    fa_tma_prefetch_map(&p.map_k);
    fa_tma_prefetch_map(&p.map_v);
    /* every buffer starts free: wait on the empty barriers with parity 1 */
    fa_pipe_state<Cfg::kStages> k = {0, 1}, v = {0, 1};
    fa_pipe_state<Cfg::kQBuffers> q = {0, 1};
    /* in a cluster (of two: fwd_sm90.cu) the CTA of rank r loads rows
     * [r BlockN / 2, (r + 1) BlockN / 2) of every K/V block for both (the
     * tensor maps' boxes are that tall); each CTA's full barrier expects the
     * whole block */
    const bool leader = fa_elect_one();
    /* Key block n: the leader loads the CTA's share in one box per 64
     * columns (in a cluster, multicast to both CTAs) */
    auto load_kv = [&](uint32_t tile, const CUtensorMap *map, uint32_t full, int row, int kv_head, int batch) {
        const int part_row = (int)fa_cluster_rank() * (Cfg::kBlockN / 2);
        for (int s = 0; s < Cfg::kSlabs; ++s) {
            if constexpr (Cfg::kClusterSize > 1)
                fa_tma_load_4d_multicast(tile + s * Cfg::kKVSlabBytes + part_row * 128, map, full,
                                         s * Cfg::kSlabCols, row + part_row, kv_head, batch, 0x3);
            else
                fa_tma_load_4d(tile + s * Cfg::kKVSlabBytes, map, full, s * Cfg::kSlabCols, row, kv_head, batch);
        }
    };
    /* Key block n of a paged cache, run by the whole warp: in boxes of
     * kv_box_rows, the CTA's share or a page where pages are smaller (each
     * box at a multiple of 8 rows, so the 128-byte swizzle sees the layout
     * of one tall box); lane i looks up the page of box i, so that a
     * block's table reads overlap, and the leader issues the copies. A
     * separate path: the non-paged blocks' producer, all lanes stepping
     * through these boxes, cost 1% at 16k (perf.md, twenty-sixth session). */
    const int lane = (int)threadIdx.x % 32;
    auto load_kv_paged = [&](uint32_t tile, const CUtensorMap *map, uint32_t full, const fa_sm90_tile &t, int n,
                             int kv_head) {
        constexpr int kShare = Cfg::kBlockN / Cfg::kClusterSize;
        const int part_row = Cfg::kClusterSize > 1 ? (int)fa_cluster_rank() * kShare : 0;
        const int block_row = n * Cfg::kBlockN;
        int lane_page = 0;
        const int lane_row = block_row + part_row + lane * p.kv_box_rows;
        if (lane * p.kv_box_rows < kShare && lane_row < t.sk)
            lane_page = p.kv_block_table[(int64_t)t.b * p.kv_block_table_stride + lane_row / p.kv_page_size];
        for (int i = 0, r = part_row; r < part_row + kShare; ++i, r += p.kv_box_rows) {
            /* the box lies in one page: its row there, the page as the batch coordinate; past the
             * used keys (whose table entries may be anything) a row past the page, which TMA fills
             * with zeros */
            const int page = __shfl_sync(0xffffffffu, lane_page, i);
            const int row = block_row + r < t.sk ? (block_row + r) % p.kv_page_size : p.kv_page_size;
            if (!leader)
                continue;
            for (int s = 0; s < Cfg::kSlabs; ++s) {
                if constexpr (Cfg::kClusterSize > 1)
                    fa_tma_load_4d_multicast(tile + s * Cfg::kKVSlabBytes + r * 128, map, full, s * Cfg::kSlabCols, row,
                                             kv_head, page, 0x3);
                else
                    fa_tma_load_4d(tile + s * Cfg::kKVSlabBytes + r * 128, map, full, s * Cfg::kSlabCols, row, kv_head,
                                   page);
            }
        }
    };
    /* kOInV: the O of the last tile loaded is (or will be) staged over the
     * V ring; this tile's first V waits until its stores have read it */
    bool o_in_v = false;
    uint32_t o_phase = 0;
    for (fa_tile_iter<Cfg::kClusterSize> it = fa_tile_iter<Cfg::kClusterSize>::first(p); it.valid(p); it.next(p)) {
        fa_sm90_tile t = fa_sm90_tile_of<Cfg>(p, it.index);
        if (!fa_sm90_has_keys(t))
            continue;
        /* fixed-length tensors are indexed by batch; packed ones by row only */
        int batch = p.varlen ? 0 : t.b;
        int kv_head = t.h / p.heads_per_kv;

        fa_mbar_wait(sm.q_empty(q.stage), q.phase); /* the QKᵀ of the buffer's last tile are done */
        if (leader) {
            fa_mbar_arrive_expect_tx(sm.q_full(q.stage), Cfg::kQBytes);
            for (int s = 0; s < Cfg::kSlabs; ++s)
                if (Cfg::kKeySplit && p.pack_gqa > 1) /* map_q: (dim, head, seq, batch), boxes of pack_gqa heads */
                    fa_tma_load_4d(sm.q(q.stage) + s * Cfg::kQSlabBytes, &p.map_q, sm.q_full(q.stage),
                                   s * Cfg::kSlabCols, t.h, t.m0 / p.pack_gqa, batch);
                else
                    fa_tma_load_4d(sm.q(q.stage) + s * Cfg::kQSlabBytes, &p.map_q, sm.q_full(q.stage),
                                   s * Cfg::kSlabCols, t.q0 + t.m0, t.h, batch);
        }
        q.advance();

        /* K runs kKLead key blocks ahead of V (step n's QKᵀ and the PV of
         * block n + 1 use K(n) and V(n + 1)); K(n) and V(n) still share a
         * stage index. FP8 at hdim 128: V goes to the raw buffers, which
         * the transposing warps free (fa_sm90_transpose_v). */
        auto load_block = [&](fa_pipe_state<Cfg::kStages> &ring, bool is_v, int n) {
            const bool raw = Cfg::kVtInKernel && is_v;
            const uint32_t full = raw ? sm.raw_v_full(ring.stage) : is_v ? sm.v_full(ring.stage) : sm.k_full(ring.stage);
            fa_mbar_wait(raw    ? sm.raw_v_empty(ring.stage)
                         : is_v ? sm.v_empty(ring.stage)
                                : sm.k_empty(ring.stage),
                         ring.phase);
            const uint32_t tile = raw ? sm.raw_v(ring.stage) : is_v ? sm.v(ring.stage) : sm.k(ring.stage);
            const CUtensorMap *map = is_v ? &p.map_v : &p.map_k;
            if (Cfg::kFp8 && !Cfg::kVtInKernel && is_v) { /* Vᵀ of block n: head-dim rows of its 128 keys, one box */
                if (leader) {
                    const int key = fa_sm90_vt_start(p.varlen, p.cu_seqlens_k, p.vt_seq_keys, t.b);
                    fa_mbar_arrive_expect_tx(full, Cfg::kKVBytes);
                    fa_tma_load_4d(tile, map, full, key + n * Cfg::kBlockN, 0, kv_head, 0);
                }
            } else if (p.kv_block_table) { /* uniform */
                if (leader)
                    fa_mbar_arrive_expect_tx(full, Cfg::kKVBytes);
                load_kv_paged(tile, map, full, t, n, kv_head);
            } else if (leader) {
                fa_mbar_arrive_expect_tx(full, Cfg::kKVBytes);
                load_kv(tile, map, full, t.k0 + n * Cfg::kBlockN, kv_head, batch);
            }
            ring.advance();
        };
        for (int n = t.n_end - 1; n > t.n_end - 1 - Cfg::kKLead && n >= t.n_begin; --n)
            load_block(k, false, n);
        for (int n = t.n_end - 1; n >= t.n_begin; --n) {
            if (n - Cfg::kKLead >= t.n_begin)
                load_block(k, false, n - Cfg::kKLead);
            if (Cfg::kOInV && o_in_v) {
                fa_mbar_wait(sm.o_empty(), o_phase);
                o_phase ^= 1;
                o_in_v = false;
            }
            load_block(v, true, n);
        }
        o_in_v = Cfg::kOInV && fa_sm90_o_staged<Cfg>(p, t);
    }
}

/* ------------------------------------------------------------------------ */
/* FP8: the transpose of V. The PV's B operand must be K-major for 8-bit    */
/* wgmma (no transpose bit), i.e. Vᵀ, [dim][key]: the producer warpgroup's  */
/* warps 1..3 make it in shared memory from each raw V block.               */

/* The 4 x 4 bytes of a[0..3] transposed: byte i of a[j] moves to byte j of
 * a[i] (8 byte permutes). */
__device__ __forceinline__ void fa_transpose_4x4_bytes(uint32_t (&a)[4])
{
    const uint32_t lo01 = __byte_perm(a[0], a[1], 0x5140), hi01 = __byte_perm(a[0], a[1], 0x7362);
    const uint32_t lo23 = __byte_perm(a[2], a[3], 0x5140), hi23 = __byte_perm(a[2], a[3], 0x7362);
    a[0] = __byte_perm(lo01, lo23, 0x5410);
    a[1] = __byte_perm(lo01, lo23, 0x7632);
    a[2] = __byte_perm(hi01, hi23, 0x5410);
    a[3] = __byte_perm(hi01, hi23, 0x7632);
}

/* One key block of V, raw ([key][dim]: 128 rows of 128 bytes, chunk c of
 * row r at c ^ (r % 8), as TMA writes it) -> vt ([dim][key]: one 128-byte
 * row per dim, swizzled the same way, as wgmma reads it), keys in P's
 * register order (fa_probs_to_operand): word t of each 16 keys holds keys
 * 2t, 2t + 1, 8 + 2t, 9 + 2t. Keys from `valid` on are written as zeros
 * (another sequence's or stale rows: P is 0 there, but 0 * NaN is not).
 * A unit is 4 keys x 4 dims (4 loads, 8 byte permutes, 4 stores). In
 * step s a lane takes word t = l % 4 of key groups g and g + 4, g = (s %
 * 4) ^ (l / 8), at dim words w and w + 8, w = 16 (s / 4) + l / 4: the
 * loads and stores of a warp fall on 32 distinct banks, and the 16 loads
 * of the four units are in flight together (shared memory answers these
 * warps slowly under the consumers' wgmma: with one unit at a time the
 * transpose held the forward to ~500 TFLOP/s; perf.md, twenty-eighth
 * session). vt: 128 x 128 bytes. */
template <class Cfg>
__device__ __forceinline__ void fa_transpose_v_block(uint32_t raw, uint32_t vt, int warp, int lane, int valid)
{
    static_assert(Cfg::kHeadDim == 128 && Cfg::kBlockN == 128, "one 128 x 128-byte block");
    constexpr int kSteps = 8; /* 2 pairs of dim-word octets x 4 pairs of key groups */
    constexpr int kSecondKeys = 64, kSecondDims = 32;
    const int t = lane & 3;
#pragma unroll 1
    for (int step = warp; step < kSteps; step += Cfg::kTransposeWarps) {
        const int group = (step % 4) ^ (lane >> 3), key = 16 * group + 2 * t;
        const int w = 16 * (step / 4) + (lane >> 2); /* and w + 8 */
        uint32_t a[4][4]; /* unit u: keys + 64 (u & 1), dim words + 8 (u >> 1) */
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int wu = w + 8 * (u >> 1);
            /* keys key and key + 8 share the swizzle, as do key + 1 and key + 9 */
            const uint32_t row = raw + (key + kSecondKeys * (u & 1)) * 128 + (wu % 4) * 4;
            const uint32_t even = row + (((wu / 4) ^ (2 * t)) * 16), odd = row + 128 + (((wu / 4) ^ (2 * t + 1)) * 16);
            a[u][0] = fa_smem_ld32(even);
            a[u][1] = fa_smem_ld32(odd);
            a[u][2] = fa_smem_ld32(even + 8 * 128);
            a[u][3] = fa_smem_ld32(odd + 8 * 128);
        }
        if (valid < Cfg::kBlockN) {
#pragma unroll
            for (int u = 0; u < 4; ++u)
#pragma unroll
                for (int i = 0; i < 4; ++i)
                    a[u][i] = key + kSecondKeys * (u & 1) + (i & 1) + 8 * (i >> 1) < valid ? a[u][i] : 0u;
        }
        /* dims 4 wu + j: key group g's chunk in row dim is g ^ (dim % 8),
         * dim % 8 = 4 (w % 2) + j; group + 4's is that ^ 4 */
        const int chunk = group ^ ((w % 2) * 4), second = (w % 2) ? -64 : 64;
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            fa_transpose_4x4_bytes(a[u]);
            const uint32_t dst = vt + (4 * w + kSecondDims * (u >> 1)) * 128 + 4 * t + ((u & 1) ? second : 0);
#pragma unroll
            for (int j = 0; j < 4; ++j)
                fa_smem_st32(dst + j * 128 + ((chunk ^ j) * 16), a[u][j]);
        }
    }
}

/* The transposing warps (1..3 of the producer warpgroup) walk the same
 * tiles and key blocks as the producer: each raw V block, once loaded and
 * once its V stage is free, into the V ring; then the raw buffer goes back
 * to the producer and the stage to the consumers (each warp arrives on
 * both). */
template <class Cfg>
__device__ __forceinline__ void fa_sm90_transpose_v(const fa_sm90_params &p, const fa_sm90_smem<Cfg> &sm)
{
    const int warp = (int)threadIdx.x / 32 - 1, lane = (int)threadIdx.x % 32;
    /* raw buffer i and V stage i go together: the V stage's empty barrier
     * is a phase behind the raw buffer's full one (every stage starts free) */
    fa_pipe_state<Cfg::kStages> ring = {0, 0};
    for (fa_tile_iter<Cfg::kClusterSize> it = fa_tile_iter<Cfg::kClusterSize>::first(p); it.valid(p); it.next(p)) {
        const fa_sm90_tile t = fa_sm90_tile_of<Cfg>(p, it.index);
        for (int n = t.n_end - 1; n >= t.n_begin; --n, ring.advance()) {
            fa_mbar_wait(sm.raw_v_full(ring.stage), ring.phase);
            fa_mbar_wait(sm.v_empty(ring.stage), ring.phase ^ 1);
            fa_transpose_v_block<Cfg>(sm.raw_v(ring.stage), sm.v(ring.stage), warp, lane, t.sk - n * Cfg::kBlockN);
            fa_fence_proxy_async_shared(); /* the stores, for wgmma; the loads, before TMA refills */
            __syncwarp();
            if (lane == 0) {
                fa_mbar_arrive(sm.raw_v_empty(ring.stage));
                fa_mbar_arrive(sm.v_full(ring.stage));
            }
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Consumer helpers. A thread's accumulators cover two rows of its          */
/* warpgroup's 64 (see ptx/wgmma.cuh); index `half` = (i >> 1) & 1 picks    */
/* which of the two.                                                        */

__device__ __forceinline__ float fa_quad_max(float x)
{
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float fa_quad_sum(float x)
{
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}


/* Keys visible to query row `row`: [lo, hi], empty when lo > hi (bottom-
 * right aligned, shift = sk - sq; window sizes -1 = unbounded). As an
 * interval, a masked tile costs two compares per element against
 * compile-time offsets instead of the window test (+13% / +6% TFLOP/s at
 * hdim 64 / 128 causal 512). */
__device__ __forceinline__ void fa_visible_keys(int row, int sk, int shift, int window_left, int window_right,
                                                int &lo, int &hi)
{
    lo = window_left < 0 ? -kFaMaskUnbounded : row + shift - window_left;
    hi = window_right < 0 ? sk - 1 : min(sk - 1, row + shift + window_right);
}

/* Score tile S (64 x BlockN, this warpgroup's rows) -> masked scores:
 * -inf where key col is past the sequence or outside the window of the
 * row's query: row / pack (packed GQA: pack heads per query; else 1). */
template <int BlockN>
__device__ __forceinline__ void fa_mask_scores(float (&s)[BlockN / 2], int row0, int pack, int col0, int sk,
                                               int shift, int window_left, int window_right)
{
    /* element i is key col_base + 8 (i >> 2) + (i & 1) of row row0 + 8 half */
    const int col_base = col0 + 2 * (threadIdx.x % 4);
    int lo[2], hi[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        fa_visible_keys((row0 + 8 * half) / pack, sk, shift, window_left, window_right, lo[half], hi[half]);
        lo[half] -= col_base;
        hi[half] -= col_base;
    }
    /* Without a left window bound (causal, sequence ends) only the right
     * bound can hide a key: one compare per element instead of two (a
     * compile-time flag, so that the test is not per element). */
    auto mask = [&](auto has_left) {
#pragma unroll
        for (int i = 0; i < BlockN / 2; ++i) {
            const int c = 8 * (i >> 2) + (i & 1), half = (i >> 1) & 1;
            if (c > hi[half] || (decltype(has_left)::value && c < lo[half]))
                s[i] = -INFINITY;
        }
    };
    if (window_left < 0)
        mask(fa_flag<false>());
    else
        mask(fa_flag<true>());
}

/* Row r's reduction by `op` over this thread's elements of it in s[Begin,
 * End) (element j of the row is s[4 (j >> 1) + 2 r + (j & 1)]), in four
 * independent chains, so that it is not one dependent chain of
 * (End - Begin) / 2 instructions. Each chain starts from its first element
 * rather than from -inf or 0, which ptxas cannot fold (NaN, -0): then the
 * chains cost no instruction over a single one. */
template <int BlockN, int Begin = 0, int End = BlockN / 2, class Op>
__device__ __forceinline__ float fa_row_reduce(const float (&s)[BlockN / 2], int r, Op op)
{
    constexpr int kChains = 4, kFirst = Begin / 2, kLast = End / 2;
    static_assert(Begin % 4 == 0 && (kLast - kFirst) % kChains == 0 && End <= BlockN / 2, "row range");
    auto elem = [r](int j) { return 4 * (j >> 1) + 2 * r + (j & 1); };
    float chain[kChains];
#pragma unroll
    for (int c = 0; c < kChains; ++c)
        chain[c] = s[elem(kFirst + c)];
#pragma unroll
    for (int j = kFirst + kChains; j < kLast; ++j)
        chain[j % kChains] = op(chain[j % kChains], s[elem(j)]);
    return op(op(chain[0], chain[1]), op(chain[2], chain[3]));
}

/* Online softmax over one score tile, in two parts. First the running row
 * max m: returns max_scaled = m·c - POffset (the exponentials' offset) and
 * the factor `correction` by which O and the row sums must be rescaled. */
template <int BlockN, int POffset>
__device__ __forceinline__ void fa_softmax_max(const float (&s)[BlockN / 2], float (&row_max)[2],
                                               float (&correction)[2], float (&max_scaled)[2], float scale_log2)
{
    auto max = [](float a, float b) { return fmaxf(a, b); };
    const float thread_max[2] = {fa_row_reduce<BlockN>(s, 0, max), fa_row_reduce<BlockN>(s, 1, max)};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float m = fa_quad_max(fmaxf(thread_max[r], row_max[r]));
        /* a row with no visible key yet keeps m = -inf; use 0 so that
         * exp2(-inf - 0) = 0 instead of NaN */
        max_scaled[r] = (m == -INFINITY ? 0.0f : m) * scale_log2;
        correction[r] = exp2f(row_max[r] * scale_log2 - max_scaled[r]);
        row_max[r] = m;
        /* FP8: probabilities in [0, 2^POffset], which the e4m3 P resolves
         * better than [0, 1] (FA3's offset); the row sums carry the same
         * factor, so only the LSE takes it out */
        if constexpr (POffset != 0)
            max_scaled[r] -= (float)POffset;
    }
}

/* Then, in place on elements [Begin, End) of s, the unnormalised
 * probabilities exp2(s·c - m·c); `sum` receives this thread's part of
 * their row sums (the quad adds them up at the end). */
template <int BlockN, int Begin = 0, int End = BlockN / 2>
__device__ __forceinline__ void fa_softmax_exp(float (&s)[BlockN / 2], const float (&max_scaled)[2],
                                               float scale_log2, float (&sum)[2])
{
    auto add = [](float a, float b) { return a + b; };
#pragma unroll
    for (int i = Begin; i < End; ++i)
        s[i] = exp2f(fmaf(s[i], scale_log2, -max_scaled[(i >> 1) & 1]));
#pragma unroll
    for (int r = 0; r < 2; ++r)
        sum[r] = fa_row_reduce<BlockN, Begin, End>(s, r, add);
}

/* The row sums after a tile: rescaled by the correction, plus its terms. */
__device__ __forceinline__ void fa_add_row_sums(float (&row_sum)[2], const float (&correction)[2],
                                                const float (&sum)[2])
{
#pragma unroll
    for (int r = 0; r < 2; ++r)
        row_sum[r] = row_sum[r] * correction[r] + sum[r];
}

/* ------------------------------------------------------------------------ */
/* Consumer: one warpgroup, 64 query rows.                                  */

/* Pingpong between the consumer warpgroups, round robin: warpgroup w may
 * issue its GEMMs once warpgroup w - 1 has issued its own (named barrier
 * kSchedBarrier + w: w's 128 threads wait, w - 1's 128 arrive). */
struct fa_pingpong {
    static constexpr uint32_t kSchedBarrier = 1; /* ids 1..3; 0 is __syncthreads */
    int wg, count; /* count 1: no one to take turns with */
    __device__ void wait_turn() const
    {
        if (count > 1)
            fa_named_barrier_sync(kSchedBarrier + wg, 256);
    }
    __device__ void pass_turn() const
    {
        if (count > 1)
            fa_named_barrier_arrive(kSchedBarrier + (wg + 1) % count, 256);
    }
};

/* Releases a buffer: each consumer warp arrives once it is done reading. */
__device__ __forceinline__ void fa_release(uint32_t empty_bar)
{
    __syncwarp();
    if (threadIdx.x % 32 == 0)
        fa_mbar_arrive(empty_bar);
}

/* Releases a K/V stage, which the producers of all ClusterSize CTAs write
 * (multicast): lane r of each consumer warp arrives on the stage's empty
 * barrier in CTA r. */
template <int ClusterSize> __device__ __forceinline__ void fa_release_kv(uint32_t empty_bar)
{
    if constexpr (ClusterSize == 1) {
        fa_release(empty_bar);
    } else {
        __syncwarp();
        const int lane = threadIdx.x % 32;
        if (lane < ClusterSize)
            fa_mbar_arrive_in_cta(empty_bar, (uint32_t)lane);
    }
}

/* Varlen: the tensor map spans the packed tensor, so the key block that
 * crosses a sequence's end holds the next sequence's rows. Their scores are
 * masked (P = 0), but 0 * NaN or 0 * inf in P V would still carry a NaN or
 * inf of the neighbour's V into this sequence: before the first P V of that
 * block the consumers zero those V rows (whole 128-byte rows, so the swizzle
 * does not matter), then wait for each other. Called by every consumer
 * warpgroup for key block n (stage v_tile), once its V has landed. */
static constexpr uint32_t kClearBarrier = 4; /* 1..3: pingpong */
template <class Cfg> __device__ __forceinline__ void fa_clear_foreign_v(const fa_sm90_tile &t, int n, uint32_t v_tile)
{
    const uint32_t first = (uint32_t)(t.sk - n * Cfg::kBlockN) * 128; /* first foreign row, in bytes */
    const uint32_t tid = threadIdx.x - 128; /* over all consumer warpgroups */
#pragma unroll
    for (int s = 0; s < Cfg::kSlabs; ++s)
        for (uint32_t off = first + 16 * tid; off < Cfg::kKVSlabBytes; off += 16 * 128 * Cfg::kConsumerWarpgroups)
            fa_smem_zero16(v_tile + s * Cfg::kKVSlabBytes + off);
    fa_fence_proxy_async_shared();
    fa_named_barrier_sync(kClearBarrier, 128 * Cfg::kConsumerWarpgroups);
}

/* Operand descriptors of the consumer's GEMMs: Q (this warpgroup's rows of
 * Q buffer 0), K and V of stage 0; a later buffer or stage is an offset
 * (fa_wgmma_desc_advance), so that the loop does not rebuild them. */
template <class Cfg> struct fa_sm90_descs {
    uint64_t q, k, v;
    __device__ uint64_t q_at(int buf) const { return fa_wgmma_desc_advance(q, buf * Cfg::kQBytes); }
    __device__ uint64_t k_at(int stage) const { return fa_wgmma_desc_advance(k, stage * Cfg::kKVBytes); }
    __device__ uint64_t v_at(int stage) const { return fa_wgmma_desc_advance(v, stage * Cfg::kKVBytes); }
};
template <class Cfg>
__device__ __forceinline__ fa_sm90_descs<Cfg> fa_sm90_descs_of(const fa_sm90_smem<Cfg> &sm, int wg)
{
    /* Q rows of this warpgroup start 64 rows into each slab; V is the
     * MN-major B operand, or K-major as Vᵀ (FP8) */
    return {fa_wgmma_desc(sm.q(0) + 64 * wg * 128, 16, 1024), fa_wgmma_desc(sm.k(0), 16, 1024),
            Cfg::kFp8 ? fa_wgmma_desc(sm.v(0), 16, 1024) : fa_wgmma_desc(sm.v(0), Cfg::kKVSlabBytes, 1024)};
}

/* Issues S = Q Kᵀ for this warpgroup's 64 rows (one commit group); q, k:
 * the descriptors of its Q rows and of the K tile. */
template <class Cfg>
__device__ __forceinline__ void fa_issue_qk(float (&s)[Cfg::kBlockN / 2], uint64_t q, uint64_t k)
{
    /* each k step (16 columns of 16-bit values, 32 of 8-bit: 32 bytes of a
     * 128-byte row) is a constant byte offset from both */
#pragma unroll
    for (int kk = 0; kk < Cfg::kHeadDim * Cfg::kElemBytes / 32; ++kk) {
        uint32_t slab = kk / 4, in_slab = (kk % 4) * 32;
        const uint64_t qa = fa_wgmma_desc_advance(q, slab * Cfg::kQSlabBytes + in_slab);
        const uint64_t kb = fa_wgmma_desc_advance(k, slab * Cfg::kKVSlabBytes + in_slab);
        if constexpr (Cfg::kFp8)
            fa_wgmma<Cfg::kBlockN>::template ss_fp8<Cfg::kE5m2, Cfg::kE5m2>(s, qa, kb, kk > 0);
        else
            fa_wgmma<Cfg::kBlockN>::template ss<Cfg::kBf16, 0>(s, qa, kb, kk > 0);
    }
    fa_wgmma_commit();
}

/* Issues O += P V (one commit group); v: the descriptor of the V tile.
 * 16-bit: V is [key][dim], dim contiguous, i.e. the MN-major B operand, 16
 * keys (16 rows of 128 bytes) per wgmma. FP8: Vᵀ, [dim][key], the K-major B
 * operand, 32 keys (32 bytes of each row) per wgmma. */
template <class Cfg>
__device__ __forceinline__ void fa_issue_pv(float (&o)[Cfg::kHeadDim / 2], const uint32_t (&pa)[Cfg::kPSteps][4],
                                            uint64_t v)
{
#pragma unroll
    for (int kk = 0; kk < Cfg::kPSteps; ++kk) {
        if constexpr (Cfg::kFp8)
            fa_wgmma<Cfg::kHeadDim>::template rs_fp8<Cfg::kE5m2>(o, pa[kk], fa_wgmma_desc_advance(v, kk * 32), 1);
        else
            fa_wgmma<Cfg::kHeadDim>::template rs<Cfg::kBf16, 1>(o, pa[kk], fa_wgmma_desc_advance(v, kk * 16 * 128),
                                                               1);
    }
    fa_wgmma_commit();
}

/* What turns a key block's S into scores: softcap's input scale, and the
 * factor to log2 units of the (softcapped) score. An FP8 block's S is of
 * the stored values: the descales of the tile's queries and the block's
 * keys (qk_descale) fold into these. */
struct fa_score_scale {
    float softcap_in, log2;
};
/* The scale to log2 units: 16-bit reads the kernel parameter at each use
 * (held in a register across the PV wait instead, it moved the hdim-128
 * kernels' schedule). */
template <class Cfg> __device__ __forceinline__ float fa_log2_scale(const fa_sm90_params &p, const fa_score_scale &sc)
{
    return Cfg::kFp8 ? sc.log2 : p.score_scale_log2;
}
template <class Cfg>
__device__ __forceinline__ fa_score_scale fa_score_scale_of(const fa_sm90_params &p, float qk_descale)
{
    if constexpr (Cfg::kFp8)
        return {p.softcap_input_scale * qk_descale,
                p.softcap > 0.0f ? p.score_scale_log2 : p.score_scale_log2 * qk_descale};
    else
        return {p.softcap_input_scale, p.score_scale_log2};
}

/* FP8: where a tile's descales stand. The row max is kept in the log2
 * units of the last key block's scores (log2: that block's score scale),
 * and O in the V descale of the last block (v_scale). */
struct fa_sm90_fp8_state {
    float q_descale, log2, v_scale;
};

/* The FP8 descale of row `row` of (b, head) (1 without descales): blocks
 * of `block` rows, a multiple of the tiles' 128 (sm90.cu). */
__device__ __forceinline__ float fa_fp8_descale(const float *descale, int heads, int blocks, int block, int b,
                                                int head, int row)
{
    return descale == nullptr ? 1.0f : descale[((int64_t)b * heads + head) * blocks + row / block];
}

/* FP8: the K and V descales of key block n (1, 1 for 16-bit). Loaded
 * where they are used, after the wait for the block's QKᵀ: issued before
 * the GEMMs instead, the hdim-128 forward ran 3-4% slower (perf.md,
 * twenty-seventh session). */
struct fa_kv_descales {
    float k, v;
};
template <class Cfg>
__device__ __forceinline__ fa_kv_descales fa_kv_descales_of(const fa_sm90_params &p, const fa_sm90_tile &t, int n)
{
    if constexpr (Cfg::kFp8) {
        const int heads_kv = p.heads_q / p.heads_per_kv, kv_head = t.h / p.heads_per_kv, key = n * Cfg::kBlockN;
        return {fa_fp8_descale(p.k_descale, heads_kv, p.descale_blocks_k, p.descale_block_k, t.b, kv_head, key),
                fa_fp8_descale(p.v_descale, heads_kv, p.descale_blocks_k, p.descale_block_k, t.b, kv_head, key)};
    } else {
        return {1.0f, 1.0f};
    }
}

/* Key block n's score scale. FP8: the block's K descale folds into it, the
 * row max moves to its units and O to its V descale (O's factor: o_ratio);
 * 16-bit: the kernel's constants. */
template <class Cfg>
__device__ __forceinline__ fa_score_scale fa_block_scale(const fa_sm90_params &p, const fa_kv_descales &kv,
                                                         fa_sm90_fp8_state &fp8, float (&row_max)[2],
                                                         float &o_ratio)
{
    if constexpr (Cfg::kFp8) {
        const float ks = kv.k, vs = kv.v;
        const fa_score_scale sc = fa_score_scale_of<Cfg>(p, fp8.q_descale * ks);
        const float to_block = fp8.log2 / sc.log2;
#pragma unroll
        for (int r = 0; r < 2; ++r)
            row_max[r] *= to_block;
        o_ratio = fp8.v_scale / vs;
        fp8.log2 = sc.log2;
        fp8.v_scale = vs;
        return sc;
    } else {
        o_ratio = 1.0f;
        return fa_score_scale_of<Cfg>(p, 1.0f);
    }
}

/* Score tile of key block n -> softcapped, masked scores (in s), the
 * running row max, the exponentials' offset and the correction factor for
 * what O and the row sums held before (fa_softmax_max). */
template <class Cfg>
__device__ __forceinline__ void fa_scores_to_max(const fa_sm90_params &p, const fa_sm90_tile &t, int n, int row0,
                                                 const fa_score_scale &sc, float (&s)[Cfg::kBlockN / 2],
                                                 float (&row_max)[2], float (&correction)[2],
                                                 float (&max_scaled)[2])
{
    constexpr int BlockN = Cfg::kBlockN;
    const int col0 = n * BlockN, shift = Cfg::kKeySplit ? t.sk - p.seqlen_q : t.sk - t.sq; /* (kKeySplit: packed rows) */
    if (p.softcap > 0.0f) {
#pragma unroll
        for (int i = 0; i < BlockN / 2; ++i)
            s[i] = p.softcap * fa_softcap_tanh(s[i], sc.softcap_in);
    }
    /* only blocks that cross the sequence end or a window edge need the
     * per-element test (a uniform branch) */
    if (n < t.n_full_begin || n >= t.n_full_end)
        fa_mask_scores<BlockN>(s, row0, Cfg::kKeySplit ? p.pack_gqa : 1, col0, t.sk, shift, p.window_left,
                               p.window_right);
    fa_softmax_max<BlockN, Cfg::kPOffset>(s, row_max, correction, max_scaled, sc.log2);
}

/* Score tile of key block n -> probabilities (in s); the row sums take the
 * correction and this tile's terms. */
template <class Cfg>
__device__ __forceinline__ void fa_scores_to_probs(const fa_sm90_params &p, const fa_sm90_tile &t, int n, int row0,
                                                   const fa_score_scale &sc, float (&s)[Cfg::kBlockN / 2],
                                                   float (&row_max)[2], float (&row_sum)[2],
                                                   float (&correction)[2])
{
    float max_scaled[2], sum[2];
    fa_scores_to_max<Cfg>(p, t, n, row0, sc, s, row_max, correction, max_scaled);
    fa_softmax_exp<Cfg::kBlockN>(s, max_scaled, sc.log2, sum);
    fa_add_row_sums(row_sum, correction, sum);
}

/* P (the k steps [Begin, End): elements [kStepElems Begin, kStepElems End)
 * of s) as the wgmma A operand. 16-bit: step kk is accumulator columns
 * 16kk..16kk+15, whose layout is the operand's. FP8: step kk is columns
 * 32kk..32kk+31, and a register holds one row's 4 values at operand k
 * 4t..4t+3 (and 16 + that); packed from the thread's own columns {2t, 2t+1,
 * 8+2t, 9+2t} (and 16 + those), the operand's key order is that
 * permutation within every 16 keys, which the Vᵀ rows follow (the pass
 * of fwd_sm90.cu, fa_transpose_v_block), so P never moves between
 * threads. */
template <class Cfg, int Begin = 0, int End = Cfg::kPSteps>
__device__ __forceinline__ void fa_probs_to_operand(const float (&s)[Cfg::kBlockN / 2],
                                                    uint32_t (&pa)[Cfg::kPSteps][4])
{
#pragma unroll
    for (int kk = Begin; kk < End; ++kk)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            if constexpr (Cfg::kFp8) {
                /* r: row (r & 1) of the two, keys 16 (r >> 1) + the quad's */
                const float *e = &s[16 * kk + 8 * (r >> 1) + 2 * (r & 1)];
                pa[kk][r] = fa_pack4_e4m3(e[0], e[1], e[4], e[5]);
            } else {
                pa[kk][r] = fa_pack2<typename Cfg::Elem>(s[8 * kk + 2 * r], s[8 * kk + 2 * r + 1]);
            }
        }
}

static constexpr uint32_t kEpilogueBarrier = 5; /* 5..7: one per consumer warpgroup */
static constexpr uint32_t kOFreeBarrier = 8;    /* kOInV: every consumer warpgroup's last PV is done */

/* kOInV: once the TMA stores of the O staged over the V ring have read it,
 * each consumer warpgroup's leader tells the producer of every CTA in the
 * cluster (each multicasts V into this CTA's ring) that it may load V again. */
template <class Cfg> __device__ __forceinline__ void fa_release_o(const fa_sm90_smem<Cfg> &sm, bool &o_in_v)
{
    if (!Cfg::kOInV || !o_in_v)
        return;
    o_in_v = false;
    if (threadIdx.x % 128 == 0) {
        fa_bulk_wait_read<0>();
        if constexpr (Cfg::kClusterSize == 1)
            fa_mbar_arrive(sm.o_empty());
        else
            for (uint32_t rank = 0; rank < Cfg::kClusterSize; ++rank)
                fa_mbar_arrive_in_cta(sm.o_empty(), rank);
    }
}

/* This warpgroup's 64 rows of O (already divided by the row sums: inv) into
 * its shared-memory slabs in the 128-byte-swizzled image a TMA store reads
 * (16-byte chunk c of row r at chunk c ^ (r % 8)), then one thread stores
 * them. Its previous store must have read the slabs first; the kernel waits
 * for the last one before it exits. Over the V ring (kOInV) the slabs are
 * written once every warpgroup is done with its PVs, and fa_release_o hands
 * the ring back after the stores have read it. */
template <class Cfg>
__device__ __forceinline__ void fa_store_tile_tma(const fa_sm90_params &p, const fa_sm90_tile &t,
                                                  const fa_sm90_smem<Cfg> &sm, int wg,
                                                  const uint32_t (&packed)[Cfg::kHeadDim / 4])
{
    constexpr uint32_t kOSlabBytes = 64 * 128; /* 64 rows x 64 columns */
    const int lane = threadIdx.x % 32, warp = (threadIdx.x / 32) % 4;
    const bool leader = threadIdx.x % 128 == 0;
    const uint32_t buf = sm.o(wg);
    if (leader)
        fa_bulk_wait_read<0>();
    if constexpr (Cfg::kOInV)
        fa_named_barrier_sync(kOFreeBarrier, 128 * Cfg::kConsumerWarpgroups);
    else
        fa_named_barrier_sync(kEpilogueBarrier + wg, 128);
#pragma unroll
    for (int i = 0; i < Cfg::kHeadDim / 2; i += 2) {
        const int r = 16 * warp + lane / 4 + 8 * ((i >> 1) & 1), col = 8 * (i >> 2) + 2 * (lane & 3);
        const uint32_t chunk = ((col % 64) / 8) ^ (r % 8);
        const uint32_t addr = buf + (col / 64) * kOSlabBytes + r * 128 + chunk * 16 + 4 * (lane & 3);
        asm volatile("st.shared.b32 [%0], %1;" ::"r"(addr), "r"(packed[i / 2]) : "memory");
    }
    fa_fence_proxy_async_shared();
    fa_named_barrier_sync(kEpilogueBarrier + wg, 128);
    if (leader) {
        const int batch = p.varlen ? 0 : t.b;
        for (int s = 0; s < Cfg::kOSlabs; ++s)
            fa_tma_store_4d(&p.map_o, buf + s * kOSlabBytes, s * 64, t.q0 + t.m0 + 64 * wg, t.h, batch);
        fa_bulk_commit();
    }
}

/* A warpgroup's finished tile: O / rowsum (0 for rows with no visible key)
 * in 16-bit pairs, the accumulator layout; fa_write_rows stores it. */
template <class Cfg> struct fa_sm90_rows {
    fa_sm90_tile t;
    uint32_t packed[Cfg::kHeadDim / 4];
};

/* The LSE of this thread's two rows, and O / rowsum into rows.packed; a
 * part of the key split writes both in fp32 to its slot of the workspace
 * instead (rows of the sequence only; the combine reads no others). */
template <class Cfg>
__device__ __forceinline__ void fa_finish_rows(const fa_sm90_params &p, const fa_sm90_tile &t, int row0,
                                               const float (&o)[Cfg::kHeadDim / 2], const float (&row_max)[2],
                                               const float (&row_sum)[2], const fa_sm90_fp8_state &fp8,
                                               fa_sm90_rows<Cfg> &rows)
{
    const int lane = threadIdx.x % 32;
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float sum = fa_quad_sum(row_sum[r]);
        inv[r] = (sum == 0.0f || sum != sum) ? 0.0f : 1.0f / sum;
        int row = row0 + 8 * r;
        /* FP8: the row max is in the last block's log2 units, and the sum
         * carries 2^POffset */
        auto lse = [&]() {
            return sum == 0.0f ? -INFINITY
                   : Cfg::kFp8 ? row_max[r] * fp8.log2 * 0.6931471805599453f + logf(sum) -
                                     Cfg::kPOffset * 0.6931471805599453f
                               : row_max[r] * p.score_scale + logf(sum);
        };
        if constexpr (Cfg::kKeySplit) {
            if (row < t.sq && (lane & 3) == 0)
                p.part_lse[(int64_t)t.slot * Cfg::kBlockM + row - t.m0] = lse();
        } else if (row < t.sq && p.lse != nullptr && (lane & 3) == 0) {
            int64_t idx = p.varlen ? (int64_t)t.h * p.total_q + t.q0 + row
                                   : ((int64_t)t.b * p.heads_q + t.h) * p.seqlen_q + row;
            p.lse[idx] = lse();
        }
        if constexpr (Cfg::kFp8)
            inv[r] *= fp8.v_scale; /* O holds P·V of stored V at the last block's descale */
    }
    if constexpr (Cfg::kKeySplit) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = row0 + 8 * r;
            if (row >= t.sq)
                continue;
            float *part = p.part_o + ((int64_t)t.slot * Cfg::kBlockM + row - t.m0) * Cfg::kHeadDim;
#pragma unroll
            for (int i = 2 * r; i < Cfg::kHeadDim / 2; i += 4)
                *reinterpret_cast<float2 *>(part + 8 * (i >> 2) + 2 * (lane & 3)) =
                    make_float2(o[i] * inv[r], o[i + 1] * inv[r]);
        }
    }
    rows.t = t;
#pragma unroll
    for (int i = 0; i < Cfg::kHeadDim / 2; i += 2)
        rows.packed[i / 2] = fa_pack2<typename Cfg::OutElem>(o[i] * inv[(i >> 1) & 1], o[i + 1] * inv[(i >> 1) & 1]);
}

/* Stores a finished tile's O: through shared memory and TMA stores where
 * it can (fa_sm90_o_staged, fa_store_tile_tma; o_in_v is set when that was
 * over the V ring); otherwise straight from the registers, 4 bytes per
 * store, rows past the sequence skipped. */
template <class Cfg>
__device__ __forceinline__ void fa_write_rows(const fa_sm90_params &p, const fa_sm90_smem<Cfg> &sm, int wg,
                                              const fa_sm90_rows<Cfg> &rows, bool &o_in_v)
{
    typedef typename Cfg::OutElem Elem;
    constexpr int D = Cfg::kHeadDim;
    const fa_sm90_tile &t = rows.t;
    const int lane = threadIdx.x % 32;
    if constexpr (Cfg::kKeySplit) /* fa_finish_rows wrote the part's O */
        return;
    if (fa_sm90_o_staged<Cfg>(p, t)) {
        if constexpr (Cfg::kTmaStore) {
            fa_store_tile_tma<Cfg>(p, t, sm, wg, rows.packed);
            o_in_v = Cfg::kOInV;
        }
        return;
    }
    Elem *out = static_cast<Elem *>(p.out);
    const int row0 = t.m0 + 64 * wg + 16 * ((threadIdx.x / 32) % 4) + lane / 4;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        int row = row0 + 8 * r;
        if (row >= t.sq)
            continue;
        int64_t base = (p.varlen ? 0 : (int64_t)t.b * p.out_stride_batch) + (t.q0 + row) * p.out_stride_seq +
                       (int64_t)t.h * p.out_stride_head;
#pragma unroll
        for (int i = 2 * r; i < D / 2; i += 4) {
            int col = 8 * (i >> 2) + 2 * (lane & 3);
            if (D == p.head_dim || col < p.head_dim)
                *reinterpret_cast<uint32_t *>(out + base + col) = rows.packed[i / 2];
        }
    }
}

/* O += P V for the key block whose V sits in stage v, as its own turn;
 * releases V when done. */
template <class Cfg>
__device__ __forceinline__ void fa_pv_step(float (&o)[Cfg::kHeadDim / 2], uint32_t (&pa)[Cfg::kPSteps][4],
                                           const fa_sm90_smem<Cfg> &sm, const fa_sm90_descs<Cfg> &d,
                                           const fa_pipe_state<Cfg::kStages> &v, fa_pingpong turn)
{
    fa_mbar_wait(sm.v_full(v.stage), v.phase);
    turn.wait_turn();
    fa_wgmma_fence_regs(o);
    fa_wgmma_fence();
    fa_issue_pv<Cfg>(o, pa, d.v_at(v.stage));
    turn.pass_turn();
    fa_wgmma_wait<0>();
    fa_wgmma_fence_regs(o);
#pragma unroll
    for (int kk = 0; kk < Cfg::kPSteps; ++kk)
        fa_wgmma_fence_regs(pa[kk]);
    fa_release_kv<Cfg::kClusterSize>(sm.v_empty(v.stage));
}

/* S = Q Kᵀ for the key block in stage k, as its own turn; releases K.
 * while_running() runs while it does (the last tile's output). */
template <class Cfg, class WhileRunning>
__device__ __forceinline__ void fa_qk_step(float (&s)[Cfg::kBlockN / 2], uint64_t q, const fa_sm90_smem<Cfg> &sm,
                                           const fa_sm90_descs<Cfg> &d, const fa_pipe_state<Cfg::kStages> &k,
                                           fa_pingpong turn, WhileRunning &&while_running)
{
    fa_mbar_wait(sm.k_full(k.stage), k.phase);
    turn.wait_turn();
    fa_wgmma_fence();
    fa_issue_qk<Cfg>(s, q, d.k_at(k.stage));
    turn.pass_turn();
    while_running();
    fa_wgmma_wait<0>();
    fa_wgmma_fence_regs(s);
    fa_release_kv<Cfg::kClusterSize>(sm.k_empty(k.stage));
}

/* O *= the softmax correction of its row. */
template <int N> __device__ __forceinline__ void fa_rescale(float (&o)[N], const float (&correction)[2])
{
#pragma unroll
    for (int i = 0; i < N; ++i)
        o[i] *= correction[(i >> 1) & 1];
}

/* One tile for one consumer warpgroup. kv / q carry the pipeline
 * position from tile to tile, o_in_v whether the last tile's O still sits
 * over the V ring, last / pending the last tile's finished output (LSE
 * written, O packed) that is still to be stored. With its own O buffer
 * (kOwnOBuffer) that store runs while the next tile's first QKᵀ does, so
 * the epilogue no longer delays that GEMM (+1-4% at seqlen 512-1k, v18);
 * over the V ring it is made at the end of the tile, since the next tile's
 * first V waits for it. Key blocks are walked from the last one, so the
 * masked diagonal blocks of causal tiles come first. */
template <class Cfg>
__device__ __forceinline__ void fa_sm90_consume_tile(const fa_sm90_params &p, const fa_sm90_tile &t,
                                                     const fa_sm90_smem<Cfg> &sm, const fa_sm90_descs<Cfg> &d, int wg,
                                                     fa_pingpong turn,
                                                     fa_pipe_state<Cfg::kStages> &kv,
                                                     fa_pipe_state<Cfg::kQBuffers> &q, bool &o_in_v,
                                                     fa_sm90_rows<Cfg> &last, bool &pending)
{
    constexpr bool kDeferred = Cfg::kOwnOBuffer;
    auto write_last = [&]() {
        if (pending)
            fa_write_rows<Cfg>(p, sm, wg, last, o_in_v);
        pending = false;
    };
    constexpr int BlockN = Cfg::kBlockN, D = Cfg::kHeadDim;
    const int lane = threadIdx.x % 32, warp = (threadIdx.x / 32) % 4;
    const int row0 = t.m0 + 64 * wg + 16 * warp + lane / 4; /* this thread's first row */

    float o[D / 2];
    auto zero_o = [&]() {
#pragma unroll
        for (int i = 0; i < D / 2; ++i)
            o[i] = 0.0f;
    };
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f}, correction[2];
    fa_sm90_fp8_state fp8 = {1.0f, p.score_scale_log2, 1.0f};
    /* GQA packed: this thread's two rows are of different heads and
     * queries, whose Q descales scale S row by row (scale_rows); the
     * tile's stays 1 */
    float q_row_descale[2] = {1.0f, 1.0f};
    const bool descale_rows = Cfg::kKeySplit && p.pack_gqa > 1 && p.q_descale != nullptr;
    if constexpr (Cfg::kFp8)
        if (!descale_rows)
            fp8.q_descale =
                fa_fp8_descale(p.q_descale, p.heads_q, p.descale_blocks_q, p.descale_block_q, t.b, t.h, t.m0);
    if (descale_rows) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = min(row0 + 8 * r, t.sq - 1);
            q_row_descale[r] = fa_fp8_descale(p.q_descale, p.heads_q, p.descale_blocks_q, p.descale_block_q, t.b,
                                              t.h + row % p.pack_gqa, row / p.pack_gqa);
        }
    }

    /* Deferred, O is zeroed under the first QKᵀ too, so that its registers
     * and the last tile's packed output are not live together; and the last
     * tile's output is read nowhere after that point of a tile with keys
     * (a later read on any path kept it live through the whole tile: 68-112
     * bytes of spills at hdim 64/128). */
    if (!fa_sm90_has_keys(t)) {
        write_last(); /* no QKᵀ to write it under */
        zero_o();
    } else {
        if (!kDeferred)
            zero_o();
        fa_mbar_wait(sm.q_full(q.stage), q.phase);
        const uint64_t q_desc = d.q_at(q.stage);
        float s[BlockN / 2];
        auto scale_rows = [&]() {
            if (descale_rows)
#pragma unroll
                for (int i = 0; i < BlockN / 2; ++i)
                    s[i] *= q_row_descale[(i >> 1) & 1];
        };
        uint32_t pa[Cfg::kPSteps][4];
        /* the first (last-in-sequence) key block may hold a varlen
         * neighbour's rows, or cache rows past the used ones */
        const bool foreign_rows = /* FP8: Vᵀ holds zeros there (pass or transpose) */
            !Cfg::kFp8 && p.tail_rows_readable && t.n_end * BlockN > t.sk;
        /* With one Q buffer (hdim 192 / 256) Q is released as soon as the
         * tile's last QKᵀ is done, so that the producer loads the next
         * tile's Q, and the first K queued behind it, under the last PV and
         * the epilogue; with two it runs a tile ahead anyway. */
        constexpr bool kQFreedByLastQK = Cfg::kQBuffers == 1;
        auto free_q_after_qk = [&](int n) {
            if (kQFreedByLastQK && n == t.n_begin)
                fa_release(sm.q_empty(q.stage));
        };
        /* first key block: S, softmax, P */
        int n = t.n_end - 1;
        fa_qk_step<Cfg>(s, q_desc, sm, d, kv, turn, [&]() {
            fa_release_o<Cfg>(sm, o_in_v);
            write_last();
            if (kDeferred)
                zero_o();
        });
        free_q_after_qk(n);
        scale_rows();
        float o_ratio; /* O starts at zero: no use for it */
        const fa_score_scale first_scale =
            fa_block_scale<Cfg>(p, fa_kv_descales_of<Cfg>(p, t, n), fp8, row_max, o_ratio);
        fa_scores_to_probs<Cfg>(p, t, n, row0, first_scale, s, row_max, row_sum, correction);
        fa_probs_to_operand<Cfg>(s, pa);
        if (foreign_rows) {
            fa_mbar_wait(sm.v_full(kv.stage), kv.phase);
            fa_clear_foreign_v<Cfg>(t, n, sm.v(kv.stage));
        }
        fa_pipe_state<Cfg::kStages> v_prev = kv; /* P pairs with this stage's V */
        kv.advance();

        /* steady state (intra-warpgroup overlap): S_n = Q K_nᵀ and
         * O += P_{n+1} V_{n+1} issued together; the softmax of S_n runs
         * while the PV is still in flight: its row max and the first
         * kExpsUnderPV exponentials, packed into p_out where there are two
         * P buffers (p_in is read by the PV in flight). What was computed
         * is pinned before the wait for the PV (fa_wgmma_wait_after:
         * without it ptxas placed the wait before the exponentials and the
         * softmax no longer overlapped the PV). The other exponentials and
         * their packing follow the wait, with the O rescale; a NaN-safe
         * dependency on O keeps them there (fa_wgmma_order_after). */
        uint32_t pb[Cfg::kPBuffers == 2 ? Cfg::kPSteps : 1][4];
        auto overlapped_step = [&](int n, uint32_t(&p_in)[Cfg::kPSteps][4], uint32_t(&p_out)[Cfg::kPSteps][4]) {
            constexpr int kEarly = Cfg::kExpsUnderPV, kAll = BlockN / 2;
            static_assert(kEarly % Cfg::kStepElems == 0 && (kEarly == 0 || Cfg::kPBuffers == 2),
                          "P fragments under the PV");
            fa_mbar_wait(sm.k_full(kv.stage), kv.phase);
            fa_mbar_wait(sm.v_full(v_prev.stage), v_prev.phase);
            turn.wait_turn();
            fa_wgmma_fence_regs(o);
            fa_wgmma_fence();
            fa_issue_qk<Cfg>(s, q_desc, d.k_at(kv.stage));
            fa_issue_pv<Cfg>(o, p_in, d.v_at(v_prev.stage));
            turn.pass_turn();
            fa_wgmma_wait<1>(); /* S_n is ready, the PV may still run */
            fa_wgmma_fence_regs(s);
            fa_release_kv<Cfg::kClusterSize>(sm.k_empty(kv.stage));
            free_q_after_qk(n);
            scale_rows();
            float max_scaled[2], sum[2], o_ratio;
            const fa_score_scale sc = fa_block_scale<Cfg>(p, fa_kv_descales_of<Cfg>(p, t, n), fp8, row_max, o_ratio);
            fa_scores_to_max<Cfg>(p, t, n, row0, sc, s, row_max, correction, max_scaled);
            if constexpr (kEarly > 0) {
                fa_softmax_exp<BlockN, 0, kEarly>(s, max_scaled, fa_log2_scale<Cfg>(p, sc), sum);
                if constexpr (kEarly == kAll)
                    fa_add_row_sums(row_sum, correction, sum);
                fa_probs_to_operand<Cfg, 0, kEarly / Cfg::kStepElems>(s, p_out);
                fa_wgmma_wait_after(sm.scratch(), kEarly == kAll ? row_sum[0] + row_sum[1] : sum[0] + sum[1]);
            } else {
                fa_wgmma_wait_after(sm.scratch(), max_scaled[0] + max_scaled[1]);
            }
            fa_wgmma_wait<0>();
            fa_wgmma_fence_regs(o);
#pragma unroll
            for (int kk = 0; kk < Cfg::kPSteps; ++kk)
                fa_wgmma_fence_regs(p_in[kk]);
            fa_release_kv<Cfg::kClusterSize>(sm.v_empty(v_prev.stage));
            if constexpr (Cfg::kFp8) {
                const float o_correction[2] = {correction[0] * o_ratio, correction[1] * o_ratio};
                fa_rescale(o, o_correction);
            } else {
                fa_rescale(o, correction);
            }
            if constexpr (kEarly < kAll) {
                float late_sum[2];
#pragma unroll
                for (int r = 0; r < 2; ++r)
                    max_scaled[r] = fa_wgmma_order_after(max_scaled[r], o[0]);
                fa_softmax_exp<BlockN, kEarly, kAll>(s, max_scaled, fa_log2_scale<Cfg>(p, sc), late_sum);
#pragma unroll
                for (int r = 0; r < 2; ++r)
                    sum[r] = kEarly > 0 ? sum[r] + late_sum[r] : late_sum[r];
                fa_add_row_sums(row_sum, correction, sum);
                fa_probs_to_operand<Cfg, kEarly / Cfg::kStepElems>(s, p_out);
            }
            v_prev = kv;
            kv.advance();
        };
        if constexpr (Cfg::kPBuffers == 1) {
            for (--n; n >= t.n_begin; --n)
                overlapped_step(n, pa, pa);
            fa_pv_step<Cfg>(o, pa, sm, d, v_prev, turn);
        } else {
            /* two steps per trip, so that the buffers swap without indexing */
            bool last_p_in_b = false;
            for (--n; n >= t.n_begin; --n) {
                overlapped_step(n, pa, pb);
                if (--n < t.n_begin) {
                    last_p_in_b = true;
                    break;
                }
                overlapped_step(n, pb, pa);
            }
            if (last_p_in_b) /* the last block's PV */
                fa_pv_step<Cfg>(o, pb, sm, d, v_prev, turn);
            else
                fa_pv_step<Cfg>(o, pa, sm, d, v_prev, turn);
        }
        if (!kQFreedByLastQK)
            fa_release(sm.q_empty(q.stage)); /* the producer may load a later tile's Q */
        q.advance();
    }
    fa_finish_rows<Cfg>(p, t, row0, o, row_max, row_sum, fp8, last);
    pending = true;
    if (!kDeferred)
        write_last();
}

/* ------------------------------------------------------------------------ */

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 1) fa_sm90_fwd_kernel(const __grid_constant__ fa_sm90_params p)
{
    extern __shared__ uint8_t smem_raw[];
    fa_sm90_smem<Cfg> sm;
    sm.base = ((uint32_t)__cvta_generic_to_shared(smem_raw) + 1023u) & ~1023u;

    if (threadIdx.x == 0) {
        for (int b = 0; b < Cfg::kQBuffers; ++b) {
            fa_mbar_init(sm.q_full(b), 1);
            fa_mbar_init(sm.q_empty(b), Cfg::kConsumerWarps);
        }
        for (int s = 0; s < Cfg::kStages; ++s) {
            fa_mbar_init(sm.k_full(s), 1);
            fa_mbar_init(sm.v_full(s), Cfg::kVtInKernel ? Cfg::kTransposeWarps : 1); /* TMA, or the transposing warps */
            /* every consumer warp of every CTA in the cluster */
            fa_mbar_init(sm.k_empty(s), Cfg::kConsumerWarps * Cfg::kClusterSize);
            fa_mbar_init(sm.v_empty(s), Cfg::kConsumerWarps * Cfg::kClusterSize);
        }
        /* one leader per consumer warpgroup of every CTA in the cluster */
        fa_mbar_init(sm.o_empty(), Cfg::kConsumerWarpgroups * Cfg::kClusterSize);
        for (int b = 0; b < Cfg::kRawVBuffers; ++b) {
            fa_mbar_init(sm.raw_v_full(b), 1);
            fa_mbar_init(sm.raw_v_empty(b), Cfg::kTransposeWarps);
        }
        fa_mbar_init_fence();
    }
    /* a cluster: the other CTAs' loads and arrivals reach these barriers */
    if constexpr (Cfg::kClusterSize > 1)
        fa_cluster_sync();
    else
        __syncthreads();

    int wg = fa_warpgroup_index();
    if (wg == 0) {
        fa_setmaxnreg_dec<Cfg::kProducerRegs>();
        const int warp = __shfl_sync(0xffffffffu, threadIdx.x / 32, 0); /* uniform branches */
        if (warp == 0)
            fa_sm90_produce<Cfg>(p, sm);
        else if constexpr (Cfg::kVtInKernel)
            fa_sm90_transpose_v<Cfg>(p, sm);
    } else {
        fa_setmaxnreg_inc<Cfg::kConsumerRegs>();
        fa_pingpong turn = {wg - 1, Cfg::kConsumerWarpgroups};
        /* warpgroup 0 goes first: the last one opens its turn... */
        if (turn.wg == turn.count - 1)
            turn.pass_turn();
        fa_pipe_state<Cfg::kStages> kv = {0, 0};
        fa_pipe_state<Cfg::kQBuffers> q = {0, 0};
        bool o_in_v = false, pending = false;
        fa_sm90_rows<Cfg> last;
        const fa_sm90_descs<Cfg> d = fa_sm90_descs_of<Cfg>(sm, wg - 1);
        for (fa_tile_iter<Cfg::kClusterSize> it = fa_tile_iter<Cfg::kClusterSize>::first(p); it.valid(p); it.next(p))
            fa_sm90_consume_tile<Cfg>(p, fa_sm90_tile_of<Cfg>(p, it.index), sm, d, wg - 1, turn, kv, q, o_in_v,
                                      last, pending);
        if (pending)
            fa_write_rows<Cfg>(p, sm, wg - 1, last, o_in_v);
        /* ...and warpgroup 0 takes the turn left over after the last one's
         * final pass, so that every named barrier ends balanced */
        if (turn.wg == 0)
            turn.wait_turn();
        if (Cfg::kTmaStore && threadIdx.x % 128 == 0)
            fa_bulk_wait_read<0>(); /* the last O store has read its slabs */
    }
    /* no CTA leaves while another may still arrive on its barriers */
    if constexpr (Cfg::kClusterSize > 1)
        fa_cluster_sync();
}

#endif
