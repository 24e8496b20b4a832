/*
 * Development harness for the Hopper forward (src/cuda/sm90/): calls
 * fa_sm90_supports / fa_sm90_forward directly on hand-built fa_problems,
 * checks them against a simple one-row-per-block reference kernel, and
 * times them with CUDA events. Built and run by scripts/device_sm90.sh only.
 *
 *   sm90_dev            correctness grid, repeat check, then the timing grid
 *   sm90_dev --test     correctness grid only
 *   sm90_dev --small    a few small cases (for compute-sanitizer)
 *   sm90_dev --bench [hdim [causal [seqlen]]]   timing grid (or some cells)
 *   sm90_dev --burn hdim causal seqlen seconds  one cell back to back for a
 *                       while (scripts/clock_probe.sh samples the clocks)
 *
 * Correctness rule (FlashAttention's tests): with ref the fp32 attention of
 * the same rounded inputs and lowp the same computation with the
 * probabilities and the output rounded to the input dtype,
 *     max|out - ref| <= 2 * max|lowp - ref| + 1e-5,
 * every output element written (the buffer is poisoned with NaN first),
 * padding between heads untouched, and |lse - lse_ref| <= 1e-3 (-inf
 * exactly where the row has no visible key). Outputs whose reference is NaN
 * (cases with NaN planted in V) must be NaN, and no others.
 */
#include "fa_internal.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the few API-layer functions the backend calls ---------------------- */

static char g_error[512];
extern "C" fa_status fa_fail(fa_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_error, sizeof g_error, fmt, ap);
    va_end(ap);
    return status;
}
extern "C" void fa_clear_error(void) { g_error[0] = 0; }
extern "C" size_t fa_dtype_size(fa_dtype d) { return d == FA_DTYPE_F32 ? 4 : 2; }
extern "C" const char *fa_dtype_name(fa_dtype d) { return d == FA_DTYPE_BF16 ? "bf16" : d == FA_DTYPE_F16 ? "fp16" : "?"; }

#define CHECK_CUDA(call)                                                                                     \
    do {                                                                                                     \
        cudaError_t err_ = (call);                                                                           \
        if (err_ != cudaSuccess) {                                                                           \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(err_));      \
            exit(2);                                                                                         \
        }                                                                                                    \
    } while (0)

/* ---- a test case ---------------------------------------------------------- */

typedef struct {
    const char *name;
    fa_dtype dtype;
    int d, batch, sq, sk, hq, hkv;
    int causal, window_left, window_right;
    float softcap;
    int varlen;
    int cu_q[8], cu_k[8]; /* varlen: batch + 1 entries */
    int head_pad;         /* extra elements between heads (strided layout) */
    int nan_v_begin, nan_v_end; /* V rows (packed, all heads) set to NaN */
    int no_cluster;             /* FA_SM90_CLUSTER=0: one CTA per cluster */
} test_case;

/* ---- reference: one block per (row, head, batch) ------------------------- */

template <typename Elem> __device__ float to_f(Elem x);
template <> __device__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <> __device__ float to_f(__half x) { return __half2float(x); }
template <typename Elem> __device__ float round_to(float x);
template <> __device__ float round_to<__nv_bfloat16>(float x) { return __bfloat162float(__float2bfloat16(x)); }
template <> __device__ float round_to<__half>(float x) { return __half2float(__float2half(x)); }

__device__ float block_reduce(float x, bool is_max, float *scratch)
{
    for (int o = 16; o > 0; o /= 2) {
        float y = __shfl_xor_sync(0xffffffffu, x, o);
        x = is_max ? fmaxf(x, y) : x + y;
    }
    __syncthreads();
    if (threadIdx.x % 32 == 0)
        scratch[threadIdx.x / 32] = x;
    __syncthreads();
    x = scratch[0];
    for (int w = 1; w < (int)blockDim.x / 32; ++w)
        x = is_max ? fmaxf(x, scratch[w]) : x + scratch[w];
    return x;
}

