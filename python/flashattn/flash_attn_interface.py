"""FlashAttention-3's interface (hopper/flash_attn_interface.py): same
names, signatures and return values. Switch with
`from flashattn.flash_attn_interface import flash_attn_func`.

FA3 has no dropout and no ALiBi; it returns `out`, or `(out, softmax_lse)`
with return_attn_probs=True (softmax_lse (batch, nheads, seqlen_q), or
(nheads, total_q) for varlen).

Options that change results but have no backend support yet raise
NotImplementedError naming the option: qv, q/k/v_descale with 16-bit
inputs (float8 q, k, v take them: the FP8 forward), attention_chunk != 0, seqused_q/seqused_k, rotary_seqlens. Options that only tune FA3's CUDA scheduling (num_splits,
pack_gqa, sm_margin, scheduler_metadata) cannot change results and are
accepted without effect.
"""

import torch

from . import _kvcache, _ops


def _unsupported(**options):
    """Raise NotImplementedError for the first option set to a value the
    library cannot honour yet; options map name -> (value, default)."""
    for name, (value, default) in options.items():
        differs = value is not None if default is None else value != default
        if differs:
            raise NotImplementedError(f"flashattn: {name}={value!r} is not supported yet")


def _check_common(qv, q_descale, k_descale, v_descale, attention_chunk):
    _unsupported(qv=(qv, None), q_descale=(q_descale, None), k_descale=(k_descale, None),
                 v_descale=(v_descale, None), attention_chunk=(attention_chunk, 0))


def _fp8_forward(q, k, v, softmax_scale, causal, q_descale, k_descale, v_descale, window_size,
                 softcap, **kv_cache):
    """FA3's FP8 forward: float8 q, k, v; descales (batch, nheads_k) fp32 or
    None; out bf16. FA3 scales q per K/V head, so q_descale is shared by the
    heads of a group. kv_cache: seqused_k, block_table (_ops.fp8_forward)."""
    b, hq, hkv = q.shape[0], q.shape[2], k.shape[2]

    def per_head(name, t, heads):
        if t is None:
            return None
        _ops.check_tensor(name, t, 2, torch.float32, q.device)
        if tuple(t.shape) != (b, hkv):
            raise ValueError(f"{name} must have shape (batch, nheads_k) = {(b, hkv)}, got {tuple(t.shape)}")
        return t.repeat_interleave(heads // hkv, dim=1).unsqueeze(-1)
    return _ops.fp8_forward(q, k, v, per_head("q_descale", q_descale, hq),
                            per_head("k_descale", k_descale, hkv), per_head("v_descale", v_descale, hkv),
                            softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                            softcap=softcap, **kv_cache)


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, qv=None, q_descale=None,
                    k_descale=None, v_descale=None, window_size=(-1, -1), attention_chunk=0,
                    softcap=0.0, num_splits=1, pack_gqa=None, deterministic=False, sm_margin=0,
                    return_attn_probs=False):
    """q (batch, seqlen_q, nheads, headdim), k/v (batch, seqlen_k, nheads_k,
    headdim[_v]) -> out (batch, seqlen_q, nheads, headdim_v). float8 q, k,
    v (with optional descales, (batch, nheads_k) fp32) run the FP8 forward:
    out is bf16, no gradient."""
    if isinstance(q, torch.Tensor) and q.dtype in _ops.FP8_DTYPES:
        _unsupported(qv=(qv, None), attention_chunk=(attention_chunk, 0))
        out, lse = _fp8_forward(q, k, v, softmax_scale, causal, q_descale, k_descale, v_descale,
                                window_size, softcap)
        return (out, lse) if return_attn_probs else out
    _check_common(qv, q_descale, k_descale, v_descale, attention_chunk)
    out, lse, _ = _ops.attention(q, k, v, softmax_scale=softmax_scale, causal=causal,
                                 window_size=window_size, softcap=softcap,
                                 deterministic=deterministic)
    return (out, lse) if return_attn_probs else out


