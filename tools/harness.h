/*
 * Shared by the command-line tool (tools/flashattn-run.c) and the CPU
 * benchmark (bench/cpu_bench.c): random inputs, dtype conversion, timing,
 * error measurement, and running one measured job in a forked child so that
 * its peak extra memory can be read from the kernel.
 *
 * Why a child process: the peak resident set (VmHWM in /proc/self/status)
 * is a high-water mark that never goes down in a process. A fresh child
 * starts with the parent's resident set as its baseline; whatever its peak
 * grows by while the job runs is the job's peak extra memory, including
 * memory the job allocated and freed again. Before the baseline the child
 * maps the pages of the shared buffers (outputs the parent reads back) and
 * of the loaded libraries' files, so that neither counts as the job's.
 * What the call itself adds is included: the touched stack of the OpenMP
 * pool's threads, allocator bookkeeping.
 *
 * The parent must not have started an OpenMP thread pool before forking
 * (GNU libgomp does not survive fork), so every OpenMP-using computation
 * runs inside a child.
 */
#ifndef FA_HARNESS_H
#define FA_HARNESS_H

#include "flashattn.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---------------------------------------------------------------------- */
/* Element conversion (round to nearest even)                              */

uint16_t h_f32_to_bf16(float x);
float h_bf16_to_f32(uint16_t x);
uint16_t h_f32_to_f16(float x);
float h_f16_to_f32(uint16_t x);

/* Element i of an array of dtype (f32, f16 or bf16) as a float. */
float h_load(const void *data, fa_dtype dtype, int64_t i);
/* data (n elements of dtype) = src (n floats), rounded. */
void h_store_all(void *data, fa_dtype dtype, const float *src, int64_t n);
/* dst (n floats) = data (n elements of dtype). */
void h_load_all(float *dst, const void *data, fa_dtype dtype, int64_t n);

/* ---------------------------------------------------------------------- */
/* Random inputs                                                           */

/* values (n) = standard normal samples rounded to dtype, and, if values32
 * is not NULL, the same (already rounded) values as floats. The stream is a
 * pure function of seed. */
void h_fill_normal(void *values, float *values32, fa_dtype dtype, int64_t n,
                   uint64_t seed);

/* ---------------------------------------------------------------------- */
/* Time and statistics                                                     */

double h_now_seconds(void); /* monotonic clock */
/* Median of n values (reorders them). */
double h_median(double *values, int n);

/* ---------------------------------------------------------------------- */
/* Errors of a result against a reference                                  */

typedef struct h_error {
    double max_abs_err; /* max |got - ref|; inf if an -inf/NaN disagrees */
    double max_abs_ref; /* max |ref| over finite entries */
    double rel_err;     /* max_abs_err / max_abs_ref (abs error if ref is 0) */
} h_error;

/* Largest acceptable rel_err of a flash result in dtype against an fp32
 * computation of the same rounded inputs (out, dq, dk, dv; lse, computed in
 * fp32 by every backend, is held to H_LSE_TOLERANCE). */
double h_tolerance(fa_dtype dtype);
#define H_LSE_TOLERANCE 1e-4

/* got (n elements of dtype) against ref (n floats). -inf entries (empty
 * rows' lse) match only -inf; a NaN in got is an infinite error. */
h_error h_compare(const void *got, fa_dtype dtype, const float *ref, int64_t n);

/* ---------------------------------------------------------------------- */
/* Shared buffers                                                          */

/* A request for one buffer: *slot receives its address. */
typedef struct h_buffer {
    void **slot;
    size_t bytes;
} h_buffer;

/* Lays the buffers out (64-byte aligned) in one shared anonymous mapping,
 * touches every page, and returns it (NULL on failure); *total_bytes is its
 * size, for h_shared_free and h_run_job. */
void *h_shared_buffers(const h_buffer *buffers, int count, size_t *total_bytes);
void h_shared_free(void *base, size_t total_bytes);

/* ---------------------------------------------------------------------- */
/* Measured jobs                                                           */

#define H_MAX_PHASES 4
#define H_MAX_REPS 1000
#define H_MESSAGE_LEN 512

/*
 * A job: open() prepares state (a library context, private buffers), then
 * each phase (e.g. 0 = forward, 1 = backward) runs `warmup` untimed and
 * `reps` timed times, in order, then close(). Each callback returns 0 on
 * success or nonzero after writing a message.
 */
typedef struct h_job {
    void *arg;
    int (*open)(void *arg, void **state, char *message, size_t message_len);
    int (*run)(void *state, int phase, char *message, size_t message_len);
    /* Always called after a successful open(), also after a failure; may
     * fail itself (e.g. copying results back from a device). */
    int (*close)(void *state, char *message, size_t message_len);
    int num_phases;
    int warmup;
    int reps;
} h_job;

