/*
 * Hopper (sm_90a) backward: workspace layout and the three launches of
 * bwd_kernel.cuh (preprocess, main, dQ conversion). What it supports is
 * decided in sm90.cu.
 */
#include "fa_internal.h"

#include <cuda.h>
#include <cuda_runtime.h>
#include <string.h>

#include "bwd_kernel.cuh"
#include "problem_params.h"
#include "tensor_maps.h"

using namespace fa_sm90_bwd;

/* Head dim the kernels are compiled for (96 runs as 128 and 192 as 256: the
 * tensor maps zero-fill the missing columns). */
static int padded_head_dim(int64_t d) { return d <= 64 ? 64 : d <= 128 ? 128 : 256; }

/* Workspace rows per (batch, head): the longest sequence, rounded up to a
 * whole number of every query block size. */
static int64_t rows_per_head(const fa_problem *p)
{
    return (p->seqlen_q + kRowPad - 1) / kRowPad * kRowPad;
}

static size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

/* dq_accum (rows x padded head dim), then lse_log2 and dsum (rows each), all
 * fp32, rows = batch x heads_q x rows_per_head; 0 past 2^62 bytes (varlen
 * sizes it by the longest sequence, which may be far from the total). */
extern "C" size_t fa_sm90_backward_workspace_size(const fa_problem *p)
{
    int64_t rows, floats;
    if (__builtin_mul_overflow(p->batch, p->heads_q, &rows) ||
        __builtin_mul_overflow(rows, rows_per_head(p), &rows) ||
        __builtin_mul_overflow(rows, (int64_t)padded_head_dim(p->head_dim) + 2, &floats) ||
        floats > ((int64_t)1 << 60))
        return 0;
    return align256((size_t)rows * padded_head_dim(p->head_dim) * 4) + 2 * align256((size_t)rows * 4);
}

static fa_status check_launch(const char *what)
{
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        return fa_fail(FA_ERROR_DEVICE, "sm90 backward: %s: %s", what, cudaGetErrorString(err));
    return FA_SUCCESS;
}