def flash_attn_qkvpacked_func(qkv, softmax_scale=None, causal=False, q_descale=None,
                              k_descale=None, v_descale=None, window_size=(-1, -1),
                              attention_chunk=0, softcap=0.0, deterministic=False,
                              num_heads_q=None, sm_margin=0, return_attn_probs=False):
    """qkv (batch, seqlen, 3, nheads, headdim), or with num_heads_q
    (batch, seqlen, nheads_q + 2 * nheads_k, headdim) -> out (batch,
    seqlen, nheads_q, headdim)."""
    if num_heads_q is None:
        if qkv.dim() != 5 or qkv.shape[2] != 3:
            raise ValueError(
                f"qkv must be (batch, seqlen, 3, nheads, headdim), got {tuple(qkv.shape)}"
            )
        q, k, v = qkv.unbind(2)
    else:
        if qkv.dim() != 4 or (qkv.shape[2] - num_heads_q) % 2 != 0 or qkv.shape[2] <= num_heads_q:
            raise ValueError(
                f"qkv must be (batch, seqlen, num_heads_q + 2 * nheads_k, headdim) with "
                f"num_heads_q = {num_heads_q}, got {tuple(qkv.shape)}"
            )
        heads_kv = (qkv.shape[2] - num_heads_q) // 2
        q, k, v = qkv.split([num_heads_q, heads_kv, heads_kv], dim=2)
    return flash_attn_func(q, k, v, softmax_scale, causal, None, q_descale, k_descale,
                           v_descale, window_size, attention_chunk, softcap,
                           deterministic=deterministic, sm_margin=sm_margin,
                           return_attn_probs=return_attn_probs)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           seqused_q=None, seqused_k=None, softmax_scale=None, causal=False,
                           qv=None, q_descale=None, k_descale=None, v_descale=None,
                           window_size=(-1, -1), attention_chunk=0, softcap=0.0, num_splits=1,
                           pack_gqa=None, deterministic=False, sm_margin=0,
                           return_attn_probs=False):
    """q (total_q, nheads, headdim), k/v (total_k, nheads_k, headdim[_v]),
    cu_seqlens_q/k int32 (batch + 1) -> out (total_q, nheads, headdim_v)."""
    _check_common(qv, q_descale, k_descale, v_descale, attention_chunk)
    _unsupported(seqused_q=(seqused_q, None))
    if cu_seqlens_q is None or cu_seqlens_k is None:
        raise ValueError("cu_seqlens_q and cu_seqlens_k are required")
    if seqused_k is not None:
        # the C API's seqused_k is forward-only (inference): no autograd graph
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            raise NotImplementedError(
                "seqused_k has no backward in flashattn: call under torch.no_grad() (inference)")
        _ops.check_attention_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                  0.0, window_size, None, softmax_scale, softcap)
        _ops.check_tensor("seqused_k", seqused_k, 1, torch.int32, q.device)
        if seqused_k.shape[0] != cu_seqlens_k.shape[0] - 1:
            raise ValueError(f"seqused_k must have batch_size = {cu_seqlens_k.shape[0] - 1} entries, "
                             f"got {seqused_k.shape[0]}")
        out, lse = _ops.kv_cache_forward(q, k, v, seqused_k, softmax_scale=softmax_scale, causal=causal,
                                         window_size=window_size, softcap=softcap,
                                         cu_seqlens_q=cu_seqlens_q.contiguous(),
                                         cu_seqlens_k=cu_seqlens_k.contiguous(),
                                         max_seqlen_q=int(max_seqlen_q), max_seqlen_k=int(max_seqlen_k))
        return (out, lse) if return_attn_probs else out
    out, lse, _ = _ops.attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                 softmax_scale=softmax_scale, causal=causal,
                                 window_size=window_size, softcap=softcap,
                                 deterministic=deterministic)
    return (out, lse) if return_attn_probs else out


