"""Variable-length batches (via bert_padding, as FlashAttention users build
them), the packed varlen variants, and bert_padding itself."""

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: flashattn's tests need it")

import flashattn  # noqa: E402
from flashattn.bert_padding import (  # noqa: E402
    pad_input, unpad_input, unpad_input_for_concatenated_sequences)

from attention_reference import assert_close, attention_ref, randn  # noqa: E402


def padding_mask(lengths, seqlen, device):
    return torch.arange(seqlen, device=device).view(1, -1) < torch.tensor(lengths, device=device).view(-1, 1)


def reference_padded(q, k, v, q_mask, k_mask, **options):
    """Per-sequence reference on the unpadded rows; padded query rows 0."""
    outs = torch.zeros(q.shape[:-1] + (v.shape[-1],), dtype=torch.float64, device=q.device)
    for b in range(q.shape[0]):
        out, _ = attention_ref(q[b:b + 1, q_mask[b]], k[b:b + 1, k_mask[b]], v[b:b + 1, k_mask[b]],
                               alibi_slopes=_alibi_row(options.get("alibi_slopes"), b),
                               **{n: o for n, o in options.items() if n != "alibi_slopes"})
        outs[b, q_mask[b]] = out[0]
    return outs


def _alibi_row(slopes, b):
    return slopes if slopes is None or slopes.dim() == 1 else slopes[b:b + 1]


CASES = {
    "plain": ([13, 40, 1], [13, 40, 1], dict()),
    "causal_sq_ne_sk": ([5, 33, 17], [20, 9, 40], dict(causal=True)),
    "window_softcap": ([31, 8, 40], [40, 30, 12], dict(window_size=(6, 2), softcap=3.0)),
    "alibi_per_batch": ([7, 40, 22], [12, 39, 22], dict(causal=True, alibi_slopes="per_batch")),
    "empty_sequence": ([0, 25, 3], [0, 17, 40], dict(causal=True)),
}


