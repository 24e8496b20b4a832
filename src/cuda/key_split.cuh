/*
 * The key split of a forward (flash-decoding's form), shared by the sm80
 * forward and the Hopper FP8 forward: a grid of fewer tiles than the GPU
 * holds at once (few query rows over long keys: KV-cache decoding) runs
 * each tile as `parts` parts over a share of its key blocks; every part
 * writes its O / l and LSE in fp32 to the workspace, and
 * fa_split_combine_kernel merges them into out and lse.
 *
 * Tiles are numbered as (query block, head, batch), the query block
 * fastest; part j of tile t is slot t · parts + j. Workspace:
 * part_o [slot][BlockM][D] then part_lse [slot][BlockM] (natural log).
 * With GQA packed (pack query heads per KV head, the Hopper FP8 split), a
 * tile's rows are of the pack heads of one group: packed row r is query
 * r / pack of head group · pack + r % pack.
 */
#ifndef FA_CUDA_KEY_SPLIT_CUH
#define FA_CUDA_KEY_SPLIT_CUH

#include "fa_internal.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* The last-wave split's model (sm80 backward v18, forward v13). `tasks`
 * equal tasks of `items` work units (query or key blocks) run on `ctas`
 * resident CTAs; the last `split` of them (tasks mod ctas: the last wave,
 * which runs while the other SMs idle) may instead run as k parts each over
 * a share of the items. A whole task costs items + 1 (its loads and
 * epilogue), a part items / k + extra (the same and its share of combining
 * the parts), and the parts run in ceil(split · k / ctas) rounds. Returns
 * the k in [2, max_parts] with the shortest rounds if they shorten the
 * whole by 1%, else 1. `force` (an environment value, or NULL) sets k
 * instead (tests: small problems then split too). */
static inline int last_wave_parts(int64_t tasks, int64_t split, int64_t ctas, int items, double extra,
                                  int max_parts, const char *force)
{
    if (split <= 0 || ctas <= 0 || max_parts < 2)
        return 1;
    if (force != nullptr) {
        const long k = strtol(force, nullptr, 10);
        return k < 1 ? 1 : k > max_parts ? max_parts : (int)k;
    }
    const double whole = items + 1.0, waves = (double)(tasks / ctas) * whole;
    double best = whole;
    int parts = 1;
    for (int k = 2; k <= max_parts; ++k) {
        const double rounds = (double)((split * k + ctas - 1) / ctas);
        const double last = rounds * ((double)items / k + extra);
        if (last < best) {
            best = last;
            parts = k;
        }
    }
    return waves + best > 0.99 * (waves + whole) ? 1 : parts;
}

/* Key blocks of block_n keys that p's widest tile of `queries` queries
 * walks: every key, or with a window on both sides the queries' windows,
 * plus one block for the alignment (the split's model counts these: a
 * sliding window's tiles see far fewer than seqlen_k). */
static inline int widest_tile_key_blocks(const fa_problem *p, int64_t queries, int block_n)
{
    int64_t keys = p->seqlen_k;
    if (p->window_left >= 0 && p->window_right >= 0 && queries + p->window_left + p->window_right < keys)
        keys = queries + p->window_left + p->window_right + block_n;
    return (int)((keys + block_n - 1) / block_n);
}

/* Batch entry, head and query of row `row` of tile `tile` (fixed lengths;
 * pack query heads per tile row group, 1 for none), for the parts (row 0:
 * the tile's origin) and the combine alike; false where the row lies past
 * the sequence. */
template <int BM>
__device__ __forceinline__ bool split_row_origin(const fa_problem &p, int pack, int64_t tile, int row, int64_t *b,
                                                 int64_t *h, int64_t *i)
{
    const int64_t rows = p.seqlen_q * pack, blocks_m = (rows + BM - 1) / BM, groups = p.heads_q / pack;
    const int64_t r = tile % blocks_m * BM + row;
    *b = tile / blocks_m / groups;
    *h = tile / blocks_m % groups * pack + r % pack;
    *i = r / pack;
    return r < rows;
}

