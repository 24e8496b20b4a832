/*
 * test_api: the API's contract outside the numerics.
 *  - Every invalid argument returns its specific status, a message naming
 *    the argument, and leaves every output byte untouched.
 *  - Zero-length sequences are not errors: seqlen_q = 0 writes nothing,
 *    seqlen_k = 0 gives out = 0 and lse = -inf (dq = 0 in the backward).
 *  - Version, status strings, dtype sizes and names, fa_attn_init defaults.
 *  - fa_dropout_keep() against an independent Philox4x32-10 that is itself
 *    checked against the Random123 known-answer vectors.
 *  - Threads: one context per thread, run concurrently, give the serial
 *    results bit for bit, and each thread sees its own error message; the
 *    CPU backend gives the same bits with 1, 2, 3 and 5 threads.
 *  - FP8: testlib's conversions against the formats' known values; the
 *    library's decoding of every finite FP8 value (through V); descales of
 *    powers of two equal to the same values stored pre-multiplied, bit for
 *    bit; outputs adjacent to 1-byte inputs and a 2-byte out are no
 *    overlaps.
 */
#include "testlib.h"

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0, checks = 0;

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        ++checks;                                                              \
        if (!(cond)) {                                                         \
            ++failures;                                                        \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                        \
            printf(__VA_ARGS__);                                               \
            printf("\n");                                                      \
        }                                                                      \
    } while (0)

/* Does msg name `word` as a whole identifier (so "q" is not found inside
 * "seqlen_q")? */
static int names_word(const char *msg, const char *word)
{
    size_t n = strlen(word);
    for (const char *s = strstr(msg, word); s; s = strstr(s + 1, word)) {
        int before = s == msg || !(isalnum((unsigned char)s[-1]) || s[-1] == '_');
        int after = !(isalnum((unsigned char)s[n]) || s[n] == '_');
        if (before && after)
            return 1;
    }
    return 0;
}

/* Every '|'-separated word of `needles` must be named. */
static int names_all(const char *msg, const char *needles)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", needles);
    for (char *tok = strtok(buf, "|"); tok; tok = strtok(NULL, "|"))
        if (!names_word(msg, tok))
            return 0;
    return 1;
}

/* ---------------------------------------------------------------------- */
/* A small valid problem whose arguments each test breaks one at a time.  */

enum { B = 2, SQ = 5, SK = 6, HQ = 4, HKV = 2, D = 8, DV = 8 };
/* The paged fixture: pages of 2 keys, 3 per sequence. */
enum { PAGE = 2, PAGES_PER_SEQ = SK / PAGE, TABLE_STRIDE = PAGES_PER_SEQ + 1 };

typedef struct fixture {
    fa_context *ctx;
    fa_attn attn;
    const fa_attn *attn_arg;
    fa_tensor q, k, v, out, dout, dq, dk, dv;
    fa_tensor *q_arg, *k_arg, *v_arg, *out_arg, *dout_arg, *dq_arg, *dk_arg, *dv_arg;
    float *lse_arg;
    void *workspace;
    size_t workspace_size;
    /* storage (f32, generous) */
    float q_mem[B * SQ * HQ * D], k_mem[B * SK * HKV * D], v_mem[B * SK * HKV * DV];
    float dout_mem[B * SQ * HQ * DV];
    float out_mem[B * SQ * HQ * DV], lse_mem[B * HQ * SQ];
    float dq_mem[B * SQ * HQ * D], dk_mem[B * SK * HKV * D], dv_mem[B * SK * HKV * DV];
    int32_t cu_q[B + 1], cu_k[B + 1];
    uint8_t block_mask[B * HQ * 4];
    int32_t seqused_k[B];
    int32_t block_table[B * (PAGES_PER_SEQ + 1)];
    float k_pages[B * SK * HKV * D], v_pages[B * SK * HKV * DV];
    /* FP8 descales: room for blocks of one row, one past them */
    float q_descale[B * HQ * SQ + 1], k_descale[B * HKV * SK + 1], v_descale[B * HKV * SK + 1];
} fixture;

/* The FP8 fixture (fixture_fp8): descale blocks of 2 query and 4 key rows,
 * so 3 and 2 blocks per (batch, head); q takes its storage's first bytes,
 * out (bf16) the first half of its. */
enum { FP8_BLOCK_Q = 2, FP8_BLOCK_K = 4, FP8_BLOCKS_Q = 3, FP8_BLOCKS_K = 2,
       FP8_NQ_DESCALES = B * HQ * FP8_BLOCKS_Q, FP8_NK_DESCALES = B * HKV * FP8_BLOCKS_K,
       FP8_Q_BYTES = B * SQ * HQ * D, OUT_BF16_BYTES = 2 * B * SQ * HQ * DV };

static void poison_floats(float *p, size_t n)
{
    for (size_t e = 0; e < n; ++e)
        store_poison(p, FA_DTYPE_F32, (int64_t)e);
}

static void fixture_reset(fixture *f, fa_context *ctx)
{
    test_rng r;
    rng_seed(&r, 7);
    f->ctx = ctx;
    fa_attn_init(&f->attn);
    f->attn.batch = B;
    f->attn.seqlen_q = SQ;
    f->attn.seqlen_k = SK;
    f->attn.heads_q = HQ;
    f->attn.heads_kv = HKV;
    f->attn.head_dim = D;
    f->attn.dtype = FA_DTYPE_F32;
    f->attn_arg = &f->attn;
    float *inputs[] = {f->q_mem, f->k_mem, f->v_mem, f->dout_mem};
    size_t counts[] = {sizeof f->q_mem, sizeof f->k_mem, sizeof f->v_mem, sizeof f->dout_mem};
    for (int t = 0; t < 4; ++t)
        for (size_t e = 0; e < counts[t] / sizeof(float); ++e)
            inputs[t][e] = (float)rng_normal(&r);
    poison_floats(f->out_mem, sizeof f->out_mem / sizeof(float));
    poison_floats(f->lse_mem, sizeof f->lse_mem / sizeof(float));
    poison_floats(f->dq_mem, sizeof f->dq_mem / sizeof(float));
    poison_floats(f->dk_mem, sizeof f->dk_mem / sizeof(float));
    poison_floats(f->dv_mem, sizeof f->dv_mem / sizeof(float));
    f->q = fa_tensor_contiguous(f->q_mem, SQ, HQ, D);
    f->k = fa_tensor_contiguous(f->k_mem, SK, HKV, D);
    f->v = fa_tensor_contiguous(f->v_mem, SK, HKV, DV);
    f->out = fa_tensor_contiguous(f->out_mem, SQ, HQ, DV);
    f->dout = fa_tensor_contiguous(f->dout_mem, SQ, HQ, DV);
    f->dq = fa_tensor_contiguous(f->dq_mem, SQ, HQ, D);
    f->dk = fa_tensor_contiguous(f->dk_mem, SK, HKV, D);
    f->dv = fa_tensor_contiguous(f->dv_mem, SK, HKV, DV);
    f->q_arg = &f->q;
    f->k_arg = &f->k;
    f->v_arg = &f->v;
    f->out_arg = &f->out;
    f->dout_arg = &f->dout;
    f->dq_arg = &f->dq;
    f->dk_arg = &f->dk;
    f->dv_arg = &f->dv;
    f->lse_arg = f->lse_mem;
    f->workspace = NULL;
    f->workspace_size = 0;
    /* varlen geometry for the tests that switch it on: lengths (3, 2) of
     * queries and (4, 6) of keys, within the max seqlens. */
    f->cu_q[0] = 0;
    f->cu_q[1] = 3;
    f->cu_q[2] = 5;
    f->cu_k[0] = 0;
    f->cu_k[1] = 4;
    f->cu_k[2] = 10;
    memset(f->block_mask, 1, sizeof f->block_mask);
    f->seqused_k[0] = 4;
    f->seqused_k[1] = SK;
    for (size_t n = 0; n < sizeof f->q_descale / sizeof(float); ++n)
        f->q_descale[n] = 0.5f;
    for (size_t n = 0; n < sizeof f->k_descale / sizeof(float); ++n)
        f->k_descale[n] = f->v_descale[n] = 2.0f;
}

/* f as an FP8 forward in dtype: q, k and v hold finite 1-byte values (in
 * the first bytes of their storage), descales of FP8_BLOCK_Q / _K rows. */
static void fixture_fp8(fixture *f, fa_dtype dtype)
{
    test_rng r;
    rng_seed(&r, 8);
    f->attn.dtype = dtype;
    uint8_t *mem[3] = {(uint8_t *)f->q_mem, (uint8_t *)f->k_mem, (uint8_t *)f->v_mem};
    const int count[3] = {B * SQ * HQ * D, B * SK * HKV * D, B * SK * HKV * DV};
    for (int t = 0; t < 3; ++t)
        for (int e = 0; e < count[t]; ++e)
            mem[t][e] = double_to_fp8_bits(rng_normal(&r), dtype);
    f->attn.q_descale = f->q_descale;
    f->attn.k_descale = f->k_descale;
    f->attn.v_descale = f->v_descale;
    f->attn.descale_block_q = FP8_BLOCK_Q;
    f->attn.descale_block_k = FP8_BLOCK_K;
}

/* k and v of f as a paged cache with the same keys: page n of sequence b
 * is page (B·PAGES_PER_SEQ - 1 - (b·PAGES_PER_SEQ + n)) (reversed), the
 * table's padding entry out of range. */
static void fixture_paged(fixture *f)
{
    for (int b = 0; b < B; ++b) {
        for (int n = 0; n < PAGES_PER_SEQ; ++n) {
            int page = B * PAGES_PER_SEQ - 1 - (b * PAGES_PER_SEQ + n);
            f->block_table[b * TABLE_STRIDE + n] = page;
            int rows = PAGE * HKV; /* values of a page, per head dim */
            memcpy(f->k_pages + page * rows * D, f->k_mem + (b * SK + n * PAGE) * HKV * D,
                   sizeof(float) * (size_t)(rows * D));
            memcpy(f->v_pages + page * rows * DV, f->v_mem + (b * SK + n * PAGE) * HKV * DV,
                   sizeof(float) * (size_t)(rows * DV));
        }
        f->block_table[b * TABLE_STRIDE + PAGES_PER_SEQ] = -1;
    }
    f->attn.kv_block_table = f->block_table;
    f->attn.kv_block_table_stride = TABLE_STRIDE;
    f->attn.kv_page_size = PAGE;
    f->attn.kv_num_pages = B * PAGES_PER_SEQ;
    f->k = fa_tensor_contiguous(f->k_pages, PAGE, HKV, D);
    f->v = fa_tensor_contiguous(f->v_pages, PAGE, HKV, DV);
}

