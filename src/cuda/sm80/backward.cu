/*
 * FlashAttention-2 backward on sm80+ tensor cores.
 *
 * Three launches on the stream:
 *  1. preprocess: D = rowsum(dO ∘ O) and lse in log2 units per (row, head)
 *     (after a memset that clears the fp32 dQ accumulator).
 *  2. main: one thread block per (key block, kv head, batch). K and V stay
 *     in smem, dK and dV accumulate in registers while the block walks the
 *     query blocks of every query head of its GQA group (so dK/dV need no
 *     cross-block reduction). Per query block it recomputes Sᵀ = K·Qᵀ and
 *     dPᵀ = V·dOᵀ, forms Pᵀ and dSᵀ (in registers, and in smem for the
 *     other warps, see BackwardTiles), then dV += Pᵀ·dO,
 *     dK += dSᵀ·Q, and adds dQ += dS·K into the fp32 accumulator with
 *     atomics. Deterministic mode runs one block per (kv head, batch) that
 *     walks every key block, so each dQ element is added by one thread in a
 *     fixed order. The accumulator keeps each query block in the order the
 *     warps hold it (see dq_thread_base), so that the atomics are coalesced.
 *  3. convert: dq = softmax_scale · accumulator, in the output dtype.
 * Warps split Sᵀ/dPᵀ as (key groups) x (query groups) and dK/dV as
 * (key groups) x (column groups); see BackwardTiles.
 */
#include "common.cuh"
#include "../flag.cuh"
#include "../kv_order.cuh"
#include <stdlib.h>

namespace fa {

/* Tile shape per padded head dim: BN keys x BM queries per step, 8 warps.
 * Sᵀ/dPᵀ: warps as kSlabWarpsN groups of kSlabKeys keys x kSlabWarpsQ
 * groups of kQueryCols queries (a warp's slab). dK/dV: kKvWarpsN groups of
 * kKvKeys keys x kKvWarpsD groups of kDimCols columns. Pᵀ and dSᵀ go
 * through smem, since dV += Pᵀ·dO needs a warp's keys x every query of the
 * block. The large shape (H100; an A100 holds it with one query stage at
 * d <= 128, see launch_backward) uses 32-key warp tiles where the
 * accumulators allow (FA2's layout): at d <= 128 32 x 32 slabs and 32 keys
 * x D/2 columns of dK/dV, BN 128 (half the dQ atomics and per-block
 * overhead per FLOP); at d > 128 16 x 32 slabs (the 64 registers of a
 * 32 x 32 pair do not fit next to 128 of dK/dV) and 32 keys x D/4 columns,
 * BN 64. 32-key tiles feed each B fragment to two mma: 136 ldmatrix.x4 per
 * warp and block at d 128 instead of 192 with 16-key warps. With
 * kOwnPtInRegisters (d 64) a warp's dK/dV keys are its slab's keys, so it
 * multiplies its own query group of Pᵀ/dSᵀ straight from its registers
 * before the barrier and reads only the other group's from smem (at d 128
 * the packed fragments' registers next to dK/dV cost more than the smem
 * reads they save, perf-gpu.md v13). The small
 * shape (BN 64, or 32 for d > 128; 16-key warps everywhere) is for GPUs
 * whose smem per block cannot hold the large one (sm86/sm89: 99 KB).
 * dQ = dS·K is split as (BM/32 groups of 32 queries) x (column groups).
 * kPlain: the tiles of the kernel without softcap/ALiBi steps (see
 * backward_kernel), which may swizzle (kSwizzled) and, at d 64 where the
 * smem allows (H100: 178 KB), take 128 query rows per block (kTall): twice
 * the mma per ldmatrix in Sᵀ/dPᵀ and half the per-block steps per FLOP. */
template <int D, bool kLarge, bool kPlain = false, bool kTall = false> struct BackwardTiles {
    static constexpr int kHeadDim = D;
    static constexpr bool kPlainScores = kPlain;
    static constexpr int kWarps = 8;
    static constexpr int kSlabWarpsQ = kLarge || D <= 128 ? 2 : 4;
    static constexpr int kSlabKeys = kLarge && D <= 128 ? 32 : 16;
    static constexpr int kSlabWarpsN = kWarps / kSlabWarpsQ;
    static constexpr int kBlockN = kSlabKeys * kSlabWarpsN;
    static constexpr int kBlockM = kTall ? 128 : kLarge || D <= 192 ? 64 : 32;
    static constexpr int kQueryCols = kBlockM / kSlabWarpsQ; /* of Sᵀ, per warp */
    static constexpr int kKvKeys = kLarge ? 32 : 16;
    static constexpr int kKvWarpsN = kBlockN / kKvKeys;
    static constexpr int kKvWarpsD = kWarps / kKvWarpsN;
    static constexpr int kDimCols = D / kKvWarpsD; /* of dK/dV, per warp */
    static constexpr bool kOwnPtInRegisters = kLarge && D <= 64;
    static constexpr int kDqRowGroups = kBlockM / 32;
    static constexpr int kDqColGroups = kWarps / kDqRowGroups;
    static constexpr int kDqCols = D / kDqColGroups; /* of dQ, per warp (32 rows) */
    static constexpr int kDqTiles = kDqCols / 8;      /* n8 tiles of dQ, per warp and m16 tile */
    /* The heads-first grid for causal (kv_order.cuh). Not for the tall d-64
     * tiles: at 255 registers with spills, their code lost 2-5% on every
     * cell, causal or not, to the order's few extra instructions
     * (perf-gpu.md); they keep the plain grid and its code. */
    static constexpr bool kHeadsFirstGrid = !kTall;
    /* The last-wave split (plan_backward_split) on the plain-score tiles.
     * Not on the tall d-64 tiles: their kernel, at 255 registers with
     * spills, took 1-2% more cycles with the split (parts included) than
     * HEAD's without it at 2k-8k; its spills moved with the split's few
     * prologue instructions (perf-gpu.md, backward v18). */
    static constexpr bool kSplits = kPlain && !kTall;
    /* dQ's product and reds between dV's and dK's (FA2's order), so that
     * the reds drain under the dK product instead of holding their
     * registers into the next query block's first product (H100, d 128:
     * +1.2-2.4% on every cell; the d-64 tall tiles level, d 256 -1% with
     * more spills; perf-gpu.md, backward v16). */
    static constexpr bool kDqBeforeDk = kPlain && D > 64 && D < 256;
    /* The first row / column of a warp's dQ tile (32 rows x kDqCols). */
    static __device__ __forceinline__ int dq_row0(int warp) { return 32 * (warp % kDqRowGroups); }
    static __device__ __forceinline__ int dq_col0(int warp) { return kDqCols * (warp / kDqRowGroups); }
    /* Tile pitches of K, V, Q, dO (kPitch) and Pᵀ, dSᵀ (kPtPitch): in the
     * plain-score kernel at d 256, unpadded XOR-swizzled
     * rows (smem_at; FA2's layout), Pᵀ's too where BM is 64; padded
     * otherwise. Measured swizzled (perf-gpu.md, backward v9): the plain
     * d-256 kernel +4% on every cell; d 64 as fast as padded, d 128 1%
     * slower; the score-step kernel at d 256 1-4% slower (spill 36 -> 112 B).
     */
    static constexpr bool kSwizzled = kPlain && D == 256;
    static constexpr int kPitch = kSwizzled ? D : smem_pitch(D);
    static constexpr int kPtPitch = kSwizzled && kBlockM == 64 ? kBlockM : smem_pitch(kBlockM);
    /* K, V, dSᵀ, Pᵀ, then per query stage Q, dO, lse, D (kStageElems 16-bit
     * elements apart). Every part starts on a 128-byte line. */
    static constexpr int kStageElems = 2 * kBlockM * kPitch + 2 * kBlockM * 2;
    static constexpr size_t smem_bytes(int query_stages)
    {
        return (size_t)2 * kBlockN * kPitch * 2 + (size_t)2 * kBlockN * kPtPitch * 2 +
               (size_t)query_stages * kStageElems * 2;
    }
    static_assert(kQueryCols % 8 == 0 && kDimCols % 8 == 0 && kDqCols % 8 == 0, "tiles");
    static_assert(!kOwnPtInRegisters || (kSlabKeys == kKvKeys && kSlabWarpsQ == 2 && kKvWarpsD == 2 &&
                                         kQueryCols % 16 == 0),
                  "a warp's own Pᵀ part is its dK/dV keys' part of one query group");
    static_assert(kWarps % kDqRowGroups == 0, "dQ warp split");
    static_assert(kWarps * 2 * kDqTiles * 128 == kBlockM * D, "a query block's dQ fragments tile its chunk");
    static_assert(kSlabKeys / 16 * kQueryCols / 8 * 4 <= 64, "dropout bits per thread");
    static_assert(!kTall || (kLarge && kPlain && D <= 64), "128 query rows: the plain d-64 kernel");
};

/* Starts an asynchronous 4-byte copy global -> smem that reads src_bytes
 * (0 or 4) bytes and zero-fills the rest. */
__device__ __forceinline__ void cp_async_4(void *smem_dst, const void *gmem_src, int src_bytes)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n"
                 :
                 : "r"(smem_address(smem_dst)), "l"(gmem_src), "r"(src_bytes)
                 : "memory");
}

