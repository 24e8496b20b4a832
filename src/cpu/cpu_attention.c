/*
 * The CPU backend: FlashAttention forward and backward (Dao et al., FA1
 * Algorithms 1/2 with FA2's loop order), multithreaded with OpenMP,
 * vectorized through the micro-kernels of cpu_kernels.h.
 *
 * Tiling. A query tile holds TILE_Q rows, a key tile TILE_K keys; every tile
 * is converted to fp32 scratch (scaled, zero-padded to FA_CPU_MAX_VEC
 * floats) so that all arithmetic is fp32 whatever the dtype. The score tile
 * TILE_Q × TILE_K and the operand panels stay in L1/L2. Scores are kept in
 * log2 units (Q is pre-scaled by softmax_scale·log2(e)) so the softmax is
 * 2^(s - max); the LSE is stored in natural log.
 *
 * Forward: parallel over (batch, query head, query tile). For one query tile
 * Qᵀ is packed once (head_dim × TILE_Q); each key tile gives Sᵀ = K·Qᵀ
 * (keys × queries, so the online-softmax max/sum over keys are vertical
 * vector operations), then O += P·V with P read transposed in place. The
 * running max/sum rescale O only when the max moved. Key tiles outside the
 * window or switched off in the block mask are skipped without work; masks
 * are evaluated per element only in tiles that straddle a boundary.
 *
 * Backward, deterministic by construction (no atomics, no reduction whose
 * order depends on scheduling), in three passes:
 *   0. D = rowsum(dO ∘ O) per query row, into the workspace; the partial
 *      dQ buffers (below) zeroed.
 *   1. parallel over (batch, kv head, chunk of key tiles): for each key tile
 *      of the chunk, Kᵀ, Vᵀ, K packed once; for every query head of the GQA
 *      group and every query tile that can see the key tile: recompute
 *      S = Q·Kᵀ and P = 2^(S - lse) from the saved LSE, dP = dO·Vᵀ,
 *      dS = P∘(dP - D); accumulate dV += Pᵀ·dO and dK += dSᵀ·Q in fp32
 *      (stored once per key tile) and dQ += dS·K into the chunk's own fp32
 *      partial dQ. 5 tile products per tile pair, S and dP computed once.
 *   2. parallel over (batch, query head): dQ = the sum of the chunks'
 *      partials, in chunk order, converted and stored.
 * Key tile t belongs to chunk t % dq_chunks(p), a function of the problem
 * alone: which sums happen, and in which order, does not depend on the
 * thread count or the schedule, so any number of threads gives the same
 * bits. Interleaving the tiles balances the chunks under causal masking.
 *
 * Workspace (bytes): 64 (alignment) + num_threads · per-thread tiles (see
 * scratch_layout; independent of the sequence lengths) + for the backward
 * 4 · heads_q · total_q (rounded up to 64 bytes) for D and
 * 4 · dq_chunks · heads_q · total_q · head_dim (padded to 16) for the
 * partial dQ: O(N), at most DQ_CHUNKS_MAX copies of dQ in fp32.
 */
#include "cpu_kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#  include <omp.h>
#else
#  include <unistd.h>
#endif

#define FA_LOG2E 1.44269504088896340736f
#define FA_LN2 0.69314718055994530942f

/* Query rows and keys per tile. Multiples of FA_CPU_MAX_VEC. 64 × 64 fp32
 * score tiles are 16 KiB, and with head_dim <= 128 a packed operand panel
 * is at most 32 KiB: the working set of one tile pair fits L2 with the
 * register-blocked panels streaming from L1. */
enum { TILE_Q = 64, TILE_K = 64 };

/* The backward's chunks of key tiles per (batch, kv head): enough for about
 * DQ_TASKS parallel tasks in pass 1, at most DQ_CHUNKS_MAX (each chunk is
 * one fp32 copy of dQ in the workspace). */
enum { DQ_TASKS = 64, DQ_CHUNKS_MAX = 8 };

static int64_t round_up(int64_t x, int64_t to)
{
    return (x + to - 1) / to * to;
}

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* ---------------------------------------------------------------------- */
/* ISA dispatch                                                            */

/*
 * The micro-kernels for this call: the widest ISA the CPU supports
 * (AVX-512 F/BW/VL/DQ, else AVX2+FMA+F16C, else portable C), capped by the
 * environment variable FA_CPU_ISA = scalar | avx2 | avx512. The cap is read
 * on every call, so tests can exercise every path in one process; asking
 * for more than the CPU has, or an unknown value, leaves the detected ISA.
 */
static const fa_cpu_kernels *cpu_kernels(void)
{
    const fa_cpu_kernels *best = &fa_cpu_kernels_scalar;
#ifdef FA_CPU_HAVE_X86
    __builtin_cpu_init();
    /* F16C predates AVX2 (Ivy Bridge, Piledriver), so every AVX2 CPU has
     * it; not every compiler's __builtin_cpu_supports knows "f16c". */
    int has_avx2 = __builtin_cpu_supports("avx2") &&
                   __builtin_cpu_supports("fma");
    int has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f") &&
                     __builtin_cpu_supports("avx512bw") &&
                     __builtin_cpu_supports("avx512vl") &&
                     __builtin_cpu_supports("avx512dq");
    if (has_avx512)
        best = &fa_cpu_kernels_avx512;
    else if (has_avx2)
        best = &fa_cpu_kernels_avx2;
    const char *cap = getenv("FA_CPU_ISA");
    if (cap && strcmp(cap, "scalar") == 0)
        best = &fa_cpu_kernels_scalar;
    else if (cap && strcmp(cap, "avx2") == 0 && has_avx2)
        best = &fa_cpu_kernels_avx2;
#endif
    return best;
}

