"""flashattn as the attention implementation of Hugging Face transformers
models (transformers >= 4.48, through its attention-function registry):

    import flashattn.integrations.transformers as fa_hf
    fa_hf.register()  # name "flashattn"
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="flashattn")

Masks: transformers hands this function a 2-D padding mask (batch, seqlen_k)
or None (register() asks for the same masks as flash_attention_2); then the
padded batch runs as a varlen batch. A 4-D mask from older transformers is
accepted when it is exactly a (causal / sliding-window) mask combined with
key padding, which is what their models build; any other 4-D mask raises
NotImplementedError.
"""

import torch

from ..bert_padding import pad_input, unpad_input
from ..fa2 import flash_attn_func, flash_attn_varlen_func


def _window(sliding_window):
    # transformers' sliding window of w tokens: key j visible to query i
    # iff i - w < j (and j <= i when causal).
    return (-1, -1) if not sliding_window else (sliding_window - 1, sliding_window - 1)


def _padding_from_4d(mask, seqlen_q, seqlen_k, causal, window_size):
    """The (batch, seqlen_k) key padding mask a 4-D mask (batch, 1, sq, sk)
    was built from, or NotImplementedError if it is not of that form."""
    keep = mask if mask.dtype == torch.bool else mask == 0
    keep = keep[:, :, :, -seqlen_k:]
    if keep.shape[1] != 1 or keep.shape[2] != seqlen_q or seqlen_q > seqlen_k:
        raise NotImplementedError(
            f"flashattn: attention_mask of shape {tuple(mask.shape)} is not supported; "
            "pass a 2-D padding mask"
        )
    keys = keep[:, 0].any(dim=1)  # a real key is visible from some row
    left, right = (window_size[0], 0) if causal else window_size
    i = torch.arange(seqlen_q, device=mask.device).view(-1, 1) + seqlen_k - seqlen_q
    j = torch.arange(seqlen_k, device=mask.device).view(1, -1)
    pattern = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=mask.device)
    if left >= 0:
        pattern &= j >= i - left
    if right >= 0:
        pattern &= j <= i + right
    expected = pattern.unsqueeze(0) & keys.unsqueeze(1)
    # Rows of padding queries are don't-care (transformers may unmask them).
    real_rows = keys[:, -seqlen_q:]  # the queries are the last seqlen_q tokens
    if not torch.equal(keep[:, 0] & real_rows.unsqueeze(2), expected & real_rows.unsqueeze(2)):
        raise NotImplementedError(
            "flashattn: this 4-D attention_mask is not a causal/sliding-window mask with key "
            "padding; other masks are not supported"
        )
    return keys


def flashattn_attention_forward(module, query, key, value, attention_mask, scaling=None,
                                dropout=0.0, sliding_window=None, softcap=None, **kwargs):
    """transformers' attention-function signature: query (batch, heads,
    seqlen_q, head_dim), key/value (batch, heads_kv, seqlen_k, head_dim) ->
    (out (batch, seqlen_q, heads, head_dim), None)."""
    causal = kwargs.get("is_causal")
    if causal is None:
        causal = getattr(module, "is_causal", True)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # strided views, no copy
    batch, seqlen_q, seqlen_k = q.shape[0], q.shape[1], k.shape[1]
    options = dict(dropout_p=dropout, softmax_scale=scaling, causal=bool(causal),
                   window_size=_window(sliding_window), softcap=softcap or 0.0)

    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is not None and cu_k is not None and batch == 1:
        # Padding-free packed batch (transformers' FlashAttentionKwargs).
        out = flash_attn_varlen_func(q[0], k[0], v[0], cu_q.to(torch.int32),
                                     cu_k.to(torch.int32), int(kwargs["max_length_q"]),
                                     int(kwargs["max_length_k"]), **options)
        return out.unsqueeze(0), None

    if attention_mask is not None and attention_mask.dim() == 4:
        attention_mask = _padding_from_4d(attention_mask, seqlen_q, seqlen_k,
                                          options["causal"], options["window_size"])
    if attention_mask is None or bool(attention_mask.all()):
        return flash_attn_func(q, k, v, **options), None
    if attention_mask.dim() != 2 or attention_mask.shape[0] != batch:
        raise ValueError(
            f"attention_mask must be (batch, seqlen_k) = ({batch}, {seqlen_k}), got "
            f"{tuple(attention_mask.shape)}"
        )
    key_mask = attention_mask[:, -seqlen_k:]
    q_unpad, q_indices, cu_q, max_q, _ = unpad_input(q, key_mask[:, -seqlen_q:])
    k_unpad, _, cu_k, max_k, _ = unpad_input(k, key_mask)
    v_unpad = unpad_input(v, key_mask)[0]
    out = flash_attn_varlen_func(q_unpad, k_unpad, v_unpad, cu_q, cu_k, max_q, max_k, **options)
    return pad_input(out, q_indices, batch, seqlen_q), None


def register(name="flashattn"):
    """Register flashattn under `name` in transformers' AttentionInterface
    (and its mask registry, where it has one, so that models pass 2-D
    padding masks as they do for flash_attention_2). Returns the name to pass
    as attn_implementation."""
    try:
        from transformers import AttentionInterface
    except ImportError as e:
        raise ImportError(
            "flashattn.integrations.transformers.register needs transformers >= 4.48 "
            f"(AttentionInterface): {e}"
        ) from e
    AttentionInterface.register(name, flashattn_attention_forward)
    try:
        from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
    except ImportError:
        pass  # older transformers build 4-D masks, which the function converts
    else:
        AttentionMaskInterface.register(name, flash_attention_mask)
    return name


__all__ = ["flashattn_attention_forward", "register"]