/* ref, lowp: (total_rows, hq, d) float, total_rows = b*sq or total_q */
template <typename Elem>
__global__ void reference_kernel(fa_problem p, float *ref, float *lowp, float *lse_ref)
{
    extern __shared__ float scores[];
    __shared__ float scratch[32];
    int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    fa_seq seq = fa_seq_of(p.varlen, p.cu_seqlens_q, p.cu_seqlens_k, nullptr, p.seqlen_q, p.seqlen_k, b);
    if (i >= seq.sq)
        return;
    int hk = h / (p.heads_q / p.heads_kv);
    const Elem *q = (const Elem *)p.q.data + fa_row_offset(&p.q, p.varlen, b, seq.q0 + i, h);
    int64_t lo, hi;
    fa_window_range(i, seq.sq, seq.sk, p.window_left, p.window_right, &lo, &hi);
    float m = -INFINITY;
    for (int j = threadIdx.x; j < seq.sk; j += blockDim.x) {
        float s = -INFINITY;
        if (j >= lo && j < hi) {
            const Elem *k = (const Elem *)p.k.data + fa_row_offset(&p.k, p.varlen, b, seq.k0 + j, hk);
            float dot = 0.0f;
            for (int c = 0; c < p.head_dim; ++c)
                dot += to_f(q[c]) * to_f(k[c]);
            s = dot * p.softmax_scale;
            if (p.softcap > 0.0f)
                s = p.softcap * tanhf(s / p.softcap);
        }
        scores[j] = s;
        m = fmaxf(m, s);
    }
    m = block_reduce(m, true, scratch);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < seq.sk; j += blockDim.x) {
        float e = m == -INFINITY ? 0.0f : expf(scores[j] - m);
        scores[j] = e;
        sum += e;
    }
    sum = block_reduce(sum, false, scratch);
    int64_t row = p.varlen ? seq.q0 + i : (int64_t)b * p.seqlen_q + i;
    float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    for (int c = threadIdx.x; c < p.head_dim_v; c += blockDim.x) {
        float acc = 0.0f, acc_lowp = 0.0f;
        for (int j = 0; j < seq.sk; ++j) {
            const Elem *v = (const Elem *)p.v.data + fa_row_offset(&p.v, p.varlen, b, seq.k0 + j, hk);
            float vj = to_f(v[c]);
            acc += scores[j] * vj;
            acc_lowp += round_to<Elem>(scores[j] * inv) * vj;
        }
        ref[(row * p.heads_q + h) * p.head_dim_v + c] = acc * inv;
        lowp[(row * p.heads_q + h) * p.head_dim_v + c] = round_to<Elem>(acc_lowp);
    }
    if (threadIdx.x == 0)
        lse_ref[fa_lse_index(p.varlen, b, h, p.varlen ? row : i, p.heads_q, p.seqlen_q, p.total_q)] =
            sum > 0.0f ? m + logf(sum) : -INFINITY;
}

/* ---- host helpers ---------------------------------------------------------- */

/* Inputs: N(0, 1) from a counter-based hash (Box-Muller), drawn on the device
 * so that the 16k-token timing inputs take milliseconds, not minutes. */
__device__ uint32_t hash32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    return x ^ (x >> 16);
}
template <typename Elem> __device__ Elem from_f(float x);
template <> __device__ __nv_bfloat16 from_f(float x) { return __float2bfloat16(x); }
template <> __device__ __half from_f(float x) { return __float2half(x); }
template <typename Elem> __global__ void randn_kernel(Elem *x, size_t n, uint32_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t a = hash32((uint32_t)i * 2u + seed * 0x9E3779B9u), b = hash32(a ^ 0x68e31da4u);
        float u1 = (a >> 8) * (1.0f / 16777216.0f) + 1e-7f, u2 = (b >> 8) * (1.0f / 16777216.0f);
        x[i] = from_f<Elem>(sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2));
    }
}
static uint32_t g_seed = 1;

static float from_bits(uint16_t b, fa_dtype dt)
{
    if (dt == FA_DTYPE_BF16) {
        __nv_bfloat16 v;
        memcpy(&v, &b, 2);
        return __bfloat162float(v);
    }
    __half v;
    memcpy(&v, &b, 2);
    return __half2float(v);
}

/* A (rows, heads, dim) tensor with `pad` elements after each head's vector:
 * stride_head = dim + pad, stride_seq = heads * stride_head. */
typedef struct {
    uint16_t *dev;
    size_t elems;
    fa_tensor view;
} tensor_buf;

static tensor_buf make_tensor(int batch, int rows, int heads, int dim, int pad, int random, fa_dtype dt)
{
    tensor_buf t;
    int64_t sh = dim + pad, ss = heads * sh, sb = rows * ss;
    t.elems = (size_t)batch * sb;
    CHECK_CUDA(cudaMalloc(&t.dev, t.elems * 2 + 16));
    if (!random)
        CHECK_CUDA(cudaMemset(t.dev, 0xFF, t.elems * 2)); /* 0xFFFF is NaN in bf16 and fp16 */
    else if (dt == FA_DTYPE_BF16)
        randn_kernel<<<1024, 256>>>((__nv_bfloat16 *)t.dev, t.elems, g_seed++);
    else
        randn_kernel<<<1024, 256>>>((__half *)t.dev, t.elems, g_seed++);
    CHECK_CUDA(cudaGetLastError());
    t.view.data = t.dev;
    t.view.stride_batch = sb;
    t.view.stride_seq = ss;
    t.view.stride_head = sh;
    return t;
}

