/*
 * Hopper (sm_90a) backend: which problems its kernels run.
 *
 * Supported: bf16 / fp16; head_dim == head_dim_v in {64, 96, 128, 192, 256}
 * (backward too); causal, sliding window, softcap, GQA/MQA, varlen,
 * any seqlen. Not here (FA_ERROR_UNSUPPORTED, the dispatcher falls back to
 * sm80): dropout, ALiBi, block-sparse masks, deterministic backward, other
 * head dims, and tensors whose base or strides are not 16-byte aligned (TMA
 * needs both).
 */
#include "fa_internal.h"

#include "tensor_maps.h"

static int is_supported_head_dim(int64_t d)
{
    return d == 64 || d == 96 || d == 128 || d == 192 || d == 256;
}

/* The TMA rules for tensor t. A workspace-size query has no tensors yet
 * (data NULL): it is answered as if they pass, so that it sizes the
 * workspace of the backend the call will pick when they do (and
 * fa_sm90_workspace_size covers sm80's too, should the call fall back). */
static fa_status check_tensor(const fa_problem *p, const fa_tensor *t, const char *name, int is_q)
{
    return t->data == NULL ? FA_SUCCESS : fa_sm90_check_tma_tensor(p, t, name, is_q);
}

/* What the backward adds to the forward's rules. */
static fa_status backward_supports(const fa_problem *p)
{
    if (p->deterministic)
        return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: the backward adds dQ with atomics (deterministic runs on sm80)");
    /* no query rows: a tensor map needs every dimension >= 1; the portable
     * path writes the zero dK and dV */
    if (fa_sm90_rows_of(p, 1) == 0)
        return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: no queries (seqlen_q or total_q is 0)");
    /* its workspace is sized by the longest sequence of every (batch, head) */
    if (fa_sm90_backward_workspace_size(p) == 0)
        return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: the backward's workspace would pass 2^62 bytes");
    /* dq is written 16 bytes at a time, dk / dv 4 bytes: same rule as TMA */
    fa_status st;
    if ((st = check_tensor(p, &p->dout, "dout", 1)) != FA_SUCCESS ||
        (st = check_tensor(p, &p->dq, "dq", 1)) != FA_SUCCESS || (st = check_tensor(p, &p->dk, "dk", 0)) != FA_SUCCESS ||
        (st = check_tensor(p, &p->dv, "dv", 0)) != FA_SUCCESS)
        return st;
    return FA_SUCCESS;
}

