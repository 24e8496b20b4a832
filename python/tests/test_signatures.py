"""The public functions have FlashAttention's signatures: the same
parameter names, order and defaults (FA2: flash_attn.flash_attn_interface,
FA3: hopper/flash_attn_interface.py)."""

import inspect

import pytest

pytest.importorskip("torch", reason="torch is not installed: flashattn's tests need it")

import flashattn  # noqa: E402
from flashattn import flash_attn_interface as fa3  # noqa: E402

# (name, default as source text; "" = no default)
SIGNATURES = {
    "flash_attn_qkvpacked_func": [
        ('qkv', ''), ('dropout_p', '0.0'), ('softmax_scale', 'None'), ('causal', 'False'),
        ('window_size', '(-1, -1)'), ('softcap', '0.0'), ('alibi_slopes', 'None'),
        ('deterministic', 'False'), ('return_attn_probs', 'False'),
    ],
    "flash_attn_kvpacked_func": [
        ('q', ''), ('kv', ''), ('dropout_p', '0.0'), ('softmax_scale', 'None'),
        ('causal', 'False'), ('window_size', '(-1, -1)'), ('softcap', '0.0'),
        ('alibi_slopes', 'None'), ('deterministic', 'False'), ('return_attn_probs', 'False'),
    ],
    "flash_attn_func": [
        ('q', ''), ('k', ''), ('v', ''), ('dropout_p', '0.0'), ('softmax_scale', 'None'),
        ('causal', 'False'), ('window_size', '(-1, -1)'), ('softcap', '0.0'),
        ('alibi_slopes', 'None'), ('deterministic', 'False'), ('return_attn_probs', 'False'),
    ],
    "flash_attn_varlen_qkvpacked_func": [
        ('qkv', ''), ('cu_seqlens', ''), ('max_seqlen', ''), ('dropout_p', '0.0'),
        ('softmax_scale', 'None'), ('causal', 'False'), ('window_size', '(-1, -1)'),
        ('softcap', '0.0'), ('alibi_slopes', 'None'), ('deterministic', 'False'),
        ('return_attn_probs', 'False'),
    ],
    "flash_attn_varlen_kvpacked_func": [
        ('q', ''), ('kv', ''), ('cu_seqlens_q', ''), ('cu_seqlens_k', ''), ('max_seqlen_q', ''),
        ('max_seqlen_k', ''), ('dropout_p', '0.0'), ('softmax_scale', 'None'), ('causal', 'False'),
        ('window_size', '(-1, -1)'), ('softcap', '0.0'), ('alibi_slopes', 'None'),
        ('deterministic', 'False'), ('return_attn_probs', 'False'),
    ],
    "flash_attn_varlen_func": [
        ('q', ''), ('k', ''), ('v', ''), ('cu_seqlens_q', ''), ('cu_seqlens_k', ''),
        ('max_seqlen_q', ''), ('max_seqlen_k', ''), ('dropout_p', '0.0'),
        ('softmax_scale', 'None'), ('causal', 'False'), ('window_size', '(-1, -1)'),
        ('softcap', '0.0'), ('alibi_slopes', 'None'), ('deterministic', 'False'),
        ('return_attn_probs', 'False'), ('block_table', 'None'),
    ],
    "flash_attn_with_kvcache": [
        ('q', ''), ('k_cache', ''), ('v_cache', ''), ('k', 'None'), ('v', 'None'),
        ('rotary_cos', 'None'), ('rotary_sin', 'None'), ('cache_seqlens', 'None'),
        ('cache_batch_idx', 'None'), ('cache_leftpad', 'None'), ('block_table', 'None'),
        ('softmax_scale', 'None'), ('causal', 'False'), ('window_size', '(-1, -1)'),
        ('softcap', '0.0'), ('rotary_interleaved', 'True'), ('alibi_slopes', 'None'),
        ('num_splits', '0'), ('return_softmax_lse', 'False'),
    ],
    "fa3.flash_attn_qkvpacked_func": [
        ('qkv', ''), ('softmax_scale', 'None'), ('causal', 'False'), ('q_descale', 'None'),
        ('k_descale', 'None'), ('v_descale', 'None'), ('window_size', '(-1, -1)'),
        ('attention_chunk', '0'), ('softcap', '0.0'), ('deterministic', 'False'),
        ('num_heads_q', 'None'), ('sm_margin', '0'), ('return_attn_probs', 'False'),
    ],
    "fa3.flash_attn_func": [
        ('q', ''), ('k', ''), ('v', ''), ('softmax_scale', 'None'), ('causal', 'False'),
        ('qv', 'None'), ('q_descale', 'None'), ('k_descale', 'None'), ('v_descale', 'None'),
        ('window_size', '(-1, -1)'), ('attention_chunk', '0'), ('softcap', '0.0'),
        ('num_splits', '1'), ('pack_gqa', 'None'), ('deterministic', 'False'), ('sm_margin', '0'),
        ('return_attn_probs', 'False'),
    ],
    "fa3.flash_attn_varlen_func": [
        ('q', ''), ('k', ''), ('v', ''), ('cu_seqlens_q', ''), ('cu_seqlens_k', ''),
        ('max_seqlen_q', ''), ('max_seqlen_k', ''), ('seqused_q', 'None'), ('seqused_k', 'None'),
        ('softmax_scale', 'None'), ('causal', 'False'), ('qv', 'None'), ('q_descale', 'None'),
        ('k_descale', 'None'), ('v_descale', 'None'), ('window_size', '(-1, -1)'),
        ('attention_chunk', '0'), ('softcap', '0.0'), ('num_splits', '1'), ('pack_gqa', 'None'),
        ('deterministic', 'False'), ('sm_margin', '0'), ('return_attn_probs', 'False'),
    ],
    "fa3.flash_attn_combine": [
        ('out_partial', ''), ('lse_partial', ''), ('out', 'None'), ('out_dtype', 'None'),
    ],
    "fa3.flash_attn_with_kvcache": [
        ('q', ''), ('k_cache', ''), ('v_cache', ''), ('k', 'None'), ('v', 'None'), ('qv', 'None'),
        ('rotary_cos', 'None'), ('rotary_sin', 'None'), ('cache_seqlens', 'None'),
        ('cache_batch_idx', 'None'), ('cache_leftpad', 'None'), ('page_table', 'None'),
        ('cu_seqlens_q', 'None'), ('cu_seqlens_k_new', 'None'), ('max_seqlen_q', 'None'),
        ('rotary_seqlens', 'None'), ('q_descale', 'None'), ('k_descale', 'None'),
        ('v_descale', 'None'), ('softmax_scale', 'None'), ('causal', 'False'),
        ('window_size', '(-1, -1)'), ('attention_chunk', '0'), ('softcap', '0.0'),
        ('rotary_interleaved', 'True'), ('scheduler_metadata', 'None'), ('num_splits', '0'),
        ('pack_gqa', 'None'), ('sm_margin', '0'), ('return_softmax_lse', 'False'),
    ],
}


def _function(name):
    return getattr(fa3, name[4:]) if name.startswith("fa3.") else getattr(flashattn, name)


@pytest.mark.parametrize("name", list(SIGNATURES))
def test_signature(name):
    params = inspect.signature(_function(name)).parameters.values()
    got = [(p.name, "" if p.default is inspect.Parameter.empty else repr(p.default))
           for p in params]
    expected = [(n, "" if d == "" else repr(eval(d))) for n, d in SIGNATURES[name]]
    assert got == expected
