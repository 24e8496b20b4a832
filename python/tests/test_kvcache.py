"""flash_attn_with_kvcache (FA2 and FA3 signatures): in-place append,
per-sequence cache lengths, cache_batch_idx, cache_leftpad, masking."""

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: flashattn's tests need it")

import flashattn  # noqa: E402
from flashattn import flash_attn_interface as fa3  # noqa: E402

from attention_reference import assert_close, attention_ref, randn  # noqa: E402


def kvcache_reference(q, k_cache, v_cache, k, v, lengths, rows, starts, **options):
    """Updated caches and out, computed one sequence at a time."""
    k_cache, v_cache = k_cache.clone(), v_cache.clone()
    new = 0 if k is None else k.shape[1]
    outs = []
    for b in range(q.shape[0]):
        r, n = rows[b], lengths[b]
        if k is not None:
            k_cache[r, n:n + new] = k[b]
            v_cache[r, n:n + new] = v[b]
        slopes = options.get("alibi_slopes")
        opts = dict(options, alibi_slopes=None if slopes is None else
                    (slopes if slopes.dim() == 1 else slopes[b:b + 1]))
        out, _ = attention_ref(q[b:b + 1], k_cache[r:r + 1, starts[b]:n + new],
                               v_cache[r:r + 1, starts[b]:n + new], **opts)
        outs.append(out)
    return torch.cat(outs), k_cache, v_cache


CASES = {
    "decode_append": dict(seqlen_q=1, new=1, rows=None, starts=None, options=dict()),
    "prefill_causal": dict(seqlen_q=5, new=5, rows=None, starts=None, options=dict(causal=True)),
    "batch_idx_leftpad": dict(seqlen_q=3, new=2, rows=[2, 0, 3], starts=[0, 4, 2],
                              options=dict(causal=True, softcap=4.0)),
    "no_append_window": dict(seqlen_q=4, new=0, rows=[1, 2, 0], starts=None,
                             options=dict(causal=True, window_size=(6, 0))),
    "alibi_per_batch": dict(seqlen_q=2, new=3, rows=None, starts=None,
                            options=dict(alibi_slopes="per_batch")),
}


# FlashAttention-3's flash_attn_with_kvcache has no alibi_slopes argument.
PARAMS = [(case, api) for case in CASES for api in ("fa2", "fa3")
          if not (api == "fa3" and "alibi_slopes" in CASES[case]["options"])]


@pytest.mark.parametrize("case,api", PARAMS, ids=[f"{c}-{a}" for c, a in PARAMS])
def test_kvcache(device, case, api):
    c = CASES[case]
    batch, cache_batch, cache_len, hq, hkv, d = 3, 4, 48, 4, 2, 32
    gen = torch.Generator().manual_seed(31)
    q = randn(device, gen, batch, c["seqlen_q"], hq, d)
    k_cache = randn(device, gen, cache_batch, cache_len, hkv, d)
    v_cache = randn(device, gen, cache_batch, cache_len, hkv, d)
    k = v = None
    if c["new"]:
        k = randn(device, gen, batch, c["new"], hkv, d)
        v = randn(device, gen, batch, c["new"], hkv, d)
    lengths = [10, 33, 6]
    rows = c["rows"] or list(range(batch))
    starts = c["starts"] or [0] * batch
    options = dict(c["options"])
    if options.get("alibi_slopes") == "per_batch":
        options["alibi_slopes"] = torch.rand(batch, hq, generator=gen).to(device) * 0.3
    ref, ref_k_cache, ref_v_cache = kvcache_reference(q, k_cache, v_cache, k, v, lengths, rows,
                                                      starts, **options)
    to_int32 = lambda xs: None if xs is None else torch.tensor(xs, dtype=torch.int32, device=device)  # noqa: E731
    fn = flashattn.flash_attn_with_kvcache if api == "fa2" else fa3.flash_attn_with_kvcache
    out, lse = fn(q, k_cache, v_cache, k, v, cache_seqlens=to_int32(lengths),
                  cache_batch_idx=to_int32(c["rows"]), cache_leftpad=to_int32(c["starts"]),
                  return_softmax_lse=True, **options)
    assert_close("out", out, ref)
    assert lse.shape == (batch, hq, c["seqlen_q"])
    assert torch.equal(k_cache, ref_k_cache) and torch.equal(v_cache, ref_v_cache)