def flash_attn_combine(out_partial, lse_partial, out=None, out_dtype=None):
    """Merge attention computed over splits of the keys.

    out_partial (num_splits, batch, seqlen, nheads, headdim) fp32 and
    lse_partial (num_splits, batch, seqlen, nheads) fp32 -> (out (batch,
    seqlen, nheads, headdim) in out_dtype (default fp32), softmax_lse
    (batch, seqlen, nheads)): lse = logsumexp over splits, out = sum of
    exp(lse_i - lse) * out_i. Splits with lse = -inf contribute nothing; a
    row with every split at -inf gets out = 0, lse = -inf.
    """
    _ops.check_tensor("out_partial", out_partial, 5, torch.float32)
    _ops.check_tensor("lse_partial", lse_partial, 4, torch.float32, out_partial.device)
    if lse_partial.shape != out_partial.shape[:-1]:
        raise ValueError(
            f"lse_partial must be (num_splits, batch, seqlen, nheads) = "
            f"{tuple(out_partial.shape[:-1])}, got {tuple(lse_partial.shape)}"
        )
    out_dtype = out_dtype or (out.dtype if out is not None else torch.float32)
    if out_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    lse = torch.logsumexp(lse_partial, dim=0)
    # exp(-inf - -inf) is NaN: rows with no finite lse get weight 0.
    weights = torch.exp(lse_partial - lse.unsqueeze(0)).nan_to_num(0.0)
    combined = (weights.unsqueeze(-1) * out_partial).sum(dim=0)
    if out is None:
        return combined.to(out_dtype), lse
    _ops.check_tensor("out", out, 4, out_dtype, out_partial.device)
    if out.shape != combined.shape:
        raise ValueError(f"out must be {tuple(combined.shape)}, got {tuple(out.shape)}")
    if out.stride(-1) != 1:
        raise ValueError("out must have a contiguous last dimension (stride(-1) == 1)")
    out.copy_(combined)
    return out, lse


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, qv=None, rotary_cos=None,
                            rotary_sin=None, cache_seqlens=None, cache_batch_idx=None,
                            cache_leftpad=None, page_table=None, cu_seqlens_q=None,
                            cu_seqlens_k_new=None, max_seqlen_q=None, rotary_seqlens=None,
                            q_descale=None, k_descale=None, v_descale=None, softmax_scale=None,
                            causal=False, window_size=(-1, -1), attention_chunk=0, softcap=0.0,
                            rotary_interleaved=True, scheduler_metadata=None, num_splits=0,
                            pack_gqa=None, sm_margin=0, return_softmax_lse=False):
    """Decoding attention over a KV cache (no backward); k/v, when given,
    are written into the cache in place at cache_seqlens first. Returns out
    (batch, seqlen_q, nheads, headdim_v), or (out, softmax_lse (batch,
    nheads, seqlen_q)) with return_softmax_lse. float8 q, k_cache, v_cache
    (with optional descales, (batch, nheads_k) fp32) run the FP8 forward
    over cache_seqlens and page_table (out bf16), appending float8 k / v;
    rotary, cache_batch_idx and cache_leftpad are not supported with them
    yet."""
    if q.dtype in _ops.FP8_DTYPES:
        _unsupported(qv=(qv, None), rotary_cos=(rotary_cos, None),
                     rotary_sin=(rotary_sin, None), cache_batch_idx=(cache_batch_idx, None),
                     cache_leftpad=(cache_leftpad, None), attention_chunk=(attention_chunk, 0),
                     cu_seqlens_q=(cu_seqlens_q, None), cu_seqlens_k_new=(cu_seqlens_k_new, None),
                     max_seqlen_q=(max_seqlen_q, None), rotary_seqlens=(rotary_seqlens, None))
        if k is not None or v is not None:
            cache_seqlens = _kvcache.fp8_append(q, k_cache, v_cache, k, v, cache_seqlens, page_table)
        elif isinstance(cache_seqlens, int):
            cache_seqlens = torch.full((q.shape[0],), cache_seqlens, dtype=torch.int32, device=q.device)
        out, lse = _fp8_forward(q, k_cache, v_cache, softmax_scale, causal, q_descale, k_descale, v_descale,
                                window_size, softcap, seqused_k=cache_seqlens, block_table=page_table)
        return (out, lse) if return_softmax_lse else out
    _check_common(qv, q_descale, k_descale, v_descale, attention_chunk)
    _unsupported(cu_seqlens_q=(cu_seqlens_q, None),
                 cu_seqlens_k_new=(cu_seqlens_k_new, None), max_seqlen_q=(max_seqlen_q, None),
                 rotary_seqlens=(rotary_seqlens, None))
    out, lse = _kvcache.kvcache_attention(q, k_cache, v_cache, k, v, cache_seqlens,
                                          cache_batch_idx, cache_leftpad, softmax_scale, causal,
                                          window_size, softcap, None, rotary_cos, rotary_sin,
                                          rotary_interleaved, page_table)
    return (out, lse) if return_softmax_lse else out
