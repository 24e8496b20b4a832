/*
 * The FP8 quantizer on the GPU (fa_quantize_fp8 on a CUDA context; any
 * sm80+ architecture). Work is spread by rows, not by blocks, so that one
 * long block (block_rows 0: a whole sequence) fills the GPU as well as
 * many short ones do:
 *   1. amax: each warp takes a few consecutive rows (one row at a time,
 *      lane l holding columns l, l + 32, ...) and folds their max |y| into
 *      its block's slot with atomicMax on the float's bits (non-negative
 *      floats order as their bit patterns), the slots being the descale
 *      array itself, zeroed first;
 *   2. quantize: the same rows again, each divided by its block's descale;
 *   3. finalize: each slot's amax becomes its descale (1 for an empty or
 *      all-zero block).
 * A rotated row is recomputed in both passes (cheaper than keeping the
 * rows) in the warp's slice of shared memory: log2(dim) butterfly stages,
 * each lane updating the pairs p = lane, lane + 32, ... with a __syncwarp
 * between stages.
 *
 * The arithmetic is quantize.h's, operation for operation, in IEEE single
 * precision with subnormals kept, so that the bytes equal the CPU's (the
 * max is exact whatever the order).
 */
#include "quantize.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxDim = 256;
constexpr int kPerLane = kMaxDim / 32;
/* Consecutive rows per warp: few atomics per block, many warps. */
constexpr int64_t kRowsPerWarp = 8;
/* Blocks of a grid; larger jobs loop (any count stays in range). */
constexpr int64_t kMaxGrid = (int64_t)1 << 20;

/* The library's CUDA code is built with --use_fast_math, which flushes
 * subnormals and approximates division: these take the correctly rounded
 * instruction without .ftz, as the host computes. */
