/*
 * Helpers shared by the test programs: dtype rounding (f16/bf16 and the FP8
 * formats emulated on the host, written from the format definitions and
 * independent of the library's conversions, so that every reference sees
 * exactly the stored inputs and the tests cross-check the library), a seeded
 * random generator, strided views over poisoned host buffers, and error
 * reporting. Only the public API (flashattn.h) is used.
 */
#ifndef FA_TESTLIB_H
#define FA_TESTLIB_H

#include "flashattn.h"

#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------------- */
/* Random numbers: splitmix64, reproducible from one seed.                */

typedef struct test_rng {
    uint64_t state;
} test_rng;

void rng_seed(test_rng *r, uint64_t seed);
uint64_t rng_next(test_rng *r);
double rng_uniform(test_rng *r);                     /* [0, 1) */
int64_t rng_int(test_rng *r, int64_t lo, int64_t hi); /* [lo, hi] */
double rng_normal(test_rng *r);                      /* N(0, 1) */

/* ---------------------------------------------------------------------- */
/* dtypes                                                                  */

uint16_t f32_to_f16_bits(float x);  /* round to nearest even */
float f16_bits_to_f32(uint16_t h);
uint16_t f32_to_bf16_bits(float x); /* round to nearest even */
float bf16_bits_to_f32(uint16_t h);

/* OCP 8-bit floats: e4m3 (bias 7, no infinity, NaN 0x7f / 0xff, max 448)
 * and e5m2 (bias 15, IEEE-like, max 57344). */
int dtype_is_fp8(fa_dtype dtype);
double fp8_max(fa_dtype dtype);
float fp8_bits_to_f32(uint8_t bits, fa_dtype dtype);
/* Nearest, ties to the even bit pattern; beyond the largest finite value
 * (infinity included) saturated to it; NaN -> 0x7f (with x's sign). From
 * a double, so that no intermediate float rounding can move a tie. */
uint8_t double_to_fp8_bits(double x, fa_dtype dtype);

/* The dtype of out (and dout) of a problem in dtype: bf16 for FP8. */
fa_dtype out_dtype_of(fa_dtype dtype);

/* x rounded to the nearest value representable in dtype. */
double round_to_dtype(double x, fa_dtype dtype);
/* Unit roundoff: 2^-24 (f32), 2^-11 (f16), 2^-8 (bf16), 2^-4 (e4m3),
 * 2^-3 (e5m2). */
double dtype_unit_roundoff(fa_dtype dtype);

/* Element idx of an array of dtype, as a double / stored with rounding. */
double load_elem(const void *base, fa_dtype dtype, int64_t idx);
void store_elem(void *base, fa_dtype dtype, int64_t idx, double value);
/* The NaN bit pattern used to poison outputs before a call (0x7f for the
 * FP8 formats: NaN in both). */
void store_poison(void *base, fa_dtype dtype, int64_t idx);
int is_poison(const void *base, fa_dtype dtype, int64_t idx);

/* ---------------------------------------------------------------------- */
/* Buffers and strided views                                               */

/* Guard elements before and after every buffer's payload: writes there
 * (a kernel running off its view) are detected as changed poison. */
#define TEST_GUARD 16

/* A host allocation of `count` elements of `dtype` (plus guards), with an
 * optional device mirror for CUDA runs. */
typedef struct test_buffer {
    fa_dtype dtype;
    int64_t count;   /* payload elements */
    void *host;      /* count + 2*TEST_GUARD elements */
    void *device;    /* NULL for CPU runs */
} test_buffer;

/* A (batch, seqlen, heads, dim) view into a buffer; for packed varlen
 * tensors batch = 1 and seqlen = total tokens. Element (b, s, h, x) lives at
 * offset + b*stride_batch + s*stride_seq + h*stride_head + x. */
typedef struct test_view {
    test_buffer *buf;
    int64_t offset;
    int64_t batch, seqlen, heads, dim;
    int64_t stride_batch, stride_seq, stride_head;
} test_view;

void buffer_alloc(test_buffer *buf, fa_dtype dtype, int64_t count);
void buffer_free(test_buffer *buf);
void buffer_poison(test_buffer *buf); /* payload and guards */

int64_t view_index(const test_view *v, int64_t b, int64_t s, int64_t h,
                   int64_t x);
double view_get(const test_view *v, int64_t b, int64_t s, int64_t h,
                int64_t x);
void view_set(const test_view *v, int64_t b, int64_t s, int64_t h, int64_t x,
              double value);
/* The fa_tensor the library sees (host or device pointer). */
fa_tensor view_tensor(const test_view *v, int on_device);

/* ---------------------------------------------------------------------- */
/* Misc                                                                    */

double now_seconds(void);
void *xmalloc(size_t bytes);    /* exits on failure: test infrastructure */
void *xcalloc(size_t n, size_t size);

#endif /* FA_TESTLIB_H */
