/*
 * test_grid: fa_forward / fa_backward against the naive float64 reference
 * over a deliberately sampled grid of shapes, dtypes, options and layouts.
 *
 * Every case: fresh random inputs (rounded to the dtype, the reference reads
 * the rounded values back), outputs and their buffers' guard zones poisoned
 * with NaN before the call; after it, out, lse, dq, dk, dv must match the
 * reference within FlashAttention's tolerance rule
 *     |tested - exact| <= MULT · max|naive_lowp - exact| + 4·u·(max|exact| + 0.3)
 *                         + FLOOR · u_acc · magnitude(element)
 * (naive_lowp: the reference run in float32 with the dtype's roundings;
 * magnitude: the sum of the absolute values of the terms; u_acc: float32's
 * u, FP8's accumulation for FP8, see FP8_ACCUM_U), every
 * element of an output view must have been written (no NaN left), nothing
 * outside the views may change (poison intact), inputs must be unchanged,
 * and repeated runs must be bit-identical (forward always, backward when
 * deterministic). FP8 cases (forward only: the backward must refuse them)
 * hold block-quantized q, k, v; the references see the dequantized values
 * (stored × descale), the naive model rounds P to e4m3 and out to bf16
 * (reference.h), and out, in bf16, is judged with bf16's u. Dropout-probe
 * cases use V = identity, so that the zeros of out are exactly the dropout
 * mask: it must equal fa_dropout_keep() (and, on CUDA, the CPU backend's).
 *
 *   test_grid [--device cpu|cuda] [--backend auto|cpu|sm80|sm90]
 *             [--threads N] [--seed S] [--quick] [--filter TEXT]
 *             [--case N] [--list] [--verbose]
 *
 * Exit status: 0 all passed, 1 a failure, 77 skipped (no GPU / no CUDA).
 * FA_CPU_ISA=scalar|avx2|avx512 (read by the library) caps the CPU ISA; the
 * kernel name of every call is checked against it.
 */
#include "reference.h"
#include "testlib.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef FA_HAVE_CUDA
#  include <cuda_runtime.h>
#  define CUDA_CHECK(call)                                                     \
      do {                                                                     \
          cudaError_t err_ = (call);                                           \
          if (err_ != cudaSuccess) {                                           \
              fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__,     \
                      #call, cudaGetErrorString(err_));                        \
              exit(2);                                                         \
          }                                                                    \
      } while (0)
#endif

#define TOL_MULT 3.0 /* tested error <= TOL_MULT x naive low-precision error */
/* plus ACCUM_FLOOR x u_acc x the element's magnitude (reference.h):
 * accumulation noise, which the naive computation can dodge by luck (same
 * summation order for D and dP cancels exactly) but no kernel can. u_acc is
 * float32's u, but for FP8 that of the FP8 tensor cores' accumulation,
 * which keeps about 14 bits on Hopper (an H100's lse errors reach 2^-13.1
 * of the magnitude; the DeepSeek-V3 report measured ~14 bits on the H800):
 * the naive model's float32 scores cannot show it. */
#define ACCUM_FLOOR 4.0
#define FP8_ACCUM_U 0x1p-13
static double worst_accum_ratio = 0.0; /* calibration: (err - rule) / (u_acc mag) */
/* Forward and backward calls that ran sm80's last-wave split (kernel name
 * ".split"). */
static int split_forwards, split_backwards;
#define SKIP_EXIT 77

/* ---------------------------------------------------------------------- */
/* Cases                                                                   */

typedef enum layout_kind {
    LAYOUT_CONTIGUOUS, /* (b, s, h, d) dense */
    LAYOUT_BHSD,       /* (b, h, s, d): head-major */
    LAYOUT_PADDED,     /* padded by multiples of 8 elements */
    LAYOUT_PADDED_ODD, /* padded by odd element counts (unaligned rows) */
    LAYOUT_COUNT
} layout_kind;

static const char *const LAYOUT_NAMES[LAYOUT_COUNT] = {"contig", "bhsd",
                                                       "pad8", "padodd"};

typedef enum block_mask_kind {
    BLOCKS_OFF,
    BLOCKS_PER_HEAD,        /* one mask per (batch, head) */
    BLOCKS_SHARED_BATCHES,  /* stride_batch 0 */
    BLOCKS_SHARED_HEADS     /* stride_head 0 */
} block_mask_kind;

typedef struct grid_case {
    char family[24];
    fa_dtype dtype;
    int64_t batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, head_dim_v;
    int varlen;             /* per-sequence lengths drawn, some empty */
    int causal;
    int64_t window_left, window_right;
    float softcap, softmax_scale;
    int alibi;              /* 0 off, 1 per head, 2 per batch x head */
    float dropout_p;
    uint64_t dropout_seed, dropout_offset;
    block_mask_kind blocks;
    int64_t block_size_q, block_size_k;
    layout_kind layout;
    int packed;             /* q/k/v (or k/v) slices of one buffer */
    int deterministic;
    int explicit_workspace;
    int dropout_probe;      /* V = identity: out shows the dropout mask */
    double logit_scale;     /* std of q and k (0: 1); large -> huge scores */
    int seqused;            /* seqused_k drawn per sequence (forward only) */
    int inference;          /* decoding shapes: no backward (its shapes are the
                               other families'; the reference's backward took
                               half of the quick grid's time here) */
    int64_t page_size;      /* > 0: k / v in a paged cache (forward only) */
    /* FP8 dtypes (forward only): rows per descale (0 = the sequence), and
     * which of q, k, v (bits 0, 1, 2) have descales (the others NULL) */
    int64_t descale_block_q, descale_block_k;
    unsigned descaled;
    uint64_t data_seed;
} grid_case;

static const int64_t SEQLENS[] = {1, 2, 17, 127, 128, 129, 1000};
#define NUM_SEQLENS 7
#define NUM_SHORT_SEQLENS 6 /* SEQLENS without 1000 */
static const int64_t HEAD_DIMS[] = {8, 32, 40, 64, 80, 96, 111, 128, 160, 192, 256};
#define NUM_HEAD_DIMS 11
static const fa_dtype DTYPES[] = {FA_DTYPE_F32, FA_DTYPE_F16, FA_DTYPE_BF16};
static const fa_dtype FP8_DTYPES[] = {FA_DTYPE_FP8_E4M3, FA_DTYPE_FP8_E5M2};
#define DESCALED_ALL 7u

typedef struct case_list {
    grid_case *items;
    int count, capacity;
} case_list;

static void push_case(case_list *list, const grid_case *c)
{
    if (list->count == list->capacity) {
        list->capacity = list->capacity ? 2 * list->capacity : 256;
        grid_case *grown = realloc(list->items, (size_t)list->capacity * sizeof *grown);
        if (!grown) {
            fprintf(stderr, "out of memory\n");
            exit(2);
        }
        list->items = grown;
    }
    list->items[list->count++] = *c;
}

/* Work units of the reference: what the per-case budget limits. */
static double case_work(const grid_case *c)
{
    return (double)c->batch * (double)c->heads_q * (double)c->seqlen_q *
           (double)c->seqlen_k * (double)(c->head_dim + c->head_dim_v);
}

/* Shrinks batch, then heads, then the longer sequence until the case fits
 * the budget: long sequences stay long when heads can be given up. */
static void fit_budget(grid_case *c, double budget)
{
    while (case_work(c) > budget) {
        if (c->batch > 1 && !c->varlen)
            c->batch--;
        else if (c->heads_q > 1) {
            c->heads_q = c->heads_q / 2 > 0 ? c->heads_q / 2 : 1;
            if (c->heads_q % c->heads_kv)
                c->heads_kv = c->heads_q;
            if (c->heads_kv > c->heads_q)
                c->heads_kv = c->heads_q;
        } else if (c->seqlen_q >= c->seqlen_k && c->seqlen_q > 17)
            c->seqlen_q = c->seqlen_q * 2 / 3;
        else if (c->seqlen_k > 17)
            c->seqlen_k = c->seqlen_k * 2 / 3;
        else
            break;
    }
}

static int64_t pick(test_rng *r, const int64_t *values, int n)
{
    return values[rng_int(r, 0, n - 1)];
}

/* A random moderate shape: the base every option family is crossed with. */
static grid_case base_case(test_rng *r, const char *family, fa_dtype dtype)
{
    static const int64_t heads[] = {1, 2, 4};
    grid_case c;
    memset(&c, 0, sizeof c);
    snprintf(c.family, sizeof c.family, "%s", family);
    c.dtype = dtype;
    c.batch = rng_int(r, 1, 2);
    c.seqlen_q = pick(r, SEQLENS, NUM_SHORT_SEQLENS);
    c.seqlen_k = pick(r, SEQLENS, NUM_SHORT_SEQLENS);
    c.heads_q = pick(r, heads, 3);
    c.heads_kv = rng_int(r, 0, 1) ? c.heads_q : 1;
    c.head_dim = pick(r, HEAD_DIMS, NUM_HEAD_DIMS);
    c.head_dim_v = c.head_dim;
    c.window_left = c.window_right = -1;
    c.layout = LAYOUT_CONTIGUOUS;
    c.data_seed = rng_next(r);
    return c;
}

static void set_dropout(test_rng *r, grid_case *c, float p)
{
    c->dropout_p = p;
    c->dropout_seed = rng_next(r);
    /* Half of the offsets sit just below a 2^32 boundary, so that
     * offset + b*heads_q + h carries into the counter's high word. */
    c->dropout_offset = rng_int(r, 0, 1) ? rng_next(r) >> 1
                                         : 0xfffffffeull + ((uint64_t)rng_int(r, 0, 7) << 32);
}

static void set_block_mask(test_rng *r, grid_case *c)
{
    static const int64_t sizes[] = {16, 17, 64, 128};
    c->blocks = (block_mask_kind)rng_int(r, BLOCKS_PER_HEAD, BLOCKS_SHARED_HEADS);
    c->block_size_q = pick(r, sizes, 4);
    c->block_size_k = pick(r, sizes, 4);
}

static void set_varlen(test_rng *r, grid_case *c)
{
    c->varlen = 1;
    c->batch = rng_int(r, 3, 5);
}

/* One option applied to a base case; `option` names the family. */
static void apply_option(test_rng *r, grid_case *c, const char *option)
{
    static const int64_t windows[][2] = {{0, 0}, {1, 0}, {16, 0}, {-1, 8},
                                         {5, -1}, {32, 32}, {3, 2}, {0, -1}};
    static const float softcaps[] = {1.0f, 5.0f, 30.0f};
    static const float dropouts[] = {0.1f, 0.25f, 0.5f, 0.85f};
    static const float scales[] = {0.05f, 0.3f, 1.0f};
    if (!strcmp(option, "causal"))
        c->causal = 1;
    else if (!strcmp(option, "window")) {
        int w = (int)rng_int(r, 0, 7);
        c->window_left = windows[w][0];
        c->window_right = windows[w][1];
        c->causal = rng_int(r, 0, 3) == 0; /* local causal */
    } else if (!strcmp(option, "softcap")) {
        c->softcap = softcaps[rng_int(r, 0, 2)];
        c->softmax_scale = (float)(2.0 / sqrt((double)c->head_dim)); /* make the cap bite */
    } else if (!strcmp(option, "alibi"))
        c->alibi = 1;
    else if (!strcmp(option, "alibi_bh"))
        c->alibi = 2;
    else if (!strcmp(option, "dropout"))
        set_dropout(r, c, dropouts[rng_int(r, 0, 3)]);
    else if (!strcmp(option, "blocks")) {
        set_block_mask(r, c);
        c->causal = rng_int(r, 0, 2) == 0;
    } else if (!strcmp(option, "varlen"))
        set_varlen(r, c);
    else if (!strcmp(option, "gqa")) {
        c->heads_q = 6;
        c->heads_kv = rng_int(r, 0, 1) ? 2 : 3;
    } else if (!strcmp(option, "manyheads")) { /* work split over threads */
        c->batch = 3;
        c->heads_q = 16;
        c->heads_kv = rng_int(r, 0, 1) ? 16 : 4;
    } else if (!strcmp(option, "mqa")) {
        c->heads_q = rng_int(r, 3, 4);
        c->heads_kv = 1;
    } else if (!strcmp(option, "bhsd"))
        c->layout = LAYOUT_BHSD;
    else if (!strcmp(option, "pad8"))
        c->layout = LAYOUT_PADDED;
    else if (!strcmp(option, "padodd"))
        c->layout = LAYOUT_PADDED_ODD;
    else if (!strcmp(option, "packed")) {
        c->packed = 1;
        c->head_dim_v = c->head_dim;
        if (rng_int(r, 0, 1))
            c->seqlen_k = c->seqlen_q; /* qkv-packed; else kv-packed */
        c->layout = (layout_kind)rng_int(r, 0, LAYOUT_COUNT - 1);
    } else if (!strcmp(option, "bigscores"))
        c->logit_scale = 6.0; /* scores spread over hundreds: softmax stability */
    else if (!strcmp(option, "scale"))
        c->softmax_scale = scales[rng_int(r, 0, 2)];
    else if (!strcmp(option, "deterministic"))
        c->deterministic = 1;
    else if (!strcmp(option, "workspace"))
        c->explicit_workspace = 1;
    else if (!strcmp(option, "seqused")) {
        c->seqused = 1;
        if (rng_int(r, 0, 1))
            set_varlen(r, c);
        c->causal = rng_int(r, 0, 2) == 0;
    } else if (!strcmp(option, "paged")) {
        static const int64_t pages[] = {1, 3, 8, 16, 32, 64, 128, 256};
        c->page_size = pick(r, pages, 8);
        c->seqused = rng_int(r, 0, 1);
        c->causal = rng_int(r, 0, 2) == 0;
        if (!c->causal && rng_int(r, 0, 3) == 0)
            apply_option(r, c, "window");
        if (rng_int(r, 0, 1))
            c->layout = (layout_kind)rng_int(r, 0, LAYOUT_COUNT - 1);
    }
    else {
        fprintf(stderr, "unknown option %s\n", option);
        exit(2);
    }
}