/* An unsigned word of at least 33 bits if B, else 32. */
template <bool B> struct KeepWord {
    typedef uint32_t type;
};
template <> struct KeepWord<true> {
    typedef uint64_t type;
};

struct BackwardArgs {
    fa_problem p;
    bool vectorized;     /* q, k, v, dout rows 16-byte aligned: cp.async tile loads */
    bool out_vectorized; /* out, dout rows 16-byte aligned and dv % 8 == 0 (preprocess) */
    bool grad_pairs;     /* dq, dk, dv rows 16-byte aligned: paired/16-byte stores */
    int dp;          /* padded head dim: the accumulator's row length */
    float *dq_accum; /* (Hq, total_q + B·BM, dp) fp32, see dq_thread_base */
    float *dsum;     /* (Hq, total_q): rowsum(dO ∘ O) */
    float *lse_log2; /* (Hq, total_q): lse · log2(e), +inf for empty rows */
    int query_stages; /* 2: the next Q/dO block loads during this one (if smem allows) */
    bool heads_first;   /* the grid's order (kv_order.cuh) */
    int key_block_step; /* 1: a CTA walks every key block (deterministic); else one each */
    /* The last-wave split (plan_backward_split): split_parts > 1 runs the
     * last batch entry's tasks (key block + kv head · key blocks) from
     * split_first on as split_parts CTAs each, in a launch of their own
     * (backward_kernel's kSplitPart instance, CTA i: task split_first +
     * i / split_parts), part p over blocks [p·n / split_parts, (p+1)·n /
     * split_parts) of the n query blocks of each head of its group; the
     * whole tasks' launch skips them. */
    int split_first, split_parts;
    float *dkv_accum; /* the split tasks' dK, dV partial sums (dkv_thread_base) */
};

/* Row of the workspace arrays for row i of sequence b. */
__device__ __forceinline__ int64_t workspace_row(const fa_problem &p, const fa_seq &seq,
                                                 int64_t b, int64_t i)
{
    return (p.varlen ? 0 : b * p.seqlen_q) + seq.q0 + i;
}

/* The dQ accumulator: per query head, the rows of every sequence followed
 * by BM pad rows (BM of the tiles that ran), so that a sequence's last
 * query block has BM whole rows (FA2 pads the same way), which the kernel
 * adds to without a per-row test. A query block's BM x D floats are stored
 * in the order the warps hold their dQ fragments, not row-major: fragment
 * (mt, nt) of warp w is 128 floats at 128 (2 kDqTiles w + kDqTiles mt + nt),
 * value e of lane l at l·kAccumLaneStride + e·kAccumElemStride. Every atomic
 * instruction of a warp then covers whole 128-byte lines (sm90: one v4
 * reduction per fragment, 512 contiguous bytes; before: one scalar atomic
 * per value, 128 bytes), where row-major rows spread each instruction over
 * 8 rows' 32-byte pieces. The conversion kernel reads the same order. */
/* The largest BM (the tall d-64 tiles): bounds the workspace. */
constexpr int kDqMaxPadRows = BackwardTiles<64, true, true, true>::kBlockM;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
constexpr int kAccumLaneStride = 4, kAccumElemStride = 1;
#else
constexpr int kAccumLaneStride = 1, kAccumElemStride = 32;
#endif

/* This thread's first value of query block m0 of sequence b, head h in the
 * accumulator of Tiles' BM x D blocks; fragment (mt, nt) is
 * Tiles::kDqTiles mt + nt 128-float steps further. */
template <class Tiles>
__device__ __forceinline__ float *dq_thread_base(const BackwardArgs &a, const fa_seq &seq, int64_t b, int64_t h,
                                                 int m0)
{
    constexpr int BM = Tiles::kBlockM;
    const fa_problem &p = a.p;
    const int64_t row = h * (p.total_q + p.batch * BM) + workspace_row(p, seq, b, m0) + b * BM;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float *chunk = a.dq_accum + row * Tiles::kHeadDim;
    return chunk + warp * 2 * Tiles::kDqTiles * 128 + lane * kAccumLaneStride;
}

/* f[e·kAccumElemStride] += v[e], atomically per value (a fragment of the dQ
 * accumulator, or of the split tasks' dK / dV sums). */
__device__ __forceinline__ void add_fragment(float *f, const float (&v)[4])
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    red_add_v4(f, v[0], v[1], v[2], v[3]);
#else
#pragma unroll
    for (int e = 0; e < 4; ++e)
        atomicAdd(f + e * kAccumElemStride, v[e]);
#endif
}

/* The split tasks' dK / dV partial sums: slot s (task split_first + s) holds
 * BN x D floats of dK, then BN x D of dV, each in the order in which the
 * warps hold their fragments (as the dQ accumulator): fragment (mt, nt) of
 * warp w is 128 floats at 128 (kFrags w + (DC / 8) mt + nt). This thread's
 * first dK value of slot s. */
template <class Tiles> __device__ __forceinline__ float *dkv_thread_base(const BackwardArgs &a, int slot)
{
    constexpr int kFrags = Tiles::kKvKeys / 16 * (Tiles::kDimCols / 8);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    return a.dkv_accum + (int64_t)slot * 2 * Tiles::kBlockN * Tiles::kHeadDim + warp * kFrags * 128 +
           lane * kAccumLaneStride;
}

/* The first key and column of warp's dK / dV fragments. */
template <class Tiles> __device__ __forceinline__ int kv_key0(int warp)
{
    return Tiles::kKvKeys * (warp / Tiles::kKvWarpsD);
}
template <class Tiles> __device__ __forceinline__ int kv_col0(int warp)
{
    return Tiles::kDimCols * (warp % Tiles::kKvWarpsD);
}

/* dK = scale · acc_dk, dV = acc_dv of the key block at n0 (this thread's
 * fragments: key kv_keys + 16 mt + g + 8 r, column kv_cols + 8 nt + 2t + e%2)
 * out to dk, dv; column pairs (c, c+1) as one 32-bit store when the rows are
 * aligned. */