@pytest.mark.parametrize("heads", [(4, 4), (6, 2)], ids=["mha", "gqa"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_varlen_with_padding(device, case, heads):
    lens_q, lens_k, options = CASES[case]
    hq, hkv = heads
    batch, seqlen, d = 3, 40, 32
    if options.get("alibi_slopes") == "per_batch":
        options = dict(options, alibi_slopes=torch.rand(batch, hq, device=device) * 0.3)
    gen = torch.Generator().manual_seed(21)
    q = randn(device, gen, batch, seqlen, hq, d).requires_grad_()
    k = randn(device, gen, batch, seqlen, hkv, d).requires_grad_()
    v = randn(device, gen, batch, seqlen, hkv, d).requires_grad_()
    q_mask, k_mask = padding_mask(lens_q, seqlen, device), padding_mask(lens_k, seqlen, device)

    q_unpad, q_idx, cu_q, max_q, _ = unpad_input(q, q_mask)
    k_unpad, k_idx, cu_k, max_k, _ = unpad_input(k, k_mask)
    v_unpad, _, _, _, _ = unpad_input(v, k_mask)
    assert cu_q.dtype == torch.int32 and cu_q.tolist()[-1] == sum(lens_q)
    assert max_q == max(lens_q) and isinstance(max_q, int)
    out_unpad, lse, _ = flashattn.flash_attn_varlen_func(
        q_unpad, k_unpad, v_unpad, cu_q, cu_k, max_q, max_k, return_attn_probs=True, **options)
    assert out_unpad.shape == (sum(lens_q), hq, d) and lse.shape == (hq, sum(lens_q))
    out = pad_input(out_unpad, q_idx, batch, seqlen)

    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = reference_padded(*leaves, q_mask, k_mask, **options)
    assert_close("out", out, ref)
    dout = randn(device, gen, out.shape)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref_grads = torch.autograd.grad(ref, leaves, dout.double())
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close(name, g, r, kind="grad")


def test_varlen_qkvpacked(device):
    lens = [9, 1, 30, 14]
    cu = torch.tensor([0, 9, 10, 40, 54], dtype=torch.int32, device=device)
    gen = torch.Generator().manual_seed(23)
    qkv = randn(device, gen, sum(lens), 3, 4, 24).requires_grad_()
    out = flashattn.flash_attn_varlen_qkvpacked_func(qkv, cu, max(lens), causal=True)
    dout = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, (qkv,), dout)
    for b, (s, e) in enumerate(zip(cu.tolist()[:-1], cu.tolist()[1:])):
        leaf = qkv[s:e].detach().double().requires_grad_()
        ref, _ = attention_ref(*leaf[None].unbind(2), causal=True)
        assert_close(f"out[{b}]", out[s:e][None], ref)
        (rg,) = torch.autograd.grad(ref, (leaf,), dout[s:e][None].double())
        assert_close(f"dqkv[{b}]", g[s:e], rg, kind="grad")


def test_varlen_kvpacked_gqa(device):
    lens_q, lens_k = [3, 20], [20, 31]
    cu_q = torch.tensor([0, 3, 23], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 20, 51], dtype=torch.int32, device=device)
    gen = torch.Generator().manual_seed(24)
    q = randn(device, gen, 23, 6, 16).requires_grad_()
    kv = randn(device, gen, 51, 2, 3, 16).requires_grad_()
    out, lse, _ = flashattn.flash_attn_varlen_kvpacked_func(
        q, kv, cu_q, cu_k, 20, 31, window_size=(4, 4), return_attn_probs=True)
    dout = torch.randn_like(out)
    gq, gkv = torch.autograd.grad(out, (q, kv), dout)
    for b in range(2):
        qs = slice(cu_q[b].item(), cu_q[b + 1].item())
        ks = slice(cu_k[b].item(), cu_k[b + 1].item())
        lq, lkv = q[qs].detach().double().requires_grad_(), kv[ks].detach().double().requires_grad_()
        ref, ref_lse = attention_ref(lq[None], *lkv[None].unbind(2), window_size=(4, 4))
        assert_close(f"out[{b}]", out[qs][None], ref)
        assert_close(f"lse[{b}]", lse[:, qs][None], ref_lse)
        rq, rkv = torch.autograd.grad(ref, (lq, lkv), dout[qs][None].double())
        assert_close(f"dq[{b}]", gq[qs], rq, kind="grad")
        assert_close(f"dkv[{b}]", gkv[ks], rkv, kind="grad")