/* An FP8 forward. Three cases in four have the Hopper kernel's shapes
 * (head dim 128 or 256, descale blocks of 0 or a multiple of 128 rows);
 * the fourth has one of the CPU's others (head dim 40, 64 or 96, or a
 * block of 17 or 64 rows: a GPU run skips it). Each of q, k, v has
 * descales three times in four. */
static grid_case fp8_case(test_rng *r, const char *family, fa_dtype dtype)
{
    static const int64_t seqlens[] = {1, 17, 128, 129, 300, 1000};
    static const int64_t dims[] = {128, 256, 40, 64, 96};  /* the Hopper kernel's first */
    static const int64_t blocks[] = {0, 128, 256, 17, 64}; /* likewise */
    grid_case c = base_case(r, family, dtype);
    c.seqlen_q = pick(r, seqlens, 6);
    c.seqlen_k = pick(r, seqlens, 6);
    c.head_dim = c.head_dim_v = pick(r, dims, 2);
    c.descale_block_q = pick(r, blocks, 3);
    c.descale_block_k = pick(r, blocks, 3);
    if (rng_int(r, 0, 3) == 0) {
        int64_t odd = rng_int(r, 0, 2);
        if (odd == 0)
            c.head_dim = c.head_dim_v = dims[rng_int(r, 2, 4)];
        else if (odd == 1)
            c.descale_block_q = blocks[rng_int(r, 3, 4)];
        else
            c.descale_block_k = blocks[rng_int(r, 3, 4)];
    }
    for (unsigned t = 0; t < 3; ++t)
        if (rng_int(r, 0, 3))
            c.descaled |= 1u << t;
    return c;
}

/* The grid. Cost is bounded per case (fit_budget); --quick shortens the
 * longest sequences and the budget for sanitizer builds; gpu: the run is on
 * a CUDA device (adds the persistent and longmask families). */
/* A decoding case (fp8decode, decode16): a few query rows per head over
 * min_keys to max_keys keys; a window is sliding and causal; a paged cache
 * has used keys per sequence; no backward (inference). */
typedef struct decode_spec {
    fa_dtype dtype;
    int64_t head_dim, batch, heads_q, heads_kv, seqlen_q;
    int causal;
    int64_t window_left, page_size;
    float softcap;
} decode_spec;

static grid_case decode_case(test_rng *r, const char *family, const decode_spec *d, int64_t min_keys,
                             int64_t max_keys)
{
    grid_case c = base_case(r, family, d->dtype);
    c.batch = d->batch;
    c.heads_q = d->heads_q;
    c.heads_kv = d->heads_kv;
    c.seqlen_q = d->seqlen_q;
    c.seqlen_k = rng_int(r, min_keys, max_keys);
    c.head_dim = c.head_dim_v = d->head_dim;
    c.causal = d->causal;
    if (d->window_left >= 0) {
        c.window_left = d->window_left;
        c.window_right = 0;
    }
    c.softcap = d->softcap;
    if ((c.page_size = d->page_size) > 0)
        c.seqused = 1;
    c.inference = 1;
    return c;
}

static void build_grid(case_list *list, uint64_t seed, int quick, int gpu)
{
    test_rng r;
    rng_seed(&r, seed);
    double budget = quick ? 6e6 : 1.2e8;
    grid_case c;

    /* Every (seqlen_q, seqlen_k) pair, sq != sk both ways. */
    for (int a = 0; a < NUM_SEQLENS; ++a)
        for (int b = 0; b < NUM_SEQLENS; ++b) {
            c = base_case(&r, "seqlen", DTYPES[rng_int(&r, 0, 2)]);
            c.batch = 1;
            c.seqlen_q = SEQLENS[a];
            c.seqlen_k = SEQLENS[b];
            c.head_dim = c.head_dim_v = rng_int(&r, 0, 1) ? 32 : 64;
            c.causal = rng_int(&r, 0, 2) == 0;
            if (quick) {
                c.seqlen_q = c.seqlen_q > 300 ? 300 : c.seqlen_q;
                c.seqlen_k = c.seqlen_k > 300 ? 300 : c.seqlen_k;
            }
            fit_budget(&c, budget);
            push_case(list, &c);
        }

    /* Every head dim in every dtype. */
    for (int d = 0; d < NUM_HEAD_DIMS; ++d)
        for (int t = 0; t < 3; ++t) {
            c = base_case(&r, "hdim", DTYPES[t]);
            c.head_dim = c.head_dim_v = HEAD_DIMS[d];
            c.causal = rng_int(&r, 0, 1);
            fit_budget(&c, budget);
            push_case(list, &c);
        }

    /* head_dim_v != head_dim. */
    static const int64_t dim_pairs[][2] = {{64, 128}, {128, 64}, {192, 128},
                                           {40, 96}, {111, 8}, {256, 32},
                                           {8, 256}, {96, 160}};
    for (int n = 0; n < 8; ++n)
        for (int t = 0; t < 3; ++t) {
            if (n != 2 && rng_int(&r, 0, 2) != 0)
                continue; /* (192, 128), FA3's MLA shape, in all dtypes */
            c = base_case(&r, "hdim_v", DTYPES[t]);
            c.head_dim = dim_pairs[n][0];
            c.head_dim_v = dim_pairs[n][1];
            c.causal = rng_int(&r, 0, 1);
            fit_budget(&c, budget);
            push_case(list, &c);
        }

    /* Each option x every dtype x three random shapes (two when quick). */
    static const char *const options[] = {
        "causal", "window", "softcap", "alibi", "alibi_bh", "dropout",
        "blocks", "varlen", "gqa", "mqa", "manyheads", "bhsd", "pad8", "padodd", "packed",
        "scale", "bigscores", "deterministic", "workspace", "seqused", "paged"};
    for (size_t o = 0; o < sizeof options / sizeof options[0]; ++o)
        for (int t = 0; t < 3; ++t)
            for (int rep = 0; rep < (quick ? 2 : 3); ++rep) {
                c = base_case(&r, options[o], DTYPES[t]);
                apply_option(&r, &c, options[o]);
                fit_budget(&c, budget);
                push_case(list, &c);
            }

    /* Everything at once. */
    for (int n = 0; n < (quick ? 9 : 18); ++n) {
        c = base_case(&r, "combo", DTYPES[n % 3]);
        apply_option(&r, &c, n % 2 ? "varlen" : "gqa");
        apply_option(&r, &c, "window");
        if (rng_int(&r, 0, 1))
            apply_option(&r, &c, "softcap");
        apply_option(&r, &c, rng_int(&r, 0, 1) ? "alibi" : "alibi_bh");
        apply_option(&r, &c, "dropout");
        if (rng_int(&r, 0, 1))
            set_block_mask(&r, &c);
        c.layout = (layout_kind)rng_int(&r, 0, LAYOUT_COUNT - 1);
        c.deterministic = rng_int(&r, 0, 1);
        c.explicit_workspace = rng_int(&r, 0, 1);
        fit_budget(&c, budget);
        push_case(list, &c);
    }

    /* More tiles than two rounds of a persistent grid (132 SMs on an H100;
     * causal, so no clusters): a CTA's later tiles start from the
     * state its earlier ones left (pipeline phases, O staged over the V
     * ring, the pingpong's turns). Causal, so that the first rows of a tile
     * see fewer key blocks than its last. Over the budget on purpose: the
     * shape is what is tested, so not in --quick, and only on a GPU (the
     * CPU backend has no such state; its threads are tested by manyheads). */
    static const int64_t persistent_dims[] = {256, 64, 128};
    for (int n = 0; n < (quick || !gpu ? 0 : 3); ++n) {
        c = base_case(&r, "persistent", DTYPES[1 + n % 2]);
        c.batch = 4;
        c.heads_q = 35;
        c.heads_kv = n == 1 ? 7 : 35;
        c.seqlen_q = c.seqlen_k = rng_int(&r, 129, 150);
        c.head_dim = c.head_dim_v = persistent_dims[n];
        c.causal = 1;
        push_case(list, &c);
    }

    /* Masked tiles of the long-sequence kernels: the dispatchers choose
     * tiles by seqlen (sm90 hdim 64: 192-row tiles from 2048 queries on
     * with a mask), which the short shapes above never reach. Causal with
     * sq != sk (bottom-right), and a sliding window. GPU only, over the
     * budget on purpose, not in --quick. */
    for (int n = 0; n < (quick || !gpu ? 0 : 2); ++n) {
        c = base_case(&r, "longmask", DTYPES[1 + n % 2]);
        c.batch = 1;
        c.heads_q = 2;
        c.heads_kv = n == 0 ? 1 : 2;
        c.seqlen_q = rng_int(&r, 2049, 2200);
        c.seqlen_k = c.seqlen_q + rng_int(&r, 0, 150);
        c.head_dim = c.head_dim_v = 64;
        if (n == 0) {
            c.causal = 1;
        } else {
            c.window_left = rng_int(&r, 200, 700);
            c.window_right = rng_int(&r, 0, 100);
        }
        push_case(list, &c);
    }

    /* KV-cache decoding: few query rows (causal: speculative decoding)
     * over long, per-sequence used keys, GQA, paged half the time; on a
     * GPU a grid small enough for the sm80 forward's key split. */
    for (int n = 0; n < (quick ? 4 : 8); ++n) {
        c = base_case(&r, "decode", DTYPES[1 + n % 2]);
        c.batch = rng_int(&r, 2, 3);
        c.heads_q = 8;
        c.heads_kv = n % 4 == 3 ? 1 : 2;
        c.seqlen_q = rng_int(&r, 1, 4);
        c.seqlen_k = quick ? rng_int(&r, 200, 300) : rng_int(&r, 700, 1500);
        c.head_dim = c.head_dim_v = n % 3 == 0 ? 64 : n % 3 == 1 ? 128 : 256;
        c.seqused = 1;
        c.causal = n % 2;
        if (n / 2 % 2) {
            static const int64_t pages[] = {16, 128, 256};
            c.page_size = pick(&r, pages, 3);
        }
        push_case(list, &c);
    }

    /* Prefill over a paged cache: 256 query rows (two 128-row tiles, which
     * the Hopper forward runs as a pair sharing each K/V block, each CTA
     * loading half) over pages smaller and larger than a key block. GPU
     * only, over the budget on purpose, not in --quick. */
    for (int n = 0; n < (quick || !gpu ? 0 : 4); ++n) {
        c = base_case(&r, "pagedprefill", DTYPES[1 + n % 2]);
        c.batch = 2;
        c.heads_q = 4;
        c.heads_kv = 2;
        c.seqlen_q = 256;
        c.seqlen_k = rng_int(&r, 600, 900);
        c.head_dim = c.head_dim_v = n < 2 ? 128 : 64;
        c.page_size = n % 2 ? 16 : 128;
        c.seqused = n / 2 == 0;
        push_case(list, &c);
    }

    /* Dropout mask probes: dv >= seqlen_k and V = identity. The probes use
     * sk = 250 (not a multiple of 4: the last Philox word group is partial). */
    for (int n = 0; n < 9; ++n) {
        c = base_case(&r, "probe", DTYPES[n % 3]);
        c.batch = 2;
        c.seqlen_q = 37;
        c.seqlen_k = 250;
        c.heads_q = 3;
        c.heads_kv = n % 2 ? 1 : 3;
        c.head_dim = 32;
        c.head_dim_v = 256;
        c.dropout_probe = 1;
        set_dropout(&r, &c, n < 6 ? 0.3f : 0.7f);
        if (n / 3 == 1)
            set_varlen(&r, &c);
        if (n / 3 == 2)
            c.causal = 1;
        push_case(list, &c);
    }

    /* FP8 forward: each option the FP8 kernel takes in both formats. An eighth of the budget:
     * the shapes are large (head dims 128, 256) and many; but varlen
     * sequences, whose lengths are drawn below the longest (a quarter of
     * the work on average), get it all, to span several descale blocks of
     * 128 rows, which restart with each sequence. */
    static const char *const fp8_options[] = {
        "none", "causal", "window", "softcap", "gqa", "mqa", "varlen", "seqused",
        "bhsd", "pad8", "padodd", "packed", "paged"};
    for (size_t o = 0; o < sizeof fp8_options / sizeof fp8_options[0]; ++o)
        for (int t = 0; t < 2; ++t)
            for (int rep = 0; rep < (quick ? 1 : 2); ++rep) {
                c = fp8_case(&r, "fp8", FP8_DTYPES[t]);
                if (strcmp(fp8_options[o], "none"))
                    apply_option(&r, &c, fp8_options[o]);
                if (o <= 1 && rep == 0) { /* no keys at all (the Hopper forward's own path) */
                    c.seqlen_k = 0;
                    c.head_dim = c.head_dim_v = 128;
                }
                if (c.varlen) {
                    static const int64_t long_seqlens[] = {300, 1000};
                    c.seqlen_q = pick(&r, long_seqlens, 2);
                    c.seqlen_k = pick(&r, long_seqlens, 2);
                }
                fit_budget(&c, c.varlen ? budget : budget / 8);
                push_case(list, &c);
            }

    /* FP8 over long sequences: many key blocks per row and many descale
     * blocks, causal (sq != sk) or not, GQA, paged caches (with used keys
     * per sequence) of pages smaller and larger than a key block. GPU only,
     * over the budget on purpose (the reference takes about as long as
     * longmask's: heads and, at head dim 256, lengths kept down); the
     * Hopper kernel must run these (run_case). */
    static const struct {
        fa_dtype dtype;
        int64_t head_dim, heads_q, heads_kv, max_seqlen, block_q, block_k;
        int causal;
        int64_t page_size;
    } fp8_long[] = {{FA_DTYPE_FP8_E4M3, 128, 2, 2, 2200, 128, 256, 1, 0},
                    {FA_DTYPE_FP8_E5M2, 256, 1, 1, 1500, 256, 128, 0, 0},
                    {FA_DTYPE_FP8_E4M3, 128, 2, 1, 2200, 0, 128, 1, 16},
                    {FA_DTYPE_FP8_E4M3, 256, 2, 1, 1500, 256, 256, 1, 0},
                    {FA_DTYPE_FP8_E5M2, 128, 1, 1, 2200, 128, 128, 0, 0},
                    {FA_DTYPE_FP8_E5M2, 256, 2, 2, 1500, 128, 0, 0, 256}};
    const int fp8_long_count = (int)(sizeof fp8_long / sizeof fp8_long[0]);
    for (int n = 0; n < (!gpu ? 0 : quick ? 3 : fp8_long_count); ++n) {
        c = base_case(&r, "fp8long", fp8_long[n].dtype);
        c.batch = 1;
        c.heads_q = fp8_long[n].heads_q;
        c.heads_kv = fp8_long[n].heads_kv;
        c.seqlen_q = rng_int(&r, 1000, fp8_long[n].max_seqlen - 150);
        c.seqlen_k = fp8_long[n].causal ? c.seqlen_q + rng_int(&r, 0, 150)
                                        : rng_int(&r, 1000, fp8_long[n].max_seqlen);
        c.head_dim = c.head_dim_v = fp8_long[n].head_dim;
        c.causal = fp8_long[n].causal;
        c.descale_block_q = fp8_long[n].block_q;
        c.descale_block_k = fp8_long[n].block_k;
        c.descaled = DESCALED_ALL;
        if ((c.page_size = fp8_long[n].page_size) > 0) {
            c.batch = 2; /* two sequences' pages shuffled together (setup_pages) */
            c.seqused = 1;
        }
        push_case(list, &c);
    }

    /* FP8 decoding: a few query rows per head over a few thousand keys,
     * which the Hopper forward runs as its key split, with the query heads
     * of a KV head packed into one tile (a power of two of them, up to 64)
     * or not (3 per KV head); causal and sliding windows over packed rows
     * (masked by their query), packed tiles of more than one m block; a
     * paged cache with used keys per sequence (three: some parts of some
     * tiles empty); descales on every tensor, so that the packed rows' own
     * Q descales count, per block of 128 queries over 200. Cheap (few
     * rows): CPU runs too; the Hopper kernel must run these. */
    static const decode_spec fp8_decode[] = {
        {FA_DTYPE_FP8_E4M3, 128, 2, 8, 2, 1, 0, -1, 0, 0.f},   {FA_DTYPE_FP8_E5M2, 128, 1, 16, 2, 3, 0, -1, 0, 0.f},
        {FA_DTYPE_FP8_E4M3, 256, 2, 4, 1, 2, 0, -1, 0, 0.f},   {FA_DTYPE_FP8_E4M3, 128, 3, 6, 2, 1, 0, -1, 0, 0.f},
        {FA_DTYPE_FP8_E5M2, 128, 2, 8, 4, 5, 1, -1, 0, 0.f},   {FA_DTYPE_FP8_E4M3, 128, 3, 8, 2, 1, 0, -1, 16, 0.f},
        {FA_DTYPE_FP8_E4M3, 128, 1, 128, 2, 1, 0, -1, 0, 0.f}, {FA_DTYPE_FP8_E4M3, 128, 2, 16, 4, 40, 1, 700, 0, 0.f},
        {FA_DTYPE_FP8_E5M2, 256, 1, 8, 1, 33, 1, -1, 0, 0.f},  {FA_DTYPE_FP8_E4M3, 128, 1, 4, 2, 200, 0, -1, 0, 0.f}};
    for (size_t n = 0; n < sizeof fp8_decode / sizeof fp8_decode[0]; ++n) {
        c = decode_case(&r, "fp8decode", &fp8_decode[n], 1500, 5000);
        c.descale_block_q = c.seqlen_q > 128 ? 128 : 0; /* packed rows of several Q descale blocks */
        c.descale_block_k = rng_int(&r, 0, 1) ? 0 : 256;
        c.descaled = DESCALED_ALL;
        push_case(list, &c);
    }

    /* 16-bit decoding, which the Hopper forward runs as its key split too
     * (hdim 64 / 128 / 256, the last on 80-key blocks) and sm80's split
     * elsewhere: one row of grouped heads (the API makes them rows of one
     * head: nothing to pack); packed ratios 2-64 (sm90: powers of two),
     * ratios 3 and 6 (packed on sm80 only, whose 64-row tiles then start
     * mid-query), no GQA over two m blocks, causal and sliding windows over
     * packed rows, packed tiles of several m blocks, softcap (sm80's split
     * refuses it), paged caches with used keys, packed and not. Cheap: CPU
     * runs too; on Hopper the sm90 split must run these (hopper_split), but
     * ratios 3 and 6 unpacked. Forward only (decode_case); fewer keys
     * where there are more rows, and in --quick too few to split. */
    static const decode_spec decode16[] = {
        {FA_DTYPE_BF16, 128, 2, 8, 2, 1, 0, -1, 0, 0.f},    {FA_DTYPE_F16, 64, 1, 16, 2, 3, 0, -1, 0, 0.f},
        {FA_DTYPE_BF16, 256, 2, 4, 1, 2, 0, -1, 0, 0.f},    {FA_DTYPE_F16, 128, 3, 6, 2, 7, 0, -1, 0, 0.f},
        {FA_DTYPE_BF16, 64, 2, 8, 4, 5, 1, -1, 0, 0.f},     {FA_DTYPE_BF16, 128, 3, 8, 2, 3, 0, -1, 16, 0.f},
        {FA_DTYPE_F16, 128, 1, 128, 2, 2, 0, -1, 0, 0.f},   {FA_DTYPE_BF16, 128, 2, 16, 4, 40, 1, 700, 0, 0.f},
        {FA_DTYPE_F16, 256, 1, 8, 1, 33, 1, -1, 0, 0.f},    {FA_DTYPE_BF16, 64, 1, 4, 4, 160, 0, -1, 0, 0.f},
        {FA_DTYPE_BF16, 128, 2, 8, 2, 2, 0, -1, 0, 30.f},   {FA_DTYPE_F16, 64, 2, 8, 8, 4, 1, -1, 64, 0.f},
        {FA_DTYPE_BF16, 128, 1, 12, 4, 30, 1, -1, 0, 0.f},  {FA_DTYPE_F16, 64, 2, 12, 2, 11, 1, 300, 0, 0.f}};
    for (size_t n = 0; n < sizeof decode16 / sizeof decode16[0]; ++n) {
        c = decode_case(&r, "decode16", &decode16[n], quick ? 300 : 1500,
                        quick ? 700 : decode16[n].seqlen_q > 8 ? 2200 : 5000);
        push_case(list, &c);
    }
}

