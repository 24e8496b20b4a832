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


def kvcache_inputs(device, gen, batch, seqlen_q, cache_batch, cache_len, hq, hkv, d, new):
    """q, k_cache, v_cache, and k, v (None when new == 0), random."""
    q = randn(device, gen, batch, seqlen_q, hq, d)
    k_cache = randn(device, gen, cache_batch, cache_len, hkv, d)
    v_cache = randn(device, gen, cache_batch, cache_len, hkv, d)
    k = v = None
    if new:
        k = randn(device, gen, batch, new, hkv, d)
        v = randn(device, gen, batch, new, hkv, d)
    return q, k_cache, v_cache, k, v


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
    q, k_cache, v_cache, k, v = kvcache_inputs(device, gen, batch, c["seqlen_q"], cache_batch, cache_len,
                                               hq, hkv, d, c["new"])
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


@pytest.mark.parametrize("layout", ["contiguous", "batch_idx", "paged"])
def test_kvcache_varied_lengths_take_one_call(device, layout, monkeypatch):
    """Sequences of different lengths (one of them empty), through a cache
    row map or pages, run as one library call with seqused_k (and a block
    table): never one call per sequence."""
    batch, hq, hkv, d, page = 3, 4, 2, 32, 8
    gen = torch.Generator().manual_seed(36)
    q, k_cache, v_cache, _, _ = kvcache_inputs(device, gen, batch, 2, 4, 48, hq, hkv, d, 0)
    lengths, rows = [17, 0, 48], [2, 0, 3] if layout == "batch_idx" else [0, 1, 2]
    ref, _, _ = kvcache_reference(q, k_cache, v_cache, None, None, lengths, rows, [0] * batch,
                                  causal=True)
    args = dict(cache_seqlens=torch.tensor(lengths, dtype=torch.int32, device=device), causal=True)
    if layout == "batch_idx":
        args["cache_batch_idx"] = torch.tensor(rows, dtype=torch.int32, device=device)
    if layout == "paged":
        pages = 4 * 48 // page  # the sequences' pages in a shuffled order, spare ones too
        table = torch.randperm(pages, generator=gen)[:batch * 48 // page].view(batch, -1).to(device)
        dense_k, dense_v = k_cache[:batch], v_cache[:batch]
        k_cache = torch.zeros(pages, page, hkv, d, dtype=q.dtype, device=device)
        v_cache = torch.zeros_like(k_cache)
        k_cache[table] = dense_k.reshape(batch, -1, page, hkv, d)
        v_cache[table] = dense_v.reshape(batch, -1, page, hkv, d)
        args["block_table"] = table.to(torch.int32)

    def per_sequence_call(*unused, **unused_kw):
        raise AssertionError("one attention call per sequence")

    monkeypatch.setattr(flashattn._kvcache._ops, "attention", per_sequence_call)
    out = flashattn.flash_attn_with_kvcache(q, k_cache, v_cache, **args)
    assert_close("out", out, ref)


@pytest.mark.parametrize("layout", ["contiguous", "batch_idx", "paged"])
def test_kvcache_unchecked_matches_checked(device, layout):
    """set_kv_cache_checks(False) (GPU only: the step without host reads)
    appends and attends exactly as the checked call."""
    if device != "cuda":
        pytest.skip("the unchecked KV-cache path is the GPU's (a CPU context always checks)")
    batch, hq, hkv, d, page, new = 3, 4, 2, 64, 128, 2
    gen = torch.Generator().manual_seed(37)
    q, k_cache, v_cache, k, v = kvcache_inputs(device, gen, batch, 2, 4, 256, hq, hkv, d, new)
    args = dict(cache_seqlens=torch.tensor([17, 0, 250], dtype=torch.int32, device=device), causal=True)
    if layout == "batch_idx":
        args["cache_batch_idx"] = torch.tensor([2, 0, 3], dtype=torch.int32, device=device)
    if layout == "paged":
        table = torch.randperm(8, generator=gen)[:batch * 2].view(batch, 2).to(device)
        k_cache, v_cache = (c.reshape(8, page, hkv, d) for c in (k_cache, v_cache))
        args["block_table"] = table.to(torch.int32)
    results = []
    bad = k_cache[..., : d // 2]  # head dim 32 against q's 64: refused unchecked too
    flashattn.set_kv_cache_checks(False)
    try:
        with pytest.raises(ValueError, match="head"):
            flashattn.flash_attn_with_kvcache(q, bad, bad, cache_seqlens=args["cache_seqlens"])
        if layout == "contiguous":  # ALiBi: no KV-cache kernel on a GPU, so one call per sequence
            slopes = torch.rand(hq, generator=gen).to(device)
            out = flashattn.flash_attn_with_kvcache(q, k_cache, v_cache, alibi_slopes=slopes, **args)
            flashattn.set_kv_cache_checks(True)
            assert torch.equal(out, flashattn.flash_attn_with_kvcache(q, k_cache, v_cache,
                                                                     alibi_slopes=slopes, **args))
    finally:
        flashattn.set_kv_cache_checks(True)
    for checked in (True, False):
        kc, vc = k_cache.clone(), v_cache.clone()
        flashattn.set_kv_cache_checks(checked)
        try:
            out = flashattn.flash_attn_with_kvcache(q, kc, vc, k, v, **args)
        finally:
            flashattn.set_kv_cache_checks(True)
        results.append((out, kc, vc))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_kvcache_unchecked_cuda_graph(device):
    """With the checks off a decoding step captures in a CUDA graph: a
    replay after new lengths are copied into the captured tensor gives
    what an eager call with them gives (paged and not)."""
    if device != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    batch, hq, hkv, d, page = 4, 8, 2, 128, 64
    gen = torch.Generator().manual_seed(38)
    q, k_cache, v_cache, _, _ = kvcache_inputs(device, gen, batch, 1, batch, 512, hq, hkv, d, 0)
    table = torch.randperm(batch * 512 // page, generator=gen).view(batch, -1).to(device).to(torch.int32)
    k_pages = torch.empty(batch * 512 // page, page, hkv, d, dtype=q.dtype, device=device)
    v_pages = torch.empty_like(k_pages)
    k_pages[table.long()] = k_cache.view(batch, -1, page, hkv, d)
    v_pages[table.long()] = v_cache.view(batch, -1, page, hkv, d)
    for paged in (False, True):
        caches = dict(k_cache=k_pages, v_cache=v_pages, block_table=table) if paged else \
            dict(k_cache=k_cache, v_cache=v_cache)
        lengths = torch.tensor([100, 7, 512, 300], dtype=torch.int32, device=device)
        step = lambda: flashattn.flash_attn_with_kvcache(q, cache_seqlens=lengths, **caches)  # noqa: E731
        flashattn.set_kv_cache_checks(False)
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                step()  # warm up outside the capture
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = step()
            lengths.copy_(torch.tensor([5, 260, 64, 511], dtype=torch.int32))
            graph.replay()
            torch.cuda.synchronize()
        finally:
            flashattn.set_kv_cache_checks(True)
        assert torch.equal(out, step()), f"paged={paged}"


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
    with pytest.raises(NotImplementedError, match="rotary_seqlens"):
        fa3.flash_attn_with_kvcache(q, cache, cache, rotary_seqlens=table[0])
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


def rotary_table(device, dtype, positions, rotary_dim):
    """cos, sin (positions, rotary_dim / 2) of the usual inverse-frequency
    angles, rounded to dtype as a caller would pass them."""
    inv_freq = 1.0 / 10000 ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    angles = torch.arange(positions, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().to(device, dtype), angles.sin().to(device, dtype)


def rotate_ref(x, cos, sin, positions, interleaved):
    """x (b, s, h, d) rotated in float64 at positions[b][t], element by
    element (independent of the library's vectorized version)."""
    out = x.double().cpu().clone()
    cos64, sin64 = cos.double().cpu(), sin.double().cpu()
    half = cos.shape[1]
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            p = positions[b][t]
            for j in range(half):
                i1, i2 = (2 * j, 2 * j + 1) if interleaved else (j, j + half)
                x1, x2 = out[b, t, :, i1].clone(), out[b, t, :, i2].clone()
                out[b, t, :, i1] = x1 * cos64[p, j] - x2 * sin64[p, j]
                out[b, t, :, i2] = x1 * sin64[p, j] + x2 * cos64[p, j]
    return out


ROTARY = [(interleaved, mode, api) for interleaved in (True, False)
          for mode in ("causal", "local", "plain") for api in ("fa2", "fa3")]


@pytest.mark.parametrize("interleaved,mode,api", ROTARY,
                         ids=[f"{'interleaved' if i else 'neox'}-{m}-{a}" for i, m, a in ROTARY])
def test_kvcache_rotary(device, interleaved, mode, api):
    """New keys rotated at cache_seqlens + t; queries at cache_seqlens + i
    when causal or local, else all at cache_seqlens (FlashAttention's rule);
    rotary_dim < headdim leaves the other channels as they are."""
    batch, cache_batch, cache_len, hq, hkv, d, rotary_dim, seqlen_q, new = 3, 4, 40, 4, 2, 32, 16, 3, 2
    gen = torch.Generator().manual_seed(33)
    q, k_cache, v_cache, k, v = kvcache_inputs(device, gen, batch, seqlen_q, cache_batch, cache_len, hq,
                                               hkv, d, new)
    lengths, rows = [10, 33, 6], [2, 0, 3]
    cos, sin = rotary_table(device, q.dtype, cache_len, rotary_dim)
    options = dict(causal=mode == "causal", window_size=(8, 0) if mode == "local" else (-1, -1))
    per_position = mode != "plain"
    k_ref = rotate_ref(k, cos, sin, [[n + t for t in range(new)] for n in lengths], interleaved)
    q_ref = rotate_ref(q, cos, sin, [[n + (i if per_position else 0) for i in range(seqlen_q)]
                                     for n in lengths], interleaved)
    ref, ref_k_cache, _ = kvcache_reference(q_ref, k_cache.double().cpu(), v_cache.double().cpu(),
                                            k_ref, v.double().cpu(), lengths, rows, [0] * batch,
                                            **options)
    k_before, v_before = k.clone(), v.clone()
    to_int32 = lambda xs: torch.tensor(xs, dtype=torch.int32, device=device)  # noqa: E731
    fn = flashattn.flash_attn_with_kvcache if api == "fa2" else fa3.flash_attn_with_kvcache
    out = fn(q, k_cache, v_cache, k, v, rotary_cos=cos, rotary_sin=sin,
             cache_seqlens=to_int32(lengths), cache_batch_idx=to_int32(rows),
             rotary_interleaved=interleaved, **options)
    assert_close("out", out, ref, dtype=q.dtype)
    assert_close("k_cache", k_cache, ref_k_cache, dtype=q.dtype)
    assert torch.equal(k, k_before) and torch.equal(v, v_before), "k and v must not change"
    # the rotation is not a no-op: the unrotated keys would differ
    assert not torch.allclose(k_cache[rows[0], lengths[0]:lengths[0] + new].double().cpu(),
                              k.double().cpu()[0])


def test_kvcache_rotary_bad_arguments_leave_the_cache_alone(device):
    q = randn(device, torch.Generator().manual_seed(34), 2, 1, 2, 32)
    k_cache, v_cache = torch.zeros_like(q).repeat(1, 8, 1, 1), torch.zeros_like(q).repeat(1, 8, 1, 1)
    new = torch.ones_like(q)
    lens = torch.tensor([2, 4], dtype=torch.int32, device=device)
    cos, sin = rotary_table(device, q.dtype, 8, 16)
    other = torch.float64 if q.dtype != torch.float64 else torch.float32
    bad = [
        (dict(rotary_cos=cos), ValueError, "together"),
        (dict(rotary_cos=cos, rotary_sin=sin[:, :4]), ValueError, "one shape"),
        (dict(rotary_cos=cos.to(other), rotary_sin=sin.to(other)), TypeError, "rotary_cos must be"),
        (dict(rotary_cos=cos[:4], rotary_sin=sin[:4]), ValueError, "positions up to 4"),
        (dict(rotary_cos=torch.cat([cos] * 3, 1), rotary_sin=torch.cat([sin] * 3, 1)), ValueError,
         "rotary_dim <= headdim"),
        (dict(rotary_cos=cos[0], rotary_sin=sin[0]), ValueError, "2 dimensions"),
    ]
    for args, exc, message in bad:
        with pytest.raises(exc, match=message):
            flashattn.flash_attn_with_kvcache(q, k_cache, v_cache, new, new, cache_seqlens=lens, **args)
        assert not k_cache.any() and not v_cache.any(), "the cache changed before an error"
    with pytest.raises(ValueError, match="k and v must be given"):
        flashattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=lens, rotary_cos=cos,
                                          rotary_sin=sin)


PAGED = [(page, extra, api) for page, extra in ((4, "plain"), (16, "rotary_causal"), (8, "leftpad"))
         for api in ("fa2", "fa3")]


@pytest.mark.parametrize("page,extra,api", PAGED, ids=[f"page{p}-{e}-{a}" for p, e, a in PAGED])
def test_kvcache_paged(device, page, extra, api):
    """A paged cache (blocks in a shuffled order) gives what the same
    cache laid out densely gives, and the new keys land in the right pages."""
    batch, max_len, hq, hkv, d, seqlen_q, new = 3, 48, 4, 2, 32, 2, 2
    gen = torch.Generator().manual_seed(35)
    q, dense_k, dense_v, k, v = kvcache_inputs(device, gen, batch, seqlen_q, batch, max_len, hq, hkv, d,
                                               new)
    blocks_per_seq = max_len // page
    num_blocks = batch * blocks_per_seq + 3  # a few spare blocks
    order = torch.randperm(num_blocks, generator=gen)[:batch * blocks_per_seq]
    table = order.view(batch, blocks_per_seq).to(torch.int32)
    paged_k = torch.zeros(num_blocks, page, hkv, d, dtype=q.dtype, device=device)
    paged_v = torch.zeros_like(paged_k)
    paged_k[table.long()] = dense_k.view(batch, blocks_per_seq, page, hkv, d)
    paged_v[table.long()] = dense_v.view(batch, blocks_per_seq, page, hkv, d)
    lengths = [10, 33, 6]
    to_int32 = lambda xs: torch.tensor(xs, dtype=torch.int32, device=device)  # noqa: E731
    options = dict(cache_seqlens=to_int32(lengths))
    if extra == "rotary_causal":
        cos, sin = rotary_table(device, q.dtype, max_len, 16)
        options.update(rotary_cos=cos, rotary_sin=sin, causal=True)
    if extra == "leftpad":
        options.update(cache_leftpad=to_int32([3, 0, 5]))
    fn = flashattn.flash_attn_with_kvcache if api == "fa2" else fa3.flash_attn_with_kvcache
    paged_arg = dict(block_table=table.to(device)) if api == "fa2" else dict(page_table=table.to(device))
    ref = fn(q, dense_k, dense_v, k, v, **options)
    out = fn(q, paged_k, paged_v, k, v, **paged_arg, **options)
    assert_close("out", out, ref.double(), dtype=q.dtype)
    as_dense = lambda c: c[table.long()].view(batch, max_len, hkv, -1)  # noqa: E731
    assert torch.equal(as_dense(paged_k), dense_k) and torch.equal(as_dense(paged_v), dense_v)


def test_kvcache_paged_bad_arguments_leave_the_cache_alone(device):
    q = torch.randn(2, 1, 2, 16, device=device)
    k_cache, v_cache = torch.zeros(5, 4, 2, 16, device=device), torch.zeros(5, 4, 2, 16, device=device)
    new = torch.ones(2, 1, 2, 16, device=device)
    lens = torch.tensor([2, 4], dtype=torch.int32, device=device)
    table = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32, device=device)
    bad = [
        (dict(block_table=table.long()), TypeError, "block_table must be int32"),
        (dict(block_table=table[:1]), ValueError, "batch_size = 2 rows"),
        (dict(block_table=torch.tensor([[0, 1], [2, 9]], dtype=torch.int32, device=device)),
         ValueError, "names block 9"),
        (dict(block_table=table, cache_batch_idx=torch.tensor([0, 1], dtype=torch.int32,
                                                             device=device)),
         ValueError, "cache_batch_idx cannot be combined"),
        (dict(block_table=table[:, :1]), ValueError, "does not fit"),
    ]
    for args, exc, message in bad:
        with pytest.raises(exc, match=message):
            flashattn.flash_attn_with_kvcache(q, k_cache, v_cache, new, new, cache_seqlens=lens, **args)
        assert not k_cache.any() and not v_cache.any(), "the cache changed before an error"
