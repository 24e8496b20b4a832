/*
 * test_quant: fa_quantize_fp8 and fa_rotation_sign.
 *  - Against an independent float64 reference: the rotation as the naive
 *    product with diag(s)·H / sqrt(dim) (H from its definition, O(dim²)),
 *    the descale per block, and FP8 rounding by search over every finite
 *    8-bit value. Descales within 1e-6 relative (plus the float32
 *    rotation's own error bound when rotating); every byte is the
 *    reference's rounding of the exact value, or where that value is within
 *    the tolerance of a rounding midpoint, a rounding of a value within the
 *    tolerance.
 *  - Over f32 / f16 / bf16 sources, e4m3 / e5m2, block_rows 0, 1, 17, 128,
 *    rotate on and off, fixed and varlen (empty sequences, rows outside
 *    every sequence), contiguous, padded and head-major layouts, all-zero
 *    blocks, values near FLT_MIN and near 1e30. Bytes outside the views,
 *    descale guards and the source stay unchanged.
 *  - Rotation: q·k of dequantized rotated q and k (one seed) approximates
 *    the exact q·k, and badly with two different seeds; fa_rotation_sign
 *    against the splitmix64 definition, both signs about equally often.
 *  - Every invalid argument: FA_ERROR_INVALID_ARGUMENT, a message, outputs
 *    untouched; fa_quant_init's defaults.
 *  - On a CUDA context (when the build and machine have one): the same
 *    cases give bytes and descales bit-identical to the CPU's; f32 sources
 *    are FA_ERROR_UNSUPPORTED. Skipped with a message otherwise.
 *
 *   test_quant [seed]        exit 0 all passed, 1 a failure
 */
#include "testlib.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef FA_HAVE_CUDA
#  include <cuda_runtime.h>
#  define CUDA_CHECK(call)                                                     \
      do {                                                                     \
          cudaError_t err_ = (call);                                           \
          if (err_ != cudaSuccess) {                                           \
              fprintf(stderr, "CUDA error %s: %s\n", #call,                    \
                      cudaGetErrorString(err_));                               \
              exit(2);                                                         \
          }                                                                    \
      } while (0)
#endif

static int failures = 0, checks = 0;

/* Prints the first failures only: one broken kernel fails thousands. */
#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        ++checks;                                                              \
        if (!(cond)) {                                                         \
            if (++failures <= 30) {                                            \
                printf("FAIL %s:%d: ", __FILE__, __LINE__);                    \
                printf(__VA_ARGS__);                                           \
                printf("\n");                                                  \
            }                                                                  \
        }                                                                      \
    } while (0)

/* ---------------------------------------------------------------------- */
/* Device buffers (NULL / no-ops without CUDA)                             */

static void *dev_upload(const void *host, size_t bytes)
{
#ifdef FA_HAVE_CUDA
    void *p = NULL;
    CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
    CUDA_CHECK(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice));
    return p;
#else
    (void)host;
    (void)bytes;
    return NULL;
#endif
}

static void dev_download(void *host, const void *dev, size_t bytes)
{
#ifdef FA_HAVE_CUDA
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost));
#else
    (void)host;
    (void)dev;
    (void)bytes;
#endif
}

static void dev_free(void *p)
{
#ifdef FA_HAVE_CUDA
    if (p)
        CUDA_CHECK(cudaFree(p));
#else
    (void)p;
#endif
}

/* ---------------------------------------------------------------------- */
/* FP8 by definition                                                       */

static double fp8_table[2][256]; /* [e5m2][byte] */

static int is_e5m2(fa_dtype t) { return t == FA_DTYPE_FP8_E5M2; }

/* The OCP definitions: e4m3 bias 7, S.1111.111 NaN; e5m2 bias 15, IEEE. */
static double fp8_decode_slow(unsigned b, int e5m2)
{
    int mbits = e5m2 ? 2 : 3, bias = e5m2 ? 15 : 7;
    int e = (int)(b & 0x7f) >> mbits, m = (int)b & ((1 << mbits) - 1);
    double s = (b & 0x80) ? -1.0 : 1.0;
    if (e5m2 && e == 31)
        return m ? NAN : s * INFINITY;
    if (!e5m2 && e == 15 && m == 7)
        return NAN;
    if (e == 0)
        return s * ldexp(m, 1 - bias - mbits);
    return s * ldexp(m + (1 << mbits), e - bias - mbits);
}

static void fp8_init(void)
{
    for (int t = 0; t < 2; ++t)
        for (unsigned b = 0; b < 256; ++b)
            fp8_table[t][b] = fp8_decode_slow(b, t);
}

static double fp8_value(uint8_t b, fa_dtype t) { return fp8_table[is_e5m2(t)][b]; }

static int fp8_top(fa_dtype t) { return is_e5m2(t) ? 0x7b : 0x7e; }

/* q rounded to the nearest finite 8-bit value, ties to the even byte,
 * saturated at the largest (positive bytes order as their values). */
static double fp8_round(double q, fa_dtype t)
{
    const double *v = fp8_table[is_e5m2(t)];
    const int top = fp8_top(t);
    double a = fabs(q);
    if (a >= v[top])
        return copysign(v[top], q);
    int lo = 0, hi = top; /* v[lo] <= a < v[hi] */
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (v[mid] <= a)
            lo = mid;
        else
            hi = mid;
    }
    double dl = a - v[lo], dh = v[hi] - a;
    int pick = dl < dh ? lo : dh < dl ? hi : (lo % 2 == 0 ? lo : hi);
    return copysign(v[pick], q);
}

static double fp8_largest(fa_dtype t) { return fp8_table[is_e5m2(t)][fp8_top(t)]; }

/* ---------------------------------------------------------------------- */
/* The rotation by definition                                              */