@pytest.mark.parametrize("page", [4, 16])
def test_varlen_paged_kv(device, page):
    """flash_attn_varlen_func with block_table: the same out and gradients
    as the packed keys the pages hold (blocks in a shuffled order, an empty
    sequence, a sequence that ends mid-page)."""
    gen = torch.Generator().manual_seed(41)
    lengths_q, lengths_k, hq, hkv, d, max_blocks = [3, 0, 9], [13, 0, 32], 4, 2, 32, 8
    total_k = sum(lengths_k)
    q = randn(device, gen, sum(lengths_q), hq, d).requires_grad_()
    k = randn(device, gen, total_k, hkv, d)
    v = randn(device, gen, total_k, hkv, d)
    num_blocks = len(lengths_k) * max_blocks + 2
    table = torch.randperm(num_blocks, generator=gen)[:len(lengths_k) * max_blocks]
    table = table.view(len(lengths_k), max_blocks).to(torch.int32)
    paged_k = torch.zeros(num_blocks, page, hkv, d, dtype=q.dtype, device=device)
    paged_v = torch.zeros_like(paged_k)
    start = 0
    for b, n in enumerate(lengths_k):  # sequence b's keys into its pages
        for p in range(0, n, page):
            rows = min(page, n - p)
            paged_k[table[b, p // page], :rows] = k[start + p:start + p + rows]
            paged_v[table[b, p // page], :rows] = v[start + p:start + p + rows]
        start += n
    paged_k.requires_grad_()
    cu = lambda xs: torch.tensor([0] + list(torch.tensor(xs).cumsum(0)), dtype=torch.int32, device=device)  # noqa: E731
    args = (cu(lengths_q), cu(lengths_k), max(lengths_q), max(lengths_k))
    dout = randn(device, gen, sum(lengths_q), hq, d)
    out = flashattn.flash_attn_varlen_func(q, paged_k, paged_v, *args, causal=True,
                                           block_table=table.to(device))
    (dq_paged,) = torch.autograd.grad(out, q, dout, retain_graph=True)
    (dk_pages,) = torch.autograd.grad(out, paged_k, dout)
    k_dense = k.clone().requires_grad_()
    ref = flashattn.flash_attn_varlen_func(q, k_dense, v, *args, causal=True)
    dq_ref, dk_ref = torch.autograd.grad(ref, (q, k_dense), dout)
    assert torch.equal(out, ref) and torch.equal(dq_paged, dq_ref)
    start = 0
    for b, n in enumerate(lengths_k):  # the pages' gradients are the keys' gradients
        rows = dk_pages[table[b].long()].flatten(0, 1)[:n]
        assert torch.equal(rows, dk_ref[start:start + n])
        start += n


def test_varlen_paged_kv_errors(device):
    q = torch.randn(5, 2, 16, device=device)
    cache = torch.randn(6, 4, 2, 16, device=device)
    cu_q = torch.tensor([0, 2, 5], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 3, 9], dtype=torch.int32, device=device)
    table = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32, device=device)
    bad = [
        (dict(block_table=table.long()), TypeError, "block_table must be int32"),
        (dict(block_table=table[:1]), ValueError, "batch_size = 2 rows"),
        (dict(block_table=torch.tensor([[0, 1], [2, 7]], dtype=torch.int32, device=device)),
         ValueError, "names block 7"),
        (dict(block_table=table[:, :1]), ValueError, "sequence 1 has 6 keys"),
    ]
    for args, exc, message in bad:
        with pytest.raises(exc, match=message):
            flashattn.flash_attn_varlen_func(q, cache, cache, cu_q, cu_k, 3, 6, **args)


def test_unpad_pad_roundtrip_and_conventions():
    x = torch.randn(3, 6, 2, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    unpadded, indices, cu, max_len, seqused = unpad_input(x, mask)
    assert unpadded.shape == (9, 2, 4)
    assert cu.tolist() == [0, 3, 9, 9] and cu.dtype == torch.int32
    assert max_len == 6 and seqused.tolist() == [3, 6, 0] and seqused.dtype == torch.int32
    assert indices.tolist() == [0, 1, 2, 6, 7, 8, 9, 10, 11]
    back = pad_input(unpadded, indices, 3, 6)
    assert torch.equal(back, x * mask.view(3, 6, 1, 1))


def test_unpad_with_unused_mask():
    x = torch.arange(8.0).view(2, 4, 1)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    unused = torch.tensor([[0, 0, 1, 0], [0, 1, 1, 0]], dtype=torch.bool)
    unpadded, indices, cu, max_len, seqused = unpad_input(x, mask, unused)
    assert cu.tolist() == [0, 3, 6] and seqused.tolist() == [2, 1] and max_len == 3
    assert unpadded.flatten().tolist() == [0, 1, 2, 4, 5, 6]


def test_unpad_for_concatenated_sequences():
    x = torch.arange(12.0).view(2, 6, 1)
    lengths = torch.tensor([[2, 3, 0, 0, 0, 0], [6, 0, 0, 0, 0, 0]])
    unpadded, indices, cu, max_len = unpad_input_for_concatenated_sequences(x, lengths)
    assert cu.tolist() == [0, 2, 5, 11] and max_len == 6
    assert indices.tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
    assert unpadded.flatten().tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]


def test_pad_unpad_gradients():
    x = torch.randn(2, 5, 3, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    unpadded, indices, _, _, _ = unpad_input(x, mask)
    (pad_input(unpadded * 2, indices, 2, 5)).sum().backward()
    assert torch.equal(x.grad, 2 * mask.view(2, 5, 1).expand(2, 5, 3).float())