typedef struct h_phase_result {
    double median_s;
    double min_s;
    /* Measured: the child's max RSS after this phase minus its baseline
     * (taken after the shared buffers were mapped, before open()); so it
     * includes what open() and the earlier phases still hold. -1 when not
     * measured (h_run_job_here). */
    int64_t peak_extra_bytes;
} h_phase_result;

typedef struct h_job_result {
    int ok;
    char message[H_MESSAGE_LEN];
    h_phase_result phase[H_MAX_PHASES];
} h_job_result;

/* Runs the job in a forked child that first touches [shared,
 * shared+shared_bytes) (NULL, 0: nothing shared). Returns 0 when the child ran (result->ok says
 * whether the job succeeded), nonzero if fork/pipe failed. A child killed by
 * a signal (e.g. the OOM killer) gives ok = 0 and a message. */
int h_run_job(const h_job *job, void *shared, size_t shared_bytes,
              h_job_result *result);

/* The same timing in this process, without measuring memory: for work that
 * must not fork (a CUDA context). Returns 0. */
int h_run_job_here(const h_job *job, h_job_result *result);

/* ---------------------------------------------------------------------- */
/* The library as a job                                                    */

/* Contiguous tensors of one call, in the dtype of the problem (lse fp32);
 * host or device pointers. */
typedef struct h_tensors {
    void *q, *k, *v, *dout;
    void *out, *dq, *dk, *dv;
    float *lse;
} h_tensors;

/* The nine pointers of t, in the order q, k, v, dout, out, dq, dk, dv, lse,
 * and the element counts of those tensors for a fixed-length problem. */
void h_tensor_slots(h_tensors *t, void **slots[9]);
void h_tensor_numel(const fa_attn *attn, int64_t numel[9]);

/* What a flash job reports besides timings (put it in shared memory). */
typedef struct h_flash_info {
    size_t workspace_bytes[2]; /* the library's query: forward, backward */
    char kernel[2][64];        /* fa_context_last_kernel after each pass */
} h_flash_info;

typedef struct h_flash_job_args {
    const fa_attn *attn;
    fa_device device;
    int threads; /* CPU threads, 0 = all cores */
    h_tensors tensors;
    h_flash_info *info;
    /* Called after every call (e.g. to wait for the GPU); NULL if none. */
    int (*synchronize)(char *message, size_t message_len);
} h_flash_job_args;

/* Phase 0 runs fa_forward, phase 1 fa_backward, with the workspace the
 * library allocates and caches in the job's own context. */
h_job h_flash_job(h_flash_job_args *args, int warmup, int reps);

/* ---------------------------------------------------------------------- */
/* Attention sizes                                                         */

/* FLOPs of the forward as FlashAttention counts them:
 * 2·b·hq·(d + dv)·pairs, pairs = sq·sk, halved if causal without a left
 * window; with any other window, pairs is the exact count of visible
 * (i, j). The backward is 2.5× this. */
double h_attention_flops(const fa_attn *attn);

/* Number of elements of each tensor of a fixed-length problem. */
int64_t h_numel_q(const fa_attn *attn);
int64_t h_numel_k(const fa_attn *attn);
int64_t h_numel_v(const fa_attn *attn);
int64_t h_numel_out(const fa_attn *attn);
int64_t h_numel_lse(const fa_attn *attn);

/* "12.3 MiB" style into buf. */
const char *h_format_bytes(double bytes, char *buf, size_t len);

/* ---- command-line parsing and JSON, shared by the programs ---------------- */

/* The program name in messages ("flashattn-run: ..."). */
void h_set_program(const char *name);
/* Prints "<program>: <message>" and a --help hint to stderr; returns 2, the
 * exit status for bad input. */
int h_bad_input(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Whole-string integer in [min, max]; 0, or h_bad_input's 2. */
int h_parse_int(const char *option, const char *text, int64_t min, int64_t max,
                int64_t *value);
/* Whole-string number in [min, max_excl); 0, or h_bad_input's 2. */
int h_parse_double(const char *option, const char *text, double min, double max_excl,
                   double *value);
/* h_bad_input for the option getopt_long just refused: a long option by
 * its argument, a short one (also inside a group such as -xy) by optopt. */
int h_bad_option(char *const *argv);
/* s as a quoted, escaped JSON string. */
void h_json_string(FILE *f, const char *s);
/* x as a JSON number (%.6g), or null for NaN / inf, which JSON lacks. */
void h_json_number(FILE *f, double x);

#endif /* FA_HARNESS_H */
