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

int dtype_is_fp8(fa_dtype dtype)
{
    return dtype == FA_DTYPE_FP8_E4M3 || dtype == FA_DTYPE_FP8_E5M2;
}

double fp8_max(fa_dtype dtype)
{
    return dtype == FA_DTYPE_FP8_E5M2 ? 57344.0 : 448.0;
}

/* 2^k for a normal double's exponent range, from its bits (ldexp is slow
 * enough to dominate the encoder below). */
static double pow2(int k)
{
    uint64_t bits = (uint64_t)(k + 1023) << 52;
    double x;
    memcpy(&x, &bits, sizeof x);
    return x;
}

/* The OCP definition: sign, exponent (4 bits, bias 7 / 5 bits, bias 15),
 * mantissa (3 / 2 bits); exponent 0 is subnormal, 2^(1 - bias) · 0.m, the
 * others 2^(exponent - bias) · 1.m; e4m3 spends only S.1111.111 on NaN,
 * e5m2 its whole top exponent on infinity (mantissa 0) and NaN. */
static double fp8_finite_magnitude(int bits7, int e5m2)
{
    const int mant_bits = e5m2 ? 2 : 3, bias = e5m2 ? 15 : 7;
    const int exponent = bits7 >> mant_bits, mantissa = bits7 & ((1 << mant_bits) - 1);
    if (exponent == 0)
        return mantissa * pow2(1 - bias - mant_bits);
    return (mantissa + (1 << mant_bits)) * pow2(exponent - bias - mant_bits);
}

float fp8_bits_to_f32(uint8_t bits, fa_dtype dtype)
{
    const int e5m2 = dtype == FA_DTYPE_FP8_E5M2, bits7 = bits & 0x7f;
    double mag;
    if (e5m2 && bits7 >= 0x7c)
        mag = bits7 == 0x7c ? INFINITY : NAN;
    else if (!e5m2 && bits7 == 0x7f)
        mag = NAN;
    else
        mag = fp8_finite_magnitude(bits7, e5m2);
    return (float)((bits & 0x80) ? -mag : mag);
}

/* By search: positive bit patterns 0 .. the largest finite one decode to
 * increasing values, so the two neighbours of |x| are found by binary
 * search and the nearer (ties: the even pattern) taken. */
uint8_t double_to_fp8_bits(double x, fa_dtype dtype)
{
    const uint8_t sign = signbit(x) ? 0x80 : 0;
    if (isnan(x))
        return sign | 0x7f;
    const int e5m2 = dtype == FA_DTYPE_FP8_E5M2;
    const int largest = e5m2 ? 0x7b : 0x7e;
    double a = fabs(x);
    if (a >= fp8_finite_magnitude(largest, e5m2))
        return sign | (uint8_t)largest;
    int lo = 0; /* the last pattern whose value is <= a (< largest) */
    for (int step = 64; step > 0; step /= 2)
        if (lo + step < largest && fp8_finite_magnitude(lo + step, e5m2) <= a)
            lo += step;
    const int hi = lo + 1;
    double below = a - fp8_finite_magnitude(lo, e5m2); /* exact */
    double above = fp8_finite_magnitude(hi, e5m2) - a;
    int bits = below < above ? lo : below > above ? hi : lo % 2 == 0 ? lo : hi;
    return sign | (uint8_t)bits;
}

fa_dtype out_dtype_of(fa_dtype dtype)
{
    return dtype_is_fp8(dtype) ? FA_DTYPE_BF16 : dtype;
}

double round_to_dtype(double x, fa_dtype dtype)
{
    switch (dtype) {
    case FA_DTYPE_F16: return f16_bits_to_f32(f32_to_f16_bits((float)x));
    case FA_DTYPE_BF16: return bf16_bits_to_f32(f32_to_bf16_bits((float)x));
    case FA_DTYPE_FP8_E4M3:
    case FA_DTYPE_FP8_E5M2: return fp8_bits_to_f32(double_to_fp8_bits(x, dtype), dtype);
    default: return (float)x;
    }
}

double dtype_unit_roundoff(fa_dtype dtype)
{
    switch (dtype) {
    case FA_DTYPE_F16: return ldexp(1.0, -11);
    case FA_DTYPE_BF16: return ldexp(1.0, -8);
    case FA_DTYPE_FP8_E4M3: return ldexp(1.0, -4);
    case FA_DTYPE_FP8_E5M2: return ldexp(1.0, -3);
    default: return ldexp(1.0, -24);
    }
}

double load_elem(const void *base, fa_dtype dtype, int64_t idx)
{
    switch (dtype) {
    case FA_DTYPE_F16: return f16_bits_to_f32(((const uint16_t *)base)[idx]);
    case FA_DTYPE_BF16: return bf16_bits_to_f32(((const uint16_t *)base)[idx]);
    case FA_DTYPE_FP8_E4M3:
    case FA_DTYPE_FP8_E5M2: return fp8_bits_to_f32(((const uint8_t *)base)[idx], dtype);
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
    case FA_DTYPE_FP8_E4M3:
    case FA_DTYPE_FP8_E5M2:
        ((uint8_t *)base)[idx] = double_to_fp8_bits(value, dtype);
        break;
    default: ((float *)base)[idx] = (float)value; break;
    }
}

/* Quiet NaNs with a payload no arithmetic produces. */
static const uint32_t POISON_F32 = 0x7fc5a5a5u;
static const uint16_t POISON_F16 = 0x7e5au;
static const uint16_t POISON_BF16 = 0x7fe5u;
static const uint8_t POISON_FP8 = 0x7fu; /* NaN in e4m3 and e5m2 */

void store_poison(void *base, fa_dtype dtype, int64_t idx)
{
    switch (dtype) {
    case FA_DTYPE_F16: ((uint16_t *)base)[idx] = POISON_F16; break;
    case FA_DTYPE_BF16: ((uint16_t *)base)[idx] = POISON_BF16; break;
    case FA_DTYPE_FP8_E4M3:
    case FA_DTYPE_FP8_E5M2: ((uint8_t *)base)[idx] = POISON_FP8; break;
    default: memcpy((uint32_t *)base + idx, &POISON_F32, 4); break;
    }
}

int is_poison(const void *base, fa_dtype dtype, int64_t idx)
{
    switch (dtype) {
    case FA_DTYPE_F16: return ((const uint16_t *)base)[idx] == POISON_F16;
    case FA_DTYPE_BF16: return ((const uint16_t *)base)[idx] == POISON_BF16;
    case FA_DTYPE_FP8_E4M3:
    case FA_DTYPE_FP8_E5M2: return ((const uint8_t *)base)[idx] == POISON_FP8;
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