/* Packed varlen tensors for f: (total, heads, dim). */
static void fixture_varlen(fixture *f)
{
    f->attn.cu_seqlens_q = f->cu_q;
    f->attn.cu_seqlens_k = f->cu_k;
    f->q = fa_tensor_contiguous(f->q_mem, f->cu_q[B], HQ, D);
    f->k = fa_tensor_contiguous(f->k_mem, f->cu_k[B], HKV, D);
    f->v = fa_tensor_contiguous(f->v_mem, f->cu_k[B], HKV, DV);
    f->out = fa_tensor_contiguous(f->out_mem, f->cu_q[B], HQ, DV);
    f->dout = fa_tensor_contiguous(f->dout_mem, f->cu_q[B], HQ, DV);
    f->dq = fa_tensor_contiguous(f->dq_mem, f->cu_q[B], HQ, D);
    f->dk = fa_tensor_contiguous(f->dk_mem, f->cu_k[B], HKV, D);
    f->dv = fa_tensor_contiguous(f->dv_mem, f->cu_k[B], HKV, DV);
}

enum call_kind { CALL_FORWARD, CALL_BACKWARD, CALL_FORWARD_SIZE, CALL_BACKWARD_SIZE };
static const char *const CALL_NAMES[] = {"fa_forward", "fa_backward",
                                         "fa_forward_workspace_size",
                                         "fa_backward_workspace_size"};

static fa_status call(fixture *f, enum call_kind kind)
{
    size_t bytes = 0;
    switch (kind) {
    case CALL_FORWARD:
        return fa_forward(f->ctx, f->attn_arg, f->q_arg, f->k_arg, f->v_arg, f->out_arg,
                          f->lse_arg, f->workspace, f->workspace_size);
    case CALL_BACKWARD:
        return fa_backward(f->ctx, f->attn_arg, f->q_arg, f->k_arg, f->v_arg, f->out_arg,
                           f->lse_arg, f->dout_arg, f->dq_arg, f->dk_arg, f->dv_arg,
                           f->workspace, f->workspace_size);
    case CALL_FORWARD_SIZE: return fa_forward_workspace_size(f->ctx, f->attn_arg, &bytes);
    default: return fa_backward_workspace_size(f->ctx, f->attn_arg, &bytes);
    }
}

/* The call must fail with `expected`, name every word of `needles`, and
 * leave all outputs (and inputs) byte-identical. */
static void expect_failure(fixture *f, enum call_kind kind, fa_status expected,
                           const char *needles, const char *what, int line)
{
    static fixture before;
    memcpy(&before, f, sizeof before);
    fa_status st = call(f, kind);
    const char *msg = fa_last_error();
    ++checks;
    int ok = st == expected && msg && names_all(msg, needles);
    if (!ok) {
        ++failures;
        printf("FAIL line %d: %s with %s: got %s \"%s\", want %s naming \"%s\"\n", line,
               CALL_NAMES[kind], what, fa_status_string(st), msg ? msg : "(null)",
               fa_status_string(expected), needles);
    }
    ++checks;
    if (memcmp(&before, f, sizeof before)) {
        ++failures;
        printf("FAIL line %d: %s with %s wrote to its buffers although it failed\n", line,
               CALL_NAMES[kind], what);
    }
}

/* BAD(kinds, status, needles, mutation...): reset the fixture, apply the
 * mutation, expect the failure from each call kind in the bit set. */
