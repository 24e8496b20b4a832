"""Attention over a KV cache (flash_attn_with_kvcache), forward only.

The cache is (batch_cache, seqlen_cache, heads_kv, dim); sequence b of the
batch reads cache row cache_batch_idx[b] (default b), keys
[cache_leftpad[b], cache_seqlens[b] + seqlen_new). New keys/values, when
given, are first written in place at [cache_seqlens[b], + seqlen_new).

Paged (block_table (batch, max_blocks) int32): the cache is (num_blocks,
page_size, heads_kv, dim), and position p of sequence b lives in block
block_table[b, p // page_size] at row p % page_size.

One library call without copies: when every sequence sees the same key
range of consecutive cache rows, a plain call over that range; otherwise,
with keys starting at position 0, a call with the library's KV-cache
options (seqused_k: each sequence's key count; kv_block_table: the pages,
or for cache_batch_idx one page per sequence, the cache row it reads). Only
cache_leftpad (keys starting later), or an option the GPU's KV-cache kernels
lack (softcap, ALiBi on sm80), takes one call per sequence (paged: over a
gathered copy of its pages).

Rotary embedding (rotary_cos/rotary_sin, FlashAttention's semantics): the
new keys are rotated at their cache positions cache_seqlens[b] + t before
they are written; the queries at cache_seqlens[b] + i when causal or local,
else all at cache_seqlens[b]. Computed in float32 and rounded to the dtype,
as FlashAttention's kernel does.
"""

import torch

from . import _ffi, _ops


def _check_index(name, t, batch, device):
    if t is None:
        return None
    _ops.check_tensor(name, t, 1, torch.int32, device)
    if t.shape[0] != batch:
        raise ValueError(f"{name} must have batch_size = {batch} entries, got {t.shape[0]}")
    return t.tolist()