const char *fa_cpu_isa(void)
{
    return cpu_kernels()->kernel_name + 4; /* past "cpu." */
}

int fa_cpu_num_cores(void)
{
#ifdef _OPENMP
    return omp_get_num_procs();
#else
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
#endif
}

/* ---------------------------------------------------------------------- */
/* Scratch                                                                 */

/* One thread's fp32 tiles. The forward uses q_t, k, v, s, acc, row and the
 * vectors; the backward all but q_t and v (a buffer a direction does not
 * use has size 0). d = head_dim, dv = head_dim_v, dp / dvp padded to
 * FA_CPU_MAX_VEC. */
typedef struct scratch {
    float *q_t;     /* d × TILE_Q: Qᵀ, scaled (forward) */
    float *q;       /* TILE_Q × dp: Q, scaled */
    float *dout;    /* TILE_Q × dvp: dO */
    float *k;       /* TILE_K × dp: K */
    float *v;       /* TILE_K × dvp: V (forward) */
    float *k_t;     /* d × TILE_K: Kᵀ */
    float *v_t;     /* dv × TILE_K: Vᵀ */
    float *s;       /* TILE_Q·TILE_K: scores, then probabilities */
    float *dp;      /* TILE_Q·TILE_K: dP, then dS */
    float *tanh_s;  /* TILE_Q·TILE_K: tanh(s / softcap), for its gradient */
    float *p_drop;  /* TILE_Q·TILE_K: P with dropout applied */
    float *acc;     /* TILE_Q × dvp: O (forward); one row of O (backward) */
    float *acc_dk;  /* TILE_K × dp */
    float *acc_dv;  /* TILE_K × dvp */
    float *row;     /* max(dp, dvp): one converted row */
    float *vec[4];  /* TILE_Q each: row max / sum / bias / alpha, LSE / D */
} scratch;

/* Lays out one thread's scratch from base (NULL: sizes only); returns its
 * size in floats, every buffer 64-byte aligned if base is. */
static size_t scratch_layout(const fa_problem *p, fa_direction dir,
                             float *base, scratch *sc)
{
    int64_t d = p->head_dim, dv = p->head_dim_v;
    int64_t dp = round_up(d, FA_CPU_MAX_VEC), dvp = round_up(dv, FA_CPU_MAX_VEC);
    int bwd = dir == FA_BACKWARD;
    size_t used = 0;
#define CARVE(field, floats)                                                  \
    do {                                                                      \
        size_t n_ = (size_t)round_up((int64_t)(floats), FA_CPU_MAX_VEC);      \
        sc->field = base ? base + used : NULL;                                \
        used += n_;                                                           \
    } while (0)
    CARVE(q_t, bwd ? 0 : d * TILE_Q);
    CARVE(q, bwd ? TILE_Q * dp : 0);
    CARVE(dout, bwd ? TILE_Q * dvp : 0);
    CARVE(k, TILE_K * dp);
    CARVE(v, bwd ? 0 : TILE_K * dvp);
    CARVE(k_t, bwd ? d * TILE_K : 0);
    CARVE(v_t, bwd ? dv * TILE_K : 0);
    CARVE(s, TILE_Q * TILE_K);
    CARVE(dp, bwd ? TILE_Q * TILE_K : 0);
    CARVE(tanh_s, bwd && p->softcap > 0 ? TILE_Q * TILE_K : 0);
    CARVE(p_drop, bwd && p->dropout_p > 0 ? TILE_Q * TILE_K : 0);
    CARVE(acc, (bwd ? 1 : TILE_Q) * dvp);
    CARVE(acc_dk, bwd ? TILE_K * dp : 0);
    CARVE(acc_dv, bwd ? TILE_K * dvp : 0);
    CARVE(row, dp > dvp ? dp : dvp);
    for (int i = 0; i < 4; ++i)
        CARVE(vec[i], TILE_Q);
#undef CARVE
    return used;
}

/* Floats of the backward's D array (laid out as lse), first in the
 * workspace. */
static size_t delta_floats(const fa_problem *p)
{
    return (size_t)round_up(p->heads_q * p->total_q, FA_CPU_MAX_VEC);
}

/* Chunks of key tiles per (batch, kv head) in the backward: a function of
 * the shape only, never of the thread count (see the top comment). */
static int64_t dq_chunks(const fa_problem *p)
{
    int64_t k_tiles = (p->seqlen_k + TILE_K - 1) / TILE_K;
    int64_t kv_heads = p->batch * p->heads_kv;
    int64_t chunks = kv_heads > 0 ? (DQ_TASKS + kv_heads - 1) / kv_heads : 1;
    chunks = min64(chunks, min64(DQ_CHUNKS_MAX, k_tiles));
    return chunks < 1 ? 1 : chunks;
}

/* Floats of one chunk's partial dQ, laid out as lse with rows of dp floats,
 * after D. */
static size_t dq_partial_floats(const fa_problem *p)
{
    return (size_t)(p->heads_q * p->total_q *
                    round_up(p->head_dim, FA_CPU_MAX_VEC));
}

/* Floats of the backward's shared arrays, before the threads' scratch. */
static size_t backward_shared_floats(const fa_problem *p)
{
    return delta_floats(p) + (size_t)dq_chunks(p) * dq_partial_floats(p);
}

