"""flash_attn_func and the packed fixed-length variants against the float64
reference: outputs, lse and gradients over a grid of shapes and options."""

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: flashattn's tests need it")

import flashattn  # noqa: E402
from flashattn import _ops  # noqa: E402

from attention_reference import (  # noqa: E402
    assert_close, attention_ref, dtype_for, randn, random_qkv)


def run_case(device, seqlens, head_dim, heads, dtype=None, head_dim_v=None, batch=2,
             check_grads=True, **options):
    """Forward + backward of flash_attn_func against the reference."""
    dtype = dtype or dtype_for(device)
    sq, sk = seqlens
    hq, hkv = heads
    q, k, v = random_qkv(batch, sq, sk, hq, hkv, head_dim, head_dim_v, dtype, device)
    out, lse, probs = flashattn.flash_attn_func(q, k, v, return_attn_probs=True, **options)
    assert probs is None  # FlashAttention returns S_dmask only with dropout
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = attention_ref(*leaves, **options)
    assert_close("out", out, ref_out, dtype)
    assert lse.dtype == torch.float32 and lse.shape == (batch, hq, sq)
    assert_close("lse", lse, ref_lse, torch.float32 if dtype == torch.float32 else dtype)
    if not check_grads:
        return
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref_grads = torch.autograd.grad(ref_out, leaves, dout.double())
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert g.dtype == dtype
        assert_close(name, g, r, dtype, "grad")


SEQLENS = [(1, 1), (1, 37), (37, 1), (33, 33), (31, 65), (65, 31), (128, 97)]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (6, 1)], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("head_dim", [8, 40, 64, 128])
@pytest.mark.parametrize("seqlens", SEQLENS, ids=[f"{a}x{b}" for a, b in SEQLENS])
def test_shapes(device, seqlens, head_dim, heads, causal):
    run_case(device, seqlens, head_dim, heads, causal=causal)


WINDOWS = [(0, 0), (3, 5), (10, -1), (-1, 4), (0, -1), (200, 200)]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("window_size", WINDOWS, ids=[f"w{a}_{b}" for a, b in WINDOWS])
@pytest.mark.parametrize("seqlens", [(33, 65), (65, 33), (40, 40)], ids=str)
def test_sliding_window(device, seqlens, window_size, causal):
    run_case(device, seqlens, 32, (4, 2), causal=causal, window_size=window_size)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("softcap", [0.5, 5.0])
@pytest.mark.parametrize("seqlens", [(17, 47), (47, 17)], ids=str)
def test_softcap(device, seqlens, softcap, causal):
    run_case(device, seqlens, 64, (4, 2), causal=causal, softcap=softcap, softmax_scale=0.3)


@pytest.mark.parametrize("per_batch", [False, True], ids=["per_head", "per_batch"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("seqlens", [(29, 29), (19, 53), (53, 19)], ids=str)
def test_alibi(device, seqlens, causal, per_batch):
    batch, heads = 2, 4
    gen = torch.Generator().manual_seed(3)
    shape = (batch, heads) if per_batch else (heads,)
    slopes = (torch.rand(shape, generator=gen) * 0.5).to(device)
    run_case(device, seqlens, 32, (heads, 2), batch=batch, causal=causal, alibi_slopes=slopes)


def test_alibi_with_window_and_softcap(device):
    slopes = torch.tensor([0.1, 0.2, 0.3, 0.4], device=device)
    run_case(device, (45, 70), 48, (4, 1), causal=True, window_size=(20, -1), softcap=3.0,
             alibi_slopes=slopes)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("seqlens", [(1, 65), (63, 63), (77, 129)], ids=str)
def test_half_precision(device, dtype, seqlens, causal):
    run_case(device, seqlens, 64, (4, 2), dtype=dtype, causal=causal)


@pytest.mark.parametrize("dims", [(64, 32), (32, 128), (3, 17), (1, 1), (256, 256), (96, 96)],
                         ids=lambda d: f"d{d[0]}_dv{d[1]}")
def test_head_dims(device, dims):
    run_case(device, (21, 34), dims[0], (2, 1), head_dim_v=dims[1], causal=True)


def test_fully_masked_rows_are_zero(device):
    # seqlen_q > seqlen_k with causal: the first sq - sk rows see no key.
    q, k, v = random_qkv(1, 9, 4, 2, 2, 16, device=device)
    out, lse, _ = flashattn.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    assert (out[:, :5] == 0).all()
    assert torch.isinf(lse[:, :, :5]).all() and (lse[:, :, :5] < 0).all()
    assert torch.isfinite(lse[:, :, 5:]).all()
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[:, :5] == 0).all()


def test_strided_inputs_are_not_copied(device):
    """Transposed and sliced inputs reach the library as strides."""
    b, s, h, d = 2, 23, 4, 32
    gen = torch.Generator().manual_seed(5)
    q_bhsd = randn(device, gen, b, h, s, d).requires_grad_()
    q = q_bhsd.transpose(1, 2)  # (b, s, h, d) with stride_seq = d
    big = randn(device, gen, b, s, 2 * h, d + 8)
    k = big[:, :, :h, :d]  # stride_seq = 2 * h * (d + 8)
    v = big[:, :, h:, 8:]  # offset start, same strides
    for t in (q, k, v):
        assert not t.is_contiguous() and _ops.last_dim_contiguous(t) is t
    out = flashattn.flash_attn_func(q, k, v, causal=True)
    ref, _ = attention_ref(q.detach(), k, v, causal=True)
    assert_close("out", out, ref)
    dout = randn(device, gen, out.shape)
    (dq,) = torch.autograd.grad(out, (q_bhsd,), dout)
    q64 = q.detach().double().requires_grad_()
    ref, _ = attention_ref(q64, k, v, causal=True)
    (rdq,) = torch.autograd.grad(ref, (q64,), dout.double())
    assert_close("dq", dq.transpose(1, 2), rdq, kind="grad")


def test_strided_last_dim_is_copied(device):
    gen = torch.Generator().manual_seed(6)
    q = randn(device, gen, 1, 11, 2, 16)
    k = randn(device, gen, 1, 13, 16, 2).transpose(-1, -2)  # stride(-1) = 2
    v = randn(device, gen, 1, 13, 2, 16)
    assert k.stride(-1) != 1
    out = flashattn.flash_attn_func(q, k, v)
    ref, _ = attention_ref(q, k, v)
    assert_close("out", out, ref)


def test_broadcast_inputs_and_gradients(device):
    """Stride-0 views (expand(), and the gradient autograd passes back
    through a sum over a dimension) are copied for the library, which takes
    no overlapping dimensions, and give the reference's results."""
    b, s, h, d = 2, 19, 4, 16
    gen = torch.Generator().manual_seed(9)
    q = randn(device, gen, 1, s, h, d).expand(b, s, h, d)  # broadcast over the batch
    kv = randn(device, gen, b, s, 1, d)
    k, v = kv.expand(b, s, h, d), kv.expand(b, s, h, d)  # MQA through expand()
    for t in (q, k):
        assert 0 in t.stride() and _ops.last_dim_contiguous(t) is not t
    out = flashattn.flash_attn_func(q, k, v, causal=True)
    ref, _ = attention_ref(q, k, v, causal=True)
    assert_close("out", out, ref)

    leaf = q.detach().clone().requires_grad_()
    out = flashattn.flash_attn_func(leaf, k, v)
    (dq,) = torch.autograd.grad(out.sum(dim=1).pow(2).sum(), (leaf,))  # dout has stride 0 over s
    q64 = leaf.detach().double().requires_grad_()
    ref, _ = attention_ref(q64, k, v)
    (rdq,) = torch.autograd.grad(ref.sum(dim=1).pow(2).sum(), (q64,))
    assert_close("dq", dq, rdq, kind="grad")


def test_qkvpacked(device):
    b, s, h, d = 2, 37, 4, 32
    qkv = randn(device, torch.Generator().manual_seed(7), b, s, 3, h, d)
    qkv.requires_grad_()
    out = flashattn.flash_attn_qkvpacked_func(qkv, causal=True, window_size=(9, 0))
    q64 = qkv.detach().double().requires_grad_()
    ref, _ = attention_ref(*q64.unbind(2), causal=True, window_size=(9, 0))
    assert_close("out", out, ref)
    dout = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, (qkv,), dout)
    (rg,) = torch.autograd.grad(ref, (q64,), dout.double())
    assert_close("dqkv", g, rg, kind="grad")