template <class Cfg> static fa_status launch(fa_problem *p, const fa_cuda_device_info *dev, const char *kernel_name)
{
    typedef typename Cfg::Elem Elem;
    constexpr int Dp = Cfg::kHeadDim;
    params prm;
    memset(&prm, 0, sizeof prm);
    fa_status st;
    if ((st = fa_sm90_encode_map(&prm.map_q, p, &p->q, 1, Cfg::kBlockM, "q")) != FA_SUCCESS ||
        (st = fa_sm90_encode_map(&prm.map_do, p, &p->dout, 1, Cfg::kBlockM, "dout")) != FA_SUCCESS ||
        (st = fa_sm90_encode_map(&prm.map_k, p, &p->k, 0, Cfg::kBlockN, "k")) != FA_SUCCESS ||
        (st = fa_sm90_encode_map(&prm.map_v, p, &p->v, 0, Cfg::kBlockN, "v")) != FA_SUCCESS)
        return st;
    prm.out = p->out.data;
    prm.dout = p->dout.data;
    prm.dq = p->dq.data;
    prm.dk = p->dk.data;
    prm.dv = p->dv.data;
    prm.t_out = p->out;
    prm.t_dout = p->dout;
    prm.t_dq = p->dq;
    prm.t_dk = p->dk;
    prm.t_dv = p->dv;
    fa_sm90_fill_problem(prm, p);
    prm.heads_kv = (int)p->heads_kv;
    prm.softmax_scale = p->softmax_scale;
    prm.rows_per_head = rows_per_head(p);
    const int64_t rows = (int64_t)p->batch * p->heads_q * prm.rows_per_head;
    char *ws = (char *)p->workspace;
    prm.dq_accum = (float *)ws;
    prm.lse_log2 = (float *)(ws + align256((size_t)rows * Dp * 4));
    prm.dsum = (float *)((char *)prm.lse_log2 + align256((size_t)rows * 4));
    p->kernel_name = kernel_name;
    if (rows == 0)
        return FA_SUCCESS;

    cudaStream_t stream = (cudaStream_t)p->stream;
    cudaError_t err = cudaMemsetAsync(prm.dq_accum, 0, (size_t)rows * Dp * 4, stream);
    if (err != cudaSuccess)
        return fa_fail(FA_ERROR_DEVICE, "sm90 backward: clearing the dQ accumulator: %s", cudaGetErrorString(err));
    constexpr int kRowsPerBlock = 256 / (Dp / 8);
    preprocess_kernel<Elem, Dp><<<(unsigned)((rows + kRowsPerBlock - 1) / kRowsPerBlock), 256, 0, stream>>>(prm);
    if ((st = check_launch("preprocess launch")) != FA_SUCCESS)
        return st;

    err = cudaFuncSetAttribute(main_kernel<Cfg>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           Cfg::kSmemBytes);
    if (err != cudaSuccess)
        return fa_fail(FA_ERROR_DEVICE, "sm90 backward: launch setup: %s", cudaGetErrorString(err));
    const dim3 grid = fa_kv_order_grid(&prm.heads_first, (unsigned)((p->seqlen_k + Cfg::kBlockN - 1) / Cfg::kBlockN),
                                       (int)p->heads_kv, (int)p->batch, dev->num_sms, p->window_right >= 0);
    main_kernel<Cfg><<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(prm);
    if ((st = check_launch("main kernel launch")) != FA_SUCCESS)
        return st;

    const int64_t items = rows * (Dp / 8);
    convert_dq_kernel<Cfg><<<(unsigned)((items + 255) / 256), 256, 0, stream>>>(prm);
    return check_launch("dq conversion launch");
}

template <typename Elem> static fa_status launch_for_head_dim(fa_problem *p, const fa_cuda_device_info *dev)
{
    const bool bf16 = !fa_is_half<Elem>::value;
    switch (p->head_dim) {
    case 64:
        return launch<config<Elem, 64>>(p, dev, bf16 ? "sm90.bwd.hdim64.bf16" : "sm90.bwd.hdim64.fp16");
    case 96:
        return launch<config<Elem, 128>>(p, dev, bf16 ? "sm90.bwd.hdim96.bf16" : "sm90.bwd.hdim96.fp16");
    case 128:
        return launch<config<Elem, 128>>(p, dev, bf16 ? "sm90.bwd.hdim128.bf16" : "sm90.bwd.hdim128.fp16");
    case 192:
        return launch<config<Elem, 256>>(p, dev, bf16 ? "sm90.bwd.hdim192.bf16" : "sm90.bwd.hdim192.fp16");
    case 256:
        return launch<config<Elem, 256>>(p, dev, bf16 ? "sm90.bwd.hdim256.bf16" : "sm90.bwd.hdim256.fp16");
    default:
        return fa_fail(FA_ERROR_UNSUPPORTED, "sm90 backward: head_dim %lld", (long long)p->head_dim);
    }
}

extern "C" fa_status fa_sm90_backward(fa_problem *p, const fa_cuda_device_info *dev)
{
    if (p->workspace_size < fa_sm90_backward_workspace_size(p))
        return fa_fail(FA_ERROR_INTERNAL, "sm90 backward: workspace of %zu bytes, %zu needed", p->workspace_size,
                       fa_sm90_backward_workspace_size(p));
    if (p->dtype == FA_DTYPE_BF16)
        return launch_for_head_dim<__nv_bfloat16>(p, dev);
    if (p->dtype == FA_DTYPE_F16)
        return launch_for_head_dim<__half>(p, dev);
    return fa_fail(FA_ERROR_UNSUPPORTED, "sm90 backward: dtype %s", fa_dtype_name(p->dtype));
}
