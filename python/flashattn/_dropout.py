"""The dropout mask and the attention probabilities, recomputed in torch.

The library draws its dropout mask from Philox4x32-10 as fa_dropout_keep()
in include/flashattn.h defines it: a pure function of (seed, offset, batch
index, query head, row, column). This module evaluates the same function
vectorized over whole (batch, head, row, column) grids, so that
`return_attn_probs=True` can report which entries were dropped without a
kernel that writes the O(seqlen²) matrix. Only the testing/debug path uses
it; the attention itself never materialises the matrix.

torch has no uint32 arithmetic, so the words are kept in int64 tensors in
[0, 2^32) and the 32x32 -> 64-bit products are split into 16-bit halves
(each partial product then fits in 49 bits).
"""

import ctypes
import math

import torch

_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_U32 = 0xFFFFFFFF


def _mulhilo32(m, c):
    """(hi, lo) 32-bit halves of the 64-bit product m * c; m a Python int,
    c an int64 tensor of 32-bit values."""
    low_part = (c & 0xFFFF) * m  # < 2^48
    high_part = (c >> 16) * m  # < 2^48
    t = (low_part >> 16) + high_part  # product = t * 2^16 + (low_part & 0xffff)
    lo = ((t & 0xFFFF) << 16) | (low_part & 0xFFFF)
    return t >> 16, lo


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on broadcastable int64 tensors of 32-bit counter words;
    the key (k0, k1) are Python ints. Returns the four output words."""
    for _ in range(10):
        hi0, lo0 = _mulhilo32(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _PHILOX_W0) & _U32
        k1 = (k1 + _PHILOX_W1) & _U32
    return c0, c1, c2, c3


def dropout_threshold(p):
    """The uint32 drop threshold of fa_dropout_threshold(): p is rounded to
    float32 first, as the C API receives it."""
    p32 = ctypes.c_float(p).value
    t = p32 * 4294967296.0
    return _U32 if t >= 4294967295.0 else int(math.floor(t))


def _as_int64(x):
    """A uint64 Python int as the int64 with the same bits."""
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >= (1 << 63) else x


def dropout_keep_mask(seed, offset, heads_q, batch_idx, head_idx, seqlen_q, seqlen_k, p,
                      device="cpu"):
    """Keep mask (True = kept) of the grid batch_idx x head_idx x rows x cols.

    batch_idx, head_idx: 1-D int64 tensors of the batch indices and query
    heads wanted; rows are 0..seqlen_q-1, columns 0..seqlen_k-1 (within the
    sequence). Returns a bool tensor (len(batch_idx), len(head_idx),
    seqlen_q, seqlen_k), identical to fa_dropout_keep() element by element.
    """
    batch_idx = torch.as_tensor(batch_idx, dtype=torch.int64, device=device)
    head_idx = torch.as_tensor(head_idx, dtype=torch.int64, device=device)
    groups = (seqlen_k + 3) // 4  # one Philox call gives 4 consecutive columns
    sub = _as_int64(offset) + batch_idx.view(-1, 1, 1, 1) * heads_q + head_idx.view(1, -1, 1, 1)
    c0 = torch.arange(groups, dtype=torch.int64, device=device).view(1, 1, 1, -1)
    c1 = torch.arange(seqlen_q, dtype=torch.int64, device=device).view(1, 1, -1, 1)
    c2 = sub & _U32
    c3 = (sub >> 32) & _U32
    seed &= (1 << 64) - 1
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    words = philox4x32_10(c0, c1, c2, c3, seed & _U32, seed >> 32)
    r = torch.stack(words, dim=-1).flatten(-2)[..., :seqlen_k]
    return r >= dropout_threshold(p)


def masked_scores(q, k, softmax_scale, causal, window_size, softcap, alibi_slopes,
                  batch_idx=None):
    """Scores s (b, hq, sq, sk) in float32 with FlashAttention's masking
    applied (-inf where not visible). q (b, sq, hq, d), k (b, sk, hkv, d);
    batch_idx maps the rows of q to the rows of a (batch, heads) ALiBi
    tensor (default: arange)."""
    b, sq, hq, _ = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    kk = k.float().repeat_interleave(hq // hkv, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), kk) * softmax_scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(sq, device=q.device).view(-1, 1)
    j = torch.arange(sk, device=q.device).view(1, -1)
    diag = i + sk - sq  # bottom-right aligned
    if alibi_slopes is not None:
        slopes = alibi_slopes.float()
        if slopes.dim() == 1:
            slopes = slopes.view(1, hq)
        elif batch_idx is not None:
            slopes = slopes[batch_idx]
        s = s - slopes.reshape(-1, hq, 1, 1) * (diag - j).abs().float()
    left, right = window_size
    if causal:
        right = 0
    visible = torch.ones(sq, sk, dtype=torch.bool, device=q.device)
    if left >= 0:
        visible &= j >= diag - left
    if right >= 0:
        visible &= j <= diag + right
    return s.masked_fill(~visible, float("-inf"))


def attn_probs(q, k, lse, rng_state, dropout_p, softmax_scale, causal, window_size, softcap,
               alibi_slopes, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
               max_seqlen_k=None):
    """FlashAttention's S_dmask: the softmax probabilities (b, hq, sq, sk),
    negated where dropout dropped them, in q's dtype. For varlen the grid is
    (b, hq, max_seqlen_q, max_seqlen_k) with zeros outside each sequence.
    lse is the forward's log-sum-exp; rng_state its (seed, offset)."""
    seed, offset = (int(x) for x in rng_state.tolist())
    hq = q.shape[-2]
    with torch.no_grad():
        if cu_seqlens_q is None:
            pieces = [(slice(None), q, k, lse, torch.arange(q.shape[0]))]
            out = None
        else:
            cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
            batch = len(cq) - 1
            out = q.new_zeros(batch, hq, max_seqlen_q, max_seqlen_k)
            pieces = [
                (b, q[None, cq[b]:cq[b + 1]], k[None, ck[b]:ck[b + 1]],
                 lse[None, :, cq[b]:cq[b + 1]], torch.tensor([b]))
                for b in range(batch)
            ]
        for where, qb, kb, lseb, bidx in pieces:
            s = masked_scores(qb, kb, softmax_scale, causal, window_size, softcap,
                              alibi_slopes, batch_idx=bidx)
            probs = torch.exp(s - lseb.float().unsqueeze(-1)).nan_to_num(0.0)
            keep = dropout_keep_mask(seed, offset, hq, bidx, torch.arange(hq), qb.shape[1],
                                     kb.shape[1], dropout_p, device=q.device)
            probs = torch.where(keep, probs, -probs).to(q.dtype)
            if out is None:
                return probs
            out[where, :, : probs.shape[2], : probs.shape[3]] = probs[0]
        return out