/* fa_rotation_sign's definition, written out independently. */
static int sign_ref(uint64_t seed, int64_t c)
{
    uint64_t z = seed + ((uint64_t)c + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (z >> 63) ? -1 : 1;
}

static int popcount64(uint64_t x)
{
    int n = 0;
    for (; x; x &= x - 1)
        ++n;
    return n;
}

/* y = x · diag(s) · H / sqrt(n), H[j][c] = (-1)^popcount(j & c). */
static void rotate_ref(const double *x, int64_t n, uint64_t seed, double *y)
{
    for (int64_t c = 0; c < n; ++c) {
        double sum = 0.0;
        for (int64_t j = 0; j < n; ++j) {
            double term = x[j] * sign_ref(seed, j);
            sum += popcount64((uint64_t)(j & c)) % 2 ? -term : term;
        }
        y[c] = sum / sqrt((double)n);
    }
}

/* ---------------------------------------------------------------------- */
/* One quantization case                                                   */

typedef struct qcase {
    fa_dtype src_dtype, dst_dtype;
    int64_t batch, seqlen, heads, dim, block_rows;
    int rotate;
    uint64_t seed;
    int varlen;
    int src_layout, dst_layout; /* 0 contiguous, 1 padded, 2 head-major */
    double magnitude;           /* scale of the values (1, 1e-38, 1e30) */
} qcase;

/* Element strides of a (outer, rows, heads, dim) view of layout kind. */
static void layout_strides(int kind, int64_t rows, int64_t heads, int64_t dim,
                           int64_t *sb, int64_t *ss, int64_t *sh)
{
    switch (kind) {
    case 1: /* gaps after every row, head and batch entry */
        *sh = dim + 3;
        *ss = heads * *sh + 5;
        *sb = rows * *ss + 7;
        break;
    case 2: /* (batch, heads, rows, dim) */
        *ss = dim + 1;
        *sh = rows * *ss + 2;
        *sb = heads * *sh + 3;
        break;
    default:
        *sh = dim;
        *ss = heads * dim;
        *sb = rows * *ss;
        break;
    }
}

#define GUARD 64 /* elements before and after each view's span */

typedef struct qbuf {
    size_t elem;      /* bytes per element */
    int64_t count;    /* elements, guards included */
    uint8_t *host;
    fa_tensor t;      /* its view (host pointer) */
} qbuf;

static void qbuf_make(qbuf *b, size_t elem, int kind, int64_t outer,
                      int64_t rows, int64_t heads, int64_t dim, int varlen)
{
    int64_t sb, ss, sh;
    layout_strides(kind, rows, heads, dim, &sb, &ss, &sh);
    int64_t span = (outer - 1) * sb + (rows > 0 ? (rows - 1) * ss : 0) +
                   (heads - 1) * sh + dim;
    b->elem = elem;
    b->count = span + 2 * GUARD;
    b->host = xmalloc((size_t)b->count * elem);
    b->t.data = b->host + GUARD * elem;
    /* varlen ignores stride_batch: a nonsense value must not matter */
    b->t.stride_batch = varlen ? -12345 : sb;
    b->t.stride_seq = ss;
    b->t.stride_head = sh;
}

static int64_t qbuf_index(const qbuf *b, int varlen, int64_t bi, int64_t r,
                          int64_t h, int64_t c)
{
    return GUARD + (varlen ? 0 : bi * b->t.stride_batch) + r * b->t.stride_seq +
           h * b->t.stride_head + c;
}

/* A case's data, the reference, and the CPU result. */
typedef struct qdata {
    qcase c;
    fa_quant quant;
    int32_t *cu;          /* varlen: batch + 1 */
    int64_t outer, rows;  /* of the views (rows: packed total + spare) */
    int64_t nblocks, ndescale;
    qbuf src, dst;
    float *descale;       /* ndescale + 2·GUARD, guards around */
    uint8_t *src_copy;    /* src as filled, to check it is unchanged */
} qdata;

static const uint8_t DST_SENTINEL = 0xa5;
static const uint32_t DESCALE_SENTINEL = 0x7fc0dead; /* a NaN */

static void seq_range(const qdata *d, int64_t b, int64_t *first, int64_t *len)
{
    *first = d->c.varlen ? d->cu[b] : 0;
    *len = d->c.varlen ? d->cu[b + 1] - d->cu[b] : d->c.seqlen;
}

static void fill_outputs(qdata *d)
{
    memset(d->dst.host, DST_SENTINEL, (size_t)d->dst.count);
    for (int64_t i = 0; i < d->ndescale + 2 * GUARD; ++i)
        memcpy(&d->descale[i], &DESCALE_SENTINEL, 4);
}

static void qdata_make(qdata *d, const qcase *c, test_rng *rng)
{
    memset(d, 0, sizeof *d);
    d->c = *c;
    fa_quant_init(&d->quant);
    d->quant.batch = c->batch;
    d->quant.seqlen = c->seqlen;
    d->quant.heads = c->heads;
    d->quant.dim = c->dim;
    d->quant.src_dtype = c->src_dtype;
    d->quant.dst_dtype = c->dst_dtype;
    d->quant.block_rows = c->block_rows;
    d->quant.rotate = c->rotate;
    d->quant.rotate_seed = c->seed;
    d->outer = c->batch;
    d->rows = c->seqlen;
    if (c->varlen) {
        d->cu = xmalloc((size_t)(c->batch + 1) * sizeof *d->cu);
        d->cu[0] = 0;
        for (int64_t b = 0; b < c->batch; ++b) {
            /* some empty sequences, some of the full length */
            int64_t len = rng_int(rng, 0, 3) == 0 ? 0 : rng_int(rng, 0, c->seqlen);
            if (b == 0)
                len = c->seqlen;
            d->cu[b + 1] = d->cu[b] + (int32_t)len;
        }
        d->outer = 1;
        d->rows = d->cu[c->batch] + 3; /* 3 rows outside every sequence */
        d->quant.cu_seqlens = d->cu;
    }
    d->nblocks = c->block_rows == 0 ? 1 : (c->seqlen + c->block_rows - 1) / c->block_rows;
    d->ndescale = c->batch * c->heads * d->nblocks;
    qbuf_make(&d->src, fa_dtype_size(c->src_dtype), c->src_layout, d->outer,
              d->rows, c->heads, c->dim, c->varlen);
    qbuf_make(&d->dst, 1, c->dst_layout, d->outer, d->rows, c->heads, c->dim,
              c->varlen);
    d->descale = xmalloc((size_t)(d->ndescale + 2 * GUARD) * sizeof(float));

    /* Source: every element (gaps too: they must not matter) random; rows
     * with their own scale, a few outlier channels, and all-zero rows at
     * the start of sequence 0 (all-zero blocks for small block_rows). */
    for (int64_t i = 0; i < d->src.count; ++i)
        store_elem(d->src.host, c->src_dtype, i, 1e4 * rng_normal(rng));
    int64_t outlier = rng_int(rng, 0, c->dim - 1);
    for (int64_t b = 0; b < c->batch; ++b) {
        int64_t first, len;
        seq_range(d, b, &first, &len);
        for (int64_t r = 0; r < len; ++r)
            for (int64_t h = 0; h < c->heads; ++h) {
                double scale = c->magnitude * exp(rng_normal(rng));
                int zero = b == 0 && r < 3;
                for (int64_t x = 0; x < c->dim; ++x) {
                    double v = zero ? 0.0 : scale * rng_normal(rng);
                    if (x == outlier)
                        v *= 20.0;
                    store_elem(d->src.host, c->src_dtype,
                               qbuf_index(&d->src, c->varlen, b, first + r, h, x), v);
                }
            }
    }
    d->src_copy = xmalloc((size_t)d->src.count * d->src.elem);
    memcpy(d->src_copy, d->src.host, (size_t)d->src.count * d->src.elem);
    fill_outputs(d);
}

static void qdata_free(qdata *d)
{
    free(d->cu);
    free(d->src.host);
    free(d->dst.host);
    free(d->descale);
    free(d->src_copy);
}

static void describe(const qcase *c, char *buf, size_t n)
{
    snprintf(buf, n, "%s->%s b%lld s%lld h%lld d%lld block_rows %lld rotate %d "
             "seed %llu varlen %d layouts %d/%d magnitude %g",
             fa_dtype_name(c->src_dtype), fa_dtype_name(c->dst_dtype),
             (long long)c->batch, (long long)c->seqlen, (long long)c->heads,
             (long long)c->dim, (long long)c->block_rows, c->rotate,
             (unsigned long long)c->seed, c->varlen, c->src_layout, c->dst_layout,
             c->magnitude);
}

static double max_descale_err = 0.0; /* relative, over all cases */
static int64_t near_midpoint = 0, elements_checked = 0;

/* d's CPU results against the float64 reference; outputs outside the
 * views untouched, the source unchanged. */
static void verify(const qdata *d, const char *what)
{
    const qcase *c = &d->c;
    const int64_t n = c->dim;
    const double u = ldexp(1.0, -24), top = fp8_largest(c->dst_dtype);
    const double levels = n > 1 ? log2((double)n) : 0.0;
    const int64_t block = c->block_rows == 0 ? c->seqlen : c->block_rows;
    double *x = xmalloc((size_t)n * sizeof *x);
    int64_t max_rows = block < c->seqlen ? block : c->seqlen;
    double *y = xmalloc((size_t)(max_rows > 0 ? max_rows : 1) * (size_t)n * sizeof *y);
    double *l1 = xmalloc((size_t)(max_rows > 0 ? max_rows : 1) * sizeof *l1);
    uint8_t *touched = xcalloc((size_t)d->dst.count, 1);

    for (int64_t b = 0; b < c->batch; ++b) {
        int64_t first, len;
        seq_range(d, b, &first, &len);
        for (int64_t h = 0; h < c->heads; ++h)
            for (int64_t i = 0; i < d->nblocks; ++i) {
                int64_t lo = i * block, hi = lo + block < len ? lo + block : len;
                if (hi < lo)
                    hi = lo;
                double amax = 0.0, l1max = 0.0;
                for (int64_t r = lo; r < hi; ++r) {
                    double *yr = y + (r - lo) * n;
                    l1[r - lo] = 0.0;
                    for (int64_t k = 0; k < n; ++k) {
                        x[k] = load_elem(d->src.host, c->src_dtype,
                                         qbuf_index(&d->src, c->varlen, b, first + r, h, k));
                        l1[r - lo] += fabs(x[k]);
                    }
                    if (c->rotate)
                        rotate_ref(x, n, c->seed, yr);
                    else
                        memcpy(yr, x, (size_t)n * sizeof *x);
                    for (int64_t k = 0; k < n; ++k)
                        amax = fmax(amax, fabs(yr[k]));
                    l1max = fmax(l1max, l1[r - lo]);
                }
                double ref = amax == 0.0 ? 1.0 : fmax(amax / top, (double)FLT_MIN);
                /* the float32 butterflies' error bound, relative to amax:
                 * (log2(n) + 3)·u·|x|₁/sqrt(n) */
                double rot_tol = c->rotate && amax > 0.0
                                     ? (levels + 3.0) * u * l1max / sqrt((double)n) / amax
                                     : 0.0;
                double tol_d = 1e-6 + rot_tol;
                int64_t di = (b * c->heads + h) * d->nblocks + i;
                double got = d->descale[GUARD + di];
                double err = fabs(got - ref) / ref;
                if (err > max_descale_err)
                    max_descale_err = err;
                CHECK(err <= tol_d, "%s: descale[%lld] (b %lld h %lld block %lld) = %.9g, "
                      "reference %.9g (rel err %.3g > %.3g)", what, (long long)di,
                      (long long)b, (long long)h, (long long)i, got, ref, err, tol_d);
                for (int64_t r = lo; r < hi; ++r)
                    for (int64_t k = 0; k < n; ++k) {
                        int64_t idx = qbuf_index(&d->dst, c->varlen, b, first + r, h, k);
                        touched[idx] = 1;
                        double q = y[(r - lo) * n + k] / ref;
                        double tol = (tol_d + 1e-6) * fabs(q) +
                                     (c->rotate ? (levels + 3.0) * u * l1[r - lo] /
                                                      sqrt((double)n) / ref
                                                : 0.0);
                        double want_lo = fp8_round(q - tol, c->dst_dtype);
                        double want_hi = fp8_round(q + tol, c->dst_dtype);
                        double v = fp8_value(d->dst.host[idx], c->dst_dtype);
                        near_midpoint += want_lo != want_hi;
                        ++elements_checked;
                        CHECK(want_lo <= v && v <= want_hi,
                              "%s: dst (b %lld row %lld h %lld c %lld) = 0x%02x (%g), "
                              "reference %.9g rounds to %g (to %g within %.3g)", what,
                              (long long)b, (long long)r, (long long)h, (long long)k,
                              d->dst.host[idx], v, q, want_lo, want_hi, tol);
                    }
            }
    }
    for (int64_t i = 0; i < d->dst.count; ++i)
        if (!touched[i])
            CHECK(d->dst.host[i] == DST_SENTINEL, "%s: dst byte %lld outside the "
                  "view or the sequences was written (0x%02x)", what,
                  (long long)(i - GUARD), d->dst.host[i]);
    for (int64_t i = 0; i < GUARD; ++i) {
        CHECK(!memcmp(&d->descale[i], &DESCALE_SENTINEL, 4) &&
                  !memcmp(&d->descale[GUARD + d->ndescale + i], &DESCALE_SENTINEL, 4),
              "%s: a descale guard was written", what);
    }
    CHECK(!memcmp(d->src_copy, d->src.host, (size_t)d->src.count * d->src.elem),
          "%s: the source changed", what);
    free(x);
    free(y);
    free(l1);
    free(touched);
}

/* Runs d on a CUDA context: bytes and descales (guards included) must be
 * the CPU's, bit for bit; f32 is refused as unsupported. */
static void run_on_gpu(fa_context *gpu, qdata *d, const char *what)
{
    const qcase *c = &d->c;
    void *src = dev_upload(d->src.host, (size_t)d->src.count * d->src.elem);
    uint8_t *cpu_dst = d->dst.host;
    float *cpu_descale = d->descale;
    d->dst.host = xmalloc((size_t)d->dst.count);
    d->descale = xmalloc((size_t)(d->ndescale + 2 * GUARD) * sizeof(float));
    fill_outputs(d);
    void *dst = dev_upload(d->dst.host, (size_t)d->dst.count);
    float *descale = dev_upload(d->descale, (size_t)(d->ndescale + 2 * GUARD) * sizeof(float));
    int32_t *cu = c->varlen ? dev_upload(d->cu, (size_t)(c->batch + 1) * sizeof(int32_t)) : NULL;

    fa_quant quant = d->quant;
    quant.cu_seqlens = cu;
    fa_tensor ts = d->src.t, td = d->dst.t;
    ts.data = (char *)src + GUARD * d->src.elem;
    td.data = (char *)dst + GUARD;
    fa_status st = fa_quantize_fp8(gpu, &quant, &ts, &td, descale + GUARD);
    if (c->src_dtype == FA_DTYPE_F32) {
        CHECK(st == FA_ERROR_UNSUPPORTED && fa_last_error()[0],
              "%s: f32 on CUDA gave %s (%s), not unsupported", what,
              fa_status_string(st), fa_last_error());
    } else {
        CHECK(st == FA_SUCCESS, "%s: CUDA call failed: %s (%s)", what,
              fa_status_string(st), fa_last_error());
        dev_download(d->dst.host, dst, (size_t)d->dst.count);
        dev_download(d->descale, descale, (size_t)(d->ndescale + 2 * GUARD) * sizeof(float));
        int64_t diff = -1;
        for (int64_t i = 0; i < d->dst.count && diff < 0; ++i)
            if (d->dst.host[i] != cpu_dst[i])
                diff = i;
        CHECK(diff < 0, "%s: GPU dst byte %lld is 0x%02x, the CPU's 0x%02x", what,
              (long long)(diff - GUARD), diff < 0 ? 0 : d->dst.host[diff],
              diff < 0 ? 0 : cpu_dst[diff]);
        diff = -1;
        for (int64_t i = 0; i < d->ndescale + 2 * GUARD && diff < 0; ++i)
            if (memcmp(&d->descale[i], &cpu_descale[i], 4))
                diff = i;
        CHECK(diff < 0, "%s: GPU descale[%lld] is %.9g, the CPU's %.9g", what,
              (long long)(diff - GUARD), diff < 0 ? 0.0 : d->descale[diff],
              diff < 0 ? 0.0 : cpu_descale[diff]);
        CHECK(!strcmp(fa_context_last_kernel(gpu), "cuda.quantize_fp8"),
              "%s: last kernel %s", what, fa_context_last_kernel(gpu));
    }
    dev_free(src);
    dev_free(dst);
    dev_free(descale);
    dev_free(cu);
    free(d->dst.host);
    free(d->descale);
    d->dst.host = cpu_dst;
    d->descale = cpu_descale;
}

static int gpu_cases = 0; /* compared with the CPU's bits */

static void run_case(fa_context *cpu, fa_context *gpu, const qcase *c,
                     test_rng *rng)
{
    char what[300];
    describe(c, what, sizeof what);
    qdata d;
    qdata_make(&d, c, rng);
    fa_status st = fa_quantize_fp8(cpu, &d.quant, &d.src.t, &d.dst.t, d.descale + GUARD);
    CHECK(st == FA_SUCCESS && fa_last_error()[0] == '\0', "%s: %s (%s)", what,
          fa_status_string(st), fa_last_error());
    if (st == FA_SUCCESS) {
        CHECK(!strcmp(fa_context_last_kernel(cpu), "cpu.quantize_fp8"),
              "%s: last kernel %s", what, fa_context_last_kernel(cpu));
        verify(&d, what);
        if (gpu) {
            run_on_gpu(gpu, &d, what);
            gpu_cases += c->src_dtype != FA_DTYPE_F32;
        }
    }
    qdata_free(&d);
}

/* The grid: every source dtype, FP8 format, block size, rotation and
 * varlen, with dims, shapes and layouts drawn per case. */
static int run_grid(fa_context *cpu, fa_context *gpu, test_rng *rng)
{
    static const fa_dtype srcs[3] = {FA_DTYPE_F32, FA_DTYPE_F16, FA_DTYPE_BF16};
    static const fa_dtype dsts[2] = {FA_DTYPE_FP8_E4M3, FA_DTYPE_FP8_E5M2};
    static const int64_t blocks[4] = {0, 1, 17, 128};
    static const int64_t dims_rot[6] = {1, 2, 16, 64, 128, 256};
    static const int64_t dims_plain[7] = {1, 3, 40, 64, 96, 128, 256};
    static const int64_t seqlens[6] = {1, 17, 40, 129, 200, 260};
    int count = 0;
    for (int s = 0; s < 3; ++s)
        for (int t = 0; t < 2; ++t)
            for (int bl = 0; bl < 4; ++bl)
                for (int rot = 0; rot < 2; ++rot)
                    for (int vl = 0; vl < 2; ++vl) {
                        qcase c;
                        memset(&c, 0, sizeof c);
                        c.src_dtype = srcs[s];
                        c.dst_dtype = dsts[t];
                        c.block_rows = blocks[bl];
                        c.rotate = rot;
                        c.varlen = vl;
                        c.seed = rng_next(rng);
                        c.dim = rot ? dims_rot[rng_int(rng, 0, 5)] : dims_plain[rng_int(rng, 0, 6)];
                        c.batch = rng_int(rng, 1, 3);
                        c.heads = rng_int(rng, 1, 4 / c.batch);
                        c.seqlen = seqlens[rng_int(rng, 0, 5)];
                        c.src_layout = count % 3;
                        c.dst_layout = (count / 3) % 3;
                        c.magnitude = 1.0;
                        run_case(cpu, gpu, &c, rng);
                        ++count;
                    }
    /* Edge cases: magnitudes at both ends of float (bf16 and f32 only: f16
     * cannot hold them), a long single block, empty sequences. */
    static const struct {
        fa_dtype src;
        int64_t batch, seqlen, heads, dim, block_rows;
        int rotate, varlen;
        double magnitude;
    } edge[] = {
        {FA_DTYPE_BF16, 2, 33, 2, 64, 8, 1, 0, 1e-38},  /* descale at FLT_MIN */
        {FA_DTYPE_BF16, 2, 33, 2, 64, 0, 0, 0, 1e-39},  /* subnormal inputs */
        {FA_DTYPE_F32, 1, 20, 2, 32, 4, 1, 1, 1e-40},
        {FA_DTYPE_BF16, 2, 33, 2, 128, 0, 1, 0, 1e30},
        {FA_DTYPE_F32, 1, 9, 1, 256, 3, 1, 0, 1e30},
        {FA_DTYPE_BF16, 1, 3000, 2, 128, 0, 1, 0, 1.0}, /* one long block */
        {FA_DTYPE_F16, 2, 0, 2, 16, 0, 1, 0, 1.0},      /* empty: descale 1 */
        {FA_DTYPE_F16, 2, 0, 2, 16, 5, 0, 0, 1.0},      /* empty: no blocks */
        {FA_DTYPE_F16, 3, 0, 2, 16, 0, 0, 1, 1.0},      /* empty varlen */
    };
    for (size_t e = 0; e < sizeof edge / sizeof edge[0]; ++e) {
        qcase c;
        memset(&c, 0, sizeof c);
        c.src_dtype = edge[e].src;
        c.dst_dtype = e % 2 ? FA_DTYPE_FP8_E5M2 : FA_DTYPE_FP8_E4M3;
        c.batch = edge[e].batch;
        c.seqlen = edge[e].seqlen;
        c.heads = edge[e].heads;
        c.dim = edge[e].dim;
        c.block_rows = edge[e].block_rows;
        c.rotate = edge[e].rotate;
        c.varlen = edge[e].varlen;
        c.magnitude = edge[e].magnitude;
        c.seed = rng_next(rng);
        c.src_layout = (int)e % 3;
        run_case(cpu, gpu, &c, rng);
        ++count;
    }
    return count;
}

/* ---------------------------------------------------------------------- */
/* Rotation                                                                */

static void test_rotation_sign(void)
{
    static const uint64_t seeds[4] = {0, 1, 0x123456789abcdefull, UINT64_MAX};
    for (int s = 0; s < 4; ++s) {
        int64_t plus = 0, same_next = 0, same_other = 0;
        const int64_t n = 100000;
        for (int64_t c = 0; c < n; ++c) {
            int v = fa_rotation_sign(seeds[s], c);
            CHECK(v == sign_ref(seeds[s], c), "fa_rotation_sign(%llu, %lld) = %d, "
                  "definition %d", (unsigned long long)seeds[s], (long long)c, v,
                  sign_ref(seeds[s], c));
            plus += v == 1;
            same_next += v == fa_rotation_sign(seeds[s], c + 1);
            same_other += v == fa_rotation_sign(seeds[s] + 1, c);
        }
        /* binomial(1e5, 1/2): sd 158, so +-1000 is over 6 sd */
        CHECK(llabs(plus - n / 2) < 1000, "seed %llu: %lld of %lld signs are +1",
              (unsigned long long)seeds[s], (long long)plus, (long long)n);
        CHECK(llabs(same_next - n / 2) < 1000, "seed %llu: neighbours agree %lld "
              "times of %lld", (unsigned long long)seeds[s], (long long)same_next,
              (long long)n);
        CHECK(llabs(same_other - n / 2) < 1000, "seeds %llu and +1 agree %lld "
              "times of %lld", (unsigned long long)seeds[s], (long long)same_other,
              (long long)n);
    }
    static const int64_t far[4] = {-1, INT64_MIN, INT64_MAX, (int64_t)1 << 40};
    for (int i = 0; i < 4; ++i) {
        int v = fa_rotation_sign(7, far[i]);
        CHECK(v == sign_ref(7, far[i]), "fa_rotation_sign(7, %lld) = %d",
              (long long)far[i], v);
    }
}

/* Quantizes (rows, 1 head, dim) bf16 values x on the CPU, then returns
 * the dequantized values (byte value · descale of its block). */
static void quantize_dequantize(fa_context *ctx, const double *x, int64_t rows,
                                int64_t dim, int rotate, uint64_t seed,
                                int64_t block_rows, double *out)
{
    uint16_t *src = xmalloc((size_t)(rows * dim) * sizeof *src);
    uint8_t *dst = xmalloc((size_t)(rows * dim));
    int64_t nblocks = block_rows ? (rows + block_rows - 1) / block_rows : 1;
    float *descale = xmalloc((size_t)nblocks * sizeof *descale);
    for (int64_t i = 0; i < rows * dim; ++i)
        src[i] = f32_to_bf16_bits((float)x[i]);
    fa_quant q;
    fa_quant_init(&q);
    q.batch = 1;
    q.seqlen = rows;
    q.heads = 1;
    q.dim = dim;
    q.rotate = rotate;
    q.rotate_seed = seed;
    q.block_rows = block_rows;
    fa_tensor ts = fa_tensor_contiguous(src, rows, 1, dim);
    fa_tensor td = fa_tensor_contiguous(dst, rows, 1, dim);
    fa_status st = fa_quantize_fp8(ctx, &q, &ts, &td, descale);
    CHECK(st == FA_SUCCESS, "quantize for the rotation test: %s (%s)",
          fa_status_string(st), fa_last_error());
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < dim; ++k)
            out[r * dim + k] = fp8_value(dst[r * dim + k], FA_DTYPE_FP8_E4M3) *
                               descale[block_rows ? r / block_rows : 0];
    free(src);
    free(dst);
    free(descale);
}

