/*
 * flashattn-bench-cpu: the CPU backend against standard attention on
 * OpenBLAS, in one run.
 *
 *  1. The machine's f32 FMA peak, measured here: independent FMA chains on
 *     every thread (AVX-512 and AVX2 where available; the best is the peak).
 *  2. Timing grid: forward and backward, f32 and bf16, head_dim 64/128,
 *     causal and not, seqlen 512..8k; batch 1 and heads = width / head_dim
 *     (width 1024 by default: 16 heads of 64, 8 of 128). For each: flash
 *     (the library) and standard attention (cblas_sgemm -> row softmax ->
 *     cblas_sgemm, P kept for the standard backward; bf16 inputs converted
 *     to fp32 and the results back inside the timed calls). Median of
 *     --reps timed runs after one warm-up, fresh random inputs per problem.
 *  3. Memory sweep to 16k: peak extra memory of flash vs standard, measured
 *     in a forked child (see tools/harness.h), next to the library's
 *     workspace query and the size of standard attention's P.
 *
 * FLOPs are FlashAttention's count (forward 4*b*h*sq*sk*d, halved when
 * causal, backward 2.5x), also for standard attention, which computes the
 * full matrix even when causal.
 */
#include "flashattn.h"
#include "harness.h"
#include "standard_attention.h"

#include <cblas.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BENCH_X86 1
#endif

#define MAX_LIST 16

typedef struct int_list {
    int count;
    int64_t values[MAX_LIST];
} int_list;

typedef struct bench_options {
    int_list seqlens, head_dims, causal, mem_seqlens;
    fa_dtype dtypes[3];
    int num_dtypes;
    int64_t width;      /* heads * head_dim */
    int64_t mem_heads, mem_head_dim;
    int reps, threads;
    int64_t std_max_mib;
    long fma_iterations;
    const char *json_path;
} bench_options;

/* ---------------------------------------------------------------------- */
/* Command line                                                            */

static void usage(FILE *out)
{
    fprintf(out,
"Usage: flashattn-bench-cpu [options]\n"
"\n"
"Benchmarks the flashattn CPU backend against standard attention on\n"
"OpenBLAS and measures the machine's f32 FMA peak, all in one run.\n"
"\n"
"  --seqlens LIST      timing grid sequence lengths (default 512,1024,2048,4096,8192)\n"
"  --head-dims LIST    head dims (default 64,128)\n"
"  --dtypes LIST       f32,bf16,f16 (default f32,bf16)\n"
"  --causal LIST       0,1 (default 0,1)\n"
"  --width N           heads * head_dim of the grid, batch 1 (default 1024)\n"
"  --mem-seqlens LIST  memory sweep lengths (default 1024,2048,4096,8192,16384)\n"
"  --mem-heads N       heads of the memory sweep (default 1; head_dim 64, f32)\n"
"  --reps N            timed repetitions after one warm-up; median (default 3)\n"
"  --threads N         threads for flash, OpenBLAS and OpenMP; 0 = all (default 0)\n"
"  --std-max-mib N     skip standard attention when P and its scratch would\n"
"                      exceed N MiB (default 2048: standard runs to 4k)\n"
"  --quick             small sizes to validate the setup (seqlens 256,512,\n"
"                      memory sweep 512..2048, 3 reps; options given override it)\n"
"  --json FILE         also write every number to FILE\n"
"  --help              this text\n");
}

/* text into copy (size bytes) for strtok: refused when it does not fit or
 * has an empty item (strtok would skip it). */
static int copy_list(const char *option, const char *text, char *copy, size_t size)
{
    size_t len = strlen(text);
    if (len >= size)
        return h_bad_input("%s: list longer than %zu characters", option, size - 1);
    if (len == 0 || text[0] == ',' || text[len - 1] == ',' || strstr(text, ",,"))
        return h_bad_input("%s: empty item in '%s'", option, text);
    memcpy(copy, text, len + 1);
    return 0;
}

static int parse_list(const char *option, const char *text, int64_t min, int64_t max,
                      int_list *list)
{
    char copy[512];
    if (copy_list(option, text, copy, sizeof copy))
        return 2;
    list->count = 0;
    for (char *save = NULL, *item = strtok_r(copy, ",", &save); item;
         item = strtok_r(NULL, ",", &save)) {
        if (list->count == MAX_LIST)
            return h_bad_input("%s: more than %d values", option, MAX_LIST);
        if (h_parse_int(option, item, min, max, &list->values[list->count]))
            return 2;
        list->count++;
    }
    return list->count ? 0 : h_bad_input("%s: empty list", option);
}

