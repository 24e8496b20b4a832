// A same-process peer for benchmarks: FlashAttention-3's Hopper forward
// (bf16, hdim 64/128/256, causal or not, no varlen/split/paged/softcap),
// called through a C entry point so that gpu_bench can load it with ctypes.
// Built against an FA3 checkout (hopper/) and its CUTLASS pin; not part of
// the library.
#include "flash_fwd_launch_template.h"

template <int D, bool Causal> static void launch(Flash_fwd_params &p, cudaStream_t s)
{
    /* FA3's rule (run_mha_fwd_): 2-CTA clusters at hdim >= 128 when not causal
     * and the number of m blocks is even */
    constexpr int kBlockM = std::get<0>(tile_size_fwd_sm90(D, D, Causal, false, 2, false, false, false));
    const bool cluster = D >= 128 && !Causal && (p.seqlen_q + kBlockM - 1) / kBlockM % 2 == 0;
    if (cluster)
        run_flash_fwd<90, D, D, (D >= 128 && !Causal) ? 2 : 1, cutlass::bfloat16_t, cutlass::bfloat16_t, Causal, false,
                      false, false, false, false, false, false, false, false>(p, s);
    else
        run_flash_fwd<90, D, D, 1, cutlass::bfloat16_t, cutlass::bfloat16_t, Causal, false, false, false, false, false,
                      false, false, false, false>(p, s);
}

// q, k, v, o: (b, s, h, d) contiguous bf16; lse: (b, h, sq) float;
// semaphore: one device int (the causal scheduler's tile counter), zeroed
// by this call as FA3's interface does. Returns 0, or -1 for an unbuilt shape.
extern "C" int fa3_peer_fwd(void *q, void *k, void *v, void *o, float *lse, int b, int sq, int sk, int h, int hk,
                            int d, int causal, float scale, int *semaphore, int num_sm, cudaStream_t stream)
{
    Flash_fwd_params p = {};
    p.is_bf16 = true;
    p.q_ptr = q, p.k_ptr = k, p.v_ptr = v, p.o_ptr = o;
    p.q_row_stride = (int64_t)h * d, p.k_row_stride = p.v_row_stride = (int64_t)hk * d, p.o_row_stride = (int64_t)h * d;
    p.q_head_stride = p.k_head_stride = p.v_head_stride = p.o_head_stride = d;
    p.v_dim_stride = 1;
    p.q_batch_stride = p.o_batch_stride = (int64_t)sq * h * d;
    p.k_batch_stride = p.v_batch_stride = (int64_t)sk * hk * d;
    p.softmax_lse_ptr = lse;
    p.b = b, p.b_k = b, p.h = h, p.h_k = hk, p.seqlen_q = sq, p.seqlen_k = sk;
    p.seqlen_q_rounded = (sq + 127) / 128 * 128, p.seqlen_k_rounded = (sk + 127) / 128 * 128;
    p.d = p.d_rounded = p.dv = p.dv_rounded = d;
    p.total_q = b * sq, p.total_k = b * sk;
    p.scale_softmax = scale;
    p.p_dropout = 1.f, p.rp_dropout = 1.f, p.p_dropout_in_uint8_t = 255;
    p.is_causal = causal != 0;
    p.window_size_left = sk - 1, p.window_size_right = causal ? 0 : sq - 1;
    p.arch = 90, p.num_sm = num_sm, p.num_splits = 1, p.page_size = 1;
    p.head_swizzle = p.is_causal, p.varlen_sort_batches = true;
    if (p.is_causal) {
        cudaMemsetAsync(semaphore, 0, sizeof(int), stream);
        p.tile_count_semaphore = semaphore;
    }
    switch (d * 2 + (causal != 0)) {
    case 128: launch<64, false>(p, stream); break;
    case 129: launch<64, true>(p, stream); break;
    case 256: launch<128, false>(p, stream); break;
    case 257: launch<128, true>(p, stream); break;
    case 512: launch<256, false>(p, stream); break;
    case 513: launch<256, true>(p, stream); break;
    default: return -1;
    }
    return cudaGetLastError() == cudaSuccess ? 0 : -2;
}