template <typename T, class Tiles>
__device__ __forceinline__ void store_dk_dv(const BackwardArgs &a, const fa_seq &seq, int b, int hk, int n0,
                                            int kv_keys, int kv_cols, int g, int t,
                                            const float (&acc_dk)[Tiles::kKvKeys / 16][Tiles::kDimCols / 8][4],
                                            const float (&acc_dv)[Tiles::kKvKeys / 16][Tiles::kDimCols / 8][4])
{
    constexpr int MK = Tiles::kKvKeys / 16, DC = Tiles::kDimCols;
    const fa_problem &p = a.p;
    const int sk = (int)seq.sk, d = (int)p.head_dim, dv = (int)p.head_dim_v;
    T *dk = (T *)p.dk.data, *dvp = (T *)p.dv.data;
#pragma unroll
    for (int rr = 0; rr < 2 * MK; ++rr) {
        const int mt = rr / 2, r = rr % 2;
        const int j = n0 + kv_keys + 16 * mt + g + 8 * r;
        if (j >= sk)
            continue;
        T *dk_row = dk + fa_row_offset(&p.dk, p.varlen, b, seq.k0 + j, hk);
        T *dv_row = dvp + fa_row_offset(&p.dv, p.varlen, b, seq.k0 + j, hk);
#pragma unroll
        for (int nt = 0; nt < DC / 8; ++nt) {
            const int c = kv_cols + nt * 8 + 2 * t;
            const float dk0 = acc_dk[mt][nt][2 * r] * p.softmax_scale, dk1 = acc_dk[mt][nt][2 * r + 1] * p.softmax_scale;
            const float dv0 = acc_dv[mt][nt][2 * r], dv1 = acc_dv[mt][nt][2 * r + 1];
            if (a.grad_pairs && c + 1 < d)
                *reinterpret_cast<uint32_t *>(dk_row + c) = pack_pair<T>(dk0, dk1);
            else if (c < d) {
                dk_row[c] = T(dk0);
                if (c + 1 < d)
                    dk_row[c + 1] = T(dk1);
            }
            if (a.grad_pairs && c + 1 < dv)
                *reinterpret_cast<uint32_t *>(dv_row + c) = pack_pair<T>(dv0, dv1);
            else if (c < dv) {
                dv_row[c] = T(dv0);
                if (c + 1 < dv)
                    dv_row[c + 1] = T(dv1);
            }
        }
    }
}

/* Threads that share one row in the preprocess and dQ conversion: one per
 * 8 columns of the padded head dim, rounded up to a power of two (so that
 * a row's threads reduce with xor shuffles inside one warp). */
__host__ __device__ constexpr int row_threads(int dp) { return dp <= 64 ? 8 : dp <= 128 ? 16 : 32; }

// out, dout (B, Sq, Hq, dv), lse (B, Hq, Sq) -> dsum, lse_log2 (Hq, total_q).
// row_threads(DP) threads per (row, head), 8 columns each (one 16-byte load
// of each tensor when rows are aligned); dq_accum is cleared by a memset.
template <typename T, int DP> __global__ void __launch_bounds__(256) backward_preprocess_kernel(const BackwardArgs a)
{
    constexpr int kRowThreads = row_threads(DP);
    const fa_problem &p = a.p;
    const int64_t item = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / kRowThreads;
    const int col = (int)(threadIdx.x % kRowThreads) * 8;
    if (item >= p.total_q * p.heads_q) /* a row's threads are all in or all out */
        return;
    const int64_t h = item / p.total_q, row = item % p.total_q;
    const int64_t b = p.varlen ? 0 : row / p.seqlen_q, i = p.varlen ? row : row % p.seqlen_q;
    const int dv = (int)p.head_dim_v;
    float acc = 0.f;
    if (col < dv) {
        const T *o = (const T *)p.out.data + fa_row_offset(&p.out, p.varlen, b, i, h) + col;
        const T *g = (const T *)p.dout.data + fa_row_offset(&p.dout, p.varlen, b, i, h) + col;
        if (a.out_vectorized) {
            const uint4 ov = *reinterpret_cast<const uint4 *>(o), gv = *reinterpret_cast<const uint4 *>(g);
            const uint32_t ow[4] = {ov.x, ov.y, ov.z, ov.w}, gw[4] = {gv.x, gv.y, gv.z, gv.w};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float2 of = unpack_pair<T>(ow[e]), gf = unpack_pair<T>(gw[e]);
                acc += of.x * gf.x + of.y * gf.y;
            }
        } else {
            for (int e = 0; e < 8 && col + e < dv; ++e)
                acc += (float)o[e] * (float)g[e];
        }
    }
#pragma unroll
    for (int off = kRowThreads / 2; off > 0; off /= 2)
        acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (col == 0) {
        const float lse = p.lse[fa_lse_index(p.varlen, b, h, i, p.heads_q, p.seqlen_q, p.total_q)];
        a.dsum[item] = acc;
        a.lse_log2[item] = lse == -INFINITY ? INFINITY : lse * kLog2e;
    }
}