size_t fa_cpu_workspace_size(const fa_problem *p, fa_direction dir)
{
    scratch unused;
    size_t per_thread = scratch_layout(p, dir, NULL, &unused) * sizeof(float);
    size_t bytes = 64 + (size_t)p->num_threads * per_thread;
    if (dir == FA_BACKWARD)
        bytes += backward_shared_floats(p) * sizeof(float);
    return bytes;
}

/* The 64-byte aligned start of the workspace. */
static float *workspace_base(const fa_problem *p)
{
    uintptr_t a = ((uintptr_t)p->workspace + 63) & ~(uintptr_t)63;
    return (float *)a;
}

/* Thread tid's scratch, after `skip` floats of shared data. */
static scratch thread_scratch(const fa_problem *p, fa_direction dir,
                              size_t skip, int tid)
{
    scratch sc;
    size_t per_thread = scratch_layout(p, dir, NULL, &sc);
    scratch_layout(p, dir, workspace_base(p) + skip + (size_t)tid * per_thread,
                   &sc);
    return sc;
}

static int thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* ---------------------------------------------------------------------- */
/* One (batch, query head): sequence, masks, modifiers                     */

typedef struct head_ctx {
    const fa_problem *p;
    int64_t b, h;
    fa_seq seq;
    float alibi_slope;          /* 0: no ALiBi */
    const uint8_t *block_mask;  /* (blocks_q, blocks_k) of this (b, h); NULL */
    fa_cpu_dropout dropout;     /* its dropout stream */
} head_ctx;

static head_ctx head_context(const fa_problem *p, int64_t b, int64_t h)
{
    head_ctx hc;
    hc.p = p;
    hc.b = b;
    hc.h = h;
    hc.seq = fa_seq_of(p->varlen, p->cu_seqlens_q_host, p->cu_seqlens_k_host,
                       p->seqused_k_host, p->seqlen_q, p->seqlen_k, b);
    hc.alibi_slope = p->alibi_slopes
                         ? p->alibi_slopes[b * p->alibi_stride_batch + h]
                         : 0.0f;
    hc.block_mask = p->block_mask ? p->block_mask +
                                        b * p->block_mask_stride_batch +
                                        h * p->block_mask_stride_head
                                  : NULL;
    uint64_t sub = fa_dropout_subsequence(p->dropout_offset, p->heads_q, b, h);
    hc.dropout.key[0] = (uint32_t)p->dropout_seed;
    hc.dropout.key[1] = (uint32_t)(p->dropout_seed >> 32);
    hc.dropout.sub[0] = (uint32_t)sub;
    hc.dropout.sub[1] = (uint32_t)(sub >> 32);
    hc.dropout.threshold = fa_dropout_threshold(p->dropout_p);
    return hc;
}

static void window_of(const head_ctx *hc, int64_t i, int64_t *lo, int64_t *hi)
{
    fa_window_range(i, hc->seq.sq, hc->seq.sk, hc->p->window_left,
                    hc->p->window_right, lo, hi);
}

enum { TILE_EMPTY, TILE_PARTIAL, TILE_FULL };

/* Whether queries [i0, i1) × keys [j0, j1) have no visible pair (skip the
 * tile), all pairs visible (no per-element mask), or some. Window ranges are
 * nondecreasing in i, so the first and last rows bound the tile. */
static int tile_visibility(const head_ctx *hc, int64_t i0, int64_t i1,
                           int64_t j0, int64_t j1)
{
    int64_t lo_first, hi_first, lo_last, hi_last;
    window_of(hc, i0, &lo_first, &hi_first);
    window_of(hc, i1 - 1, &lo_last, &hi_last);
    if (j0 >= hi_last || j1 <= lo_first)
        return TILE_EMPTY;
    int full = j0 >= lo_last && j1 <= hi_first;
    if (hc->block_mask) {
        const fa_problem *p = hc->p;
        int any = 0, all = 1;
        for (int64_t qb = i0 / p->block_size_q; qb <= (i1 - 1) / p->block_size_q; ++qb)
            for (int64_t kb = j0 / p->block_size_k; kb <= (j1 - 1) / p->block_size_k; ++kb) {
                int on = hc->block_mask[qb * p->block_mask_blocks_k + kb] != 0;
                any |= on;
                all &= on;
            }
        if (!any)
            return TILE_EMPTY;
        full = full && all;
    }
    return full ? TILE_FULL : TILE_PARTIAL;
}

/* Geometry of a score tile: queries [i0, i0 + m) × keys [j0, j0 + n), stored
 * with row stride ld either keys-major (Sᵀ: a row per key) or queries-major
 * (S: a row per query). The vector kernels run over rows × cols, cols
 * padded to the vector width; element (qi, kj) is at qi*q_stride +
 * kj*k_stride. */
typedef struct tile_geom {
    int64_t i0, m, j0, n;
    int keys_major;
    int64_t rows, cols, ld, q_stride, k_stride;
} tile_geom;

static tile_geom tile_geometry(int64_t i0, int64_t m, int64_t j0, int64_t n,
                               int keys_major, int64_t ld, int vec_width)
{
    tile_geom g;
    g.i0 = i0;
    g.m = m;
    g.j0 = j0;
    g.n = n;
    g.keys_major = keys_major;
    g.rows = keys_major ? n : m;
    g.cols = round_up(keys_major ? m : n, vec_width);
    g.ld = ld;
    g.q_stride = keys_major ? 1 : ld;
    g.k_stride = keys_major ? ld : 1;
    return g;
}