#define K_FWD (1 << CALL_FORWARD)
#define K_BWD (1 << CALL_BACKWARD)
#define K_SIZES ((1 << CALL_FORWARD_SIZE) | (1 << CALL_BACKWARD_SIZE))
#define K_ALL (K_FWD | K_BWD | K_SIZES)
#define K_CALLS (K_FWD | K_BWD)
#define BAD(kinds, status, needles, ...)                                       \
    do {                                                                       \
        for (int kind_ = 0; kind_ < 4; ++kind_) {                              \
            if (!((kinds) & (1 << kind_)))                                     \
                continue;                                                      \
            fixture_reset(f, ctx);                                             \
            __VA_ARGS__;                                                       \
            expect_failure(f, (enum call_kind)kind_, status, needles,          \
                           #__VA_ARGS__, __LINE__);                            \
        }                                                                      \
    } while (0)

#define INVALID FA_ERROR_INVALID_ARGUMENT

static void test_invalid_arguments(fa_context *ctx)
{
    static fixture fixture_storage;
    fixture *f = &fixture_storage;

    /* handles */
    BAD(K_ALL, INVALID, "ctx", f->ctx = NULL);
    BAD(K_ALL, INVALID, "attn", f->attn_arg = NULL);
    BAD(K_CALLS, INVALID, "q", f->q_arg = NULL);
    BAD(K_CALLS, INVALID, "k", f->k_arg = NULL);
    BAD(K_CALLS, INVALID, "v", f->v_arg = NULL);
    BAD(K_CALLS, INVALID, "out", f->out_arg = NULL);
    BAD(K_BWD, INVALID, "dout", f->dout_arg = NULL);
    BAD(K_BWD, INVALID, "dq", f->dq_arg = NULL);
    BAD(K_BWD, INVALID, "dk", f->dk_arg = NULL);
    BAD(K_BWD, INVALID, "dv", f->dv_arg = NULL);
    BAD(K_CALLS, INVALID, "q|data", f->q.data = NULL);
    BAD(K_CALLS, INVALID, "k|data", f->k.data = NULL);
    BAD(K_CALLS, INVALID, "v|data", f->v.data = NULL);
    BAD(K_CALLS, INVALID, "out|data", f->out.data = NULL);
    BAD(K_BWD, INVALID, "dout|data", f->dout.data = NULL);
    BAD(K_BWD, INVALID, "dq|data", f->dq.data = NULL);
    BAD(K_BWD, INVALID, "dk|data", f->dk.data = NULL);
    BAD(K_BWD, INVALID, "dv|data", f->dv.data = NULL);
    BAD(K_BWD, INVALID, "lse", f->lse_arg = NULL);

    /* sizes */
    BAD(K_ALL, INVALID, "batch", f->attn.batch = 0);
    BAD(K_ALL, INVALID, "batch", f->attn.batch = -1);
    BAD(K_ALL, INVALID, "seqlen_q", f->attn.seqlen_q = -1);
    BAD(K_ALL, INVALID, "seqlen_k", f->attn.seqlen_k = -3);
    BAD(K_ALL, INVALID, "heads_q", f->attn.heads_q = -4);
    BAD(K_ALL, INVALID, "heads_q", f->attn.heads_q = 0);
    BAD(K_ALL, INVALID, "heads_kv", f->attn.heads_kv = 0);
    BAD(K_ALL, INVALID, "heads_kv", f->attn.heads_kv = -2);
    BAD(K_ALL, INVALID, "heads_q|heads_kv", f->attn.heads_kv = 3);
    BAD(K_ALL, INVALID, "heads_q|heads_kv", f->attn.heads_q = 2; f->attn.heads_kv = 4);
    BAD(K_ALL, INVALID, "head_dim", f->attn.head_dim = 0);
    BAD(K_ALL, INVALID, "head_dim", f->attn.head_dim = -8);
    BAD(K_ALL, INVALID, "head_dim", f->attn.head_dim = 257);
    BAD(K_ALL, INVALID, "head_dim_v", f->attn.head_dim_v = 257);
    BAD(K_ALL, INVALID, "head_dim_v", f->attn.head_dim_v = -1);

    /* dtypes */
    BAD(K_ALL, INVALID, "dtype", f->attn.dtype = (fa_dtype)17);
    BAD(K_ALL, INVALID, "dtype", f->attn.dtype = (fa_dtype)-1);

    /* FP8: forward only; descales only with an FP8 dtype (the message
     * names them together, "q/k/v_descale"); descale blocks >= 0; every
     * descale finite and > 0, named with its index */
    BAD(K_BWD | (1 << CALL_BACKWARD_SIZE), INVALID, "dtype|fp8_e4m3",
        fixture_fp8(f, FA_DTYPE_FP8_E4M3));
    BAD(K_BWD | (1 << CALL_BACKWARD_SIZE), INVALID, "dtype|fp8_e5m2",
        fixture_fp8(f, FA_DTYPE_FP8_E5M2));
    BAD(K_ALL, INVALID, "q|k|v_descale|dtype|f32", f->attn.q_descale = f->q_descale);
    BAD(K_ALL, INVALID, "v_descale|dtype|bf16",
        f->attn.dtype = FA_DTYPE_BF16; f->attn.v_descale = f->v_descale);
    BAD(K_FWD | (1 << CALL_FORWARD_SIZE), INVALID, "descale_block_q",
        fixture_fp8(f, FA_DTYPE_FP8_E4M3); f->attn.descale_block_q = -2);
    BAD(K_FWD | (1 << CALL_FORWARD_SIZE), INVALID, "descale_block_k",
        fixture_fp8(f, FA_DTYPE_FP8_E5M2); f->attn.descale_block_k = -1);
    BAD(K_FWD | (1 << CALL_FORWARD_SIZE), INVALID, "q_descale|3",
        fixture_fp8(f, FA_DTYPE_FP8_E4M3); f->q_descale[3] = 0.0f);
    BAD(K_FWD | (1 << CALL_FORWARD_SIZE), INVALID, "q_descale|23",
        fixture_fp8(f, FA_DTYPE_FP8_E4M3); f->q_descale[FP8_NQ_DESCALES - 1] = INFINITY);
    BAD(K_FWD | (1 << CALL_FORWARD_SIZE), INVALID, "k_descale|7",
        fixture_fp8(f, FA_DTYPE_FP8_E5M2); f->k_descale[FP8_NK_DESCALES - 1] = -0.5f);
    BAD(K_FWD | (1 << CALL_FORWARD_SIZE), INVALID, "v_descale|0",
        fixture_fp8(f, FA_DTYPE_FP8_E4M3); f->v_descale[0] = NAN);
    BAD(K_FWD | (1 << CALL_FORWARD_SIZE), INVALID, "v_descale|5",
        fixture_fp8(f, FA_DTYPE_FP8_E4M3); f->v_descale[5] = -INFINITY);
    /* block 0: one descale per (batch, head) */
    BAD(K_FWD | (1 << CALL_FORWARD_SIZE), INVALID, "q_descale|7", fixture_fp8(f, FA_DTYPE_FP8_E4M3);
        f->attn.descale_block_q = 0; f->q_descale[B * HQ - 1] = -1.0f);

    /* strides: rows/heads that overlap, negative strides */
    BAD(K_CALLS, INVALID, "q|stride_head", f->q.stride_head = D - 1);
    BAD(K_CALLS, INVALID, "q|stride_seq", f->q.stride_seq = HQ * D - 1);
    BAD(K_CALLS, INVALID, "q|stride_batch", f->q.stride_batch = SQ * HQ * D - 1);
    BAD(K_CALLS, INVALID, "q|stride_seq", f->q.stride_seq = -HQ * D);
    BAD(K_CALLS, INVALID, "k|stride_head", f->k.stride_head = -D);
    BAD(K_CALLS, INVALID, "v|stride_batch", f->v.stride_batch = -SK * HKV * DV);
    BAD(K_CALLS, INVALID, "k|stride_seq", f->k.stride_seq = 0);
    BAD(K_CALLS, INVALID, "out|stride_head", f->out.stride_head = 0);
    BAD(K_CALLS, INVALID, "out|stride_seq", f->out.stride_seq = 3);
    BAD(K_BWD, INVALID, "dq|stride_head", f->dq.stride_head = 1);
    BAD(K_BWD, INVALID, "dk|stride_seq", f->dk.stride_seq = HKV * D - 1);
    BAD(K_BWD, INVALID, "dv|stride_batch", f->dv.stride_batch = -1);
    BAD(K_BWD, INVALID, "dout|stride_head", f->dout.stride_head = -DV);
    /* head_dim_v larger than the v rows hold */
    BAD(K_CALLS, INVALID, "v", f->attn.head_dim_v = 2 * DV);

    /* varlen */
    BAD(K_ALL, INVALID, "cu_seqlens_q", fixture_varlen(f); f->cu_q[1] = 6);
    BAD(K_ALL, INVALID, "cu_seqlens_q", fixture_varlen(f); f->cu_q[0] = 1);
    BAD(K_ALL, INVALID, "cu_seqlens_k", fixture_varlen(f); f->cu_k[0] = -1);
    BAD(K_ALL, INVALID, "cu_seqlens_k", fixture_varlen(f); f->cu_k[1] = 7);
    BAD(K_ALL, INVALID, "cu_seqlens_q", fixture_varlen(f); f->attn.seqlen_q = 2);
    BAD(K_ALL, INVALID, "cu_seqlens_q|cu_seqlens_k", f->attn.cu_seqlens_q = f->cu_q);
    BAD(K_ALL, INVALID, "cu_seqlens_q|cu_seqlens_k", f->attn.cu_seqlens_k = f->cu_k);

    /* KV cache: forward-only; seqused_k within each sequence's keys; the
     * paged geometry and every used table entry */
    BAD(K_BWD | (1 << CALL_BACKWARD_SIZE), INVALID, "seqused_k|backward",
        f->attn.seqused_k = f->seqused_k);
    BAD(K_BWD | (1 << CALL_BACKWARD_SIZE), INVALID, "kv_block_table|backward", fixture_paged(f));
    BAD(K_FWD | (1 << CALL_FORWARD_SIZE), INVALID, "seqused_k",
        f->attn.seqused_k = f->seqused_k; f->seqused_k[1] = SK + 1);
    BAD(K_FWD | (1 << CALL_FORWARD_SIZE), INVALID, "seqused_k",
        f->attn.seqused_k = f->seqused_k; f->seqused_k[0] = -1);
    BAD(K_FWD, INVALID, "seqused_k",
        fixture_varlen(f); f->attn.seqused_k = f->seqused_k; f->seqused_k[0] = 5);
    BAD(K_FWD | (1 << CALL_FORWARD_SIZE), INVALID, "kv_page_size", fixture_paged(f);
        f->attn.kv_page_size = 0);
    BAD(K_FWD | (1 << CALL_FORWARD_SIZE), INVALID, "kv_num_pages", fixture_paged(f);
        f->attn.kv_num_pages = 0);
    BAD(K_FWD | (1 << CALL_FORWARD_SIZE), INVALID, "kv_block_table_stride", fixture_paged(f);
        f->attn.kv_block_table_stride = PAGES_PER_SEQ - 1);
    /* a table of more entries than any host copy should take (2^61 per row) */
    BAD(K_FWD | (1 << CALL_FORWARD_SIZE), INVALID, "kv_block_table_stride", fixture_paged(f);
        f->attn.kv_block_table_stride = (int64_t)1 << 61);
    BAD(K_FWD | (1 << CALL_FORWARD_SIZE), INVALID, "kv_block_table|kv_num_pages",
        fixture_paged(f); f->block_table[TABLE_STRIDE + 2] = B * PAGES_PER_SEQ);
    BAD(K_FWD | (1 << CALL_FORWARD_SIZE), INVALID, "kv_block_table", fixture_paged(f);
        f->block_table[1] = -3);
    BAD(K_FWD | (1 << CALL_FORWARD_SIZE), INVALID, "kv_block_table|cu_seqlens", fixture_paged(f);
        f->attn.cu_seqlens_q = f->cu_q; f->attn.cu_seqlens_k = f->cu_k);
    BAD(K_FWD, INVALID, "k|stride_batch", fixture_paged(f); f->k.stride_batch = PAGE * HKV * D - 1);
    /* a CPU context checks them even when told not to */
    CHECK(fa_context_set_kv_cache_checks(NULL, 0) == FA_ERROR_INVALID_ARGUMENT, "set_kv_cache_checks(NULL)");
    CHECK(fa_context_set_kv_cache_checks(ctx, 0) == FA_SUCCESS, "set_kv_cache_checks: %s", fa_last_error());
    BAD(K_FWD, INVALID, "seqused_k", f->attn.seqused_k = f->seqused_k; f->seqused_k[1] = SK + 1);
    BAD(K_FWD, INVALID, "kv_block_table", fixture_paged(f); f->block_table[1] = -3);
    BAD(K_FWD, INVALID, "k_descale|2", fixture_fp8(f, FA_DTYPE_FP8_E4M3); f->k_descale[2] = NAN);
    fa_context_set_kv_cache_checks(ctx, 1);

    /* options */
    BAD(K_ALL, INVALID, "dropout_p", f->attn.dropout_p = 1.0f);
    BAD(K_ALL, INVALID, "dropout_p", f->attn.dropout_p = -0.1f);
    BAD(K_ALL, INVALID, "dropout_p", f->attn.dropout_p = NAN);
    BAD(K_ALL, INVALID, "softcap", f->attn.softcap = -1.0f);
    BAD(K_ALL, INVALID, "softcap", f->attn.softcap = NAN);
    BAD(K_ALL, INVALID, "softcap", f->attn.softcap = INFINITY);
    BAD(K_ALL, INVALID, "softmax_scale", f->attn.softmax_scale = -0.5f);
    BAD(K_ALL, INVALID, "softmax_scale", f->attn.softmax_scale = NAN);
    /* bounds that keep scale·log2(e), softcap·log2(e) finite */
    BAD(K_ALL, INVALID, "softmax_scale", f->attn.softmax_scale = 3e38f);
    BAD(K_ALL, INVALID, "softcap", f->attn.softcap = 3e38f);
    BAD(K_ALL, INVALID, "softcap", f->attn.softcap = 2e4f);
    BAD(K_ALL, INVALID, "window_left", f->attn.window_left = -2);
    BAD(K_ALL, INVALID, "window_right", f->attn.window_right = -7);
    static const float slopes[B * HQ] = {0.5f};
    BAD(K_ALL, INVALID, "alibi_stride_batch",
        f->attn.alibi_slopes = slopes; f->attn.alibi_stride_batch = -1);
    BAD(K_ALL, INVALID, "alibi_stride_batch",
        f->attn.alibi_slopes = slopes; f->attn.alibi_stride_batch = INT64_MAX);
    /* more elements than any size arithmetic may meet (each extent valid) */
    BAD(K_SIZES, INVALID, "elements",
        f->attn.batch = f->attn.seqlen_q = f->attn.seqlen_k = f->attn.heads_q = INT32_MAX;
        f->attn.heads_kv = 1; f->attn.head_dim = 256);

    /* outputs that share memory with inputs */
    BAD(K_FWD, INVALID, "out|v|overlaps", f->out.data = f->v_mem);
    BAD(K_FWD, INVALID, "out|k|overlaps", f->out.data = f->k_mem + D);
    BAD(K_FWD, INVALID, "lse|q|overlaps", f->lse_arg = f->q_mem);
    BAD(K_FWD, INVALID, "out|lse|overlaps", f->lse_arg = f->out_mem + 3);
    BAD(K_BWD, INVALID, "dq|q|overlaps", f->dq.data = f->q_mem);
    BAD(K_BWD, INVALID, "dk|dout|overlaps", f->dk.data = f->dout_mem);
    BAD(K_BWD, INVALID, "dv|lse|overlaps", f->dv.data = f->lse_mem);
    BAD(K_BWD, INVALID, "dv|out|overlaps", f->dv.data = f->out_mem + 5);
    BAD(K_BWD, INVALID, "dq|dk|same", f->dk.data = f->dq_mem);
    BAD(K_BWD, INVALID, "dk|dv|same", f->dv.data = f->dk_mem);
    /* FP8: 1-byte inputs, a 2-byte out (test_fp8_extents: adjacent ones pass) */
    BAD(K_FWD, INVALID, "out|lse|overlaps", fixture_fp8(f, FA_DTYPE_FP8_E4M3);
        f->lse_arg = f->out_mem + OUT_BF16_BYTES / 4 - 1);
    BAD(K_FWD, INVALID, "out|q|overlaps", fixture_fp8(f, FA_DTYPE_FP8_E5M2);
        f->out.data = (char *)f->q_mem + FP8_Q_BYTES - 2);

    /* block mask: 5 query rows / blocks of 4 = 2 blocks, 6 keys / 3 = 2 */
#define WITH_BLOCKS                                                            \
    f->attn.block_mask = f->block_mask;                                        \
    f->attn.block_size_q = 4;                                                  \
    f->attn.block_size_k = 3;                                                  \
    f->attn.block_mask_blocks_q = 2;                                           \
    f->attn.block_mask_blocks_k = 2;                                           \
    f->attn.block_mask_stride_batch = 0;                                       \
    f->attn.block_mask_stride_head = 4
    BAD(K_ALL, INVALID, "block_mask", WITH_BLOCKS; f->attn.block_mask_blocks_q = 3);
    BAD(K_ALL, INVALID, "block_mask", WITH_BLOCKS; f->attn.block_mask_blocks_k = 1);
    BAD(K_ALL, INVALID, "block_size_q", WITH_BLOCKS; f->attn.block_size_q = 0);
    BAD(K_ALL, INVALID, "block_size_k", WITH_BLOCKS; f->attn.block_size_k = -3);
    BAD(K_ALL, INVALID, "block_mask", WITH_BLOCKS; f->attn.block_mask_stride_head = -4);
    BAD(K_ALL, INVALID, "block_mask", WITH_BLOCKS; f->attn.block_mask_stride_batch = INT64_MAX);

    /* workspace smaller than the queried size */
    for (int dir = 0; dir < 2; ++dir) {
        fixture_reset(f, ctx);
        size_t need = 0;
        fa_status st = dir ? fa_backward_workspace_size(ctx, &f->attn, &need)
                           : fa_forward_workspace_size(ctx, &f->attn, &need);
        CHECK(st == FA_SUCCESS, "workspace size query: %s", fa_last_error());
        if (need == 0) {
            printf("note: %s needs no workspace for the fixture; 'too small' "
                   "untestable there\n", CALL_NAMES[dir]);
            continue;
        }
        unsigned char *small = xmalloc(need);
        BAD(dir ? K_BWD : K_FWD, INVALID, "workspace_size",
            f->workspace = small; f->workspace_size = need - 1);
        free(small);
    }
}

/* ---------------------------------------------------------------------- */
/* Context                                                                 */

static void test_context(void)
{
    fa_context *ctx = (fa_context *)&ctx; /* must be overwritten on failure */
    CHECK(fa_context_create(NULL, FA_DEVICE_CPU, 0) == FA_ERROR_INVALID_ARGUMENT &&
              names_word(fa_last_error(), "ctx"),
          "fa_context_create(NULL): \"%s\"", fa_last_error());
    fa_status st = fa_context_create(&ctx, (fa_device)5, 0);
    CHECK(st == FA_ERROR_INVALID_ARGUMENT && names_word(fa_last_error(), "device") &&
              ctx == NULL,
          "fa_context_create(device 5): %s \"%s\"", fa_status_string(st), fa_last_error());
    int cuda_built = fa_backend_compiled(FA_BACKEND_CUDA_SM80) ||
                     fa_backend_compiled(FA_BACKEND_CUDA_SM90);
    ctx = (fa_context *)&ctx;
    st = fa_context_create(&ctx, FA_DEVICE_CUDA, 0);
    if (!cuda_built)
        CHECK(st == FA_ERROR_UNSUPPORTED && ctx == NULL && fa_last_error()[0],
              "CUDA context in a CPU-only build: %s \"%s\"", fa_status_string(st),
              fa_last_error());
    else if (st != FA_SUCCESS)
        CHECK(ctx == NULL && fa_last_error()[0], "failed CUDA context left ctx set");
    else
        fa_context_destroy(ctx);
    ctx = (fa_context *)&ctx;
    st = fa_context_create(&ctx, FA_DEVICE_CUDA, -1);
    CHECK(st != FA_SUCCESS && ctx == NULL, "CUDA context with device_index -1: %s",
          fa_status_string(st));

    CHECK(fa_context_create(&ctx, FA_DEVICE_CPU, 0) == FA_SUCCESS && ctx,
          "CPU context: %s", fa_last_error());
    CHECK(fa_context_set_num_threads(ctx, -1) == FA_ERROR_INVALID_ARGUMENT &&
              names_word(fa_last_error(), "threads"),
          "set_num_threads(-1): \"%s\"", fa_last_error());
    CHECK(fa_context_set_num_threads(NULL, 1) == FA_ERROR_INVALID_ARGUMENT,
          "set_num_threads(NULL)");
    CHECK(fa_context_set_num_threads(ctx, 0) == FA_SUCCESS, "set_num_threads(0)");
    CHECK(fa_context_set_num_threads(ctx, FA_MAX_THREADS + 1) == FA_ERROR_INVALID_ARGUMENT &&
              names_word(fa_last_error(), "threads"),
          "set_num_threads(FA_MAX_THREADS + 1): \"%s\"", fa_last_error());
    CHECK(fa_context_set_num_threads(ctx, FA_MAX_THREADS) == FA_SUCCESS &&
              fa_context_set_num_threads(ctx, 0) == FA_SUCCESS,
          "set_num_threads(FA_MAX_THREADS): %s", fa_last_error());
    CHECK(fa_context_set_backend(ctx, (fa_backend)9) == FA_ERROR_INVALID_ARGUMENT &&
              names_word(fa_last_error(), "backend"),
          "set_backend(9): \"%s\"", fa_last_error());
    CHECK(fa_context_set_backend(NULL, FA_BACKEND_CPU) == FA_ERROR_INVALID_ARGUMENT,
          "set_backend(NULL)");
    /* A CUDA backend on a CPU context (or not compiled at all) cannot run. */
    fa_backend gpu[] = {FA_BACKEND_CUDA_SM80, FA_BACKEND_CUDA_SM90};
    for (int n = 0; n < 2; ++n) {
        st = fa_context_set_backend(ctx, gpu[n]);
        CHECK(st == FA_ERROR_UNSUPPORTED && names_word(fa_last_error(), fa_backend_name(gpu[n])),
              "forcing %s on a CPU context: %s \"%s\"", fa_backend_name(gpu[n]),
              fa_status_string(st), fa_last_error());
    }
    CHECK(fa_context_set_backend(ctx, FA_BACKEND_CPU) == FA_SUCCESS, "set_backend(cpu)");
    CHECK(fa_context_set_backend(ctx, FA_BACKEND_AUTO) == FA_SUCCESS, "set_backend(auto)");
    CHECK(fa_context_set_stream(ctx, (void *)&st) == FA_ERROR_INVALID_ARGUMENT,
          "a CUDA stream on a CPU context");
    CHECK(fa_context_set_stream(ctx, NULL) == FA_SUCCESS, "a NULL stream");
    CHECK(fa_context_last_kernel(ctx) != NULL, "last_kernel is NULL");
    fa_context_destroy(ctx);
    fa_context_destroy(NULL); /* accepted */
}

/* ---------------------------------------------------------------------- */
/* Zero-length sequences                                                   */

static int all_poison(const float *p, size_t n)
{
    for (size_t e = 0; e < n; ++e)
        if (!is_poison(p, FA_DTYPE_F32, (int64_t)e))
            return 0;
    return 1;
}

static void test_empty_sequences(fa_context *ctx)
{
    static fixture storage;
    fixture *f = &storage;

    /* seqlen_q = 0: nothing to write; data may even be NULL. */
    fixture_reset(f, ctx);
    f->attn.seqlen_q = 0;
    f->q.data = NULL;
    f->out.data = NULL;
    fa_status st = call(f, CALL_FORWARD);
    CHECK(st == FA_SUCCESS, "forward with seqlen_q = 0: %s", fa_last_error());
    CHECK(all_poison(f->lse_mem, B * HQ * SQ) && all_poison(f->out_mem, B * SQ * HQ * DV),
          "forward with seqlen_q = 0 wrote something");
    /* Backward: no query -> dk = dv = 0, nothing else written. */
    fixture_reset(f, ctx);
    f->attn.seqlen_q = 0;
    st = call(f, CALL_BACKWARD);
    CHECK(st == FA_SUCCESS, "backward with seqlen_q = 0: %s", fa_last_error());
    int zeros = 1;
    for (int e = 0; e < B * SK * HKV * D; ++e)
        zeros &= f->dk_mem[e] == 0.0f && f->dv_mem[e] == 0.0f;
    CHECK(zeros, "backward with seqlen_q = 0: dk, dv must be 0");
    CHECK(all_poison(f->dq_mem, B * SQ * HQ * D) && all_poison(f->out_mem, B * SQ * HQ * DV),
          "backward with seqlen_q = 0 wrote dq or out");

    /* seqlen_k = 0: every row fully masked -> out 0, lse -inf; dq 0. */
    fixture_reset(f, ctx);
    f->attn.seqlen_k = 0;
    f->k.data = NULL;
    f->v.data = NULL;
    st = call(f, CALL_FORWARD);
    CHECK(st == FA_SUCCESS, "forward with seqlen_k = 0: %s", fa_last_error());
    int ok = 1;
    for (int e = 0; e < B * SQ * HQ * DV; ++e)
        ok &= f->out_mem[e] == 0.0f;
    for (int e = 0; e < B * HQ * SQ; ++e)
        ok &= isinf(f->lse_mem[e]) && f->lse_mem[e] < 0;
    CHECK(ok, "forward with seqlen_k = 0: out must be 0 and lse -inf");
    f->attn.seqlen_k = 0;
    poison_floats(f->dq_mem, sizeof f->dq_mem / sizeof(float));
    st = call(f, CALL_BACKWARD);
    CHECK(st == FA_SUCCESS, "backward with seqlen_k = 0: %s", fa_last_error());
    ok = 1;
    for (int e = 0; e < B * SQ * HQ * D; ++e)
        ok &= f->dq_mem[e] == 0.0f;
    CHECK(ok, "backward with seqlen_k = 0: dq must be 0");

    /* Empty views built by fa_tensor_contiguous (stride_batch 0) touch
     * nothing and are valid, for seqlen_k = 0 and seqlen_q = 0. */
    fixture_reset(f, ctx);
    f->attn.seqlen_k = 0;
    f->k = fa_tensor_contiguous(f->k_mem, 0, HKV, D);
    f->v = fa_tensor_contiguous(f->v_mem, 0, HKV, DV);
    st = call(f, CALL_FORWARD);
    CHECK(st == FA_SUCCESS && f->out_mem[0] == 0.0f && isinf(f->lse_mem[0]),
          "forward with seqlen_k = 0 and contiguous empty views: %s", fa_last_error());
    fixture_reset(f, ctx);
    f->attn.seqlen_q = 0;
    f->q = fa_tensor_contiguous(f->q_mem, 0, HQ, D);
    f->out = fa_tensor_contiguous(f->out_mem, 0, HQ, DV);
    f->dout = fa_tensor_contiguous(f->dout_mem, 0, HQ, DV);
    f->dq = fa_tensor_contiguous(f->dq_mem, 0, HQ, D);
    CHECK(call(f, CALL_FORWARD) == FA_SUCCESS && call(f, CALL_BACKWARD) == FA_SUCCESS,
          "seqlen_q = 0 with contiguous empty views: %s", fa_last_error());

    /* lse = NULL is allowed when no backward follows: same out. */
    fixture_reset(f, ctx);
    st = call(f, CALL_FORWARD);
    CHECK(st == FA_SUCCESS, "forward: %s", fa_last_error());
    float with_lse[B * SQ * HQ * DV];
    memcpy(with_lse, f->out_mem, sizeof with_lse);
    poison_floats(f->out_mem, sizeof f->out_mem / sizeof(float));
    poison_floats(f->lse_mem, sizeof f->lse_mem / sizeof(float));
    f->lse_arg = NULL;
    st = call(f, CALL_FORWARD);
    CHECK(st == FA_SUCCESS && !memcmp(with_lse, f->out_mem, sizeof with_lse) &&
              all_poison(f->lse_mem, B * HQ * SQ),
          "forward with lse = NULL: %s, out %s", fa_status_string(st),
          memcmp(with_lse, f->out_mem, sizeof with_lse) ? "differs" : "same");

    /* varlen with every query sequence empty */
    fixture_reset(f, ctx);
    fixture_varlen(f);
    f->cu_q[1] = f->cu_q[2] = 0;
    f->q.data = f->out.data = NULL;
    st = call(f, CALL_FORWARD);
    CHECK(st == FA_SUCCESS && all_poison(f->out_mem, B * SQ * HQ * DV) &&
              all_poison(f->lse_mem, B * HQ * SQ),
          "varlen forward with total_q = 0: %s", fa_status_string(st));
}

/* ---------------------------------------------------------------------- */
/* Version, strings, sizes                                                 */

static void test_metadata(void)
{
    CHECK(fa_version() == FA_VERSION_NUMBER, "fa_version() %u != %u", fa_version(),
          (unsigned)FA_VERSION_NUMBER);
    char expect[32];
    snprintf(expect, sizeof expect, "%d.%d.%d", FA_VERSION_MAJOR, FA_VERSION_MINOR,
             FA_VERSION_PATCH);
    CHECK(!strcmp(fa_version_string(), expect), "fa_version_string() \"%s\"",
          fa_version_string());

    static const struct { fa_status status; const char *text; } statuses[] = {
        {FA_SUCCESS, "success"},
        {FA_ERROR_INVALID_ARGUMENT, "invalid argument"},
        {FA_ERROR_UNSUPPORTED, "unsupported"},
        {FA_ERROR_OUT_OF_MEMORY, "out of memory"},
        {FA_ERROR_DEVICE, "device"},
        {FA_ERROR_INTERNAL, "internal"}};
    for (size_t n = 0; n < sizeof statuses / sizeof statuses[0]; ++n) {
        const char *s = fa_status_string(statuses[n].status);
        CHECK(s && strstr(s, statuses[n].text), "fa_status_string(%d) = \"%s\"",
              (int)statuses[n].status, s ? s : "(null)");
        for (size_t m = 0; m < n; ++m)
            CHECK(strcmp(s, fa_status_string(statuses[m].status)),
                  "statuses %zu and %zu share the string \"%s\"", n, m, s);
    }
    CHECK(fa_status_string((fa_status)99) != NULL, "fa_status_string(99) is NULL");

    CHECK(fa_dtype_size(FA_DTYPE_F32) == 4 && fa_dtype_size(FA_DTYPE_F16) == 2 &&
              fa_dtype_size(FA_DTYPE_BF16) == 2 && fa_dtype_size(FA_DTYPE_FP8_E4M3) == 1 &&
              fa_dtype_size(FA_DTYPE_FP8_E5M2) == 1,
          "fa_dtype_size");
    CHECK(fa_dtype_size((fa_dtype)42) == 0, "fa_dtype_size(42) must be 0");
    CHECK(fa_dtype_name(FA_DTYPE_BF16) && fa_dtype_name((fa_dtype)42), "fa_dtype_name");
    CHECK(fa_backend_compiled(FA_BACKEND_CPU) == 1 && fa_backend_compiled(FA_BACKEND_AUTO) == 1,
          "the CPU backend is always compiled");
    CHECK(fa_backend_compiled((fa_backend)9) == 0, "fa_backend_compiled(9)");
    CHECK(fa_backend_name(FA_BACKEND_CUDA_SM90) && fa_backend_name((fa_backend)9),
          "fa_backend_name");

    fa_attn a;
    memset(&a, 0x5a, sizeof a);
    fa_attn_init(&a);
    CHECK(a.window_left == -1 && a.window_right == -1 && a.dtype == FA_DTYPE_F32 &&
              a.softmax_scale == 0.0f && a.causal == 0 && a.softcap == 0.0f &&
              a.dropout_p == 0.0f && a.alibi_slopes == NULL && a.block_mask == NULL &&
              a.cu_seqlens_q == NULL && a.cu_seqlens_k == NULL && a.head_dim_v == 0 &&
              a.batch == 0 && a.deterministic == 0 && a.q_descale == NULL &&
              a.k_descale == NULL && a.v_descale == NULL && a.descale_block_q == 0 &&
              a.descale_block_k == 0,
          "fa_attn_init defaults");

    float dummy[1];
    fa_tensor t = fa_tensor_contiguous(dummy, 7, 3, 5);
    CHECK(t.data == dummy && t.stride_head == 5 && t.stride_seq == 15 && t.stride_batch == 105,
          "fa_tensor_contiguous strides");
}

/* ---------------------------------------------------------------------- */
/* Dropout stream                                                          */

/* Philox4x32-10 written from Salmon et al. (SC'11), independent of the
 * library's copy. */
static void philox4x32_10(uint32_t ctr[4], uint32_t key0, uint32_t key1)
{
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            key0 += 0x9E3779B9u;
            key1 += 0xBB67AE85u;
        }
        uint64_t a = (uint64_t)0xD2511F53u * ctr[0];
        uint64_t b = (uint64_t)0xCD9E8D57u * ctr[2];
        uint32_t next[4] = {(uint32_t)(b >> 32) ^ ctr[1] ^ key0, (uint32_t)b,
                            (uint32_t)(a >> 32) ^ ctr[3] ^ key1, (uint32_t)a};
        memcpy(ctr, next, sizeof next);
    }
}

