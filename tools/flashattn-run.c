/*
 * flashattn-run: run one realistic attention forward + backward with the
 * library, check it against a naive standard attention computed here, and
 * report time, GFLOP/s and peak extra memory of both.
 *
 * Every CPU measurement runs in a forked child (see tools/harness.h), which
 * makes its peak extra memory a measured number (growth of VmHWM) rather
 * than an estimate. The GPU run (builds with CUDA, a GPU present) happens in
 * this process after the CPU children, since a CUDA context does not
 * survive fork.
 *
 * Exit status: 0 when everything ran and every check passed, 1 when a run
 * failed or a check did not pass, 2 for bad command-line input.
 */
#include "flashattn.h"
#include "harness.h"
#include "standard_attention.h"

#include <errno.h>
#include <float.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef FA_TOOL_CUDA
#include <cuda_runtime.h>
#endif

enum { EXIT_CHECK_FAILED = 1, EXIT_BAD_INPUT = 2 };

typedef enum device_choice { DEVICES_AUTO, DEVICES_CPU, DEVICES_CUDA, DEVICES_ALL } device_choice;

typedef struct options {
    fa_attn attn;
    int threads; /* 0 = all cores */
    device_choice devices;
    int reps;
    int naive;
    int json;
    uint64_t seed;
} options;

/* ---------------------------------------------------------------------- */
/* Command line                                                            */

static void usage(FILE *out)
{
    fprintf(out,
"Usage: flashattn-run [options]\n"
"\n"
"Runs attention forward + backward with flashattn on the CPU (and on the GPU\n"
"when the library was built with CUDA and a GPU is present), checks the\n"
"results against a naive standard attention computed by this tool (fp32,\n"
"row statistics in fp64, S = QK^T materialised), and prints max error, time,\n"
"GFLOP/s and peak extra memory of flash vs naive.\n"
"\n"
"Default problem: batch 1, seqlen 2048, 8 heads, head_dim 64, bf16, not\n"
"causal (the naive reference holds P for all heads: 128 MiB).\n"
"\n"
"Problem:\n"
"  --batch N          batch size (default 1)\n"
"  --seqlen-q N       query length (default 2048)\n"
"  --seqlen-k N       key length (default: seqlen-q)\n"
"  --heads N          query heads (default 8)\n"
"  --heads-kv N       key/value heads, divides --heads (default: heads)\n"
"  --head-dim N       head dimension of q and k (default 64)\n"
"  --head-dim-v N     head dimension of v (default: head-dim)\n"
"  --dtype T          f32 | f16 | bf16 (default bf16)\n"
"  --causal           causal mask (bottom-right aligned)\n"
"  --window L,R       sliding window, -1 = unbounded side\n"
"  --softcap C        tanh soft-capping of the scores (0 = off)\n"
"  --dropout P        dropout probability in [0, 1)\n"
"  --seed N           seed of the random inputs (default 0)\n"
"Run:\n"
"  --threads N        CPU threads, 0 = all cores (default 0)\n"
"  --device D         cpu | cuda | all | auto (default auto: the CPU, plus\n"
"                     the GPU unless there is none or the library cannot\n"
"                     run the problem there, e.g. f32; all: both, required)\n"
"  --reps N           timed repetitions of each flash call, after one\n"
"                     warm-up; the median is reported (default 5). The\n"
"                     naive reference runs once, without warm-up.\n"
"  --no-naive         skip the naive reference (and the check against it;\n"
"                     a GPU result is then checked against the CPU flash)\n"
"  --json             print one JSON object instead of the text report\n"
"  --help             this text\n"
"\n"
"FLOPs are counted as FlashAttention does: forward 2*b*h*sq*sk*(d+dv)\n"
"(= 4*b*h*sq*sk*d), halved when causal; with another window, the exact\n"
"number of visible (i, j) pairs; backward 2.5x the forward.\n"
"Peak extra memory is measured: each CPU variant runs in a forked child and\n"
"reports the growth of its peak RSS (VmHWM) over its baseline (inputs and\n"
"outputs already resident). For the GPU: the workspace the library asks for;\n"
"GPU time is wall clock around each call and cudaDeviceSynchronize.\n"
"\n"
"Exit status: 0 ok, 1 a run failed or a check did not pass, 2 bad input.\n");
}