typedef struct {
    tensor_buf q, k, v, out;
    float *lse;
    int32_t *cu_q_dev, *cu_k_dev;
    fa_problem p;
} problem_bufs;

static problem_bufs make_problem(const test_case *c)
{
    problem_bufs pb;
    memset(&pb, 0, sizeof pb);
    fa_problem *p = &pb.p;
    p->batch = c->batch;
    p->heads_q = c->hq;
    p->heads_kv = c->hkv;
    p->head_dim = p->head_dim_v = c->d;
    p->dtype = c->dtype;
    p->softmax_scale = 1.0f / sqrtf((float)c->d);
    p->window_left = c->window_left;
    p->window_right = c->causal ? 0 : c->window_right;
    p->causal = c->causal;
    p->softcap = c->softcap;
    int qb = c->batch, kb = c->batch, q_rows = c->sq, k_rows = c->sk;
    if (c->varlen) {
        int max_q = 0, max_k = 0;
        for (int b = 0; b < c->batch; ++b) {
            max_q = c->cu_q[b + 1] - c->cu_q[b] > max_q ? c->cu_q[b + 1] - c->cu_q[b] : max_q;
            max_k = c->cu_k[b + 1] - c->cu_k[b] > max_k ? c->cu_k[b + 1] - c->cu_k[b] : max_k;
        }
        p->varlen = 1;
        p->seqlen_q = max_q;
        p->seqlen_k = max_k;
        p->total_q = c->cu_q[c->batch];
        p->total_k = c->cu_k[c->batch];
        qb = kb = 1;
        q_rows = (int)p->total_q;
        k_rows = (int)p->total_k;
        CHECK_CUDA(cudaMalloc(&pb.cu_q_dev, 4 * (c->batch + 1)));
        CHECK_CUDA(cudaMalloc(&pb.cu_k_dev, 4 * (c->batch + 1)));
        CHECK_CUDA(cudaMemcpy(pb.cu_q_dev, c->cu_q, 4 * (c->batch + 1), cudaMemcpyHostToDevice));
        CHECK_CUDA(cudaMemcpy(pb.cu_k_dev, c->cu_k, 4 * (c->batch + 1), cudaMemcpyHostToDevice));
        p->cu_seqlens_q = pb.cu_q_dev;
        p->cu_seqlens_k = pb.cu_k_dev;
        p->cu_seqlens_q_host = c->cu_q;
        p->cu_seqlens_k_host = c->cu_k;
    } else {
        p->seqlen_q = c->sq;
        p->seqlen_k = c->sk;
        p->total_q = (int64_t)c->batch * c->sq;
        p->total_k = (int64_t)c->batch * c->sk;
    }
    pb.q = make_tensor(qb, q_rows, c->hq, c->d, c->head_pad, 1, c->dtype);
    pb.k = make_tensor(kb, k_rows, c->hkv, c->d, c->head_pad, 1, c->dtype);
    pb.v = make_tensor(kb, k_rows, c->hkv, c->d, c->head_pad, 1, c->dtype);
    pb.out = make_tensor(qb, q_rows, c->hq, c->d, c->head_pad, 0, c->dtype);
    size_t lse_n = (size_t)p->total_q * c->hq;
    CHECK_CUDA(cudaMalloc(&pb.lse, lse_n * 4 + 4));
    CHECK_CUDA(cudaMemset(pb.lse, 0xFF, lse_n * 4)); /* NaN */
    if (c->nan_v_end > c->nan_v_begin) /* 0xFF bytes are NaN in bf16 and fp16 */
        CHECK_CUDA(cudaMemset(pb.v.dev + (size_t)c->nan_v_begin * pb.v.view.stride_seq, 0xFF,
                              (size_t)(c->nan_v_end - c->nan_v_begin) * pb.v.view.stride_seq * 2));
    p->q = pb.q.view;
    p->k = pb.k.view;
    p->v = pb.v.view;
    p->out = pb.out.view;
    p->lse = pb.lse;
    p->stream = NULL;
    return pb;
}

static void free_problem(problem_bufs *pb)
{
    cudaFree(pb->q.dev);
    cudaFree(pb->k.dev);
    cudaFree(pb->v.dev);
    cudaFree(pb->out.dev);
    cudaFree(pb->lse);
    cudaFree(pb->cu_q_dev);
    cudaFree(pb->cu_k_dev);
}

