"""Dropout: the torch Philox against the library's fa_dropout_keep(),
outputs and gradients against the reference with the same mask,
reproducibility from torch's seed, and FlashAttention's S_dmask."""

import random

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: flashattn's tests need it")

import flashattn  # noqa: E402
from flashattn import _dropout, _ffi, _ops  # noqa: E402

from attention_reference import (  # noqa: E402
    assert_close, attention_ref, philox_keep_scalar, probs_ref, randn, random_qkv)


def test_philox_matches_library():
    rng = random.Random(0)
    cases = [(0, 0), (1, 0), (2**32 + 5, 7), (2**63 + 12345, 2**40 + 3), (2**64 - 1, 2**64 - 9)]
    cases += [(rng.getrandbits(64), rng.getrandbits(20)) for _ in range(4)]
    checked = 0
    for seed, offset in cases:
        heads = rng.randint(1, 9)
        batch_idx = torch.tensor(sorted(rng.sample(range(50), 2)))
        head_idx = torch.tensor(sorted(rng.sample(range(heads), min(2, heads))))
        sq, sk = rng.randint(1, 9), rng.randint(1, 13)
        p = rng.choice([0.1, 0.5, 0.17, 0.9, 0.999])
        keep = _dropout.dropout_keep_mask(seed, offset, heads, batch_idx, head_idx, sq, sk, p)
        assert keep.shape == (2, len(head_idx), sq, sk)
        for bi, b in enumerate(batch_idx.tolist()):
            for hi, h in enumerate(head_idx.tolist()):
                for i in range(sq):
                    for j in range(sk):
                        lib = _ffi.fa_dropout_keep(seed, offset, heads, b, h, i, j, p)
                        assert bool(keep[bi, hi, i, j]) == bool(lib), (seed, offset, b, h, i, j)
                        checked += 1
    assert checked > 100
    # The header's definition, re-derived in plain Python ints, agrees too.
    for _ in range(200):
        args = (rng.getrandbits(64), rng.getrandbits(33), 7, rng.randint(0, 9), rng.randint(0, 6),
                rng.randint(0, 300), rng.randint(0, 300), rng.random())
        assert philox_keep_scalar(*args) == _ffi.fa_dropout_keep(*args)


def test_drop_rate():
    p = 0.3
    keep = _dropout.dropout_keep_mask(1234, 0, 4, torch.arange(2), torch.arange(4), 64, 64, p)
    rate = 1.0 - keep.double().mean().item()
    assert abs(rate - p) < 0.02  # 32768 draws: 5 sigma is ~0.013


def _keep_mask(rng_state, hq, batch, sq, sk, p, device):
    seed, offset = rng_state.tolist()
    return _dropout.dropout_keep_mask(seed, offset, hq, torch.arange(batch), torch.arange(hq),
                                      sq, sk, p, device=device)


@pytest.mark.parametrize("options", [
    dict(), dict(causal=True), dict(window_size=(7, 3)), dict(softcap=4.0),
    dict(causal=True, alibi_slopes="per_head"),
], ids=["plain", "causal", "window", "softcap", "alibi"])
@pytest.mark.parametrize("seqlens", [(37, 37), (23, 70), (70, 23)], ids=str)
def test_dropout_output_and_gradients(device, seqlens, options):
    p, batch, hq, hkv = 0.17, 2, 4, 2
    sq, sk = seqlens
    if options.get("alibi_slopes") == "per_head":
        options = dict(options, alibi_slopes=torch.tensor([0.05, 0.1, 0.2, 0.4], device=device))
    q, k, v = random_qkv(batch, sq, sk, hq, hkv, 32, device=device)
    out, lse, rng_state = _ops.attention(q, k, v, dropout_p=p, **options)
    keep = _keep_mask(rng_state, hq, batch, sq, sk, p, device)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref, ref_lse = attention_ref(*leaves, dropout_p=p, keep=keep, **options)
    assert_close("out", out, ref)
    assert_close("lse", lse, ref_lse)  # of the undropped softmax
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref_grads = torch.autograd.grad(ref, leaves, dout.double())
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close(name, g, r, kind="grad")