/* RMS of (q̂·k̂ - q·k) / (|q||k|) over all pairs, q̂ and k̂ dequantized
 * with rotation seeds sq and sk (rotate 0: none); the largest in *worst. */
static double dot_error(fa_context *ctx, const double *q, const double *k,
                        int64_t rows, int64_t dim, int rotate, uint64_t sq,
                        uint64_t sk, int64_t block_rows, double *worst)
{
    double *qh = xmalloc((size_t)(rows * dim) * sizeof *qh);
    double *kh = xmalloc((size_t)(rows * dim) * sizeof *kh);
    quantize_dequantize(ctx, q, rows, dim, rotate, sq, block_rows, qh);
    quantize_dequantize(ctx, k, rows, dim, rotate, sk, block_rows, kh);
    double sum = 0.0;
    *worst = 0.0;
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < rows; ++j) {
            double exact = 0.0, approx = 0.0, nq = 0.0, nk = 0.0;
            for (int64_t c = 0; c < dim; ++c) {
                double qv = round_to_dtype(q[i * dim + c], FA_DTYPE_BF16);
                double kv = round_to_dtype(k[j * dim + c], FA_DTYPE_BF16);
                exact += qv * kv;
                approx += qh[i * dim + c] * kh[j * dim + c];
                nq += qv * qv;
                nk += kv * kv;
            }
            double rel = fabs(approx - exact) / sqrt(nq * nk);
            sum += rel * rel;
            *worst = fmax(*worst, rel);
        }
    free(qh);
    free(kh);
    return sqrt(sum / (double)(rows * rows));
}