static int parse_dtypes(const char *text, bench_options *o)
{
    char copy[64];
    if (copy_list("--dtypes", text, copy, sizeof copy))
        return 2;
    o->num_dtypes = 0;
    for (char *save = NULL, *item = strtok_r(copy, ",", &save); item;
         item = strtok_r(NULL, ",", &save)) {
        fa_dtype d;
        if (!strcmp(item, "f32"))
            d = FA_DTYPE_F32;
        else if (!strcmp(item, "bf16"))
            d = FA_DTYPE_BF16;
        else if (!strcmp(item, "f16"))
            d = FA_DTYPE_F16;
        else
            return h_bad_input("--dtypes: unknown dtype '%s' (f32, bf16, f16)", item);
        if (o->num_dtypes == 3)
            return h_bad_input("--dtypes: at most 3 values");
        o->dtypes[o->num_dtypes++] = d;
    }
    return o->num_dtypes ? 0 : h_bad_input("--dtypes: empty list");
}

static int parse_options(int argc, char **argv, bench_options *o)
{
    enum { SEQLENS = 256, HEAD_DIMS, DTYPES, CAUSAL, WIDTH, MEM_SEQLENS, MEM_HEADS, REPS,
           THREADS, STD_MAX, QUICK, JSON, HELP };
    static const struct option long_options[] = {
        {"seqlens", required_argument, 0, SEQLENS},
        {"head-dims", required_argument, 0, HEAD_DIMS},
        {"dtypes", required_argument, 0, DTYPES},
        {"causal", required_argument, 0, CAUSAL},
        {"width", required_argument, 0, WIDTH},
        {"mem-seqlens", required_argument, 0, MEM_SEQLENS},
        {"mem-heads", required_argument, 0, MEM_HEADS},
        {"reps", required_argument, 0, REPS},
        {"threads", required_argument, 0, THREADS},
        {"std-max-mib", required_argument, 0, STD_MAX},
        {"quick", no_argument, 0, QUICK},
        {"json", required_argument, 0, JSON},
        {"help", no_argument, 0, HELP},
        {0, 0, 0, 0},
    };
    const int64_t big = (int64_t)1 << 30;
    parse_list("--seqlens", "512,1024,2048,4096,8192", 1, big, &o->seqlens);
    parse_list("--head-dims", "64,128", 1, 256, &o->head_dims);
    parse_list("--causal", "0,1", 0, 1, &o->causal);
    parse_list("--mem-seqlens", "1024,2048,4096,8192,16384", 1, big, &o->mem_seqlens);
    parse_dtypes("f32,bf16", o);
    o->width = 1024;
    o->mem_heads = 1;
    o->mem_head_dim = 64;
    o->reps = 3;
    o->threads = 0;
    o->std_max_mib = 2048;
    o->fma_iterations = 20000000;
    o->json_path = NULL;
    /* --quick sets defaults, so it takes effect before every other option
     * wherever it stands (they override it) */
    for (int i = 1; i < argc; ++i)
        if (!strcmp(argv[i], "--quick")) {
            parse_list("--seqlens", "256,512", 1, big, &o->seqlens);
            parse_list("--mem-seqlens", "512,1024,2048", 1, big, &o->mem_seqlens);
            o->reps = 3;
            o->fma_iterations = 5000000;
        }

    opterr = 0;
    int c, rc = 0, index = 0;
    int64_t value;
    char name[40];
    while (rc == 0 && (c = getopt_long(argc, argv, "h", long_options, &index)) != -1) {
        snprintf(name, sizeof name, "--%s", long_options[index].name);
        switch (c) {
        case SEQLENS: rc = parse_list(name, optarg, 1, big, &o->seqlens); break;
        case HEAD_DIMS: rc = parse_list(name, optarg, 1, 256, &o->head_dims); break;
        case DTYPES: rc = parse_dtypes(optarg, o); break;
        case CAUSAL: rc = parse_list(name, optarg, 0, 1, &o->causal); break;
        case WIDTH: rc = h_parse_int(name, optarg, 1, big, &o->width); break;
        case MEM_SEQLENS: rc = parse_list(name, optarg, 1, big, &o->mem_seqlens); break;
        case MEM_HEADS: rc = h_parse_int(name, optarg, 1, 1 << 20, &o->mem_heads); break;
        case REPS:
            rc = h_parse_int(name, optarg, 1, H_MAX_REPS, &value);
            o->reps = (int)value;
            break;
        case THREADS:
            rc = h_parse_int(name, optarg, 0, FA_MAX_THREADS, &value);
            o->threads = (int)value;
            break;
        case STD_MAX: rc = h_parse_int(name, optarg, 0, big, &o->std_max_mib); break;
        case QUICK: break; /* applied above */
        case JSON: o->json_path = optarg; break;
        case HELP:
        case 'h': usage(stdout); exit(0);
        default: rc = h_bad_option(argv);
        }
    }
    if (rc)
        return rc;
    if (optind < argc)
        return h_bad_input("%s: unexpected argument", argv[optind]);
    for (int i = 0; i < o->head_dims.count; ++i)
        if (o->width % o->head_dims.values[i] != 0)
            return h_bad_input("--width %lld is not a multiple of head_dim %lld",
                             (long long)o->width, (long long)o->head_dims.values[i]);
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Machine and FMA peak                                                    */

typedef struct machine {
    char model[128];
    int cpus;
    char isa[128];
    int threads; /* what the benchmark uses */
} machine;

static void describe_machine(const bench_options *o, machine *m)
{
    snprintf(m->model, sizeof m->model, "unknown");
    FILE *cpuinfo = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (cpuinfo && fgets(line, sizeof line, cpuinfo)) {
        char *colon = strchr(line, ':');
        if (!strncmp(line, "model name", 10) && colon) {
            snprintf(m->model, sizeof m->model, "%s", colon + 2);
            m->model[strcspn(m->model, "\n")] = '\0';
            break;
        }
    }
    if (cpuinfo)
        fclose(cpuinfo);
    m->cpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    m->threads = o->threads > 0 ? o->threads : m->cpus;
    m->isa[0] = '\0';
#ifdef BENCH_X86
    __builtin_cpu_init();
    const char *names[] = {"avx2", "fma", "avx512f", "avx512bw", "avx512bf16"};
    int have[] = {__builtin_cpu_supports("avx2"), __builtin_cpu_supports("fma"),
                  __builtin_cpu_supports("avx512f"), __builtin_cpu_supports("avx512bw"),
                  __builtin_cpu_supports("avx512bf16")};
    for (int i = 0; i < 5; ++i)
        if (have[i])
            snprintf(m->isa + strlen(m->isa), sizeof m->isa - strlen(m->isa), "%s%s",
                     m->isa[0] ? " " : "", names[i]);
#endif
}

/* Independent chains hide the FMA latency; 12 covers latency x throughput
 * of current x86 cores (4 cycles x 2 units, with margin). */
#define FMA_CHAINS 12

#ifdef BENCH_X86
/* Returns a sum of the chains so that the loop cannot be removed. */
__attribute__((target("avx512f"))) static float fma_chains_avx512(long iterations)
{
    __m512 acc[FMA_CHAINS];
    const __m512 mul = _mm512_set1_ps(0.9999999f), add = _mm512_set1_ps(1e-7f);
    for (int c = 0; c < FMA_CHAINS; ++c)
        acc[c] = _mm512_set1_ps((float)c);
    for (long it = 0; it < iterations; ++it)
        for (int c = 0; c < FMA_CHAINS; ++c)
            acc[c] = _mm512_fmadd_ps(acc[c], mul, add);
    float sum = 0;
    for (int c = 0; c < FMA_CHAINS; ++c)
        sum += _mm512_reduce_add_ps(acc[c]);
    return sum;
}

__attribute__((target("avx2,fma"))) static float fma_chains_avx2(long iterations)
{
    __m256 acc[FMA_CHAINS];
    const __m256 mul = _mm256_set1_ps(0.9999999f), add = _mm256_set1_ps(1e-7f);
    for (int c = 0; c < FMA_CHAINS; ++c)
        acc[c] = _mm256_set1_ps((float)c);
    for (long it = 0; it < iterations; ++it)
        for (int c = 0; c < FMA_CHAINS; ++c)
            acc[c] = _mm256_fmadd_ps(acc[c], mul, add);
    float lanes[8], sum = 0;
    for (int c = 0; c < FMA_CHAINS; ++c) {
        _mm256_storeu_ps(lanes, acc[c]);
        for (int l = 0; l < 8; ++l)
            sum += lanes[l];
    }
    return sum;
}
#endif

typedef struct fma_isa {
    const char *name;
    int lanes;
    float (*chains)(long iterations);
} fma_isa;

typedef struct fma_args {
    const fma_isa *isa;
    long iterations;
    int threads;
} fma_args;

static volatile float fma_sink;

static int fma_open(void *arg, void **state, char *message, size_t len)
{
    fma_args *a = arg;
#ifdef _OPENMP
    omp_set_num_threads(a->threads);
#endif
    *state = a;
    return 0;
}

/* Every thread runs the chains; the phase time is the slowest thread's. */
static int fma_run(void *state, int phase, char *message, size_t len)
{
    fma_args *a = state;
    float total = 0;
#pragma omp parallel reduction(+ : total)
    total += a->isa->chains(a->iterations);
    fma_sink = total;
    return 0;
}

static int fma_close(void *state, char *message, size_t len) { return 0; }

typedef struct peak_result {
    const char *isa;
    double gflops;
    int ok;
    char message[H_MESSAGE_LEN];
} peak_result;

/* Measures every available ISA; returns how many were measured. */
static int measure_fma_peak(const bench_options *o, const machine *m, peak_result *out)
{
    int n = 0;
#ifdef BENCH_X86
    static const fma_isa isas[] = {{"avx512", 16, fma_chains_avx512},
                                   {"avx2", 8, fma_chains_avx2}};
    const int supported[] = {__builtin_cpu_supports("avx512f"),
                             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")};
    for (int i = 0; i < 2; ++i) {
        if (!supported[i])
            continue;
        fma_args args = {&isas[i], o->fma_iterations, m->threads};
        h_job job = {&args, fma_open, fma_run, fma_close, 1, 1, o->reps};
        h_job_result r;
        peak_result *p = &out[n++];
        p->isa = isas[i].name;
        p->ok = h_run_job(&job, NULL, 0, &r) == 0 && r.ok;
        snprintf(p->message, sizeof p->message, "%s", r.message);
        double flops = 2.0 * FMA_CHAINS * isas[i].lanes * (double)o->fma_iterations *
                       m->threads;
        p->gflops = p->ok ? flops / r.phase[0].median_s * 1e-9 : 0;
    }
#endif
    return n;
}

/* ---------------------------------------------------------------------- */
/* One problem: flash and standard attention on the same inputs            */

static void blas_gemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                      const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
                      float *c, int64_t ldc)
{
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, (blasint)m, (blasint)n, (blasint)k, alpha,
                a, (blasint)lda, b, (blasint)ldb, beta, c, (blasint)ldc);
}