def test_kvpacked_gqa(device):
    b, sq, sk, hq, hkv, d = 2, 19, 44, 6, 2, 24
    gen = torch.Generator().manual_seed(8)
    q = randn(device, gen, b, sq, hq, d).requires_grad_()
    kv = randn(device, gen, b, sk, 2, hkv, d).requires_grad_()
    out, lse, _ = flashattn.flash_attn_kvpacked_func(q, kv, softcap=2.0, return_attn_probs=True)
    leaves = [q.detach().double().requires_grad_(), kv.detach().double().requires_grad_()]
    ref, ref_lse = attention_ref(leaves[0], *leaves[1].unbind(2), softcap=2.0)
    assert_close("out", out, ref)
    assert_close("lse", lse, ref_lse)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, kv), dout)
    ref_grads = torch.autograd.grad(ref, leaves, dout.double())
    for name, g, r in zip(("dq", "dkv"), grads, ref_grads):
        assert_close(name, g, r, kind="grad")


def test_deterministic_backward_is_reproducible(device):
    q, k, v = random_qkv(2, 70, 90, 4, 1, 32, device=device)
    grads = []
    for _ in range(2):
        out = flashattn.flash_attn_func(q, k, v, causal=True, deterministic=True)
        grads.append(torch.autograd.grad(out, (q, k, v), torch.ones_like(out)))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_no_grad_inputs(device):
    q, k, v = random_qkv(1, 5, 6, 2, 2, 8, device=device, requires_grad=False)
    out = flashattn.flash_attn_func(q, k, v)
    assert not out.requires_grad
    assert_close("out", out, attention_ref(q, k, v)[0])


@pytest.mark.parametrize("shape", [(0, 5, 7), (2, 0, 7), (2, 5, 0)], ids=["b0", "sq0", "sk0"])
def test_empty(device, shape):
    b, sq, sk = shape
    q, k, v = random_qkv(b, sq, sk, 2, 2, 8, device=device)
    out, lse, _ = flashattn.flash_attn_func(q, k, v, return_attn_probs=True)
    assert out.shape == (b, sq, 2, 8) and lse.shape == (b, 2, sq)
    assert torch.equal(out, torch.zeros_like(out))
    assert (lse == float("-inf")).all()
    out.sum().backward()
    assert torch.equal(q.grad, torch.zeros_like(q))


def test_softmax_scale_default_is_inverse_sqrt_head_dim(device):
    q, k, v = random_qkv(1, 8, 8, 2, 2, 16, device=device, requires_grad=False)
    a = flashattn.flash_attn_func(q, k, v)
    b = flashattn.flash_attn_func(q, k, v, softmax_scale=0.25)
    assert torch.equal(a, b)
