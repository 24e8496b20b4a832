/*
 * FlashAttention-2 forward on sm80+ tensor cores (mma.sync m16n8k16).
 *
 * One thread block per (query block, query head, batch); each warp owns 16
 * or 32 query rows. Q stays in smem; K and V tiles stream through smem with
 * cp.async, overlapped as in FA2: V(j) loads while S = Q·K(j)ᵀ is computed,
 * K(j+1) loads while O += P·V(j) is (d > 128: from before the softmax on).
 * The online softmax (running row max and row sum) lives in registers; P
 * goes from the S accumulators straight into the A fragments of the P·V
 * product without touching smem. O leaves through smem (the warp's own
 * rows of the Q tile) as 16-byte stores.
 */
#include "common.cuh"

namespace fa {

/* Tile shape per padded head dim and kernel variant: kWarps warps of
 * kRowTiles x 16 query rows (BM in all), BN keys per step. Two 16-row tiles
 * per warp let every K/V fragment read from smem feed two mma (as FA2's
 * 4-warp, 128-row blocks); the O accumulator (16·kRowTiles x D per warp)
 * bounds it by registers. BN is as large as the S accumulator's registers
 * allow without spills (255 per thread, two blocks per SM): the per-step
 * work that does not grow with BN (rescaling O, row reductions, barriers,
 * tile classification) is spread over more mma. Only the lean variant
 * (kAllOptions false: no dropout, softcap, ALiBi or block-sparse code) fits
 * BN 64 at d 128 and BN 128 at d 64 (FA2's tile there; 8 bytes of spill in
 * sm_90 code, 148 in sm_80 code: perf-gpu.md, forward v7).
 * d > 128 keeps 4 warps of 16 rows: 8 warps sharing 128-query K/V tiles
 * (one block per SM) measured 5-10% slower at seqlen 512-2048 and no faster
 * at 8192 on an H100 (perf-gpu.md, forward v7); PyTorch's FA2 also runs
 * 4 warps x 16 rows at d 256 there. The key split's parts choose their
 * row tiles per warp (kSplitRowTiles): one for up to 64 query rows (one
 * when decoding, where the mma work of a 128-row tile per key block is
 * about as long as the block's loads: -16% time at one row), two for more
 * (+18% time with one at 128-256 rows; perf-gpu.md, forward v13). */
template <int D, bool kAllOptions, int kSplitRowTiles = 0> struct ForwardTiles {
    static constexpr int kWarps = 4;
    static constexpr int kRowTiles = kSplitRowTiles > 0 ? kSplitRowTiles : D <= 128 ? 2 : 1;
    static constexpr int kBlockM = 16 * kRowTiles * kWarps;
    static constexpr int kBlockN = D == 96 || (D == 128 && kAllOptions) ? 32
                                   : D == 64 && !kAllOptions             ? 128
                                                                         : 64;
    /* Q/K/V tile pitch: unpadded, XOR-swizzled rows (smem_at) at d 64,
     * 128 and 256 (H100: d 256 +6-11%, d 64/128 -3 to +6%); padded at
     * d 96 (rows not whole 128-byte lines) and d 192 (1-25% slower
     * swizzled; perf-gpu.md, forward v9). */
    static constexpr int kPitch = D == 64 || D == 128 || D == 256 ? D : smem_pitch(D);
    static constexpr size_t kSmemBytes = (size_t)(kBlockM + 2 * kBlockN) * kPitch * 2;
};

/* The tile mask of the tile at key offset n0 from that at key 0 (tm0 =
 * tile_mask(mask, m0, 0)). Exact while sequences are shorter than 2^29:
 * a bound clamped to ±2^30 stays beyond every in-tile difference. */
__device__ __forceinline__ TileMask shift_tile_mask(const TileMask &tm0, int n0)
{
    return TileMask{tm0.lo - n0, tm0.hi - n0, tm0.rows, tm0.cols - n0};
}

/* Whether the window and the sequence tails leave every element of the
 * BM x BN tile with mask tm visible (classify_tile's FULL for a dense
 * mask). */
template <int BM, int BN> __device__ __forceinline__ bool tile_is_full(const TileMask &tm)
{
    return tm.rows >= BM && tm.cols >= BN && tm.lo <= -(BM - 1) && tm.hi >= BN - 1;
}

/* Sets the invisible elements of a partial tile's scores to -inf. Element
 * (mt, nt, e) is tile row row0 + 16mt + 8(e/2), tile column col0 + 8nt + e%2
 * (row0 = warp row + g, col0 = 2t: the mma C layout). With GQA packed (the
 * key split's parts; pack query heads per tile, its first row being head
 * rem of its group) tile row il is query (rem + il) / pack of the tile's
 * first, whose window tmask holds; pack 1 and rem 0 otherwise. The
 * block-sparse test is a separate loop behind one uniform branch, so that
 * dense problems pay only the window and tail arithmetic. */
template <int MT, int BN>
__device__ __forceinline__ void mask_partial_tile(float (&s)[MT][BN / 8][4], const TileMask &tmask,
                                                  const Mask &mask, int64_t m0, int64_t n0,
                                                  int row0, int col0, int pack = 1, int rem = 0)
{
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            /* This row's visible columns are [lo, hi) relative to col0, so
             * each element is two compares with an immediate (as FA2). */
            const int il = row0 + 16 * mt + 8 * r, iq = (rem + il) / pack;
            const int lo = iq + tmask.lo - col0;
            const int hi = il < tmask.rows ? min(iq + tmask.hi + 1, tmask.cols) - col0 : lo;
#pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
                for (int c = 0; c < 2; ++c)
                    if (nt * 8 + c < lo || nt * 8 + c >= hi)
                        s[mt][nt][2 * r + c] = -INFINITY;
        }
    if (mask.blocks) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int il = row0 + 16 * mt + (e / 2) * 8, jl = col0 + nt * 8 + e % 2;
                    if (il < tmask.rows && jl < tmask.cols &&
                        !mask.blocks[((m0 + il) / mask.block_q) * mask.blocks_k +
                                     (n0 + jl) / mask.block_k])
                        s[mt][nt][e] = -INFINITY;
                }
    }
}