static void describe(const grid_case *c, char *buf, size_t size)
{
    int n = snprintf(buf, size, "%-13s %-4s b%lld sq%lld sk%lld h%lld/%lld d%lld",
                     c->family, fa_dtype_name(c->dtype), (long long)c->batch,
                     (long long)c->seqlen_q, (long long)c->seqlen_k,
                     (long long)c->heads_q, (long long)c->heads_kv,
                     (long long)c->head_dim);
#define APPEND(...) \
    if (n >= 0 && (size_t)n < size) n += snprintf(buf + n, size - (size_t)n, __VA_ARGS__)
    if (c->head_dim_v != c->head_dim)
        APPEND(" dv%lld", (long long)c->head_dim_v);
    if (c->varlen)
        APPEND(" varlen");
    if (c->causal)
        APPEND(" causal");
    if (c->window_left >= 0 || c->window_right >= 0)
        APPEND(" win(%lld,%lld)", (long long)c->window_left, (long long)c->window_right);
    if (c->softcap > 0)
        APPEND(" cap%g", (double)c->softcap);
    if (c->softmax_scale > 0)
        APPEND(" scale%g", (double)c->softmax_scale);
    if (c->alibi)
        APPEND(" alibi%s", c->alibi == 2 ? "_bh" : "");
    if (c->dropout_p > 0)
        APPEND(" drop%g", (double)c->dropout_p);
    if (c->logit_scale > 0)
        APPEND(" qk*%g", c->logit_scale);
    if (c->blocks != BLOCKS_OFF)
        APPEND(" blocks%d(%lldx%lld)", (int)c->blocks, (long long)c->block_size_q,
               (long long)c->block_size_k);
    if (c->layout != LAYOUT_CONTIGUOUS)
        APPEND(" %s", LAYOUT_NAMES[c->layout]);
    if (c->packed)
        APPEND(" packed");
    if (c->deterministic)
        APPEND(" det");
    if (c->explicit_workspace)
        APPEND(" ws");
    if (c->seqused)
        APPEND(" seqused");
    if (c->page_size)
        APPEND(" paged%lld", (long long)c->page_size);
    if (dtype_is_fp8(c->dtype))
        APPEND(" descale%s%s%s(%lld,%lld)", c->descaled & 1 ? "q" : "", c->descaled & 2 ? "k" : "",
               c->descaled & 4 ? "v" : "", (long long)c->descale_block_q,
               (long long)c->descale_block_k);
#undef APPEND
}

/* ---------------------------------------------------------------------- */
/* Run configuration and reporting                                         */

typedef struct run_config {
    fa_device device;
    fa_backend backend;
    int threads;
    int verbose;
    const char *isa;       /* FA_CPU_ISA, or NULL */
    fa_context *ctx;
    fa_context *cpu_ctx;   /* CUDA runs: the CPU backend, for the mask */
    int fp8_on_hopper;     /* an sm_90 GPU and a backend (auto, sm90) whose
                              FP8 kernel is documented: fp8long and
                              fp8decode must run */
    int hopper_split;      /* the same, FA_SM90_FWD_SPLIT not below 2 and
                              GQA packed: the decoding families must run
                              sm90's key split */
} run_config;

typedef struct case_report {
    int failures;
    int skipped_forward;   /* a forced backend said unsupported */
    int cuda_may_refuse;   /* no CUDA kernel runs f32 (documented, as in
                              FlashAttention), the Hopper one some FP8
                              shapes and sm80 none: unsupported is a skip */
    int must_run;          /* a shape the (forced) backend documents:
                              unsupported is a failure */
    int must_split;        /* the forward must run a kernel "sm90.*.split.*" */
    char forward_kernel[64]; /* what the forward ran (verbose output) */
    int skipped_backward;
    char header[256];
    int header_printed;
} case_report;

#define MAX_PRINT 8

static void report_failure(case_report *rep, const char *fmt, ...)
{
    if (!rep->header_printed) {
        printf("FAIL %s\n", rep->header);
        rep->header_printed = 1;
    }
    va_list args;
    va_start(args, fmt);
    printf("    ");
    vprintf(fmt, args);
    printf("\n");
    va_end(args);
    rep->failures++;
}

/* ---------------------------------------------------------------------- */
/* Buffers of one case                                                     */

enum buffer_role { ROLE_INPUT, ROLE_FORWARD_OUTPUT, ROLE_BACKWARD_OUTPUT };

#define MAX_BUFFERS 12

/* Host/device arrays that are not tensors (cu_seqlens, slopes, masks). */
typedef struct aux_array {
    void *host, *device;
    size_t bytes;
} aux_array;

