"""torch.compile traces through flashattn's custom ops without graph breaks
(fullgraph=True fails on any break) and gives the eager results, forward
and backward. Needs torch >= 2.4 (torch.compile + torch.library.custom_op)."""

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: flashattn's tests need it")

import flashattn  # noqa: E402
from flashattn import _ops  # noqa: E402
from flashattn import flash_attn_interface as fa3  # noqa: E402

from attention_reference import random_qkv  # noqa: E402

if not (hasattr(torch, "compile") and _ops.HAS_CUSTOM_OP):
    pytest.skip(f"torch {torch.__version__} has no torch.compile / torch.library.custom_op "
                "(needs torch >= 2.4)", allow_module_level=True)


def _compare_compiled(fn, inputs):
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    eager_out = fn(*inputs)
    compiled_out = compiled(*inputs)
    assert torch.equal(eager_out, compiled_out)
    dout = torch.randn_like(eager_out)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    eager_grads = torch.autograd.grad(eager_out, leaves, dout)
    compiled_grads = torch.autograd.grad(compiled_out, leaves, dout)
    for a, b in zip(eager_grads, compiled_grads):
        assert torch.equal(a, b)


def test_compile_flash_attn_func(device):
    q, k, v = random_qkv(2, 33, 47, 4, 2, 32, device=device)

    def fn(q, k, v):
        return flashattn.flash_attn_func(q, k, v, causal=True, softcap=5.0) * 2

    _compare_compiled(fn, (q, k, v))


def test_compile_fa3_and_varlen(device):
    q, k, v = (t[0].detach().requires_grad_() for t in random_qkv(1, 20, 30, 4, 4, 16, device=device))
    cu_q = torch.tensor([0, 8, 20], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 10, 30], dtype=torch.int32, device=device)

    def fn(q, k, v, cu_q, cu_k):
        a = fa3.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 12, 20, causal=True)
        b = flashattn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 12, 20, window_size=(3, 3))
        return a + b

    _compare_compiled(fn, (q, k, v, cu_q, cu_k))


def test_compile_dropout_runs(device):
    q, k, v = random_qkv(1, 16, 16, 2, 2, 16, device=device)
    compiled = torch.compile(lambda q, k, v: flashattn.flash_attn_func(q, k, v, dropout_p=0.2),
                             fullgraph=True, backend="aot_eager")
    torch.manual_seed(3)
    out = compiled(q, k, v)
    torch.manual_seed(3)
    assert torch.equal(out, flashattn.flash_attn_func(q, k, v, dropout_p=0.2))
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


def test_opcheck(device):
    if not hasattr(torch.library, "opcheck"):
        pytest.skip(f"torch {torch.__version__} has no torch.library.opcheck")
    q, k, v = random_qkv(1, 9, 11, 2, 1, 16, device=device)
    args = (q, k, v, None, None, 9, 11, 0.0, 0.25, True, -1, -1, 0.0, None, False)
    torch.library.opcheck(torch.ops.flashattn.fwd.default, args)