static int keep_spec(uint64_t seed, uint64_t offset, int64_t heads_q, int64_t b, int64_t h,
                     int64_t i, int64_t j, float p)
{
    uint64_t sub = offset + (uint64_t)b * (uint64_t)heads_q + (uint64_t)h; /* mod 2^64 */
    uint32_t ctr[4] = {(uint32_t)((uint64_t)j >> 2), (uint32_t)i, (uint32_t)sub,
                       (uint32_t)(sub >> 32)};
    philox4x32_10(ctr, (uint32_t)seed, (uint32_t)(seed >> 32));
    uint32_t threshold = (uint32_t)floor((double)p * 4294967296.0);
    return ctr[j & 3] >= threshold;
}

static void test_dropout_stream(void)
{
    /* Random123 known-answer vectors (kat_vectors, philox4x32 10 rounds) */
    static const uint32_t kat[3][10] = {
        {0, 0, 0, 0, 0, 0, 0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u},
        {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu,
         0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu},
        {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u,
         0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}};
    for (int n = 0; n < 3; ++n) {
        uint32_t ctr[4] = {kat[n][0], kat[n][1], kat[n][2], kat[n][3]};
        philox4x32_10(ctr, kat[n][4], kat[n][5]);
        CHECK(!memcmp(ctr, &kat[n][6], sizeof ctr), "Philox KAT %d: %08x %08x %08x %08x", n,
              ctr[0], ctr[1], ctr[2], ctr[3]);
    }

    test_rng r;
    rng_seed(&r, 99);
    static const float ps[] = {0.0f, 0.1f, 0.5f, 0.9f, 0.999f};
    int64_t mismatches = 0, kept = 0, total = 0;
    for (int n = 0; n < 20000; ++n) {
        uint64_t seed = rng_next(&r);
        uint64_t offset = n % 3 == 0 ? 0xfffffff0ull + (uint64_t)rng_int(&r, 0, 31)
                                     : rng_next(&r);
        int64_t hq = rng_int(&r, 1, 64), b = rng_int(&r, 0, 100), h = rng_int(&r, 0, hq - 1);
        int64_t i = rng_int(&r, 0, 70000), j = rng_int(&r, 0, 70000);
        float p = ps[n % 5];
        int lib = fa_dropout_keep(seed, offset, hq, b, h, i, j, p);
        int spec = keep_spec(seed, offset, hq, b, h, i, j, p);
        if (lib != spec && mismatches++ < 5)
            printf("FAIL fa_dropout_keep(seed %llu, offset %llu, hq %lld, b %lld, h %lld, "
                   "i %lld, j %lld, p %g) = %d, the header's definition says %d\n",
                   (unsigned long long)seed, (unsigned long long)offset, (long long)hq,
                   (long long)b, (long long)h, (long long)i, (long long)j, (double)p, lib,
                   spec);
        if (p == 0.5f) {
            kept += lib;
            total++;
        }
    }
    ++checks;
    failures += mismatches > 0;
    double rate = (double)kept / (double)total;
    CHECK(fabs(rate - 0.5) < 0.03, "keep rate at p = 0.5 is %.3f", rate);
    /* outside [0, 1) the helper is still defined: p <= 0 or NaN keeps all,
     * and indices whose b·heads_q passes 2^63 wrap as the definition does */
    CHECK(fa_dropout_keep(1, 2, 4, 1, 2, 3, 4, NAN) == 1 &&
              fa_dropout_keep(1, 2, 4, 1, 2, 3, 4, -0.5f) == 1,
          "fa_dropout_keep with p NaN / negative must keep");
    CHECK(fa_dropout_keep(5, 6, INT64_MAX, 2, 1, 3, 4, 0.5f) ==
              keep_spec(5, 6, INT64_MAX, 2, 1, 3, 4, 0.5f),
          "fa_dropout_keep with b·heads_q beyond 2^63");
}

