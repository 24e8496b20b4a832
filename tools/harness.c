/* See harness.h. */
#define _GNU_SOURCE
#include "harness.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <malloc.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------------- */
/* Element conversion                                                      */

static uint32_t bits_of(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float float_of(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

uint16_t h_f32_to_bf16(float x)
{
    uint32_t u = bits_of(x);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float h_bf16_to_f32(uint16_t x) { return float_of((uint32_t)x << 16); }

uint16_t h_f32_to_f16(float x)
{
    uint32_t u = bits_of(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t mag = u & 0x7fffffffu;
    if (mag > 0x7f800000u)
        return sign | 0x7e00u; /* NaN */
    if (mag >= 0x477ff000u)    /* >= 65520 rounds to infinity */
        return sign | 0x7c00u;
    if (mag < 0x38800000u) {   /* below 2^-14: a subnormal half (or 0) */
        /* Scaling by 2^24 is exact; rounding the integer is the RNE. */
        long units = lrintf(float_of(mag) * 16777216.0f);
        return sign | (uint16_t)units;
    }
    uint32_t half = ((mag >> 23) - 112u) << 10 | (mag & 0x7fffffu) >> 13;
    uint32_t rest = mag & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u)))
        half += 1; /* a carry into the exponent is still correct */
    return sign | (uint16_t)half;
}

float h_f16_to_f32(uint16_t x)
{
    uint32_t sign = (uint32_t)(x & 0x8000u) << 16;
    uint32_t exponent = (x >> 10) & 0x1fu;
    uint32_t mantissa = x & 0x3ffu;
    if (exponent == 0) {
        float value = (float)mantissa * (1.0f / 16777216.0f);
        return float_of(sign | bits_of(value));
    }
    if (exponent == 31)
        return float_of(sign | 0x7f800000u | mantissa << 13);
    return float_of(sign | (exponent + 112u) << 23 | mantissa << 13);
}

float h_load(const void *data, fa_dtype dtype, int64_t i)
{
    switch (dtype) {
    case FA_DTYPE_F16: return h_f16_to_f32(((const uint16_t *)data)[i]);
    case FA_DTYPE_BF16: return h_bf16_to_f32(((const uint16_t *)data)[i]);
    default: return ((const float *)data)[i];
    }
}

void h_store_all(void *data, fa_dtype dtype, const float *src, int64_t n)
{
    for (int64_t i = 0; i < n; ++i) {
        switch (dtype) {
        case FA_DTYPE_F16: ((uint16_t *)data)[i] = h_f32_to_f16(src[i]); break;
        case FA_DTYPE_BF16: ((uint16_t *)data)[i] = h_f32_to_bf16(src[i]); break;
        default: ((float *)data)[i] = src[i]; break;
        }
    }
}

void h_load_all(float *dst, const void *data, fa_dtype dtype, int64_t n)
{
    for (int64_t i = 0; i < n; ++i)
        dst[i] = h_load(data, dtype, i);
}

/* ---------------------------------------------------------------------- */
/* Random inputs: splitmix64 + Box-Muller                                  */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1]: never 0, so that log() below is finite. */
static double uniform_open0(uint64_t *state)
{
    return ((double)(splitmix64(state) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

void h_fill_normal(void *values, float *values32, fa_dtype dtype, int64_t n,
                   uint64_t seed)
{
    const double two_pi = 6.283185307179586;
    uint64_t state = seed;
    for (int64_t i = 0; i < n; i += 2) {
        double radius = sqrt(-2.0 * log(uniform_open0(&state)));
        double angle = two_pi * uniform_open0(&state);
        float pair[2] = {(float)(radius * cos(angle)), (float)(radius * sin(angle))};
        for (int64_t t = 0; t < 2 && i + t < n; ++t) {
            float rounded = pair[t];
            switch (dtype) {
            case FA_DTYPE_F16:
                ((uint16_t *)values)[i + t] = h_f32_to_f16(pair[t]);
                rounded = h_f16_to_f32(((uint16_t *)values)[i + t]);
                break;
            case FA_DTYPE_BF16:
                ((uint16_t *)values)[i + t] = h_f32_to_bf16(pair[t]);
                rounded = h_bf16_to_f32(((uint16_t *)values)[i + t]);
                break;
            default: ((float *)values)[i + t] = pair[t]; break;
            }
            if (values32)
                values32[i + t] = rounded;
        }
    }
}

/* ---------------------------------------------------------------------- */
/* Time and statistics                                                     */

double h_now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double h_median(double *values, int n)
{
    if (n <= 0)
        return NAN;
    qsort(values, (size_t)n, sizeof *values, compare_doubles);
    return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

/* ---------------------------------------------------------------------- */
/* Errors                                                                  */

double h_tolerance(fa_dtype dtype)
{
    switch (dtype) {
    case FA_DTYPE_F32: return 1e-4;
    case FA_DTYPE_F16: return 5e-3;
    default: return 2e-2;
    }
}

h_error h_compare(const void *got, fa_dtype dtype, const float *ref, int64_t n)
{
    h_error e = {0.0, 0.0, 0.0};
    for (int64_t i = 0; i < n; ++i) {
        double g = h_load(got, dtype, i), r = ref[i];
        double diff;
        if (isnan(g) || isnan(r))
            diff = INFINITY;
        else if (isinf(r) || isinf(g))
            diff = g == r ? 0.0 : INFINITY;
        else
            diff = fabs(g - r);
        if (!(diff <= e.max_abs_err)) /* also catches a first NaN */
            e.max_abs_err = diff;
        if (isfinite(r) && fabs(r) > e.max_abs_ref)
            e.max_abs_ref = fabs(r);
    }
    e.rel_err = e.max_abs_ref > 0 ? e.max_abs_err / e.max_abs_ref : e.max_abs_err;
    return e;
}

/* ---------------------------------------------------------------------- */
/* Shared buffers                                                          */

static size_t align64(size_t bytes) { return (bytes + 63) & ~(size_t)63; }

void *h_shared_buffers(const h_buffer *buffers, int count, size_t *total_bytes)
{
    size_t total = 0;
    for (int i = 0; i < count; ++i)
        total += align64(buffers[i].bytes);
    if (total == 0)
        total = 64;
    void *base = mmap(NULL, total, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return NULL;
    memset(base, 0, total); /* commit every page now, not inside a job */
    size_t offset = 0;
    for (int i = 0; i < count; ++i) {
        *buffers[i].slot = (char *)base + offset;
        offset += align64(buffers[i].bytes);
    }
    *total_bytes = total;
    return base;
}

void h_shared_free(void *base, size_t total_bytes)
{
    if (base)
        munmap(base, total_bytes);
}

/* ---------------------------------------------------------------------- */
/* Measured jobs                                                           */

/* The process's peak resident set. VmHWM (/proc/self/status) is summed
 * exactly; getrusage's ru_maxrss reads the kernel's per-CPU RSS counters
 * without summing them and can lag by a few hundred KiB, so it is only the
 * fallback. */
static int64_t max_rss_bytes(void)
{
    FILE *status = fopen("/proc/self/status", "r");
    char line[256];
    long long kib = -1;
    while (status && fgets(line, sizeof line, status))
        if (sscanf(line, "VmHWM: %lld kB", &kib) == 1)
            break;
    if (status)
        fclose(status);
    if (kib < 0) {
        struct rusage usage;
        getrusage(RUSAGE_SELF, &usage);
        kib = usage.ru_maxrss; /* Linux reports KiB */
    }
    return (int64_t)kib * 1024;
}

/* Sets the peak (VmHWM) to the current RSS, so that what the steps before
 * the baseline touched and released does not hide the job's growth. Linux
 * >= 4.0; where it fails the baseline may be a little high. */
static void reset_peak_rss(void)
{
    FILE *clear_refs = fopen("/proc/self/clear_refs", "w");
    if (clear_refs) {
        fputs("5", clear_refs);
        fclose(clear_refs);
    }
}

/* Shared pages are not in a forked child's page tables until touched;
 * touch them so that the baseline already counts them. */
static void touch_pages(const volatile char *base, size_t bytes)
{
    long page = sysconf(_SC_PAGESIZE);
    for (size_t offset = 0; offset < bytes; offset += (size_t)page)
        (void)base[offset];
}

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* Linux 5.14 */
#endif

/* A forked child does not inherit the page tables of file mappings (code of
 * the libraries): the pages it executes would count as the job's memory.
 * Map them all before the baseline. Best effort: older kernels lack
 * MADV_POPULATE_READ, and then code pages stay in the measurement. */
static void populate_file_mappings(void)
{
    FILE *maps = fopen("/proc/self/maps", "r");
    if (!maps)
        return;
    char line[4096];
    while (fgets(line, sizeof line, maps)) {
        unsigned long start, end;
        char perms[8];
        int path_at = 0;
        if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %n", &start, &end, perms, &path_at) < 3)
            continue;
        if (path_at > 0 && line[path_at] == '/' && perms[0] == 'r')
            madvise((void *)start, end - start, MADV_POPULATE_READ);
    }
    fclose(maps);
}

/* The timing loop; measures peak memory when measure_memory. */
static void run_job_body(const h_job *job, int measure_memory, h_job_result *result)
{
    memset(result, 0, sizeof *result);
    int64_t baseline = measure_memory ? max_rss_bytes() : 0;
    void *state = NULL;
    if (job->open(job->arg, &state, result->message, sizeof result->message))
        return;
    double times[H_MAX_REPS];
    int failed = 0;
    for (int phase = 0; phase < job->num_phases && !failed; ++phase) {
        for (int rep = 0; rep < job->warmup + job->reps && !failed; ++rep) {
            double start = h_now_seconds();
            failed = job->run(state, phase, result->message, sizeof result->message);
            if (rep >= job->warmup)
                times[rep - job->warmup] = h_now_seconds() - start;
        }
        if (failed)
            break;
        h_phase_result *out = &result->phase[phase];
        out->peak_extra_bytes = measure_memory ? max_rss_bytes() - baseline : -1;
        out->median_s = h_median(times, job->reps);
        out->min_s = times[0]; /* h_median sorted them */
    }
    if (failed) {
        char ignored[H_MESSAGE_LEN];
        job->close(state, ignored, sizeof ignored);
        return;
    }
    result->ok = !job->close(state, result->message, sizeof result->message);
}

static int job_is_valid(const h_job *job, h_job_result *result)
{
    memset(result, 0, sizeof *result);
    if (job->num_phases >= 1 && job->num_phases <= H_MAX_PHASES && job->reps >= 1 &&
        job->reps <= H_MAX_REPS && job->warmup >= 0)
        return 1;
    snprintf(result->message, sizeof result->message,
             "bad job: %d phases, %d reps, %d warm-up", job->num_phases, job->reps,
             job->warmup);
    return 0;
}

int h_run_job_here(const h_job *job, h_job_result *result)
{
    if (job_is_valid(job, result))
        run_job_body(job, 0, result);
    return 0;
}

static int write_all(int fd, const void *data, size_t bytes)
{
    const char *p = data;
    while (bytes > 0) {
        ssize_t n = write(fd, p, bytes);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        bytes -= (size_t)n;
    }
    return 0;
}

static size_t read_all(int fd, void *data, size_t bytes)
{
    char *p = data;
    size_t got = 0;
    while (got < bytes) {
        ssize_t n = read(fd, p + got, bytes - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    return got;
}

int h_run_job(const h_job *job, void *shared, size_t shared_bytes,
              h_job_result *result)
{
    if (!job_is_valid(job, result))
        return 0;
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    fflush(NULL); /* the child must not flush the parent's buffered output */
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        close(fds[0]);
        h_job_result child_result;
        touch_pages(shared, shared_bytes);
        populate_file_mappings();
#ifdef __GLIBC__
        /* Free heap pages inherited from the parent are resident: the job's
         * allocations could reuse them without growing the RSS. */
        malloc_trim(0);
#endif
        reset_peak_rss();
        run_job_body(job, 1, &child_result);
        int rc = write_all(fds[1], &child_result, sizeof child_result);
        _exit(rc == 0 ? 0 : 1);
    }
    close(fds[1]);
    size_t got = read_all(fds[0], result, sizeof *result);
    close(fds[0]);
    int wstatus = 0;
    while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
    }
    if (got != sizeof *result) {
        memset(result, 0, sizeof *result);
        if (WIFSIGNALED(wstatus))
            snprintf(result->message, sizeof result->message,
                     "the measuring child was killed by signal %d (%s)%s",
                     WTERMSIG(wstatus), strsignal(WTERMSIG(wstatus)),
                     WTERMSIG(wstatus) == SIGKILL ? ", out of memory?" : "");
        else
            snprintf(result->message, sizeof result->message,
                     "the measuring child exited (status %d) without a result",
                     WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1);
    }
    return 0;
}

/* ---------------------------------------------------------------------- */
/* The library as a job                                                    */

void h_tensor_slots(h_tensors *t, void **slots[9])
{
    void **p[9] = {&t->q, &t->k, &t->v, &t->dout, &t->out, &t->dq, &t->dk, &t->dv,
                   (void **)&t->lse};
    memcpy(slots, p, sizeof p);
}

void h_tensor_numel(const fa_attn *a, int64_t numel[9])
{
    int64_t n[9] = {h_numel_q(a), h_numel_k(a), h_numel_v(a), h_numel_out(a),
                    h_numel_out(a), h_numel_q(a), h_numel_k(a), h_numel_v(a),
                    h_numel_lse(a)};
    memcpy(numel, n, sizeof n);
}

typedef struct flash_state {
    h_flash_job_args *args;
    fa_context *ctx;
    fa_tensor q, k, v, dout, out, dq, dk, dv;
} flash_state;

static int library_error(const char *call, fa_status st, char *message, size_t len)
{
    snprintf(message, len, "%s: %s: %s", call, fa_status_string(st), fa_last_error());
    return 1;
}

static int flash_open(void *arg, void **state, char *message, size_t len)
{
    h_flash_job_args *args = arg;
    const fa_attn *a = args->attn;
    flash_state *s = calloc(1, sizeof *s);
    if (!s)
        return snprintf(message, len, "out of memory"), 1;
    s->args = args;
    fa_status st = fa_context_create(&s->ctx, args->device, 0);
    if (st == FA_SUCCESS &&
        ((st = fa_context_set_num_threads(s->ctx, args->threads)) ||
         (st = fa_forward_workspace_size(s->ctx, a, &args->info->workspace_bytes[0])) ||
         (st = fa_backward_workspace_size(s->ctx, a, &args->info->workspace_bytes[1]))))
        fa_context_destroy(s->ctx);
    if (st) {
        free(s);
        return library_error("flashattn setup", st, message, len);
    }
    int64_t dv = a->head_dim_v > 0 ? a->head_dim_v : a->head_dim;
    const h_tensors *t = &args->tensors;
    s->q = fa_tensor_contiguous(t->q, a->seqlen_q, a->heads_q, a->head_dim);
    s->k = fa_tensor_contiguous(t->k, a->seqlen_k, a->heads_kv, a->head_dim);
    s->v = fa_tensor_contiguous(t->v, a->seqlen_k, a->heads_kv, dv);
    s->dout = fa_tensor_contiguous(t->dout, a->seqlen_q, a->heads_q, dv);
    s->out = fa_tensor_contiguous(t->out, a->seqlen_q, a->heads_q, dv);
    s->dq = fa_tensor_contiguous(t->dq, a->seqlen_q, a->heads_q, a->head_dim);
    s->dk = fa_tensor_contiguous(t->dk, a->seqlen_k, a->heads_kv, a->head_dim);
    s->dv = fa_tensor_contiguous(t->dv, a->seqlen_k, a->heads_kv, dv);
    *state = s;
    return 0;
}

static int flash_run(void *state, int phase, char *message, size_t len)
{
    flash_state *s = state;
    h_flash_job_args *args = s->args;
    fa_status st;
    if (phase == 0)
        st = fa_forward(s->ctx, args->attn, &s->q, &s->k, &s->v, &s->out,
                        args->tensors.lse, NULL, 0);
    else
        st = fa_backward(s->ctx, args->attn, &s->q, &s->k, &s->v, &s->out,
                         args->tensors.lse, &s->dout, &s->dq, &s->dk, &s->dv, NULL, 0);
    if (st)
        return library_error(phase == 0 ? "fa_forward" : "fa_backward", st, message, len);
    if (args->synchronize && args->synchronize(message, len))
        return 1;
    snprintf(args->info->kernel[phase], sizeof args->info->kernel[phase], "%s",
             fa_context_last_kernel(s->ctx));
    return 0;
}

static int flash_close(void *state, char *message, size_t len)
{
    flash_state *s = state;
    fa_context_destroy(s->ctx);
    free(s);
    return 0;
}

h_job h_flash_job(h_flash_job_args *args, int warmup, int reps)
{
    h_job job = {args, flash_open, flash_run, flash_close, 2, warmup, reps};
    return job;
}

/* ---------------------------------------------------------------------- */
/* Attention sizes                                                         */

static int64_t head_dim_v_of(const fa_attn *attn)
{
    return attn->head_dim_v > 0 ? attn->head_dim_v : attn->head_dim;
}

/* Visible (i, j) pairs of one (batch, head) under the window. */
static double visible_pairs(const fa_attn *attn)
{
    int64_t sq = attn->seqlen_q, sk = attn->seqlen_k, shift = sk - sq;
    int64_t left = attn->window_left, right = attn->causal ? 0 : attn->window_right;
    if (left < 0 && right < 0)
        return (double)sq * (double)sk;
    if (left < 0 && attn->causal)
        return 0.5 * (double)sq * (double)sk; /* FlashAttention's convention */
    double pairs = 0;
    for (int64_t i = 0; i < sq; ++i) {
        int64_t lo = left < 0 ? 0 : i + shift - left;
        int64_t hi = right < 0 ? sk : i + shift + right + 1;
        lo = lo < 0 ? 0 : lo;
        hi = hi > sk ? sk : hi;
        if (hi > lo)
            pairs += (double)(hi - lo);
    }
    return pairs;
}

double h_attention_flops(const fa_attn *attn)
{
    return 2.0 * (double)attn->batch * (double)attn->heads_q *
           (double)(attn->head_dim + head_dim_v_of(attn)) * visible_pairs(attn);
}

int64_t h_numel_q(const fa_attn *a) { return a->batch * a->seqlen_q * a->heads_q * a->head_dim; }
int64_t h_numel_k(const fa_attn *a) { return a->batch * a->seqlen_k * a->heads_kv * a->head_dim; }
int64_t h_numel_v(const fa_attn *a) { return a->batch * a->seqlen_k * a->heads_kv * head_dim_v_of(a); }
int64_t h_numel_out(const fa_attn *a) { return a->batch * a->seqlen_q * a->heads_q * head_dim_v_of(a); }
int64_t h_numel_lse(const fa_attn *a) { return a->batch * a->heads_q * a->seqlen_q; }

const char *h_format_bytes(double bytes, char *buf, size_t len)
{
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    double value = bytes;
    while (fabs(value) >= 1024.0 && u < 4) {
        value /= 1024.0;
        ++u;
    }
    snprintf(buf, len, u == 0 ? "%.0f %s" : "%.1f %s", value, units[u]);
    return buf;
}

/* ---------------------------------------------------------------------- */
/* Command-line parsing and JSON                                           */

static const char *program_name = "flashattn";

void h_set_program(const char *name) { program_name = name; }

int h_bad_input(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    fprintf(stderr, "%s: ", program_name);
    vfprintf(stderr, fmt, args);
    fprintf(stderr, "\n(see %s --help)\n", program_name);
    va_end(args);
    return 2;
}

int h_parse_int(const char *option, const char *text, int64_t min, int64_t max,
                int64_t *value)
{
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text || *end != '\0' || v < min || v > max)
        return h_bad_input("%s: bad value '%s' (an integer in [%lld, %lld])", option, text,
                           (long long)min, (long long)max);
    *value = v;
    return 0;
}

int h_parse_double(const char *option, const char *text, double min, double max_excl,
                   double *value)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end != '\0' || !(v >= min) || !(v < max_excl))
        return h_bad_input("%s: bad value '%s' (a number in [%g, %g))", option, text, min,
                           max_excl);
    *value = v;
    return 0;
}

int h_bad_option(char *const *argv)
{
    const char *arg = argv[optind - 1];
    if (strncmp(arg, "--", 2) != 0 && optopt > 0 && optopt < 128 && isprint(optopt))
        return h_bad_input("-%c: unknown option or missing value", optopt);
    return h_bad_input("%s: unknown option or missing value", arg);
}

void h_json_number(FILE *f, double x)
{
    if (isfinite(x))
        fprintf(f, "%.6g", x);
    else
        fprintf(f, "null");
}

void h_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; ++s) {
        if (*s == '"' || *s == '\\')
            fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            fprintf(f, "\\u%04x", *s);
        else
            fputc(*s, f);
    }
    fputc('"', f);
}