/* Zeroes the dropped elements of P (same layout as mask_partial_tile; row0
 * and col0 absolute within the sequence). The keep bits of 16 8-column
 * tiles at a time are drawn by a rolled loop (one Philox call per row and
 * column pair) into one 64-bit word, then applied unrolled: the softmax
 * code stays small and no array is indexed dynamically. */
template <int MT, int BN>
__device__ __forceinline__ void drop_elements(float (&s)[MT][BN / 8][4], const fa_problem &p,
                                              int64_t b, int64_t h, int64_t row0, int64_t col0,
                                              uint32_t threshold)
{
    constexpr int kTiles = MT * BN / 8; /* tile = mt·BN/8 + nt */
    constexpr int kChunk = 16;          /* tiles per 64-bit word of keep bits */
#pragma unroll
    for (int c0 = 0; c0 < kTiles; c0 += kChunk) {
        const int tiles = min(kChunk, kTiles - c0);
        uint64_t keep = 0; /* bit 4(tile - c0) + e */
#pragma unroll 1
        for (int pair = 0; pair < 2 * tiles; ++pair) {
            const int tile = c0 + pair / 2, r = pair % 2;
            const int64_t i = row0 + 16 * (tile / (BN / 8)) + r * 8;
            const int64_t j = col0 + (tile % (BN / 8)) * 8;
            fa_u32x4 w = fa_dropout_words(p.dropout_seed, p.dropout_offset, p.heads_q, b, h, i, j);
            keep |= (uint64_t)(w.x[j & 3] >= threshold) << (4 * (pair / 2) + 2 * r);
            keep |= (uint64_t)(w.x[(j + 1) & 3] >= threshold) << (4 * (pair / 2) + 2 * r + 1);
        }
#pragma unroll
        for (int tl = 0; tl < kChunk; ++tl)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                if (c0 + tl < kTiles && !((keep >> (4 * tl + e)) & 1))
                    s[(c0 + tl) / (BN / 8)][(c0 + tl) % (BN / 8)][e] = 0.f;
    }
}

struct ForwardArgs {
    fa_problem p;
    bool vectorized;     /* 16-byte aligned q/k/v rows: cp.async loads */
    bool out_vectorized; /* 16-byte aligned out rows, dv % 8 == 0: staged 16-byte stores */
    bool heaviest_first; /* lean variant: grid (heads, query blocks, batch), see below */
    /* The key split (plan_forward_split): every tile (query block, head,
     * batch entry) runs as split_parts parts over its key blocks in
     * forward_kernel<..., true>, which writes each part's O / l and LSE
     * (part_o, part_lse; slot = the part's block index, tile-major), and
     * fa_split_combine_kernel (../key_split.cuh) merges them. */
    int split_parts;
    float *part_o;   /* [slot][kBlockM][D] */
    float *part_lse; /* [slot][kBlockM], natural log */
    int pack_gqa;    /* query heads per tile of the split (../key_split.cuh), 1: one head */
};