/* q·k survives rotation (M orthogonal) up to FP8 rounding, on rows with
 * outlier channels; rotating k with another seed breaks it. */
static void test_rotation_dots(fa_context *ctx, test_rng *rng)
{
    const int64_t rows = 48, dim = 128;
    double *q = xmalloc((size_t)(rows * dim) * sizeof *q);
    double *k = xmalloc((size_t)(rows * dim) * sizeof *k);
    for (int64_t i = 0; i < rows * dim; ++i) {
        int64_t c = i % dim;
        q[i] = rng_normal(rng) * (c == 5 || c == 77 ? 60.0 : 1.0);
        k[i] = rng_normal(rng) * (c == 9 ? 60.0 : 1.0);
    }
    for (int b = 0; b < 2; ++b) {
        int64_t block_rows = b ? 17 : 0;
        double worst_rot, worst_mixed;
        double rot = dot_error(ctx, q, k, rows, dim, 1, 42, 42, block_rows, &worst_rot);
        double mixed = dot_error(ctx, q, k, rows, dim, 1, 42, 43, block_rows, &worst_mixed);
        /* per element e4m3 is within 2^-4 relative, so a dot product
         * within (2·2^-4 + 2^-8)·|q||k| plus subnormal terms */
        CHECK(worst_rot < 0.14, "block_rows %lld: rotated q·k: worst relative "
              "error %.3g", (long long)block_rows, worst_rot);
        CHECK(mixed > 10.0 * rot, "block_rows %lld: different seeds for q and k "
              "give rms error %.3g, same seed %.3g", (long long)block_rows, mixed, rot);
    }
    free(q);
    free(k);
}