// q (B, Sq, Hq, d), k (B, Sk, Hkv, d), v (B, Sk, Hkv, dv), dout (B, Sq, Hq, dv)
// -> dk (B, Sk, Hkv, d), dv (B, Sk, Hkv, dv), dq_accum += dS·K.
// Grid: (key blocks or 1 if deterministic) x Hkv x B, in the order that
// a.heads_first says (kv_order.cuh). Tiles::kPlainScores: the
// problem has no softcap and no ALiBi (the launcher checks), so the kernel
// carries only the plain score path (the other one's registers make ptxas
// spill more around the softmax). kStages 2: two query stages (the hot
// configuration, so that the stage logic holds no runtime flag); 0: as
// a.query_stages says. Indices within a sequence and head are 32-bit
// (sequences are shorter than 2^31); only global offsets are 64-bit.
template <typename T, class Tiles, int kStages, bool kSplitPart>
__global__ void __launch_bounds__(Tiles::kWarps * 32, 1) backward_kernel(const BackwardArgs a)
{
    constexpr int D = Tiles::kHeadDim;
    constexpr bool kScoreSteps = !Tiles::kPlainScores;
    constexpr int BM = Tiles::kBlockM, BN = Tiles::kBlockN, QC = Tiles::kQueryCols;
    constexpr int DC = Tiles::kDimCols, kThreads = Tiles::kWarps * 32;
    constexpr int MS = Tiles::kSlabKeys / 16, NS = QC / 8; /* m16/n8 tiles of a slab */
    constexpr int MK = Tiles::kKvKeys / 16;                /* m16 tiles of dK/dV */
    constexpr int P = Tiles::kPitch, PS = Tiles::kPtPitch;
    const fa_problem &p = a.p;

    extern __shared__ __align__(16) unsigned char smem[];
    T *sK = reinterpret_cast<T *>(smem);
    T *sV = sK + BN * P;
    T *sdSt = sV + BN * P; /* dSᵀ: keys x queries */
    T *sPt = sdSt + BN * PS; /* Pᵀ (dropped, scaled) */
    T *sStages = sPt + BN * PS; /* per stage: Q, dO, lse, D */
    constexpr int kStageElems = Tiles::kStageElems, kLseOffset = 2 * BM * P;
    typedef typename KeepWord<(MS * NS * 4 > 32)>::type KeepBits; /* a bit per slab element */
    const int stages = kStages ? kStages : a.query_stages;

    /* This CTA's task (key block, kv head, batch entry). kSplitPart: one
     * part of a split task (see BackwardArgs), in the last batch entry,
     * over query rows [part_lo, part_hi) of each head of its group. */
    int b = blockIdx.z, hk = blockIdx.y, key_block = blockIdx.x;
    [[maybe_unused]] int part_lo = 0, part_hi = 0;
    if constexpr (kSplitPart) {
        const int task = a.split_first + (int)blockIdx.x / a.split_parts, part = (int)blockIdx.x % a.split_parts;
        const int blocks = (int)((p.seqlen_q + BM - 1) / BM); /* (fixed lengths) */
        b = (int)p.batch - 1;
        hk = task / a.key_block_step;
        key_block = task % a.key_block_step;
        part_lo = part * blocks / a.split_parts * BM;
        part_hi = (part + 1) * blocks / a.split_parts * BM;
    } else {
        if constexpr (Tiles::kHeadsFirstGrid)
            fa_kv_block_of(a.heads_first, hk, key_block);
        if constexpr (Tiles::kSplits)
            if (a.split_parts > 1 && b == (int)p.batch - 1 && key_block + hk * (int)gridDim.x >= a.split_first)
                return; /* a split task: its parts ran in the kSplitPart launch */
    }
    const fa_seq seq = fa_seq_of(p.varlen, p.cu_seqlens_q, p.cu_seqlens_k, nullptr, p.seqlen_q,
                                 p.seqlen_k, b); /* (no seqused_k in a backward) */
    const int sq = (int)seq.sq, sk = (int)seq.sk;
    const int group = (int)(p.heads_q / p.heads_kv), shift = sk - sq;
    const int warp = threadIdx.x / 32, g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
    /* Slab: keys [slab_keys, +kSlabKeys) x queries [q_base, +QC); dK/dV:
     * keys [kv_keys, +kKvKeys) x columns [kv_cols, +DC). */
    const int slab_keys = Tiles::kSlabKeys * (warp / Tiles::kSlabWarpsQ);
    const int q_base = QC * (warp % Tiles::kSlabWarpsQ);
    const int kv_keys = kv_key0<Tiles>(warp), kv_cols = kv_col0<Tiles>(warp);
    const int dq_rows = Tiles::dq_row0(warp), dq_cols = Tiles::dq_col0(warp);
    const int d = (int)p.head_dim, dv = (int)p.head_dim_v;
    const bool drop = p.dropout_p > 0.f;
    const uint32_t drop_threshold = fa_dropout_threshold(p.dropout_p);
    const float keep_scale = drop ? 1.f / (1.f - p.dropout_p) : 1.f;
    const float scale_log2 = p.softmax_scale * kLog2e;

    const T *k = (const T *)p.k.data + fa_row_offset(&p.k, p.varlen, b, seq.k0, hk);
    const T *v = (const T *)p.v.data + fa_row_offset(&p.v, p.varlen, b, seq.k0, hk);

    const int key_block_step = Tiles::kHeadsFirstGrid ? a.key_block_step : gridDim.x;
    for (int n0 = key_block * BN; n0 < sk; n0 += key_block_step * BN) {
        __syncthreads(); /* the previous key block's reads of sK, sV are done */
        load_tile_whole_fast<T, BN, D, kThreads, P>(sK, k + n0 * p.k.stride_seq, p.k.stride_seq,
                                                      sk - n0, d, a.vectorized);
        load_tile_whole_fast<T, BN, D, kThreads, P>(sV, v + n0 * p.v.stride_seq, p.v.stride_seq,
                                                      sk - n0, dv, a.vectorized);
        cp_async_commit();

        float acc_dk[MK][DC / 8][4], acc_dv[MK][DC / 8][4];
        zero(acc_dk);
        zero(acc_dv);

        /* Query rows that can see a key of this block. */
        const int n_last = min(n0 + BN, sk) - 1;
        const int m_begin = p.window_right >= 0 ? (int)max((int64_t)0, n0 - shift - p.window_right) : 0;
        int m_end = p.window_left >= 0 ? (int)min((int64_t)sq, n_last - shift + p.window_left + 1) : sq;
        const int h_end = (hk + 1) * group;
        int m_first = (m_begin / BM) * BM;
        if constexpr (kSplitPart) { /* (no window: m_first is 0) */
            m_first = part_lo;
            m_end = min(m_end, part_hi);
        }

        /* The work list: (query head h, query block m0) pairs of the group
         * with a visible element, in order. `advance` moves to the next one
         * (h == h_end: none left). Without a block mask every block of
         * [m_first, m_end) has one (its rows in [m_begin, m_end) see a key of
         * this block), so only full vs partial is decided, with
         * classify_tile's test for full. */
        auto advance = [&](int &h, int &m0, TileKind &kind) {
            for (;;) { /* needs m_first < m_end */
                m0 += BM;
                if (m0 >= m_end) {
                    if (++h >= h_end)
                        return;
                    m0 = m_first;
                }
                if (!p.block_mask) {
                    const bool full = m0 + BM <= sq && n0 + BN <= sk &&
                                      (p.window_left < 0 || (int64_t)m0 + BM - 1 + shift - p.window_left <= n0) &&
                                      (p.window_right < 0 || (int64_t)m0 + shift + p.window_right + 1 >= n0 + BN);
                    kind = full ? TILE_FULL : TILE_PARTIAL;
                    return;
                }
                kind = classify_tile(make_mask(p, seq, b, h), m0, BM, n0, BN);
                if (kind != TILE_SKIP)
                    return;
            }
        };
        /* Queues the cp.async loads of Q and dO rows [m0, m0+BM) of head h
         * into stage `st`, and reads their lse and D. */
        auto load_query_block = [&](int h, int m0, int st) {
            const T *q = (const T *)p.q.data + fa_row_offset(&p.q, p.varlen, b, seq.q0 + m0, h);
            const T *dout = (const T *)p.dout.data + fa_row_offset(&p.dout, p.varlen, b, seq.q0 + m0, h);
            T *stage_base = sStages + st * kStageElems;
            /* lse (threads [0, BM)) and D ([BM, 2BM)) join the same async
             * group: a plain load would hold its warps ~1 µs before the
             * store. Rows past the sequence read as 0: such rows lie in a
             * partial tile, whose masking zeroes their P and dS. */
            if (2 * BM >= kThreads || threadIdx.x < 2 * BM) { /* (every thread at BM 128) */
                const int r = threadIdx.x % BM;
                const bool valid = m0 + r < sq;
                const float *src = threadIdx.x < BM ? a.lse_log2 : a.dsum;
                if (valid)
                    src += h * p.total_q + workspace_row(p, seq, b, m0 + r);
                cp_async_4(reinterpret_cast<float *>(stage_base + kLseOffset) + threadIdx.x, src,
                           valid ? 4 : 0);
            }
            load_tile_whole_fast<T, BM, D, kThreads, P>(stage_base, q, p.q.stride_seq, sq - m0, d,
                                                          a.vectorized);
            load_tile_whole_fast<T, BM, D, kThreads, P>(stage_base + BM * P, dout, p.dout.stride_seq,
                                                          sq - m0, dv, a.vectorized);
            cp_async_commit();
        };

        int h = hk * group, m0 = m_first - BM;
        TileKind kind = TILE_SKIP;
        if (m_first >= m_end || m_begin >= m_end)
            h = h_end;
        else
            advance(h, m0, kind);
        if (h < h_end)
            load_query_block(h, m0, 0);
        int stage = 0;
        while (h < h_end) {
            int h_next = h, m0_next = m0;
            TileKind kind_next = TILE_SKIP;
            advance(h_next, m0_next, kind_next);
            cp_async_wait<0>();
            /* This stage's Q, dO, lse, D are visible, and every warp is done
             * with the previous query block (its stage, dSᵀ, Pᵀ). */
            __syncthreads();
            /* With two stages the next block's loads fly during this one. */
            const bool prefetch = stages == 2 && h_next < h_end;
            if (prefetch)
                load_query_block(h_next, m0_next, stage ^ 1);
            const T *cQ = sStages + stage * kStageElems, *cdO = cQ + BM * P;
            const float *c_lse = reinterpret_cast<const float *>(cQ + kLseOffset), *c_dsum = c_lse + BM;
            const ScoreTransform score = make_score_transform(p, seq, b, h);

            /* Keep bits of this warp's slab (below), bit 4(NS mt + nt) + e: a
             * rolled loop (see the forward), run before the products so that
             * the Philox state does not compete with their registers. */
            KeepBits keep_bits = ~(KeepBits)0;
            if (drop) {
                keep_bits = 0;
#pragma unroll 1
                for (int bit = 0; bit < MS * NS * 4; ++bit) {
                    const int mt = bit / (4 * NS), nt = (bit / 4) % NS, e = bit % 4;
                    const int i = m0 + q_base + nt * 8 + 2 * t + e % 2;
                    const int j = n0 + slab_keys + 16 * mt + g + (e / 2) * 8;
                    fa_u32x4 w = fa_dropout_words(p.dropout_seed, p.dropout_offset,
                                                  p.heads_q, b, h, i, j);
                    keep_bits |= (KeepBits)(w.x[j & 3] >= drop_threshold) << bit;
                }
            }

            /* The slab's Sᵀ and dPᵀ: element (mt, nt, e) is key slab_keys +
             * 16mt + g + 8(e/2), query q_base + 8nt + 2t + e%2. */
            float st[MS][NS][4], dpt[MS][NS][4];
            zero(st);
            warp_gemm<MS, NS, D, false, false>(st, sK, P, slab_keys, 0, cQ, P, 0, q_base);
            /* Masked scores become -inf, so that P = exp2(-inf) and
             * dS = P ∘ (dP − D) are exact zeros (rows and keys past the
             * sequence included: their zero-filled Q, K, dO, V, lse and D
             * are finite). Here, before dPᵀ exists, the mask's registers
             * do not compete with it (there, ptxas spilled dK/dV). */
            if (kind == TILE_PARTIAL) {
                const Mask mask = make_mask(p, seq, b, h);
                const TileMask tmask = tile_mask(mask, m0, n0);
                /* Called with blocks == NULL when dense, so that the
                 * block-sparse lookup folds away (no per-element branch). */
                auto mask_scores = [&](const Mask &m) {
#pragma unroll
                    for (int mt = 0; mt < MS; ++mt)
#pragma unroll
                        for (int nt = 0; nt < NS; ++nt)
#pragma unroll
                            for (int e = 0; e < 4; ++e)
                                if (!visible_in_tile(tmask, m, m0, n0, q_base + nt * 8 + 2 * t + e % 2,
                                                     slab_keys + 16 * mt + g + (e / 2) * 8))
                                    st[mt][nt][e] = -INFINITY;
                };
                if (mask.blocks) {
                    mask_scores(mask);
                } else {
                    Mask dense = mask;
                    dense.blocks = nullptr;
                    mask_scores(dense);
                }
            }
            zero(dpt);
            warp_gemm<MS, NS, D, false, false>(dpt, sV, P, slab_keys, 0, cdO, P, 0, q_base);

            /* st -> Pᵀ (dropped, scaled), dpt -> dSᵀ = Pᵀ ∘ (dPᵀ·keep/(1-p) − D),
             * times softcap's derivative. One loop per score kind behind a
             * uniform branch (see the forward): the plain one has no
             * softcap/ALiBi code and no per-element derivative to keep. */
            auto p_and_ds = [&](auto transformed, auto dropped) {
#pragma unroll
                for (int nt = 0; nt < NS; ++nt) {
                    const int il = q_base + nt * 8 + 2 * t;
                    const float2 lse = *reinterpret_cast<const float2 *>(c_lse + il);
                    const float2 dsum = *reinterpret_cast<const float2 *>(c_dsum + il);
#pragma unroll
                    for (int mt = 0; mt < MS; ++mt)
#pragma unroll
                        for (int e = 0; e < 4; ++e) {
                            float s = st[mt][nt][e], dtanh = 1.f;
                            if constexpr (decltype(transformed)::value) /* masked: stays -inf */
                                s = s == -INFINITY ? s
                                                   : transform_score(score, s, m0 + il + e % 2,
                                                                     n0 + slab_keys + 16 * mt + g + (e / 2) * 8,
                                                                     &dtanh) *
                                                         kLog2e;
                            else
                                s *= scale_log2;
                            const float pe = exp2f(s - (e % 2 ? lse.y : lse.x));
                            float dp = dpt[mt][nt][e];
                            st[mt][nt][e] = pe;
                            if constexpr (decltype(dropped)::value) {
                                const bool keep = (keep_bits >> (4 * (NS * mt + nt) + e)) & 1;
                                dp = keep ? dp * keep_scale : 0.f;
                                st[mt][nt][e] = keep ? pe * keep_scale : 0.f;
                            }
                            dpt[mt][nt][e] = pe * (dp - (e % 2 ? dsum.y : dsum.x)) * dtanh;
                        }
                }
            };
            /* Dropout as a third copy, so that without it no keep bit is
             * tested per element. */
            if (!kScoreSteps || (score.softcap == 0.f && score.alibi_slope == 0.f)) {
                if (drop)
                    p_and_ds(fa_flag<false>(), fa_flag<true>());
                else
                    p_and_ds(fa_flag<false>(), fa_flag<false>());
            } else {
                p_and_ds(fa_flag<true>(), fa_flag<true>());
            }
            /* Pᵀ and dSᵀ as 16-bit pairs in the A-fragment layout: k step kk
             * (16 queries) is n-tiles 2kk, 2kk+1 of the accumulators (a slab
             * of 8 queries fills half of one); into smem for the other warps. */
            uint32_t pt_frag[(NS + 1) / 2][MS][4], dst_frag[(NS + 1) / 2][MS][4];
#pragma unroll
            for (int mt = 0; mt < MS; ++mt)
#pragma unroll
                for (int nt = 0; nt < NS; ++nt)
#pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        const uint32_t pt = pack_pair<T>(st[mt][nt][2 * r], st[mt][nt][2 * r + 1]);
                        const uint32_t ds = pack_pair<T>(dpt[mt][nt][2 * r], dpt[mt][nt][2 * r + 1]);
                        pt_frag[nt / 2][mt][2 * (nt % 2) + r] = pt;
                        dst_frag[nt / 2][mt][2 * (nt % 2) + r] = ds;
                        const int jl = slab_keys + 16 * mt + g + 8 * r, il = q_base + nt * 8 + 2 * t;
                        *reinterpret_cast<uint32_t *>(smem_at(sdSt, PS, jl, il)) = ds;
                        *reinterpret_cast<uint32_t *>(smem_at(sPt, PS, jl, il)) = pt;
                    }
            if constexpr (Tiles::kOwnPtInRegisters) {
                /* This warp's query group of dV += Pᵀ·dO, dK += dSᵀ·Q
                 * straight from the fragments, before the barrier. */
#pragma unroll
                for (int kk = 0; kk < NS / 2; ++kk) {
                    mma_a_times_b<MK, DC / 8, true>(acc_dv, pt_frag[kk], cdO, P, q_base + 16 * kk, kv_cols);
                    mma_a_times_b<MK, DC / 8, true>(acc_dk, dst_frag[kk], cQ, P, q_base + 16 * kk, kv_cols);
                }
            }
            __syncthreads(); /* dSᵀ and Pᵀ of every warp are visible */
            {
                /* The rest of dV/dK: the other query group, or all queries. */
                constexpr int kRest = Tiles::kOwnPtInRegisters ? QC : BM;
                const int rest = Tiles::kOwnPtInRegisters ? QC - q_base : 0;
                /* dQ += dS·K: rows past the sequence land in its pad rows
                 * (dp == D columns). */
                auto add_dq = [&]() {
                    float *dq_frag = dq_thread_base<Tiles>(a, seq, b, h, m0);
                    float dq[2][Tiles::kDqTiles][4];
                    zero(dq);
                    warp_gemm<2, Tiles::kDqTiles, BN, true, true>(dq, sdSt, PS, dq_rows, 0, sK, P, 0, dq_cols);
#pragma unroll
                    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                        for (int nt = 0; nt < Tiles::kDqTiles; ++nt)
                            add_fragment(dq_frag + (mt * Tiles::kDqTiles + nt) * 128, dq[mt][nt]);
                };
                warp_gemm<MK, DC / 8, kRest, false, true>(acc_dv, sPt, PS, kv_keys, rest, cdO, P, rest, kv_cols);
                if (Tiles::kDqBeforeDk)
                    add_dq();
                warp_gemm<MK, DC / 8, kRest, false, true>(acc_dk, sdSt, PS, kv_keys, rest, cQ, P, rest, kv_cols);
                if (!Tiles::kDqBeforeDk)
                    add_dq();
            }
            if (!prefetch && h_next < h_end) {
                __syncthreads(); /* every warp is done with this stage */
                load_query_block(h_next, m0_next, 0);
            }
            stage = stages == 2 ? stage ^ 1 : 0; /* (two stages, no prefetch: the last block) */
            h = h_next;
            m0 = m0_next;
            kind = kind_next;
        }
        cp_async_wait<0>(); /* K/V of a block no query block touched */
        if constexpr (kSplitPart) { /* its share of dK, dV into the task's partial sums */
            constexpr int NT = DC / 8;
            float *frag = dkv_thread_base<Tiles>(a, (int)blockIdx.x / a.split_parts);
#pragma unroll
            for (int mt = 0; mt < MK; ++mt)
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    add_fragment(frag + (mt * NT + nt) * 128, acc_dk[mt][nt]);
                    add_fragment(frag + BN * D + (mt * NT + nt) * 128, acc_dv[mt][nt]);
                }
        } else {
            store_dk_dv<T, Tiles>(a, seq, b, hk, n0, kv_keys, kv_cols, g, t, acc_dk, acc_dv);
        }
    }
}