// q (B, Sq, Hq, d), k (B, Sk, Hkv, d), v (B, Sk, Hkv, dv) -> out (B, Sq, Hq, dv),
// lse (B, Hq, Sq); packed (total, H, dim) with cu_seqlens for varlen.
// Grid: (ceil(max Sq / BM), Hq, B).
// kAllOptions false: the problem has no dropout, softcap, ALiBi or
// block-sparse mask, and the kernel has no code for them.
// kSplitRowTiles > 0: the key split's parts (lean only) with that many row
// tiles per warp; grid: tiles x split_parts, part_o / part_lse instead of
// out / lse.
// kKvCache (lean only): the KV-cache options, seqused_k and the paged
// layout (fa_attn.kv_block_table). A template flag, not a runtime branch of
// every kernel: their code moved the other kernels' register allocation
// even where it never ran (sm_90, lean d 64: 48 / 72 bytes of spills; the
// all-options kernels 72-200).
template <typename T, int D, bool kAllOptions, int kSplitRowTiles = 0, bool kKvCache = false>
__global__ void __launch_bounds__(ForwardTiles<D, kAllOptions>::kWarps * 32, 2)
    forward_kernel(const ForwardArgs args)
{
    constexpr bool kSplitPart = kSplitRowTiles > 0;
    static_assert(!((kSplitPart || kKvCache) && kAllOptions), "the split and the KV cache run lean problems only");
    using Tiles = ForwardTiles<D, kAllOptions, kSplitRowTiles>;
    constexpr int BM = Tiles::kBlockM, BN = Tiles::kBlockN, MT = Tiles::kRowTiles;
    constexpr int kThreads = Tiles::kWarps * 32, P = Tiles::kPitch;
    const fa_problem &p = args.p;

    extern __shared__ __align__(16) unsigned char smem[];
    T *sQ = reinterpret_cast<T *>(smem);
    T *sK = sQ + BM * P;
    T *sV = sK + BN * P;

    /* Grid (query blocks, heads, batch): the query blocks of one head run
     * together and share its K/V in L2. With a right window bound (causal,
     * local) later query blocks see more keys, and launched last they leave
     * a tail of the longest blocks; where the K/V of all heads of a batch
     * entry fit in L2, the lean variant takes the grid as (heads, query
     * blocks, batch) and runs the last query blocks of all heads first.
     * (Only the lean variant: the other holds b, h, m0 through the key loop,
     * where they cost spills unless they are the block index itself.) */
    const bool heaviest_first = !kAllOptions && args.heaviest_first;
    int64_t b = blockIdx.z, h = heaviest_first ? blockIdx.x : blockIdx.y;
    int64_t m0 = (int64_t)(heaviest_first ? gridDim.y - 1 - blockIdx.y : blockIdx.x) * BM;
    /* A part: its tile's batch entry, first head and query (m0); with GQA
     * packed (pack > 1; parts of one row tile per warp only, which the
     * packing's registers do not make spill) the tile's packed rows start
     * at head rem of the group's pack heads, packed row r0 = pack · m0 +
     * rem (../key_split.cuh) */
    constexpr bool kPackable = kSplitRowTiles == 1;
    int part = 0, pack = 1, rem = 0;
    if constexpr (kSplitPart) {
        part = (int)(blockIdx.x % args.split_parts);
        if constexpr (kPackable)
            pack = args.pack_gqa;
        split_row_origin<BM>(p, pack, blockIdx.x / args.split_parts, 0, &b, &h, &m0);
        rem = (int)(h % pack);
        h -= rem;
    }
    const fa_seq seq = fa_seq_of(p.varlen, p.cu_seqlens_q, p.cu_seqlens_k,
                                 kKvCache ? p.seqused_k : nullptr, p.seqlen_q, p.seqlen_k, b);
    if (m0 >= seq.sq)
        return;
    const int64_t r0 = pack * m0 + rem, rows = seq.sq * pack; /* packed rows (pack 1: m0, sq) */
    const int64_t hk = h / (p.heads_q / p.heads_kv);
    const ScoreTransform score = make_score_transform(p, seq, b, h);
    /* Without softcap and ALiBi a score is one multiply from q·k. */
    const bool plain_scores = !kAllOptions || (score.softcap == 0.f && score.alibi_slope == 0.f);
    /* Multiplier from s as held in registers to log2 units. */
    const float exp_scale = plain_scores ? p.softmax_scale * kLog2e : 1.f;
    const int warp = threadIdx.x / 32, g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
    const int warp_row = warp * 16 * MT; /* first query row of this warp in the block */
    const int d = (int)p.head_dim, dv = (int)p.head_dim_v;

    const T *q = (const T *)p.q.data + fa_row_offset(&p.q, p.varlen, b, seq.q0 + m0, h);
    const T *k = (const T *)p.k.data + fa_row_offset(&p.k, p.varlen, b, seq.k0, hk);
    const T *v = (const T *)p.v.data + fa_row_offset(&p.v, p.varlen, b, seq.k0, hk);

    /* Keys any row of this block may see: [lo of the first row, hi of the
     * last row), in BN blocks. Loop state is 32-bit (block indices, tile
     * offsets, the tile mask): 64-bit values held across the key loop cost
     * two registers each, next to accumulators that fill the rest. */
    int64_t lo, hi, unused;
    fa_window_range(m0, seq.sq, seq.sk, p.window_left, p.window_right, &lo, &unused);
    fa_window_range((min(r0 + BM, rows) - 1) / pack, seq.sq, seq.sk, p.window_left,
                    p.window_right, &unused, &hi);
    const int nb_lo = hi > lo ? (int)(lo / BN) : 0, nb_hi = hi > lo ? (int)((hi + BN - 1) / BN) : 0;
    /* a part: its share of the tile's key blocks (at least one each) */
    const int n_begin = kSplitPart ? nb_lo + (nb_hi - nb_lo) * part / args.split_parts : nb_lo;
    const int n_end = kSplitPart ? nb_lo + (nb_hi - nb_lo) * (part + 1) / args.split_parts : nb_hi;
    /* The mask of this (sequence, head); the lean variant knows that it is
     * dense. */
    auto tile_mask_of = [&]() {
        Mask m = make_mask(p, seq, b, h);
        if (!kAllOptions)
            m.blocks = nullptr;
        return m;
    };
    /* The tile mask of key block nb: the lean variant shifts the one of
     * block 0; the other rebuilds it (and the Mask) from the parameters
     * where it is needed rather than keeping either in registers. */
    TileMask tmask0 = tile_mask(tile_mask_of(), m0, 0);
    if (kSplitPart)
        tmask0.rows = (int)min(rows - r0, (int64_t)BM); /* packed rows */
    auto tile_mask_at = [&](int nb) {
        return kAllOptions ? tile_mask(tile_mask_of(), m0, (int64_t)nb * BN)
                           : shift_tile_mask(tmask0, nb * BN);
    };
    /* The first block at or after nb that has a visible element, and its
     * kind. Dense: the blocks in [lo, hi) all have one (the rows' key
     * ranges are contiguous), so the kind is arithmetic on the tile mask.
     * Otherwise classify_tile also scans the block-sparse grid. */
    auto next_block = [&](int nb, TileKind *kind) {
        if (kAllOptions) {
            for (; nb < n_end; ++nb)
                if ((*kind = classify_tile(tile_mask_of(), m0, BM, (int64_t)nb * BN, BN)) !=
                    TILE_SKIP)
                    break;
        } else {
            *kind = tile_is_full<BM, BN>(tile_mask_at(nb)) ? TILE_FULL : TILE_PARTIAL;
        }
        return nb;
    };

    /* Key block nb of K or V (t: p.k or p.v) into tile: the strided rows
     * from src (load_tile_whole_fast's arguments), or those of the page
     * table (src unused). */
    auto load_kv_block = [&](T *tile, const T *src, int64_t stride, int64_t rows_valid, int cols,
                             const fa_tensor &t, int nb) {
        if (!kKvCache || p.kv_block_table == nullptr)
            load_tile_whole_fast<T, BN, D, kThreads, P>(tile, src, stride, rows_valid, cols, args.vectorized);
        else
            load_tile_paged<T, BN, D, kThreads, P>(
                tile, (const T *)t.data + hk * t.stride_head, p.kv_block_table + b * p.kv_block_table_stride,
                t.stride_batch, t.stride_seq, (int)p.kv_page_size, nb * BN, rows_valid, cols, args.vectorized);
    };

    const bool drop = kAllOptions && p.dropout_p > 0.f;
    const uint32_t drop_threshold = fa_dropout_threshold(p.dropout_p);

    /* Element (mt, nt, e) of an accumulator is row warp_row + 16mt + g + 8(e/2),
     * column 8nt + 2t + e%2 (the mma C layout). */
    float acc_o[MT][D / 8][4];
    zero(acc_o);
    /* Row max in the units of s (log2 units: · exp_scale); row sums of this
     * thread's columns. */
    float row_max[MT][2], row_sum[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
        row_max[mt][0] = row_max[mt][1] = -INFINITY, row_sum[mt][0] = row_sum[mt][1] = 0.f;

    TileKind kind = TILE_SKIP;
    int nb = next_block(n_begin, &kind);
    if (kPackable && pack > 1) { /* packed row r: query (rem + r) / pack of head (rem + r) % pack */
        auto row_at = [&](int r) { /* q: query m0 of the group's first head */
            return q + (int64_t)((rem + r) / pack) * p.q.stride_seq + (int64_t)((rem + r) % pack) * p.q.stride_head;
        };
        load_tile_rows<T, BM, D, kThreads, P>(sQ, row_at, q, tmask0.rows, d, args.vectorized);
    } else {
        load_tile_whole_fast<T, BM, D, kThreads, P>(sQ, q, p.q.stride_seq, tmask0.rows, d, args.vectorized);
    }
    if (nb < n_end)
        load_kv_block(sK, k + (int64_t)nb * BN * p.k.stride_seq, p.k.stride_seq, tile_mask_at(nb).cols, d,
                      p.k, nb);
    cp_async_commit();
    /* The first V loads with Q and K (nothing reads sV before it): its
     * latency is not exposed after the first S. */
    if (nb < n_end)
        load_kv_block(sV, v + (int64_t)nb * BN * p.v.stride_seq, p.v.stride_seq, tile_mask_at(nb).cols, dv,
                      p.v, nb);
    cp_async_commit();

    /* Once V(nb) has landed and every warp is done with K(nb): K(nb_next)
     * starts loading. FA2 does this right after S = Q·Kᵀ, so that the
     * copies into smem overlap the softmax rather than the ldmatrix
     * stream of P·V; here only where that order costs no spills (the lean
     * kernels with one row tile per warp, d > 128); the others start it
     * after the softmax. */
    constexpr bool kEarlyK = !kAllOptions && MT == 1;
    auto wait_v_load_next_k = [&](int nb_next) {
        cp_async_wait<0>();
        __syncthreads();
        if (nb_next < n_end)
            load_kv_block(sK, k + (int64_t)nb_next * BN * p.k.stride_seq, p.k.stride_seq,
                          tile_mask_at(nb_next).cols, d, p.k, nb_next);
        cp_async_commit();
    };
    for (bool first = true; nb < n_end; first = false) {
        const int n0 = nb * BN;
        const TileMask tmask = tile_mask_at(nb);
        if (first)
            cp_async_wait<1>(); /* Q and K; V may still be in flight */
        else
            cp_async_wait<0>();
        __syncthreads(); /* K(nb) landed; every warp is done with V */
        if (!first)
            load_kv_block(sV, v + (int64_t)n0 * p.v.stride_seq, p.v.stride_seq, tmask.cols, dv, p.v, nb);
        cp_async_commit();

        float s[MT][BN / 8][4];
        zero(s);
        /* With the fragments read a step ahead ptxas allocates fewer
         * registers at d >= 128 (sm_90, lean d 128: 255 -> 251, which
         * makes room for the staged epilogue; lean d 256 with the early K
         * load: 249 -> 239); no faster by itself, and ~3% slower at d 64,
         * so the plain loop stays below 128 (perf-gpu.md, forward v8). */
        if constexpr (D >= 128)
            warp_gemm_prefetched<MT, BN / 8, D>(s, sQ, P, warp_row, sK, P);
        else
            warp_gemm<MT, BN / 8, D, false, false>(s, sQ, P, warp_row, 0, sK, P, 0, 0);

        TileKind next_kind = TILE_SKIP;
        const int nb_next = next_block(nb + 1, &next_kind);

        if (kEarlyK)
            wait_v_load_next_k(nb_next);

        /* Scores masked to -inf; new row max. Plain scores stay raw q·k (the
         * scale is folded into the exponent's FFMA, as FA2); softcap/ALiBi
         * scores become log2 units here. The optional steps are whole loops
         * behind uniform branches: as per-element selects the compiler
         * would compute softcap's tanh for every score even when it is off. */
        if (!plain_scores) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        float dtanh;
                        s[mt][nt][e] = transform_score(score, s[mt][nt][e],
                                                       m0 + warp_row + 16 * mt + g + (e / 2) * 8,
                                                       n0 + nt * 8 + 2 * t + e % 2, &dtanh) * kLog2e;
                    }
        }
        if (kind == TILE_PARTIAL)
            mask_partial_tile<MT, BN>(s, tmask, tile_mask_of(), m0, n0, warp_row + g, 2 * t, pack, rem);
        float tile_max[MT][2];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            tile_max[mt][0] = tile_max[mt][1] = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    tile_max[mt][e / 2] = fmaxf(tile_max[mt][e / 2], s[mt][nt][e]);
        }
        float rescale[MT][2], base[MT][2]; /* base: the row max in log2 units */
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                float m = tile_max[mt][r];
                m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
                m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
                const float new_max = fmaxf(row_max[mt][r], m);
                /* A row with nothing visible yet keeps max -inf: subtract 0
                 * instead so that exp2(-inf - -inf) never makes a NaN. */
                base[mt][r] = new_max == -INFINITY ? 0.f : new_max * exp_scale;
                rescale[mt][r] = exp2f(row_max[mt][r] * exp_scale - base[mt][r]);
                row_max[mt][r] = new_max;
                row_sum[mt][r] *= rescale[mt][r];
            }

        /* O *= rescale, one 16 x 8 tile at a time: in the lean d-128 kernel
         * just before the tile's first product of this block (in P·V
         * below), so that the FMULs issue between the mma (FA2's schedule)
         * rather than as a block ahead of a long mma run (H100: d 128 +2-5%
         * at 1k-16k; d 64 -1 to -3% and d 256 mixed, so those keep it
         * here, as does the all-options kernel, where it spilled at d 128;
         * perf-gpu.md, forward v11). */
        constexpr bool kRescaleInPv = !kAllOptions && D == 128;
        auto rescale_o_tile = [&](int mt, int dt) {
#pragma unroll
            for (int e = 0; e < 4; ++e)
                acc_o[mt][dt][e] *= rescale[mt][e / 2];
        };
        if (!kRescaleInPv)
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int dt = 0; dt < D / 8; ++dt)
                    rescale_o_tile(mt, dt);

        /* P = exp2(s·exp_scale - base), one FFMA and one ex2 per score; the
         * row sum is of the undropped P. */
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    s[mt][nt][e] = exp2f(fmaf(s[mt][nt][e], exp_scale, -base[mt][e / 2]));
                    row_sum[mt][e / 2] += s[mt][nt][e];
                }
        if (drop)
            drop_elements<MT, BN>(s, p, b, h, m0 + warp_row + g, n0 + 2 * t, drop_threshold);

        /* P -> A fragments of P·V. */
        uint32_t pa[BN / 16][MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt) {
                pa[nt / 2][mt][(nt % 2) * 2 + 0] = pack_pair<T>(s[mt][nt][0], s[mt][nt][1]);
                pa[nt / 2][mt][(nt % 2) * 2 + 1] = pack_pair<T>(s[mt][nt][2], s[mt][nt][3]);
            }

        if (!kEarlyK)
            wait_v_load_next_k(nb_next);