typedef struct case_data {
    test_buffer bufs[MAX_BUFFERS];
    int role[MAX_BUFFERS];
    int nbufs;
    test_view q, k, v, out, dout, dq, dk, dv;
    test_view kp, vp; /* paged cases: the pages the library reads (k, v:
                         the same keys in sequence order, for the
                         reference) */
    int lse_buf;
    int64_t lse_count;

    /* sequence geometry (dense reference rows) */
    int64_t *q_start, *q_len, *k_start, *k_len;
    int64_t total_q, total_k;
    int64_t table_stride; /* paged: entries per sequence */
    /* FP8: rows per descale (resolved: 0 -> the longest sequence) and
     * descales per (batch, head) */
    int64_t descale_rows_q, descale_rows_k, descale_blocks_q, descale_blocks_k;
    aux_array cu_q, cu_k, slopes, block_mask, seqused_k, block_table;
    aux_array q_descale, k_descale, v_descale;
    int on_device;
} case_data;

#define AUX_ARRAYS(cd) \
    {&(cd)->cu_q, &(cd)->cu_k, &(cd)->slopes, &(cd)->block_mask, &(cd)->seqused_k, \
     &(cd)->block_table, &(cd)->q_descale, &(cd)->k_descale, &(cd)->v_descale}
#define NUM_AUX 9

static int add_buffer(case_data *cd, fa_dtype dtype, int64_t count, int role)
{
    if (cd->nbufs == MAX_BUFFERS) {
        fprintf(stderr, "too many buffers\n");
        exit(2);
    }
    buffer_alloc(&cd->bufs[cd->nbufs], dtype, count);
    cd->role[cd->nbufs] = role;
    return cd->nbufs++;
}

/* Views of n tensors that share the token axis (batch x seqlen) and head
 * dim: one buffer, heads concatenated (n > 1 is a packed qkv/kv buffer).
 * Varlen tensors are (1, total, heads, dim) and get a nonsense
 * stride_batch, which the library must ignore. */
static void layout_group(case_data *cd, int role, layout_kind layout,
                         fa_dtype dtype, int varlen, int64_t batch,
                         int64_t seqlen, int n, const int64_t *heads,
                         int64_t dim, test_view **views)
{
    int64_t total_heads = 0;
    for (int t = 0; t < n; ++t)
        total_heads += heads[t];
    int64_t nb = varlen ? 1 : batch;
    int64_t sh, ss, sb;
    switch (layout) {
    case LAYOUT_BHSD:
        ss = dim;
        sh = seqlen * dim;
        sb = total_heads * sh;
        break;
    case LAYOUT_PADDED:
        sh = (dim + 7) / 8 * 8 + 8;
        ss = total_heads * sh + 8;
        sb = seqlen * ss + 16;
        break;
    case LAYOUT_PADDED_ODD:
        sh = dim + 3;
        ss = total_heads * sh + 5;
        sb = seqlen * ss + 7;
        break;
    default:
        sh = dim;
        ss = total_heads * dim;
        sb = seqlen * ss;
        break;
    }
    int idx = add_buffer(cd, dtype, nb * sb, role);
    int64_t head_offset = 0;
    for (int t = 0; t < n; ++t) {
        test_view *v = views[t];
        v->buf = &cd->bufs[idx];
        v->offset = head_offset * sh;
        v->batch = nb;
        v->seqlen = seqlen;
        v->heads = heads[t];
        v->dim = dim;
        v->stride_batch = varlen ? 1000003 : sb;
        v->stride_seq = ss;
        v->stride_head = sh;
        head_offset += heads[t];
    }
}

/* Row r of the dense (token-major) order -> (b, s) of a view. */
static void row_coords(const test_view *v, int64_t r, int64_t *b, int64_t *s)
{
    *b = v->batch == 1 ? 0 : r / v->seqlen;
    *s = v->batch == 1 ? r : r % v->seqlen;
}

static double *gather(const test_view *v)
{
    int64_t rows = v->batch * v->seqlen;
    double *dense = xcalloc((size_t)(rows * v->heads * v->dim), sizeof(double));
    for (int64_t r = 0; r < rows; ++r) {
        int64_t b, s;
        row_coords(v, r, &b, &s);
        for (int64_t h = 0; h < v->heads; ++h)
            for (int64_t x = 0; x < v->dim; ++x)
                dense[(r * v->heads + h) * v->dim + x] = view_get(v, b, s, h, x);
    }
    return dense;
}

static void fill_normal(const test_view *v, test_rng *r, double scale)
{
    for (int64_t b = 0; b < v->batch; ++b)
        for (int64_t s = 0; s < v->seqlen; ++s)
            for (int64_t h = 0; h < v->heads; ++h)
                for (int64_t x = 0; x < v->dim; ++x)
                    view_set(v, b, s, h, x, scale * rng_normal(r));
}

static void aux_alloc(aux_array *a, size_t bytes)
{
    a->bytes = bytes;
    a->host = xcalloc(bytes, 1);
    a->device = NULL;
}

/* FP8 inputs: with descales, stored values over the format's range (a
 * normal sample scaled so that ~4.5 sigma meets the largest finite value,
 * beyond it saturated), as a quantizer leaves them; without, the values
 * themselves, of moderate size (subnormals included). */
static void fill_fp8(const test_view *v, test_rng *r, int descaled)
{
    fill_normal(v, r, descaled ? fp8_max(v->buf->dtype) / 4.5 : 1.0);
}

/* Descales of a (batch, heads, blocks) array: the quantizer's amax / max
 * (~4.5 / max for the values fill_fp8 stores) times 2^uniform(-spread,
 * spread), so that blocks differ widely (a block read with another's
 * descale shows). */
static void fill_descales(aux_array *a, int64_t count, fa_dtype dtype, double spread,
                          test_rng *r)
{
    aux_alloc(a, (size_t)count * sizeof(float));
    for (int64_t n = 0; n < count; ++n)
        ((float *)a->host)[n] =
            (float)(4.5 / fp8_max(dtype) * exp2(spread * (2.0 * rng_uniform(r) - 1.0)));
}

/* ---------------------------------------------------------------------- */
/* Device mirrors                                                          */

#ifdef FA_HAVE_CUDA
static size_t buffer_bytes(const test_buffer *b)
{
    return (size_t)(b->count + 2 * TEST_GUARD) * fa_dtype_size(b->dtype);
}
#endif

static void upload_all(case_data *cd)
{
#ifdef FA_HAVE_CUDA
    if (!cd->on_device)
        return;
    for (int n = 0; n < cd->nbufs; ++n) {
        test_buffer *b = &cd->bufs[n];
        if (!b->device)
            CUDA_CHECK(cudaMalloc(&b->device, buffer_bytes(b)));
        CUDA_CHECK(cudaMemcpy(b->device, b->host, buffer_bytes(b), cudaMemcpyHostToDevice));
    }
    aux_array *aux[NUM_AUX] = AUX_ARRAYS(cd);
    for (int n = 0; n < NUM_AUX; ++n)
        if (aux[n]->host && !aux[n]->device) {
            CUDA_CHECK(cudaMalloc(&aux[n]->device, aux[n]->bytes));
            CUDA_CHECK(cudaMemcpy(aux[n]->device, aux[n]->host, aux[n]->bytes,
                                  cudaMemcpyHostToDevice));
        }
#else
    (void)cd;
#endif
}

static void download_all(case_data *cd)
{
#ifdef FA_HAVE_CUDA
    if (!cd->on_device)
        return;
    CUDA_CHECK(cudaDeviceSynchronize());
    for (int n = 0; n < cd->nbufs; ++n)
        CUDA_CHECK(cudaMemcpy(cd->bufs[n].host, cd->bufs[n].device,
                              buffer_bytes(&cd->bufs[n]), cudaMemcpyDeviceToHost));
#else
    (void)cd;
#endif
}

static void *aux_ptr(const case_data *cd, const aux_array *a)
{
    return cd->on_device ? a->device : a->host;
}

static void *workspace_alloc(int on_device, size_t bytes)
{
#ifdef FA_HAVE_CUDA
    if (on_device) {
        void *p = NULL;
        CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
        return p;
    }
#endif
    (void)on_device;
    return xmalloc(bytes);
}

static void workspace_free(int on_device, void *p)
{
#ifdef FA_HAVE_CUDA
    if (on_device) {
        CUDA_CHECK(cudaFree(p));
        return;
    }
#endif
    (void)on_device;
    free(p);
}

static void case_data_free(case_data *cd)
{
    for (int n = 0; n < cd->nbufs; ++n) {
#ifdef FA_HAVE_CUDA
        if (cd->bufs[n].device)
            CUDA_CHECK(cudaFree(cd->bufs[n].device));
#endif
        buffer_free(&cd->bufs[n]);
    }
    aux_array *aux[NUM_AUX] = AUX_ARRAYS(cd);
    for (int n = 0; n < NUM_AUX; ++n) {
#ifdef FA_HAVE_CUDA
        if (aux[n]->device)
            CUDA_CHECK(cudaFree(aux[n]->device));
#endif
        free(aux[n]->host);
    }
    free(cd->q_start);
    free(cd->q_len);
    free(cd->k_start);
    free(cd->k_len);
}

/* ---------------------------------------------------------------------- */
/* Setting up one case                                                     */

/* NaN in the keys and values a sequence does not use (past seqused_k, up
 * to its length): a kernel that let them into a product (even as 0 · NaN)
 * would show it. */
static void poison_unused_keys(const grid_case *c, case_data *cd)
{
    for (int64_t b = 0; b < c->batch; ++b) {
        int64_t first = c->varlen ? cd->k_start[b] + cd->k_len[b] : cd->k_len[b];
        int64_t end = !c->varlen ? c->seqlen_k : b + 1 < c->batch ? cd->k_start[b + 1] : cd->total_k;
        int64_t vb = c->varlen ? 0 : b;
        for (int64_t s = first; s < end; ++s)
            for (int64_t h = 0; h < c->heads_kv; ++h) {
                for (int64_t x = 0; x < c->head_dim; ++x)
                    view_set(&cd->k, vb, s, h, x, NAN);
                for (int64_t x = 0; x < c->head_dim_v; ++x)
                    view_set(&cd->v, vb, s, h, x, NAN);
            }
    }
}

/* A paged copy of k and v (fixed-length): each sequence's pages in a
 * random order among spare ones, so that a page table the library ignored
 * could not pass; table entries past a sequence's used pages and the
 * padding between its rows are out of range (the library must not read
 * them). Spare pages, rows past seqlen_k and keys past seqused_k hold NaN. */
static void setup_pages(const grid_case *c, case_data *cd, test_rng *r)
{
    int64_t B = c->batch, ps = c->page_size;
    int64_t per_seq = (c->seqlen_k + ps - 1) / ps;
    int64_t num_pages = B * per_seq + rng_int(r, 1, 3);
    cd->table_stride = per_seq + rng_int(r, 0, 2);
    int64_t *order = xcalloc((size_t)num_pages, sizeof(int64_t));
    for (int64_t n = 0; n < num_pages; ++n)
        order[n] = n;
    for (int64_t n = num_pages - 1; n > 0; --n) { /* Fisher-Yates */
        int64_t m = rng_int(r, 0, n), t = order[n];
        order[n] = order[m];
        order[m] = t;
    }
    aux_alloc(&cd->block_table, (size_t)(B * cd->table_stride) * sizeof(int32_t));
    int32_t *table = cd->block_table.host;
    for (int64_t e = 0; e < B * cd->table_stride; ++e)
        table[e] = e % 2 ? INT32_MAX : -7;
    int64_t hkv[1] = {c->heads_kv};
    test_view *vk[1] = {&cd->kp}, *vv[1] = {&cd->vp};
    layout_group(cd, ROLE_INPUT, c->layout, c->dtype, 0, num_pages, ps, 1, hkv, c->head_dim, vk);
    layout_group(cd, ROLE_INPUT, c->layout, c->dtype, 0, num_pages, ps, 1, hkv, c->head_dim_v, vv);
    for (int64_t page = 0; page < num_pages; ++page) /* NaN, then the used rows */
        for (int64_t row = 0; row < ps; ++row)
            for (int64_t h = 0; h < c->heads_kv; ++h) {
                for (int64_t x = 0; x < c->head_dim; ++x)
                    view_set(&cd->kp, page, row, h, x, NAN);
                for (int64_t x = 0; x < c->head_dim_v; ++x)
                    view_set(&cd->vp, page, row, h, x, NAN);
            }
    for (int64_t b = 0; b < B; ++b) {
        int64_t used = (cd->k_len[b] + ps - 1) / ps;
        for (int64_t n = 0; n < per_seq; ++n) {
            int64_t page = order[b * per_seq + n];
            if (n < used)
                table[b * cd->table_stride + n] = (int32_t)page;
            for (int64_t row = 0; row < ps && n * ps + row < c->seqlen_k; ++row)
                for (int64_t h = 0; h < c->heads_kv; ++h) {
                    for (int64_t x = 0; x < c->head_dim; ++x)
                        view_set(&cd->kp, page, row, h, x, view_get(&cd->k, b, n * ps + row, h, x));
                    for (int64_t x = 0; x < c->head_dim_v; ++x)
                        view_set(&cd->vp, page, row, h, x, view_get(&cd->v, b, n * ps + row, h, x));
                }
        }
    }
    free(order);
}

