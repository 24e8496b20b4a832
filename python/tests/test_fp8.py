"""The FP8 forward through FlashAttention-3's interface (float8 q, k, v with
(batch, nheads_k) descales; out bf16; flash_attn_with_kvcache over float8
caches) and _ops.fp8_forward (per-block descales), on every device: against float64 attention of the dequantized
values, within 1.5x the error of the same attention with only P rounded to
e4m3 (what an FP8 kernel feeds its P·V) plus the bf16 output's rounding;
the LSE within 1e-3 plus 2^-12 of the scores' magnitude.
Needs a torch with float8 dtypes (2.1+): skipped otherwise."""

import math

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: flashattn's tests need it")
if not hasattr(torch, "float8_e4m3fn"):
    pytest.skip(f"torch {torch.__version__} has no float8 dtypes: the FP8 tests need torch >= 2.1",
                allow_module_level=True)

import flashattn  # noqa: E402
from flashattn import _ops  # noqa: E402
from flashattn import flash_attn_interface as fa3  # noqa: E402


def quantize(x, block, dtype=torch.float8_e4m3fn):
    """(x8, descale (b, h, blocks)): one scale per `block` rows (0: per head)."""
    b, s, h, d = x.shape
    rows = block or s
    blocks = -(-s // rows)
    padded = torch.zeros(b, blocks * rows, h, d, device=x.device)
    padded[:, :s] = x
    amax = padded.view(b, blocks, rows, h, d).abs().amax(dim=(2, 4))
    descale = torch.where(amax > 0, amax / torch.finfo(dtype).max, torch.ones_like(amax))
    x8 = (padded.view(b, blocks, rows, h, d) / descale.view(b, blocks, 1, h, 1)).view(b, -1, h, d)[:, :s]
    return x8.to(dtype), descale.permute(0, 2, 1).contiguous()


def dequantize(x8, descale, block):
    s = x8.shape[1]
    scale = descale.repeat_interleave(block or s, dim=2)[:, :, :s].permute(0, 2, 1).unsqueeze(-1)
    return x8.double() * scale.double()


def by_head(q, k, v):
    """(b, h, s, d) float64 views, k and v repeated for each query head."""
    group = q.shape[2] // k.shape[2]
    qh, kh, vh = (t.transpose(1, 2).double() for t in (q, k, v))
    return qh, kh.repeat_interleave(group, 1), vh.repeat_interleave(group, 1)


def score_magnitude(q, k):
    """The largest score magnitude of each row: max_j sum_x |q_x k_jx| · scale."""
    qh, kh, _ = by_head(q, k, k)
    return (qh.abs() @ kh.abs().transpose(-1, -2)).amax(-1) / math.sqrt(q.shape[-1])


def reference(q, k, v, causal, p_fp8):
    qh, kh, vh = by_head(q, k, v)
    s = qh @ kh.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        sq, sk = s.shape[-2:]
        s = s.masked_fill(~torch.ones(sq, sk, dtype=torch.bool, device=s.device).tril(sk - sq), -math.inf)
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - s.amax(-1, keepdim=True)).nan_to_num(0.0) * 256
    pv = p.to(torch.float8_e4m3fn).double() if p_fp8 else p
    return ((pv @ vh) / p.sum(-1, keepdim=True)).nan_to_num(0.0).transpose(1, 2), lse


def check(out, lse, q, k, v, causal):
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    exact, exact_lse = reference(q, k, v, causal, p_fp8=False)
    naive, _ = reference(q, k, v, causal, p_fp8=True)
    rms = lambda x: x.double().pow(2).mean().sqrt().item()
    err, naive_err = rms(out.double() - exact), rms(naive - exact)
    assert err <= 1.5 * naive_err + 2.0 ** -8 * rms(exact), (err, naive_err)
    # FP8 tensor cores accumulate QKᵀ to ~14 bits (an H100's scores are off
    # by up to ~2^-13 of their magnitude): so is the LSE
    magnitude = score_magnitude(q, k)
    finite = torch.isfinite(exact_lse)
    assert torch.equal(lse[~finite].double(), exact_lse[~finite])
    assert ((lse.double() - exact_lse)[finite].abs() <= 1e-3 + 2.0 ** -12 * magnitude[finite]).all()


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2"])
@pytest.mark.parametrize("shape", [(2, 150, 150, 4, 2, 128, True), (1, 65, 300, 2, 2, 256, False),
                                   (3, 1, 200, 8, 1, 128, False)], ids=["causal_gqa", "d256", "decode_mqa"])