#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk)
            mma_a_times_b<MT, D / 8, true>(acc_o, pa[kk], sV, P, kk * 16, 0, [&](int mt, int dt) {
                if (kRescaleInPv && kk == 0)
                    rescale_o_tile(mt, dt);
            });

        nb = nb_next;
        kind = next_kind;
    }
    cp_async_wait<0>();

    /* out = O / l (· 1/(1-p) for dropout); lse = max + log(l). With
     * 16-byte aligned rows (dv % 8 == 0) the warp's rows of O go through
     * its own rows of sQ and leave as 16-byte stores of whole row
     * segments: a quarter of the store instructions of the fragment
     * layout, in full 32-byte sectors (+3-7% at seqlen 512). Otherwise
     * element by element. */
    const bool staged = !kSplitPart && args.out_vectorized;
    if (staged)
        __syncthreads(); /* every thread's Q copies have landed (no key block may have run) */
    T *out = (T *)p.out.data;
    T *so = sQ + warp_row * P;
    /* Staged: columns 8j + 2t (j < 8) of this thread's row g of so. Every
     * row it writes is g + 8k, and smem_at's swizzle moves a 16-byte chunk
     * only within its 64-column group (by the row % 8 = g), so column
     * 8dt + 2t of row g + 8k lies at stage_chunk[dt % 8] + 8k·P + 64(dt / 8)
     * in either layout: one address per j, immediates for the rest. (With
     * the swizzle per store and the row offset per 16-byte global store,
     * the epilogue took 8% of the d-256 kernel's samples at seqlen 512,
     * FA2's 4%; perf-gpu.md, forward v12.) */
    T *stage_chunk[8];
