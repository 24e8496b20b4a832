/*
 * The public API: errors, version, context, and the validation that turns a
 * caller's fa_attn + tensors into a fa_problem a backend can trust. Nothing
 * is written to an output before every argument has been checked.
 */
#include "context.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------- */
/* Errors                                                                  */

static _Thread_local char last_error[1024];

fa_status fa_fail(fa_status status, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, args);
    va_end(args);
    return status;
}

void fa_clear_error(void) { last_error[0] = '\0'; }

const char *fa_last_error(void) { return last_error; }

const char *fa_status_string(fa_status status)
{
    switch (status) {
    case FA_SUCCESS: return "success";
    case FA_ERROR_INVALID_ARGUMENT: return "invalid argument";
    case FA_ERROR_UNSUPPORTED: return "unsupported";
    case FA_ERROR_OUT_OF_MEMORY: return "out of memory";
    case FA_ERROR_DEVICE: return "device error";
    case FA_ERROR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

/* ---------------------------------------------------------------------- */
/* Version, names                                                          */

#define FA_STR2(x) #x
#define FA_STR(x) FA_STR2(x)

unsigned fa_version(void) { return FA_VERSION_NUMBER; }

const char *fa_version_string(void)
{
    return FA_STR(FA_VERSION_MAJOR) "." FA_STR(FA_VERSION_MINOR) "." FA_STR(
        FA_VERSION_PATCH);
}

static int dtype_valid(fa_dtype dtype)
{
    return (int)dtype >= (int)FA_DTYPE_F32 &&
           (int)dtype <= (int)FA_DTYPE_FP8_E5M2;
}

size_t fa_dtype_size(fa_dtype dtype)
{
    switch (dtype) {
    case FA_DTYPE_F32: return 4;
    case FA_DTYPE_F16:
    case FA_DTYPE_BF16: return 2;
    case FA_DTYPE_FP8_E4M3:
    case FA_DTYPE_FP8_E5M2: return 1;
    }
    return 0;
}

const char *fa_dtype_name(fa_dtype dtype)
{
    switch (dtype) {
    case FA_DTYPE_F32: return "f32";
    case FA_DTYPE_F16: return "f16";
    case FA_DTYPE_BF16: return "bf16";
    case FA_DTYPE_FP8_E4M3: return "fp8_e4m3";
    case FA_DTYPE_FP8_E5M2: return "fp8_e5m2";
    }
    return "unknown";
}

const char *fa_backend_name(fa_backend backend)
{
    switch (backend) {
    case FA_BACKEND_AUTO: return "auto";
    case FA_BACKEND_CPU: return "cpu";
    case FA_BACKEND_CUDA_SM80: return "sm80";
    case FA_BACKEND_CUDA_SM90: return "sm90";
    }
    return "unknown";
}

int fa_backend_compiled(fa_backend backend)
{
    switch (backend) {
    case FA_BACKEND_AUTO:
    case FA_BACKEND_CPU: return 1;
#ifdef FA_HAVE_SM80
    case FA_BACKEND_CUDA_SM80: return 1;
#endif
#ifdef FA_HAVE_SM90
    case FA_BACKEND_CUDA_SM90: return 1;
#endif
    default: return 0;
    }
}

fa_tensor fa_tensor_contiguous(void *data, int64_t seqlen, int64_t heads,
                               int64_t dim)
{
    fa_tensor t;
    t.data = data;
    /* unsigned: sizes too large for 64 bits wrap (the problem's own
     * size check rejects them) instead of overflowing */
    t.stride_head = dim;
    t.stride_seq = (int64_t)((uint64_t)heads * (uint64_t)dim);
    t.stride_batch = (int64_t)((uint64_t)seqlen * (uint64_t)heads * (uint64_t)dim);
    return t;
}

void fa_attn_init(fa_attn *attn)
{
    if (!attn)
        return;
    memset(attn, 0, sizeof *attn);
    attn->dtype = FA_DTYPE_F32;
    attn->window_left = -1;
    attn->window_right = -1;
}

int fa_dropout_keep(uint64_t seed, uint64_t offset, int64_t heads_q,
                    int64_t b, int64_t h, int64_t i, int64_t j, float p)
{
    fa_u32x4 r = fa_dropout_words(seed, offset, heads_q, b, h, i, j);
    return r.x[j & 3] >= fa_dropout_threshold(p);
}

/* ---------------------------------------------------------------------- */
/* Context                                                                 */

fa_status fa_context_create(fa_context **ctx, fa_device device,
                            int device_index)
{
    if (!ctx)
        return fa_fail(FA_ERROR_INVALID_ARGUMENT, "ctx is NULL");
    *ctx = NULL;
    if (device != FA_DEVICE_CPU && device != FA_DEVICE_CUDA)
        return fa_fail(FA_ERROR_INVALID_ARGUMENT,
                       "device (%d) is not a fa_device", (int)device);
    if (device_index < 0)
        return fa_fail(FA_ERROR_INVALID_ARGUMENT,
                       "device_index (%d) is negative", device_index);
    fa_context *c = calloc(1, sizeof *c);
    if (!c)
        return fa_fail(FA_ERROR_OUT_OF_MEMORY, "cannot allocate a context");
    c->device = device;
    c->device_index = device == FA_DEVICE_CPU ? 0 : device_index;
    c->last_kernel = "";
    if (device == FA_DEVICE_CUDA) {
#ifdef FA_HAVE_CUDA
        fa_status st = fa_cuda_device_query(device_index, &c->cuda);
        if (st != FA_SUCCESS) {
            free(c);
            return st;
        }
#else
        free(c);
        return fa_fail(FA_ERROR_UNSUPPORTED,
                       "device cuda: this build of flashattn has no CUDA "
                       "backend");
#endif
    }
    *ctx = c;
    return FA_SUCCESS;
}

static void release_workspace(fa_context *ctx)
{
    if (!ctx->workspace)
        return;
#ifdef FA_HAVE_CUDA
    if (ctx->device == FA_DEVICE_CUDA)
        fa_cuda_free(ctx->workspace, ctx->stream);
    else
#endif
        free(ctx->workspace);
    ctx->workspace = NULL;
    ctx->workspace_size = 0;
}

void fa_context_destroy(fa_context *ctx)
{
    if (!ctx)
        return;
    release_workspace(ctx);
    free(ctx->host_ints);
    free(ctx);
}

fa_status fa_context_set_stream(fa_context *ctx, void *stream)
{
    if (!ctx)
        return fa_fail(FA_ERROR_INVALID_ARGUMENT, "ctx is NULL");
    if (ctx->device != FA_DEVICE_CUDA && stream)
        return fa_fail(FA_ERROR_INVALID_ARGUMENT,
                       "stream: a CPU context has no CUDA stream");
    /* The cached workspace may still be in use by work queued on the old
     * stream: freed there (stream-ordered), a new one comes from the new. */
    if (stream != ctx->stream)
        release_workspace(ctx);
    ctx->stream = stream;
    return FA_SUCCESS;
}

fa_status fa_context_set_num_threads(fa_context *ctx, int threads)
{
    if (!ctx)
        return fa_fail(FA_ERROR_INVALID_ARGUMENT, "ctx is NULL");
    if (threads < 0 || threads > FA_MAX_THREADS)
        return fa_fail(FA_ERROR_INVALID_ARGUMENT,
                       "threads (%d) must be in 0..%d (0 means all cores)",
                       threads, FA_MAX_THREADS);
    ctx->num_threads = threads;
    return FA_SUCCESS;
}

fa_status fa_context_set_backend(fa_context *ctx, fa_backend backend)
{
    if (!ctx)
        return fa_fail(FA_ERROR_INVALID_ARGUMENT, "ctx is NULL");
    if ((int)backend < (int)FA_BACKEND_AUTO ||
        (int)backend > (int)FA_BACKEND_CUDA_SM90)
        return fa_fail(FA_ERROR_INVALID_ARGUMENT,
                       "backend (%d) is not a fa_backend", (int)backend);
    if (!fa_backend_compiled(backend))
        return fa_fail(FA_ERROR_UNSUPPORTED,
                       "backend %s is not compiled into this build",
                       fa_backend_name(backend));
    int wants_cuda = backend == FA_BACKEND_CUDA_SM80 ||
                     backend == FA_BACKEND_CUDA_SM90;
    if (backend != FA_BACKEND_AUTO &&
        wants_cuda != (ctx->device == FA_DEVICE_CUDA))
        return fa_fail(FA_ERROR_UNSUPPORTED,
                       "backend %s cannot run on a %s context",
                       fa_backend_name(backend),
                       ctx->device == FA_DEVICE_CUDA ? "CUDA" : "CPU");
    ctx->backend = backend;
    return FA_SUCCESS;
}

fa_status fa_context_set_kv_cache_checks(fa_context *ctx, int check)
{
    if (!ctx)
        return fa_fail(FA_ERROR_INVALID_ARGUMENT, "ctx is NULL");
    ctx->skip_kv_cache_checks = !check;
    return FA_SUCCESS;
}

const char *fa_context_last_kernel(const fa_context *ctx)
{
    return ctx ? ctx->last_kernel : "";
}

/* ---------------------------------------------------------------------- */
/* Validation                                                              */

#define INVALID(...) fa_fail(FA_ERROR_INVALID_ARGUMENT, __VA_ARGS__)
/* Each dimension's extent must fit the kernels' 32-bit coordinates. */
#define FA_MAX_EXTENT ((int64_t)INT32_MAX)
#define FA_MAX_ELEMENTS_LOG2 48
#define FA_MAX_SOFTMAX_SCALE 1e30f
#define FA_MAX_SOFTCAP 1e4f

/* The element offset range a view touches must have no two elements at one
 * address (outputs would race, inputs would be ambiguous): sort the
 * non-trivial dimensions by stride and require each stride to clear the
 * span of the smaller ones (fa_internal.h). */
fa_status fa_check_view(const char *name, const fa_tensor *t, int64_t outer,
                        int64_t rows, int64_t heads, int64_t dim, int varlen)
{
    if (!t)
        return INVALID("%s is NULL", name);
    int64_t rows_total = rows * (varlen ? 1 : outer);
    if (rows_total > 0 && !t->data)
        return INVALID("%s->data is NULL", name);
    if (rows_total == 0)
        return FA_SUCCESS; /* touches no element, whatever its strides */
    int64_t size[3] = {varlen ? 1 : outer, rows, heads};
    int64_t stride[3] = {t->stride_batch, t->stride_seq, t->stride_head};
    static const char *const dim_name[3] = {"stride_batch", "stride_seq",
                                            "stride_head"};
    int order[3] = {0, 1, 2};
    for (int a = 0; a < 3; ++a) {
        if (size[a] > 1 && stride[a] < 0)
            return INVALID("%s->%s (%lld) is negative", name, dim_name[a],
                           (long long)stride[a]);
    }
    for (int a = 1; a < 3; ++a) /* insertion sort by stride */
        for (int b = a; b > 0 && stride[order[b]] < stride[order[b - 1]]; --b) {
            int tmp = order[b];
            order[b] = order[b - 1];
            order[b - 1] = tmp;
        }
    int64_t span = dim; /* the contiguous innermost dimension */
    for (int n = 0; n < 3; ++n) {
        int a = order[n];
        if (size[a] <= 1)
            continue;
        if (stride[a] < span)
            return INVALID("%s->%s (%lld) overlaps the dimensions inside it "
                           "(needs >= %lld; the last dimension is "
                           "contiguous)", name, dim_name[a],
                           (long long)stride[a], (long long)span);
        int64_t extent;
        if (__builtin_mul_overflow(stride[a], size[a] - 1, &extent) ||
            __builtin_add_overflow(extent, span, &span))
            return INVALID("%s: strides overflow 64-bit offsets", name);
    }
    return FA_SUCCESS;
}

static fa_status check_extent(const char *name, int64_t value, int64_t lo)
{
    if (value < lo)
        return INVALID("%s (%lld) must be >= %lld", name, (long long)value,
                       (long long)lo);
    if (value > FA_MAX_EXTENT)
        return INVALID("%s (%lld) is larger than %lld", name,
                       (long long)value, (long long)FA_MAX_EXTENT);
    return FA_SUCCESS;
}

static int is_finite(float x) { return x == x && x - x == 0.0f; }

/* Whether a·sa + b·sb + count (a, b, count >= 0) fits int64: one past the
 * largest offset into an array indexed with strides sa, sb. */
static int index_fits(int64_t a, int64_t sa, int64_t b, int64_t sb,
                      int64_t count)
{
    int64_t x, y;
    return !__builtin_mul_overflow(a, sa, &x) &&
           !__builtin_mul_overflow(b, sb, &y) &&
           !__builtin_add_overflow(x, y, &x) &&
           !__builtin_add_overflow(x, count, &x);
}

/* Whether rows·heads·dim elements stay below 2^FA_MAX_ELEMENTS_LOG2, a
 * bound far beyond any memory that leaves the backends' size arithmetic
 * (workspaces: a few such arrays of floats) room in 64 bits. */
static int elements_fit(int64_t rows, int64_t heads, int64_t dim)
{
    int64_t n;
    return !__builtin_mul_overflow(rows, heads, &n) &&
           !__builtin_mul_overflow(n, dim, &n) &&
           n <= ((int64_t)1 << FA_MAX_ELEMENTS_LOG2);
}

/* Room for `count` int32 in the context's host buffer (device contexts),
 * before host_ints fills it: a later growth would move earlier copies. */
static fa_status reserve_host_ints(fa_context *ctx, size_t count)
{
#ifdef FA_HAVE_CUDA
    if (ctx->device == FA_DEVICE_CUDA && ctx->host_ints_count < count) {
        int32_t *grown = realloc(ctx->host_ints, count * sizeof *grown);
        if (!grown)
            return fa_fail(FA_ERROR_OUT_OF_MEMORY,
                           "cannot allocate %zu host bytes for the index "
                           "arrays", count * sizeof *grown);
        ctx->host_ints = grown;
        ctx->host_ints_count = count;
    }
#else
    (void)ctx;
    (void)count;
#endif
    return FA_SUCCESS;
}

/* *host = the host view of `count` int32 at src: src itself on a CPU
 * context, else a copy at element `at` of the reserved host buffer. */
static fa_status host_ints(fa_context *ctx, const int32_t *src, size_t count,
                           size_t at, const int32_t **host)
{
    *host = src;
#ifdef FA_HAVE_CUDA
    if (ctx->device == FA_DEVICE_CUDA) {
        fa_status st = fa_cuda_copy_to_host(ctx->host_ints + at, src,
                                            count * sizeof(int32_t),
                                            ctx->stream);
        if (st != FA_SUCCESS)
            return st;
        *host = ctx->host_ints + at;
    }
#else
    (void)ctx;
    (void)count;
    (void)at;
#endif
    return FA_SUCCESS;
}

/* Checks the host view of cu_seqlens: cu[0] == 0, non-decreasing, each
 * length <= max_seqlen. */
fa_status fa_check_cu_seqlens(const char *name, const int32_t *host,
                              int64_t batch, int64_t max_seqlen)
{
    if (host[0] != 0)
        return INVALID("%s[0] (%d) must be 0", name, host[0]);
    for (int64_t b = 0; b < batch; ++b) {
        int64_t len = (int64_t)host[b + 1] - host[b];
        if (len < 0)
            return INVALID("%s is not non-decreasing: %s[%lld] = %d > "
                           "%s[%lld] = %d", name, name, (long long)b, host[b],
                           name, (long long)(b + 1), host[b + 1]);
        if (len > max_seqlen)
            return INVALID("%s: sequence %lld has length %lld > the max "
                           "seqlen (%lld)", name, (long long)b,
                           (long long)len, (long long)max_seqlen);
    }
    return FA_SUCCESS;
}

/* Pages of kv_page_size rows that hold `keys` positions. */
static int64_t pages_for(int64_t keys, int64_t page_size)
{
    return keys / page_size + (keys % page_size != 0);
}

/* Entries of a's kv_block_table up to the last one a sequence may use:
 * (batch - 1)·stride + ceil(seqlen_k / page); -1 where the geometry is
 * invalid or the table would pass FA_MAX_EXTENT entries (a host copy of it
 * must stay far from size_t's range). */
static int64_t table_entries(const fa_attn *a)
{
    if (a->kv_page_size < 1 || a->kv_page_size > FA_MAX_EXTENT)
        return -1;
    int64_t per_seq = pages_for(a->seqlen_k, a->kv_page_size);
    if (a->kv_block_table_stride < per_seq ||
        !index_fits(a->batch - 1, a->kv_block_table_stride, 0, 0, per_seq))
        return -1;
    int64_t entries = (a->batch - 1) * a->kv_block_table_stride + per_seq;
    return entries <= FA_MAX_EXTENT ? entries : -1;
}

/* The KV-cache options of attn -> p (after the varlen fields): seqused_k
 * within each sequence's keys; a paged cache's geometry, and the table
 * entries of every position a sequence uses within its pages. at: where
 * the host copies go in the context's buffer. */
static fa_status resolve_kv_cache(fa_context *ctx, const fa_attn *a,
                                  fa_problem *p, size_t at)
{
    fa_status st;
    /* trusted (CUDA contexts only): no host copy, no check */
    int check = !ctx->skip_kv_cache_checks || ctx->device == FA_DEVICE_CPU;
    p->seqused_k = a->seqused_k;
    if (a->seqused_k && check) {
        if ((st = host_ints(ctx, a->seqused_k, (size_t)a->batch, at,
                            &p->seqused_k_host)))
            return st;
        at += (size_t)a->batch;
        for (int64_t b = 0; b < a->batch; ++b) {
            int64_t keys = p->varlen ? (int64_t)p->cu_seqlens_k_host[b + 1] -
                                           p->cu_seqlens_k_host[b]
                                     : a->seqlen_k;
            if (p->seqused_k_host[b] < 0 || p->seqused_k_host[b] > keys)
                return INVALID("seqused_k[%lld] (%d) must be in [0, %lld], "
                               "the sequence's keys", (long long)b,
                               p->seqused_k_host[b], (long long)keys);
        }
    }
    if (!a->kv_block_table)
        return FA_SUCCESS;
    if (p->varlen)
        return INVALID("kv_block_table (a paged K/V cache) needs fixed-length "
                       "q: cu_seqlens must be NULL (give each sequence's "
                       "keys with seqused_k)");
    if (a->kv_page_size < 1 || a->kv_page_size > FA_MAX_EXTENT)
        return INVALID("kv_page_size (%lld) must be in [1, %lld] with a "
                       "kv_block_table", (long long)a->kv_page_size,
                       (long long)FA_MAX_EXTENT);
    if (a->kv_num_pages < 1 || a->kv_num_pages > FA_MAX_EXTENT)
        return INVALID("kv_num_pages (%lld) must be in [1, %lld] with a "
                       "kv_block_table", (long long)a->kv_num_pages,
                       (long long)FA_MAX_EXTENT);
    int64_t per_seq = pages_for(a->seqlen_k, a->kv_page_size);
    int64_t entries = table_entries(a);
    if (entries < 0)
        return INVALID("kv_block_table_stride (%lld) must be >= "
                       "ceil(seqlen_k / kv_page_size) = %lld, and the table "
                       "((batch - 1) * stride + that) at most %lld entries",
                       (long long)a->kv_block_table_stride, (long long)per_seq,
                       (long long)FA_MAX_EXTENT);
    const int32_t *table = NULL;
    if (check && (st = host_ints(ctx, a->kv_block_table, (size_t)entries, at, &table)))
        return st;
    for (int64_t b = 0; check && b < a->batch; ++b) {
        int64_t used = p->seqused_k_host ? p->seqused_k_host[b] : a->seqlen_k;
        for (int64_t n = 0; n < pages_for(used, a->kv_page_size); ++n) {
            int32_t page = table[b * a->kv_block_table_stride + n];
            if (page < 0 || page >= a->kv_num_pages)
                return INVALID("kv_block_table[%lld][%lld] (%d) is not a "
                               "page: must be in [0, kv_num_pages = %lld)",
                               (long long)b, (long long)n, page,
                               (long long)a->kv_num_pages);
        }
    }
    p->kv_block_table = a->kv_block_table;
    p->kv_block_table_stride = a->kv_block_table_stride;
    p->kv_page_size = a->kv_page_size;
    p->kv_num_pages = a->kv_num_pages;
    return FA_SUCCESS;
}

/* The descale array `name` (count floats on the context's device): every
 * value finite and > 0. On a CUDA context it is copied to the host, unless
 * the KV-cache checks are off (then trusted, so that no call waits). */
static fa_status check_descales(fa_context *ctx, const char *name,
                                const float *descale, int64_t count)
{
    if (!descale || count == 0 ||
        (ctx->device == FA_DEVICE_CUDA && ctx->skip_kv_cache_checks))
        return FA_SUCCESS;
    const float *host = descale;
    float *copy = NULL;
#ifdef FA_HAVE_CUDA
    if (ctx->device == FA_DEVICE_CUDA) {
        copy = malloc((size_t)count * sizeof *copy);
        if (!copy)
            return fa_fail(FA_ERROR_OUT_OF_MEMORY, "cannot allocate %lld "
                           "host bytes to check %s", (long long)count * 4, name);
        fa_status st = fa_cuda_copy_to_host(copy, descale,
                                            (size_t)count * sizeof *copy,
                                            ctx->stream);
        if (st != FA_SUCCESS) {
            free(copy);
            return st;
        }
        host = copy;
    }
#endif
    fa_status st = FA_SUCCESS;
    for (int64_t i = 0; i < count && st == FA_SUCCESS; ++i)
        if (!(is_finite(host[i]) && host[i] > 0.0f))
            st = INVALID("%s[%lld] (%g) must be finite and > 0", name,
                         (long long)i, (double)host[i]);
    free(copy);
    return st;
}

/* The FP8 options of attn -> p: descales only with an FP8 dtype, their
 * blocks resolved (0 = the longest sequence) and their values checked. */
static fa_status resolve_fp8(fa_context *ctx, const fa_attn *a, fa_problem *p)
{
    if (!fa_dtype_is_fp8(a->dtype)) {
        if (a->q_descale || a->k_descale || a->v_descale)
            return INVALID("q/k/v_descale are for FP8 dtypes (dtype is %s)",
                           fa_dtype_name(a->dtype));
        return FA_SUCCESS;
    }
    if (a->descale_block_q < 0 || a->descale_block_k < 0)
        return INVALID("descale_block_q (%lld) and descale_block_k (%lld) "
                       "must be >= 0 (0 = one block per sequence)",
                       (long long)a->descale_block_q,
                       (long long)a->descale_block_k);
    p->descale_block_q = a->descale_block_q ? a->descale_block_q
                                            : (a->seqlen_q > 0 ? a->seqlen_q : 1);
    p->descale_block_k = a->descale_block_k ? a->descale_block_k
                                            : (a->seqlen_k > 0 ? a->seqlen_k : 1);
    p->descale_blocks_q = pages_for(a->seqlen_q, p->descale_block_q);
    p->descale_blocks_k = pages_for(a->seqlen_k, p->descale_block_k);
    p->q_descale = a->q_descale;
    p->k_descale = a->k_descale;
    p->v_descale = a->v_descale;
    /* floats per descale array: bounded like the tensors' elements */
    int64_t nq, nk;
    if (!elements_fit(a->batch, a->heads_q, p->descale_blocks_q) ||
        !elements_fit(a->batch, a->heads_kv, p->descale_blocks_k))
        return INVALID("the descale arrays of this problem would hold more "
                       "than 2^%d floats", FA_MAX_ELEMENTS_LOG2);
    nq = a->batch * a->heads_q * p->descale_blocks_q;
    nk = a->batch * a->heads_kv * p->descale_blocks_k;
    fa_status st;
    if ((st = check_descales(ctx, "q_descale", a->q_descale, nq)) ||
        (st = check_descales(ctx, "k_descale", a->k_descale, nk)) ||
        (st = check_descales(ctx, "v_descale", a->v_descale, nk)))
        return st;
    return FA_SUCCESS;
}

/* Shapes and options of attn -> p (no tensors yet). */
static fa_status resolve_attn(fa_context *ctx, const fa_attn *a,
                              fa_problem *p)
{
    fa_status st;
    if (!dtype_valid(a->dtype))
        return INVALID("dtype (%d) is not a fa_dtype", (int)a->dtype);
    if ((st = check_extent("batch", a->batch, 1)) ||
        (st = check_extent("seqlen_q", a->seqlen_q, 0)) ||
        (st = check_extent("seqlen_k", a->seqlen_k, 0)) ||
        (st = check_extent("heads_q", a->heads_q, 1)) ||
        (st = check_extent("heads_kv", a->heads_kv, 1)))
        return st;
    if (a->heads_q % a->heads_kv != 0)
        return INVALID("heads_q (%lld) is not a multiple of heads_kv (%lld)",
                       (long long)a->heads_q, (long long)a->heads_kv);
    if (a->head_dim < 1 || a->head_dim > 256)
        return INVALID("head_dim (%lld) must be in 1..256",
                       (long long)a->head_dim);
    if (a->head_dim_v < 0 || a->head_dim_v > 256)
        return INVALID("head_dim_v (%lld) must be in 1..256 (0 = head_dim)",
                       (long long)a->head_dim_v);
    /* The kernels scale by softmax_scale·log2(e) (and by it over softcap):
     * bounded so that these stay finite. */
    if (!is_finite(a->softmax_scale) || a->softmax_scale < 0.0f ||
        a->softmax_scale > FA_MAX_SOFTMAX_SCALE)
        return INVALID("softmax_scale (%g) must be in [0, %g] (0 = "
                       "1/sqrt(head_dim))", (double)a->softmax_scale,
                       (double)FA_MAX_SOFTMAX_SCALE);
    /* cap·tanh(s/cap) is computed to an absolute error of ~1e-7·cap in
     * the score: beyond FA_MAX_SOFTCAP that error would exceed what a
     * float score resolves, where the cap changes nothing anyway. */
    if (!is_finite(a->softcap) || a->softcap < 0.0f ||
        a->softcap > FA_MAX_SOFTCAP)
        return INVALID("softcap (%g) must be in [0, %g] (0 = off)",
                       (double)a->softcap, (double)FA_MAX_SOFTCAP);
    if (a->window_left < -1)
        return INVALID("window_left (%lld) must be >= -1 (-1 = unbounded)",
                       (long long)a->window_left);
    if (a->window_right < -1)
        return INVALID("window_right (%lld) must be >= -1 (-1 = unbounded)",
                       (long long)a->window_right);
    if (!(a->dropout_p >= 0.0f && a->dropout_p < 1.0f))
        return INVALID("dropout_p (%g) must be in [0, 1)",
                       (double)a->dropout_p);
    if (a->alibi_slopes &&
        (a->alibi_stride_batch < 0 ||
         !index_fits(a->batch - 1, a->alibi_stride_batch, 0, 0, a->heads_q)))
        return INVALID("alibi_stride_batch (%lld) is negative or overflows "
                       "64-bit offsets", (long long)a->alibi_stride_batch);

    memset(p, 0, sizeof *p);
    p->batch = a->batch;
    p->seqlen_q = a->seqlen_q;
    p->seqlen_k = a->seqlen_k;
    p->heads_q = a->heads_q;
    p->heads_kv = a->heads_kv;
    p->head_dim = a->head_dim;
    p->head_dim_v = a->head_dim_v ? a->head_dim_v : a->head_dim;
    p->dtype = a->dtype;
    p->softmax_scale = a->softmax_scale > 0.0f
                           ? a->softmax_scale
                           : (float)(1.0 / sqrt((double)a->head_dim));
    p->causal = a->causal != 0;
    /* A window at least as long as the sequence hides nothing (the
     * longest, for varlen): unbounded, so that no backend's index
     * arithmetic meets its size. */
    p->window_left = a->window_left >= a->seqlen_k ? -1 : a->window_left;
    p->window_right = a->causal                        ? 0
                      : a->window_right >= a->seqlen_q ? -1
                                                       : a->window_right;
    p->softcap = a->softcap;
    p->alibi_slopes = a->alibi_slopes;
    p->alibi_stride_batch = a->alibi_stride_batch;
    p->dropout_p = a->dropout_p;
    p->dropout_seed = a->dropout_seed;
    p->dropout_offset = a->dropout_offset;
    p->deterministic = a->deterministic != 0;

    if (a->block_mask) {
        if (a->block_size_q < 1 || a->block_size_k < 1)
            return INVALID("block_size_q (%lld) and block_size_k (%lld) "
                           "must be >= 1 with a block_mask",
                           (long long)a->block_size_q,
                           (long long)a->block_size_k);
        int64_t nq = a->seqlen_q / a->block_size_q +
                     (a->seqlen_q % a->block_size_q != 0);
        int64_t nk = a->seqlen_k / a->block_size_k +
                     (a->seqlen_k % a->block_size_k != 0);
        if (a->block_mask_blocks_q != nq || a->block_mask_blocks_k != nk)
            return INVALID("block_mask is %lld x %lld blocks; "
                           "ceil(seqlen_q/block_size_q) x "
                           "ceil(seqlen_k/block_size_k) is %lld x %lld",
                           (long long)a->block_mask_blocks_q,
                           (long long)a->block_mask_blocks_k, (long long)nq,
                           (long long)nk);
        if (a->block_mask_stride_batch < 0 || a->block_mask_stride_head < 0 ||
            !index_fits(a->batch - 1, a->block_mask_stride_batch,
                        a->heads_q - 1, a->block_mask_stride_head, nq * nk))
            return INVALID("block_mask strides (%lld, %lld) are negative or "
                           "overflow 64-bit offsets",
                           (long long)a->block_mask_stride_batch,
                           (long long)a->block_mask_stride_head);
        p->block_mask = a->block_mask;
        p->block_size_q = a->block_size_q;
        p->block_size_k = a->block_size_k;
        p->block_mask_blocks_q = nq;
        p->block_mask_blocks_k = nk;
        p->block_mask_stride_batch = a->block_mask_stride_batch;
        p->block_mask_stride_head = a->block_mask_stride_head;
    }

    if ((a->cu_seqlens_q == NULL) != (a->cu_seqlens_k == NULL))
        return INVALID("cu_seqlens_q and cu_seqlens_k must both be set "
                       "(varlen) or both NULL");
    /* Host copies: cu_seqlens_q, cu_seqlens_k, seqused_k, kv_block_table
     * (its size checked in resolve_kv_cache, reserved here when valid). */
    size_t batch1 = (size_t)a->batch + 1;
    int64_t entries = a->kv_block_table ? table_entries(a) : 0;
    if ((st = reserve_host_ints(ctx, 3 * batch1 + (size_t)(entries > 0 ? entries : 0))))
        return st;
    if (a->cu_seqlens_q) {
        p->varlen = 1;
        p->cu_seqlens_q = a->cu_seqlens_q;
        p->cu_seqlens_k = a->cu_seqlens_k;
        if ((st = host_ints(ctx, a->cu_seqlens_q, batch1, 0,
                            &p->cu_seqlens_q_host)) ||
            (st = fa_check_cu_seqlens("cu_seqlens_q", p->cu_seqlens_q_host,
                                   a->batch, a->seqlen_q)) ||
            (st = host_ints(ctx, a->cu_seqlens_k, batch1, batch1,
                            &p->cu_seqlens_k_host)) ||
            (st = fa_check_cu_seqlens("cu_seqlens_k", p->cu_seqlens_k_host,
                                   a->batch, a->seqlen_k)))
            return st;
        p->total_q = p->cu_seqlens_q_host[a->batch];
        p->total_k = p->cu_seqlens_k_host[a->batch];
    } else {
        p->total_q = a->batch * a->seqlen_q;
        p->total_k = a->batch * a->seqlen_k;
    }
    if ((st = resolve_kv_cache(ctx, a, p, 2 * batch1)))
        return st;
    if (p->kv_block_table) /* k / v hold the pages */
        p->total_k = p->kv_num_pages * p->kv_page_size;
    int64_t dim = p->head_dim > p->head_dim_v ? p->head_dim : p->head_dim_v;
    if (!elements_fit(p->total_q, p->heads_q, dim) ||
        !elements_fit(p->total_k, p->heads_kv, dim))
        return INVALID("the tensors of this problem hold more than 2^%d "
                       "elements", FA_MAX_ELEMENTS_LOG2);
    /* after the size check: the descales' counts are bounded by it */
    return resolve_fp8(ctx, a, p);
}

/* Rows of a q-like / k-like tensor: per sequence for fixed-length, total
 * for varlen (check_view multiplies by batch only for fixed-length). */
static int64_t q_rows(const fa_problem *p)
{
    return p->varlen ? p->total_q : p->seqlen_q;
}
static int64_t k_rows(const fa_problem *p)
{
    return p->varlen ? p->total_k : p->kv_block_table ? p->kv_page_size : p->seqlen_k;
}

/* The outer dimension of a k-like tensor: batch, or the pages of a paged
 * cache. */
static int64_t k_outer(const fa_problem *p)
{
    return p->kv_block_table ? p->kv_num_pages : p->batch;
}

static fa_status check_q_like(const fa_problem *p, const char *name,
                              const fa_tensor *t, int64_t dim)
{
    return fa_check_view(name, t, p->batch, q_rows(p), p->heads_q, dim,
                      p->varlen);
}
static fa_status check_k_like(const fa_problem *p, const char *name,
                              const fa_tensor *t, int64_t dim)
{
    return fa_check_view(name, t, k_outer(p), k_rows(p), p->heads_kv, dim,
                      p->varlen);
}

/* CPU worker threads of a call: the context's setting, 0 meaning all cores. */
static int resolved_threads(const fa_context *ctx)
{
    return ctx->num_threads > 0 ? ctx->num_threads : fa_cpu_num_cores();
}

/* Pick the backend, size the workspace, provide it, fill execution fields. */
static fa_status prepare_run(fa_context *ctx, fa_problem *p, fa_direction dir,
                             void *workspace, size_t workspace_size,
                             fa_backend *backend)
{
    fa_status st = fa_dispatch_select(ctx, p, dir, backend);
    if (st != FA_SUCCESS)
        return st;
    p->num_threads = resolved_threads(ctx);
    p->stream = ctx->stream;
    size_t need = fa_dispatch_workspace_size(ctx, *backend, p, dir);
    if (workspace) {
        if (workspace_size < need)
            return INVALID("workspace_size (%zu) is smaller than the "
                           "required %zu bytes", workspace_size, need);
        /* the GPU kernels read and reduce into it with vector accesses
         * (cudaMalloc's alignment; the CPU backend aligns its own part) */
        if (ctx->device == FA_DEVICE_CUDA && (uintptr_t)workspace % 256 != 0)
            return INVALID("workspace (%p) must be 256-byte aligned on a "
                           "CUDA context", workspace);
        p->workspace = workspace;
        p->workspace_size = workspace_size;
        return FA_SUCCESS;
    }
    if (need > ctx->workspace_size) {
        release_workspace(ctx);
        void *mem = NULL;
#ifdef FA_HAVE_CUDA
        if (ctx->device == FA_DEVICE_CUDA) {
            st = fa_cuda_malloc(&mem, need, ctx->stream);
            if (st != FA_SUCCESS)
                return st;
        } else
#endif
        {
            /* 64-byte aligned for the vector kernels. */
            size_t rounded = (need + 63) / 64 * 64;
            mem = aligned_alloc(64, rounded);
            if (!mem)
                return fa_fail(FA_ERROR_OUT_OF_MEMORY,
                               "cannot allocate a %zu-byte workspace", need);
        }
        ctx->workspace = mem;
        ctx->workspace_size = need;
    }
    p->workspace = ctx->workspace;
    p->workspace_size = ctx->workspace_size;
    return FA_SUCCESS;
}

static fa_status run(fa_context *ctx, fa_problem *p, fa_direction dir,
                     fa_backend backend)
{
    p->kernel_name = fa_backend_name(backend);
    fa_status st = fa_dispatch_run(ctx, backend, p, dir);
    if (st == FA_SUCCESS) {
        ctx->last_kernel = p->kernel_name;
        fa_clear_error();
    }
    return st;
}

/* Checks the call's handles and makes the context's GPU current. */
static fa_status check_call(const fa_context *ctx, const fa_attn *attn)
{
    if (!ctx)
        return INVALID("ctx is NULL");
    if (!attn)
        return INVALID("attn is NULL");
#ifdef FA_HAVE_CUDA
    if (ctx->device == FA_DEVICE_CUDA)
        return fa_cuda_set_device(ctx->device_index);
#endif
    return FA_SUCCESS;
}

static fa_status validate_forward(fa_context *ctx, const fa_attn *attn,
                                  const fa_tensor *q, const fa_tensor *k,
                                  const fa_tensor *v, const fa_tensor *out,
                                  fa_problem *p)
{
    fa_status st;
    if ((st = check_call(ctx, attn)) || (st = resolve_attn(ctx, attn, p)) ||
        (st = check_q_like(p, "q", q, p->head_dim)) ||
        (st = check_k_like(p, "k", k, p->head_dim)) ||
        (st = check_k_like(p, "v", v, p->head_dim_v)) ||
        (st = check_q_like(p, "out", out, p->head_dim_v)))
        return st;
    p->q = *q;
    p->k = *k;
    p->v = *v;
    p->out = *out;
    return FA_SUCCESS;
}

/* The KV-cache options are the forward's alone (as FlashAttention's
 * seqused_k and block_table): a backward would have to define gradients of
 * keys it never read and of shared pages. */
static fa_status check_backward_options(const fa_attn *attn)
{
    if (fa_dtype_is_fp8(attn->dtype))
        return INVALID("dtype %s is forward-only (as FlashAttention-3's "
                       "FP8): train in f16 / bf16", fa_dtype_name(attn->dtype));
    if (attn->seqused_k || attn->kv_block_table)
        return INVALID("seqused_k and kv_block_table are forward-only "
                       "(KV-cache inference): the backward takes neither");
    return FA_SUCCESS;
}

static fa_status validate_backward(fa_context *ctx, const fa_attn *attn,
                                   const fa_tensor *q, const fa_tensor *k,
                                   const fa_tensor *v, const fa_tensor *out,
                                   const float *lse, const fa_tensor *dout,
                                   const fa_tensor *dq, const fa_tensor *dk,
                                   const fa_tensor *dv, fa_problem *p)
{
    fa_status st;
    if ((st = check_call(ctx, attn)) || (st = check_backward_options(attn)) ||
        (st = validate_forward(ctx, attn, q, k, v, out, p)) ||
        (st = check_q_like(p, "dout", dout, p->head_dim_v)) ||
        (st = check_q_like(p, "dq", dq, p->head_dim)) ||
        (st = check_k_like(p, "dk", dk, p->head_dim)) ||
        (st = check_k_like(p, "dv", dv, p->head_dim_v)))
        return st;
    if (!lse && p->total_q > 0)
        return INVALID("lse is NULL: the backward needs the forward's lse");
    p->dout = *dout;
    p->dq = *dq;
    p->dk = *dk;
    p->dv = *dv;
    p->lse = (float *)lse;
    return FA_SUCCESS;
}

/* The bytes [lo, hi) a validated view of (rows, heads, dim) per batch
 * entry touches; lo == hi when it touches none. */
typedef struct byte_span {
    const char *name;
    uintptr_t lo, hi;
} byte_span;

static byte_span view_span(const fa_problem *p, const char *name,
                           fa_dtype dtype, const fa_tensor *t, int64_t outer,
                           int64_t rows, int64_t heads, int64_t dim)
{
    byte_span sp = {name, (uintptr_t)t->data, (uintptr_t)t->data};
    int64_t size[3] = {p->varlen ? 1 : outer, rows, heads};
    int64_t stride[3] = {t->stride_batch, t->stride_seq, t->stride_head};
    int64_t last = dim - 1; /* fits: check_view bounded the offsets */
    for (int a = 0; a < 3; ++a) {
        if (size[a] == 0)
            return sp;
        if (size[a] > 1)
            last += (size[a] - 1) * stride[a];
    }
    sp.hi = sp.lo + (uintptr_t)(last + 1) * fa_dtype_size(dtype);
    return sp;
}

static int spans_overlap(const byte_span *a, const byte_span *b)
{
    return a->lo < a->hi && b->lo < b->hi && a->lo < b->hi && b->lo < a->hi;
}

/* No output may share memory with an input: the kernels read inputs while
 * they write outputs (in any order, from many threads), so aliasing would
 * give wrong results without a sign. By address range: views interleaved
 * in one buffer are rejected too. */
static fa_status check_outputs_disjoint(const fa_problem *p,
                                        fa_direction dir)
{
    uintptr_t lse_lo = (uintptr_t)p->lse;
    byte_span lse = {"lse", lse_lo,
                     p->lse ? lse_lo + (uintptr_t)(p->heads_q * p->total_q) *
                                           sizeof(float)
                            : lse_lo};
    byte_span in[6] = {
        view_span(p, "q", p->dtype, &p->q, p->batch, q_rows(p), p->heads_q, p->head_dim),
        view_span(p, "k", p->dtype, &p->k, k_outer(p), k_rows(p), p->heads_kv, p->head_dim),
        view_span(p, "v", p->dtype, &p->v, k_outer(p), k_rows(p), p->heads_kv, p->head_dim_v)};
    byte_span out[3];
    int n_in = 3, n_out = 0;
    byte_span o = view_span(p, "out", fa_out_dtype(p->dtype), &p->out, p->batch, q_rows(p), p->heads_q,
                            p->head_dim_v);
    if (dir == FA_FORWARD) {
        out[n_out++] = o;
        out[n_out++] = lse;
    } else {
        in[n_in++] = o;
        in[n_in++] = lse;
        in[n_in++] = view_span(p, "dout", fa_out_dtype(p->dtype), &p->dout, p->batch, q_rows(p), p->heads_q,
                               p->head_dim_v);
        out[n_out++] = view_span(p, "dq", p->dtype, &p->dq, p->batch, q_rows(p), p->heads_q,
                                 p->head_dim);
        out[n_out++] = view_span(p, "dk", p->dtype, &p->dk, k_outer(p), k_rows(p), p->heads_kv,
                                 p->head_dim);
        out[n_out++] = view_span(p, "dv", p->dtype, &p->dv, k_outer(p), k_rows(p), p->heads_kv,
                                 p->head_dim_v);
    }
    for (int i = 0; i < n_out; ++i)
        for (int j = 0; j < n_in; ++j)
            if (spans_overlap(&out[i], &in[j]))
                return INVALID("%s overlaps %s in memory: outputs must not "
                               "share memory with inputs",
                               out[i].name, in[j].name);
    /* Outputs may interleave in one buffer (dq, dk, dv of a packed qkv
     * gradient), so among them only the same start is caught; out and lse
     * never interleave. */
    if (dir == FA_FORWARD && spans_overlap(&out[0], &out[1]))
        return INVALID("out overlaps lse in memory");
    for (int i = 0; i < n_out; ++i)
        for (int j = i + 1; j < n_out; ++j)
            if (out[i].lo < out[i].hi && out[j].lo < out[j].hi &&
                out[i].lo == out[j].lo)
                return INVALID("%s and %s start at the same address",
                               out[i].name, out[j].name);
    return FA_SUCCESS;
}

/* Decoding with grouped heads (one query row, heads_q = G·heads_kv): the G
 * query heads that share a K/V head become G query rows of one head, so
 * that a tile reads each K/V block once for all of them and holds G rows
 * instead of one (FlashAttention-2 swaps them the same way). Head h = G·hk
 * + i of q / out is row i of head hk: stride_seq takes q's head stride,
 * stride_head G of them; lse (batch, heads_q, 1) is (batch, heads_kv, G) in
 * the same memory. Only where every row sees the same keys as before and
 * nothing depends on the head: one row sees all keys under any right
 * window bound (causal included), so no left bound, ALiBi, dropout or
 * block mask; fixed-length. Forward only (inference). */
static void fold_query_groups(fa_problem *p)
{
    int64_t group = p->heads_q / p->heads_kv;
    if (p->seqlen_q != 1 || group == 1 || p->varlen || p->window_left >= 0 ||
        p->alibi_slopes || p->dropout_p > 0.0f || p->block_mask ||
        fa_dtype_is_fp8(p->dtype)) /* q_descale is per head */
        return;
    p->seqlen_q = group;
    p->total_q = p->batch * group;
    p->heads_q = p->heads_kv;
    p->window_right = -1;
    p->causal = 0;
    fa_tensor *views[2] = {&p->q, &p->out};
    for (int n = 0; n < 2; ++n) {
        views[n]->stride_seq = views[n]->stride_head;
        views[n]->stride_head *= group;
    }
}

/* ---------------------------------------------------------------------- */
/* Entry points                                                            */

/* The workspace the backend chosen for (ctx, attn, dir) needs. */
static fa_status workspace_size(const fa_context *ctx, const fa_attn *attn,
                                fa_direction dir, size_t *bytes)
{
    fa_status st;
    fa_problem p;
    fa_backend backend;
    if ((st = check_call(ctx, attn)))
        return st;
    if (!bytes)
        return INVALID("bytes is NULL");
    if (dir == FA_BACKWARD && (st = check_backward_options(attn)))
        return st;
    /* cu_seqlens are read through the context's host buffer. */
    if ((st = resolve_attn((fa_context *)ctx, attn, &p)))
        return st;
    if (dir == FA_FORWARD)
        fold_query_groups(&p); /* as fa_forward runs it */
    if ((st = fa_dispatch_select(ctx, &p, dir, &backend)))
        return st;
    p.num_threads = resolved_threads(ctx);
    *bytes = fa_dispatch_workspace_size(ctx, backend, &p, dir);
    return FA_SUCCESS;
}

fa_status fa_forward_workspace_size(const fa_context *ctx,
                                    const fa_attn *attn, size_t *bytes)
{
    return workspace_size(ctx, attn, FA_FORWARD, bytes);
}

fa_status fa_backward_workspace_size(const fa_context *ctx,
                                     const fa_attn *attn, size_t *bytes)
{
    return workspace_size(ctx, attn, FA_BACKWARD, bytes);
}

fa_status fa_forward(fa_context *ctx, const fa_attn *attn,
                     const fa_tensor *q, const fa_tensor *k,
                     const fa_tensor *v, fa_tensor *out, float *lse,
                     void *workspace, size_t workspace_size)
{
    fa_problem p;
    fa_backend backend;
    fa_status st = validate_forward(ctx, attn, q, k, v, out, &p);
    if (st)
        return st;
    p.lse = lse;
    if ((st = check_outputs_disjoint(&p, FA_FORWARD)))
        return st;
    if (p.total_q == 0) { /* nothing to compute, nothing to write */
        ctx->last_kernel = "empty";
        fa_clear_error();
        return FA_SUCCESS;
    }
    fold_query_groups(&p);
    if ((st = prepare_run(ctx, &p, FA_FORWARD, workspace, workspace_size,
                          &backend)))
        return st;
    return run(ctx, &p, FA_FORWARD, backend);
}

fa_status fa_backward(fa_context *ctx, const fa_attn *attn,
                      const fa_tensor *q, const fa_tensor *k,
                      const fa_tensor *v, const fa_tensor *out,
                      const float *lse, const fa_tensor *dout, fa_tensor *dq,
                      fa_tensor *dk, fa_tensor *dv, void *workspace,
                      size_t workspace_size)
{
    fa_problem p;
    fa_backend backend;
    fa_status st = validate_backward(ctx, attn, q, k, v, out, lse, dout, dq,
                                     dk, dv, &p);
    if (st || (st = check_outputs_disjoint(&p, FA_BACKWARD)))
        return st;
    if ((st = prepare_run(ctx, &p, FA_BACKWARD, workspace, workspace_size,
                          &backend)))
        return st;
    /* Even with no queries, dk and dv must be written (as zeros): the
     * backend handles that, so it runs for total_q == 0 too. */
    return run(ctx, &p, FA_BACKWARD, backend);
}