extern "C" fa_status fa_sm90_supports(const fa_problem *p, fa_direction dir, const fa_cuda_device_info *dev)
{
    if (dev->sm != 90)
        return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: needs an sm_90 GPU (this one is sm_%d)", dev->sm);
    if (p->dtype != FA_DTYPE_BF16 && p->dtype != FA_DTYPE_F16 && !fa_dtype_is_fp8(p->dtype))
        return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: dtype %s (bf16, fp16 and fp8 only)", fa_dtype_name(p->dtype));
    /* FP8 (forward only, validation saw to that): 128 x 128 tiles whose
     * query and key blocks each lie in one descale block */
    if (fa_dtype_is_fp8(p->dtype)) {
        if (p->head_dim != 128 && p->head_dim != 256)
            return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: FP8 needs head_dim 128 or 256 (got %lld)",
                           (long long)p->head_dim);
        if ((p->q_descale != NULL && p->descale_blocks_q > 1 && p->descale_block_q % 128 != 0) ||
            ((p->k_descale != NULL || p->v_descale != NULL) && p->descale_blocks_k > 1 &&
             p->descale_block_k % 128 != 0))
            return fa_fail(FA_ERROR_UNSUPPORTED,
                           "sm90: FP8 descale blocks must be 0 or a multiple of 128 rows (got %lld, %lld)",
                           (long long)p->descale_block_q, (long long)p->descale_block_k);
        /* Vᵀ's keys (fwd_sm90.cu) are TMA coordinates: int */
        if (fa_sm90_fp8_vt_bytes(p) / (size_t)(p->heads_kv * p->head_dim) > 0x7fffffff)
            return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: FP8 with more than 2^31 keys per head in all");
    }
    if (p->head_dim != p->head_dim_v || !is_supported_head_dim(p->head_dim))
        return fa_fail(FA_ERROR_UNSUPPORTED,
                       "sm90: head_dim %lld / head_dim_v %lld (needs equal, one of 64, 96, 128, 192, 256)",
                       (long long)p->head_dim, (long long)p->head_dim_v);
    if (p->dropout_p > 0.0f)
        return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: dropout is not implemented");
    if (p->alibi_slopes != NULL)
        return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: ALiBi is not implemented");
    if (p->block_mask != NULL)
        return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: block-sparse masks are not implemented");
    /* A paged cache: a TMA box must lie in one page, and boxes smaller than
     * a block start at multiples of 8 rows (the swizzle's period). At hdim
     * <= 128 a block is 128 keys, 64 per CTA of a pair, and FP8 has
     * 128-key blocks at hdim 256 too (one CTA; its Vᵀ pass reads V through
     * the table): pages of a multiple of 128 keys, or of 8, 16, 32 or 64;
     * 16-bit hdim 192 / 256 (96 / 80-key blocks) run on sm80. */
    const int64_t page = p->kv_page_size;
    if (p->kv_block_table != NULL &&
        ((p->head_dim > 128 && !fa_dtype_is_fp8(p->dtype)) || (page % 128 != 0 && (64 % page != 0 || page % 8 != 0)) ||
         page > 0x7fffffff || p->kv_block_table_stride > 0x7fffffff))
        return fa_fail(FA_ERROR_UNSUPPORTED,
                       "sm90: a paged K/V cache needs head_dim <= 128 (any for FP8) and kv_page_size 8, 16, 32, 64 "
                       "or a multiple of 128 (got %lld, %lld): sm80 runs the others (16-bit)",
                       (long long)p->head_dim, (long long)page);
    /* the kernel indexes rows, heads, batches and window edges in int; the
     * mask intervals (fwd_kernel.cuh, bwd_kernel.cuh) need sequences below
     * 2^29 tokens */
    const int64_t int_max = 0x7fffffff, seq_max = (int64_t)1 << 29;
    if (p->total_q > int_max || p->total_k > int_max || p->seqlen_q >= seq_max || p->seqlen_k >= seq_max ||
        p->heads_q > 65535 || p->batch > 65535)
        return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: sizes beyond the kernel's 32-bit indexing "
                                             "(sequences must be < 2^29 tokens, totals < 2^31)");
    /* the persistent scheduler counts tiles (of at least 128 query rows) in int */
    if ((p->seqlen_q + 127) / 128 * p->heads_q * p->batch > int_max)
        return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: more than 2^31 query tiles");
    /* A tensor map needs every dimension >= 1: with no keys at all (every
     * row fully masked) the portable path writes the zeros and -inf; FP8,
     * which it does not take, a small kernel of fwd_sm90.cu. */
    if (fa_sm90_rows_of(p, 0) == 0) {
        if (fa_dtype_is_fp8(p->dtype) && dir == FA_FORWARD)
            return FA_SUCCESS;
        return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: no keys (seqlen_k or total_k is 0)");
    }
    fa_status st;
    if ((st = check_tensor(p, &p->q, "q", 1)) != FA_SUCCESS || (st = check_tensor(p, &p->k, "k", 0)) != FA_SUCCESS ||
        (st = check_tensor(p, &p->v, "v", 0)) != FA_SUCCESS ||
        (st = check_tensor(p, &p->out, "out", 1)) != FA_SUCCESS)
        return st;
    if (dir == FA_BACKWARD && (st = backward_supports(p)) != FA_SUCCESS)
        return st;
    if (dev->smem_per_block_optin < 232448)
        return fa_fail(FA_ERROR_UNSUPPORTED, "sm90: needs 227 KB of shared memory per block (device has %zu)",
                       dev->smem_per_block_optin);
    return FA_SUCCESS;
}

/* A size query cannot see whether the tensors suit TMA (check_tensor), so
 * the answer also covers the sm80 fallback the call may take: its backward,
 * and its forward's key split (the dispatcher runs sm80's where a grid this
 * small cannot run sm90's; fa_forward refuses a workspace smaller than the
 * backend it runs needs). */
extern "C" size_t fa_sm90_workspace_size(const fa_problem *p, fa_direction dir, const fa_cuda_device_info *dev)
{
    size_t bytes = dir == FA_BACKWARD ? fa_sm90_backward_workspace_size(p) : fa_sm90_forward_workspace_size(p, dev);
#ifdef FA_HAVE_SM80
    size_t fallback = fa_sm80_workspace_size(p, dir, dev);
    bytes = fallback > bytes ? fallback : bytes;
#endif
    return bytes;
}