/* x[at .. at + count) = -inf: masked pairs; tanh_s (if not NULL) 0 there. */
static void mask_span(float *x, float *tanh_s, int64_t at, int64_t count)
{
    for (int64_t t = 0; t < count; ++t)
        x[at + t] = -INFINITY;
    if (tanh_s)
        memset(tanh_s + at, 0, sizeof(float) * (size_t)(count > 0 ? count : 0));
}

/*
 * Masks the invisible pairs of a tile x (layout g) row by row, as spans of
 * contiguous columns. The window makes row r see the columns
 * [band_lo + r, band_hi + r) (a diagonal band in either layout, from the
 * linear bounds of fa_window_range; keys outside [0, sk) are not in any
 * tile); the block mask switches off whole column blocks of the row.
 */
static void mask_tile(const head_ctx *hc, const tile_geom *g, float *x,
                      float *tanh_s)
{
    const fa_problem *p = hc->p;
    int64_t shift = hc->seq.sk - hc->seq.sq;
    int64_t unbounded = INT64_MAX / 4;
    int64_t left = p->window_left < 0 ? unbounded : p->window_left;
    int64_t right = p->window_right < 0 ? unbounded : p->window_right;
    /* Keys-major: query i = i0 + c sees key j = j0 + r iff
     * j - shift - right <= i <= j - shift + left; queries-major: key
     * j = j0 + c is seen by i = i0 + r iff i + shift - left <= j <=
     * i + shift + right. */
    int64_t diag = g->keys_major ? g->j0 - g->i0 - shift : g->i0 + shift - g->j0;
    int64_t band_lo = diag - (g->keys_major ? right : left);
    int64_t band_hi = diag + (g->keys_major ? left : right) + 1;
    int64_t valid = g->keys_major ? g->m : g->n; /* columns of real pairs */
    /* Block mask element (qb, kb) is at qb·blocks_k + kb. */
    int64_t row0 = g->keys_major ? g->j0 : g->i0, col0 = g->keys_major ? g->i0 : g->j0;
    int64_t row_block = g->keys_major ? p->block_size_k : p->block_size_q;
    int64_t col_block = g->keys_major ? p->block_size_q : p->block_size_k;
    int64_t row_stride = g->keys_major ? 1 : p->block_mask_blocks_k;
    int64_t col_stride = g->keys_major ? p->block_mask_blocks_k : 1;
    for (int64_t r = 0; r < g->rows; ++r) {
        int64_t lo = band_lo + r, hi = band_hi + r;
        lo = lo < 0 ? 0 : min64(lo, valid);
        hi = hi < lo ? lo : min64(hi, valid);
        mask_span(x, tanh_s, r * g->ld, lo);
        mask_span(x, tanh_s, r * g->ld + hi, valid - hi);
        if (!hc->block_mask)
            continue;
        const uint8_t *blocks = hc->block_mask + (row0 + r) / row_block * row_stride;
        for (int64_t c = 0; c < valid;) {
            int64_t cb = (col0 + c) / col_block;
            int64_t end = min64((cb + 1) * col_block - col0, valid);
            if (!blocks[cb * col_stride])
                mask_span(x, tanh_s, r * g->ld + c, end - c);
            c = end;
        }
    }
}

/*
 * Modifies and masks a tile of scores x (log2 units, layout g): softcap and
 * ALiBi through the vector kernel (tanh_s, if not NULL, receives
 * tanh(s/softcap), the factor of the softcap gradient); then, unless the
 * tile is fully visible, invisible pairs become -inf (and tanh_s 0).
 */
static void modify_scores(const fa_cpu_kernels *kern, const head_ctx *hc,
                          const tile_geom *g, float *x, int full,
                          float *tanh_s)
{
    const fa_problem *p = hc->p;
    int64_t shift = hc->seq.sk - hc->seq.sq;
    if (p->softcap > 0 || hc->alibi_slope != 0) {
        /* ALiBi distance i + shift - j = (i0 + shift - j0) + qi - kj. */
        float row_step = g->keys_major ? -1.0f : 1.0f;
        kern->score_mods(x, g->rows, g->cols, g->ld, p->softcap * FA_LOG2E,
                         tanh_s, hc->alibi_slope * FA_LOG2E,
                         (float)(g->i0 + shift - g->j0), row_step, -row_step);
    }
    if (!full)
        mask_tile(hc, g, x, tanh_s);
}

/* The softcap chain rule: ds (layout g) *= 1 - tanh². */
static void softcap_grad(const tile_geom *g, float *ds, const float *tanh_s)
{
    for (int64_t r = 0; r < g->rows; ++r)
        for (int64_t c = 0; c < g->cols; ++c)
            ds[r * g->ld + c] *= 1.0f - tanh_s[r * g->ld + c] * tanh_s[r * g->ld + c];
}

/* Dropout over a tile (layout g): dst = src · kept_scale where
 * fa_dropout_keep() keeps the element, else 0; dst may be src. If `also` is
 * not NULL it gets the same mask and scale in place (one Philox stream
 * serves both). The queries-major layout needs j0 % 4 == 0: its tiles start
 * at multiples of TILE_K. */
static void apply_dropout(const fa_cpu_kernels *kern, const head_ctx *hc,
                          const tile_geom *g, float *dst, const float *src,
                          float *also, float kept_scale)
{
    kern->dropout(dst, src, also, g->rows, g->cols, g->ld, g->keys_major,
                  g->i0, g->j0, &hc->dropout, kept_scale);
}