static void blas_set_threads(int threads)
{
    if (threads > 0)
        openblas_set_num_threads(threads);
}

typedef struct pair_result {
    fa_attn attn;
    h_job_result flash, standard;
    h_flash_info info;
    int standard_ran;
    double standard_bytes;     /* P + scratch (+ fp32 copies for bf16/f16) */
    double max_rel_diff;       /* flash vs standard over out, dq, dk, dv */
    double lse_rel_diff;
} pair_result;

/* Memory standard attention needs besides its inputs and outputs. */
static double standard_extra_bytes(const fa_attn *a)
{
    double bytes = (double)std_probs_bytes(a) + (double)std_scratch_bytes(a, 1);
    if (a->dtype != FA_DTYPE_F32) /* fp32 copies of the 8 tensors */
        bytes += 4.0 * (double)(2 * h_numel_q(a) + 2 * h_numel_k(a) + 2 * h_numel_v(a) +
                                2 * h_numel_out(a));
    return bytes;
}

/* rel diff of a (dtype) against b (dtype) */
static double rel_diff(const void *a, const void *b, fa_dtype dtype, int64_t n)
{
    float *ref = malloc(sizeof(float) * (size_t)n);
    if (!ref)
        return NAN;
    h_load_all(ref, b, dtype, n);
    double d = h_compare(a, dtype, ref, n).rel_err;
    free(ref);
    return d;
}