#pragma unroll
    for (int j = 0; j < 8; ++j)
        stage_chunk[j] = smem_at(so, P, g, 8 * j, 2 * t);
    const float keep_scale = drop ? 1.f / (1.f - p.dropout_p) : 1.f;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float l = row_sum[mt][r];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const int64_t i = m0 + warp_row + 16 * mt + g + r * 8;
            const float inv = l > 0.f ? keep_scale / l : 0.f;
            /* natural log; a row with nothing visible gets -inf */
            auto row_lse = [&]() { return l > 0.f ? row_max[mt][r] * exp_scale * kLn2 + logf(l) : -INFINITY; };
            if constexpr (kSplitPart) {
                /* This part's O / l and LSE, whole rows of the slot (the
                 * combine reads only the sequence's rows). */
                const int64_t slot_row = (int64_t)blockIdx.x * BM + warp_row + 16 * mt + g + r * 8;
                float *o = args.part_o + slot_row * D + 2 * t;
#pragma unroll
                for (int dt = 0; dt < D / 8; ++dt)
                    *reinterpret_cast<float2 *>(o + 8 * dt) =
                        make_float2(acc_o[mt][dt][2 * r] * inv, acc_o[mt][dt][2 * r + 1] * inv);
                if (t == 0)
                    args.part_lse[slot_row] = row_lse();
                continue;
            }
            if (staged) {
#pragma unroll
                for (int dt = 0; dt < D / 8; ++dt)
                    *reinterpret_cast<uint32_t *>(stage_chunk[dt % 8] + (16 * mt + 8 * r) * P +
                                                  64 * (dt / 8)) =
                        pack_pair<T>(acc_o[mt][dt][2 * r] * inv, acc_o[mt][dt][2 * r + 1] * inv);
            }
            if (i >= seq.sq)
                continue;
            if (!staged) {
                T *row = out + fa_row_offset(&p.out, p.varlen, b, seq.q0 + i, h);
#pragma unroll
                for (int dt = 0; dt < D / 8; ++dt) {
                    const int c = dt * 8 + 2 * t;
                    if (c < dv)
                        row[c] = T(acc_o[mt][dt][r * 2] * inv);
                    if (c + 1 < dv)
                        row[c + 1] = T(acc_o[mt][dt][r * 2 + 1] * inv);
                }
            }
            if (p.lse && t == 0)
                p.lse[fa_lse_index(p.varlen, b, h, seq.q0 + i, p.heads_q, p.seqlen_q, p.total_q)] = row_lse();
        }
    if (staged) {
        __syncwarp();
        /* The warp's rows as 16-byte chunks, from one row address: rows
         * are stride_seq apart in every layout (fa_row_offset). Where a
         * row is a whole number of chunks per 32 lanes, each lane keeps one
         * column and steps its pointer down the rows. */
        constexpr int kChunks = D / 8, kRows = 16 * MT; /* 16-byte chunks per row */
        const int lane = threadIdx.x % 32;
        const int64_t stride = p.out.stride_seq;
        const int rows = (int)min((int64_t)kRows, seq.sq - (m0 + warp_row));
        T *const out_rows = out + fa_row_offset(&p.out, p.varlen, b, seq.q0 + m0 + warp_row, h);
        if constexpr (32 % kChunks == 0) {
            constexpr int kRowStep = 32 / kChunks;
            const int r0 = lane / kChunks, col = lane % kChunks * 8;
            T *dst = out_rows + r0 * stride + col;
#pragma unroll
            for (int k = 0; k < kRows / kRowStep; ++k, dst += kRowStep * stride)
                if (r0 + k * kRowStep < rows && col < dv)
                    *reinterpret_cast<uint4 *>(dst) =
                        *reinterpret_cast<const uint4 *>(smem_at(so, P, r0 + k * kRowStep, col));
        } else {
#pragma unroll
            for (int c = lane; c < kRows * kChunks; c += 32) {
                const int r = c / kChunks, col = (c % kChunks) * 8;
                if (r < rows && col < dv)
                    *reinterpret_cast<uint4 *>(out_rows + r * stride + col) =
                        *reinterpret_cast<const uint4 *>(smem_at(so, P, r, col));
            }
        }
    }
}