/* ---------------------------------------------------------------------- */
/* Threads                                                                 */

#define NUM_WORKERS 4

typedef struct worker {
    int id;
    fixture fix;          /* its own problem (different seqlen per worker) */
    float serial_out[B * SQ * HQ * DV], serial_lse[B * HQ * SQ];
    float serial_dq[B * SQ * HQ * D];
    char message[256];    /* fa_last_error() after its own failure */
    int ok;
    pthread_barrier_t *barrier;
} worker;

/* Forward + backward on the worker's fixture; returns success. */
static int run_fixture(fixture *f)
{
    return call(f, CALL_FORWARD) == FA_SUCCESS && call(f, CALL_BACKWARD) == FA_SUCCESS;
}

static void prepare_worker(worker *w, fa_context *ctx)
{
    fixture_reset(&w->fix, ctx);
    w->fix.attn.seqlen_q = SQ - w->id % 3;
    w->fix.attn.causal = w->id % 2;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    fa_context *ctx = NULL;
    w->ok = fa_context_create(&ctx, FA_DEVICE_CPU, 0) == FA_SUCCESS &&
            fa_context_set_num_threads(ctx, 2) == FA_SUCCESS;
    if (!w->ok)
        return NULL;
    for (int rep = 0; rep < 20 && w->ok; ++rep) {
        prepare_worker(w, ctx);
        w->ok = run_fixture(&w->fix) &&
                !memcmp(w->fix.out_mem, w->serial_out, sizeof w->serial_out) &&
                !memcmp(w->fix.lse_mem, w->serial_lse, sizeof w->serial_lse) &&
                !memcmp(w->fix.dq_mem, w->serial_dq, sizeof w->serial_dq);
    }
    /* every worker fails with its own value, then reads its message */
    fa_attn bad = w->fix.attn;
    bad.heads_q = -100 - w->id;
    size_t bytes;
    fa_forward_workspace_size(ctx, &bad, &bytes);
    pthread_barrier_wait(w->barrier);
    snprintf(w->message, sizeof w->message, "%s", fa_last_error());
    fa_context_destroy(ctx);
    return NULL;
}

