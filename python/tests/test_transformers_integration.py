"""flashattn as a transformers attention function: the function itself is
tested against the reference always (it needs no transformers); the
registration and a tiny randomly initialised model run when transformers is
installed."""

import types

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: flashattn's tests need it")

from flashattn.integrations.transformers import flashattn_attention_forward  # noqa: E402

from attention_reference import assert_close, attention_ref, randn  # noqa: E402


def _inputs(device, batch=2, hq=4, hkv=2, seqlen=12, d=16, seed=51):
    gen = torch.Generator().manual_seed(seed)
    q = randn(device, gen, batch, hq, seqlen, d)
    k = randn(device, gen, batch, hkv, seqlen, d)
    v = randn(device, gen, batch, hkv, seqlen, d)
    return q, k, v


def _reference(q, k, v, pad_mask, causal=True, window_size=(-1, -1)):
    """Per sequence on its real tokens; padding query rows are 0."""
    out = torch.zeros(q.shape[0], q.shape[2], q.shape[1], v.shape[-1], dtype=torch.float64)
    for b in range(q.shape[0]):
        keep = pad_mask[b].bool()
        ref, _ = attention_ref(q[b:b + 1, :, keep].transpose(1, 2), k[b:b + 1, :, keep].transpose(1, 2),
                               v[b:b + 1, :, keep].transpose(1, 2), causal=causal,
                               window_size=window_size)
        out[b, keep] = ref[0].cpu()
    return out


LEFT_PADDED = [[0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1], [1] * 12]


@pytest.mark.parametrize("mask_kind", ["none", "2d", "4d_bool", "4d_float"])
def test_attention_function(device, mask_kind):
    q, k, v = _inputs(device)
    module = types.SimpleNamespace(is_causal=True, training=False)
    pad = torch.tensor(LEFT_PADDED if mask_kind != "none" else [[1] * 12] * 2, device=device)
    causal = torch.ones(12, 12, dtype=torch.bool, device=device).tril()
    mask4 = causal.view(1, 1, 12, 12) & pad.bool().view(2, 1, 1, 12)
    mask = {"none": None, "2d": pad, "4d_bool": mask4,
            "4d_float": torch.zeros(mask4.shape, device=device).masked_fill(~mask4, -3.4e38)}[mask_kind]
    out, weights = flashattn_attention_forward(module, q, k, v, mask, scaling=0.3)
    assert weights is None and out.shape == (2, 12, 4, 16)
    ref = _reference(q * 0.3 * 4, k, v, pad)  # the default scale 1/sqrt(16) = 0.25, times 1.2
    assert_close("out", out[pad.bool()], ref[pad.bool().cpu()])


def test_sliding_window_and_non_causal(device):
    q, k, v = _inputs(device, seed=52)
    module = types.SimpleNamespace(is_causal=False)
    pad = torch.ones(2, 12, device=device)
    out, _ = flashattn_attention_forward(module, q, k, v, None, sliding_window=4)
    ref = _reference(q, k, v, pad, causal=False, window_size=(3, 3))
    assert_close("out", out, ref)


def test_unsupported_4d_mask(device):
    q, k, v = _inputs(device)
    odd = torch.rand(2, 1, 12, 12, device=device) > 0.5
    with pytest.raises(NotImplementedError, match="4-D attention_mask"):
        flashattn_attention_forward(types.SimpleNamespace(is_causal=True), q, k, v, odd)


def test_register_with_transformers():
    transformers = pytest.importorskip(
        "transformers", reason="transformers is not installed: registration not tested")
    from flashattn.integrations.transformers import register

    name = register()
    assert transformers.AttentionInterface()[name] is flashattn_attention_forward
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    with torch.no_grad():
        model.config._attn_implementation = "eager"
        eager = model(input_ids=ids, attention_mask=mask).logits
        model.config._attn_implementation = name
        ours = model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert_close("logits", ours[real], eager[real].double(), kind="grad")