static void measure_pair(const bench_options *o, const fa_attn *a, int warmup, int reps,
                         uint64_t seed, pair_result *r)
{
    memset(r, 0, sizeof *r);
    r->attn = *a;
    r->max_rel_diff = r->lse_rel_diff = NAN;
    /* the library validates the sizes (and the buffers' size arithmetic
     * below stays in range) before anything is mapped */
    size_t unused_bytes;
    fa_context *probe = NULL;
    if (fa_context_create(&probe, FA_DEVICE_CPU, 0) != FA_SUCCESS ||
        fa_backward_workspace_size(probe, a, &unused_bytes) != FA_SUCCESS) {
        snprintf(r->flash.message, sizeof r->flash.message, "%s", fa_last_error());
        fa_context_destroy(probe);
        return;
    }
    fa_context_destroy(probe);
    r->standard_bytes = standard_extra_bytes(a);
    size_t es = fa_dtype_size(a->dtype);
    int64_t n[9];
    h_tensor_numel(a, n);
    h_tensors flash, standard;
    h_flash_info *info;
    void **f[9], **s[9];
    h_tensor_slots(&flash, f);
    h_tensor_slots(&standard, s);
    h_buffer requests[15];
    int count = 0;
    for (int i = 0; i < 9; ++i) {
        size_t bytes = (i == 8 ? sizeof(float) : es) * (size_t)n[i];
        requests[count++] = (h_buffer){f[i], bytes};
        if (i >= 4)
            requests[count++] = (h_buffer){s[i], bytes};
    }
    requests[count++] = (h_buffer){(void **)&info, sizeof *info};
    size_t shared_bytes;
    void *shared = h_shared_buffers(requests, count, &shared_bytes);
    if (!shared) {
        snprintf(r->flash.message, sizeof r->flash.message, "cannot map %zu tensors", (size_t)9);
        return;
    }
    for (int i = 0; i < 4; ++i) {
        *s[i] = *f[i]; /* same inputs */
        h_fill_normal(*f[i], NULL, a->dtype, n[i], seed * 4 + (uint64_t)i + 1);
    }

    h_flash_job_args flash_args = {a, FA_DEVICE_CPU, o->threads, flash, info, NULL};
    h_job job = h_flash_job(&flash_args, warmup, reps);
    if (h_run_job(&job, shared, shared_bytes, &r->flash))
        snprintf(r->flash.message, sizeof r->flash.message, "fork: %s", strerror(errno));
    r->info = *info;

    if (r->standard_bytes <= (double)o->std_max_mib * 1048576.0) {
        std_job_args std_args = {a, blas_gemm, o->threads, blas_set_threads, standard};
        job = std_job(&std_args, warmup, reps);
        if (h_run_job(&job, shared, shared_bytes, &r->standard))
            snprintf(r->standard.message, sizeof r->standard.message, "fork: %s",
                     strerror(errno));
        r->standard_ran = 1;
    }
    if (r->flash.ok && r->standard_ran && r->standard.ok) {
        r->max_rel_diff = 0;
        for (int i = 4; i < 8; ++i) {
            double d = rel_diff(*f[i], *s[i], a->dtype, n[i]);
            if (!(d <= r->max_rel_diff))
                r->max_rel_diff = d;
        }
        r->lse_rel_diff = rel_diff(flash.lse, standard.lse, FA_DTYPE_F32, n[8]);
    }
    h_shared_free(shared, shared_bytes);
}