static void test_threads(void)
{
    static worker workers[NUM_WORKERS];
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, NUM_WORKERS);
    fa_context *ctx = NULL;
    fa_context_create(&ctx, FA_DEVICE_CPU, 0);
    fa_context_set_num_threads(ctx, 2);
    for (int n = 0; n < NUM_WORKERS; ++n) {
        worker *w = &workers[n];
        w->id = n;
        w->barrier = &barrier;
        prepare_worker(w, ctx);
        CHECK(run_fixture(&w->fix), "serial run of worker %d: %s", n, fa_last_error());
        memcpy(w->serial_out, w->fix.out_mem, sizeof w->serial_out);
        memcpy(w->serial_lse, w->fix.lse_mem, sizeof w->serial_lse);
        memcpy(w->serial_dq, w->fix.dq_mem, sizeof w->serial_dq);
    }
    fa_context_destroy(ctx);
    pthread_t threads[NUM_WORKERS];
    for (int n = 0; n < NUM_WORKERS; ++n)
        pthread_create(&threads[n], NULL, worker_main, &workers[n]);
    for (int n = 0; n < NUM_WORKERS; ++n)
        pthread_join(threads[n], NULL);
    pthread_barrier_destroy(&barrier);
    for (int n = 0; n < NUM_WORKERS; ++n) {
        char own[32];
        snprintf(own, sizeof own, "%d", -100 - n);
        CHECK(workers[n].ok, "worker %d: concurrent results differ from the serial ones", n);
        CHECK(strstr(workers[n].message, own) != NULL,
              "worker %d: fa_last_error() is \"%s\", not its own failure (%s)", n,
              workers[n].message, own);
    }
}

/* The CPU backend's results do not depend on the thread count: forward and
 * backward with 1, 2, 3 and 5 threads give the same bits. The problem spans
 * several key tiles, so the backward's dQ partials and their sum run. */
static void test_thread_count_invariance(void)
{
    enum { TB = 2, TSQ = 150, TSK = 300, THQ = 4, THKV = 2, TD = 40 };
    const size_t nq = (size_t)TB * TSQ * THQ * TD, nk = (size_t)TB * TSK * THKV * TD;
    const size_t nlse = (size_t)TB * THQ * TSQ;
    static const int thread_counts[] = {1, 2, 3, 5};
    float *in = malloc((2 * nq + 2 * nk) * sizeof(float));
    float *ref = malloc((2 * nq + 2 * nk + nlse) * sizeof(float));
    float *got = malloc((2 * nq + 2 * nk + nlse) * sizeof(float));
    if (!in || !ref || !got) {
        CHECK(0, "thread-count test: out of memory");
        free(in);
        free(ref);
        free(got);
        return;
    }
    test_rng r;
    rng_seed(&r, 11);
    for (size_t e = 0; e < 2 * nq + 2 * nk; ++e)
        in[e] = (float)rng_normal(&r);
    fa_attn attn;
    fa_attn_init(&attn);
    attn.batch = TB;
    attn.seqlen_q = TSQ;
    attn.seqlen_k = TSK;
    attn.heads_q = THQ;
    attn.heads_kv = THKV;
    attn.head_dim = TD;
    attn.window_left = 200;
    attn.dropout_p = 0.1f;
    attn.dropout_seed = 5;
    /* in: q, dout, k, v; results: out, dq, dk, dv, lse */
    fa_tensor q = fa_tensor_contiguous(in, TSQ, THQ, TD);
    fa_tensor dout = fa_tensor_contiguous(in + nq, TSQ, THQ, TD);
    fa_tensor k = fa_tensor_contiguous(in + 2 * nq, TSK, THKV, TD);
    fa_tensor v = fa_tensor_contiguous(in + 2 * nq + nk, TSK, THKV, TD);
    for (size_t n = 0; n < sizeof thread_counts / sizeof thread_counts[0]; ++n) {
        float *res = n == 0 ? ref : got;
        fa_tensor out = fa_tensor_contiguous(res, TSQ, THQ, TD);
        fa_tensor dq = fa_tensor_contiguous(res + nq, TSQ, THQ, TD);
        fa_tensor dk = fa_tensor_contiguous(res + 2 * nq, TSK, THKV, TD);
        fa_tensor dv = fa_tensor_contiguous(res + 2 * nq + nk, TSK, THKV, TD);
        float *lse = res + 2 * nq + 2 * nk;
        fa_context *ctx = NULL;
        int ok = fa_context_create(&ctx, FA_DEVICE_CPU, 0) == FA_SUCCESS &&
                 fa_context_set_num_threads(ctx, thread_counts[n]) == FA_SUCCESS &&
                 fa_forward(ctx, &attn, &q, &k, &v, &out, lse, NULL, 0) == FA_SUCCESS &&
                 fa_backward(ctx, &attn, &q, &k, &v, &out, lse, &dout, &dq, &dk, &dv, NULL,
                             0) == FA_SUCCESS;
        CHECK(ok, "thread-count test, %d threads: %s", thread_counts[n], fa_last_error());
        fa_context_destroy(ctx);
        if (n > 0)
            CHECK(ok && !memcmp(ref, got, (2 * nq + 2 * nk + nlse) * sizeof(float)),
                  "%d threads: out/dq/dk/dv/lse differ from 1 thread", thread_counts[n]);
    }
    free(in);
    free(ref);
    free(got);
}

/* ---------------------------------------------------------------------- */
/* Option values at their limits                                           */

/* Forward + backward of f into (out, lse, dq): the results of one setting. */
typedef struct results {
    float out[B * SQ * HQ * DV], lse[B * HQ * SQ], dq[B * SQ * HQ * D];
} results;

static int run_results(fixture *f, results *r)
{
    int ok = call(f, CALL_FORWARD) == FA_SUCCESS && call(f, CALL_BACKWARD) == FA_SUCCESS;
    memcpy(r->out, f->out_mem, sizeof r->out);
    memcpy(r->lse, f->lse_mem, sizeof r->lse);
    memcpy(r->dq, f->dq_mem, sizeof r->dq);
    return ok;
}

/* Windows as long as the sequence or longer (INT64_MAX included) hide
 * nothing, and a block size beyond the sequence is one block: each gives
 * the results of the setting it equals. */