/* ---------------------------------------------------------------------- */
/* Invalid arguments                                                       */

enum { VB = 2, VS = 6, VH = 3, VD = 16 };

/* A valid call (varlen optional) that each case breaks in one place;
 * pointers on the context's device. */
typedef struct vfix {
    fa_quant quant;
    fa_tensor src, dst;
    float *descale;
    /* host storage, mirrored on the device for a CUDA context */
    uint16_t src_host[VB * VS * VH * VD];
    uint8_t dst_host[VB * VS * VH * VD];
    float descale_host[VB * VH * 2];
    int32_t cu_host[VB + 1];
    void *src_dev, *dst_dev, *descale_dev, *cu_dev;
    int on_device;
} vfix;

static void dev_copy_to(void *dev, const void *host, size_t bytes)
{
#ifdef FA_HAVE_CUDA
    CUDA_CHECK(cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice));
#else
    (void)dev;
    (void)host;
    (void)bytes;
#endif
}

/* The host arrays -> the device copies (a CUDA context). */
static void vfix_sync(vfix *f)
{
    if (!f->on_device)
        return;
    dev_copy_to(f->src_dev, f->src_host, sizeof f->src_host);
    dev_copy_to(f->dst_dev, f->dst_host, sizeof f->dst_host);
    dev_copy_to(f->descale_dev, f->descale_host, sizeof f->descale_host);
    dev_copy_to(f->cu_dev, f->cu_host, sizeof f->cu_host);
}

