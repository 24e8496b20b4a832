/*
 * The sm80 backend's entry points other than the passes themselves: what it
 * can run, and how much workspace it needs.
 */
#include "common.cuh"

extern "C" fa_status fa_sm80_supports(const fa_problem *p, fa_direction dir,
                                      const fa_cuda_device_info *dev)
{
    if (dev->sm < 80)
        return fa_fail(FA_ERROR_UNSUPPORTED,
                       "backend sm80 needs compute capability 8.0 or newer (this GPU is sm_%d)",
                       dev->sm);
    if (p->dtype != FA_DTYPE_F16 && p->dtype != FA_DTYPE_BF16)
        return fa_fail(FA_ERROR_UNSUPPORTED,
                       "backend sm80 runs fp16 and bf16 only, not %s", fa_dtype_name(p->dtype));
    if (p->head_dim > 256 || p->head_dim_v > 256)
        return fa_fail(FA_ERROR_UNSUPPORTED,
                       "backend sm80 supports head dims up to 256 (got %lld, %lld)",
                       (long long)p->head_dim, (long long)p->head_dim_v);
    if (p->heads_q > 65535 || p->heads_kv > 65535 || p->batch > 65535)
        return fa_fail(FA_ERROR_UNSUPPORTED,
                       "backend sm80 supports at most 65535 heads and batch entries");
    /* The kernels' tile-local indices and key-block loops are 32-bit (see
     * shift_tile_mask in forward.cu, the key loop in backward.cu). */
    if (p->seqlen_q >= (1 << 29) || p->seqlen_k >= (1 << 29))
        return fa_fail(FA_ERROR_UNSUPPORTED,
                       "backend sm80: sequences of 2^29 tokens or more are not supported "
                       "(seqlen_q %lld, seqlen_k %lld)",
                       (long long)p->seqlen_q, (long long)p->seqlen_k);
    if ((p->seqused_k || p->kv_block_table) &&
        (p->dropout_p > 0.f || p->softcap > 0.f || p->alibi_slopes || p->block_mask))
        return fa_fail(FA_ERROR_UNSUPPORTED,
                       "backend sm80: seqused_k and a paged K/V cache (kv_block_table) run "
                       "without dropout, softcap, ALiBi and block masks");
    if (p->kv_page_size > 0x7fffffff)
        return fa_fail(FA_ERROR_UNSUPPORTED, "backend sm80: kv_page_size %lld does not fit 32 bits",
                       (long long)p->kv_page_size);
    const int dp = fa::padded_head_dim(p->head_dim, p->head_dim_v);
    const size_t smem = dir == FA_FORWARD ? fa::forward_smem_bytes(dp) : fa::backward_smem_bytes(dp);
    if (smem > dev->smem_per_block_optin)
        return fa_fail(FA_ERROR_UNSUPPORTED,
                       "backend sm80 %s for head dim %d needs %zu bytes of shared memory per "
                       "block; this GPU allows %zu",
                       dir == FA_FORWARD ? "forward" : "backward", dp, smem,
                       dev->smem_per_block_optin);
    return FA_SUCCESS;
}

extern "C" size_t fa_sm80_workspace_size(const fa_problem *p, fa_direction dir, const fa_cuda_device_info *dev)
{
    return dir == FA_FORWARD ? fa::forward_workspace_size(p, dev) : fa::backward_workspace_size(p, dev);
}