/* ---------------------------------------------------------------------- */
/* Tile loads and stores                                                   */

/* The dtype of tensor t of p: out (and dout) are bf16 in an FP8 forward. */
static fa_dtype tensor_dtype(const fa_problem *p, const fa_tensor *t)
{
    return t == &p->out || t == &p->dout ? fa_out_dtype(p->dtype) : p->dtype;
}

static const void *row_at(const fa_problem *p, const fa_tensor *t, int64_t b,
                          int64_t row, int64_t head)
{
    return (const char *)t->data +
           fa_row_offset(t, p->varlen, b, row, head) *
               (int64_t)fa_dtype_size(tensor_dtype(p, t));
}

/* The FP8 descale of row `row` (within its sequence) of (b, head), from an
 * array of (batch, heads, blocks) with `block` rows per block; 1 without. */
static float row_descale(const float *descale, int64_t heads, int64_t blocks,
                         int64_t block, int64_t b, int64_t head, int64_t row)
{
    return descale ? descale[(b * heads + head) * blocks + row / block] : 1.0f;
}

/* dst (rows × cols_pad, row stride cols_pad) = scale · t[b, row0.., head, :cols]. */
static void load_rows(const fa_cpu_kernels *kern, const fa_problem *p,
                      float *dst, const fa_tensor *t, int64_t b, int64_t row0,
                      int64_t rows, int64_t head, int64_t cols,
                      int64_t cols_pad, float scale)
{
    for (int64_t r = 0; r < rows; ++r)
        kern->load_row(dst + r * cols_pad, row_at(p, t, b, row0 + r, head),
                       p->dtype, cols, cols_pad, scale);
}

/* dst (rows × cols_pad) = keys [j0, j0 + rows) of k or v (t) of hc's
 * sequence in K/V head `head`: strided rows, or a paged cache's (the
 * forward's loads; a backward has no pages). */
static void load_kv_rows(const fa_cpu_kernels *kern, const head_ctx *hc,
                         float *dst, const fa_tensor *t, int64_t j0,
                         int64_t rows, int64_t head, int64_t cols,
                         int64_t cols_pad)
{
    const fa_problem *p = hc->p;
    for (int64_t r = 0; r < rows; ++r) {
        int64_t at = fa_kv_row_offset(t, p->varlen, p->kv_block_table,
                                      p->kv_block_table_stride, p->kv_page_size,
                                      hc->b, hc->seq.k0, j0 + r, head);
        const float *descale = t == &p->k ? p->k_descale : p->v_descale;
        kern->load_row(dst + r * cols_pad,
                       (const char *)t->data + at * (int64_t)fa_dtype_size(p->dtype),
                       p->dtype, cols, cols_pad,
                       row_descale(descale, p->heads_kv, p->descale_blocks_k,
                                   p->descale_block_k, hc->b, head, j0 + r));
    }
}

/* dst (cols × ld) = the transpose of scale · t[b, row0.., head, :cols], with
 * columns rows..rows_pad zero. row is cols floats of scratch. */
static void load_rows_transposed(const fa_cpu_kernels *kern,
                                 const fa_problem *p, float *dst, int64_t ld,
                                 float *row, const fa_tensor *t, int64_t b,
                                 int64_t row0, int64_t rows, int64_t rows_pad,
                                 int64_t head, int64_t cols, float scale)
{
    for (int64_t r = 0; r < rows; ++r) {
        kern->load_row(row, row_at(p, t, b, row0 + r, head), p->dtype, cols,
                       cols, scale);
        for (int64_t c = 0; c < cols; ++c)
            dst[c * ld + r] = row[c];
    }
    for (int64_t c = 0; c < cols; ++c)
        for (int64_t r = rows; r < rows_pad; ++r)
            dst[c * ld + r] = 0.0f;
}

/* t[b, row0.., head, :cols] = scale · src (rows × ld). */
static void store_rows(const fa_cpu_kernels *kern, const fa_problem *p,
                       const fa_tensor *t, int64_t b, int64_t row0,
                       int64_t rows, int64_t head, int64_t cols,
                       const float *src, int64_t ld, float scale)
{
    for (int64_t r = 0; r < rows; ++r)
        kern->store_row((void *)row_at(p, t, b, row0 + r, head), src + r * ld,
                        tensor_dtype(p, t), cols, scale);
}

/* ---------------------------------------------------------------------- */
/* Forward                                                                 */

/* out and lse of query rows [i0, i0 + TILE_Q) of (b, h).
 * q (B, Sq, Hq, D), k (B, Sk, Hkv, D), v (B, Sk, Hkv, Dv) -> out (B, Sq, Hq, Dv) */
