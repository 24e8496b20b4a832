/*
 * fa_quantize_fp8: block FP8 quantization with optional incoherent
 * processing (a random-sign Walsh-Hadamard rotation of each row), the
 * producer of the FP8 forward's q / k / v and descales. Validation here,
 * then a plain C loop on a CPU context or the kernel of
 * src/cuda/quantize.cu on a CUDA context; quantize.h states the arithmetic
 * both follow so that they give the same bits.
 */
#include "quantize.h"

#include "context.h"
#include "cpu/cpu_kernels.h" /* fa_f16_to_f32, fa_bf16_to_f32 */

#include <float.h>
#include <stdlib.h>
#include <string.h>

#define INVALID(...) fa_fail(FA_ERROR_INVALID_ARGUMENT, __VA_ARGS__)
/* As the attention API: extents fit 32-bit kernel coordinates. */
#define MAX_EXTENT ((int64_t)INT32_MAX)
#define MAX_DIM 256
/* Descales per call at most (a bound far beyond memory that keeps the
 * count's byte size in 64 bits). */
#define MAX_DESCALES ((int64_t)1 << 48)

void fa_quant_init(fa_quant *quant)
{
    if (!quant)
        return;
    memset(quant, 0, sizeof *quant);
    quant->src_dtype = FA_DTYPE_BF16;
    quant->dst_dtype = FA_DTYPE_FP8_E4M3;
}

int fa_rotation_sign(uint64_t seed, int64_t c) { return fa_quant_sign(seed, c); }

/* ---------------------------------------------------------------------- */
/* Validation                                                              */

static fa_status check_extent(const char *name, int64_t value, int64_t lo,
                              int64_t hi)
{
    if (value < lo || value > hi)
        return INVALID("quant->%s (%lld) must be in [%lld, %lld]", name,
                       (long long)value, (long long)lo, (long long)hi);
    return FA_SUCCESS;
}

/* Shapes, dtypes and options of q (no pointer is read). */
static fa_status check_quant(const fa_quant *q)
{
    fa_status st;
    if ((st = check_extent("batch", q->batch, 1, MAX_EXTENT)) ||
        (st = check_extent("seqlen", q->seqlen, 0, MAX_EXTENT)) ||
        (st = check_extent("heads", q->heads, 1, MAX_EXTENT)) ||
        (st = check_extent("dim", q->dim, 1, MAX_DIM)))
        return st;
    if (q->src_dtype != FA_DTYPE_F32 && q->src_dtype != FA_DTYPE_F16 &&
        q->src_dtype != FA_DTYPE_BF16)
        return INVALID("quant->src_dtype (%d, %s) must be f32, f16 or bf16",
                       (int)q->src_dtype, fa_dtype_name(q->src_dtype));
    if (!fa_dtype_is_fp8(q->dst_dtype))
        return INVALID("quant->dst_dtype (%d, %s) must be fp8_e4m3 or "
                       "fp8_e5m2", (int)q->dst_dtype,
                       fa_dtype_name(q->dst_dtype));
    if (q->block_rows < 0)
        return INVALID("quant->block_rows (%lld) must be >= 0 (0 = one block "
                       "per sequence)", (long long)q->block_rows);
    if (q->rotate != 0 && q->rotate != 1)
        return INVALID("quant->rotate (%d) must be 0 or 1", q->rotate);
    if (q->rotate && (q->dim & (q->dim - 1)) != 0)
        return INVALID("quant->rotate needs dim a power of two (dim is %lld): "
                       "the Walsh-Hadamard matrix has no other size",
                       (long long)q->dim);
    return FA_SUCCESS;
}

/* A view of (outer, rows, heads, dim) elements of elem_size bytes (outer
 * is 1 for a packed varlen tensor): the attention API's rules
 * (fa_check_view), data aligned to its element, and byte offsets in int64. */