static void vfix_reset(vfix *f, int varlen)
{
    fa_quant_init(&f->quant);
    f->quant.batch = VB;
    f->quant.seqlen = VS;
    f->quant.heads = VH;
    f->quant.dim = VD;
    f->quant.block_rows = 4;
    f->quant.rotate = 1;
    for (size_t i = 0; i < sizeof f->src_host / sizeof f->src_host[0]; ++i)
        f->src_host[i] = f32_to_bf16_bits((float)(i % 7) - 3.0f);
    memset(f->dst_host, DST_SENTINEL, sizeof f->dst_host);
    for (size_t i = 0; i < sizeof f->descale_host / sizeof f->descale_host[0]; ++i)
        memcpy(&f->descale_host[i], &DESCALE_SENTINEL, 4);
    f->cu_host[0] = 0;
    f->cu_host[1] = 4;
    f->cu_host[2] = 10;
    vfix_sync(f);
    f->src = fa_tensor_contiguous(f->on_device ? f->src_dev : (void *)f->src_host, VS, VH, VD);
    f->dst = fa_tensor_contiguous(f->on_device ? f->dst_dev : (void *)f->dst_host, VS, VH, VD);
    f->descale = f->on_device ? f->descale_dev : f->descale_host;
    if (varlen)
        f->quant.cu_seqlens = f->on_device ? f->cu_dev : f->cu_host;
}