// dq_accum (Hq, total_q + B·BM, D), in the order of dq_thread_base ->
// dq (B, Sq, Hq, d) = softmax_scale · dq_accum. Grid (query blocks of the
// longest sequence, Hq, B), the backward kernel's threads: each thread reads
// back the dQ fragments it held there (coalesced, as they were added) into a
// row-major smem tile, which then leaves in 16-byte row pieces.
template <typename T, class Tiles>
__global__ void __launch_bounds__(Tiles::kWarps * 32) backward_convert_dq_kernel(const BackwardArgs a)
{
    constexpr int D = Tiles::kHeadDim, BM = Tiles::kBlockM, kPitch = smem_pitch(D), kThreads = Tiles::kWarps * 32;
    __shared__ __align__(16) T tile[BM * kPitch];
    const fa_problem &p = a.p;
    const int b = blockIdx.z, h = blockIdx.y, m0 = blockIdx.x * BM;
    const fa_seq seq = fa_seq_of(p.varlen, p.cu_seqlens_q, p.cu_seqlens_k, nullptr, p.seqlen_q, p.seqlen_k, b);
    if (m0 >= seq.sq)
        return;
    const int warp = threadIdx.x / 32, g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
    const float *frag = dq_thread_base<Tiles>(a, seq, b, h, m0);
    const float c = p.softmax_scale;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < Tiles::kDqTiles; ++nt) {
            const float *f = frag + (mt * Tiles::kDqTiles + nt) * 128;
            const int col = Tiles::dq_col0(warp) + nt * 8 + 2 * t;
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int row = Tiles::dq_row0(warp) + 16 * mt + g + 8 * r;
                *reinterpret_cast<uint32_t *>(&tile[row * kPitch + col]) =
                    pack_pair<T>(f[2 * r * kAccumElemStride] * c, f[(2 * r + 1) * kAccumElemStride] * c);
            }
        }
    __syncthreads();
    const int d = (int)p.head_dim;
    const int rows = min(BM, (int)seq.sq - m0);
    for (int item = threadIdx.x; item < rows * (D / 8); item += kThreads) {
        const int row = item / (D / 8), col = item % (D / 8) * 8;
        if (col >= d)
            continue;
        const T *src = &tile[row * kPitch + col];
        T *dst = (T *)p.dq.data + fa_row_offset(&p.dq, p.varlen, b, seq.q0 + m0 + row, h) + col;
        if (a.grad_pairs && col + 8 <= d) {
            *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(src);
        } else {
            for (int e = 0; e < 8 && col + e < d; ++e)
                dst[e] = src[e];
        }
    }
}