/* The key split of the lean forward (forward v13; flash-decoding's form).
 * A grid of fewer tiles than the GPU holds at once (few query rows over
 * long keys: KV-cache decoding, chunked prefill) leaves most SMs idle, and
 * each of its CTAs walks every key. Without a block mask or varlen the
 * tiles run as parts over a share of their key blocks each (a window's
 * tile its own range of them), every part writing its O / l and LSE in
 * fp32, and fa_split_combine_kernel (../key_split.cuh) merges them. The
 * model is last_wave_parts with the whole grid as its last wave, in key
 * blocks (those of the widest tile): a part's extra cost is its Q load,
 * its fp32 store and its share of the combine. (The same split
 * of a grid's last wave only, with the whole tiles' kernel a programmatic
 * dependent of the parts', gained 1.3-2.2% of the cycles at non-causal
 * 8k-16k but nothing free-running at the power cap; perf-gpu.md, forward
 * v13.) FA_SM80_FWD_SPLIT=k forces k parts where the split can run. */
constexpr double kForwardSplitPartExtra = 3.0;
/* At most this many parts, and partial results of at most this size. */
constexpr int kForwardSplitMaxParts = 32;
constexpr size_t kForwardSplitMaxBytes = (size_t)128 << 20;

struct ForwardSplit {
    int64_t tiles; /* the grid's tiles */
    int parts;     /* parts per tile (1: no split) */
    int row_tiles; /* per warp (kSplitRowTiles) */
    int pack;      /* query heads per tile (ForwardArgs::pack_gqa) */
    size_t bytes;  /* workspace: part_o, then part_lse */
};

/* The split packs the query heads of a KV head into one tile (FA3's
 * PackGQA, as the Hopper split; ../key_split.cuh): a few query rows of 4
 * heads per KV head fill 4 times the rows of a tile, and each K / V block
 * is read once per group instead of once per head (bf16, 4 query rows, 32
 * / 8 heads, 128k keys on an H100: 520 us unpacked, as FlashAttention-2's;
 * perf.md, thirtieth session). Any ratio: rows are gathered, not boxed.
 * (One query row without a left window bound never gets here grouped:
 * fold_query_groups of api.c makes the group's heads its rows.)
 * FA_SM80_PACK_GQA=0 turns it off. */
static int forward_split_pack(const fa_problem *p)
{
    const char *env = getenv("FA_SM80_PACK_GQA");
    return env != nullptr && strcmp(env, "0") == 0 ? 1 : (int)(p->heads_q / p->heads_kv);
}

/* Lean (no dropout, softcap, ALiBi, block mask), dense, fixed lengths, and
 * a grid that may be smaller than one wave (the exact test needs the
 * occupancy: plan_forward_split). */
static bool forward_split_possible(const fa_problem *p, int64_t tiles, const fa_cuda_device_info *dev)
{
    return p->dropout_p == 0.f && p->softcap == 0.f && p->alibi_slopes == nullptr && !p->block_mask &&
           !p->varlen && p->seqlen_k > 0 && tiles > 0 && tiles < 4 * dev->num_sms;
}

template <typename T, int D, int RT>
static fa_status plan_forward_split(const fa_problem *p, const fa_cuda_device_info *dev, ForwardSplit *plan)
{
    using Tiles = ForwardTiles<D, false, RT>;
    constexpr int BM = Tiles::kBlockM, BN = Tiles::kBlockN;
    const int pack = RT == 1 ? forward_split_pack(p) : 1; /* (forward_kernel's kPackable) */
    const int64_t tiles = (p->seqlen_q * pack + BM - 1) / BM * (p->heads_q / pack) * p->batch;
    *plan = ForwardSplit{tiles, 1, RT, pack, 0};
    if (!forward_split_possible(p, tiles, dev))
        return FA_SUCCESS;
    static int per_sm_of_device[kCachedDevices];
    int per_sm = 0;
    cudaError_t err = resident_per_sm((const void *)forward_kernel<T, D, false, RT>, Tiles::kWarps * 32,
                                      Tiles::kSmemBytes, per_sm_of_device, &per_sm);
    if (err != cudaSuccess)
        return fa_fail(FA_ERROR_DEVICE, "sm80 forward: occupancy: %s", cudaGetErrorString(err));
    const int64_t ctas = (int64_t)per_sm * dev->num_sms;
    if (tiles >= ctas)
        return FA_SUCCESS;
    const int key_blocks = widest_tile_key_blocks(p, (BM + pack - 1) / pack + 1, BN); /* queries per tile */
    const size_t part_bytes = (size_t)BM * (D + 1) * 4;
    int64_t max_parts = (int64_t)(kForwardSplitMaxBytes / part_bytes) / tiles;
    max_parts = max_parts < key_blocks ? max_parts : key_blocks;
    max_parts = max_parts < kForwardSplitMaxParts ? max_parts : kForwardSplitMaxParts;
    const int parts = last_wave_parts(tiles, tiles, ctas, key_blocks, kForwardSplitPartExtra, (int)max_parts,
                                      getenv("FA_SM80_FWD_SPLIT"));
    if (parts > 1)
        *plan = ForwardSplit{tiles, parts, RT, pack, (size_t)(tiles * parts) * part_bytes};
    return FA_SUCCESS;
}