__device__ __forceinline__ float add_rn(float a, float b)
{
    float r;
    asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ float sub_rn(float a, float b)
{
    float r;
    asm("sub.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ float mul_rn(float a, float b)
{
    float r;
    asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ float div_rn(float a, float b)
{
    float r;
    asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

/* The descale of a block whose max |y| has the bits amax (quantize.h). */
__device__ __forceinline__ float descale_of(uint32_t amax, float fp8_max)
{
    if (amax == 0)
        return 1.0f;
    const float d = div_rn(__uint_as_float(amax), fp8_max);
    return __float_as_uint(d) < 0x00800000u ? __uint_as_float(0x00800000u) /* FLT_MIN */ : d;
}

/* A source element as float, exactly (bf16 by its bits: no flush). */
__device__ __forceinline__ float load_value(const __half *p) { return __half2float(*p); }
__device__ __forceinline__ float load_value(const __nv_bfloat16 *p)
{
    return __uint_as_float((uint32_t)*reinterpret_cast<const unsigned short *>(p) << 16);
}

/* Row g of the flattened (batch, heads, rows) order: fixed-length g =
 * (b·heads + h)·seqlen + r; varlen g = h·total + packed row, its sequence
 * found by binary search (the last b with cu[b] <= row: empty sequences
 * are skipped). Also the row's block (task) index into descale. */
struct Row {
    int64_t b, h, packed_row, task;
};

__device__ __forceinline__ Row locate(const fa_quant_job &j, int64_t g)
{
    Row w;
    int64_t r;
    if (j.varlen) {
        w.h = g / j.rows;
        w.packed_row = g % j.rows;
        int64_t lo = 0, hi = j.batch; /* cu[lo] <= row < cu[hi] */
        while (hi - lo > 1) {
            const int64_t mid = (lo + hi) / 2;
            if (j.cu_seqlens[mid] <= w.packed_row)
                lo = mid;
            else
                hi = mid;
        }
        w.b = lo;
        r = w.packed_row - j.cu_seqlens[lo];
    } else {
        const int64_t bh = g / j.seqlen;
        r = g % j.seqlen;
        w.h = bh % j.heads;
        w.b = bh / j.heads;
        w.packed_row = r;
    }
    w.task = (w.b * j.heads + w.h) * j.nblocks + r / j.block;
    return w;
}

/* y[k] = the value of column lane + 32k of row w (quantize.h), for the
 * columns below dim. row: the warp's dim floats of shared memory;
 * sign_bits[c]: the sign bit that s_c flips. */
template <typename T, bool kRotate>
__device__ __forceinline__ void row_values(const fa_quant_job &j, const Row &w, float *row,
                                           const uint32_t *sign_bits, int lane,
                                           float (&y)[kPerLane])
{
    const T *src = static_cast<const T *>(j.src.data) +
                   fa_row_offset(&j.src, j.varlen, w.b, w.packed_row, w.h);
    const int dim = (int)j.dim;
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
        const int c = lane + 32 * k;
        y[k] = 0.0f;
        if (c < dim) {
            const float x = load_value(src + c);
            if (kRotate)
                row[c] = __uint_as_float(__float_as_uint(x) ^ sign_bits[c]);
            else
                y[k] = x;
        }
    }
    if (!kRotate)
        return;
    __syncwarp();
    for (int h = 1; h < dim; h *= 2) {
        /* pair p joins elements e and e + h, e = (p / h)·2h + p % h */
        for (int p = lane; p < dim / 2; p += 32) {
            const int e = ((p & ~(h - 1)) << 1) | (p & (h - 1));
            const float a = row[e], b = row[e + h];
            row[e] = add_rn(a, b);
            row[e + h] = sub_rn(a, b);
        }
        __syncwarp();
    }
    /* each lane reads back only its own columns, which it alone writes
     * next: no barrier needed before the next row */
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
        const int c = lane + 32 * k;
        if (c < dim)
            y[k] = mul_rn(row[c], j.inv_sqrt_dim);
    }
}

/* The shared memory of both passes: the signs, and a row per warp. */
struct Smem {
    float rows[kWarps][kMaxDim];
    uint32_t sign_bits[kMaxDim];
};

template <bool kRotate>
__device__ __forceinline__ void init_signs(const fa_quant_job &j, Smem &sm)
{
    if (kRotate)
        for (int c = threadIdx.x; c < (int)j.dim; c += kThreads)
            sm.sign_bits[c] = fa_quant_sign(j.rotate_seed, c) < 0 ? 0x80000000u : 0u;
    __syncthreads();
}

__device__ __forceinline__ uint32_t warp_max(uint32_t v)
{
    for (int o = 16; o > 0; o /= 2)
        v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Pass 1 over rows_total rows: amax[task] = max(amax[task], |y| bits),
 * NaN skipped (above infinity's bits) as the host's fmaxf skips it.
 * Every branch below is uniform across the warp. */
template <typename T, bool kRotate>
__global__ void __launch_bounds__(kThreads)
    amax_kernel(const fa_quant_job j, int64_t rows_total, uint32_t *amax)
{
    __shared__ Smem sm;
    init_signs<kRotate>(j, sm);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t units = (rows_total + kRowsPerWarp - 1) / kRowsPerWarp;
    for (int64_t u = (int64_t)blockIdx.x * kWarps + warp; u < units;
         u += (int64_t)gridDim.x * kWarps) {
        const int64_t g1 = min((u + 1) * kRowsPerWarp, rows_total);
        int64_t task = -1;
        uint32_t m = 0;
        for (int64_t g = u * kRowsPerWarp; g < g1; ++g) {
            const Row w = locate(j, g);
            if (w.task != task) {
                m = warp_max(m);
                if (lane == 0 && m != 0)
                    atomicMax(&amax[task], m);
                task = w.task;
                m = 0;
            }
            float y[kPerLane];
            row_values<T, kRotate>(j, w, sm.rows[warp], sm.sign_bits, lane, y);
#pragma unroll
            for (int k = 0; k < kPerLane; ++k) {
                const uint32_t a = __float_as_uint(y[k]) & 0x7fffffffu;
                if (a < 0x7f800000u && a > m) /* finite values only (quantize.h) */
                    m = a;
            }
        }
        m = warp_max(m);
        if (lane == 0 && m != 0)
            atomicMax(&amax[task], m);
    }
}

/* Pass 2: dst = fp8(y / descale of the row's block). */
template <typename T, bool kRotate>
__global__ void __launch_bounds__(kThreads)
    quantize_kernel(const fa_quant_job j, int64_t rows_total, const uint32_t *amax)
{
    __shared__ Smem sm;
    init_signs<kRotate>(j, sm);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const __nv_fp8_interpretation_t kind =
        j.dst_dtype == FA_DTYPE_FP8_E5M2 ? __NV_E5M2 : __NV_E4M3;
    const int64_t units = (rows_total + kRowsPerWarp - 1) / kRowsPerWarp;
    for (int64_t u = (int64_t)blockIdx.x * kWarps + warp; u < units;
         u += (int64_t)gridDim.x * kWarps) {
        const int64_t g1 = min((u + 1) * kRowsPerWarp, rows_total);
        for (int64_t g = u * kRowsPerWarp; g < g1; ++g) {
            const Row w = locate(j, g);
            const float descale = descale_of(amax[w.task], j.fp8_max);
            float y[kPerLane];
            row_values<T, kRotate>(j, w, sm.rows[warp], sm.sign_bits, lane, y);
            uint8_t *out = static_cast<uint8_t *>(j.dst.data) +
                           fa_row_offset(&j.dst, j.varlen, w.b, w.packed_row, w.h);
#pragma unroll
            for (int k = 0; k < kPerLane; ++k) {
                const int c = lane + 32 * k;
                if (c < (int)j.dim)
                    out[c] = __nv_cvt_float_to_fp8(div_rn(y[k], descale), __NV_SATFINITE, kind);
            }
        }
    }
}

/* Pass 3: the amax bits in descale[0..tasks) become the descales. */
__global__ void __launch_bounds__(kThreads)
    finalize_kernel(float *descale, int64_t tasks, float fp8_max)
{
    for (int64_t t = (int64_t)blockIdx.x * kThreads + threadIdx.x; t < tasks;
         t += (int64_t)gridDim.x * kThreads)
        descale[t] = descale_of(__float_as_uint(descale[t]), fp8_max);
}

unsigned grid_for(int64_t items, int64_t per_block)
{
    const int64_t blocks = (items + per_block - 1) / per_block;
    return (unsigned)(blocks < kMaxGrid ? (blocks > 0 ? blocks : 1) : kMaxGrid);
}

/* Passes 1 and 2 over rows_total rows. */
template <typename T>
void launch_passes(const fa_quant_job &j, int64_t rows_total, uint32_t *amax, cudaStream_t stream)
{
    const unsigned grid = grid_for(rows_total, kRowsPerWarp * kWarps);
    if (j.rotate) {
        amax_kernel<T, true><<<grid, kThreads, 0, stream>>>(j, rows_total, amax);
        quantize_kernel<T, true><<<grid, kThreads, 0, stream>>>(j, rows_total, amax);
    } else {
        amax_kernel<T, false><<<grid, kThreads, 0, stream>>>(j, rows_total, amax);
        quantize_kernel<T, false><<<grid, kThreads, 0, stream>>>(j, rows_total, amax);
    }
}

} // namespace

extern "C" fa_status fa_cuda_quantize_fp8(const fa_quant_job *job, void *stream)
{
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    const int64_t tasks = job->batch * job->heads * job->nblocks;
    /* varlen: heads × the packed rows (stride_batch unused) */
    const int64_t rows_total = job->heads * job->rows * (job->varlen ? 1 : job->batch);
    uint32_t *amax = reinterpret_cast<uint32_t *>(job->descale);
    cudaError_t err = cudaMemsetAsync(amax, 0, (size_t)tasks * sizeof *amax, s);
    if (err == cudaSuccess) {
        if (rows_total > 0) {
            if (job->src_dtype == FA_DTYPE_BF16)
                launch_passes<__nv_bfloat16>(*job, rows_total, amax, s);
            else
                launch_passes<__half>(*job, rows_total, amax, s);
        }
        finalize_kernel<<<grid_for(tasks, kThreads), kThreads, 0, s>>>(job->descale, tasks,
                                                                        job->fp8_max);
        err = cudaGetLastError();
    }
    if (err != cudaSuccess)
        return fa_fail(FA_ERROR_DEVICE, "fa_quantize_fp8 on the GPU: %s", cudaGetErrorString(err));
    return FA_SUCCESS;
}