static void forward_tile(const fa_problem *p, const fa_cpu_kernels *kern,
                         const scratch *sc, int64_t b, int64_t h, int64_t i0)
{
    head_ctx hc = head_context(p, b, h);
    if (i0 >= hc.seq.sq)
        return;
    int64_t hk = h / (p->heads_q / p->heads_kv);
    int64_t d = p->head_dim, dv = p->head_dim_v;
    int64_t dp = round_up(d, FA_CPU_MAX_VEC), dvp = round_up(dv, FA_CPU_MAX_VEC);
    int64_t m = min64(TILE_Q, hc.seq.sq - i0);
    int64_t cols = round_up(m, kern->vec_width); /* query columns of Sᵀ */
    float *row_max = sc->vec[0], *row_sum = sc->vec[1];
    float *bias = sc->vec[2], *tile_max = sc->vec[3];

    load_rows_transposed(kern, p, sc->q_t, TILE_Q, sc->row, &p->q, b,
                         hc.seq.q0 + i0, m, cols, h, d,
                         p->softmax_scale * FA_LOG2E);
    for (int64_t qi = 0; p->q_descale && qi < m; ++qi) { /* column qi of Qᵀ */
        float descale = row_descale(p->q_descale, p->heads_q, p->descale_blocks_q,
                                    p->descale_block_q, b, h, i0 + qi);
        for (int64_t c = 0; c < d; ++c)
            sc->q_t[c * TILE_Q + qi] *= descale;
    }
    for (int64_t qi = 0; qi < cols; ++qi) {
        row_max[qi] = -INFINITY;
        row_sum[qi] = 0.0f;
    }
    memset(sc->acc, 0, sizeof(float) * (size_t)(m * dvp));

    int64_t lo, hi, unused;
    window_of(&hc, i0, &lo, &unused);
    window_of(&hc, i0 + m - 1, &unused, &hi);
    for (int64_t j0 = lo; j0 < hi; j0 += TILE_K) {
        int64_t n = min64(TILE_K, hi - j0);
        int vis = tile_visibility(&hc, i0, i0 + m, j0, j0 + n);
        if (vis == TILE_EMPTY)
            continue;
        load_kv_rows(kern, &hc, sc->k, &p->k, j0, n, hk, d, dp);
        load_kv_rows(kern, &hc, sc->v, &p->v, j0, n, hk, dv, dvp);
        /* Sᵀ (n × cols) = K (n × d) · Qᵀ (d × cols) */
        kern->gemm(n, cols, d, sc->k, dp, 1, sc->q_t, TILE_Q, sc->s, TILE_Q, 0);
        tile_geom g = tile_geometry(i0, m, j0, n, 1, TILE_Q, kern->vec_width);
        modify_scores(kern, &hc, &g, sc->s, vis == TILE_FULL, NULL);

        /* Online softmax: new max per query; scale the old sum and O by
         * 2^(old max - new max). A query with no visible key yet keeps max
         * -inf and uses bias 0, so its probabilities are 2^-inf = 0. */
        for (int64_t qi = 0; qi < cols; ++qi)
            tile_max[qi] = -INFINITY;
        kern->col_max(sc->s, n, cols, TILE_Q, tile_max);
        for (int64_t qi = 0; qi < cols; ++qi) {
            float new_max = fmaxf(row_max[qi], tile_max[qi]);
            bias[qi] = new_max == -INFINITY ? 0.0f : new_max;
            float alpha = exp2f(row_max[qi] - bias[qi]);
            row_max[qi] = new_max;
            row_sum[qi] *= alpha;
            if (qi < m && alpha != 1.0f)
                kern->scale_row(sc->acc + qi * dvp, dvp, alpha);
        }
        kern->exp2_bias(sc->s, n, cols, TILE_Q, NULL, bias, row_sum);
        /* The sum is of the undropped probabilities (the LSE ignores
         * dropout); the 1/(1-p) of kept ones is applied at the end. */
        if (p->dropout_p > 0)
            apply_dropout(kern, &hc, &g, sc->s, sc->s, NULL, 1.0f);
        /* O (m × dvp) += P (m × n, read from Sᵀ) · V (n × dvp) */
        kern->gemm(m, dvp, n, sc->s, 1, TILE_Q, sc->v, dvp, sc->acc, dvp, 1);
    }

    float keep_scale = 1.0f / (1.0f - p->dropout_p);
    for (int64_t qi = 0; qi < m; ++qi) {
        int64_t row = hc.seq.q0 + i0 + qi;
        float l = row_sum[qi];
        /* l >= 1 for a row with any visible key; 0 means fully masked. */
        store_rows(kern, p, &p->out, b, row, 1, h, dv, sc->acc + qi * dvp, dvp,
                   l > 0 ? keep_scale / l : 0.0f);
        if (p->lse)
            p->lse[fa_lse_index(p->varlen, b, h, row, p->heads_q, p->seqlen_q,
                                p->total_q)] =
                l > 0 ? row_max[qi] * FA_LN2 + logf(l) : -INFINITY;
    }
}


fa_status fa_cpu_forward(fa_problem *p)
{
    const fa_cpu_kernels *kern = cpu_kernels();
    p->kernel_name = kern->kernel_name;
    int64_t q_tiles = (p->seqlen_q + TILE_Q - 1) / TILE_Q;
    int64_t items = p->batch * p->heads_q * q_tiles;
    if (items == 0)
        return FA_SUCCESS;
#pragma omp parallel num_threads(p->num_threads)
    {
        scratch sc = thread_scratch(p, FA_FORWARD, 0, thread_id());
        /* Dynamic: causal and windowed tiles differ in cost. The last query
         * tile (the most keys under causal masking) of each head goes first. */
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < items; ++item) {
            int64_t bh = item / q_tiles, tile = q_tiles - 1 - item % q_tiles;
            forward_tile(p, kern, &sc, bh / p->heads_q, bh % p->heads_q,
                         tile * TILE_Q);
        }
    }
    return FA_SUCCESS;
}

/* ---------------------------------------------------------------------- */
/* Backward                                                                */

/* Pass 0: delta[row] = rowsum(dO ∘ O) for every query row of (b, h), and
 * its rows of every chunk's partial dQ zeroed.
 * out, dout (B, Sq, Hq, Dv) -> delta laid out as lse. */