/* The plan with the parts' row tiles for p's query rows. */
template <typename T, int D>
static fa_status plan_forward_split(const fa_problem *p, const fa_cuda_device_info *dev, ForwardSplit *plan)
{
    if constexpr (D <= 128)
        if (p->seqlen_q > 64)
            return plan_forward_split<T, D, 2>(p, dev, plan);
    return plan_forward_split<T, D, 1>(p, dev, plan);
}

/* The key split's two kernels: the parts, then the combine. */
template <typename T, int D, int RT, bool kKvCache>
static fa_status run_forward_split(ForwardArgs &args, const ForwardSplit &split)
{
    using Tiles = ForwardTiles<D, false, RT>;
    constexpr int BM = Tiles::kBlockM;
    cudaStream_t stream = (cudaStream_t)args.p.stream;
    args.heaviest_first = false;
    args.split_parts = split.parts;
    args.pack_gqa = split.pack;
    args.part_o = (float *)args.p.workspace;
    args.part_lse = args.part_o + split.tiles * split.parts * BM * D;
    cudaError_t err = cudaFuncSetAttribute(forward_kernel<T, D, false, RT, kKvCache>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, (int)Tiles::kSmemBytes);
    if (err != cudaSuccess)
        return fa_fail(FA_ERROR_DEVICE, "sm80 forward: cudaFuncSetAttribute: %s", cudaGetErrorString(err));
    forward_kernel<T, D, false, RT, kKvCache>
        <<<(unsigned)(split.tiles * split.parts), Tiles::kWarps * 32, Tiles::kSmemBytes, stream>>>(args);
    fa_status st = check_launch("sm80 forward kernel launch (key split)");
    if (st != FA_SUCCESS)
        return st;
    const int per_tile = combine_blocks_per_tile(args.p.seqlen_q * split.pack, BM, combine_rows(D));
    fa_split_combine_kernel<T, D, BM, ForwardArgs><<<(unsigned)(split.tiles * per_tile), 128, 0, stream>>>(args);
    return check_launch("sm80 forward combine launch");
}

template <typename T, int D, bool kAllOptions, bool kKvCache>
static fa_status launch_forward(fa_problem *p, bool vectorized, const fa_cuda_device_info *dev, bool *split_ran)
{
    using Tiles = ForwardTiles<D, kAllOptions>;
    constexpr int kThreads = Tiles::kWarps * 32;
    cudaStream_t stream = (cudaStream_t)p->stream;
    ForwardArgs args;
    args.p = *p;
    args.vectorized = vectorized;
    const fa_tensor *out[] = {&p->out};
    args.out_vectorized = rows_are_16b_aligned(out, 1, p->varlen) && p->head_dim_v % 8 == 0;
    dim3 grid((unsigned)((p->seqlen_q + Tiles::kBlockM - 1) / Tiles::kBlockM),
              (unsigned)p->heads_q, (unsigned)p->batch);
    if (grid.x == 0 || grid.y == 0 || grid.z == 0)
        return FA_SUCCESS;
    if constexpr (!kAllOptions) {
        ForwardSplit split;
        fa_status st = plan_forward_split<T, D>(p, dev, &split);
        /* a workspace sized for another backend (sm90's query) has no room:
         * no split */
        if (st != FA_SUCCESS || (split.parts > 1 && p->workspace_size >= split.bytes)) {
            if (st == FA_SUCCESS) {
                if constexpr (D <= 128)
                    if (split.row_tiles == 2)
                        st = run_forward_split<T, D, 2, kKvCache>(args, split);
                if (split.row_tiles == 1)
                    st = run_forward_split<T, D, 1, kKvCache>(args, split);
            }
            *split_ran = st == FA_SUCCESS;
            return st;
        }
    }
    /* The K and V that the heads of one batch entry read, against 32 MB of
     * L2 (the sm90 kernel's and FA3's section size). */
    const int64_t kv_bytes = 2 * p->seqlen_k * (p->head_dim + p->head_dim_v) * p->heads_kv;
    args.heaviest_first = !kAllOptions && p->window_right >= 0 && grid.x <= 65535 &&
                          kv_bytes <= ((int64_t)32 << 20);
    if (args.heaviest_first)
        grid = dim3(grid.y, grid.x, grid.z);
    args.split_parts = 1;
    cudaError_t err = cudaFuncSetAttribute(forward_kernel<T, D, kAllOptions, 0, kKvCache>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)Tiles::kSmemBytes);
    if (err != cudaSuccess)
        return fa_fail(FA_ERROR_DEVICE, "sm80 forward: cudaFuncSetAttribute: %s",
                       cudaGetErrorString(err));
    forward_kernel<T, D, kAllOptions, 0, kKvCache><<<grid, kThreads, Tiles::kSmemBytes, stream>>>(args);
    return check_launch("sm80 forward kernel launch");
}