def test_fa3_interface(device, dtype, shape):
    b, sq, sk, hq, hkv, d, causal = shape
    dt = getattr(torch, dtype)
    torch.manual_seed(0)
    (q8, qd), (k8, kd), (v8, vd) = (quantize(torch.randn(b, n, h, d, device=device), 0, dt)
                                    for n, h in ((sq, hq), (sk, hkv), (sk, hkv)))
    # FA3's descales are (batch, nheads_k); q's is shared by a group's heads
    qd = qd[:, ::hq // hkv].contiguous()
    out, lse = fa3.flash_attn_func(q8, k8, v8, causal=causal, q_descale=qd[..., 0], k_descale=kd[..., 0],
                                   v_descale=vd[..., 0], return_attn_probs=True)
    q = dequantize(q8, qd.repeat_interleave(hq // hkv, dim=1), 0)
    check(out, lse, q, dequantize(k8, kd, 0), dequantize(v8, vd, 0), causal)


@pytest.mark.parametrize("block", [128, 256])
def test_block_descales(device, block):
    torch.manual_seed(1)
    b, sq, sk, h, d = 2, 300, 520, 2, 128
    (q8, qd), (k8, kd), (v8, vd) = (quantize(torch.randn(b, n, h, d, device=device) * (1 + torch.arange(
        n, device=device).view(1, n, 1, 1) / 64), block) for n in (sq, sk, sk))
    out, lse = _ops.fp8_forward(q8, k8, v8, qd, kd, vd, causal=True, descale_block_q=block,
                                descale_block_k=block)
    check(out, lse, dequantize(q8, qd, block), dequantize(k8, kd, block), dequantize(v8, vd, block), True)


def test_checks_off_same_bits(device):
    torch.manual_seed(2)
    (q8, qd), (k8, kd), (v8, vd) = (quantize(torch.randn(2, 130, 2, 128, device=device), 128) for _ in range(3))
    args = dict(descale_block_q=128, descale_block_k=128)
    out, lse = _ops.fp8_forward(q8, k8, v8, qd, kd, vd, **args)
    flashattn.set_kv_cache_checks(False)
    try:
        out2, lse2 = _ops.fp8_forward(q8, k8, v8, qd, kd, vd, **args)
    finally:
        flashattn.set_kv_cache_checks(True)
    assert torch.equal(out, out2) and torch.equal(lse, lse2)


def test_errors(device):
    q8 = torch.randn(1, 8, 2, 128, device=device).to(torch.float8_e4m3fn)
    with pytest.raises(TypeError, match="k must be float8_e4m3fn"):
        _ops.fp8_forward(q8, q8.to(torch.float8_e5m2), q8)
    with pytest.raises(ValueError, match="q_descale must have 3 dimensions"):
        _ops.fp8_forward(q8, q8, q8, q_descale=torch.ones(1, 2, device=device))
    with pytest.raises(ValueError, match="finite and > 0"):
        _ops.fp8_forward(q8, q8, q8, k_descale=torch.zeros(1, 2, 1, device=device))
    with pytest.raises(NotImplementedError, match="qv"):
        fa3.flash_attn_func(q8, q8, q8, qv=q8)
    with pytest.raises(TypeError, match="float8"):
        _ops.fp8_forward(q8.float(), q8, q8)
    with pytest.raises(ValueError, match="same batch size"):
        _ops.fp8_forward(q8, torch.randn(2, 8, 2, 128, device=device).to(torch.float8_e4m3fn), q8)
    with pytest.raises(ValueError, match="k and v must agree"):
        _ops.fp8_forward(q8, q8, q8[:, :4])
    with pytest.raises(ValueError, match="softmax_scale"):
        _ops.fp8_forward(q8, q8, q8, softmax_scale=0.0)


def test_no_keys(device):
    q8 = torch.randn(2, 5, 2, 128, device=device).to(torch.float8_e4m3fn)
    out, lse = _ops.fp8_forward(q8, q8[:, :0], q8[:, :0])
    assert out.dtype == torch.bfloat16 and (out == 0).all() and (lse == float("-inf")).all()


@pytest.mark.parametrize("append", [False, True], ids=["cached", "append"])
@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
def test_kv_cache(device, paged, append):
    """FA3's flash_attn_with_kvcache with float8 caches: each sequence's
    first cache_seqlens keys, contiguous or through a page table (pages
    shuffled among spare ones, which hold NaN); with `append`, the last two
    of them come as k / v and are written into the cache (NaN there
    before)."""
    torch.manual_seed(3)
    b, sq, hq, hkv, d, sk, page, new = 2, 3, 4, 2, 128, 300, 16, 2
    lengths = [137, 300]
    q8, qd = quantize(torch.randn(b, sq, hq, d, device=device), 0)
    (k8, kd), (v8, vd) = (quantize(torch.randn(b, sk, hkv, d, device=device), 0) for _ in range(2))
    qd = qd[:, ::hq // hkv].contiguous()  # FA3's descales are (batch, nheads_k)
    nan = torch.tensor(float("nan")).to(k8.dtype).view(torch.uint8).item()

    def stored(x8):  # as bytes (float8 tensors take few indexing ops), the new keys NaN
        x = x8.view(torch.uint8).clone()
        if append:
            for i, n in enumerate(lengths):
                x[i, n - new:n] = nan
        return x
    k_cache, v_cache, table = stored(k8).view(k8.dtype), stored(v8).view(v8.dtype), None
    if paged:
        per_seq = -(-sk // page)
        order = torch.randperm(b * per_seq + 3, device=device)
        table = order[:b * per_seq].view(b, per_seq).to(torch.int32)

        def pages(x):
            cache = torch.full((b * per_seq + 3, page, hkv, d), nan, dtype=torch.uint8, device=device)
            padded = torch.full((b, per_seq * page, hkv, d), nan, dtype=torch.uint8, device=device)
            padded[:, :sk] = x
            cache[table.flatten().long()] = padded.view(b * per_seq, page, hkv, d)
            return cache.view(k8.dtype)
        k_cache, v_cache = pages(stored(k8)), pages(stored(v8))
    used = [n - new for n in lengths] if append else lengths
    seqlens = torch.tensor(used, dtype=torch.int32, device=device)
    k_new = torch.stack([k8.view(torch.uint8)[i, n - new:n] for i, n in enumerate(lengths)]).view(k8.dtype)
    v_new = torch.stack([v8.view(torch.uint8)[i, n - new:n] for i, n in enumerate(lengths)]).view(v8.dtype)
    kv_new = dict(k=k_new, v=v_new) if append else {}
    out, lse = fa3.flash_attn_with_kvcache(q8, k_cache, v_cache, cache_seqlens=seqlens, page_table=table,
                                           causal=True, q_descale=qd[..., 0], k_descale=kd[..., 0],
                                           v_descale=vd[..., 0], return_softmax_lse=True, **kv_new)
    q, k, v = dequantize(q8, qd.repeat_interleave(hq // hkv, dim=1), 0), dequantize(k8, kd, 0), dequantize(v8, vd, 0)
    for i, n in enumerate(lengths):
        check(out[i:i + 1], lse[i:i + 1], q[i:i + 1], k[i:i + 1, :n], v[i:i + 1, :n], True)
    if paged:  # the checks see one page of each: the page counts must agree
        with pytest.raises(ValueError, match="must agree in every dimension"):
            _ops.fp8_forward(q8, k_cache, v_cache[:-1], seqused_k=seqlens, block_table=table)
    with pytest.raises(ValueError, match="cache_seqlens is required"):
        fa3.flash_attn_with_kvcache(q8, k_cache, v_cache, k=k_new, v=v_new, page_table=table)
    capacity = table.shape[1] * page if paged else sk
    with pytest.raises(ValueError, match="does not fit"):  # one position left in the last sequence
        fa3.flash_attn_with_kvcache(q8, k_cache, v_cache, k=k_new, v=v_new, page_table=table,
                                    cache_seqlens=torch.tensor([0, capacity - 1], dtype=torch.int32, device=device))
    with pytest.raises(NotImplementedError, match="cache_leftpad"):
        fa3.flash_attn_with_kvcache(q8, k_cache, v_cache, cache_seqlens=seqlens, page_table=table,
                                    cache_leftpad=seqlens)