static void backward_delta(const fa_problem *p, const fa_cpu_kernels *kern,
                           const scratch *sc, float *delta, float *dq_partial,
                           int64_t b, int64_t h)
{
    head_ctx hc = head_context(p, b, h);
    int64_t dv = p->head_dim_v;
    int64_t dp = round_up(p->head_dim, FA_CPU_MAX_VEC);
    int64_t first = fa_lse_index(p->varlen, b, h, hc.seq.q0, p->heads_q,
                                 p->seqlen_q, p->total_q);
    for (int64_t c = 0; c < dq_chunks(p); ++c)
        memset(dq_partial + c * dq_partial_floats(p) + first * dp, 0,
               sizeof(float) * (size_t)(hc.seq.sq * dp));
    float *o = sc->acc, *dout = sc->row;
    for (int64_t i = 0; i < hc.seq.sq; ++i) {
        int64_t row = hc.seq.q0 + i;
        kern->load_row(o, row_at(p, &p->out, b, row, h), p->dtype, dv, dv, 1.0f);
        kern->load_row(dout, row_at(p, &p->dout, b, row, h), p->dtype, dv, dv, 1.0f);
        float sum = 0.0f;
        for (int64_t c = 0; c < dv; ++c)
            sum += o[c] * dout[c];
        delta[fa_lse_index(p->varlen, b, h, row, p->heads_q, p->seqlen_q,
                           p->total_q)] = sum;
    }
}

/* The saved LSE in log2 units and D of query rows [i0, i0+m) into lse2 and
 * d_row, padded to `cols` with +inf / 0 (probability 0). A fully masked row
 * (lse -inf) gets +inf too: every probability of it is 0. */
static void load_row_stats(const fa_problem *p, const head_ctx *hc,
                           const float *delta, int64_t i0, int64_t m,
                           int64_t cols, float *lse2, float *d_row)
{
    for (int64_t qi = 0; qi < cols; ++qi) {
        lse2[qi] = INFINITY;
        d_row[qi] = 0.0f;
        if (qi >= m)
            continue;
        int64_t at = fa_lse_index(p->varlen, hc->b, hc->h, hc->seq.q0 + i0 + qi,
                                  p->heads_q, p->seqlen_q, p->total_q);
        if (p->lse[at] != -INFINITY)
            lse2[qi] = p->lse[at] * FA_LOG2E;
        d_row[qi] = delta[at];
    }
}

/* Pass 1: dK and dV of keys [j0, j0 + TILE_K) of (b, kv head hk), summed
 * over the query heads of the group, and these keys' share of dQ added to
 * dq_partial (one chunk's partial dQ: rows laid out as lse, dp floats each).
 * q (B, Sq, Hq, D), k (B, Sk, Hkv, D), dout (B, Sq, Hq, Dv)
 *   -> dk (B, Sk, Hkv, D), dv (B, Sk, Hkv, Dv), dq_partial += dS·K */
