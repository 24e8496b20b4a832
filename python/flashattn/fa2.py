"""FlashAttention-2's public functions (flash_attn.flash_attn_interface),
same names, signatures, defaults, shapes and return values, re-exported by
`flashattn`. Switch with `from flashattn import flash_attn_func`.

Layouts: q (batch, seqlen_q, nheads, headdim), k/v (batch, seqlen_k,
nheads_k, headdim); varlen: (total_tokens, nheads, headdim) plus cu_seqlens
(int32, batch + 1). nheads must be a multiple of nheads_k (GQA/MQA: query
head h reads key/value head h // (nheads // nheads_k)). The causal mask and
the sliding window are aligned to the bottom-right corner; a query row that
sees no key gets out = 0 and lse = -inf.

Return convention (FlashAttention's): `out`, or with return_attn_probs=True
`(out, softmax_lse, S_dmask)`; softmax_lse is (batch, nheads, seqlen_q), or
(nheads, total_q) for varlen; S_dmask, for testing only, is the softmax
probabilities (batch, nheads, seqlen_q, seqlen_k) with dropped entries
negated when dropout_p > 0, and None when dropout_p == 0 (as FlashAttention
only computes it with dropout).
"""

import torch

from . import _dropout, _kvcache, _ops


def _finish(out, lse, rng_state, return_attn_probs, q, k, dropout_p, softmax_scale, causal,
            window_size, softcap, alibi_slopes, cu_seqlens_q=None, cu_seqlens_k=None,
            max_seqlen_q=None, max_seqlen_k=None):
    if not return_attn_probs:
        return out
    probs = None
    if dropout_p > 0:
        scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
        probs = _dropout.attn_probs(q, k, lse, rng_state, dropout_p, scale, causal, window_size,
                                    softcap, alibi_slopes, cu_seqlens_q, cu_seqlens_k,
                                    max_seqlen_q, max_seqlen_k)
    return out, lse, probs


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False,
                    window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                    return_attn_probs=False):
    """q (batch, seqlen_q, nheads, headdim), k/v (batch, seqlen_k, nheads_k,
    headdim[_v]) -> out (batch, seqlen_q, nheads, headdim_v)."""
    out, lse, rng = _ops.attention(q, k, v, dropout_p=dropout_p, softmax_scale=softmax_scale,
                                   causal=causal, window_size=window_size, softcap=softcap,
                                   alibi_slopes=alibi_slopes, deterministic=deterministic)
    return _finish(out, lse, rng, return_attn_probs, q, k, dropout_p, softmax_scale, causal,
                   window_size, softcap, alibi_slopes)


def _unpack(name, packed, count, dim):
    """Strided views of a packed tensor along `dim` (no copy)."""
    if not isinstance(packed, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(packed).__name__}")
    if packed.dim() <= dim or packed.shape[dim] != count:
        raise ValueError(
            f"{name} must have size {count} in dimension {dim}, got shape {tuple(packed.shape)}"
        )
    return packed.unbind(dim)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False,
                              window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                              deterministic=False, return_attn_probs=False):
    """qkv (batch, seqlen, 3, nheads, headdim) -> out (batch, seqlen, nheads, headdim)."""
    q, k, v = _unpack("qkv", qkv, 3, 2)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                           alibi_slopes, deterministic, return_attn_probs)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False,
                             window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                             deterministic=False, return_attn_probs=False):
    """q (batch, seqlen_q, nheads, headdim), kv (batch, seqlen_k, 2, nheads_k,
    headdim) -> out (batch, seqlen_q, nheads, headdim)."""
    k, v = _unpack("kv", kv, 2, 2)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                           alibi_slopes, deterministic, return_attn_probs)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, causal=False,
                           window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """q (total_q, nheads, headdim), k/v (total_k, nheads_k, headdim[_v]),
    cu_seqlens_q/k int32 (batch + 1) -> out (total_q, nheads, headdim_v).
    With block_table (batch, max_num_blocks) int32, k/v are a paged cache
    (num_blocks, page_block_size, nheads_k, headdim[_v]) holding sequence b's
    keys at positions [0, cu_seqlens_k[b + 1] - cu_seqlens_k[b]); they are
    gathered into packed copies for the call (gradients flow back to the
    pages)."""
    if cu_seqlens_q is None or cu_seqlens_k is None:
        raise ValueError("cu_seqlens_q and cu_seqlens_k are required")
    if block_table is not None:
        k, v = _kvcache.gather_varlen_pages(k, v, block_table, cu_seqlens_k)
    out, lse, rng = _ops.attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                   max_seqlen_k, dropout_p, softmax_scale, causal, window_size,
                                   softcap, alibi_slopes, deterministic)
    return _finish(out, lse, rng, return_attn_probs, q, k, dropout_p, softmax_scale, causal,
                   window_size, softcap, alibi_slopes, cu_seqlens_q, cu_seqlens_k,
                   max_seqlen_q, max_seqlen_k)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0,
                                     softmax_scale=None, causal=False, window_size=(-1, -1),
                                     softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False):
    """qkv (total, 3, nheads, headdim) -> out (total, nheads, headdim)."""
    q, k, v = _unpack("qkv", qkv, 3, 1)
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                  dropout_p, softmax_scale, causal, window_size, softcap,
                                  alibi_slopes, deterministic, return_attn_probs)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                    max_seqlen_k, dropout_p=0.0, softmax_scale=None,
                                    causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False,
                                    return_attn_probs=False):
    """q (total_q, nheads, headdim), kv (total_k, 2, nheads_k, headdim) ->
    out (total_q, nheads, headdim)."""
    k, v = _unpack("kv", kv, 2, 1)
    return flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                  max_seqlen_k, dropout_p, softmax_scale, causal, window_size,
                                  softcap, alibi_slopes, deterministic, return_attn_probs)


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None,
                            rotary_sin=None, cache_seqlens=None, cache_batch_idx=None,
                            cache_leftpad=None, block_table=None, softmax_scale=None,
                            causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0,
                            return_softmax_lse=False):
    """Decoding attention over a KV cache (no backward). If k and v are given
    they are written into k_cache/v_cache in place at cache_seqlens first.
    q (batch, seqlen_q, nheads, headdim); k_cache/v_cache (batch_cache,
    seqlen_cache, nheads_k, headdim[_v]) -> out (batch, seqlen_q, nheads,
    headdim_v), and softmax_lse (batch, nheads, seqlen_q) if
    return_softmax_lse. block_table (batch, max_num_blocks) int32: a paged
    cache, k_cache/v_cache (num_blocks, page_block_size, nheads_k,
    headdim[_v]); the pages read are gathered into a copy for the call.
    rotary_cos/rotary_sin (seqlen_ro, rotary_dim / 2):
    the new keys are rotated at positions cache_seqlens, cache_seqlens + 1,
    ...; the queries at the same positions when causal or local, else all at
    cache_seqlens (rotary_interleaved: pairs (0, 1), (2, 3), ...; else GPT-NeoX
    pairs (i, i + rotary_dim / 2)). num_splits only tunes FlashAttention's
    CUDA kernel and does not change results; it is accepted and has no effect
    here."""
    out, lse = _kvcache.kvcache_attention(q, k_cache, v_cache, k, v, cache_seqlens,
                                          cache_batch_idx, cache_leftpad, softmax_scale, causal,
                                          window_size, softcap, alibi_slopes, rotary_cos,
                                          rotary_sin, rotary_interleaved, block_table)
    return (out, lse) if return_softmax_lse else out