static int parse_options(int argc, char **argv, options *o)
{
    enum {
        OPT_BATCH = 256, OPT_SEQLEN_Q, OPT_SEQLEN_K, OPT_HEADS, OPT_HEADS_KV,
        OPT_HEAD_DIM, OPT_HEAD_DIM_V, OPT_DTYPE, OPT_CAUSAL, OPT_WINDOW, OPT_SOFTCAP,
        OPT_DROPOUT, OPT_SEED, OPT_THREADS, OPT_DEVICE, OPT_REPS, OPT_NO_NAIVE,
        OPT_JSON, OPT_HELP
    };
    static const struct option long_options[] = {
        {"batch", required_argument, 0, OPT_BATCH},
        {"seqlen-q", required_argument, 0, OPT_SEQLEN_Q},
        {"seqlen-k", required_argument, 0, OPT_SEQLEN_K},
        {"heads", required_argument, 0, OPT_HEADS},
        {"heads-kv", required_argument, 0, OPT_HEADS_KV},
        {"head-dim", required_argument, 0, OPT_HEAD_DIM},
        {"head-dim-v", required_argument, 0, OPT_HEAD_DIM_V},
        {"dtype", required_argument, 0, OPT_DTYPE},
        {"causal", no_argument, 0, OPT_CAUSAL},
        {"window", required_argument, 0, OPT_WINDOW},
        {"softcap", required_argument, 0, OPT_SOFTCAP},
        {"dropout", required_argument, 0, OPT_DROPOUT},
        {"seed", required_argument, 0, OPT_SEED},
        {"threads", required_argument, 0, OPT_THREADS},
        {"device", required_argument, 0, OPT_DEVICE},
        {"reps", required_argument, 0, OPT_REPS},
        {"no-naive", no_argument, 0, OPT_NO_NAIVE},
        {"json", no_argument, 0, OPT_JSON},
        {"help", no_argument, 0, OPT_HELP},
        {0, 0, 0, 0},
    };
    const int64_t big = (int64_t)1 << 40;
    fa_attn *a = &o->attn;
    fa_attn_init(a);
    a->batch = 1;
    a->seqlen_q = 2048;
    a->seqlen_k = 0; /* resolved below */
    a->heads_q = 8;
    a->heads_kv = 0;
    a->head_dim = 64;
    a->head_dim_v = 0;
    a->dtype = FA_DTYPE_BF16;
    a->dropout_seed = 1234;
    o->threads = 0;
    o->devices = DEVICES_AUTO;
    o->reps = 5;
    o->naive = 1;
    o->json = 0;
    o->seed = 0;

    opterr = 0; /* the messages below name the option */
    int c, rc = 0, index = 0;
    int64_t value;
    double real;
    char name[40];
    while (rc == 0 && (c = getopt_long(argc, argv, "h", long_options, &index)) != -1) {
        snprintf(name, sizeof name, "--%s", long_options[index].name);
        switch (c) {
        case OPT_BATCH: rc = h_parse_int(name, optarg, 1, big, &a->batch); break;
        case OPT_SEQLEN_Q: rc = h_parse_int(name, optarg, 1, big, &a->seqlen_q); break;
        case OPT_SEQLEN_K: rc = h_parse_int(name, optarg, 1, big, &a->seqlen_k); break;
        case OPT_HEADS: rc = h_parse_int(name, optarg, 1, 1 << 20, &a->heads_q); break;
        case OPT_HEADS_KV: rc = h_parse_int(name, optarg, 1, 1 << 20, &a->heads_kv); break;
        case OPT_HEAD_DIM: rc = h_parse_int(name, optarg, 1, 256, &a->head_dim); break;
        case OPT_HEAD_DIM_V: rc = h_parse_int(name, optarg, 1, 256, &a->head_dim_v); break;
        case OPT_DTYPE:
            if (!strcmp(optarg, "f32"))
                a->dtype = FA_DTYPE_F32;
            else if (!strcmp(optarg, "f16"))
                a->dtype = FA_DTYPE_F16;
            else if (!strcmp(optarg, "bf16"))
                a->dtype = FA_DTYPE_BF16;
            else
                rc = h_bad_input("%s: unknown dtype '%s' (f32, f16 or bf16)", name, optarg);
            break;
        case OPT_CAUSAL: a->causal = 1; break;
        case OPT_WINDOW: {
            /* L,R: each part through the checked integer parser */
            char left[32], right[32];
            const char *comma = strchr(optarg, ',');
            size_t n = comma ? (size_t)(comma - optarg) : 0;
            if (!comma || n >= sizeof left || strlen(comma + 1) >= sizeof right) {
                rc = h_bad_input("%s: bad value '%s' (expected L,R with L, R >= -1)", name,
                                 optarg);
                break;
            }
            memcpy(left, optarg, n);
            left[n] = '\0';
            strcpy(right, comma + 1);
            int64_t l = 0, r = 0;
            rc = h_parse_int(name, left, -1, INT64_MAX, &l);
            if (!rc)
                rc = h_parse_int(name, right, -1, INT64_MAX, &r);
            a->window_left = l;
            a->window_right = r;
            break;
        }
        case OPT_SOFTCAP:
            rc = h_parse_double(name, optarg, 0.0, INFINITY, &real);
            a->softcap = (float)real;
            if (!rc && real > 0.0 && !(a->softcap >= FLT_MIN))
                rc = h_bad_input("%s: %s is below the smallest normal float (0 is off)",
                                 name, optarg);
            break;
        case OPT_DROPOUT:
            rc = h_parse_double(name, optarg, 0.0, 1.0, &real);
            a->dropout_p = (float)real;
            break;
        case OPT_SEED:
            rc = h_parse_int(name, optarg, 0, INT64_MAX, &value);
            o->seed = (uint64_t)value;
            break;
        case OPT_THREADS:
            rc = h_parse_int(name, optarg, 0, FA_MAX_THREADS, &value);
            o->threads = (int)value;
            break;
        case OPT_DEVICE:
            if (!strcmp(optarg, "cpu"))
                o->devices = DEVICES_CPU;
            else if (!strcmp(optarg, "cuda"))
                o->devices = DEVICES_CUDA;
            else if (!strcmp(optarg, "all"))
                o->devices = DEVICES_ALL;
            else if (!strcmp(optarg, "auto"))
                o->devices = DEVICES_AUTO;
            else
                rc = h_bad_input("%s: unknown device '%s' (cpu, cuda, all or auto)", name,
                               optarg);
            break;
        case OPT_REPS:
            rc = h_parse_int(name, optarg, 1, H_MAX_REPS, &value);
            o->reps = (int)value;
            break;
        case OPT_NO_NAIVE: o->naive = 0; break;
        case OPT_JSON: o->json = 1; break;
        case OPT_HELP:
        case 'h': usage(stdout); exit(0);
        default:
            rc = h_bad_option(argv);
            break;
        }
    }
    if (rc)
        return rc;
    if (optind < argc)
        return h_bad_input("%s: unexpected argument", argv[optind]);
    if (a->seqlen_k == 0)
        a->seqlen_k = a->seqlen_q;
    if (a->heads_kv == 0)
        a->heads_kv = a->heads_q;
    if (a->head_dim_v == 0)
        a->head_dim_v = a->head_dim;
    if (a->heads_q % a->heads_kv != 0)
        return h_bad_input("--heads-kv %lld does not divide --heads %lld",
                         (long long)a->heads_kv, (long long)a->heads_q);
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Buffers                                                                 */

typedef struct buffers {
    h_tensors flash_cpu; /* inputs in dtype, CPU flash results */
    h_tensors naive;     /* the same inputs as floats, reference results */
    h_tensors flash_gpu; /* host copies of the GPU results (results only) */
    h_flash_info *info_cpu, *info_gpu;
} buffers;

/* Byte sizes of q, k, v, dout, out, dq, dk, dv, lse for one element size
 * (lse is always fp32). */
static void tensor_bytes(const fa_attn *a, size_t element, size_t bytes[9])
{
    int64_t n[9];
    h_tensor_numel(a, n);
    for (int i = 0; i < 9; ++i)
        bytes[i] = (i == 8 ? sizeof(float) : element) * (size_t)n[i];
}

/* ---------------------------------------------------------------------- */
/* GPU (CUDA builds): device copies, the flash job in this process          */

#ifdef FA_TOOL_CUDA
static int cuda_error(const char *what, cudaError_t err, char *msg, size_t len)
{
    snprintf(msg, len, "%s: %s", what, cudaGetErrorString(err));
    return 1;
}

static int cuda_synchronize(char *msg, size_t len)
{
    cudaError_t err = cudaDeviceSynchronize();
    return err == cudaSuccess ? 0 : cuda_error("after the kernel", err, msg, len);
}

/* Runs the flash job on device copies of buf's inputs; the results come
 * back into buf->flash_gpu. */
static void run_gpu(const options *o, buffers *buf, h_job_result *result)
{
    const fa_attn *a = &o->attn;
    size_t bytes[9], total = 0;
    tensor_bytes(a, fa_dtype_size(a->dtype), bytes);
    for (int i = 0; i < 9; ++i)
        total += (bytes[i] + 255) & ~(size_t)255;
    memset(result, 0, sizeof *result);
    char *device_memory = NULL;
    cudaError_t err = cudaMalloc((void **)&device_memory, total);
    if (err != cudaSuccess) {
        cuda_error("cudaMalloc", err, result->message, sizeof result->message);
        return;
    }
    h_flash_job_args args = {a, FA_DEVICE_CUDA, o->threads, {0}, buf->info_gpu,
                             cuda_synchronize};
    void **host[9], **device[9], **gpu_results[9];
    h_tensor_slots(&buf->flash_cpu, host);
    h_tensor_slots(&args.tensors, device);
    h_tensor_slots(&buf->flash_gpu, gpu_results);
    char *cursor = device_memory;
    for (int i = 0; i < 9; ++i) {
        *device[i] = cursor;
        cursor += (bytes[i] + 255) & ~(size_t)255;
    }
    for (int i = 0; i < 4 && err == cudaSuccess; ++i) /* q, k, v, dout */
        err = cudaMemcpy(*device[i], *host[i], bytes[i], cudaMemcpyHostToDevice);
    if (err != cudaSuccess) {
        cuda_error("cudaMemcpy to the device", err, result->message, sizeof result->message);
    } else {
        h_job job = h_flash_job(&args, 1, o->reps);
        h_run_job_here(&job, result);
        for (int i = 4; i < 9 && result->ok && err == cudaSuccess; ++i) /* results */
            err = cudaMemcpy(*gpu_results[i], *device[i], bytes[i], cudaMemcpyDeviceToHost);
        if (err != cudaSuccess) {
            result->ok = 0;
            cuda_error("cudaMemcpy to the host", err, result->message, sizeof result->message);
        }
    }
    cudaFree(device_memory);
}
#endif

/* ---------------------------------------------------------------------- */
/* Report                                                                  */

typedef struct variant_report {
    const char *name;   /* "flash" or "naive" */
    const char *device; /* "cpu" or "cuda" */
    int ran;
    h_job_result result;
    const h_flash_info *info; /* flash only */
    char skipped[H_MESSAGE_LEN]; /* why it did not run, if it was skipped */
} variant_report;

typedef struct check_report {
    const char *what;      /* "flash cpu" */
    const char *reference; /* "naive" or "flash cpu" */
    h_error err[5];        /* out, lse, dq, dk, dv */
    double tol[5];
    int passed;
} check_report;

static const char *const result_names[5] = {"out", "lse", "dq", "dk", "dv"};

/* got against a reference given as floats (ref_dtype f32) or as another
 * result set in dtype (converted here). */
static check_report check_results(const char *what, const char *reference,
                                  const fa_attn *a, const h_tensors *got,
                                  const float *const ref32[5], const h_tensors *ref_res)
{
    check_report c;
    c.what = what;
    c.reference = reference;
    c.passed = 1;
    const void *got_data[5] = {got->out, got->lse, got->dq, got->dk, got->dv};
    fa_dtype dtypes[5] = {a->dtype, FA_DTYPE_F32, a->dtype, a->dtype, a->dtype};
    int64_t n[5] = {h_numel_out(a), h_numel_lse(a), h_numel_q(a), h_numel_k(a),
                    h_numel_v(a)};
    for (int t = 0; t < 5; ++t) {
        c.tol[t] = t == 1 ? H_LSE_TOLERANCE : h_tolerance(a->dtype);
        if (ref32) {
            c.err[t] = h_compare(got_data[t], dtypes[t], ref32[t], n[t]);
        } else {
            const void *ref_data[5] = {ref_res->out, ref_res->lse, ref_res->dq,
                                       ref_res->dk, ref_res->dv};
            float *ref = malloc(sizeof(float) * (size_t)n[t]);
            if (!ref) {
                c.err[t].rel_err = INFINITY;
                c.err[t].max_abs_err = INFINITY;
                c.err[t].max_abs_ref = 0;
            } else {
                h_load_all(ref, ref_data[t], dtypes[t], n[t]);
                c.err[t] = h_compare(got_data[t], dtypes[t], ref, n[t]);
                free(ref);
            }
        }
    }
    /* A gradient whose reference is ~0 (dq and dk with one visible key per
     * row) holds only rounding noise: its error is measured against 1% of
     * the largest of out, dq, dk, dv rather than against that noise. */
    double scale = 0.0;
    for (int t = 0; t < 5; ++t)
        if (t != 1 && c.err[t].max_abs_ref > scale)
            scale = c.err[t].max_abs_ref;
    for (int t = 0; t < 5; ++t) {
        if (t != 1 && c.err[t].max_abs_ref < 0.01 * scale)
            c.err[t].rel_err = c.err[t].max_abs_err / (0.01 * scale);
        if (!(c.err[t].rel_err <= c.tol[t]))
            c.passed = 0;
    }
    return c;
}

static void print_json(const options *o, double flops_fwd, const variant_report *v, int nv,
                       const check_report *c, int nc, int passed)
{
    const fa_attn *a = &o->attn;
    printf("{\n  \"tool\": \"flashattn-run\",\n  \"library_version\": \"%s\",\n",
           fa_version_string());
    printf("  \"config\": {\"batch\": %lld, \"seqlen_q\": %lld, \"seqlen_k\": %lld, "
           "\"heads_q\": %lld, \"heads_kv\": %lld, \"head_dim\": %lld, \"head_dim_v\": %lld, "
           "\"dtype\": \"%s\", \"causal\": %s, \"window_left\": %lld, \"window_right\": %lld, "
           "\"softcap\": %g, \"dropout\": %g, \"seed\": %llu, \"threads\": %d, \"reps\": %d},\n",
           (long long)a->batch, (long long)a->seqlen_q, (long long)a->seqlen_k,
           (long long)a->heads_q, (long long)a->heads_kv, (long long)a->head_dim,
           (long long)a->head_dim_v, fa_dtype_name(a->dtype), a->causal ? "true" : "false",
           (long long)a->window_left, (long long)a->window_right, a->softcap, a->dropout_p,
           (unsigned long long)o->seed, o->threads, o->reps);
    printf("  \"flops\": {\"forward\": %.6g, \"backward\": %.6g},\n", flops_fwd,
           2.5 * flops_fwd);
    printf("  \"memory_method\": \"cpu: measured growth of the peak RSS (VmHWM) of a forked child; "
           "cuda: library workspace query\",\n");
    printf("  \"runs\": [");
    int first = 1;
    for (int i = 0; i < nv; ++i) {
        if (v[i].skipped[0]) {
            printf("%s\n    {\"variant\": \"%s\", \"device\": \"%s\", \"skipped\": ",
                   first ? "" : ",", v[i].name, v[i].device);
            h_json_string(stdout, v[i].skipped);
            printf("}");
            first = 0;
        }
        if (!v[i].ran)
            continue;
        for (int phase = 0; phase < 2; ++phase) {
            const h_phase_result *p = &v[i].result.phase[phase];
            printf("%s\n    {\"variant\": \"%s\", \"device\": \"%s\", \"pass\": \"%s\", "
                   "\"ok\": %s",
                   first ? "" : ",", v[i].name, v[i].device,
                   phase == 0 ? "forward" : "backward", v[i].result.ok ? "true" : "false");
            first = 0;
            if (!v[i].result.ok) {
                printf(", \"error\": ");
                h_json_string(stdout, v[i].result.message);
                printf("}");
                continue;
            }
            double flops = phase == 0 ? flops_fwd : 2.5 * flops_fwd;
            printf(", \"median_ms\": ");
            h_json_number(stdout, 1e3 * p->median_s);
            printf(", \"min_ms\": ");
            h_json_number(stdout, 1e3 * p->min_s);
            printf(", \"gflops\": ");
            h_json_number(stdout, flops / p->median_s * 1e-9);
            if (p->peak_extra_bytes >= 0)
                printf(", \"peak_extra_bytes_measured\": %lld", (long long)p->peak_extra_bytes);
            if (v[i].info) {
                printf(", \"workspace_bytes\": %zu, \"kernel\": ",
                       v[i].info->workspace_bytes[phase]);
                h_json_string(stdout, v[i].info->kernel[phase]);
            }
            printf("}");
        }
    }
    printf("\n  ],\n  \"checks\": [");
    for (int i = 0; i < nc; ++i) {
        printf("%s\n    {\"result\": \"%s\", \"reference\": \"%s\", \"passed\": %s, "
               "\"tensors\": {",
               i ? "," : "", c[i].what, c[i].reference, c[i].passed ? "true" : "false");
        for (int t = 0; t < 5; ++t) {
            printf("%s\"%s\": {\"max_abs_err\": ", t ? ", " : "", result_names[t]);
            h_json_number(stdout, c[i].err[t].max_abs_err);
            printf(", \"max_abs_ref\": ");
            h_json_number(stdout, c[i].err[t].max_abs_ref);
            printf(", \"rel_err\": ");
            h_json_number(stdout, c[i].err[t].rel_err);
            printf(", \"tolerance\": %g}", c[i].tol[t]);
        }
        printf("}}");
    }
    printf("\n  ],\n  \"passed\": %s\n}\n", passed ? "true" : "false");
}

static void print_text(const options *o, double flops_fwd, const variant_report *v, int nv,
                       const check_report *c, int nc, int passed)
{
    const fa_attn *a = &o->attn;
    char mem[32];
    printf("flashattn-run (library %s)\n", fa_version_string());
    printf("problem: batch %lld, seqlen q %lld k %lld, heads q %lld kv %lld, head_dim %lld "
           "(v %lld), %s%s, window (%lld, %lld), softcap %g, dropout %g\n",
           (long long)a->batch, (long long)a->seqlen_q, (long long)a->seqlen_k,
           (long long)a->heads_q, (long long)a->heads_kv, (long long)a->head_dim,
           (long long)a->head_dim_v, fa_dtype_name(a->dtype), a->causal ? ", causal" : "",
           (long long)a->window_left, (long long)a->window_right, a->softcap, a->dropout_p);
    printf("FLOPs (FlashAttention count): forward %.3g G, backward %.3g G\n",
           flops_fwd * 1e-9, 2.5 * flops_fwd * 1e-9);
    printf("threads: %d%s; flash: median of %d after 1 warm-up; naive: one run\n\n",
           o->threads, o->threads == 0 ? " (all cores)" : "", o->reps);
    printf("%-6s %-5s %-4s %10s %10s %13s %12s  %s\n", "", "", "pass", "median ms",
           "GFLOP/s", "peak extra", "workspace", "kernel");
    for (int i = 0; i < nv; ++i) {
        if (v[i].skipped[0])
            printf("%-6s %-5s skipped: %s\n", v[i].name, v[i].device, v[i].skipped);
        if (!v[i].ran)
            continue;
        if (!v[i].result.ok) {
            printf("%-6s %-5s FAILED: %s\n", v[i].name, v[i].device, v[i].result.message);
            continue;
        }
        for (int phase = 0; phase < 2; ++phase) {
            const h_phase_result *p = &v[i].result.phase[phase];
            double flops = phase == 0 ? flops_fwd : 2.5 * flops_fwd;
            char ws[32] = "-";
            if (v[i].info)
                h_format_bytes((double)v[i].info->workspace_bytes[phase], ws, sizeof ws);
            printf("%-6s %-5s %-4s %10.2f %10.1f %13s %12s  %s\n", v[i].name, v[i].device,
                   phase == 0 ? "fwd" : "bwd", 1e3 * p->median_s, flops / p->median_s * 1e-9,
                   p->peak_extra_bytes >= 0
                       ? h_format_bytes((double)p->peak_extra_bytes, mem, sizeof mem)
                       : "n/a",
                   ws, v[i].info ? v[i].info->kernel[phase] : "");
        }
    }
    printf("\npeak extra: measured growth of the peak RSS (VmHWM) of a child process\n"
           "over its baseline (inputs and outputs resident); the bwd row includes what\n"
           "the fwd still holds (naive: P for all heads = %s). GPU: n/a (see workspace).\n",
           h_format_bytes((double)std_probs_bytes(a), mem, sizeof mem));
    if (nc == 0)
        printf("\ncheck: none (%s)\n", o->naive ? "no flash result to check"
                                                 : "--no-naive: no reference");
    for (int i = 0; i < nc; ++i) {
        printf("\ncheck %s against %s: max |err| / max |ref|\n", c[i].what, c[i].reference);
        for (int t = 0; t < 5; ++t)
            printf("  %-4s %10.3e  (max |err| %.3e, max |ref| %.3e, tolerance %.0e)%s\n",
                   result_names[t], c[i].err[t].rel_err, c[i].err[t].max_abs_err,
                   c[i].err[t].max_abs_ref, c[i].tol[t],
                   c[i].err[t].rel_err <= c[i].tol[t] ? "" : "  FAIL");
        printf("  => %s\n", c[i].passed ? "PASS" : "FAIL");
    }
    printf("\n%s\n", passed ? "OK" : "FAILED");
}

/* ---------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    options opt;
    h_set_program("flashattn-run");
    int rc = parse_options(argc, argv, &opt);
    if (rc)
        return rc;
    const fa_attn *a = &opt.attn;

    /* Validate the problem with the library before allocating anything. */
    fa_context *probe;
    size_t ignored;
    fa_status st = fa_context_create(&probe, FA_DEVICE_CPU, 0);
    if (st == FA_SUCCESS)
        st = fa_forward_workspace_size(probe, a, &ignored);
    fa_context_destroy(probe);
    if (st == FA_ERROR_INVALID_ARGUMENT) {
        fprintf(stderr, "flashattn-run: invalid problem: %s\n", fa_last_error());
        return EXIT_BAD_INPUT;
    }

    int run_cpu = opt.devices != DEVICES_CUDA;
    int want_gpu = opt.devices != DEVICES_CPU;
    int need_gpu = opt.devices == DEVICES_CUDA || opt.devices == DEVICES_ALL;
#ifndef FA_TOOL_CUDA
    if (need_gpu) {
        fprintf(stderr, "flashattn-run: --device %s: this program was built without CUDA\n",
                opt.devices == DEVICES_ALL ? "all" : "cuda");
        return EXIT_BAD_INPUT;
    }
    want_gpu = 0;
#endif
    if (opt.naive) {
        double phys = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
        double need = (double)std_probs_bytes(a) + (double)std_scratch_bytes(a, 1);
        if (need > 0.75 * phys) {
            char need_text[32], phys_text[32];
            fprintf(stderr,
                    "flashattn-run: the naive reference needs %s for P, more than 3/4 of "
                    "this machine's %s; use --no-naive or a smaller problem\n",
                    h_format_bytes(need, need_text, sizeof need_text),
                    h_format_bytes(phys, phys_text, sizeof phys_text));
            return EXIT_BAD_INPUT;
        }
    }

    /* All tensors in one shared mapping (children write results into it). */
    buffers buf;
    memset(&buf, 0, sizeof buf);
    size_t dtype_bytes[9], float_bytes[9];
    tensor_bytes(a, fa_dtype_size(a->dtype), dtype_bytes);
    tensor_bytes(a, sizeof(float), float_bytes);
    void **cpu_slots[9], **naive_slots[9], **gpu_slots[9];
    h_tensor_slots(&buf.flash_cpu, cpu_slots);
    h_tensor_slots(&buf.naive, naive_slots);
    h_tensor_slots(&buf.flash_gpu, gpu_slots);
    h_buffer requests[29];
    int count = 0;
    for (int i = 0; i < 9; ++i) {
        requests[count++] = (h_buffer){cpu_slots[i], dtype_bytes[i]};
        requests[count++] = (h_buffer){naive_slots[i], opt.naive ? float_bytes[i] : 0};
        if (i >= 4) /* the GPU's inputs are the CPU's */
            requests[count++] = (h_buffer){gpu_slots[i], want_gpu ? dtype_bytes[i] : 0};
    }
    requests[count++] = (h_buffer){(void **)&buf.info_cpu, sizeof(h_flash_info)};
    requests[count++] = (h_buffer){(void **)&buf.info_gpu, sizeof(h_flash_info)};
    size_t shared_bytes;
    void *shared = h_shared_buffers(requests, count, &shared_bytes);
    if (!shared) {
        fprintf(stderr, "flashattn-run: cannot map the tensors' shared memory\n");
        return EXIT_CHECK_FAILED;
    }
    /* Distinct streams per tensor; inputs rounded to dtype, floats exact. */
    int64_t numel[4] = {h_numel_q(a), h_numel_k(a), h_numel_v(a), h_numel_out(a)};
    for (int i = 0; i < 4; ++i)
        h_fill_normal(*cpu_slots[i], opt.naive ? *naive_slots[i] : NULL, a->dtype, numel[i],
                      opt.seed * 4 + (uint64_t)i + 1);

    variant_report variants[3];
    memset(variants, 0, sizeof variants);
    variants[0] = (variant_report){"flash", "cpu", 0, {0}, buf.info_cpu, ""};
    variants[1] = (variant_report){"naive", "cpu", 0, {0}, NULL, ""};
    variants[2] = (variant_report){"flash", "cuda", 0, {0}, buf.info_gpu, ""};
    int all_ran = 1;
    if (run_cpu) {
        h_flash_job_args args = {a, FA_DEVICE_CPU, opt.threads, buf.flash_cpu, buf.info_cpu,
                                 NULL};
        h_job job = h_flash_job(&args, 1, opt.reps);
        if (h_run_job(&job, shared, shared_bytes, &variants[0].result))
            perror("flashattn-run: fork");
        variants[0].ran = 1;
        all_ran &= variants[0].result.ok;
    }
    if (opt.naive) {
        fa_attn attn32 = *a; /* the reference runs on the float copies */
        attn32.dtype = FA_DTYPE_F32;
        std_job_args args = {&attn32, std_gemm_reference, opt.threads, NULL, buf.naive};
        h_job job = std_job(&args, 0, 1);
        if (h_run_job(&job, shared, shared_bytes, &variants[1].result))
            perror("flashattn-run: fork");
        variants[1].ran = 1;
        all_ran &= variants[1].result.ok;
    }
#ifdef FA_TOOL_CUDA
    if (want_gpu) {
        /* auto skips the GPU when there is none or the library cannot run
         * this problem there (e.g. f32); cuda and all make that a failure. */
        fa_context *gpu_probe;
        size_t ignored_bytes;
        fa_status st = fa_context_create(&gpu_probe, FA_DEVICE_CUDA, 0);
        if (st == FA_SUCCESS &&
            (st = fa_forward_workspace_size(gpu_probe, a, &ignored_bytes)) == FA_SUCCESS)
            st = fa_backward_workspace_size(gpu_probe, a, &ignored_bytes);
        fa_context_destroy(gpu_probe);
        if (st == FA_SUCCESS || need_gpu) {
            run_gpu(&opt, &buf, &variants[2].result);
            variants[2].ran = 1;
            all_ran &= variants[2].result.ok;
        } else {
            snprintf(variants[2].skipped, sizeof variants[2].skipped, "%s", fa_last_error());
        }
    }
#endif

    check_report checks[2];
    int nc = 0;
    const float *ref32[5] = {buf.naive.out, buf.naive.lse, buf.naive.dq, buf.naive.dk,
                             buf.naive.dv};
    int have_ref = variants[1].ran && variants[1].result.ok;
    for (int i = 0; i < 3; i += 2) {
        if (!variants[i].ran || !variants[i].result.ok)
            continue;
        const h_tensors *got = i == 0 ? &buf.flash_cpu : &buf.flash_gpu;
        const char *what = i == 0 ? "flash cpu" : "flash cuda";
        if (have_ref)
            checks[nc++] = check_results(what, "naive", a, got, ref32, NULL);
        else if (i == 2 && variants[0].ran && variants[0].result.ok)
            checks[nc++] = check_results(what, "flash cpu", a, got, NULL, &buf.flash_cpu);
    }
    int passed = all_ran;
    for (int i = 0; i < nc; ++i)
        passed &= checks[i].passed;

    double flops_fwd = h_attention_flops(a);
    if (opt.json)
        print_json(&opt, flops_fwd, variants, 3, checks, nc, passed);
    else
        print_text(&opt, flops_fwd, variants, 3, checks, nc, passed);
    h_shared_free(shared, shared_bytes);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "flashattn-run: writing the report failed\n");
        return 1;
    }
    return passed ? 0 : EXIT_CHECK_FAILED;
}
