#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include "testlib.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---------------------------------------------------------------------- */
/* Random numbers                                                          */

void rng_seed(test_rng *r, uint64_t seed) { r->state = seed; }

uint64_t rng_next(test_rng *r)
{
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double rng_uniform(test_rng *r)
{
    return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

int64_t rng_int(test_rng *r, int64_t lo, int64_t hi)
{
    return lo + (int64_t)(rng_next(r) % (uint64_t)(hi - lo + 1));
}

double rng_normal(test_rng *r)
{
    /* Box-Muller; 1 - u keeps the log argument in (0, 1]. */
    double u = 1.0 - rng_uniform(r), w = rng_uniform(r);
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * w);
}

/* ---------------------------------------------------------------------- */
/* dtypes                                                                  */

uint16_t f32_to_f16_bits(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t mag = x & 0x7fffffffu;
    if (mag > 0x7f800000u) /* NaN */
        return sign | 0x7e00u;
    if (mag >= 0x477ff000u) /* >= 65520 rounds to infinity */
        return sign | 0x7c00u;
    if (mag < 0x38800000u) { /* below 2^-14: a subnormal half */
        float a;
        memcpy(&a, &mag, 4);
        /* a * 2^24 is exact; nearbyintf rounds half to even. */
        return sign | (uint16_t)nearbyintf(a * 16777216.0f);
    }
    uint32_t rebased = mag - (112u << 23); /* exponent bias 127 -> 15 */
    rebased += 0xfffu + ((rebased >> 13) & 1u);
    return sign | (uint16_t)(rebased >> 13);
}

float f16_bits_to_f32(uint16_t h)
{
    int exponent = (h >> 10) & 0x1f;
    int mantissa = h & 0x3ff;
    float mag;
    if (exponent == 0)
        mag = ldexpf((float)mantissa, -24);
    else if (exponent == 31)
        mag = mantissa ? NAN : INFINITY;
    else
        mag = ldexpf((float)(mantissa | 0x400), exponent - 25);
    return (h & 0x8000u) ? -mag : mag;
}

uint16_t f32_to_bf16_bits(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

float bf16_bits_to_f32(uint16_t h)
{
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

double round_to_dtype(double x, fa_dtype dtype)
{
    switch (dtype) {
    case FA_DTYPE_F16: return f16_bits_to_f32(f32_to_f16_bits((float)x));
    case FA_DTYPE_BF16: return bf16_bits_to_f32(f32_to_bf16_bits((float)x));
    default: return (float)x;
    }
}

double dtype_unit_roundoff(fa_dtype dtype)
{
    switch (dtype) {
    case FA_DTYPE_F16: return ldexp(1.0, -11);
    case FA_DTYPE_BF16: return ldexp(1.0, -8);
    default: return ldexp(1.0, -24);
    }
}

double load_elem(const void *base, fa_dtype dtype, int64_t idx)
{
    switch (dtype) {
    case FA_DTYPE_F16: return f16_bits_to_f32(((const uint16_t *)base)[idx]);
    case FA_DTYPE_BF16: return bf16_bits_to_f32(((const uint16_t *)base)[idx]);
    default: return ((const float *)base)[idx];
    }
}

void store_elem(void *base, fa_dtype dtype, int64_t idx, double value)
{
    switch (dtype) {
    case FA_DTYPE_F16:
        ((uint16_t *)base)[idx] = f32_to_f16_bits((float)value);
        break;
    case FA_DTYPE_BF16:
        ((uint16_t *)base)[idx] = f32_to_bf16_bits((float)value);
        break;
    default: ((float *)base)[idx] = (float)value; break;
    }
}

/* Quiet NaNs with a payload no arithmetic produces. */
static const uint32_t POISON_F32 = 0x7fc5a5a5u;
static const uint16_t POISON_F16 = 0x7e5au;
static const uint16_t POISON_BF16 = 0x7fe5u;

void store_poison(void *base, fa_dtype dtype, int64_t idx)
{
    switch (dtype) {
    case FA_DTYPE_F16: ((uint16_t *)base)[idx] = POISON_F16; break;
    case FA_DTYPE_BF16: ((uint16_t *)base)[idx] = POISON_BF16; break;
    default: memcpy((uint32_t *)base + idx, &POISON_F32, 4); break;
    }
}

int is_poison(const void *base, fa_dtype dtype, int64_t idx)
{
    switch (dtype) {
    case FA_DTYPE_F16: return ((const uint16_t *)base)[idx] == POISON_F16;
    case FA_DTYPE_BF16: return ((const uint16_t *)base)[idx] == POISON_BF16;
    default: {
        uint32_t bits;
        memcpy(&bits, (const uint32_t *)base + idx, 4);
        return bits == POISON_F32;
    }
    }
}

/* ---------------------------------------------------------------------- */
/* Buffers and views                                                       */

void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "test: out of host memory (%zu bytes)\n", bytes);
        exit(2);
    }
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        fprintf(stderr, "test: out of host memory (%zu x %zu bytes)\n", n,
                size);
        exit(2);
    }
    return p;
}

void buffer_alloc(test_buffer *buf, fa_dtype dtype, int64_t count)
{
    buf->dtype = dtype;
    buf->count = count;
    buf->host = xmalloc((size_t)(count + 2 * TEST_GUARD) * fa_dtype_size(dtype));
    buf->device = NULL;
    buffer_poison(buf);
}

void buffer_free(test_buffer *buf)
{
    free(buf->host);
    buf->host = NULL;
}

void buffer_poison(test_buffer *buf)
{
    for (int64_t i = 0; i < buf->count + 2 * TEST_GUARD; ++i)
        store_poison(buf->host, buf->dtype, i);
}

int64_t view_index(const test_view *v, int64_t b, int64_t s, int64_t h,
                   int64_t x)
{
    return TEST_GUARD + v->offset + b * v->stride_batch + s * v->stride_seq +
           h * v->stride_head + x;
}

double view_get(const test_view *v, int64_t b, int64_t s, int64_t h,
                int64_t x)
{
    return load_elem(v->buf->host, v->buf->dtype, view_index(v, b, s, h, x));
}

void view_set(const test_view *v, int64_t b, int64_t s, int64_t h, int64_t x,
              double value)
{
    store_elem(v->buf->host, v->buf->dtype, view_index(v, b, s, h, x), value);
}

fa_tensor view_tensor(const test_view *v, int on_device)
{
    char *base = on_device ? (char *)v->buf->device : (char *)v->buf->host;
    fa_tensor t;
    t.data = base + (size_t)(TEST_GUARD + v->offset) * fa_dtype_size(v->buf->dtype);
    t.stride_batch = v->stride_batch;
    t.stride_seq = v->stride_seq;
    t.stride_head = v->stride_head;
    return t;
}

double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
