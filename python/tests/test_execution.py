"""How calls run: per-thread contexts (concurrent threads give the same
results as one thread) and, on CUDA, torch's current stream and the
dispatcher's choice for decoding."""

import concurrent.futures

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: flashattn's tests need it")

import flashattn  # noqa: E402

from attention_reference import assert_close, attention_ref, random_qkv  # noqa: E402


def _problems(device):
    return [random_qkv(2, 20 + 7 * i, 30 + 5 * i, 4, 2, 32, device=device, requires_grad=False,
                       seed=i) for i in range(8)]


def test_threads_share_nothing(device):
    problems = _problems(device)
    run = lambda qkv: flashattn.flash_attn_func(*qkv, causal=True)  # noqa: E731
    expected = [run(p) for p in problems]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(run, problems * 3))
    for i, out in enumerate(got):
        assert torch.equal(out, expected[i % len(problems)])


def test_cpu_thread_count_change():
    """The CPU workspace grows with torch's thread count: a call after
    set_num_threads raised it must not reuse the smaller size of an earlier
    call of the same shape."""
    q, k, v = random_qkv(2, 256, 256, 8, 8, 64, device="cpu", requires_grad=True)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 4):
            torch.set_num_threads(n)
            out = flashattn.flash_attn_func(q, k, v, causal=True, deterministic=True)
            results.append((out,) + torch.autograd.grad(out, (q, k, v), torch.ones_like(out)))
    finally:
        torch.set_num_threads(threads)
    for one, four in zip(*results):
        torch.testing.assert_close(one, four, rtol=0, atol=1e-5)


def test_cuda_current_stream():
    if not (torch.cuda.is_available() and (flashattn.backend_compiled("cuda_sm80")
                                           or flashattn.backend_compiled("cuda_sm90"))):
        pytest.skip("needs a GPU and a library built with a CUDA backend")
    q, k, v = random_qkv(2, 256, 256, 8, 8, 64, device="cuda", requires_grad=True)
    expected = flashattn.flash_attn_func(q, k, v, causal=True, deterministic=True)
    (expected_dq,) = torch.autograd.grad(expected, (q,), torch.ones_like(expected))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        q_side = q.detach().requires_grad_()  # a leaf whose graph lives on this stream
        out = flashattn.flash_attn_func(q_side, k, v, causal=True, deterministic=True)
        (dq,) = torch.autograd.grad(out, (q_side,), torch.ones_like(out))
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(out, expected) and torch.equal(dq, expected_dq)


@pytest.mark.parametrize("head_dim, seqlen_q", [(128, 1), (64, 3), (256, 1), (128, 100)])
def test_cuda_decoding_runs_the_key_split(head_dim, seqlen_q, monkeypatch):
    """A grid much smaller than the GPU (few query rows over many keys)
    runs a key split, chosen by the automatic dispatch on every GPU the
    sm80 kernels run on (on Hopper the sm90 forward's, elsewhere sm80's);
    it matches the reference, its out and lse, and sm80's whole-tile kernel
    (FA_SM80_FWD_SPLIT=1)."""
    if not (torch.cuda.is_available() and flashattn.backend_compiled("cuda_sm80")):
        pytest.skip("needs a GPU and a library built with the sm80 backend")
    if torch.cuda.get_device_properties(0).multi_processor_count < 8:
        pytest.skip("the dispatcher prefers the split at most at SMs / 4 tiles: 2 tiles need 8 SMs")
    q, k, v = random_qkv(1, seqlen_q, 3000, 2, 1, head_dim, device="cuda", requires_grad=False, seed=3)
    flashattn.set_backend("auto")
    out, lse, _ = flashattn.flash_attn_func(q, k, v, return_attn_probs=True)
    assert ".split" in flashattn.last_kernel("cuda"), flashattn.last_kernel("cuda")
    ref_out, ref_lse = attention_ref(q, k, v)
    assert_close("out", out, ref_out)
    assert_close("lse", lse, ref_lse, q.dtype)
    monkeypatch.setenv("FA_SM80_FWD_SPLIT", "1")
    flashattn.set_backend("cuda_sm80")
    try:
        whole = flashattn.flash_attn_func(q, k, v)
        assert ".split" not in flashattn.last_kernel("cuda"), flashattn.last_kernel("cuda")
    finally:
        flashattn.set_backend("auto")
    assert_close("out (whole tiles)", out, whole.double())


def test_cuda_decoding_workspace_covers_the_fallback():
    """A decoding call whose q the Hopper kernels cannot read (rows 260 bytes
    apart: not a TMA layout) runs sm80's split, which needs a larger
    workspace than the Hopper split the size query plans for (it sees no
    tensors): the query must cover both, so the call runs and is right."""
    if not (torch.cuda.is_available() and flashattn.backend_compiled("cuda_sm80")):
        pytest.skip("needs a GPU and a library built with the sm80 backend")
    q, k, v = random_qkv(1, 100, 16384, 8, 2, 128, device="cuda", requires_grad=False, seed=5)
    padded = torch.zeros(1, 100, 8, 130, dtype=q.dtype, device="cuda")
    padded[..., :128] = q
    q_view = padded[..., :128]
    flashattn.set_backend("auto")
    out = flashattn.flash_attn_func(q_view, k, v)
    assert_close("out", out, attention_ref(q, k, v)[0])