static fa_cuda_device_info g_dev;

static fa_status run_sm90(fa_problem *p)
{
    fa_status st = fa_sm90_supports(p, FA_FORWARD, &g_dev);
    if (st != FA_SUCCESS)
        return st;
    return fa_sm90_forward(p, &g_dev);
}

/* ---- correctness ----------------------------------------------------------- */

static int check_case(const test_case *c, int repeat_check)
{
    problem_bufs pb = make_problem(c);
    fa_problem *p = &pb.p;
    if (c->no_cluster)
        setenv("FA_SM90_CLUSTER", "0", 1);
    else
        unsetenv("FA_SM90_CLUSTER");
    fa_status st = run_sm90(p);
    if (st != FA_SUCCESS) {
        printf("FAIL %-34s sm90 refused: %s\n", c->name, g_error);
        free_problem(&pb);
        return 0;
    }
    CHECK_CUDA(cudaGetLastError());
    CHECK_CUDA(cudaDeviceSynchronize());

    size_t rows = (size_t)p->total_q, n_out = rows * c->hq * c->d;
    float *ref, *lowp, *lse_ref;
    CHECK_CUDA(cudaMalloc(&ref, n_out * 4));
    CHECK_CUDA(cudaMalloc(&lowp, n_out * 4));
    CHECK_CUDA(cudaMalloc(&lse_ref, rows * c->hq * 4));
    size_t smem = (size_t)(p->seqlen_k + 32) * 4; /* slack: the compiler reads scores[] in 3-wide vectors */
    dim3 grid((unsigned)(p->seqlen_q > 0 ? p->seqlen_q : 1), c->hq, c->batch);
    if (c->dtype == FA_DTYPE_BF16) {
        CHECK_CUDA(cudaFuncSetAttribute(reference_kernel<__nv_bfloat16>, cudaFuncAttributeMaxDynamicSharedMemorySize, 200000));
        reference_kernel<__nv_bfloat16><<<grid, 128, smem>>>(*p, ref, lowp, lse_ref);
    } else {
        CHECK_CUDA(cudaFuncSetAttribute(reference_kernel<__half>, cudaFuncAttributeMaxDynamicSharedMemorySize, 200000));
        reference_kernel<__half><<<grid, 128, smem>>>(*p, ref, lowp, lse_ref);
    }
    CHECK_CUDA(cudaGetLastError());
    CHECK_CUDA(cudaDeviceSynchronize());

    uint16_t *out_h = (uint16_t *)malloc(pb.out.elems * 2);
    float *ref_h = (float *)malloc(n_out * 4), *lowp_h = (float *)malloc(n_out * 4);
    float *lse_h = (float *)malloc(rows * c->hq * 4), *lse_ref_h = (float *)malloc(rows * c->hq * 4);
    CHECK_CUDA(cudaMemcpy(out_h, pb.out.dev, pb.out.elems * 2, cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(ref_h, ref, n_out * 4, cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(lowp_h, lowp, n_out * 4, cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(lse_h, pb.lse, rows * c->hq * 4, cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(lse_ref_h, lse_ref, rows * c->hq * 4, cudaMemcpyDeviceToHost));

    double err = 0, err_lowp = 0, lse_err = 0;
    long unwritten = 0, pad_written = 0, lse_bad = 0, nan_bad = 0;
    int64_t sh = c->d + c->head_pad;
    for (size_t r = 0; r < rows; ++r)
        for (int h = 0; h < c->hq; ++h) {
            /* out is (batch, rows, heads, dim) with batch folded into rows */
            const uint16_t *o = out_h + (r * c->hq + h) * sh;
            for (int x = 0; x < c->d; ++x) {
                size_t idx = (r * c->hq + h) * c->d + x;
                float got = from_bits(o[x], c->dtype);
                if (ref_h[idx] != ref_h[idx] || lowp_h[idx] != lowp_h[idx]) {
                    nan_bad += got == got; /* a NaN of V must reach this output */
                    continue;
                }
                if (got != got) {
                    ++unwritten;
                    continue;
                }
                err = fmax(err, fabs(got - ref_h[idx]));
                err_lowp = fmax(err_lowp, fabs(lowp_h[idx] - ref_h[idx]));
            }
            for (int x = c->d; x < sh; ++x)
                pad_written += o[x] != 0xFFFF;
            float l = lse_h[h * rows + r], lr = lse_ref_h[h * rows + r];
            if (!c->varlen) { /* (batch, heads, seq) */
                size_t b = r / c->sq, i = r % c->sq;
                l = lse_h[(b * c->hq + h) * c->sq + i];
                lr = lse_ref_h[(b * c->hq + h) * c->sq + i];
            }
            if (isinf(lr) || isinf(l))
                lse_bad += !(isinf(lr) && isinf(l) && lr < 0 && l < 0);
            else if (l != l)
                ++lse_bad;
            else
                lse_err = fmax(lse_err, fabs(l - lr));
        }
    double tol = 2 * err_lowp + 1e-5;
    int ok = unwritten == 0 && pad_written == 0 && lse_bad == 0 && nan_bad == 0 && err <= tol && lse_err <= 1e-3;

    int deterministic = 1;
    if (repeat_check) {
        uint16_t *again = (uint16_t *)malloc(pb.out.elems * 2);
        for (int rep = 0; rep < 3 && deterministic; ++rep) {
            if (run_sm90(p) != FA_SUCCESS)
                deterministic = 0;
            CHECK_CUDA(cudaDeviceSynchronize());
            CHECK_CUDA(cudaMemcpy(again, pb.out.dev, pb.out.elems * 2, cudaMemcpyDeviceToHost));
            deterministic = deterministic && memcmp(again, out_h, pb.out.elems * 2) == 0;
        }
        free(again);
        ok = ok && deterministic;
    }
    printf("%s %-34s %-22s err %.2e tol %.2e lse_err %.1e unwritten %ld pad_written %ld lse_bad %ld%s%s\n",
           ok ? "PASS" : "FAIL", c->name, p->kernel_name, err, tol, lse_err, unwritten, pad_written, lse_bad,
           nan_bad ? " NAN-EXPECTED" : "",
           repeat_check ? (deterministic ? " repeat-identical" : " REPEAT-DIFFERS") : "");
    free(out_h);
    free(ref_h);
    free(lowp_h);
    free(lse_h);
    free(lse_ref_h);
    cudaFree(ref);
    cudaFree(lowp);
    cudaFree(lse_ref);
    free_problem(&pb);
    return ok;
}

/* The grid: every supported head dim and dtype x every option. */
static int build_cases(test_case *cases, int small)
{
    static const int dims[] = {64, 96, 128, 192, 256};
    static const fa_dtype dtypes[] = {FA_DTYPE_BF16, FA_DTYPE_F16};
    static char names[400][48];
    int n = 0;
    for (int di = 0; di < (small ? 2 : 5); ++di)
        for (int ti = 0; ti < (small ? 1 : 2); ++ti) {
            int d = small ? (di == 0 ? 64 : 256) : dims[di];
            fa_dtype dt = dtypes[ti];
            const char *tn = dt == FA_DTYPE_BF16 ? "bf16" : "fp16";
            test_case base;
            memset(&base, 0, sizeof base);
            base.dtype = dt;
            base.d = d;
            base.window_left = base.window_right = -1;
#define ADD(label, ...)                                                                                      \
    do {                                                                                                     \
        test_case c_ = base;                                                                                 \
        __VA_ARGS__;                                                                                         \
        snprintf(names[n], sizeof names[n], "%s d%d %s", label, d, tn);                                   \
        c_.name = names[n];                                                                                  \
        cases[n++] = c_;                                                                                     \
    } while (0)
            ADD("gqa b2 s300", c_.batch = 2, c_.sq = c_.sk = 300, c_.hq = 4, c_.hkv = 2);
            ADD("causal mqa 200x333", c_.batch = 1, c_.sq = 200, c_.sk = 333, c_.hq = 2, c_.hkv = 1, c_.causal = 1);
            ADD("causal 333x200 (empty rows)", c_.batch = 1, c_.sq = 333, c_.sk = 200, c_.hq = 2, c_.hkv = 2,
                c_.causal = 1);
            /* sequence 1's last key block reaches into sequence 2's rows
             * (211..); NaN there must not leak into sequence 1 (0 * NaN) */
            ADD("varlen NaN in next seq's V", c_.batch = 3, c_.hq = 2, c_.hkv = 1, c_.varlen = 1, c_.cu_q[1] = 17,
                c_.cu_q[2] = 317, c_.cu_q[3] = 446, c_.cu_k[1] = 0, c_.cu_k[2] = 211, c_.cu_k[3] = 611,
                c_.nan_v_begin = 212, c_.nan_v_end = 240);
            ADD("pairs b2 h2 256x300", c_.batch = 2, c_.sq = 256, c_.sk = 300, c_.hq = 2, c_.hkv = 2);
            if (small)
                continue;
            ADD("window(64,32) 257x513", c_.batch = 2, c_.sq = 257, c_.sk = 513, c_.hq = 3, c_.hkv = 1,
                c_.window_left = 64, c_.window_right = 32);
            ADD("softcap2 130x250", c_.batch = 1, c_.sq = 130, c_.sk = 250, c_.hq = 2, c_.hkv = 2, c_.softcap = 2.0f);
            ADD("varlen", c_.batch = 3, c_.hq = 4, c_.hkv = 2, c_.varlen = 1, c_.cu_q[1] = 17, c_.cu_q[2] = 317,
                c_.cu_q[3] = 446, c_.cu_k[1] = 0, c_.cu_k[2] = 211, c_.cu_k[3] = 611);
            ADD("varlen causal", c_.batch = 3, c_.hq = 2, c_.hkv = 2, c_.varlen = 1, c_.causal = 1, c_.cu_q[1] = 129,
                c_.cu_q[2] = 130, c_.cu_q[3] = 400, c_.cu_k[1] = 300, c_.cu_k[2] = 301, c_.cu_k[3] = 700);
            ADD("strided heads 200", c_.batch = 2, c_.sq = c_.sk = 200, c_.hq = 2, c_.hkv = 2, c_.head_pad = 8);
            ADD("seqlen 1", c_.batch = 2, c_.sq = c_.sk = 1, c_.hq = 2, c_.hkv = 1);
            /* hdim >= 128: clusters of two CTAs share K/V (multicast); more
             * pairs of tiles than clusters, so the shared ring runs across
             * tiles; a key tail; and the same without clusters */
            ADD("pairs gqa b8 h6 512x700", c_.batch = 8, c_.sq = 512, c_.sk = 700, c_.hq = 6, c_.hkv = 2);
            ADD("pairs off gqa b8 h6 512x700", c_.batch = 8, c_.sq = 512, c_.sk = 700, c_.hq = 6, c_.hkv = 2,
                c_.no_cluster = 1);
            /* more tiles than SMs: each CTA walks several tiles, so the
             * pipeline runs across tile boundaries (1-2 key blocks each) */
            ADD("many tiles causal b24 h8 130x190", c_.batch = 24, c_.sq = 130, c_.sk = 190, c_.hq = 8, c_.hkv = 4,
                c_.causal = 1);
            /* ... with sequences of no keys (their tiles are written out
             * while another tile's last P V is pending) and a window */
            ADD("many tiles varlen window h32", c_.batch = 7, c_.hq = 32, c_.hkv = 8, c_.varlen = 1,
                c_.window_left = 100, c_.window_right = 20, c_.cu_q[1] = 150, c_.cu_q[2] = 300, c_.cu_q[3] = 301,
                c_.cu_q[4] = 500, c_.cu_q[5] = 630, c_.cu_q[6] = 700, c_.cu_q[7] = 900, c_.cu_k[1] = 0,
                c_.cu_k[2] = 260, c_.cu_k[3] = 300, c_.cu_k[4] = 300, c_.cu_k[5] = 450, c_.cu_k[6] = 451,
                c_.cu_k[7] = 700);
#undef ADD
        }
    if (!small) {
        test_case big;
        memset(&big, 0, sizeof big);
        big.window_left = big.window_right = -1;
        big.name = "big causal d128 bf16 2048";
        big.dtype = FA_DTYPE_BF16, big.d = 128, big.batch = 1, big.sq = big.sk = 2048, big.hq = 4, big.hkv = 4;
        big.causal = 1;
        cases[n++] = big;
        big.name = "big d64 fp16 4096";
        big.dtype = FA_DTYPE_F16, big.d = 64, big.sq = big.sk = 4096, big.hq = 2, big.hkv = 1, big.causal = 0;
        cases[n++] = big;
        /* hdim 64's other configs (fwd_sm90.cu): causal 2k-4k (key block
         * 96, three stages; with a window too) and causal >= 8k */
        big.name = "big causal d64 bf16 2048";
        big.dtype = FA_DTYPE_BF16, big.sq = big.sk = 2048, big.hq = 2, big.hkv = 2, big.causal = 1;
        cases[n++] = big;
        big.name = "big window(500,100) d64 fp16 3000";
        big.dtype = FA_DTYPE_F16, big.sq = big.sk = 3000, big.causal = 0, big.window_left = 500, big.window_right = 100;
        cases[n++] = big;
        big.name = "big causal d64 bf16 8192";
        big.dtype = FA_DTYPE_BF16, big.sq = big.sk = 8192, big.hq = big.hkv = 1, big.causal = 1;
        big.window_left = big.window_right = -1;
        cases[n++] = big;
        big.name = "big causal d256 bf16 1500x1700";
        big.dtype = FA_DTYPE_BF16, big.d = 256, big.sq = 1500, big.sk = 1700, big.hq = 2, big.hkv = 2;
        big.causal = 1;
        cases[n++] = big;
        /* K/V of 4 MB per head: 8 heads per L2 section, so two sections
         * (the second short) in the heaviest-first order */
        big.name = "causal d256 bf16 300x4096 10 heads";
        big.sq = 300, big.sk = 4096, big.hq = big.hkv = 10;
        cases[n++] = big;
    }
    return n;
}

/* ---- timing ---------------------------------------------------------------- */

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* A cell of FA3's grid: 16k tokens per batch, hidden 2048, bf16. */
static test_case grid_cell(int hdim, int causal, int seqlen)
{
    test_case c;
    memset(&c, 0, sizeof c);
    c.name = "grid cell";
    c.dtype = FA_DTYPE_BF16;
    c.d = hdim;
    c.sq = c.sk = seqlen;
    c.batch = 16384 / seqlen;
    c.hq = c.hkv = 2048 / hdim;
    c.causal = causal;
    c.window_left = c.window_right = -1;
    return c;
}

static void run_or_exit(fa_problem *p)
{
    if (run_sm90(p) != FA_SUCCESS) {
        printf("sm90 refused: %s\n", g_error);
        exit(1);
    }
}

/* FA3's grid. Median over 15 samples, each of `calls` back-to-back
 * launches lasting >= ~2 ms. */
static void bench(int only_hdim, int only_causal, int only_seqlen)
{
    static const int seqlens[] = {512, 1024, 2048, 4096, 8192, 16384};
    static const int dims[] = {64, 128, 256};
    printf("\nbench sm90 (bf16, 16k tokens, hidden 2048): TFLOP/s\n");
    printf("%-6s %-6s %-7s %10s %10s\n", "hdim", "causal", "seqlen", "ms", "TFLOP/s");
    for (int di = 0; di < 3; ++di)
        for (int causal = 0; causal < 2; ++causal)
            for (int si = 0; si < 6; ++si) {
                if ((only_hdim && dims[di] != only_hdim) || (only_causal >= 0 && causal != only_causal) ||
                    (only_seqlen && seqlens[si] != only_seqlen))
                    continue;
                test_case c = grid_cell(dims[di], causal, seqlens[si]);
                problem_bufs pb = make_problem(&c);
                cudaEvent_t e0, e1;
                CHECK_CUDA(cudaEventCreate(&e0));
                CHECK_CUDA(cudaEventCreate(&e1));
                for (int w = 0; w < 3; ++w)
                    run_or_exit(&pb.p);
                CHECK_CUDA(cudaEventRecord(e0));
                run_sm90(&pb.p);
                CHECK_CUDA(cudaEventRecord(e1));
                CHECK_CUDA(cudaEventSynchronize(e1));
                float once;
                CHECK_CUDA(cudaEventElapsedTime(&once, e0, e1));
                int calls = (int)(2.0f / (once > 1e-3f ? once : 1e-3f)) + 1;
                calls = calls > 25 ? 25 : calls;
                float samples[15];
                for (int s = 0; s < 15; ++s) {
                    CHECK_CUDA(cudaEventRecord(e0));
                    for (int r = 0; r < calls; ++r)
                        run_sm90(&pb.p);
                    CHECK_CUDA(cudaEventRecord(e1));
                    CHECK_CUDA(cudaEventSynchronize(e1));
                    CHECK_CUDA(cudaEventElapsedTime(&samples[s], e0, e1));
                    samples[s] /= calls;
                }
                CHECK_CUDA(cudaGetLastError());
                qsort(samples, 15, sizeof(float), cmp_float);
                double ms = samples[7];
                double flops = 4.0 * c.batch * (double)c.sq * c.sk * c.hq * c.d / (causal ? 2 : 1);
                printf("%-6d %-6d %-7d %10.4f %10.1f\n", c.d, causal, c.sq, ms, flops / (ms * 1e-3) / 1e12);
                cudaEventDestroy(e0);
                cudaEventDestroy(e1);
                free_problem(&pb);
            }
}

/* One cell of the bench grid, launched back to back for `seconds`; prints
 * the TFLOP/s of each second. */
static void burn(int hdim, int causal, int seqlen, double seconds)
{
    test_case c = grid_cell(hdim, causal, seqlen);
    problem_bufs pb = make_problem(&c);
    cudaEvent_t e0, e1;
    CHECK_CUDA(cudaEventCreate(&e0));
    CHECK_CUDA(cudaEventCreate(&e1));
    const double flops = 4.0 * c.batch * (double)c.sq * c.sk * c.hq * c.d / (causal ? 2 : 1);
    for (double elapsed = 0.0; elapsed < seconds * 1e3;) {
        int calls = 0;
        float ms = 0.0f;
        CHECK_CUDA(cudaEventRecord(e0));
        do { /* about a second per line */
            for (int r = 0; r < 20; ++r, ++calls)
                run_or_exit(&pb.p);
            CHECK_CUDA(cudaEventRecord(e1));
            CHECK_CUDA(cudaEventSynchronize(e1));
            CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
        } while (ms < 1000.0f);
        elapsed += ms;
        printf("burn hdim %d causal %d seqlen %d: %.1f TFLOP/s over %d calls\n", hdim, causal, seqlen,
               flops * calls / (ms * 1e-3) / 1e12, calls);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    free_problem(&pb);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* a timed-out run still shows its lines */
    const char *mode = argc > 1 ? argv[1] : "";
    int small = strcmp(mode, "--small") == 0;
    int bench_only = strcmp(mode, "--bench") == 0;
    int test_only = small || strcmp(mode, "--test") == 0;
    int dev = 0, major = 0, minor = 0, sms = 0, smem = 0;
    CHECK_CUDA(cudaGetDevice(&dev));
    CHECK_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    CHECK_CUDA(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    CHECK_CUDA(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    g_dev.sm = 10 * major + minor;
    g_dev.num_sms = sms;
    g_dev.smem_per_block_optin = (size_t)smem;
    if (strcmp(mode, "--burn") == 0) {
        if (argc != 6) {
            fprintf(stderr, "usage: sm90_dev --burn hdim causal seqlen seconds\n");
            return 2;
        }
        burn(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atof(argv[5]));
        return 0;
    }

    int failed = 0, passed = 0;
    if (!bench_only) {
        static test_case cases[400];
        int n = build_cases(cases, small);
        for (int i = 0; i < n; ++i) {
            if (check_case(&cases[i], i % 7 == 0 || small))
                ++passed;
            else
                ++failed;
            fflush(stdout);
        }
        /* refusals: what the sm90 path must hand back to the dispatcher */
        test_case odd;
        memset(&odd, 0, sizeof odd);
        odd.dtype = FA_DTYPE_BF16, odd.d = 80, odd.batch = 1, odd.sq = odd.sk = 64, odd.hq = odd.hkv = 1;
        odd.window_left = odd.window_right = -1;
        problem_bufs pb = make_problem(&odd);
        fa_status st = fa_sm90_supports(&pb.p, FA_FORWARD, &g_dev);
        int refused = st == FA_ERROR_UNSUPPORTED;
        pb.p.head_dim = pb.p.head_dim_v = 64;
        pb.p.dropout_p = 0.1f;
        refused = refused && fa_sm90_supports(&pb.p, FA_FORWARD, &g_dev) == FA_ERROR_UNSUPPORTED;
        pb.p.dropout_p = 0.0f;
        pb.p.deterministic = 1; /* the Hopper backward adds dQ with atomics */
        refused = refused && fa_sm90_supports(&pb.p, FA_BACKWARD, &g_dev) == FA_ERROR_UNSUPPORTED;
        pb.p.deterministic = 0;
        const int64_t stride_seq = pb.p.q.stride_seq;
        pb.p.q.stride_seq = 68; /* 136 bytes: not a TMA stride */
        refused = refused && fa_sm90_supports(&pb.p, FA_FORWARD, &g_dev) == FA_ERROR_UNSUPPORTED;
        pb.p.q.stride_seq = stride_seq;
        refused = refused && fa_sm90_supports(&pb.p, FA_FORWARD, &g_dev) == FA_SUCCESS; /* the base is fine */
        pb.p.seqlen_k = (int64_t)1 << 29; /* the mask intervals' bound (only the sizes are read) */
        refused = refused && fa_sm90_supports(&pb.p, FA_FORWARD, &g_dev) == FA_ERROR_UNSUPPORTED;
        free_problem(&pb);
        printf("%s refusals (hdim 80, dropout, deterministic backward, misaligned stride, 2^29 keys) -> "
               "FA_ERROR_UNSUPPORTED\n",
               refused ? "PASS" : "FAIL");
        refused ? ++passed : ++failed;
        printf("%d passed, %d failed\n", passed, failed);
    }
    if (!test_only && !failed) /* --bench [hdim [causal [seqlen]]] picks cells */
        bench(bench_only && argc > 2 ? atoi(argv[2]) : 0, bench_only && argc > 3 ? atoi(argv[3]) : -1,
              bench_only && argc > 4 ? atoi(argv[4]) : 0);
    return failed ? 1 : 0;
}