def append_in_place(k_cache, v_cache, k, v, lengths, rows, block_table):
    """cache[rows[b], lengths[b] + t] = k[b, t], and v likewise (paged: the
    block and row that hold position lengths[b] + t); float8 caches through
    byte views, since index_put has no float8 kernels on every device.
    lengths, rows: lists, checked by the caller."""
    seqlen_new, device = k.shape[1], k.device
    pos_idx = torch.tensor(lengths, device=device).view(-1, 1) + torch.arange(seqlen_new, device=device).view(1, -1)
    if block_table is not None:
        row_idx = block_table.long().gather(1, pos_idx // k_cache.shape[1])
        pos_idx = pos_idx % k_cache.shape[1]
    else:
        row_idx = torch.tensor(rows, device=device).view(-1, 1)

    def as_stored(t):
        return t.view(torch.uint8) if t.dtype in _ops.FP8_DTYPES else t
    as_stored(k_cache)[row_idx, pos_idx] = as_stored(k)
    as_stored(v_cache)[row_idx, pos_idx] = as_stored(v)


def fp8_append(q, k_cache, v_cache, k, v, cache_seqlens, block_table):
    """flash_attn_with_kvcache's append for float8 caches: k / v (b,
    seqlen_new, hkv, d) of the caches' dtype written at cache_seqlens;
    returns the lengths after it, (b,) int32. Checks (host reads) that the
    new keys fit the cache and, paged, that the table names existing
    pages for them."""
    if (k is None) != (v is None):
        raise ValueError("k and v must be given together (or neither)")
    batch = q.shape[0]
    for name, t, cache in (("k", k, k_cache), ("v", v, v_cache)):
        _ops.check_tensor(name, t, 4, k_cache.dtype, q.device)
        want = (batch, t.shape[1]) + tuple(cache.shape[2:])
        if tuple(t.shape) != want:
            raise ValueError(f"{name} must be {want} (batch, seqlen_new, nheads_k, headdim), got {tuple(t.shape)}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v must have the same seqlen_new, got {k.shape[1]} and {v.shape[1]}")
    if cache_seqlens is None:
        raise ValueError("cache_seqlens is required to append k and v to the cache")
    seqlen_new, paged = k.shape[1], block_table is not None
    if isinstance(cache_seqlens, int):
        lengths = [cache_seqlens] * batch
    else:
        lengths = _check_index("cache_seqlens", cache_seqlens, batch, q.device)
    if paged:
        check_table(block_table, batch, q.device)
        capacity = block_table.shape[1] * k_cache.shape[1]
    else:
        if batch > k_cache.shape[0]:
            raise ValueError(f"k_cache has {k_cache.shape[0]} sequences but q has batch {batch}")
        capacity = k_cache.shape[1]
    for b, n in enumerate(lengths):
        if not 0 <= n or n + seqlen_new > capacity:
            raise ValueError(f"cache_seqlens[{b}] = {n} plus seqlen_new = {seqlen_new} does not fit the "
                             f"cache's {capacity} positions")
    ends = [n + seqlen_new for n in lengths]
    if paged:
        check_pages(block_table, ends, k_cache.shape[1], k_cache.shape[0])
    append_in_place(k_cache, v_cache, k, v, lengths, list(range(batch)), block_table)
    return torch.tensor(ends, dtype=torch.int32, device=q.device)


def _rotate(x, cos, sin, positions, interleaved):
    """x (b, s, h, d) with its first rotary_dim = 2 * cos.shape[1] channels
    rotated by the angles of rows positions (b, s) of cos/sin (seqlen_ro,
    rotary_dim / 2): pairs (2j, 2j + 1) when interleaved, else (j, j +
    rotary_dim / 2) (GPT-NeoX). Returns a new tensor in x's dtype."""
    half = cos.shape[1]
    c = cos.float()[positions].unsqueeze(2)  # (b, s, 1, half)
    s = sin.float()[positions].unsqueeze(2)
    part = x[..., :2 * half].float()
    if interleaved:
        x1, x2 = part[..., 0::2], part[..., 1::2]
        rotated = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    else:
        x1, x2 = part[..., :half], part[..., half:]
        rotated = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
    return torch.cat((rotated.to(x.dtype), x[..., 2 * half:]), dim=-1)


def _check_rotary(cos, sin, q, k, lengths, seqlen_new, positions_of_q):
    """Raise unless cos/sin are a rotary table that covers every position
    the call rotates (positions_of_q: how many query positions follow each
    cache length: seqlen_q when causal or local, else 1)."""
    if (cos is None) != (sin is None):
        raise ValueError("rotary_cos and rotary_sin must be given together (or neither)")
    if k is None:
        raise ValueError("rotary_cos/rotary_sin rotate the new keys: k and v must be given too")
    _ops.check_tensor("rotary_cos", cos, 2, q.dtype, q.device)
    _ops.check_tensor("rotary_sin", sin, 2, q.dtype, q.device)
    if cos.shape != sin.shape:
        raise ValueError(f"rotary_cos {tuple(cos.shape)} and rotary_sin {tuple(sin.shape)} must have one shape")
    rotary_dim, head_dim = 2 * cos.shape[1], q.shape[-1]
    if not 0 < rotary_dim <= head_dim:
        raise ValueError(
            f"rotary_cos/rotary_sin must be (seqlen_ro, rotary_dim / 2) with 0 < rotary_dim <= headdim "
            f"= {head_dim}, got rotary_dim {rotary_dim}"
        )
    needed = max((n + max(seqlen_new, positions_of_q) for n in lengths), default=0)
    if cos.shape[0] < needed:
        raise ValueError(
            f"rotary_cos/rotary_sin have {cos.shape[0]} positions but the call rotates positions up "
            f"to {needed - 1} (cache_seqlens + seqlen_new, or + seqlen_q when causal or local)"
        )


def check_table(block_table, batch, device):
    """Raise unless block_table is an int32 (batch, max_blocks) tensor on device."""
    _ops.check_tensor("block_table", block_table, 2, torch.int32, device)
    if block_table.shape[0] != batch:
        raise ValueError(f"block_table must have batch_size = {batch} rows, got {block_table.shape[0]}")


def check_pages(block_table, ends, page_size, num_blocks):
    """Raise unless row b of block_table names existing blocks for the
    pages that positions [0, ends[b]) occupy (the caller has checked that
    they fit the table)."""
    if not ends or not page_size:
        return
    used = max(-(-e // page_size) for e in ends)
    pages = block_table[:, :used].tolist()  # one copy to the host
    for b, e in enumerate(ends):
        bad = [p for p in pages[b][:-(-e // page_size)] if not 0 <= p < num_blocks]
        if bad:
            raise ValueError(f"block_table[{b}] names block {bad[0]}, outside 0..{num_blocks - 1}")


def paged_rows(cache, block_table, b, lo, hi):
    """(hi - lo, heads, dim): positions [lo, hi) of sequence b of a paged
    cache (num_blocks, page_size, heads, dim), gathered into a copy."""
    pages = block_table[b, :-(-hi // cache.shape[1])].long()
    return cache[pages].flatten(0, 1)[lo:hi]


def gather_varlen_pages(k, v, block_table, cu_seqlens_k):
    """Packed k, v (total_k, heads, dim) of a varlen call whose keys and
    values live in a paged cache: k/v (num_blocks, page_size, heads, dim),
    block_table (batch, max_blocks) int32, sequence b's keys at positions
    [0, cu_seqlens_k[b + 1] - cu_seqlens_k[b]). A copy, differentiable."""
    for name, t in (("k", k), ("v", v)):
        _ops.check_tensor(name, t, 4)
    _ops.check_tensor("cu_seqlens_k", cu_seqlens_k, 1, torch.int32, k.device)
    if k.shape[:2] != v.shape[:2]:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same blocks and page size")
    batch = cu_seqlens_k.shape[0] - 1
    if batch < 0:
        raise ValueError("cu_seqlens_k must have batch_size + 1 entries, got none")
    check_table(block_table, batch, k.device)
    bounds = cu_seqlens_k.tolist()
    lengths = [bounds[b + 1] - bounds[b] for b in range(batch)]
    capacity = block_table.shape[1] * k.shape[1]
    for b, n in enumerate(lengths):
        if not 0 <= n <= capacity:
            raise ValueError(f"sequence {b} has {n} keys; its block_table row holds 0..{capacity}")
    check_pages(block_table, lengths, k.shape[1], k.shape[0])
    return tuple(torch.cat([cache.flatten(0, 1)[:0]] +
                           [paged_rows(cache, block_table, b, 0, n) for b, n in enumerate(lengths)])
                 for cache in (k, v))


def _kvcache_unchecked(q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, block_table,
                       alibi_slopes, **options):
    """kvcache_attention with flashattn.set_kv_cache_checks(False), on a GPU,
    without leftpad or rotary: the append and the attention call from the
    index tensors as they are, no host read (a decoding step that a CUDA
    graph can capture). Shapes were checked; values are trusted."""
    batch, seqlen_new = q.shape[0], 0 if k is None else k.shape[1]
    paged = block_table is not None
    capacity = block_table.shape[1] * k_cache.shape[1] if paged else k_cache.shape[1]
    if cache_seqlens is None or isinstance(cache_seqlens, int):
        if cache_seqlens is None and k is not None:
            raise ValueError("cache_seqlens is required to append k and v to the cache")
        n = capacity if cache_seqlens is None else cache_seqlens
        lengths = torch.full((batch,), n, dtype=torch.int32, device=q.device)
    else:
        lengths = cache_seqlens
    for name, t in (("cache_seqlens", lengths), ("cache_batch_idx", cache_batch_idx)):
        if t is not None:
            _ops.check_tensor(name, t, 1, torch.int32, q.device)
            if t.shape[0] != batch:
                raise ValueError(f"{name} must have batch_size = {batch} entries, got {t.shape[0]}")
    if cache_batch_idx is not None and paged:
        raise ValueError("cache_batch_idx cannot be combined with block_table: a paged cache "
                         "maps sequences to pages through the table")
    if not paged and cache_batch_idx is None and batch > k_cache.shape[0]:
        raise ValueError(f"k_cache has {k_cache.shape[0]} sequences but q has batch {batch}")
    if paged:
        check_table(block_table, batch, q.device)
    if k is not None:
        pos = lengths.long().view(-1, 1) + torch.arange(seqlen_new, device=q.device).view(1, -1)
        if paged:
            rows = block_table.long().gather(1, pos // k_cache.shape[1])
            pos = pos % k_cache.shape[1]
        elif cache_batch_idx is not None:
            rows = cache_batch_idx.long().view(-1, 1)
        else:
            rows = torch.arange(batch, device=q.device).view(-1, 1)
        k_cache[rows, pos] = k
        v_cache[rows, pos] = v
    used = lengths + seqlen_new if seqlen_new else lengths
    if paged:
        kc, vc, table = k_cache, v_cache, block_table
    elif cache_batch_idx is not None:  # one page per sequence: its cache row
        kc, vc, table = k_cache, v_cache, cache_batch_idx.view(batch, 1)
    else:
        kc, vc, table = k_cache[:batch], v_cache[:batch], None
    with torch.no_grad():
        return _ops.kv_cache_forward(q, kc, vc, used.to(torch.int32), table, alibi_slopes=alibi_slopes,
                                     **options)


def kvcache_attention(q, k_cache, v_cache, k=None, v=None, cache_seqlens=None,
                      cache_batch_idx=None, cache_leftpad=None, softmax_scale=None,
                      causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                      rotary_cos=None, rotary_sin=None, rotary_interleaved=True, block_table=None):
    """(out (b, sq, hq, dv), lse (b, hq, sq)). q (b, sq, hq, d);
    k_cache (b_cache, s_cache, hkv, d), v_cache (b_cache, s_cache, hkv, dv);
    k, v (b, s_new, hkv, d/dv) or None; rotary_cos/rotary_sin (seqlen_ro,
    rotary_dim / 2) or None; block_table (b, max_blocks) int32 or None (then
    k_cache/v_cache are (num_blocks, page_size, hkv, d/dv))."""
    _ops.check_tensor("q", q, 4)
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        _ops.check_tensor(name, t, 4, q.dtype, q.device)
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dimension (stride(-1) == 1)")
    if (k is None) != (v is None):
        raise ValueError("k and v must be given together (or neither)")
    batch, seqlen_q = q.shape[0], q.shape[1]
    cache_batch, cache_len = k_cache.shape[0], k_cache.shape[1]
    if k_cache.shape[:-1] != v_cache.shape[:-1]:
        raise ValueError(
            f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} must agree in "
            "every dimension but the last"
        )
    seqlen_new = 0
    if k is not None:
        _ops.check_tensor("k", k, 4, q.dtype, q.device)
        _ops.check_tensor("v", v, 4, q.dtype, q.device)
        seqlen_new = k.shape[1]
        want_k = (batch, seqlen_new) + tuple(k_cache.shape[2:])
        want_v = (batch, seqlen_new) + tuple(v_cache.shape[2:])
        if tuple(k.shape) != want_k or tuple(v.shape) != want_v:
            raise ValueError(
                f"k and v must be {want_k} and {want_v} (batch, seqlen_new, nheads_k, headdim), "
                f"got {tuple(k.shape)} and {tuple(v.shape)}"
            )
    paged = block_table is not None
    if paged:
        if cache_batch_idx is not None:
            raise ValueError("cache_batch_idx cannot be combined with block_table: a paged cache "
                             "maps sequences to pages through the table")
        check_table(block_table, batch, q.device)
        page_size = cache_len
        cache_len = block_table.shape[1] * page_size  # positions per sequence
    # Everything the attention call checks, before the cache is written: the
    # cache as a (batch, ...) view stands for each sequence's keys.
    def as_batch(t):
        return t[:1].expand(batch, *t.shape[1:]) if t.shape[0] else t

    _ops.check_attention_args(q, as_batch(k_cache), as_batch(v_cache), None, None, None, None, 0.0,
                              window_size, alibi_slopes, softmax_scale, softcap)
    if (not _ffi._kv_cache_checks[0] and q.is_cuda and cache_leftpad is None and rotary_cos is None
            and rotary_sin is None):
        try:
            return _kvcache_unchecked(q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx,
                                      block_table, alibi_slopes, softmax_scale=softmax_scale,
                                      causal=causal, window_size=window_size, softcap=softcap)
        except NotImplementedError:
            pass  # no kernel of this GPU takes the options with a KV cache: the checked path
            # below runs one call per sequence (rewriting the same new keys, if any)
    if isinstance(cache_seqlens, int):
        lengths = [cache_seqlens] * batch
    elif cache_seqlens is None:
        if k is not None:
            raise ValueError("cache_seqlens is required to append k and v to the cache")
        lengths = [cache_len] * batch
    else:
        lengths = _check_index("cache_seqlens", cache_seqlens, batch, q.device)
    rows = _check_index("cache_batch_idx", cache_batch_idx, batch, q.device)
    if paged:
        rows = list(range(batch))  # sequence b is table row b
    elif rows is None:
        if batch > cache_batch:
            raise ValueError(f"k_cache has {cache_batch} sequences but q has batch {batch}")
        rows = list(range(batch))
    starts = _check_index("cache_leftpad", cache_leftpad, batch, q.device) or [0] * batch
    for b in range(batch):
        if not paged and not 0 <= rows[b] < cache_batch:
            raise ValueError(f"cache_batch_idx[{b}] = {rows[b]} is outside 0..{cache_batch - 1}")
        if not 0 <= lengths[b] or lengths[b] + seqlen_new > cache_len:
            raise ValueError(
                f"cache_seqlens[{b}] = {lengths[b]} plus seqlen_new = {seqlen_new} does not fit "
                f"the cache's {cache_len} positions"
            )
        if not 0 <= starts[b] <= lengths[b] + seqlen_new:
            raise ValueError(f"cache_leftpad[{b}] = {starts[b]} is outside 0..cache_seqlens[{b}]")
    if paged:
        check_pages(block_table, [n + seqlen_new for n in lengths], page_size, cache_batch)

    if rotary_cos is not None or rotary_sin is not None:
        # local as FlashAttention decides it: a window edge inside the cache
        local = any(0 <= w < cache_len for w in window_size)
        per_position = causal or local
        _check_rotary(rotary_cos, rotary_sin, q, k, lengths, seqlen_new,
                      seqlen_q if per_position else 1)
        starts_of = torch.tensor(lengths, device=q.device).view(-1, 1)
        k = _rotate(k, rotary_cos, rotary_sin, starts_of + torch.arange(seqlen_new, device=q.device),
                    rotary_interleaved)
        q_offsets = torch.arange(seqlen_q, device=q.device) if per_position else \
            torch.zeros(seqlen_q, dtype=torch.long, device=q.device)
        q = _rotate(q, rotary_cos, rotary_sin, starts_of + q_offsets, rotary_interleaved)

    if k is not None:
        append_in_place(k_cache, v_cache, k, v, lengths, rows, block_table)

    ends = [n + seqlen_new for n in lengths]

    def keys_of(cache, b, lo, hi):
        """(1, hi - lo, hkv, dim): sequence b's positions [lo, hi)."""
        if not paged:
            return cache[rows[b]:rows[b] + 1, lo:hi]
        return paged_rows(cache, block_table, b, lo, hi).unsqueeze(0)

    options = dict(softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                   softcap=softcap)
    with torch.no_grad():
        uniform = (not paged and len(set(starts)) == 1 and len(set(ends)) == 1
                   and rows == list(range(rows[0], rows[0] + batch)))
        if batch == 0 or uniform:
            lo, hi, r0 = (starts[0], ends[0], rows[0]) if batch else (0, 0, 0)
            out, lse, _ = _ops.attention(
                q, k_cache[r0:r0 + batch, lo:hi], v_cache[r0:r0 + batch, lo:hi],
                alibi_slopes=alibi_slopes, **options)
            return out, lse
        if not any(starts):
            # one call: each sequence's first `ends[b]` positions
            used = torch.tensor(ends, dtype=torch.int32, device=q.device)
            if paged:
                kc, vc, table = k_cache, v_cache, block_table
            elif rows == list(range(batch)):
                kc, vc, table = k_cache[:batch], v_cache[:batch], None
            else:  # cache_batch_idx: sequence b's one page is cache row rows[b]
                kc, vc = k_cache, v_cache
                table = torch.tensor(rows, dtype=torch.int32, device=q.device).view(batch, 1)
            try:
                return _ops.kv_cache_forward(q, kc, vc, used, table, alibi_slopes=alibi_slopes,
                                             **options)
            except NotImplementedError:
                pass  # no kernel of this device takes the options with a KV cache
        outs, lses = [], []
        for b in range(batch):
            slopes = alibi_slopes
            if slopes is not None and slopes.dim() == 2:
                slopes = slopes[b:b + 1]
            lo, hi = starts[b], ends[b]
            out, lse, _ = _ops.attention(
                q[b:b + 1], keys_of(k_cache, b, lo, hi), keys_of(v_cache, b, lo, hi),
                alibi_slopes=slopes, **options)
            outs.append(out)
            lses.append(lse)
        return torch.cat(outs), torch.cat(lses)