template <typename T, int D>
static fa_status launch_forward(fa_problem *p, bool vectorized, const fa_cuda_device_info *dev, bool *split_ran)
{
    const bool all_options = p->dropout_p > 0.f || p->softcap > 0.f || p->alibi_slopes ||
                             p->block_mask;
    /* (KV-cache problems are lean: fa_sm80_supports) */
    const bool kv_cache = p->seqused_k || p->kv_block_table;
    return all_options ? launch_forward<T, D, true, false>(p, vectorized, dev, split_ran)
           : kv_cache  ? launch_forward<T, D, false, true>(p, vectorized, dev, split_ran)
                       : launch_forward<T, D, false, false>(p, vectorized, dev, split_ran);
}

template <typename T>
static fa_status forward_for_dtype(fa_problem *p, int dp, bool vec, const fa_cuda_device_info *dev, bool *split_ran)
{
    switch (dp) {
    case 64: return launch_forward<T, 64>(p, vec, dev, split_ran);
    case 96: return launch_forward<T, 96>(p, vec, dev, split_ran);
    case 128: return launch_forward<T, 128>(p, vec, dev, split_ran);
    case 192: return launch_forward<T, 192>(p, vec, dev, split_ran);
    default: return launch_forward<T, 256>(p, vec, dev, split_ran);
    }
}

template <typename T>
static fa_status plan_for_head_dim(const fa_problem *p, const fa_cuda_device_info *dev, int dp, ForwardSplit *plan)
{
    switch (dp) {
    case 64: return plan_forward_split<T, 64>(p, dev, plan);
    case 96: return plan_forward_split<T, 96>(p, dev, plan);
    case 128: return plan_forward_split<T, 128>(p, dev, plan);
    case 192: return plan_forward_split<T, 192>(p, dev, plan);
    default: return plan_forward_split<T, 256>(p, dev, plan);
    }
}

/* plan_forward_split for p's dtype and head dim. */
static fa_status plan_for(const fa_problem *p, const fa_cuda_device_info *dev, ForwardSplit *plan)
{
    *plan = ForwardSplit{0, 1, 1, 1, 0};
    if (p->dtype != FA_DTYPE_F16 && p->dtype != FA_DTYPE_BF16)
        return FA_SUCCESS;
    const int dp = padded_head_dim(p->head_dim, p->head_dim_v);
    return p->dtype == FA_DTYPE_BF16 ? plan_for_head_dim<__nv_bfloat16>(p, dev, dp, plan)
                                     : plan_for_head_dim<__half>(p, dev, dp, plan);
}

/* The key split's partial results (plan_forward_split), 256-byte aligned. */
size_t forward_workspace_size(const fa_problem *p, const fa_cuda_device_info *dev)
{
    ForwardSplit plan;
    return plan_for(p, dev, &plan) == FA_SUCCESS ? (plan.bytes + 255) / 256 * 256 : 0;
}

/* The larger of the two variants' smem (what fa_sm80_supports checks). */
template <int D> static constexpr size_t forward_smem_bytes_for()
{
    return ForwardTiles<D, false>::kSmemBytes > ForwardTiles<D, true>::kSmemBytes
               ? ForwardTiles<D, false>::kSmemBytes
               : ForwardTiles<D, true>::kSmemBytes;
}

size_t forward_smem_bytes(int dp)
{
    switch (dp) {
    case 64: return forward_smem_bytes_for<64>();
    case 96: return forward_smem_bytes_for<96>();
    case 128: return forward_smem_bytes_for<128>();
    case 192: return forward_smem_bytes_for<192>();
    default: return forward_smem_bytes_for<256>();
    }
}

} // namespace fa

/* [whole tiles, key split][fp16, bf16][head dim] */
#define FA_FWD_NAMES(suffix)                                                                                   \
    {{"sm80.fwd.hdim64.fp16" suffix, "sm80.fwd.hdim96.fp16" suffix, "sm80.fwd.hdim128.fp16" suffix,             \
      "sm80.fwd.hdim192.fp16" suffix, "sm80.fwd.hdim256.fp16" suffix},                                          \
     {"sm80.fwd.hdim64.bf16" suffix, "sm80.fwd.hdim96.bf16" suffix, "sm80.fwd.hdim128.bf16" suffix,             \
      "sm80.fwd.hdim192.bf16" suffix, "sm80.fwd.hdim256.bf16" suffix}}
static const char *const kForwardNames[2][2][5] = {FA_FWD_NAMES(""), FA_FWD_NAMES(".split")};
#undef FA_FWD_NAMES

extern "C" fa_status fa_sm80_forward(fa_problem *p, const fa_cuda_device_info *dev)
{
    const int dp = fa::padded_head_dim(p->head_dim, p->head_dim_v);
    const fa_tensor *tensors[] = {&p->q, &p->k, &p->v};
    const bool vec = fa::rows_are_16b_aligned(tensors, 3, p->varlen);
    const int is_bf16 = p->dtype == FA_DTYPE_BF16;
    const int dim_index = dp == 64 ? 0 : dp == 96 ? 1 : dp == 128 ? 2 : dp == 192 ? 3 : 4;
    bool split_ran = false;
    fa_status st = is_bf16 ? fa::forward_for_dtype<__nv_bfloat16>(p, dp, vec, dev, &split_ran)
                           : fa::forward_for_dtype<__half>(p, dp, vec, dev, &split_ran);
    if (st == FA_SUCCESS)
        p->kernel_name = kForwardNames[split_ran][is_bf16][dim_index];
    return st;
}

/* Whether the key split runs p on a grid of at most a quarter as many tiles
 * as the GPU has SMs. There it beat the Hopper forward, whose persistent
 * CTAs each walk every key of a tile (H100, bf16, hdim 128: 1 x 32 heads,
 * 1 query row over 16k keys 104 µs against 169; 1 x 16 over 32k 105
 * against 335; at 64 tiles of 256 rows over 8k keys 117 against 94:
 * perf-gpu.md, forward v13). */
extern "C" int fa_sm80_forward_prefers_split(const fa_problem *p, const fa_cuda_device_info *dev)
{
    fa::ForwardSplit plan;
    return fa::plan_for(p, dev, &plan) == FA_SUCCESS && plan.parts > 1 && plan.tiles * 4 <= dev->num_sms;
}