/* ---------------------------------------------------------------------- */
/* Output                                                                  */

static double gflops_of(const h_job_result *r, int phase, double fwd_flops)
{
    double flops = phase == 0 ? fwd_flops : 2.5 * fwd_flops;
    return r->ok ? flops / r->phase[phase].median_s * 1e-9 : NAN;
}

static void print_grid_header(void)
{
    printf("%-5s %4s %5s %6s %5s | %-26s | %-26s | %-17s | %-17s | %6s %6s | %s\n", "dtype",
           "d", "caus", "seqlen", "heads", "flash fwd ms GF/s %peak", "flash bwd ms GF/s %peak",
           "std fwd ms GF/s", "std bwd ms GF/s", "x fwd", "x bwd", "diff");
}

static void print_grid_row(const pair_result *r, double peak)
{
    const fa_attn *a = &r->attn;
    double fwd = h_attention_flops(a);
    printf("%-5s %4lld %5s %6lld %5lld |", fa_dtype_name(a->dtype), (long long)a->head_dim,
           a->causal ? "yes" : "no", (long long)a->seqlen_q, (long long)a->heads_q);
    for (int phase = 0; phase < 2; ++phase) {
        if (r->flash.ok) {
            double g = gflops_of(&r->flash, phase, fwd);
            printf(" %9.2f %7.1f %6.1f%% |", 1e3 * r->flash.phase[phase].median_s, g,
                   100.0 * g / peak);
        } else {
            printf(" %-26s |", "failed");
        }
    }
    for (int phase = 0; phase < 2; ++phase) {
        if (r->standard_ran && r->standard.ok)
            printf(" %9.2f %7.1f |", 1e3 * r->standard.phase[phase].median_s,
                   gflops_of(&r->standard, phase, fwd));
        else
            printf(" %-17s |", r->standard_ran ? "failed" : "skipped (memory)");
    }
    if (r->flash.ok && r->standard_ran && r->standard.ok)
        printf(" %6.2f %6.2f | %.1e%s\n",
               r->standard.phase[0].median_s / r->flash.phase[0].median_s,
               r->standard.phase[1].median_s / r->flash.phase[1].median_s, r->max_rel_diff,
               r->max_rel_diff <= h_tolerance(a->dtype) &&
                       r->lse_rel_diff <= H_LSE_TOLERANCE
                   ? ""
                   : " MISMATCH");
    else
        printf(" %6s %6s | -\n", "-", "-");
    if (!r->flash.ok)
        printf("    flash: %s\n", r->flash.message);
    if (r->standard_ran && !r->standard.ok)
        printf("    standard: %s\n", r->standard.message);
    fflush(stdout);
}