static fa_status check_view(const char *name, const fa_tensor *t,
                            int64_t outer, int64_t rows, int64_t heads,
                            int64_t dim, size_t elem_size)
{
    fa_status st = fa_check_view(name, t, outer, rows, heads, dim, 0);
    if (st != FA_SUCCESS || outer == 0 || rows == 0)
        return st;
    if ((uintptr_t)t->data % elem_size != 0)
        return INVALID("%s->data (%p) is not aligned to its %zu-byte "
                       "elements", name, t->data, elem_size);
    /* the last element's offset fits int64 (fa_check_view); its byte
     * offset too */
    int64_t last = dim - 1;
    const int64_t size[3] = {outer, rows, heads};
    const int64_t stride[3] = {t->stride_batch, t->stride_seq, t->stride_head};
    for (int a = 0; a < 3; ++a)
        if (size[a] > 1)
            last += (size[a] - 1) * stride[a];
    if (last > INT64_MAX / (int64_t)elem_size - 1)
        return INVALID("%s: strides overflow 64-bit byte offsets", name);
    return FA_SUCCESS;
}

/* The bytes [lo, hi) a view checked by check_view touches. */
typedef struct byte_span {
    uintptr_t lo, hi;
} byte_span;

static byte_span view_span(const fa_tensor *t, int64_t outer, int64_t rows,
                           int64_t heads, int64_t dim, size_t elem_size)
{
    byte_span sp = {(uintptr_t)t->data, (uintptr_t)t->data};
    const int64_t size[3] = {outer, rows, heads};
    const int64_t stride[3] = {t->stride_batch, t->stride_seq, t->stride_head};
    int64_t last = dim - 1;
    for (int a = 0; a < 3; ++a) {
        if (size[a] == 0)
            return sp;
        last += (size[a] - 1) * stride[a];
    }
    sp.hi = sp.lo + (uintptr_t)(last + 1) * elem_size;
    return sp;
}

static int spans_overlap(byte_span a, byte_span b)
{
    return a.lo < a.hi && b.lo < b.hi && a.lo < b.hi && b.lo < a.hi;
}


/* The packed rows of a varlen call: cu_seqlens[batch], read (and checked)
 * through a host copy on a CUDA context, which waits for the stream. */
static fa_status varlen_rows(const fa_context *ctx, const fa_quant *q,
                             int64_t *total)
{
    const int32_t *cu = q->cu_seqlens;
    int32_t *copy = NULL;
#ifdef FA_HAVE_CUDA
    if (ctx->device == FA_DEVICE_CUDA) {
        size_t bytes = (size_t)(q->batch + 1) * sizeof *copy;
        if (!(copy = malloc(bytes)))
            return fa_fail(FA_ERROR_OUT_OF_MEMORY, "cannot allocate %zu host "
                           "bytes to check quant->cu_seqlens", bytes);
        fa_status st = fa_cuda_copy_to_host(copy, cu, bytes, ctx->stream);
        if (st != FA_SUCCESS) {
            free(copy);
            return st;
        }
        cu = copy;
    }
#else
    (void)ctx;
#endif
    fa_status st = fa_check_cu_seqlens("quant->cu_seqlens", cu, q->batch, q->seqlen);
    *total = cu[q->batch];
    free(copy);
    return st;
}