// dkv_accum (split slots, dkv_thread_base) -> dk = softmax_scale · dK, dv of
// the split tasks. Grid: one CTA per slot, the backward kernel's threads,
// each reading back the fragments it added there.
template <typename T, class Tiles>
__global__ void __launch_bounds__(Tiles::kWarps * 32) backward_convert_dkv_kernel(const BackwardArgs a)
{
    constexpr int MK = Tiles::kKvKeys / 16, NT = Tiles::kDimCols / 8;
    constexpr int kDvOffset = Tiles::kBlockN * Tiles::kHeadDim;
    const fa_problem &p = a.p;
    const int task = a.split_first + (int)blockIdx.x, b = (int)p.batch - 1; /* see BackwardArgs */
    const int key_block = task % a.key_block_step, hk = task / a.key_block_step;
    const fa_seq seq = fa_seq_of(p.varlen, p.cu_seqlens_q, p.cu_seqlens_k, nullptr, p.seqlen_q, p.seqlen_k, b);
    const float *frag = dkv_thread_base<Tiles>(a, (int)blockIdx.x);
    float acc_dk[MK][NT][4], acc_dv[MK][NT][4];
#pragma unroll
    for (int mt = 0; mt < MK; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                acc_dk[mt][nt][e] = frag[(mt * NT + nt) * 128 + e * kAccumElemStride];
                acc_dv[mt][nt][e] = frag[kDvOffset + (mt * NT + nt) * 128 + e * kAccumElemStride];
            }
    const int warp = threadIdx.x / 32;
    store_dk_dv<T, Tiles>(a, seq, b, hk, key_block * Tiles::kBlockN, kv_key0<Tiles>(warp), kv_col0<Tiles>(warp),
                          (threadIdx.x % 32) / 4, threadIdx.x % 4, acc_dk, acc_dv);
}

/* The last-wave split. The main kernel's CTAs are tasks of equal work where
 * the problem has no window, no block mask and fixed lengths: key blocks,
 * each over all query blocks of its kv head's group. With G CTAs resident
 * at once, the last (tasks mod G) tasks run alone in a final wave while the
 * other SMs idle: 3% of the kernel on the FA3 grid's non-causal cells
 * (2048 or 4096 tasks on 132 SMs), for FA2's kernel as for ours (measured at
 * 33 heads, whose 4224 tasks fill 32 waves: the same cycles as 32 heads'
 * 4096; perf-gpu.md, backward v18). Those tasks run instead as `parts` CTAs
 * each over a share of their query blocks, adding dK, dV into fp32 partial
 * sums that backward_convert_dkv_kernel writes out. The model
 * (last_wave_parts), in query blocks: a part's extra cost is its K / V load
 * and epilogue, its atomic adds and its share of the conversion.
 * FA_SM80_BWD_SPLIT=k forces k parts (tests: small problems then split
 * every task). */
constexpr double kSplitPartExtra = 2.0;

/* The largest key block of any sm80 backward tile at padded head dim dp. */
constexpr int max_block_n(int dp) { return dp <= 128 ? 128 : 64; }