/* Sequence lengths, tensors, options; fills attn (host or device
 * pointers per cd->on_device, after upload). */
static void setup_case(const grid_case *c, case_data *cd, fa_attn *attn,
                       test_rng *r)
{
    int64_t B = c->batch;
    cd->q_start = xcalloc((size_t)B, sizeof(int64_t));
    cd->q_len = xcalloc((size_t)B, sizeof(int64_t));
    cd->k_start = xcalloc((size_t)B, sizeof(int64_t));
    cd->k_len = xcalloc((size_t)B, sizeof(int64_t));
    int qkv_packed = c->packed && c->seqlen_q == c->seqlen_k;
    for (int64_t b = 0; b < B; ++b) {
        if (c->varlen) {
            cd->q_len[b] = rng_int(r, 0, c->seqlen_q);
            cd->k_len[b] = qkv_packed ? cd->q_len[b] : rng_int(r, 0, c->seqlen_k);
        } else {
            cd->q_len[b] = c->seqlen_q;
            cd->k_len[b] = c->seqlen_k;
        }
    }
    if (c->varlen) {
        /* the longest possible (half the time; else the lengths stay as
         * drawn and the max seqlen may exceed them all), an empty query
         * set, and (with keys independent of queries) queries that see no
         * key at all */
        if (rng_int(r, 0, 1)) {
            cd->q_len[0] = c->seqlen_q;
            cd->k_len[B - 1] = c->seqlen_k;
        }
        cd->q_len[1] = 0;
        if (qkv_packed) {
            cd->k_len[0] = cd->q_len[0];
            cd->k_len[1] = 0;
            cd->q_len[B - 1] = cd->k_len[B - 1];
        } else if (B > 2)
            cd->k_len[2] = 0;
    }
    cd->total_q = cd->total_k = 0;
    for (int64_t b = 0; b < B; ++b) {
        cd->q_start[b] = cd->total_q;
        cd->k_start[b] = cd->total_k;
        cd->total_q += cd->q_len[b];
        cd->total_k += cd->k_len[b];
    }
    if (c->seqused) {
        /* the keys each sequence uses of its k_len: all (first), none
         * (last), else any number */
        aux_alloc(&cd->seqused_k, (size_t)B * sizeof(int32_t));
        for (int64_t b = 0; b < B; ++b) {
            int64_t used = b == 0 ? cd->k_len[b] : b == B - 1 ? 0 : rng_int(r, 0, cd->k_len[b]);
            ((int32_t *)cd->seqused_k.host)[b] = (int32_t)used;
            cd->k_len[b] = used;
        }
    }
    int64_t rows_q = c->varlen ? cd->total_q : c->seqlen_q;
    int64_t rows_k = c->varlen ? cd->total_k : c->seqlen_k;
    int64_t hq = c->heads_q, hkv = c->heads_kv, d = c->head_dim, dv = c->head_dim_v;

    /* Tensors. Packed: q/k/v (same tokens) or k/v in one buffer, and the
     * gradients packed the same way. */
    for (int grad = 0; grad < 2; ++grad) {
        int role = grad ? ROLE_BACKWARD_OUTPUT : ROLE_INPUT;
        test_view *tq = grad ? &cd->dq : &cd->q, *tk = grad ? &cd->dk : &cd->k,
                  *tv = grad ? &cd->dv : &cd->v;
        if (qkv_packed) {
            int64_t heads[3] = {hq, hkv, hkv};
            test_view *views[3] = {tq, tk, tv};
            layout_group(cd, role, c->layout, c->dtype, c->varlen, B, rows_q, 3, heads, d, views);
        } else {
            int64_t hq1[1] = {hq};
            test_view *vq[1] = {tq};
            layout_group(cd, role, c->layout, c->dtype, c->varlen, B, rows_q, 1, hq1, d, vq);
            if (c->packed) {
                int64_t heads[2] = {hkv, hkv};
                test_view *views[2] = {tk, tv};
                layout_group(cd, role, c->layout, c->dtype, c->varlen, B, rows_k, 2, heads, d, views);
            } else {
                int64_t h1[1] = {hkv};
                test_view *vk[1] = {tk}, *vv[1] = {tv};
                layout_group(cd, role, c->layout, c->dtype, c->varlen, B, rows_k, 1, h1, d, vk);
                layout_group(cd, role, c->layout, c->dtype, c->varlen, B, rows_k, 1, h1, dv, vv);
            }
        }
    }
    int64_t hq1[1] = {hq};
    test_view *vo[1] = {&cd->out}, *vdo[1] = {&cd->dout};
    const fa_dtype out_dtype = out_dtype_of(c->dtype);
    layout_group(cd, ROLE_FORWARD_OUTPUT, c->layout, out_dtype, c->varlen, B, rows_q, 1, hq1, dv, vo);
    layout_group(cd, ROLE_INPUT, c->layout, out_dtype, c->varlen, B, rows_q, 1, hq1, dv, vdo);
    cd->lse_count = hq * (c->varlen ? cd->total_q : B * c->seqlen_q);
    cd->lse_buf = add_buffer(cd, FA_DTYPE_F32, cd->lse_count, ROLE_FORWARD_OUTPUT);

    /* Inputs: fresh normal values, never zeros (FP8: forward only, no
     * dout: it keeps its poison). */
    double logit_scale = c->logit_scale > 0 ? c->logit_scale : 1.0;
    const int fp8 = dtype_is_fp8(c->dtype);
    if (fp8) {
        fill_fp8(&cd->q, r, c->descaled & 1);
        fill_fp8(&cd->k, r, c->descaled & 2);
        fill_fp8(&cd->v, r, c->descaled & 4);
    } else {
        fill_normal(&cd->q, r, c->dropout_probe ? 0.1 : logit_scale);
        fill_normal(&cd->k, r, logit_scale);
        fill_normal(&cd->dout, r, 1.0);
    }
    if (c->dropout_probe) {
        for (int64_t t = 0; t < cd->v.batch; ++t)
            for (int64_t s = 0; s < cd->v.seqlen; ++s) {
                int64_t key = s; /* position within its sequence */
                if (c->varlen)
                    for (int64_t b = 0; b < B; ++b)
                        if (s >= cd->k_start[b] && s < cd->k_start[b] + cd->k_len[b])
                            key = s - cd->k_start[b];
                for (int64_t h = 0; h < hkv; ++h)
                    for (int64_t x = 0; x < dv; ++x)
                        view_set(&cd->v, t, s, h, x, x == key ? 1.0 : 0.0);
            }
    } else if (!fp8)
        fill_normal(&cd->v, r, 1.0);
    if (c->seqused)
        poison_unused_keys(c, cd);
    if (c->page_size)
        setup_pages(c, cd, r);

    fa_attn_init(attn);
    attn->batch = B;
    attn->seqlen_q = c->seqlen_q;
    attn->seqlen_k = c->seqlen_k;
    attn->heads_q = hq;
    attn->heads_kv = hkv;
    attn->head_dim = d;
    attn->head_dim_v = dv == d && rng_int(r, 0, 1) ? 0 : dv; /* 0 = head_dim */
    attn->dtype = c->dtype;
    attn->softmax_scale = c->softmax_scale;
    attn->causal = c->causal;
    attn->window_left = c->window_left;
    attn->window_right = c->window_right;
    attn->softcap = c->softcap;
    attn->dropout_p = c->dropout_p;
    attn->dropout_seed = c->dropout_seed;
    attn->dropout_offset = c->dropout_offset;
    attn->deterministic = c->deterministic;
    if (c->varlen) {
        aux_alloc(&cd->cu_q, (size_t)(B + 1) * sizeof(int32_t));
        aux_alloc(&cd->cu_k, (size_t)(B + 1) * sizeof(int32_t));
        int32_t *cq = cd->cu_q.host, *ck = cd->cu_k.host;
        for (int64_t b = 0; b < B; ++b) {
            cq[b] = (int32_t)cd->q_start[b];
            ck[b] = (int32_t)cd->k_start[b];
        }
        cq[B] = (int32_t)cd->total_q;
        ck[B] = (int32_t)cd->total_k;
    }
    if (c->alibi) {
        int64_t n = c->alibi == 2 ? B * hq : hq;
        aux_alloc(&cd->slopes, (size_t)n * sizeof(float));
        for (int64_t s = 0; s < n; ++s)
            ((float *)cd->slopes.host)[s] = (float)(0.02 + 0.98 * rng_uniform(r));
        attn->alibi_stride_batch = c->alibi == 2 ? hq : 0;
    }
    if (c->blocks != BLOCKS_OFF) {
        int64_t nq = (c->seqlen_q + c->block_size_q - 1) / c->block_size_q;
        int64_t nk = (c->seqlen_k + c->block_size_k - 1) / c->block_size_k;
        int64_t per = nq * nk;
        int64_t sb = c->blocks == BLOCKS_SHARED_BATCHES ? 0
                     : c->blocks == BLOCKS_SHARED_HEADS ? per : hq * per;
        int64_t sh = c->blocks == BLOCKS_SHARED_HEADS ? 0 : per;
        int64_t count = (B - 1) * sb + (hq - 1) * sh + per;
        aux_alloc(&cd->block_mask, (size_t)count);
        for (int64_t n = 0; n < count; ++n)
            ((uint8_t *)cd->block_mask.host)[n] = rng_uniform(r) < 0.6 ? 1 : 0;
        attn->block_size_q = c->block_size_q;
        attn->block_size_k = c->block_size_k;
        attn->block_mask_blocks_q = nq;
        attn->block_mask_blocks_k = nk;
        attn->block_mask_stride_batch = sb;
        attn->block_mask_stride_head = sh;
    }
    if (fp8) {
        /* q and k descales within 2x of the quantizer's (so that scores stay
         * moderate), v's within 4x */
        /* as the API resolves a block of 0: the sequence, at least 1 row */
        cd->descale_rows_q = c->descale_block_q ? c->descale_block_q : c->seqlen_q > 0 ? c->seqlen_q : 1;
        cd->descale_rows_k = c->descale_block_k ? c->descale_block_k : c->seqlen_k > 0 ? c->seqlen_k : 1;
        cd->descale_blocks_q = (c->seqlen_q + cd->descale_rows_q - 1) / cd->descale_rows_q;
        cd->descale_blocks_k = (c->seqlen_k + cd->descale_rows_k - 1) / cd->descale_rows_k;
        if (c->descaled & 1)
            fill_descales(&cd->q_descale, B * hq * cd->descale_blocks_q, c->dtype, 1.0, r);
        if (c->descaled & 2)
            fill_descales(&cd->k_descale, B * hkv * cd->descale_blocks_k, c->dtype, 1.0, r);
        if (c->descaled & 4)
            fill_descales(&cd->v_descale, B * hkv * cd->descale_blocks_k, c->dtype, 2.0, r);
        attn->descale_block_q = c->descale_block_q;
        attn->descale_block_k = c->descale_block_k;
    }
    upload_all(cd);
    if (c->seqused)
        attn->seqused_k = aux_ptr(cd, &cd->seqused_k);
    if (c->page_size) {
        attn->kv_block_table = aux_ptr(cd, &cd->block_table);
        attn->kv_block_table_stride = cd->table_stride;
        attn->kv_page_size = c->page_size;
        attn->kv_num_pages = cd->kp.batch;
    }
    if (c->varlen) {
        attn->cu_seqlens_q = aux_ptr(cd, &cd->cu_q);
        attn->cu_seqlens_k = aux_ptr(cd, &cd->cu_k);
    }
    if (c->alibi)
        attn->alibi_slopes = aux_ptr(cd, &cd->slopes);
    if (c->blocks != BLOCKS_OFF)
        attn->block_mask = aux_ptr(cd, &cd->block_mask);
    attn->q_descale = aux_ptr(cd, &cd->q_descale); /* NULL where not descaled */
    attn->k_descale = aux_ptr(cd, &cd->k_descale);
    attn->v_descale = aux_ptr(cd, &cd->v_descale);
}

static void make_ref_problem(const grid_case *c, const case_data *cd,
                             const fa_attn *attn, ref_problem *p)
{
    memset(p, 0, sizeof *p);
    p->batch = c->batch;
    p->heads_q = c->heads_q;
    p->heads_kv = c->heads_kv;
    p->head_dim = c->head_dim;
    p->head_dim_v = c->head_dim_v;
    p->q_start = cd->q_start;
    p->q_len = cd->q_len;
    p->k_start = cd->k_start;
    p->k_len = cd->k_len;
    p->total_q = cd->total_q;
    p->total_k = cd->total_k;
    p->softmax_scale = c->softmax_scale > 0 ? (double)c->softmax_scale
                                            : 1.0 / sqrt((double)c->head_dim);
    p->window_left = c->window_left;
    p->window_right = c->causal ? 0 : c->window_right;
    p->softcap = c->softcap;
    p->alibi_slopes = c->alibi ? cd->slopes.host : NULL;
    p->alibi_stride_batch = attn->alibi_stride_batch;
    p->dropout_p = c->dropout_p;
    p->dropout_seed = c->dropout_seed;
    p->dropout_offset = c->dropout_offset;
    if (c->blocks != BLOCKS_OFF) {
        p->block_mask = cd->block_mask.host;
        p->block_size_q = c->block_size_q;
        p->block_size_k = c->block_size_k;
        p->blocks_k = attn->block_mask_blocks_k;
        p->block_mask_stride_batch = attn->block_mask_stride_batch;
        p->block_mask_stride_head = attn->block_mask_stride_head;
    }
    ref_set_lowp(p, c->dtype);
}

