/*
 * Checks of the harness pieces the tool's and the benchmark's verdicts rest
 * on: dtype rounding, the error measure, FLOP counting and the forked
 * memory measurement. Exit status 0 when every check passed.
 */
#include "harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

static void expect(int ok, const char *what)
{
    if (!ok) {
        printf("FAIL: %s\n", what);
        failures++;
    }
}

/* Every finite 16-bit pattern survives to float and back; NaNs stay NaN. */
static void check_round_trips(void)
{
    int f16_bad = 0, bf16_bad = 0;
    for (uint32_t bits = 0; bits <= 0xffffu; ++bits) {
        uint16_t h = (uint16_t)bits;
        float x = h_f16_to_f32(h);
        if (isnan(x) ? !isnan(h_f16_to_f32(h_f32_to_f16(x))) : h_f32_to_f16(x) != h)
            f16_bad++;
        float y = h_bf16_to_f32(h);
        if (isnan(y) ? !isnan(h_bf16_to_f32(h_f32_to_bf16(y))) : h_f32_to_bf16(y) != h)
            bf16_bad++;
    }
    expect(f16_bad == 0, "f16 round trip of all 65536 patterns");
    expect(bf16_bad == 0, "bf16 round trip of all 65536 patterns");
}

/* Ties go to even, overflow to infinity, tiny values to subnormals. */
static void check_rounding(void)
{
    expect(h_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00, "f16: tie 1+2^-11 -> 1");
    expect(h_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02, "f16: tie 1+3*2^-11 -> 1+2^-9");
    expect(h_f32_to_f16(65519.0f) == 0x7bff, "f16: 65519 -> 65504");
    expect(h_f32_to_f16(65520.0f) == 0x7c00, "f16: 65520 -> inf");
    expect(h_f32_to_f16(0x1p-24f) == 0x0001, "f16: 2^-24 -> smallest subnormal");
    expect(h_f32_to_f16(0x1p-25f) == 0x0000, "f16: 2^-25 (tie) -> 0");
    expect(h_f32_to_f16(-0x1p-14f) == 0x8400, "f16: -2^-14 -> smallest normal");
    expect(h_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80, "bf16: tie 1+2^-8 -> 1");
    expect(h_f32_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3f82, "bf16: tie 1+3*2^-8 -> 1+2^-6");
    expect(h_f32_to_bf16(-2.0f) == 0xc000, "bf16: -2");
#ifdef __FLT16_MAX__
    /* Against the compiler's own conversion, on random floats of every scale. */
    uint64_t state = 12345;
    int mismatches = 0;
    for (int i = 0; i < 1000000; ++i) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t bits = (uint32_t)(state >> 32);
        float x;
        memcpy(&x, &bits, sizeof x);
        if (isnan(x))
            continue;
        _Float16 reference = (_Float16)x;
        uint16_t expected;
        memcpy(&expected, &reference, sizeof expected);
        if (h_f32_to_f16(x) != expected)
            mismatches++;
    }
    expect(mismatches == 0, "f16 conversion equals the compiler's _Float16 on 1e6 floats");
#endif
}

static void check_compare(void)
{
    float ref[4] = {1.0f, -2.0f, -INFINITY, 0.5f};
    float same[4] = {1.0f, -2.0f, -INFINITY, 0.5f};
    float off[4] = {1.0f, -2.5f, -INFINITY, 0.5f};
    float nan_got[4] = {1.0f, NAN, -INFINITY, 0.5f};
    float lost_inf[4] = {1.0f, -2.0f, 0.0f, 0.5f};
    expect(h_compare(same, FA_DTYPE_F32, ref, 4).rel_err == 0.0, "compare: equal");
    expect(fabs(h_compare(off, FA_DTYPE_F32, ref, 4).rel_err - 0.25) < 1e-12,
           "compare: rel err = 0.5 / 2");
    expect(isinf(h_compare(nan_got, FA_DTYPE_F32, ref, 4).max_abs_err), "compare: NaN fails");
    expect(isinf(h_compare(lost_inf, FA_DTYPE_F32, ref, 4).max_abs_err),
           "compare: -inf must stay -inf");
}

static void check_flops(void)
{
    fa_attn a;
    fa_attn_init(&a);
    a.batch = 2;
    a.seqlen_q = a.seqlen_k = 100;
    a.heads_q = a.heads_kv = 3;
    a.head_dim = 64;
    expect(h_attention_flops(&a) == 4.0 * 2 * 3 * 100 * 100 * 64, "flops: dense");
    a.causal = 1;
    expect(h_attention_flops(&a) == 2.0 * 2 * 3 * 100 * 100 * 64, "flops: causal is half");
    a.causal = 0;
    a.window_left = 0;
    a.window_right = 0; /* the diagonal only: 100 pairs */
    expect(h_attention_flops(&a) == 4.0 * 2 * 3 * 100 * 64, "flops: window (0, 0)");
}

/* A job that allocates and touches 32 MiB, then frees it, must measure
 * about 32 MiB; one that does nothing, about 0. */
typedef struct alloc_args {
    size_t bytes;
} alloc_args;

static int alloc_open(void *arg, void **state, char *message, size_t len)
{
    *state = arg;
    return 0;
}

static int alloc_run(void *state, int phase, char *message, size_t len)
{
    alloc_args *a = state;
    if (a->bytes == 0)
        return 0;
    /* volatile stores: the compiler may not drop them as dead */
    volatile char *block = malloc(a->bytes);
    if (!block)
        return snprintf(message, len, "malloc failed"), 1;
    for (size_t offset = 0; offset < a->bytes; offset += 4096)
        block[offset] = 1;
    free((void *)block);
    return 0;
}

static int alloc_close(void *state, char *message, size_t len) { return 0; }

static void check_memory_measurement(void)
{
    const double mib = 1048576.0;
    size_t sizes[2] = {32u << 20, 0};
    for (int i = 0; i < 2; ++i) {
        alloc_args args = {sizes[i]};
        h_job job = {&args, alloc_open, alloc_run, alloc_close, 1, 0, 1};
        h_job_result r;
        int rc = h_run_job(&job, NULL, 0, &r);
        double measured = (double)r.phase[0].peak_extra_bytes;
        printf("memory job of %.0f MiB: measured %.2f MiB\n", sizes[i] / mib, measured / mib);
        expect(rc == 0 && r.ok, "memory job ran");
        expect(fabs(measured - (double)sizes[i]) < 1.0 * mib,
               "measured peak within 1 MiB of the allocation");
    }
}

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1 /* its allocator's shadow and quarantine change the RSS */
#else
#define UNDER_ASAN 0
#endif

int main(void)
{
    check_round_trips();
    check_rounding();
    check_compare();
    check_flops();
    if (!UNDER_ASAN)
        check_memory_measurement();
    printf("%s%s\n", failures ? "FAILED" : "OK",
           UNDER_ASAN ? " (memory measurement NOT checked: AddressSanitizer build)" : "");
    return failures ? 1 : 0;
}