static bool split_possible(const fa_problem *p)
{
    return !p->deterministic && !p->varlen && p->window_left < 0 && p->window_right < 0 && !p->block_mask &&
           p->softcap == 0.f && p->alibi_slopes == nullptr && p->total_q > 0 && p->head_dim > 0;
}

/* The shared memory per block that the tile choice (launch_backward) may
 * assume. FA_SM80_SMEM_LIMIT (bytes) lowers it, so that a GPU with more runs
 * (and tests) the choices of one with less: 166912 as an A100, 101376 as
 * sm_86 / sm_89. */
static size_t smem_limit(const fa_cuda_device_info *dev)
{
    size_t optin = dev->smem_per_block_optin;
    const char *limit = getenv("FA_SM80_SMEM_LIMIT");
    if (limit != nullptr) {
        const long bytes = strtol(limit, nullptr, 10);
        if (bytes > 0 && (size_t)bytes < optin)
            optin = (size_t)bytes;
    }
    return optin;
}

/* Split slots the workspace holds: the plan splits fewer tasks than there
 * are SMs (the backward kernels run one CTA per SM, at ~255 registers; the
 * plan splits none where more would be needed), none where the tall d-64
 * tiles will run. */
static int64_t split_slots(const fa_problem *p, const fa_cuda_device_info *dev)
{
    const int dp = padded_head_dim(p->head_dim, p->head_dim_v);
    if (!split_possible(p) || (dp == 64 && BackwardTiles<64, true, true, true>::smem_bytes(2) <= smem_limit(dev)))
        return 0;
    const int64_t tasks = (p->seqlen_k + 31) / 32 * p->heads_kv * p->batch; /* bounds every tile's count */
    return tasks < dev->num_sms ? tasks : dev->num_sms;
}

/* Sets a.split_first / split_parts (see BackwardArgs) for `batch` batch
 * entries of per_batch tasks of `items` query blocks, `blocks` of them per
 * head, on `ctas` resident CTAs with `slots` split slots. */
static void plan_backward_split(BackwardArgs &a, int64_t per_batch, int64_t batch, int items, int blocks, int ctas,
                                int64_t slots)
{
    const int64_t tasks = per_batch * batch;
    const int64_t rem = ctas > 0 ? tasks % ctas : 0;
    const char *force = getenv("FA_SM80_BWD_SPLIT");
    /* the split tasks: the last `rem` (forced: as many as the last batch
     * entry has, up to rem) */
    const int64_t split = force != nullptr && rem > per_batch ? per_batch : rem;
    if (split == 0 || split > per_batch || split > slots || blocks < 2)
        return;
    const int parts = last_wave_parts(tasks, split, ctas, items, kSplitPartExtra, blocks < 64 ? blocks : 64, force);
    if (parts > 1) {
        a.split_first = (int)(per_batch - split);
        a.split_parts = parts;
    }
}

/* Clears the dQ accumulator (and the split tasks' dK / dV sums), runs the
 * main kernel with `stages` query stages (kStages: see backward_kernel), the
 * dQ conversion and, with a split, the dK / dV conversion, all with the
 * accumulator order of Tiles. */
template <typename T, class Tiles, int kStages>
static fa_status run_backward(BackwardArgs &a, int stages, const fa_cuda_device_info &dev)
{
    constexpr int D = Tiles::kHeadDim, BM = Tiles::kBlockM, kThreads = Tiles::kWarps * 32;
    static_assert(Tiles::kBlockN <= max_block_n(D) && Tiles::kBlockN >= 32, "split slots (split_slots)");
    const fa_problem *p = &a.p;
    cudaStream_t stream = (cudaStream_t)p->stream;
    const bool queries = p->total_q > 0 && p->head_dim > 0;
    const unsigned key_blocks = (unsigned)((p->seqlen_k + Tiles::kBlockN - 1) / Tiles::kBlockN);
    const size_t smem = Tiles::smem_bytes(stages);
    cudaError_t err = cudaFuncSetAttribute(backward_kernel<T, Tiles, kStages, false>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err != cudaSuccess)
        return fa_fail(FA_ERROR_DEVICE, "sm80 backward: %s", cudaGetErrorString(err));
    a.query_stages = stages;
    a.key_block_step = p->deterministic ? 1 : (int)key_blocks;
    const int64_t per_batch = (int64_t)key_blocks * p->heads_kv;
    a.split_first = (int)per_batch; /* no split unless planned */
    a.split_parts = 1;
    const int64_t slots = Tiles::kSplits ? split_slots(p, &dev) : 0;
    if (slots > 0 && key_blocks > 0) {
        static int per_sm_of_device[kCachedDevices]; /* (split tiles: always `stages` 2) */
        int per_sm = 0;
        err = resident_per_sm((const void *)backward_kernel<T, Tiles, kStages, false>, kThreads, smem,
                              per_sm_of_device, &per_sm);
        if (err != cudaSuccess)
            return fa_fail(FA_ERROR_DEVICE, "sm80 backward: occupancy: %s", cudaGetErrorString(err));
        const int blocks = (int)((p->seqlen_q + BM - 1) / BM);
        plan_backward_split(a, per_batch, p->batch, blocks * (int)(p->heads_q / p->heads_kv), blocks,
                            per_sm * dev.num_sms, slots);
    }
    const int64_t split_tasks = per_batch - a.split_first;
    if (queries) {
        /* the dQ accumulator's rows, then (a split) the dK / dV sums */
        const size_t accum_rows = (size_t)p->heads_q * (size_t)(p->total_q + p->batch * BM);
        const size_t bytes = split_tasks > 0 ? (size_t)((char *)a.dkv_accum - (char *)a.dq_accum) +
                                                   (size_t)split_tasks * 2 * Tiles::kBlockN * D * 4
                                             : accum_rows * D * 4;
        err = cudaMemsetAsync(a.dq_accum, 0, bytes, stream);
        if (err != cudaSuccess)
            return fa_fail(FA_ERROR_DEVICE, "sm80 backward: clearing the dQ accumulator: %s",
                           cudaGetErrorString(err));
    }
    if constexpr (Tiles::kSplits) {
        /* The split tasks' parts first: then the whole tasks fill whole
         * waves, and no SM waits for a last one. */
        if (split_tasks > 0) {
            err = cudaFuncSetAttribute(backward_kernel<T, Tiles, kStages, true>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
            if (err != cudaSuccess)
                return fa_fail(FA_ERROR_DEVICE, "sm80 backward: %s", cudaGetErrorString(err));
            backward_kernel<T, Tiles, kStages, true>
                <<<(unsigned)(split_tasks * a.split_parts), kThreads, smem, stream>>>(a);
            fa_status st = check_launch("sm80 backward kernel launch (split parts)");
            if (st != FA_SUCCESS)
                return st;
        }
    }
    /* Deterministic: one CTA per pair walks every key block, in order. */
    const dim3 grid = fa_kv_order_grid(&a.heads_first, p->deterministic ? 1u : key_blocks, (int)p->heads_kv,
                                       (int)p->batch, dev.num_sms,
                                       Tiles::kHeadsFirstGrid && !p->deterministic && p->window_right >= 0);
    if (key_blocks > 0) {
        backward_kernel<T, Tiles, kStages, false><<<grid, kThreads, smem, stream>>>(a);
        fa_status st = check_launch("sm80 backward kernel launch");
        if (st != FA_SUCCESS)
            return st;
    }
    if (!queries)
        return FA_SUCCESS;
    const dim3 blocks((unsigned)((p->seqlen_q + BM - 1) / BM), (unsigned)p->heads_q, (unsigned)p->batch);
    backward_convert_dq_kernel<T, Tiles><<<blocks, kThreads, 0, stream>>>(a);
    fa_status st = check_launch("sm80 backward dq conversion launch");
    if (st != FA_SUCCESS || split_tasks == 0)
        return st;
    backward_convert_dkv_kernel<T, Tiles><<<(unsigned)split_tasks, kThreads, 0, stream>>>(a);
    return check_launch("sm80 backward dk/dv conversion launch");
}

template <typename T, int D> static fa_status launch_backward(BackwardArgs &a, const fa_cuda_device_info &dev)
{
    fa_problem *p = &a.p;
    const int64_t rows = p->total_q * p->heads_q;
    if (p->batch == 0 || p->heads_kv == 0)
        return FA_SUCCESS;
    if (rows > 0) {
        constexpr int kRowsPerBlock = 256 / row_threads(D);
        backward_preprocess_kernel<T, D><<<(unsigned)((rows + kRowsPerBlock - 1) / kRowsPerBlock), 256, 0,
                                           (cudaStream_t)p->stream>>>(a);
        fa_status st = check_launch("sm80 backward preprocess launch");
        if (st != FA_SUCCESS)
            return st;
    }
    const size_t optin = smem_limit(&dev);
    /* Problems without softcap/ALiBi: the plain kernel, double-buffered,
     * with 128 query rows at d 64 where that fits. Else the large tile with
     * the score steps (double-buffered if that fits), else the small one. */
    using Tall = BackwardTiles<D, true, true, D <= 64>;
    using Plain = BackwardTiles<D, true, true>;
    using Large = BackwardTiles<D, true>;
    using Small = BackwardTiles<D, false>;
    if (p->softcap == 0.f && p->alibi_slopes == nullptr) {
        if (Tall::kBlockM == 128 && Tall::smem_bytes(2) <= optin)
            return run_backward<T, Tall, 2>(a, 2, dev);
        if (Plain::smem_bytes(2) <= optin)
            return run_backward<T, Plain, 2>(a, 2, dev);
    }
    if (Large::smem_bytes(1) <= optin)
        return run_backward<T, Large, 0>(a, Large::smem_bytes(2) <= optin ? 2 : 1, dev);
    return run_backward<T, Small, 0>(a, Small::smem_bytes(2) <= optin ? 2 : 1, dev);
}

template <typename T> static fa_status backward_for_dtype(BackwardArgs &a, const fa_cuda_device_info &dev)
{
    switch (a.dp) {
    case 64: return launch_backward<T, 64>(a, dev);
    case 96: return launch_backward<T, 96>(a, dev);
    case 128: return launch_backward<T, 128>(a, dev);
    case 192: return launch_backward<T, 192>(a, dev);
    default: return launch_backward<T, 256>(a, dev);
    }
}

/* What a GPU must allow per block: the small tile, single-buffered. */
size_t backward_smem_bytes(int dp)
{
    switch (dp) {
    case 64: return BackwardTiles<64, false>::smem_bytes(1);
    case 96: return BackwardTiles<96, false>::smem_bytes(1);
    case 128: return BackwardTiles<128, false>::smem_bytes(1);
    case 192: return BackwardTiles<192, false>::smem_bytes(1);
    default: return BackwardTiles<256, false>::smem_bytes(1);
    }
}

/* Bytes of the dQ accumulator (see dq_thread_base), 256-byte aligned. */
static size_t dq_accum_bytes(const fa_problem *p, int dp)
{
    const size_t rows = (size_t)p->heads_q * (size_t)(p->total_q + p->batch * kDqMaxPadRows);
    return (rows * dp * 4 + 255) / 256 * 256;
}

/* Bytes of the split tasks' dK / dV sums (split_slots slots of the largest
 * tile), 256-byte aligned. */
static size_t dkv_accum_bytes(const fa_problem *p, const fa_cuda_device_info *dev, int dp)
{
    const size_t slots = (size_t)split_slots(p, dev);
    return (slots * 2 * max_block_n(dp) * dp * 4 + 255) / 256 * 256;
}

/* dq_accum, dkv_accum, then dsum, then lse_log2 (all fp32, 256-byte aligned). */
size_t backward_workspace_size(const fa_problem *p, const fa_cuda_device_info *dev)
{
    const size_t rows = (size_t)p->heads_q * (size_t)p->total_q;
    const int dp = padded_head_dim(p->head_dim, p->head_dim_v);
    const size_t vec = (rows * 4 + 255) / 256 * 256;
    return dq_accum_bytes(p, dp) + dkv_accum_bytes(p, dev, dp) + 2 * vec;
}

} // namespace fa