/* Rows per 128-thread block of fa_split_combine_kernel: a power of two. */
__host__ __device__ constexpr int combine_rows(int d)
{
    return 128 / (d / 4) >= 8 ? 8 : 128 / (d / 4) >= 4 ? 4 : 128 / (d / 4) >= 2 ? 2 : 1;
}

/* Blocks of fa_split_combine_kernel per tile: its rows that exist. */
__host__ __device__ inline int combine_blocks_per_tile(int64_t seqlen_q, int block_m, int rows)
{
    return (int)(((seqlen_q < block_m ? seqlen_q : block_m) + rows - 1) / rows);
}

/* Merges the parts of each tile into out and lse, per row:
 * lse = log Σ_j exp(lse_j), out = Σ_j exp(lse_j - lse)·O_j (O_j = the
 * part's O / l), the parts in order, so the result does not depend on
 * their timing. One thread per row and 4 columns: the k float4 loads of a
 * thread are independent, and each row's threads read its k LSEs from L1
 * and compute the weights themselves (no smem, no barrier; one 128-thread
 * block per row tile was 10x slower than the bandwidth: perf-gpu.md,
 * forward v13). A part without keys has lse -inf and weight 0; a row
 * whose parts all have none gets 0 and -inf.
 * Args: p (fa_problem), split_parts, pack_gqa, part_o, part_lse,
 * out_vectorized (16-byte aligned out rows). part_o [slot][BM][D],
 * part_lse [slot][BM] -> out (B, Sq, Hq, dv) of T, lse (B, Hq, Sq).
 * Grid: tiles x combine_blocks_per_tile; 128 threads. */
template <typename T, int D, int BM, class Args>
__global__ void __launch_bounds__(128) fa_split_combine_kernel(const Args args)
{
    constexpr int kChunks = D / 4, kRows = combine_rows(D); /* float4 chunks per row, rows per block */
    static_assert(BM % kRows == 0, "rows per block");
    if (threadIdx.x >= kRows * kChunks)
        return;
    const fa_problem &p = args.p;
    const int parts = args.split_parts, pack = args.pack_gqa;
    const int per_tile = combine_blocks_per_tile(p.seqlen_q * pack, BM, kRows);
    const int64_t tile = blockIdx.x / per_tile;
    const int row = (int)(blockIdx.x % per_tile) * kRows + (int)threadIdx.x / kChunks;
    const int col = (int)(threadIdx.x % kChunks) * 4;
    int64_t b, h, i;
    if (!split_row_origin<BM>(p, pack, tile, row, &b, &h, &i))
        return;
    const int64_t slot_row = tile * parts * BM + row; /* part j's row: slot_row + j·BM */
    const float *lse = args.part_lse + slot_row;
    float top = -INFINITY;
    for (int j = 0; j < parts; ++j)
        top = fmaxf(top, lse[j * BM]);
    float sum = 0.f;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    const float4 *o = reinterpret_cast<const float4 *>(args.part_o + slot_row * D + col);
#pragma unroll 4
    for (int j = 0; j < parts; ++j) {
        const float w = top == -INFINITY ? 0.f : expf(lse[j * BM] - top);
        const float4 oj = o[(int64_t)j * BM * D / 4];
        sum += w;
        acc.x += w * oj.x, acc.y += w * oj.y, acc.z += w * oj.z, acc.w += w * oj.w;
    }
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    const int dv = (int)p.head_dim_v;
    T *out = (T *)p.out.data + fa_row_offset(&p.out, 0, b, i, h) + col;
    union {
        T elem[4];
        uint2 bits;
    } vals;
    vals.elem[0] = T(acc.x * inv), vals.elem[1] = T(acc.y * inv);
    vals.elem[2] = T(acc.z * inv), vals.elem[3] = T(acc.w * inv);
    if (args.out_vectorized && col + 4 <= dv) { /* 16-byte aligned rows */
        *reinterpret_cast<uint2 *>(out) = vals.bits;
    } else {
        for (int c = 0; c < 4 && col + c < dv; ++c)
            out[c] = vals.elem[c];
    }
    if (p.lse && col == 0)
        p.lse[fa_lse_index(0, b, h, i, p.heads_q, p.seqlen_q, p.total_q)] =
            sum > 0.f ? top + logf(sum) : -INFINITY;
}

#endif