def test_kvcache_int_seqlens_single_call(device):
    gen = torch.Generator().manual_seed(32)
    q = randn(device, gen, 2, 1, 4, 16)
    k_cache = randn(device, gen, 2, 20, 4, 16)
    v_cache = randn(device, gen, 2, 20, 4, 16)
    out = flashattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=12)
    ref, _ = attention_ref(q, k_cache[:, :12], v_cache[:, :12])
    assert_close("out", out, ref)
    full = flashattn.flash_attn_with_kvcache(q, k_cache, v_cache)  # no lengths: the whole cache
    assert_close("out", full, attention_ref(q, k_cache, v_cache)[0])


def test_kvcache_unsupported_options_raise(device):
    q = torch.randn(1, 1, 2, 16, device=device)
    cache = torch.randn(1, 8, 2, 16, device=device)
    table = torch.zeros(1, 1, dtype=torch.int32, device=device)
    cos = torch.ones(8, 8, device=device)
    with pytest.raises(NotImplementedError, match="block_table"):
        flashattn.flash_attn_with_kvcache(q, cache, cache, block_table=table)
    with pytest.raises(NotImplementedError, match="rotary_cos"):
        flashattn.flash_attn_with_kvcache(q, cache, cache, rotary_cos=cos, rotary_sin=cos)
    with pytest.raises(NotImplementedError, match="page_table"):
        fa3.flash_attn_with_kvcache(q, cache, cache, page_table=table)
    with pytest.raises(NotImplementedError, match="qv"):
        fa3.flash_attn_with_kvcache(q, cache, cache, qv=q)


def test_kvcache_bad_arguments_leave_the_cache_alone(device):
    """Every argument is checked before k and v are written into the cache."""
    q = torch.randn(2, 1, 4, 16, device=device)
    k_cache, v_cache = torch.randn(2, 8, 2, 16, device=device), torch.randn(2, 8, 2, 16, device=device)
    new = torch.randn(2, 3, 2, 16, device=device)
    lens = torch.tensor([2, 4], dtype=torch.int32, device=device)  # uneven: one call per sequence
    before = (k_cache.clone(), v_cache.clone())
    bad = [
        (dict(q=q[..., :8]), ValueError, "head dim"),
        (dict(q=q[:, :, :3]), ValueError, "heads in q"),
        (dict(alibi_slopes=torch.ones(7, device=device)), ValueError,
         r"\(batch, nheads\) = \(2, 4\)"),
        (dict(window_size=3), ValueError, "window_size"),
        (dict(softcap=-1.0), ValueError, "softcap"),
        (dict(softmax_scale=0.0), ValueError, "softmax_scale"),
    ]
    for change, exc, message in bad:
        args = dict(q=q, alibi_slopes=None, window_size=(-1, -1), softcap=0.0, softmax_scale=None)
        args.update(change)
        with pytest.raises(exc, match=message):
            flashattn.flash_attn_with_kvcache(args.pop("q"), k_cache, v_cache, new, new,
                                              cache_seqlens=lens, **args)
        assert torch.equal(k_cache, before[0]) and torch.equal(v_cache, before[1])


def test_kvcache_bad_arguments(device):
    q = torch.randn(2, 1, 2, 16, device=device)
    cache = torch.randn(2, 8, 2, 16, device=device)
    new = torch.randn(2, 3, 2, 16, device=device)
    lens = torch.tensor([2, 6], dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match="does not fit"):
        flashattn.flash_attn_with_kvcache(q, cache, cache, new, new, cache_seqlens=lens)
    strided = torch.randn(2, 8, 16, 2, device=device).transpose(-1, -2)
    with pytest.raises(ValueError, match="k_cache"):
        flashattn.flash_attn_with_kvcache(q, strided, cache, cache_seqlens=lens)
    with pytest.raises(ValueError, match="cache_seqlens is required"):
        flashattn.flash_attn_with_kvcache(q, cache, cache, new, new)
    with pytest.raises(TypeError, match="cache_seqlens"):
        flashattn.flash_attn_with_kvcache(q, cache, cache, cache_seqlens=lens.long())
    with pytest.raises(ValueError, match="cache_batch_idx"):
        flashattn.flash_attn_with_kvcache(q, cache, cache, cache_seqlens=lens,
                                          cache_batch_idx=torch.tensor([0, 5], dtype=torch.int32,
                                                                       device=device))