/* [plain, deterministic, last-wave split (dK / dV of the split tasks summed
 * in arrival order)][fp16, bf16][head dim] */
#define FA_BWD_NAMES(suffix)                                                                                   \
    {{"sm80.bwd.hdim64.fp16" suffix, "sm80.bwd.hdim96.fp16" suffix, "sm80.bwd.hdim128.fp16" suffix,             \
      "sm80.bwd.hdim192.fp16" suffix, "sm80.bwd.hdim256.fp16" suffix},                                          \
     {"sm80.bwd.hdim64.bf16" suffix, "sm80.bwd.hdim96.bf16" suffix, "sm80.bwd.hdim128.bf16" suffix,             \
      "sm80.bwd.hdim192.bf16" suffix, "sm80.bwd.hdim256.bf16" suffix}}
static const char *const kBackwardNames[3][2][5] = {FA_BWD_NAMES(""), FA_BWD_NAMES(".deterministic"),
                                                    FA_BWD_NAMES(".split")};
#undef FA_BWD_NAMES

extern "C" fa_status fa_sm80_backward(fa_problem *p, const fa_cuda_device_info *dev)
{
    if (p->workspace_size < fa::backward_workspace_size(p, dev))
        return fa_fail(FA_ERROR_INTERNAL, "sm80 backward: workspace of %zu bytes, %zu needed",
                       p->workspace_size, fa::backward_workspace_size(p, dev));
    fa::BackwardArgs a;
    a.p = *p;
    a.dp = fa::padded_head_dim(p->head_dim, p->head_dim_v);
    const fa_tensor *tensors[] = {&p->q, &p->k, &p->v, &p->dout};
    a.vectorized = fa::rows_are_16b_aligned(tensors, 4, p->varlen);
    const fa_tensor *outputs[] = {&p->out, &p->dout};
    a.out_vectorized = p->head_dim_v % 8 == 0 && fa::rows_are_16b_aligned(outputs, 2, p->varlen);
    const fa_tensor *grads[] = {&p->dq, &p->dk, &p->dv};
    a.grad_pairs = fa::rows_are_16b_aligned(grads, 3, p->varlen);
    const size_t rows = (size_t)p->heads_q * (size_t)p->total_q;
    char *ws = (char *)p->workspace;
    a.dq_accum = (float *)ws;
    a.dkv_accum = (float *)(ws + fa::dq_accum_bytes(p, a.dp));
    a.dsum = (float *)((char *)a.dkv_accum + fa::dkv_accum_bytes(p, dev, a.dp));
    a.lse_log2 = (float *)((char *)a.dsum + (rows * 4 + 255) / 256 * 256);
    const int is_bf16 = p->dtype == FA_DTYPE_BF16;
    fa_status st = is_bf16 ? fa::backward_for_dtype<__nv_bfloat16>(a, *dev)
                           : fa::backward_for_dtype<__half>(a, *dev);
    const int dp = a.dp;
    const int dim_index = dp == 64 ? 0 : dp == 96 ? 1 : dp == 128 ? 2 : dp == 192 ? 3 : 4;
    if (st == FA_SUCCESS)
        p->kernel_name = kBackwardNames[p->deterministic ? 1 : a.split_parts > 1 ? 2 : 0][is_bf16][dim_index];
    return st;
}