static void backward_kv_tile(const fa_problem *p, const fa_cpu_kernels *kern,
                             const scratch *sc, const float *delta,
                             float *dq_partial, int64_t b, int64_t hk,
                             int64_t j0)
{
    head_ctx hc = head_context(p, b, hk * (p->heads_q / p->heads_kv));
    if (j0 >= hc.seq.sk)
        return;
    int64_t d = p->head_dim, dv = p->head_dim_v;
    int64_t dp = round_up(d, FA_CPU_MAX_VEC), dvp = round_up(dv, FA_CPU_MAX_VEC);
    int64_t n = min64(TILE_K, hc.seq.sk - j0);
    int64_t cols = round_up(n, kern->vec_width); /* key columns of S */
    float *lse2 = sc->vec[0], *d_row = sc->vec[1];
    float keep_scale = 1.0f / (1.0f - p->dropout_p);

    load_rows_transposed(kern, p, sc->k_t, TILE_K, sc->row, &p->k, b,
                         hc.seq.k0 + j0, n, cols, hk, d, 1.0f);
    load_rows_transposed(kern, p, sc->v_t, TILE_K, sc->row, &p->v, b,
                         hc.seq.k0 + j0, n, cols, hk, dv, 1.0f);
    load_rows(kern, p, sc->k, &p->k, b, hc.seq.k0 + j0, n, hk, d, dp, 1.0f);
    memset(sc->acc_dk, 0, sizeof(float) * (size_t)(n * dp));
    memset(sc->acc_dv, 0, sizeof(float) * (size_t)(n * dvp));

    /* Query rows whose window reaches these keys. */
    int64_t shift = hc.seq.sk - hc.seq.sq;
    int64_t i_lo = p->window_right >= 0 ? j0 - shift - p->window_right : 0;
    int64_t i_hi = p->window_left >= 0 ? j0 + n - shift + p->window_left : hc.seq.sq;
    i_lo = i_lo < 0 ? 0 : i_lo;
    i_hi = min64(i_hi, hc.seq.sq);

    int64_t group = p->heads_q / p->heads_kv;
    for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        hc = head_context(p, b, h);
        for (int64_t i0 = i_lo; i0 < i_hi; i0 += TILE_Q) {
            int64_t m = min64(TILE_Q, i_hi - i0);
            int vis = tile_visibility(&hc, i0, i0 + m, j0, j0 + n);
            if (vis == TILE_EMPTY)
                continue;
            load_rows(kern, p, sc->q, &p->q, b, hc.seq.q0 + i0, m, h, d, dp,
                      p->softmax_scale * FA_LOG2E);
            load_rows(kern, p, sc->dout, &p->dout, b, hc.seq.q0 + i0, m, h, dv,
                      dvp, 1.0f);
            load_row_stats(p, &hc, delta, i0, m, m, lse2, d_row);

            /* S (m × cols) = Q (m × d) · Kᵀ (d × cols); P = 2^(S - lse) */
            kern->gemm(m, cols, d, sc->q, dp, 1, sc->k_t, TILE_K, sc->s, TILE_K, 0);
            tile_geom g = tile_geometry(i0, m, j0, n, 0, TILE_K, kern->vec_width);
            modify_scores(kern, &hc, &g, sc->s, vis == TILE_FULL,
                          p->softcap > 0 ? sc->tanh_s : NULL);
            kern->exp2_bias(sc->s, m, cols, TILE_K, lse2, NULL, NULL);
            /* dP (m × cols) = dO (m × dv) · Vᵀ (dv × cols) */
            kern->gemm(m, cols, dv, sc->dout, dvp, 1, sc->v_t, TILE_K, sc->dp, TILE_K, 0);
            const float *p_used = sc->s;
            if (p->dropout_p > 0) {
                apply_dropout(kern, &hc, &g, sc->p_drop, sc->s, sc->dp, keep_scale);
                p_used = sc->p_drop;
            }
            /* dV (n × dvp) += Pᵀ (n × m) · dO (m × dvp) */
            kern->gemm(n, dvp, m, p_used, 1, TILE_K, sc->dout, dvp, sc->acc_dv, dvp, 1);
            /* dS = P ∘ (dP - D) */
            kern->softmax_grad(sc->dp, sc->s, m, cols, TILE_K, d_row, NULL);
            if (p->softcap > 0)
                softcap_grad(&g, sc->dp, sc->tanh_s);
            /* dK (n × dp) += dSᵀ (n × m) · Q' (m × dp); Q' carries log2(e),
             * removed at the store. */
            kern->gemm(n, dp, m, sc->dp, 1, TILE_K, sc->q, dp, sc->acc_dk, dp, 1);
            /* dQ (m × dp) += dS (m × n) · K (n × dp); softmax_scale is
             * applied at the store. */
            float *dq_rows = dq_partial +
                             fa_lse_index(p->varlen, b, h, hc.seq.q0 + i0,
                                          p->heads_q, p->seqlen_q, p->total_q) * dp;
            kern->gemm(m, dp, n, sc->dp, TILE_K, 1, sc->k, dp, dq_rows, dp, 1);
        }
    }
    store_rows(kern, p, &p->dk, b, hc.seq.k0 + j0, n, hk, d, sc->acc_dk, dp, FA_LN2);
    store_rows(kern, p, &p->dv, b, hc.seq.k0 + j0, n, hk, dv, sc->acc_dv, dvp, 1.0f);
}

/* Pass 2: dQ of (b, h) = softmax_scale · the sum of the chunks' partials,
 * added in chunk order (in place, into chunk 0's rows).
 * dq_partial (chunks, rows laid out as lse, dp) -> dq (B, Sq, Hq, D) */
static void backward_dq_store(const fa_problem *p, const fa_cpu_kernels *kern,
                              float *dq_partial, int64_t b, int64_t h)
{
    head_ctx hc = head_context(p, b, h);
    int64_t dp = round_up(p->head_dim, FA_CPU_MAX_VEC);
    float *sum = dq_partial + fa_lse_index(p->varlen, b, h, hc.seq.q0, p->heads_q,
                                           p->seqlen_q, p->total_q) * dp;
    for (int64_t c = 1; c < dq_chunks(p); ++c) {
        const float *part = sum + c * dq_partial_floats(p);
        for (int64_t x = 0; x < hc.seq.sq * dp; ++x)
            sum[x] += part[x];
    }
    store_rows(kern, p, &p->dq, b, hc.seq.q0, hc.seq.sq, h, p->head_dim, sum,
               dp, p->softmax_scale);
}

fa_status fa_cpu_backward(fa_problem *p)
{
    const fa_cpu_kernels *kern = cpu_kernels();
    p->kernel_name = kern->kernel_name;
    float *delta = workspace_base(p);
    float *dq_partial = delta + delta_floats(p);
    int64_t k_tiles = (p->seqlen_k + TILE_K - 1) / TILE_K;
    int64_t chunks = dq_chunks(p);
    int64_t heads = p->batch * p->heads_q, kv_heads = p->batch * p->heads_kv;
#pragma omp parallel num_threads(p->num_threads)
    {
        scratch sc = thread_scratch(p, FA_BACKWARD, backward_shared_floats(p),
                                    thread_id());
#pragma omp for schedule(dynamic, 1)
        for (int64_t bh = 0; bh < heads; ++bh)
            backward_delta(p, kern, &sc, delta, dq_partial, bh / p->heads_q,
                           bh % p->heads_q);
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < kv_heads * chunks; ++item) {
            int64_t bh = item / chunks, chunk = item % chunks;
            for (int64_t tile = chunk; tile < k_tiles; tile += chunks)
                backward_kv_tile(p, kern, &sc, delta,
                                 dq_partial + chunk * dq_partial_floats(p),
                                 bh / p->heads_kv, bh % p->heads_kv,
                                 tile * TILE_K);
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t bh = 0; bh < heads; ++bh)
            backward_dq_store(p, kern, dq_partial, bh / p->heads_q,
                              bh % p->heads_q);
    }
    return FA_SUCCESS;
}