/* The outputs (as the device holds them) still hold their sentinels. */
static int vfix_untouched(vfix *f)
{
    uint8_t dst[sizeof f->dst_host];
    float descale[sizeof f->descale_host / sizeof(float)];
    if (f->on_device) {
        dev_download(dst, f->dst_dev, sizeof dst);
        dev_download(descale, f->descale_dev, sizeof descale);
    } else {
        memcpy(dst, f->dst_host, sizeof dst);
        memcpy(descale, f->descale_host, sizeof descale);
    }
    for (size_t i = 0; i < sizeof dst; ++i)
        if (dst[i] != DST_SENTINEL)
            return 0;
    for (size_t i = 0; i < sizeof descale / sizeof descale[0]; ++i)
        if (memcmp(&descale[i], &DESCALE_SENTINEL, 4))
            return 0;
    return 1;
}

typedef enum {
    V_CTX_NULL, V_QUANT_NULL, V_SRC_NULL, V_DST_NULL, V_DESCALE_NULL,
    V_SRC_DATA_NULL, V_DST_DATA_NULL, V_BATCH_0, V_BATCH_NEG, V_SEQLEN_NEG,
    V_SEQLEN_HUGE, V_HEADS_0, V_DIM_0, V_DIM_257, V_SRC_FP8, V_SRC_BOGUS,
    V_DST_BF16, V_DST_BOGUS, V_BLOCK_NEG, V_ROTATE_2, V_ROTATE_DIM,
    V_SRC_HEAD_OVERLAP, V_SRC_SEQ_NEG, V_DST_SEQ_OVERLAP, V_DST_BATCH_0,
    V_STRIDE_OVERFLOW, V_COUNT_OVERFLOW, V_DST_ON_SRC, V_DESCALE_ON_DST,
    V_DESCALE_ON_SRC, V_DESCALE_MISALIGNED, V_SRC_MISALIGNED,
    V_CU0, /* the varlen cases from here on */
    V_CU_DECREASING, V_CU_TOO_LONG, V_COUNT
} vcase;

static const char *const vcase_name[V_COUNT] = {
    "ctx NULL", "quant NULL", "src NULL", "dst NULL", "descale NULL",
    "src->data NULL", "dst->data NULL", "batch 0", "batch -3", "seqlen -1",
    "seqlen 2^31", "heads 0", "dim 0", "dim 257", "src_dtype fp8",
    "src_dtype 42", "dst_dtype bf16", "dst_dtype -1", "block_rows -1",
    "rotate 2", "rotate with dim 12", "src stride_head < dim",
    "src stride_seq < 0", "dst stride_seq overlaps heads", "dst stride_batch 0",
    "strides overflow", "descale count overflows", "dst on src",
    "descale on dst", "descale on src", "descale misaligned", "src misaligned",
    "cu_seqlens[0] 1", "cu_seqlens decreasing", "cu_seqlens length > seqlen"};