/* dense (token-major, as gather() returns it) := stored × descale, for the
 * rows of each sequence: row i of sequence b, head h uses descale
 * [(b·heads + h)·blocks + i / rows]. A NULL descale is 1. */
static void dequantize(double *dense, const aux_array *descale, int64_t batch, int64_t heads,
                       int64_t dim, const int64_t *start, const int64_t *len, int64_t rows,
                       int64_t blocks)
{
    if (!descale->host)
        return;
    const float *d = descale->host;
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t i = 0; i < len[b]; ++i)
            for (int64_t h = 0; h < heads; ++h) {
                double scale = d[(b * heads + h) * blocks + i / rows];
                double *row = dense + ((start[b] + i) * heads + h) * dim;
                for (int64_t x = 0; x < dim; ++x)
                    row[x] *= scale;
            }
}

/* ---------------------------------------------------------------------- */
/* Checks                                                                  */

/* Decodes a dense index for messages: q-side (b, i, h, x), k-side
 * (b, j, h, x), or lse (b, h, i). */
typedef enum index_side { SIDE_Q, SIDE_K, SIDE_LSE } index_side;

typedef struct index_decoder {
    const case_data *cd;
    index_side side;
    int64_t batch, heads, dim;
} index_decoder;

static void decode_index(const index_decoder *dec, int64_t n, char *buf, size_t size)
{
    const case_data *cd = dec->cd;
    int64_t row, h, x = 0;
    if (dec->side == SIDE_LSE) {
        h = n / cd->total_q;
        row = n % cd->total_q;
    } else {
        x = n % dec->dim;
        h = (n / dec->dim) % dec->heads;
        row = n / (dec->dim * dec->heads);
    }
    const int64_t *start = dec->side == SIDE_K ? cd->k_start : cd->q_start;
    const int64_t *len = dec->side == SIDE_K ? cd->k_len : cd->q_len;
    int64_t b = 0;
    for (int64_t s = 0; s < dec->batch; ++s)
        if (row >= start[s] && row < start[s] + len[s])
            b = s;
    if (dec->side == SIDE_LSE)
        snprintf(buf, size, "[b=%lld h=%lld i=%lld]", (long long)b, (long long)h,
                 (long long)(row - start[b]));
    else
        snprintf(buf, size, "[b=%lld %c=%lld h=%lld x=%lld]", (long long)b,
                 dec->side == SIDE_K ? 'j' : 'i', (long long)(row - start[b]),
                 (long long)h, (long long)x);
}

/* The tolerance rule; returns the number of offending elements. -inf in
 * the reference must be matched exactly (fully masked lse rows). */
static int64_t compare(case_report *rep, const char *name, int64_t n,
                       const double *tested, const double *exact,
                       const double *naive, const double *mag, double u,
                       double u_acc, const index_decoder *dec)
{
    double err_naive = 0.0, max_ref = 0.0, err_tested = 0.0;
    int64_t naive_not_finite = 0;
    for (int64_t e = 0; e < n; ++e) {
        if (!isfinite(exact[e]))
            continue;
        if (fabs(exact[e]) > max_ref)
            max_ref = fabs(exact[e]);
        if (!isfinite(naive[e]))
            naive_not_finite++;
        else if (fabs(naive[e] - exact[e]) > err_naive)
            err_naive = fabs(naive[e] - exact[e]);
    }
    /* the naive model must be finite where the exact result is, or its
     * error would not scale the tolerance */
    if (naive_not_finite)
        report_failure(rep, "%s: the naive model is not finite at %lld elements where the exact "
                       "result is", name, (long long)naive_not_finite);
    double tol = TOL_MULT * err_naive + 4.0 * u * (max_ref + 0.3);
    int64_t bad = 0;
    for (int64_t e = 0; e < n; ++e) {
        int ok;
        if (isinf(exact[e]))
            ok = tested[e] == exact[e];
        else {
            double err = fabs(tested[e] - exact[e]);
            double floor = ACCUM_FLOOR * u_acc * mag[e];
            ok = err <= tol + floor; /* NaN fails */
            if (err > err_tested || isnan(err))
                err_tested = err;
            if (err > tol && mag[e] > 0 && (err - tol) / (u_acc * mag[e]) > worst_accum_ratio)
                worst_accum_ratio = (err - tol) / (u_acc * mag[e]);
        }
        if (ok)
            continue;
        if (bad < MAX_PRINT) {
            char where[128];
            decode_index(dec, e, where, sizeof where);
            report_failure(rep, "%s%s: got %.7g, exact %.7g, naive %.7g (tol %.3g + "
                           "floor %.3g)", name, where, tested[e], exact[e], naive[e], tol,
                           ACCUM_FLOOR * u_acc * mag[e]);
        } else
            rep->failures++;
        bad++;
    }
    if (bad)
        printf("    %s: %lld of %lld elements off; max err %.3g, naive err %.3g, "
               "tol %.3g\n", name, (long long)bad, (long long)n, err_tested,
               err_naive, tol);
    return bad;
}

/* Every element of the role's buffers: inside a view -> written (not NaN,
 * except lse's -inf which compare() judges); outside -> poison intact. */
static void check_coverage(case_report *rep, case_data *cd, int role)
{
    const test_view *views[] = {&cd->q, &cd->k, &cd->v, &cd->out,
                                &cd->dout, &cd->dq, &cd->dk, &cd->dv};
    for (int n = 0; n < cd->nbufs; ++n) {
        if (cd->role[n] != role)
            continue;
        test_buffer *buf = &cd->bufs[n];
        int64_t total = buf->count + 2 * TEST_GUARD;
        unsigned char *covered = xcalloc((size_t)total, 1);
        if (n == cd->lse_buf)
            memset(covered + TEST_GUARD, 1, (size_t)buf->count);
        for (size_t t = 0; t < sizeof views / sizeof views[0]; ++t) {
            const test_view *v = views[t];
            if (v->buf != buf)
                continue;
            for (int64_t b = 0; b < v->batch; ++b)
                for (int64_t s = 0; s < v->seqlen; ++s)
                    for (int64_t h = 0; h < v->heads; ++h)
                        memset(covered + view_index(v, b, s, h, 0), 1, (size_t)v->dim);
        }
        int64_t unwritten = 0, clobbered = 0;
        for (int64_t e = 0; e < total; ++e) {
            if (covered[e]) {
                if (isnan(load_elem(buf->host, buf->dtype, e)) && unwritten++ < 3)
                    report_failure(rep, "buffer %d: element %lld of a view is NaN "
                                   "(not written?)", n, (long long)(e - TEST_GUARD));
            } else if (!is_poison(buf->host, buf->dtype, e) && clobbered++ < 3)
                report_failure(rep, "buffer %d: element %lld outside every view "
                               "was overwritten (%s)", n, (long long)(e - TEST_GUARD),
                               e < TEST_GUARD || e >= TEST_GUARD + buf->count
                                   ? "guard zone" : "stride padding");
        }
        if (unwritten > 3 || clobbered > 3)
            printf("    buffer %d: %lld NaN in views, %lld writes outside views\n", n,
                   (long long)unwritten, (long long)clobbered);
        rep->failures += (int)((unwritten > 3 ? unwritten - 3 : 0) +
                               (clobbered > 3 ? clobbered - 3 : 0));
        free(covered);
    }
}

/* Snapshots of buffers (inputs before a call, outputs for repeat checks). */
typedef struct snapshot {
    void *bytes[MAX_BUFFERS];
} snapshot;

static void snapshot_take(snapshot *s, const case_data *cd, int role)
{
    for (int n = 0; n < cd->nbufs; ++n) {
        s->bytes[n] = NULL;
        if (cd->role[n] != role)
            continue;
        size_t size = (size_t)(cd->bufs[n].count + 2 * TEST_GUARD) *
                      fa_dtype_size(cd->bufs[n].dtype);
        s->bytes[n] = xmalloc(size);
        memcpy(s->bytes[n], cd->bufs[n].host, size);
    }
}

static void snapshot_compare(case_report *rep, const snapshot *s,
                             const case_data *cd, const char *what)
{
    for (int n = 0; n < cd->nbufs; ++n) {
        if (!s->bytes[n])
            continue;
        size_t esize = fa_dtype_size(cd->bufs[n].dtype);
        int64_t total = cd->bufs[n].count + 2 * TEST_GUARD;
        for (int64_t e = 0; e < total; ++e)
            if (memcmp((char *)s->bytes[n] + e * esize,
                       (char *)cd->bufs[n].host + e * esize, esize)) {
                report_failure(rep, "buffer %d: %s (first at element %lld)", n, what,
                               (long long)(e - TEST_GUARD));
                break;
            }
    }
}

static void snapshot_free(snapshot *s, const case_data *cd)
{
    for (int n = 0; n < cd->nbufs; ++n)
        free(s->bytes[n]);
}

static void poison_role(case_data *cd, int role)
{
    for (int n = 0; n < cd->nbufs; ++n)
        if (cd->role[n] == role)
            buffer_poison(&cd->bufs[n]);
}

/* lse of the library, in the reference's (heads_q, total_q) order. */
static double *gather_lse(const grid_case *c, const case_data *cd)
{
    double *dense = xcalloc((size_t)cd->lse_count, sizeof(double));
    const test_buffer *buf = &cd->bufs[cd->lse_buf];
    for (int64_t b = 0; b < c->batch; ++b)
        for (int64_t h = 0; h < c->heads_q; ++h)
            for (int64_t i = 0; i < cd->q_len[b]; ++i) {
                int64_t row = cd->q_start[b] + i;
                int64_t idx = c->varlen ? h * cd->total_q + row
                                        : (b * c->heads_q + h) * c->seqlen_q + i;
                dense[h * cd->total_q + row] = load_elem(buf->host, FA_DTYPE_F32,
                                                         TEST_GUARD + idx);
            }
    return dense;
}

/* The kernel name must show the ISA FA_CPU_ISA asked for, when this
 * machine has it (the backend caps to what exists otherwise). */
static void check_kernel_isa(case_report *rep, const run_config *cfg, const char *kernel)
{
    if (cfg->device != FA_DEVICE_CPU || !cfg->isa)
        return;
    int have = !strcmp(cfg->isa, "scalar");
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    if (!strcmp(cfg->isa, "avx2"))
        have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (!strcmp(cfg->isa, "avx512"))
        have = __builtin_cpu_supports("avx512f");
#endif
    if (have && !strstr(kernel, cfg->isa))
        report_failure(rep, "FA_CPU_ISA=%s but the call ran kernel \"%s\"", cfg->isa,
                       kernel);
}

/* Dropout probe: (out[row, h, j] != 0) must equal keep(b, h, i, j) for
 * visible keys; no other column may be non-zero. Returns the mask (1 byte
 * per (row, h, j < dv)) for the CPU/CUDA comparison. */
static unsigned char *check_probe(case_report *rep, const grid_case *c,
                                  const case_data *cd, const ref_problem *p,
                                  const double *out, const char *who)
{
    int64_t dv = c->head_dim_v;
    unsigned char *mask = xcalloc((size_t)(cd->total_q * c->heads_q * dv), 1);
    int64_t wrong = 0;
    for (int64_t b = 0; b < c->batch; ++b)
        for (int64_t h = 0; h < c->heads_q; ++h)
            for (int64_t i = 0; i < cd->q_len[b]; ++i) {
                int64_t row = cd->q_start[b] + i;
                for (int64_t j = 0; j < dv; ++j) {
                    int64_t e = (row * c->heads_q + h) * dv + j;
                    mask[e] = out[e] != 0.0;
                    int expect = j < cd->k_len[b] && ref_visible(p, b, h, i, j) &&
                                 fa_dropout_keep(c->dropout_seed, c->dropout_offset,
                                                 c->heads_q, b, h, i, j, c->dropout_p);
                    if (mask[e] != expect && wrong++ < MAX_PRINT)
                        report_failure(rep, "%s dropout mask (b=%lld h=%lld i=%lld "
                                       "j=%lld): out %g, fa_dropout_keep says %s", who,
                                       (long long)b, (long long)h, (long long)i,
                                       (long long)j, out[e], expect ? "keep" : "drop");
                }
            }
    if (wrong > MAX_PRINT) {
        printf("    %s: %lld mask elements differ\n", who, (long long)wrong);
        rep->failures += (int)(wrong - MAX_PRINT);
    }
    return mask;
}