/* Everything about the call -> *job, or the first invalid argument. */
static fa_status validate(fa_context *ctx, const fa_quant *q,
                          const fa_tensor *src, const fa_tensor *dst,
                          float *descale, fa_quant_job *job)
{
    fa_status st;
    if (!ctx)
        return INVALID("ctx is NULL");
    if (!q)
        return INVALID("quant is NULL");
#ifdef FA_HAVE_CUDA
    if (ctx->device == FA_DEVICE_CUDA &&
        (st = fa_cuda_set_device(ctx->device_index)))
        return st;
#endif
    if ((st = check_quant(q)))
        return st;
    if (!src)
        return INVALID("src is NULL");
    if (!dst)
        return INVALID("dst is NULL");

    const int64_t nblocks =
        q->block_rows == 0 ? 1
                           : q->seqlen / q->block_rows + (q->seqlen % q->block_rows != 0);
    int64_t count; /* descales */
    if (__builtin_mul_overflow(q->batch, q->heads, &count) ||
        __builtin_mul_overflow(count, nblocks, &count) || count > MAX_DESCALES)
        return INVALID("batch (%lld) x heads (%lld) x blocks (%lld) "
                       "descales are too many", (long long)q->batch,
                       (long long)q->heads, (long long)nblocks);
    if (count > 0 && !descale)
        return INVALID("descale is NULL");
    if ((uintptr_t)descale % sizeof(float) != 0)
        return INVALID("descale (%p) is not aligned to a float", (void *)descale);

    const int varlen = q->cu_seqlens != NULL;
    int64_t outer = q->batch, rows = q->seqlen;
    if (varlen) {
        outer = 1; /* packed: stride_batch is ignored */
        if ((st = varlen_rows(ctx, q, &rows)))
            return st;
    }
    const size_t src_size = fa_dtype_size(q->src_dtype);
    if ((st = check_view("src", src, outer, rows, q->heads, q->dim, src_size)) ||
        (st = check_view("dst", dst, outer, rows, q->heads, q->dim, 1)))
        return st;
    /* The kernels read src while they write dst and descale, in any order:
     * aliasing would give wrong results without a sign. */
    byte_span s = view_span(src, outer, rows, q->heads, q->dim, src_size);
    byte_span d = view_span(dst, outer, rows, q->heads, q->dim, 1);
    byte_span ds = {(uintptr_t)descale,
                    (uintptr_t)descale + (uintptr_t)count * sizeof(float)};
    if (spans_overlap(d, s))
        return INVALID("dst overlaps src in memory");
    if (spans_overlap(ds, s) || spans_overlap(ds, d))
        return INVALID("descale overlaps %s in memory",
                       spans_overlap(ds, s) ? "src" : "dst");

    job->src = *src;
    job->dst = *dst;
    job->descale = descale;
    job->src_dtype = q->src_dtype;
    job->dst_dtype = q->dst_dtype;
    job->batch = q->batch;
    job->seqlen = q->seqlen;
    job->heads = q->heads;
    job->dim = q->dim;
    job->varlen = varlen;
    job->cu_seqlens = q->cu_seqlens;
    job->rows = rows;
    job->block = q->block_rows ? q->block_rows : q->seqlen > 0 ? q->seqlen : 1;
    job->nblocks = nblocks;
    job->rotate = q->rotate;
    job->rotate_seed = q->rotate_seed;
    job->inv_sqrt_dim = (float)(1.0 / sqrt((double)q->dim));
    job->fp8_max = q->dst_dtype == FA_DTYPE_FP8_E5M2 ? FA_FP8_E5M2_MAX
                                                     : FA_FP8_E4M3_MAX;
    return FA_SUCCESS;
}

/* ---------------------------------------------------------------------- */
/* CPU                                                                     */

/* y[0..dim) of the row at element `offset` of src, as quantize.h defines
 * it (sign[c] = s_c; read only when rotating). */
static void row_values(const fa_quant_job *j, int64_t offset,
                       const int8_t *sign, float *y)
{
    const int64_t n = j->dim;
    switch (j->src_dtype) {
    case FA_DTYPE_F16: {
        const uint16_t *s = (const uint16_t *)j->src.data + offset;
        for (int64_t c = 0; c < n; ++c)
            y[c] = fa_f16_to_f32(s[c]);
        break;
    }
    case FA_DTYPE_BF16: {
        const uint16_t *s = (const uint16_t *)j->src.data + offset;
        for (int64_t c = 0; c < n; ++c)
            y[c] = fa_bf16_to_f32(s[c]);
        break;
    }
    default:
        memcpy(y, (const float *)j->src.data + offset, (size_t)n * sizeof *y);
        break;
    }
    if (!j->rotate)
        return;
    for (int64_t c = 0; c < n; ++c)
        if (sign[c] < 0)
            y[c] = -y[c];
    for (int64_t h = 1; h < n; h *= 2) /* the GPU's stages, in its order */
        for (int64_t i = 0; i < n; i += 2 * h)
            for (int64_t k = i; k < i + h; ++k) {
                float a = y[k], b = y[k + h];
                y[k] = a + b;
                y[k + h] = a - b;
            }
    for (int64_t c = 0; c < n; ++c)
        y[c] *= j->inv_sqrt_dim;
}