static void print_memory_header(void)
{
    printf("%6s | %-21s | %-21s | %-21s | %-21s\n", "seqlen", "flash workspace f/b",
           "flash measured f/f+b", "std P+scratch (size)", "std measured f/f+b");
}

static void print_memory_row(const pair_result *r)
{
    char x[32], y[32];
    printf("%6lld |", (long long)r->attn.seqlen_q);
    printf(" %10s %10s |", h_format_bytes((double)r->info.workspace_bytes[0], x, sizeof x),
           h_format_bytes((double)r->info.workspace_bytes[1], y, sizeof y));
    if (r->flash.ok)
        printf(" %10s %10s |",
               h_format_bytes((double)r->flash.phase[0].peak_extra_bytes, x, sizeof x),
               h_format_bytes((double)r->flash.phase[1].peak_extra_bytes, y, sizeof y));
    else
        printf(" %-21s |", "failed");
    printf(" %21s |", h_format_bytes(r->standard_bytes, x, sizeof x));
    if (r->standard_ran && r->standard.ok)
        printf(" %10s %10s\n",
               h_format_bytes((double)r->standard.phase[0].peak_extra_bytes, x, sizeof x),
               h_format_bytes((double)r->standard.phase[1].peak_extra_bytes, y, sizeof y));
    else
        printf(" %s\n", r->standard_ran ? "failed" : "skipped (over --std-max-mib)");
    if (!r->flash.ok)
        printf("    flash: %s\n", r->flash.message);
    if (r->standard_ran && !r->standard.ok)
        printf("    standard: %s\n", r->standard.message);
    fflush(stdout);
}

static void json_job(FILE *f, const char *name, const h_job_result *r, double fwd_flops,
                     double peak)
{
    fprintf(f, "\"%s\": {\"ok\": %s", name, r->ok ? "true" : "false");
    if (!r->ok) {
        fprintf(f, ", \"error\": ");
        h_json_string(f, r->message);
    } else {
        for (int phase = 0; phase < 2; ++phase) {
            double g = gflops_of(r, phase, fwd_flops);
            fprintf(f, ", \"%s\": {\"median_ms\": ", phase == 0 ? "forward" : "backward");
            h_json_number(f, 1e3 * r->phase[phase].median_s);
            fprintf(f, ", \"min_ms\": ");
            h_json_number(f, 1e3 * r->phase[phase].min_s);
            fprintf(f, ", \"gflops\": ");
            h_json_number(f, g);
            fprintf(f, ", \"fraction_of_peak\": ");
            h_json_number(f, g / peak);
            fprintf(f, ", \"peak_extra_bytes_measured\": %lld}",
                    (long long)r->phase[phase].peak_extra_bytes);
        }
    }
    fprintf(f, "}");
}

