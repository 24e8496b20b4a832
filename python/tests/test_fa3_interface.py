"""flashattn.flash_attn_interface: FlashAttention-3's names, signatures and
return conventions, its unsupported options, and flash_attn_combine."""

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: flashattn's tests need it")

from flashattn import flash_attn_interface as fa3  # noqa: E402

from attention_reference import assert_close, attention_ref, randn, random_qkv  # noqa: E402


@pytest.mark.parametrize("options", [dict(), dict(causal=True), dict(window_size=(5, 1), softcap=2.0)],
                         ids=["plain", "causal", "window_softcap"])
def test_func_and_return_convention(device, options):
    q, k, v = random_qkv(2, 27, 45, 4, 2, 32, device=device)
    out = fa3.flash_attn_func(q, k, v, **options)
    assert isinstance(out, torch.Tensor)
    out2, lse = fa3.flash_attn_func(q, k, v, return_attn_probs=True, **options)
    assert torch.equal(out, out2) and lse.shape == (2, 4, 27)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref, ref_lse = attention_ref(*leaves, **options)
    assert_close("out", out, ref)
    assert_close("lse", lse, ref_lse)
    dout = torch.randn_like(out)
    for name, g, r in zip("qkv", torch.autograd.grad(out, (q, k, v), dout),
                          torch.autograd.grad(ref, leaves, dout.double())):
        assert_close("d" + name, g, r, kind="grad")


def test_varlen(device):
    cu_q = torch.tensor([0, 4, 19], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 11, 20], dtype=torch.int32, device=device)
    q, k, v = (t[0] for t in random_qkv(1, 19, 20, 4, 4, 16, device=device))
    out, lse = fa3.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 15, 11, causal=True,
                                          return_attn_probs=True)
    assert out.shape == (19, 4, 16) and lse.shape == (4, 19)
    for b in range(2):
        qs, ks = slice(cu_q[b].item(), cu_q[b + 1].item()), slice(cu_k[b].item(), cu_k[b + 1].item())
        ref, ref_lse = attention_ref(q[None, qs], k[None, ks], v[None, ks], causal=True)
        assert_close(f"out[{b}]", out[qs][None], ref)
        assert_close(f"lse[{b}]", lse[:, qs][None], ref_lse)


def test_qkvpacked_both_layouts(device):
    gen = torch.Generator().manual_seed(41)
    qkv = randn(device, gen, 2, 13, 3, 4, 16)
    ref, _ = attention_ref(*qkv.unbind(2), causal=True)
    assert_close("out", fa3.flash_attn_qkvpacked_func(qkv, causal=True), ref)
    # GQA layout: (batch, seqlen, num_heads_q + 2 * nheads_k, headdim).
    qkv = randn(device, gen, 2, 13, 6 + 2 * 2, 16)
    ref, _ = attention_ref(qkv[:, :, :6], qkv[:, :, 6:8], qkv[:, :, 8:])
    assert_close("out", fa3.flash_attn_qkvpacked_func(qkv, num_heads_q=6), ref)


@pytest.mark.parametrize("option", ["qv", "q_descale", "attention_chunk", "seqused_q"])
def test_unsupported_options_raise(device, option):
    q, k, v = random_qkv(1, 4, 4, 2, 2, 16, device=device, requires_grad=False)
    value = {"qv": q, "q_descale": torch.ones(1, 2, device=device), "attention_chunk": 64,
             "seqused_q": torch.tensor([4], dtype=torch.int32, device=device)}[option]
    with pytest.raises(NotImplementedError, match=option):
        if option == "seqused_q":
            cu = torch.tensor([0, 4], dtype=torch.int32, device=device)
            fa3.flash_attn_varlen_func(q[0], k[0], v[0], cu, cu, 4, 4, seqused_q=value)
        else:
            fa3.flash_attn_func(q, k, v, **{option: value})


@pytest.mark.parametrize("causal", [False, True])
def test_varlen_seqused_k(device, causal):
    """seqused_k (inference): sequence b attends to the first seqused_k[b]
    of its keys, as a varlen call over exactly those keys does; with a
    gradient required it refuses (no backward)."""
    gen = torch.Generator().manual_seed(41)
    q = randn(device, gen, 9, 4, 32)
    k, v = randn(device, gen, 20, 2, 32), randn(device, gen, 20, 2, 32)
    cu_q = torch.tensor([0, 3, 4, 9], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 8, 11, 20], dtype=torch.int32, device=device)
    used = torch.tensor([5, 0, 9], dtype=torch.int32, device=device)
    out = fa3.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 5, 9, seqused_k=used, causal=causal)
    keep = torch.cat([torch.arange(0, 5), torch.arange(11, 20)]).to(device)
    cu_used = torch.tensor([0, 5, 5, 14], dtype=torch.int32, device=device)
    ref = fa3.flash_attn_varlen_func(q, k[keep], v[keep], cu_q, cu_used, 5, 9, causal=causal)
    assert_close("out", out, ref.double(), dtype=q.dtype)
    with pytest.raises(NotImplementedError, match="seqused_k"):
        fa3.flash_attn_varlen_func(q.requires_grad_(), k, v, cu_q, cu_k, 5, 9, seqused_k=used)


def test_scheduling_hints_do_not_change_results(device):
    q, k, v = random_qkv(1, 9, 30, 4, 2, 16, device=device, requires_grad=False)
    base = fa3.flash_attn_func(q, k, v)
    hinted = fa3.flash_attn_func(q, k, v, num_splits=4, pack_gqa=True, sm_margin=8)
    assert torch.equal(base, hinted)


def test_combine_equals_full_attention(device):
    """Attention over three key splits, merged, equals attention over all keys."""
    q, k, v = random_qkv(2, 17, 60, 4, 2, 32, device=device, requires_grad=False)
    bounds = [0, 7, 31, 60]
    outs, lses = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        out, lse = fa3.flash_attn_func(q, k[:, lo:hi], v[:, lo:hi], softmax_scale=0.2,
                                       return_attn_probs=True)
        outs.append(out.float())
        lses.append(lse.transpose(1, 2))  # (batch, seqlen, nheads)
    # A split that saw no key at all: out 0, lse -inf; it must not contribute.
    outs.append(torch.zeros_like(outs[0]))
    lses.append(torch.full_like(lses[0], float("-inf")))
    out_partial, lse_partial = torch.stack(outs), torch.stack(lses)
    out, lse = fa3.flash_attn_combine(out_partial, lse_partial)
    full, full_lse = fa3.flash_attn_func(q, k, v, softmax_scale=0.2, return_attn_probs=True)
    assert out.dtype == torch.float32 and lse.shape == (2, 17, 4)
    assert_close("out", out, full, dtype=q.dtype)
    assert_close("lse", lse, full_lse.transpose(1, 2))
    into = torch.empty(2, 17, 4, 32, dtype=torch.bfloat16, device=device)
    result, _ = fa3.flash_attn_combine(out_partial, lse_partial, out=into)
    assert result is into
    assert_close("out (bf16)", into, full, torch.bfloat16)
    half, _ = fa3.flash_attn_combine(out_partial, lse_partial, out_dtype=torch.float16)
    assert half.dtype == torch.float16


def test_combine_all_splits_empty(device):
    out, lse = fa3.flash_attn_combine(torch.zeros(2, 1, 3, 2, 8, device=device),
                                      torch.full((2, 1, 3, 2), float("-inf"), device=device))
    assert torch.equal(out, torch.zeros_like(out)) and (lse == float("-inf")).all()