/* ---------------------------------------------------------------------- */
/* One case                                                                */

typedef struct case_timing {
    double reference, library;
} case_timing;

/* Runs fa_forward (1) or fa_backward (0... see dir) with the case's views. */
static fa_status call_library(fa_context *ctx, const grid_case *c, case_data *cd,
                              const fa_attn *attn, int backward, case_timing *tm)
{
    int dev = cd->on_device;
    fa_tensor q = view_tensor(&cd->q, dev),
              k = view_tensor(c->page_size ? &cd->kp : &cd->k, dev),
              v = view_tensor(c->page_size ? &cd->vp : &cd->v, dev), out = view_tensor(&cd->out, dev),
              dout = view_tensor(&cd->dout, dev), dq = view_tensor(&cd->dq, dev),
              dk = view_tensor(&cd->dk, dev), dv = view_tensor(&cd->dv, dev);
    test_buffer *lse_buf = &cd->bufs[cd->lse_buf];
    float *lse = (float *)(dev ? lse_buf->device : lse_buf->host) + TEST_GUARD;
    void *workspace = NULL;
    size_t workspace_size = 0;
    fa_status st;
    if (c->explicit_workspace) {
        st = backward ? fa_backward_workspace_size(ctx, attn, &workspace_size)
                      : fa_forward_workspace_size(ctx, attn, &workspace_size);
        if (st != FA_SUCCESS)
            return st;
        workspace = workspace_alloc(dev, workspace_size);
    }
    double t0 = now_seconds();
    if (backward)
        st = fa_backward(ctx, attn, &q, &k, &v, &out, lse, &dout, &dq, &dk, &dv,
                         workspace, workspace_size);
    else
        st = fa_forward(ctx, attn, &q, &k, &v, &out, lse, workspace, workspace_size);
#ifdef FA_HAVE_CUDA
    if (dev)
        CUDA_CHECK(cudaDeviceSynchronize());
#endif
    tm->library += now_seconds() - t0;
    if (workspace)
        workspace_free(dev, workspace);
    return st;
}

/* A call's status: success; a counted skip (forced backend, unsupported);
 * or a failure. Returns 1 if the results should be checked. */
static int accept_status(case_report *rep, const run_config *cfg, fa_status st,
                         const char *what, int *skipped)
{
    if (st == FA_SUCCESS)
        return 1;
    if (st == FA_ERROR_UNSUPPORTED && !rep->must_run &&
        (cfg->backend != FA_BACKEND_AUTO || rep->cuda_may_refuse)) {
        if (!*skipped)
            printf("SKIP %s: %s unsupported by %s backend %s: %s\n", rep->header, what,
                   cfg->backend == FA_BACKEND_AUTO ? "the" : "forced",
                   fa_backend_name(cfg->backend), fa_last_error());
        *skipped = 1;
        return 0;
    }
    report_failure(rep, "%s returned %s: %s", what, fa_status_string(st), fa_last_error());
    return 0;
}

static void run_case(const grid_case *c, const run_config *cfg, case_report *rep,
                     case_timing *tm)
{
    case_data cd;
    memset(&cd, 0, sizeof cd);
    cd.on_device = cfg->device == FA_DEVICE_CUDA;
    fa_attn attn;
    test_rng r;
    rng_seed(&r, c->data_seed);
    setup_case(c, &cd, &attn, &r);

    double *q = gather(&cd.q), *k = gather(&cd.k), *v = gather(&cd.v),
           *dout = gather(&cd.dout);
    int64_t nq = cd.total_q * c->heads_q, nk = cd.total_k * c->heads_kv;
    int64_t d = c->head_dim, dv = c->head_dim_v;
    dequantize(q, &cd.q_descale, c->batch, c->heads_q, d, cd.q_start, cd.q_len,
               cd.descale_rows_q, cd.descale_blocks_q);
    dequantize(k, &cd.k_descale, c->batch, c->heads_kv, d, cd.k_start, cd.k_len,
               cd.descale_rows_k, cd.descale_blocks_k);
    dequantize(v, &cd.v_descale, c->batch, c->heads_kv, dv, cd.k_start, cd.k_len,
               cd.descale_rows_k, cd.descale_blocks_k);

    /* References: exact and naive low precision. */
    double t0 = now_seconds();
    ref_problem exact, naive;
    make_ref_problem(c, &cd, &attn, &exact);
    naive = exact;
    naive.emulate = 1;
    double *out_exact = xcalloc((size_t)(nq * dv), sizeof(double));
    double *out_naive = xcalloc((size_t)(nq * dv), sizeof(double));
    double *lse_exact = xcalloc((size_t)nq, sizeof(double));
    double *lse_naive = xcalloc((size_t)nq, sizeof(double));
    double *out_mag = xcalloc((size_t)(nq * dv), sizeof(double));
    double *lse_mag = xcalloc((size_t)nq, sizeof(double));
    ref_forward(&exact, q, k, v, out_exact, lse_exact, out_mag, lse_mag);
    ref_forward(&naive, q, k, v, out_naive, lse_naive, NULL, NULL);
    double *grads_exact[3], *grads_naive[3], *grads_mag[3];
    int64_t grad_count[3] = {nq * d, nk * d, nk * dv};
    for (int g = 0; g < 3; ++g) {
        grads_exact[g] = xcalloc((size_t)grad_count[g], sizeof(double));
        grads_naive[g] = xcalloc((size_t)grad_count[g], sizeof(double));
        grads_mag[g] = xcalloc((size_t)grad_count[g], sizeof(double));
    }
    const int fp8 = dtype_is_fp8(c->dtype);
    const int forward_only = c->seqused || c->page_size || fp8; /* KV cache, FP8 */
    if (!forward_only && !c->inference) {
        ref_backward(&exact, q, k, v, out_exact, dout, grads_exact[0], grads_exact[1],
                     grads_exact[2], grads_mag);
        ref_backward(&naive, q, k, v, out_naive, dout, grads_naive[0], grads_naive[1],
                     grads_naive[2], NULL);
    }
    tm->reference += now_seconds() - t0;

    index_decoder dec_out = {&cd, SIDE_Q, c->batch, c->heads_q, dv};
    index_decoder dec_q = {&cd, SIDE_Q, c->batch, c->heads_q, d};
    index_decoder dec_lse = {&cd, SIDE_LSE, c->batch, c->heads_q, 0};
    index_decoder dec_k = {&cd, SIDE_K, c->batch, c->heads_kv, d};
    index_decoder dec_v = {&cd, SIDE_K, c->batch, c->heads_kv, dv};
    double u = dtype_unit_roundoff(c->dtype), u32 = dtype_unit_roundoff(FA_DTYPE_F32);
    double u_out = dtype_unit_roundoff(out_dtype_of(c->dtype)), u_acc = fp8 ? FP8_ACCUM_U : u32;

    /* Forward. */
    snapshot inputs;
    snapshot_take(&inputs, &cd, ROLE_INPUT);
    fa_status st = call_library(cfg->ctx, c, &cd, &attn, 0, tm);
    download_all(&cd);
    if (!accept_status(rep, cfg, st, "fa_forward", &rep->skipped_forward))
        goto done;
    check_kernel_isa(rep, cfg, fa_context_last_kernel(cfg->ctx));
    snprintf(rep->forward_kernel, sizeof rep->forward_kernel, "%s", fa_context_last_kernel(cfg->ctx));
    split_forwards += strstr(fa_context_last_kernel(cfg->ctx), ".split") != NULL;
    if (rep->must_split && (strncmp(fa_context_last_kernel(cfg->ctx), "sm90.", 5) != 0 ||
                            !strstr(fa_context_last_kernel(cfg->ctx), ".split.")))
        report_failure(rep, "expected the Hopper key split, ran kernel \"%s\"", fa_context_last_kernel(cfg->ctx));
    check_coverage(rep, &cd, ROLE_FORWARD_OUTPUT);
    snapshot_compare(rep, &inputs, &cd, "fa_forward changed an input");
    double *out = gather(&cd.out), *lse = gather_lse(c, &cd);
    compare(rep, "out", nq * dv, out, out_exact, out_naive, out_mag, u_out, u_acc, &dec_out);
    compare(rep, "lse", nq, lse, lse_exact, lse_naive, lse_mag, u32, u_acc, &dec_lse);
    if (c->dropout_probe) {
        unsigned char *mask = check_probe(rep, c, &cd, &exact, out, fa_backend_name(cfg->backend));
        if (cfg->cpu_ctx) { /* the CUDA mask must be the CPU backend's */
            fa_attn host_attn = attn;
            if (c->varlen) {
                host_attn.cu_seqlens_q = cd.cu_q.host;
                host_attn.cu_seqlens_k = cd.cu_k.host;
            }
            cd.on_device = 0; /* the host copies of the same inputs */
            poison_role(&cd, ROLE_FORWARD_OUTPUT);
            fa_status cst = call_library(cfg->cpu_ctx, c, &cd, &host_attn, 0, tm);
            cd.on_device = 1;
            if (cst != FA_SUCCESS)
                report_failure(rep, "CPU fa_forward for the mask comparison: %s",
                               fa_last_error());
            else {
                double *cpu_out = gather(&cd.out);
                unsigned char *cpu_mask = check_probe(rep, c, &cd, &exact, cpu_out, "cpu");
                for (int64_t e = 0; e < nq * dv; ++e)
                    if (cpu_mask[e] != mask[e]) {
                        report_failure(rep, "CUDA and CPU dropout masks differ at dense "
                                       "index %lld", (long long)e);
                        break;
                    }
                free(cpu_mask);
                free(cpu_out);
            }
            download_all(&cd); /* back to the CUDA results */
        }
        free(mask);
    }
    /* Forward again: bit-identical. */
    snapshot first;
    snapshot_take(&first, &cd, ROLE_FORWARD_OUTPUT);
    poison_role(&cd, ROLE_FORWARD_OUTPUT);
    upload_all(&cd);
    st = call_library(cfg->ctx, c, &cd, &attn, 0, tm);
    download_all(&cd);
    if (accept_status(rep, cfg, st, "fa_forward (repeat)", &rep->skipped_forward))
        snapshot_compare(rep, &first, &cd, "a repeated fa_forward gave different bits");

    if (forward_only && cd.on_device) { /* trusted KV-cache arrays, descales: the same bits */
        fa_context_set_kv_cache_checks(cfg->ctx, 0);
        poison_role(&cd, ROLE_FORWARD_OUTPUT);
        upload_all(&cd);
        st = call_library(cfg->ctx, c, &cd, &attn, 0, tm);
        download_all(&cd);
        fa_context_set_kv_cache_checks(cfg->ctx, 1);
        if (accept_status(rep, cfg, st, "fa_forward (KV-cache checks off)", &rep->skipped_forward))
            snapshot_compare(rep, &first, &cd, "fa_forward without the KV-cache checks gave different bits");
    }
    if (forward_only) { /* the backward must refuse FP8 and the KV-cache options */
        snapshot untouched;
        snapshot_take(&untouched, &cd, ROLE_BACKWARD_OUTPUT);
        st = call_library(cfg->ctx, c, &cd, &attn, 1, tm);
        const char *msg = fa_last_error();
        const int named = (fp8 && strstr(msg, fa_dtype_name(c->dtype))) ||
                          (c->seqused && strstr(msg, "seqused_k")) ||
                          (c->page_size && strstr(msg, "kv_block_table"));
        if (st != FA_ERROR_INVALID_ARGUMENT || !named)
            report_failure(rep, "fa_backward of a forward-only problem returned %s \"%s\", not "
                           "invalid argument naming the dtype or KV-cache option",
                           fa_status_string(st), msg);
        download_all(&cd);
        snapshot_compare(rep, &untouched, &cd, "a refused fa_backward wrote to its outputs");
        snapshot_free(&untouched, &cd);
        snapshot_free(&first, &cd);
        free(out);
        free(lse);
        goto done;
    }

    if (c->inference) {
        snapshot_free(&first, &cd);
        free(out);
        free(lse);
        goto done;
    }

    /* Backward, from the library's own out and lse. */
    poison_role(&cd, ROLE_BACKWARD_OUTPUT);
    upload_all(&cd);
    st = call_library(cfg->ctx, c, &cd, &attn, 1, tm);
    download_all(&cd);
    if (accept_status(rep, cfg, st, "fa_backward", &rep->skipped_backward)) {
        check_kernel_isa(rep, cfg, fa_context_last_kernel(cfg->ctx));
        check_coverage(rep, &cd, ROLE_BACKWARD_OUTPUT);
        snapshot_compare(rep, &inputs, &cd, "fa_backward changed an input");
        snapshot_compare(rep, &first, &cd, "fa_backward changed out or lse");
        double *dq = gather(&cd.dq), *dk = gather(&cd.dk),
               *dvv = gather(&cd.dv);
        compare(rep, "dq", nq * d, dq, grads_exact[0], grads_naive[0], grads_mag[0], u, u32, &dec_q);
        compare(rep, "dk", nk * d, dk, grads_exact[1], grads_naive[1], grads_mag[1], u, u32, &dec_k);
        compare(rep, "dv", nk * dv, dvv, grads_exact[2], grads_naive[2], grads_mag[2], u, u32, &dec_v);
        if (!c->deterministic) {
            /* Again: dk and dv have one writer per element (bit-identical);
             * dq may be summed by atomics in arrival order, so it only has
             * to pass the tolerance again. A moving dk/dv is a race, except
             * after sm80's last-wave split (".split"), which sums the dk / dv
             * of the last tasks' parts in arrival order too. */
            const int dkv_summed = strstr(fa_context_last_kernel(cfg->ctx), ".split") != NULL;
            split_backwards += dkv_summed;
            poison_role(&cd, ROLE_BACKWARD_OUTPUT);
            upload_all(&cd);
            st = call_library(cfg->ctx, c, &cd, &attn, 1, tm);
            download_all(&cd);
            if (accept_status(rep, cfg, st, "fa_backward (repeat)", &rep->skipped_backward)) {
                double *dq2 = gather(&cd.dq), *dk2 = gather(&cd.dk), *dv2 = gather(&cd.dv);
                if (dkv_summed) {
                    compare(rep, "dk (repeat)", nk * d, dk2, grads_exact[1], grads_naive[1], grads_mag[1], u, u32,
                            &dec_k);
                    compare(rep, "dv (repeat)", nk * dv, dv2, grads_exact[2], grads_naive[2], grads_mag[2], u, u32,
                            &dec_v);
                } else if (memcmp(dk, dk2, (size_t)(nk * d) * sizeof *dk) != 0 ||
                           memcmp(dvv, dv2, (size_t)(nk * dv) * sizeof *dvv) != 0) {
                    report_failure(rep, "a repeated fa_backward gave different dk or dv");
                }
                compare(rep, "dq (repeat)", nq * d, dq2, grads_exact[0], grads_naive[0], grads_mag[0], u, u32,
                        &dec_q);
                free(dq2);
                free(dk2);
                free(dv2);
            }
        }
        free(dq);
        free(dk);
        free(dvv);
        if (c->deterministic) {
            snapshot grads;
            snapshot_take(&grads, &cd, ROLE_BACKWARD_OUTPUT);
            for (int rep_run = 0; rep_run < 2; ++rep_run) {
                poison_role(&cd, ROLE_BACKWARD_OUTPUT);
                upload_all(&cd);
                st = call_library(cfg->ctx, c, &cd, &attn, 1, tm);
                download_all(&cd);
                if (accept_status(rep, cfg, st, "fa_backward (deterministic repeat)",
                                  &rep->skipped_backward))
                    snapshot_compare(rep, &grads, &cd, "deterministic fa_backward "
                                     "gave different bits on a repeat");
            }
            snapshot_free(&grads, &cd);
        }
    }
    snapshot_free(&first, &cd);
    free(out);
    free(lse);
done:
    snapshot_free(&inputs, &cd);
    for (int g = 0; g < 3; ++g) {
        free(grads_exact[g]);
        free(grads_naive[g]);
        free(grads_mag[g]);
    }
    free(out_mag);
    free(lse_mag);
    free(out_exact);
    free(out_naive);
    free(lse_exact);
    free(lse_naive);
    free(q);
    free(k);
    free(v);
    free(dout);
    case_data_free(&cd);
}