static void json_pair(FILE *f, const pair_result *r, double peak)
{
    const fa_attn *a = &r->attn;
    double fwd = h_attention_flops(a);
    fprintf(f, "    {\"dtype\": \"%s\", \"batch\": %lld, \"heads\": %lld, \"head_dim\": %lld, "
               "\"seqlen\": %lld, \"causal\": %s, \"flops_forward\": %.6g, "
               "\"flops_backward\": %.6g,\n     ",
            fa_dtype_name(a->dtype), (long long)a->batch, (long long)a->heads_q,
            (long long)a->head_dim, (long long)a->seqlen_q, a->causal ? "true" : "false", fwd,
            2.5 * fwd);
    json_job(f, "flash", &r->flash, fwd, peak);
    fprintf(f, ",\n     \"flash_workspace_bytes\": [%zu, %zu], \"flash_kernel\": ",
            r->info.workspace_bytes[0], r->info.workspace_bytes[1]);
    h_json_string(f, r->info.kernel[0]);
    fprintf(f, ",\n     \"standard_extra_bytes\": %.0f, ", r->standard_bytes);
    if (r->standard_ran)
        json_job(f, "standard", &r->standard, fwd, peak);
    else
        fprintf(f, "\"standard\": {\"ok\": false, \"skipped\": \"over --std-max-mib\"}");
    fprintf(f, ",\n     \"max_rel_diff\": ");
    h_json_number(f, r->max_rel_diff);
    fprintf(f, ", \"lse_rel_diff\": ");
    h_json_number(f, r->lse_rel_diff);
    fprintf(f, "}");
}