def test_dropout_follows_torch_seed(device):
    q, k, v = random_qkv(1, 30, 30, 2, 2, 16, device=device, requires_grad=False)
    torch.manual_seed(42)
    a = flashattn.flash_attn_func(q, k, v, dropout_p=0.5)
    b = flashattn.flash_attn_func(q, k, v, dropout_p=0.5)
    torch.manual_seed(42)
    c = flashattn.flash_attn_func(q, k, v, dropout_p=0.5)
    assert torch.equal(a, c)
    assert not torch.equal(a, b)


def _out_from_probs(s_dmask, v, p, hq):
    """out = (kept probabilities / (1 - p)) @ v, from S_dmask alone."""
    v = v.double().repeat_interleave(hq // v.shape[2], dim=2)
    kept = s_dmask.double().clamp(min=0) / (1 - p)
    return torch.einsum("bhij,bjhd->bihd", kept, v)


def test_attn_probs_encode_the_kernels_mask(device):
    """S_dmask is computed in Python; the output it implies must equal the
    kernel's output, which ties the Python mask to the kernel's."""
    p, batch, hq = 0.25, 2, 4
    q, k, v = random_qkv(batch, 41, 29, hq, 1, 32, device=device, requires_grad=False)
    out, lse, s_dmask = flashattn.flash_attn_func(q, k, v, dropout_p=p, causal=True,
                                                  return_attn_probs=True)
    assert s_dmask.shape == (batch, hq, 41, 29) and s_dmask.dtype == q.dtype
    assert_close("S_dmask.abs()", s_dmask.abs(), probs_ref(q, k, causal=True))
    assert (s_dmask < 0).any() and (s_dmask > 0).any()
    assert_close("out from S_dmask", out, _out_from_probs(s_dmask, v, p, hq))


def test_varlen_dropout_and_attn_probs(device):
    p, hq = 0.3, 2
    lens_q, lens_k = [5, 17, 1], [9, 17, 30]
    cu_q = torch.tensor([0, 5, 22, 23], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 9, 26, 56], dtype=torch.int32, device=device)
    gen = torch.Generator().manual_seed(11)
    q = randn(device, gen, 23, hq, 16).requires_grad_()
    k = randn(device, gen, 56, hq, 16).requires_grad_()
    v = randn(device, gen, 56, hq, 16).requires_grad_()
    out, lse, s_dmask = flashattn.flash_attn_varlen_func(
        q, k, v, cu_q, cu_k, 17, 30, dropout_p=p, causal=True, return_attn_probs=True)
    assert lse.shape == (hq, 23) and s_dmask.shape == (3, hq, 17, 30)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    for b in range(3):
        qs, ks = slice(cu_q[b].item(), cu_q[b + 1].item()), slice(cu_k[b].item(), cu_k[b + 1].item())
        sq, sk = lens_q[b], lens_k[b]
        probs = s_dmask[b:b + 1, :, :sq, :sk]
        assert (s_dmask[b, :, sq:] == 0).all() and (s_dmask[b, :, :, sk:] == 0).all()
        # Sequence b of a varlen batch draws the mask of batch index b.
        leaves = [t[None, s].detach().double().requires_grad_() for t, s in ((q, qs), (k, ks), (v, ks))]
        ref, ref_lse = attention_ref(*leaves, causal=True, dropout_p=p, keep=probs >= 0)
        assert_close(f"out[{b}]", out[qs][None], ref)
        assert_close(f"lse[{b}]", lse[:, qs][None], ref_lse)
        assert_close(f"out[{b}] from S_dmask", out[qs][None],
                     _out_from_probs(probs, v[ks][None], p, hq))
        ref_grads = torch.autograd.grad(ref, leaves, dout[qs][None].double())
        for name, g, r, s in zip(("dq", "dk", "dv"), grads, ref_grads, (qs, ks, ks)):
            assert_close(f"{name}[{b}]", g[s][None], r, kind="grad")