/* ---------------------------------------------------------------------- */
/* main                                                                    */

static void usage(void)
{
    fprintf(stderr,
            "usage: test_grid [--device cpu|cuda] [--backend auto|cpu|sm80|sm90]\n"
            "                 [--threads N] [--seed S] [--quick] [--filter TEXT]\n"
            "                 [--case N] [--list] [--verbose]\n");
}

static int parse_backend(const char *s, fa_backend *b)
{
    static const struct { const char *name; fa_backend value; } names[] = {
        {"auto", FA_BACKEND_AUTO}, {"cpu", FA_BACKEND_CPU},
        {"sm80", FA_BACKEND_CUDA_SM80}, {"sm90", FA_BACKEND_CUDA_SM90}};
    for (size_t n = 0; n < sizeof names / sizeof names[0]; ++n)
        if (!strcmp(s, names[n].name)) {
            *b = names[n].value;
            return 1;
        }
    return 0;
}

/* CUDA availability; returns 0 (with the reason printed) to skip. */
static int cuda_available(void)
{
#ifdef FA_HAVE_CUDA
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        printf("SKIP: no usable CUDA device (%s)\n", cudaGetErrorString(err));
        return 0;
    }
    if (count == 0) {
        printf("SKIP: no CUDA device\n");
        return 0;
    }
    return 1;
#else
    printf("SKIP: this build has no CUDA (FA_HAVE_CUDA undefined)\n");
    return 0;
#endif
}

/* Is device 0 an sm_90 GPU (where the Hopper kernels run)? */
static int cuda_device_is_sm90(void)
{
#ifdef FA_HAVE_CUDA
    int major = 0, minor = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
    CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0));
    return major == 9 && minor == 0;
#else
    return 0;
#endif
}

static int cuda_device_sms(void)
{
    int sms = 0;
#ifdef FA_HAVE_CUDA
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
#endif
    return sms;
}

int main(int argc, char **argv)
{
    run_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.device = FA_DEVICE_CPU;
    cfg.backend = FA_BACKEND_AUTO;
    uint64_t seed = 20240611;
    int quick = 0, list = 0, only_case = -1;
    const char *filter = NULL;
    for (int a = 1; a < argc; ++a) {
        const char *arg = argv[a];
        const char *val = a + 1 < argc ? argv[a + 1] : NULL;
        if (!strcmp(arg, "--device") && val) {
            if (!strcmp(val, "cuda"))
                cfg.device = FA_DEVICE_CUDA;
            else if (strcmp(val, "cpu")) {
                usage();
                return 2;
            }
            ++a;
        } else if (!strcmp(arg, "--backend") && val) {
            if (!parse_backend(val, &cfg.backend)) {
                usage();
                return 2;
            }
            ++a;
        } else if (!strcmp(arg, "--threads") && val) {
            cfg.threads = atoi(val);
            ++a;
        } else if (!strcmp(arg, "--seed") && val) {
            seed = strtoull(val, NULL, 0);
            ++a;
        } else if (!strcmp(arg, "--filter") && val) {
            filter = val;
            ++a;
        } else if (!strcmp(arg, "--case") && val) {
            only_case = atoi(val);
            ++a;
        } else if (!strcmp(arg, "--quick"))
            quick = 1;
        else if (!strcmp(arg, "--list"))
            list = 1;
        else if (!strcmp(arg, "--verbose"))
            cfg.verbose = 1;
        else {
            usage();
            return 2;
        }
    }
    cfg.isa = getenv("FA_CPU_ISA");

    case_list cases = {0};
    build_grid(&cases, seed, quick, cfg.device == FA_DEVICE_CUDA);
    if (list) {
        for (int n = 0; n < cases.count; ++n) {
            char text[256];
            describe(&cases.items[n], text, sizeof text);
            printf("%4d %s  (work %.2g)\n", n, text, case_work(&cases.items[n]));
        }
        free(cases.items);
        return 0;
    }

    if (cfg.device == FA_DEVICE_CUDA && !cuda_available()) {
        free(cases.items);
        return SKIP_EXIT;
    }
    cfg.fp8_on_hopper = cfg.device == FA_DEVICE_CUDA &&
                        (cfg.backend == FA_BACKEND_AUTO || cfg.backend == FA_BACKEND_CUDA_SM90) &&
                        fa_backend_compiled(FA_BACKEND_CUDA_SM90) && cuda_device_is_sm90();
    /* (the families' GQA shapes split when packed: not all do unpacked; and
     * on a GPU of at least 64 SMs, where their grids, at most 24 tiles,
     * are small enough: not on a small MIG slice) */
    const char *forced_parts = getenv("FA_SM90_FWD_SPLIT"), *pack = getenv("FA_SM90_PACK_GQA");
    cfg.hopper_split = cfg.fp8_on_hopper && (forced_parts == NULL || atoi(forced_parts) >= 2) &&
                       (pack == NULL || strcmp(pack, "0") != 0) && cuda_device_sms() >= 64;
    fa_status st = fa_context_create(&cfg.ctx, cfg.device, 0);
    if (st != FA_SUCCESS) {
        printf("FAIL: fa_context_create: %s: %s\n", fa_status_string(st), fa_last_error());
        return 1;
    }
    if (cfg.threads > 0 && fa_context_set_num_threads(cfg.ctx, cfg.threads) != FA_SUCCESS) {
        printf("FAIL: fa_context_set_num_threads(%d): %s\n", cfg.threads, fa_last_error());
        return 1;
    }
    if (cfg.backend != FA_BACKEND_AUTO &&
        (st = fa_context_set_backend(cfg.ctx, cfg.backend)) != FA_SUCCESS) {
        printf("SKIP: backend %s: %s: %s\n", fa_backend_name(cfg.backend),
               fa_status_string(st), fa_last_error());
        fa_context_destroy(cfg.ctx);
        return st == FA_ERROR_UNSUPPORTED ? SKIP_EXIT : 1;
    }
    if (cfg.device == FA_DEVICE_CUDA &&
        fa_context_create(&cfg.cpu_ctx, FA_DEVICE_CPU, 0) != FA_SUCCESS) {
        printf("FAIL: CPU context: %s\n", fa_last_error());
        return 1;
    }
    printf("test_grid: device %s, backend %s, threads %d, FA_CPU_ISA %s, seed %llu%s, "
           "%d cases\n", cfg.device == FA_DEVICE_CUDA ? "cuda" : "cpu",
           fa_backend_name(cfg.backend), cfg.threads, cfg.isa ? cfg.isa : "(unset)",
           (unsigned long long)seed, quick ? " (quick)" : "", cases.count);

    int passed = 0, passed_forward_only = 0, failed = 0, skipped = 0;
    double total_ref = 0.0, total_lib = 0.0, t_start = now_seconds();
    const char *first_kernel = NULL;
    for (int n = 0; n < cases.count; ++n) {
        const grid_case *c = &cases.items[n];
        case_report rep;
        memset(&rep, 0, sizeof rep);
        char text[200];
        describe(c, text, sizeof text);
        snprintf(rep.header, sizeof rep.header, "#%d %s", n, text);
        rep.cuda_may_refuse = cfg.device == FA_DEVICE_CUDA &&
                              (c->dtype == FA_DTYPE_F32 || dtype_is_fp8(c->dtype));
        rep.must_run = cfg.fp8_on_hopper && (!strcmp(c->family, "fp8long") || !strcmp(c->family, "fp8decode") ||
                                             !strcmp(c->family, "decode16"));
        rep.must_split = cfg.hopper_split && (!strcmp(c->family, "fp8decode") ||
                                              (!strcmp(c->family, "decode16") && !quick));
        if (only_case >= 0 && n != only_case)
            continue;
        if (filter && !strstr(rep.header, filter))
            continue;
        case_timing tm = {0.0, 0.0};
        run_case(c, &cfg, &rep, &tm);
        total_ref += tm.reference;
        total_lib += tm.library;
        if (!first_kernel && rep.failures == 0 && !rep.skipped_forward)
            first_kernel = fa_context_last_kernel(cfg.ctx);
        if (rep.failures) {
            failed++;
            printf("    repro: test_grid --seed %llu --case %d%s%s%s\n",
                   (unsigned long long)seed, n, quick ? " --quick" : "",
                   cfg.device == FA_DEVICE_CUDA ? " --device cuda --backend " : "",
                   cfg.device == FA_DEVICE_CUDA ? fa_backend_name(cfg.backend) : "");
        } else if (rep.skipped_forward)
            skipped++;
        else if (rep.skipped_backward)
            passed_forward_only++;
        else {
            passed++;
            if (cfg.verbose)
                printf("ok   %s  [%s%s%s] ref %.2fs lib %.3fs\n", rep.header, rep.forward_kernel,
                       strcmp(rep.forward_kernel, fa_context_last_kernel(cfg.ctx)) ? ", " : "",
                       strcmp(rep.forward_kernel, fa_context_last_kernel(cfg.ctx)) ? fa_context_last_kernel(cfg.ctx)
                                                                                    : "",
                       tm.reference, tm.library);
        }
        fflush(stdout);
    }
    printf("test_grid: %d passed, %d passed the forward (backward unsupported by the forced "
           "backend), %d failed, %d skipped (unsupported: forced backend, or f32 / fp8 on CUDA); "
           "kernel %s; %.1f s (reference %.1f s, library %.1f s); largest error beyond "
           "the FA rule: %.2f u_acc x magnitude (floor %.0f; u_acc: u32, FP8 2^-13); last-wave "
           "split: %d forward(s), %d backward(s)\n",
           passed, passed_forward_only, failed, skipped, first_kernel ? first_kernel : "-",
           now_seconds() - t_start, total_ref, total_lib, worst_accum_ratio, ACCUM_FLOOR, split_forwards, split_backwards);
    fa_context_destroy(cfg.ctx);
    fa_context_destroy(cfg.cpu_ctx);
    free(cases.items);
    return failed ? 1 : 0;
}
