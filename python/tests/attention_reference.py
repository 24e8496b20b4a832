"""Float64 attention in plain torch: the ground truth the tests compare
flashattn against (outputs, lse, and gradients through torch autograd).
Written from FlashAttention's definitions, independently of the package."""

import math

import torch


def visible_mask(seqlen_q, seqlen_k, causal, window_size, device="cpu"):
    """(sq, sk) bool: key j is visible to query i (bottom-right aligned)."""
    left, right = window_size
    if causal:
        right = 0
    i = torch.arange(seqlen_q, device=device).view(-1, 1)
    j = torch.arange(seqlen_k, device=device).view(1, -1)
    shift = seqlen_k - seqlen_q
    mask = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if left >= 0:
        mask &= j >= i + shift - left
    if right >= 0:
        mask &= j <= i + shift + right
    return mask


def attention_ref(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                  alibi_slopes=None, dropout_p=0.0, keep=None):
    """q (b, sq, hq, d), k (b, sk, hkv, d), v (b, sk, hkv, dv), computed in
    float64. keep: bool (b, hq, sq, sk) dropout keep mask (needed when
    dropout_p > 0). Returns out (b, sq, hq, dv) float64 and lse (b, hq, sq)."""
    q, k, v = q.double(), k.double(), v.double()
    b, sq, hq, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    k = k[:, :, torch.arange(hq, device=q.device) // group]
    v = v[:, :, torch.arange(hq, device=q.device) // group]
    scale = 1.0 / math.sqrt(d) if softmax_scale is None else softmax_scale
    s = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    if alibi_slopes is not None:
        slopes = alibi_slopes.double().reshape(-1, hq, 1, 1)
        i = torch.arange(sq, device=q.device).view(-1, 1)
        j = torch.arange(sk, device=q.device).view(1, -1)
        s = s - slopes * (i + sk - sq - j).abs().double()
    mask = visible_mask(sq, sk, causal, window_size, q.device)
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    # Fully masked rows: finite stand-in scores (so autograd stays NaN-free),
    # then zeroed probabilities.
    row_live = mask.any(dim=-1).view(1, 1, sq, 1)
    p = torch.softmax(torch.where(row_live, s, torch.zeros_like(s)), dim=-1) * row_live
    if dropout_p > 0:
        p = p * keep / (1.0 - dropout_p)
    out = torch.einsum("bhij,bjhd->bihd", p, v)
    return out, lse


def probs_ref(q, k, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
              alibi_slopes=None):
    """The undropped softmax probabilities (b, hq, sq, sk) in float64."""
    b, sq, hq, d = q.shape
    sk = k.shape[1]
    eye = torch.eye(sk, dtype=torch.float64, device=q.device)
    v = eye.view(1, sk, 1, sk).expand(b, sk, k.shape[2], sk)
    out, _ = attention_ref(q, k, v, softmax_scale, causal, window_size, softcap, alibi_slopes)
    return out.permute(0, 2, 1, 3)


def philox_keep_scalar(seed, offset, heads_q, b, h, i, j, p):
    """fa_dropout_keep() from the header's text, one element, in Python
    ints: an independent check of the vectorised torch version."""
    m32 = 0xFFFFFFFF
    sub = (offset + b * heads_q + h) & ((1 << 64) - 1)
    c = [(j >> 2) & m32, i & m32, sub & m32, sub >> 32]
    k0, k1 = seed & m32, (seed >> 32) & m32
    for _ in range(10):
        p0 = 0xD2511F53 * c[0]
        p1 = 0xCD9E8D57 * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k0) & m32, p1 & m32, ((p0 >> 32) ^ c[3] ^ k1) & m32, p0 & m32]
        k0 = (k0 + 0x9E3779B9) & m32
        k1 = (k1 + 0xBB67AE85) & m32
    import ctypes

    t = ctypes.c_float(p).value * 4294967296.0
    threshold = m32 if t >= 4294967295.0 else int(t)
    return int(c[j & 3] >= threshold)


# ---------------------------------------------------------------------------
# Test helpers

# Max error allowed, relative to max(1, max |reference|): the library keeps
# fp32 accumulators, so errors come from rounding inputs/outputs to dtype.
TOLERANCE = {
    "out": {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2},
    "grad": {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 6e-2},
}


def dtype_for(device):
    """The dtype tests use by default: float32 on the CPU; float16 on CUDA,
    whose backends (like FlashAttention's) run fp16/bf16 only."""
    return torch.float32 if str(device) == "cpu" else torch.float16


def randn(device, gen, *shape, dtype=None):
    """Random normal tensor from a CPU generator (the same values on every
    device), moved to device in dtype (default dtype_for(device))."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return torch.randn(shape, generator=gen).to(device=device, dtype=dtype or dtype_for(device))


def assert_close(name, got, ref, dtype=None, kind="out"):
    """dtype picks the tolerance (default: got's dtype)."""
    dtype = dtype or got.dtype
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    got64, ref64 = got.double().cpu(), ref.double().cpu()
    assert not torch.isnan(got64).any(), f"{name}: NaN in the result"
    finite = torch.isfinite(ref64)
    assert torch.equal(torch.isfinite(got64), finite), f"{name}: infinities differ"
    if not finite.any():
        return
    err = (got64 - ref64)[finite].abs().max().item()
    scale = max(1.0, ref64[finite].abs().max().item())
    tol = TOLERANCE[kind][dtype] * scale
    assert err <= tol, f"{name}: max error {err:.3g} > {tol:.3g} ({dtype}, {kind})"


def random_qkv(batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, head_dim_v=None,
               dtype=None, device="cpu", requires_grad=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dv = head_dim if head_dim_v is None else head_dim_v
    shapes = [(batch, seqlen_q, heads_q, head_dim), (batch, seqlen_k, heads_kv, head_dim),
              (batch, seqlen_k, heads_kv, dv)]
    return [randn(device, gen, *s, dtype=dtype).requires_grad_(requires_grad) for s in shapes]


def grads_of(out, dout, inputs):
    return torch.autograd.grad(out, inputs, dout)