static void test_option_limits(fa_context *ctx)
{
    static fixture storage;
    static results want, got;
    fixture *f = &storage;
    static const struct {
        int causal;
        int64_t left, right;
        const char *what;
    } windows[] = {{0, INT64_MAX, INT64_MAX, "window (INT64_MAX, INT64_MAX)"},
                   {0, SK, SQ, "window (seqlen_k, seqlen_q)"},
                   {1, INT64_MAX, -1, "causal, window_left INT64_MAX"}};
    for (int n = 0; n < 3; ++n) {
        fixture_reset(f, ctx);
        f->attn.causal = windows[n].causal;
        int ok = run_results(f, &want);
        fixture_reset(f, ctx);
        f->attn.causal = windows[n].causal;
        f->attn.window_left = windows[n].left;
        f->attn.window_right = windows[n].right;
        ok &= run_results(f, &got);
        CHECK(ok && !memcmp(&want, &got, sizeof want), "%s: %s, results %s", windows[n].what,
              fa_last_error(), memcmp(&want, &got, sizeof want) ? "differ" : "equal");
    }
    fixture_reset(f, ctx);
    int ok = run_results(f, &want);
    fixture_reset(f, ctx);
    f->attn.block_mask = f->block_mask;
    f->attn.block_size_q = f->attn.block_size_k = INT64_MAX;
    f->attn.block_mask_blocks_q = f->attn.block_mask_blocks_k = 1;
    ok &= run_results(f, &got);
    CHECK(ok && !memcmp(&want, &got, sizeof want), "block sizes INT64_MAX (one block): %s, %s",
          fa_last_error(), memcmp(&want, &got, sizeof want) ? "results differ" : "");
}

/* The KV-cache options against what they stand for, bit for bit on the
 * CPU backend: a paged cache against the same keys in place; seqused_k
 * against varlen keys of those lengths (each row's keys, mask alignment
 * and sums are the same); a page table entry past the used pages is never
 * read. */
static void test_kv_cache(fa_context *ctx)
{
    static fixture storage;
    static float want[B * SQ * HQ * DV], want_lse[B * HQ * SQ];
    fixture *f = &storage;
    for (int causal = 0; causal < 2; ++causal) {
        fixture_reset(f, ctx);
        f->attn.causal = causal;
        fa_status st = call(f, CALL_FORWARD);
        memcpy(want, f->out_mem, sizeof want);
        memcpy(want_lse, f->lse_mem, sizeof want_lse);
        fixture_reset(f, ctx);
        f->attn.causal = causal;
        fixture_paged(f);
        st |= call(f, CALL_FORWARD);
        CHECK(st == FA_SUCCESS && !memcmp(want, f->out_mem, sizeof want) &&
                  !memcmp(want_lse, f->lse_mem, sizeof want_lse),
              "paged forward (causal %d) differs from the contiguous one: %s", causal,
              fa_last_error());

        /* seqused_k (4, 6) against varlen keys: sequence 0's first 4 of
         * its 6, sequence 1's 6 (k_mem rows 0-3 and 6-11 repacked) */
        fixture_reset(f, ctx);
        f->attn.causal = causal;
        static float k_packed[B * SK * HKV * D], v_packed[B * SK * HKV * DV];
        memcpy(k_packed, f->k_mem, sizeof(float) * 4 * HKV * D);
        memcpy(k_packed + 4 * HKV * D, f->k_mem + SK * HKV * D, sizeof(float) * SK * HKV * D);
        memcpy(v_packed, f->v_mem, sizeof(float) * 4 * HKV * DV);
        memcpy(v_packed + 4 * HKV * DV, f->v_mem + SK * HKV * DV, sizeof(float) * SK * HKV * DV);
        f->cu_q[1] = SQ;
        f->cu_q[2] = 2 * SQ;
        f->cu_k[1] = 4;
        f->cu_k[2] = 4 + SK;
        f->attn.cu_seqlens_q = f->cu_q;
        f->attn.cu_seqlens_k = f->cu_k;
        f->k = fa_tensor_contiguous(k_packed, f->cu_k[B], HKV, D);
        f->v = fa_tensor_contiguous(v_packed, f->cu_k[B], HKV, DV);
        f->q = fa_tensor_contiguous(f->q_mem, f->cu_q[B], HQ, D);
        f->out = fa_tensor_contiguous(f->out_mem, f->cu_q[B], HQ, DV);
        st = call(f, CALL_FORWARD);
        memcpy(want, f->out_mem, sizeof want);
        fixture_reset(f, ctx);
        f->attn.causal = causal;
        f->attn.seqused_k = f->seqused_k;
        fixture_paged(f);
        f->block_table[PAGES_PER_SEQ - 1] = 99; /* page 2 of sequence 0: unused */
        st |= call(f, CALL_FORWARD);
        CHECK(st == FA_SUCCESS && !memcmp(want, f->out_mem, sizeof want),
              "seqused_k + paged forward (causal %d) differs from varlen: %s", causal,
              fa_last_error());
    }
}

/* ---------------------------------------------------------------------- */
/* FP8                                                                     */

/* testlib's FP8 conversions (the grid's references use them) against the
 * formats' known values: extremes, subnormals, infinity and NaN, ties to
 * the even pattern, saturation; and every pattern round-trips. */
static void test_fp8_helpers(void)
{
    const fa_dtype e4m3 = FA_DTYPE_FP8_E4M3, e5m2 = FA_DTYPE_FP8_E5M2;
    static const struct {
        fa_dtype dtype;
        uint8_t bits;
        float value;
    } known[] = {{FA_DTYPE_FP8_E4M3, 0x38, 1.0f},     {FA_DTYPE_FP8_E4M3, 0x7e, 448.0f},
                 {FA_DTYPE_FP8_E4M3, 0x01, 0x1p-9f},  {FA_DTYPE_FP8_E4M3, 0x08, 0x1p-6f},
                 {FA_DTYPE_FP8_E4M3, 0x07, 0x1.cp-7f}, {FA_DTYPE_FP8_E4M3, 0xc5, -3.25f},
                 {FA_DTYPE_FP8_E4M3, 0x78, 256.0f},   {FA_DTYPE_FP8_E5M2, 0x3c, 1.0f},
                 {FA_DTYPE_FP8_E5M2, 0x7b, 57344.0f}, {FA_DTYPE_FP8_E5M2, 0x01, 0x1p-16f},
                 {FA_DTYPE_FP8_E5M2, 0x04, 0x1p-14f}, {FA_DTYPE_FP8_E5M2, 0xc1, -2.5f},
                 {FA_DTYPE_FP8_E5M2, 0x7c, INFINITY}, {FA_DTYPE_FP8_E5M2, 0xfc, -INFINITY}};
    for (size_t n = 0; n < sizeof known / sizeof known[0]; ++n)
        CHECK(fp8_bits_to_f32(known[n].bits, known[n].dtype) == known[n].value,
              "%s 0x%02x decodes to %g, not %g", fa_dtype_name(known[n].dtype), known[n].bits,
              (double)fp8_bits_to_f32(known[n].bits, known[n].dtype), (double)known[n].value);
    CHECK(isnan(fp8_bits_to_f32(0x7f, e4m3)) && isnan(fp8_bits_to_f32(0xff, e4m3)) &&
              !isnan(fp8_bits_to_f32(0x7e, e4m3)) && isnan(fp8_bits_to_f32(0x7d, e5m2)) &&
              isnan(fp8_bits_to_f32(0xff, e5m2)),
          "FP8 NaN patterns");
    int round_trips = 1;
    for (int t = 0; t < 2; ++t) {
        fa_dtype dtype = t ? e5m2 : e4m3;
        for (int bits = 0; bits < 256; ++bits) {
            float x = fp8_bits_to_f32((uint8_t)bits, dtype);
            if (isfinite(x))
                round_trips &= double_to_fp8_bits(x, dtype) == bits;
        }
    }
    CHECK(round_trips, "an FP8 value does not encode to its own pattern");
    static const struct {
        fa_dtype dtype;
        double x;
        uint8_t bits;
    } rounded[] = {{FA_DTYPE_FP8_E4M3, 1.0625, 0x38},   /* tie 1 | 1.125: even */
                   {FA_DTYPE_FP8_E4M3, 1.1875, 0x3a},   /* tie 1.125 | 1.25: even */
                   {FA_DTYPE_FP8_E4M3, 1.0626, 0x39},
                   {FA_DTYPE_FP8_E4M3, 0x1p-10, 0x00},  /* tie 0 | 2^-9 */
                   {FA_DTYPE_FP8_E4M3, 0x1.8p-9, 0x02}, /* tie 2^-9 | 2^-8 */
                   {FA_DTYPE_FP8_E4M3, -0x1.01p-10, 0x81},
                   {FA_DTYPE_FP8_E4M3, 464.0, 0x7e},    /* beyond 448: saturated */
                   {FA_DTYPE_FP8_E4M3, 1e30, 0x7e},
                   {FA_DTYPE_FP8_E4M3, -INFINITY, 0xfe},
                   {FA_DTYPE_FP8_E5M2, 1.125, 0x3c},    /* tie 1 | 1.25 */
                   {FA_DTYPE_FP8_E5M2, 61440.0, 0x7b},  /* beyond 57344 */
                   {FA_DTYPE_FP8_E5M2, INFINITY, 0x7b},
                   {FA_DTYPE_FP8_E5M2, -0x1p-17, 0x80}, /* tie -0 | -2^-16 */
                   {FA_DTYPE_FP8_E5M2, NAN, 0x7f}};
    for (size_t n = 0; n < sizeof rounded / sizeof rounded[0]; ++n) {
        uint8_t got = double_to_fp8_bits(rounded[n].x, rounded[n].dtype);
        CHECK(got == rounded[n].bits, "%s: %a encodes to 0x%02x, not 0x%02x",
              fa_dtype_name(rounded[n].dtype), rounded[n].x, got, rounded[n].bits);
    }
    CHECK(round_to_dtype(300.0, e4m3) == 288.0 && round_to_dtype(300.0, e5m2) == 320.0 &&
              dtype_unit_roundoff(e4m3) == 0x1p-4 && dtype_unit_roundoff(e5m2) == 0x1p-3,
          "round_to_dtype / dtype_unit_roundoff for FP8");
}