/* Block `task` = (b·heads + h)·nblocks + i: its descale, then its rows. */
static void quantize_block(const fa_quant_job *j, const int8_t *sign,
                           int64_t task)
{
    const int64_t i = task % j->nblocks, bh = task / j->nblocks;
    const int64_t h = bh % j->heads, b = bh / j->heads;
    int64_t first = 0, len = j->seqlen; /* the sequence's rows */
    if (j->varlen) {
        first = j->cu_seqlens[b];
        len = j->cu_seqlens[b + 1] - first;
    }
    const int64_t lo = i * j->block;
    const int64_t hi = lo >= len ? lo : lo + (j->block < len - lo ? j->block : len - lo);
    float y[MAX_DIM];
    float amax = 0.0f;
    for (int64_t r = lo; r < hi; ++r) {
        row_values(j, fa_row_offset(&j->src, j->varlen, b, first + r, h), sign, y);
        for (int64_t c = 0; c < j->dim; ++c)
            if (isfinite(y[c])) /* NaN and inf do not count (quantize.h) */
                amax = fmaxf(amax, fabsf(y[c]));
    }
    float descale = amax == 0.0f ? 1.0f : amax / j->fp8_max;
    if (descale < FLT_MIN)
        descale = FLT_MIN;
    j->descale[task] = descale;
    for (int64_t r = lo; r < hi; ++r) {
        row_values(j, fa_row_offset(&j->src, j->varlen, b, first + r, h), sign, y);
        uint8_t *out = (uint8_t *)j->dst.data +
                       fa_row_offset(&j->dst, j->varlen, b, first + r, h);
        for (int64_t c = 0; c < j->dim; ++c)
            out[c] = fa_f32_to_fp8(y[c] / descale, j->dst_dtype);
    }
}

static void quantize_cpu(const fa_quant_job *j, int threads)
{
    int8_t sign[MAX_DIM];
    for (int64_t c = 0; c < j->dim; ++c)
        sign[c] = (int8_t)fa_quant_sign(j->rotate_seed, c);
    const int64_t tasks = j->batch * j->heads * j->nblocks;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t)
        quantize_block(j, sign, t);
}

/* ---------------------------------------------------------------------- */
/* Entry point                                                             */

fa_status fa_quantize_fp8(fa_context *ctx, const fa_quant *quant,
                          const fa_tensor *src, fa_tensor *dst,
                          float *descale)
{
    fa_quant_job job;
    fa_status st = validate(ctx, quant, src, dst, descale, &job);
    if (st != FA_SUCCESS)
        return st;
    const char *kernel = "cpu.quantize_fp8";
#ifdef FA_HAVE_CUDA
    if (ctx->device == FA_DEVICE_CUDA) {
        /* as the attention kernels: no f32 on the GPU */
        if (job.src_dtype == FA_DTYPE_F32)
            return fa_fail(FA_ERROR_UNSUPPORTED, "fa_quantize_fp8 on a CUDA "
                           "context takes f16 or bf16 sources, not f32");
        if (job.batch * job.heads * job.nblocks > 0 &&
            (st = fa_cuda_quantize_fp8(&job, ctx->stream)))
            return st;
        kernel = "cuda.quantize_fp8";
    } else
#endif
        quantize_cpu(&job, ctx->num_threads > 0 ? ctx->num_threads
                                                : fa_cpu_num_cores());
    ctx->last_kernel = kernel;
    fa_clear_error();
    return FA_SUCCESS;
}