/* ---------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    bench_options o;
    h_set_program("flashattn-bench-cpu");
    int rc = parse_options(argc, argv, &o);
    if (rc)
        return rc;
    FILE *json = NULL;
    if (o.json_path && !(json = fopen(o.json_path, "w"))) {
        fprintf(stderr, "flashattn-bench-cpu: cannot write %s: %s\n", o.json_path,
                strerror(errno));
        return 2;
    }

    double start_time = h_now_seconds();
    machine m;
    describe_machine(&o, &m);
    printf("flashattn-bench-cpu (library %s)\n", fa_version_string());
    printf("machine: %s, %d logical CPUs, ISA: %s; threads used: %d\n", m.model, m.cpus, m.isa,
           m.threads);
    printf("OpenBLAS: %s\n", openblas_get_config());

    /* Every measurement runs in a forked child (tools/harness.h): this
     * process never starts an OpenMP pool. */
    peak_result peaks[2];
    int num_peaks = measure_fma_peak(&o, &m, peaks);
    double peak = NAN;
    for (int i = 0; i < num_peaks; ++i) {
        if (peaks[i].ok)
            printf("f32 FMA peak, %s, %d threads: %.1f GFLOP/s (measured)\n", peaks[i].isa,
                   m.threads, peaks[i].gflops);
        else
            printf("f32 FMA peak, %s: failed: %s\n", peaks[i].isa, peaks[i].message);
        if (peaks[i].ok && !(peaks[i].gflops <= peak))
            peak = peaks[i].gflops;
    }
    if (json) {
        fprintf(json, "{\n  \"tool\": \"flashattn-bench-cpu\", \"library_version\": \"%s\",\n",
                fa_version_string());
        fprintf(json, "  \"machine\": {\"model\": ");
        h_json_string(json, m.model);
        fprintf(json, ", \"logical_cpus\": %d, \"isa\": ", m.cpus);
        h_json_string(json, m.isa);
        fprintf(json, ", \"threads\": %d, \"openblas\": ", m.threads);
        h_json_string(json, openblas_get_config());
        fprintf(json, "},\n  \"fma_peak_gflops\": {");
        for (int i = 0; i < num_peaks; ++i) {
            fprintf(json, "%s\"%s\": ", i ? ", " : "", peaks[i].isa);
            h_json_number(json, peaks[i].gflops);
        }
        fprintf(json, "},\n  \"peak_gflops\": ");
        h_json_number(json, peak);
        fprintf(json, ",\n  \"method\": {\"reps\": %d, \"warmup\": 1, \"statistic\": \"median\", "
                      "\"batch\": 1, \"width\": %lld, \"standard\": \"cblas_sgemm -> row "
                      "softmax -> cblas_sgemm, fp32; bf16/f16 converted to fp32 inside the "
                      "timed call\", \"memory\": \"growth of VmHWM in a forked child\"},\n",
                o.reps, (long long)o.width);
        fprintf(json, "  \"grid\": [\n");
    }

    printf("\nTiming: batch 1, heads = %lld / head_dim, median of %d after 1 warm-up; "
           "%%peak = flash GFLOP/s / f32 FMA peak;\nstd = standard attention, fp32 "
           "(cblas_sgemm, row softmax, cblas_sgemm; bf16/f16 inputs converted to fp32 and "
           "results back\ninside the timed calls); x = standard time / flash time; diff = "
           "max |flash - std| / max |std| over out, dq, dk, dv\n",
           (long long)o.width, o.reps);
    print_grid_header();
    int first = 1, mismatches = 0, failed_runs = 0;
    uint64_t seed = 1;
    for (int di = 0; di < o.num_dtypes; ++di)
        for (int hi = 0; hi < o.head_dims.count; ++hi)
            for (int ci = 0; ci < o.causal.count; ++ci)
                for (int si = 0; si < o.seqlens.count; ++si) {
                    fa_attn a;
                    fa_attn_init(&a);
                    a.batch = 1;
                    a.seqlen_q = a.seqlen_k = o.seqlens.values[si];
                    a.head_dim = a.head_dim_v = o.head_dims.values[hi];
                    a.heads_q = a.heads_kv = o.width / a.head_dim;
                    a.dtype = o.dtypes[di];
                    a.causal = (int)o.causal.values[ci];
                    pair_result r;
                    measure_pair(&o, &a, 1, o.reps, seed++, &r);
                    print_grid_row(&r, peak);
                    if (r.flash.ok && r.standard_ran && r.standard.ok &&
                        !(r.max_rel_diff <= h_tolerance(a.dtype) &&
                          r.lse_rel_diff <= H_LSE_TOLERANCE))
                        mismatches++;
                    failed_runs += !r.flash.ok + (r.standard_ran && !r.standard.ok);
                    if (json) {
                        fprintf(json, "%s", first ? "" : ",\n");
                        json_pair(json, &r, peak);
                        first = 0;
                    }
                }

    printf("\nMemory: batch 1, %lld head(s), head_dim %lld, f32, not causal; one forward + "
           "one backward per child.\nmeasured = growth of the child's peak RSS (f: after the "
           "forward, f+b: after the backward)\n",
           (long long)o.mem_heads, (long long)o.mem_head_dim);
    print_memory_header();
    if (json)
        fprintf(json, "\n  ],\n  \"memory\": [\n");
    first = 1;
    for (int si = 0; si < o.mem_seqlens.count; ++si) {
        fa_attn a;
        fa_attn_init(&a);
        a.batch = 1;
        a.seqlen_q = a.seqlen_k = o.mem_seqlens.values[si];
        a.head_dim = a.head_dim_v = o.mem_head_dim;
        a.heads_q = a.heads_kv = o.mem_heads;
        a.dtype = FA_DTYPE_F32;
        pair_result r;
        measure_pair(&o, &a, 0, 1, seed++, &r);
        print_memory_row(&r);
        failed_runs += !r.flash.ok + (r.standard_ran && !r.standard.ok);
        if (json) {
            fprintf(json, "%s", first ? "" : ",\n");
            json_pair(json, &r, peak);
            first = 0;
        }
    }
    if (json) {
        fprintf(json, "\n  ],\n  \"mismatches\": %d,\n  \"failed_runs\": %d,\n"
                      "  \"total_seconds\": %.1f\n}\n",
                mismatches, failed_runs, h_now_seconds() - start_time);
        int write_failed = ferror(json);
        write_failed |= fclose(json) != 0;
        if (write_failed) {
            fprintf(stderr, "flashattn-bench-cpu: writing %s failed\n", o.json_path);
            failed_runs++;
        }
    }
    if (mismatches)
        printf("\n%d problem(s) where flash and standard attention disagree beyond the "
               "tolerance\n", mismatches);
    if (failed_runs)
        printf("\n%d run(s) failed (see the messages above)\n", failed_runs);
    printf("\ntotal time: %.0f s\n", h_now_seconds() - start_time);
    return mismatches || failed_runs ? 1 : 0;
}