/* Which sequence and row within it packed token t is: cu (batch + 1) for
 * varlen, else fixed sequences of len. */
static void token_position(const int32_t *cu, int64_t len, int64_t t, int64_t *b, int64_t *i)
{
    *b = cu ? 0 : t / len;
    if (cu)
        while (t >= cu[*b + 1])
            ++*b;
    *i = cu ? t - cu[*b] : t % len;
}

/* dst := src (1-byte values, contiguous (tokens, heads, dim)) times their
 * descales, re-encoded: exact where the products are FP8 values. */
static void premultiply(uint8_t *dst, const uint8_t *src, const float *descale, fa_dtype dtype,
                        const int32_t *cu, int64_t len, int64_t tokens, int64_t heads,
                        int64_t dim, int64_t block, int64_t blocks)
{
    for (int64_t t = 0; t < tokens; ++t) {
        int64_t b, i;
        token_position(cu, len, t, &b, &i);
        for (int64_t h = 0; h < heads; ++h)
            for (int64_t x = 0; x < dim; ++x) {
                int64_t e = (t * heads + h) * dim + x;
                dst[e] = double_to_fp8_bits(fp8_bits_to_f32(src[e], dtype) *
                                                descale[(b * heads + h) * blocks + i / block],
                                            dtype);
            }
    }
}

/* Descales are what they promise, on the CPU bit for bit: values stored
 * with descales 2^e per block give the results of the same values stored
 * multiplied out (|stored| in [1/8, 8), e in [-2, 2]: the products are FP8
 * values) with no descales; varlen blocks restart with each sequence. */
static void test_fp8_descales(fa_context *ctx)
{
    static fixture scaled_storage, plain_storage;
    fixture *scaled = &scaled_storage, *plain = &plain_storage;
    for (int n = 0; n < 4; ++n) {
        const fa_dtype dtype = n % 2 ? FA_DTYPE_FP8_E5M2 : FA_DTYPE_FP8_E4M3;
        const int varlen = n / 2;
        test_rng r;
        rng_seed(&r, 40 + (uint64_t)n);
        fixture *both[2] = {scaled, plain};
        for (int s = 0; s < 2; ++s) {
            fixture_reset(both[s], ctx);
            fixture_fp8(both[s], dtype);
            both[s]->attn.causal = varlen;
            if (varlen)
                fixture_varlen(both[s]);
        }
        const int32_t *cu_q = varlen ? scaled->cu_q : NULL, *cu_k = varlen ? scaled->cu_k : NULL;
        const int64_t tokens_q = varlen ? cu_q[B] : B * SQ, tokens_k = varlen ? cu_k[B] : B * SK;
        uint8_t *stored[3] = {(uint8_t *)scaled->q_mem, (uint8_t *)scaled->k_mem,
                              (uint8_t *)scaled->v_mem};
        const int64_t count[3] = {tokens_q * HQ * D, tokens_k * HKV * D, tokens_k * HKV * DV};
        for (int t = 0; t < 3; ++t)
            for (int64_t e = 0; e < count[t]; ++e)
                stored[t][e] = double_to_fp8_bits(
                    (rng_int(&r, 0, 1) ? -1 : 1) * ldexp(1.0 + rng_uniform(&r), (int)rng_int(&r, -3, 2)),
                    dtype);
        float *descales[3] = {scaled->q_descale, scaled->k_descale, scaled->v_descale};
        const int ndescales[3] = {FP8_NQ_DESCALES, FP8_NK_DESCALES, FP8_NK_DESCALES};
        for (int t = 0; t < 3; ++t)
            for (int e = 0; e < ndescales[t]; ++e)
                descales[t][e] = ldexpf(1.0f, (int)rng_int(&r, -2, 2));
        premultiply((uint8_t *)plain->q_mem, stored[0], scaled->q_descale, dtype, cu_q, SQ, tokens_q,
                    HQ, D, FP8_BLOCK_Q, FP8_BLOCKS_Q);
        premultiply((uint8_t *)plain->k_mem, stored[1], scaled->k_descale, dtype, cu_k, SK, tokens_k,
                    HKV, D, FP8_BLOCK_K, FP8_BLOCKS_K);
        premultiply((uint8_t *)plain->v_mem, stored[2], scaled->v_descale, dtype, cu_k, SK, tokens_k,
                    HKV, DV, FP8_BLOCK_K, FP8_BLOCKS_K);
        plain->attn.q_descale = plain->attn.k_descale = plain->attn.v_descale = NULL;
        fa_status st = call(scaled, CALL_FORWARD);
        CHECK(st == FA_SUCCESS, "%s forward with descales: %s", fa_dtype_name(dtype), fa_last_error());
        st = call(plain, CALL_FORWARD);
        CHECK(st == FA_SUCCESS, "%s forward without: %s", fa_dtype_name(dtype), fa_last_error());
        CHECK(!memcmp(scaled->out_mem, plain->out_mem, sizeof plain->out_mem) &&
                  !memcmp(scaled->lse_mem, plain->lse_mem, sizeof plain->lse_mem),
              "%s%s: descales of 2^e differ from the values multiplied out", fa_dtype_name(dtype),
              varlen ? " (varlen, causal)" : "");
    }
}

/* The library's FP8 values, through V: with one key P = 1 and out = V ·
 * v_descale, exactly (a finite FP8 value times 2^-2 is a bf16), so every
 * finite pattern must come back as the format defines it; out is bf16. */
static void test_fp8_values(fa_context *ctx)
{
    enum { DIM = 16, DIM_V = 256 };
    for (int t = 0; t < 2; ++t) {
        const fa_dtype dtype = t ? FA_DTYPE_FP8_E5M2 : FA_DTYPE_FP8_E4M3;
        uint8_t q[DIM], k[DIM], v[DIM_V];
        uint16_t out[DIM_V];
        float lse, v_descale = 0.25f;
        for (int x = 0; x < DIM; ++x)
            q[x] = k[x] = double_to_fp8_bits(0.5 * (x % 3) - 0.5, dtype);
        for (int c = 0; c < DIM_V; ++c)
            v[c] = isfinite(fp8_bits_to_f32((uint8_t)c, dtype)) ? (uint8_t)c : 0;
        fa_attn attn;
        fa_attn_init(&attn);
        attn.batch = attn.seqlen_q = attn.seqlen_k = attn.heads_q = attn.heads_kv = 1;
        attn.head_dim = DIM;
        attn.head_dim_v = DIM_V;
        attn.dtype = dtype;
        attn.v_descale = &v_descale;
        fa_tensor tq = fa_tensor_contiguous(q, 1, 1, DIM), tk = fa_tensor_contiguous(k, 1, 1, DIM);
        fa_tensor tv = fa_tensor_contiguous(v, 1, 1, DIM_V), to = fa_tensor_contiguous(out, 1, 1, DIM_V);
        fa_status st = fa_forward(ctx, &attn, &tq, &tk, &tv, &to, &lse, NULL, 0);
        CHECK(st == FA_SUCCESS, "%s forward with one key: %s", fa_dtype_name(dtype), fa_last_error());
        int wrong = 0;
        for (int c = 0; c < DIM_V && st == FA_SUCCESS; ++c) {
            float want = fp8_bits_to_f32(v[c], dtype) * v_descale; /* (-0 sums to +0) */
            if (bf16_bits_to_f32(out[c]) != want && wrong++ < 4)
                printf("FAIL %s value 0x%02x: out %g, the format says %g\n", fa_dtype_name(dtype),
                       v[c], (double)bf16_bits_to_f32(out[c]), (double)want);
        }
        CHECK(!wrong, "%s: %d FP8 values decoded wrong", fa_dtype_name(dtype), wrong);
    }
}

/* Validation's extents with FP8: nothing past the (batch, heads, blocks)
 * descales is read, and outputs right after a 1-byte input or the 2-byte
 * out are no overlaps. */
static void test_fp8_extents(fa_context *ctx)
{
    static fixture storage;
    fixture *f = &storage;
    for (int block0 = 0; block0 < 2; ++block0) {
        fixture_reset(f, ctx);
        fixture_fp8(f, FA_DTYPE_FP8_E4M3);
        if (block0)
            f->attn.descale_block_q = f->attn.descale_block_k = 0;
        f->q_descale[block0 ? B * HQ : FP8_NQ_DESCALES] = NAN;
        f->k_descale[block0 ? B * HKV : FP8_NK_DESCALES] = NAN;
        f->v_descale[block0 ? B * HKV : FP8_NK_DESCALES] = -1.0f;
        CHECK(call(f, CALL_FORWARD) == FA_SUCCESS, "FP8 forward read past its descales (blocks %s): %s",
              block0 ? "0" : "of 2 and 4 rows", fa_last_error());
    }
    fixture_reset(f, ctx);
    fixture_fp8(f, FA_DTYPE_FP8_E4M3);
    f->lse_arg = f->out_mem + OUT_BF16_BYTES / 4;
    CHECK(call(f, CALL_FORWARD) == FA_SUCCESS, "lse right after a bf16 out: %s", fa_last_error());
    fixture_reset(f, ctx);
    fixture_fp8(f, FA_DTYPE_FP8_E5M2);
    f->out.data = (char *)f->q_mem + FP8_Q_BYTES;
    CHECK(call(f, CALL_FORWARD) == FA_SUCCESS, "out right after an FP8 q: %s", fa_last_error());
}

int main(void)
{
    fa_context *ctx = NULL;
    if (fa_context_create(&ctx, FA_DEVICE_CPU, 0) != FA_SUCCESS) {
        printf("FAIL: CPU context: %s\n", fa_last_error());
        return 1;
    }
    test_metadata();
    test_context();
    test_dropout_stream();
    test_invalid_arguments(ctx);
    test_empty_sequences(ctx);
    test_option_limits(ctx);
    test_kv_cache(ctx);
    test_fp8_helpers();
    test_fp8_values(ctx);
    test_fp8_descales(ctx);
    test_fp8_extents(ctx);
    test_threads();
    test_thread_count_invariance();
    fa_context_destroy(ctx);
    printf("test_api: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