/* Every case: invalid argument, a message, no output written. */
static void test_invalid(fa_context *ctx, int on_device)
{
    const char *device = on_device ? "cuda" : "cpu";
    vfix *f = xcalloc(1, sizeof *f);
    f->on_device = on_device;
    if (on_device) {
        f->src_dev = dev_upload(f->src_host, sizeof f->src_host);
        f->dst_dev = dev_upload(f->dst_host, sizeof f->dst_host);
        f->descale_dev = dev_upload(f->descale_host, sizeof f->descale_host);
        f->cu_dev = dev_upload(f->cu_host, sizeof f->cu_host);
    }
    for (int varlen = 0; varlen < 2; ++varlen) {
        vfix_reset(f, varlen);
        fa_status st = fa_quantize_fp8(ctx, &f->quant, &f->src, &f->dst, f->descale);
        CHECK(st == FA_SUCCESS, "%s: the valid base call (varlen %d) fails: %s (%s)",
              device, varlen, fa_status_string(st), fa_last_error());
    }
    for (int v = 0; v < V_COUNT; ++v) {
        vfix_reset(f, v >= V_CU0);
        fa_context *c = ctx;
        fa_quant *q = &f->quant;
        fa_tensor *src = &f->src, *dst = &f->dst;
        float *descale = f->descale;
        int32_t *cu = f->cu_host;
        switch ((vcase)v) {
        case V_CTX_NULL: c = NULL; break;
        case V_QUANT_NULL: q = NULL; break;
        case V_SRC_NULL: src = NULL; break;
        case V_DST_NULL: dst = NULL; break;
        case V_DESCALE_NULL: descale = NULL; break;
        case V_SRC_DATA_NULL: f->src.data = NULL; break;
        case V_DST_DATA_NULL: f->dst.data = NULL; break;
        case V_BATCH_0: q->batch = 0; break;
        case V_BATCH_NEG: q->batch = -3; break;
        case V_SEQLEN_NEG: q->seqlen = -1; break;
        case V_SEQLEN_HUGE: q->seqlen = (int64_t)1 << 31; break;
        case V_HEADS_0: q->heads = 0; break;
        case V_DIM_0: q->dim = 0; break;
        case V_DIM_257: q->dim = 257; break;
        case V_SRC_FP8: q->src_dtype = FA_DTYPE_FP8_E4M3; break;
        case V_SRC_BOGUS: q->src_dtype = (fa_dtype)42; break;
        case V_DST_BF16: q->dst_dtype = FA_DTYPE_BF16; break;
        case V_DST_BOGUS: q->dst_dtype = (fa_dtype)-1; break;
        case V_BLOCK_NEG: q->block_rows = -1; break;
        case V_ROTATE_2: q->rotate = 2; break;
        case V_ROTATE_DIM: q->dim = 12; break; /* fits the views: valid unrotated */
        case V_SRC_HEAD_OVERLAP: f->src.stride_head = VD - 1; break;
        case V_SRC_SEQ_NEG: f->src.stride_seq = -VH * VD; break;
        case V_DST_SEQ_OVERLAP: f->dst.stride_seq = VD; break;
        case V_DST_BATCH_0: f->dst.stride_batch = 0; break;
        case V_STRIDE_OVERFLOW: f->src.stride_batch = INT64_MAX - 10; break;
        case V_COUNT_OVERFLOW:
            q->batch = q->heads = q->seqlen = INT32_MAX;
            q->block_rows = 1;
            break;
        case V_DST_ON_SRC: f->dst.data = f->src.data; break;
        case V_DESCALE_ON_DST: descale = (float *)f->dst.data + 4; break;
        case V_DESCALE_ON_SRC: descale = (float *)f->src.data + 2; break;
        case V_DESCALE_MISALIGNED: descale = (float *)((char *)descale + 1); break;
        case V_SRC_MISALIGNED: f->src.data = (char *)f->src.data + 1; break;
        case V_CU0: cu[0] = 1; break;
        case V_CU_DECREASING: cu[1] = 7; cu[2] = 5; break;
        case V_CU_TOO_LONG: cu[1] = 0; cu[2] = VS + 1; break;
        case V_COUNT: break;
        }
        vfix_sync(f); /* the changed cu_seqlens */
        fa_status st = fa_quantize_fp8(c, q, src, dst, descale);
        CHECK(st == FA_ERROR_INVALID_ARGUMENT && fa_last_error()[0],
              "%s: %s gives %s (\"%s\"), not invalid argument", device, vcase_name[v],
              fa_status_string(st), fa_last_error());
        CHECK(vfix_untouched(f), "%s: %s wrote to an output", device, vcase_name[v]);
    }
    /* a success clears the last error */
    vfix_reset(f, 0);
    fa_status st = fa_quantize_fp8(ctx, &f->quant, &f->src, &f->dst, f->descale);
    CHECK(st == FA_SUCCESS && fa_last_error()[0] == '\0',
          "%s: after an error, a valid call gives %s and message \"%s\"", device,
          fa_status_string(st), fa_last_error());
    dev_free(f->src_dev);
    dev_free(f->dst_dev);
    dev_free(f->descale_dev);
    dev_free(f->cu_dev);
    free(f);
}

static void test_init(void)
{
    fa_quant q;
    memset(&q, 0x5a, sizeof q);
    fa_quant_init(&q);
    CHECK(q.batch == 0 && q.seqlen == 0 && q.heads == 0 && q.dim == 0 &&
              q.cu_seqlens == NULL && q.src_dtype == FA_DTYPE_BF16 &&
              q.dst_dtype == FA_DTYPE_FP8_E4M3 && q.block_rows == 0 &&
              q.rotate == 0 && q.rotate_seed == 0,
          "fa_quant_init's defaults");
    fa_quant_init(NULL); /* no crash */
}

int main(int argc, char **argv)
{
    uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : 20250101;
    test_rng rng;
    rng_seed(&rng, seed);
    fp8_init();

    fa_context *cpu = NULL, *gpu = NULL;
    if (fa_context_create(&cpu, FA_DEVICE_CPU, 0) != FA_SUCCESS) {
        printf("FAIL: no CPU context: %s\n", fa_last_error());
        return 1;
    }
    char gpu_note[300] = "";
    fa_status st = fa_context_create(&gpu, FA_DEVICE_CUDA, 0);
    if (st != FA_SUCCESS) {
        snprintf(gpu_note, sizeof gpu_note, "CUDA part skipped: %s (%s)",
                 fa_status_string(st), fa_last_error());
        printf("%s\n", gpu_note);
        CHECK(st == FA_ERROR_UNSUPPORTED, "creating a CUDA context: %s",
              fa_status_string(st));
        gpu = NULL;
    }
#ifdef FA_HAVE_CUDA
    /* a stream of its own: the library must queue on the context's */
    cudaStream_t stream = NULL;
    if (gpu) {
        CUDA_CHECK(cudaStreamCreate(&stream));
        CHECK(fa_context_set_stream(gpu, stream) == FA_SUCCESS, "set_stream: %s",
              fa_last_error());
    }
#else
    if (gpu) { /* a CUDA library with a test built without CUDA */
        snprintf(gpu_note, sizeof gpu_note, "CUDA part skipped: test built without CUDA");
        fa_context_destroy(gpu);
        gpu = NULL;
    }
#endif

    test_init();
    test_rotation_sign();
    test_invalid(cpu, 0);
    if (gpu)
        test_invalid(gpu, 1);
    test_rotation_dots(cpu, &rng);
    int cases = run_grid(cpu, gpu, &rng);

    fa_context_destroy(cpu);
    fa_context_destroy(gpu);
#ifdef FA_HAVE_CUDA
    if (stream)
        CUDA_CHECK(cudaStreamDestroy(stream));
#endif
    printf("test_quant: %d checks, %d failed; %d cases on the CPU (%lld elements, "
           "%lld near a rounding midpoint, descale rel err <= %.2g), %d of them "
           "bit-identical on CUDA%s%s\n",
           checks, failures, cases, (long long)elements_checked, (long long)near_midpoint,
           max_descale_err, gpu_cases, gpu_note[0] ? "; " : "", gpu_note);
    return failures ? 1 : 0;
}
