"""The attention operator: validation, the calls into the C library, and
its registration with autograd (and with torch.compile where torch has
torch.library.custom_op).

One forward and one backward serve every public function: fixed-length
(q (b, sq, hq, d)) and variable-length (q (total_q, hq, d) + cu_seqlens)
problems, packed or not (packed inputs arrive here as strided views).
"""

import ctypes
import math
import operator
import os

import torch

from . import _ffi

_DTYPES = {
    torch.float32: _ffi.FA_DTYPE_F32,
    torch.float16: _ffi.FA_DTYPE_F16,
    torch.bfloat16: _ffi.FA_DTYPE_BF16,
}
MAX_HEAD_DIM = 256
# FP8 q / k / v (forward only; out bf16), where this torch has the dtypes
FP8_DTYPES = {
    getattr(torch, name): code
    for name, code in (("float8_e4m3fn", _ffi.FA_DTYPE_FP8_E4M3), ("float8_e5m2", _ffi.FA_DTYPE_FP8_E5M2))
    if hasattr(torch, name)
}

# ---------------------------------------------------------------------------
# Validation (runs before the op, so that errors name the user's argument)


def _describe(t):
    return f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')} on {t.device}"


def check_tensor(name, t, dims, dtype=None, device=None):
    """Raise TypeError/ValueError naming `name` unless t is a tensor with
    `dims` dimensions, a supported (or the given) dtype, on `device`."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimensions, got shape {tuple(t.shape)}")
    if dtype is None and t.dtype not in _DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16 or float32, got {str(t.dtype).replace('torch.', '')}"
        )
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} must be {str(dtype).replace('torch.', '')}, got {_describe(t)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but q is on {device}: all tensors must be on one device")


def _fits_library_view(t):
    """Whether the library takes t's strides as they are: a contiguous last
    dimension, and every other dimension of size > 1 clear of the ones
    inside it (the C library's rule; a broadcast, stride-0 dimension such as
    expand() or autograd's gradient of a sum gives is not)."""
    if t.is_contiguous():  # the common case, without the Python loop
        return True
    if t.stride(-1) != 1:
        return False
    span = t.shape[-1]
    for stride, size in sorted((st, n) for st, n in zip(t.stride()[:-1], t.shape[:-1]) if n > 1):
        if stride < span:
            return False
        span += stride * (size - 1)
    return True


def last_dim_contiguous(t):
    """FlashAttention's maybe_contiguous: copy only when the library cannot
    take the view (a strided last dimension, broadcast or overlapping
    dimensions); other strides are passed to the library as they are."""
    return t if t is None or _fits_library_view(t) else t.contiguous()


def check_attention_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                         dropout_p, window_size, alibi_slopes, softmax_scale=None, softcap=0.0,
                         fp8=False):
    """Validate the arguments of an attention call; names the argument at
    fault. q/k/v are (b, s, h, d) or, with cu_seqlens, (total, h, d); of a
    16-bit or f32 dtype, or with fp8 of a float8 one."""
    varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
    dims = 3 if varlen else 4
    if fp8 and not (isinstance(q, torch.Tensor) and q.dtype in FP8_DTYPES):
        raise TypeError(f"q must be a float8 tensor (e4m3fn or e5m2), got "
                        f"{_describe(q) if isinstance(q, torch.Tensor) else type(q).__name__}")
    check_tensor("q", q, dims, q.dtype if fp8 else None)
    check_tensor("k", k, dims, q.dtype, q.device)
    check_tensor("v", v, dims, q.dtype, q.device)
    if q.device.type not in ("cpu", "cuda"):
        raise ValueError(f"q is on {q.device}: only CPU and CUDA tensors are supported")
    if not varlen and not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(
            f"q, k and v must have the same batch size, got {q.shape[0]}, {k.shape[0]}, {v.shape[0]}"
        )
    if k.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"k and v must agree in every dimension but the last, got k {tuple(k.shape)} "
            f"and v {tuple(v.shape)}"
        )
    hq, hkv, d, dv = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    if k.shape[-1] != d:
        raise ValueError(f"k's head dim {k.shape[-1]} differs from q's {d}")
    for name, dim in (("q", d), ("v", dv)):
        if not 1 <= dim <= MAX_HEAD_DIM:
            raise ValueError(f"{name}'s head dim must be in 1..{MAX_HEAD_DIM}, got {dim}")
    if hkv < 1 or hq % hkv != 0:
        raise ValueError(
            f"the number of heads in q ({hq}) must be a multiple of that in k and v ({hkv})"
        )
    if varlen:
        for name, cu, mx, t in (("cu_seqlens_q", cu_seqlens_q, max_seqlen_q, q),
                                ("cu_seqlens_k", cu_seqlens_k, max_seqlen_k, k)):
            check_tensor(name, cu, 1, torch.int32, q.device)
            if cu.shape[0] < 1:
                raise ValueError(f"{name} must have batch + 1 >= 1 entries")
            try:
                mx = operator.index(mx)
            except TypeError:
                mx = -1
            if mx < 0:
                raise ValueError(f"max_seqlen for {name} must be a non-negative int")
        if cu_seqlens_q.shape[0] != cu_seqlens_k.shape[0]:
            raise ValueError(
                f"cu_seqlens_q and cu_seqlens_k must both have batch + 1 entries, got "
                f"{cu_seqlens_q.shape[0]} and {cu_seqlens_k.shape[0]}"
            )
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    # The kernels take the row max of the raw scores, so the scale must be
    # positive; the C API's 0 means 1/sqrt(d), which would make 0.0 silently
    # the default here.
    if softmax_scale is not None and not 0.0 < float(softmax_scale) < math.inf:
        raise ValueError(
            f"softmax_scale must be a finite number > 0 (None: 1/sqrt(headdim)), got {softmax_scale}"
        )
    if not 0.0 <= float(softcap) < math.inf:
        raise ValueError(f"softcap must be a finite number >= 0 (0: off), got {softcap}")
    if not (isinstance(window_size, (tuple, list)) and len(window_size) == 2):
        raise ValueError(f"window_size must be a pair (left, right), got {window_size!r}")
    if alibi_slopes is not None:
        if not isinstance(alibi_slopes, torch.Tensor):
            raise TypeError(f"alibi_slopes must be a torch.Tensor, got {type(alibi_slopes).__name__}")
        check_tensor("alibi_slopes", alibi_slopes, alibi_slopes.dim(), torch.float32, q.device)
        batch = cu_seqlens_q.shape[0] - 1 if varlen else q.shape[0]
        if tuple(alibi_slopes.shape) not in ((hq,), (batch, hq)):
            raise ValueError(
                f"alibi_slopes must be (nheads,) = ({hq},) or (batch, nheads) = ({batch}, {hq}), "
                f"got {tuple(alibi_slopes.shape)}"
            )


# ---------------------------------------------------------------------------
# Calls into the library


def _view(t, varlen):
    """fa_tensor of a (b, s, h, d) tensor or a packed (total, h, d) one."""
    s = t.stride()
    if varlen:
        return _ffi.FaTensor(t.data_ptr(), 0, s[0], s[1])
    return _ffi.FaTensor(t.data_ptr(), s[0], s[1], s[2])


def _problem(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
             softmax_scale, causal, window_left, window_right, softcap, alibi_slopes,
             deterministic, seed):
    a = _ffi.FaAttn()
    _ffi.fa_attn_init(ctypes.byref(a))
    if cu_seqlens_q is not None:
        a.batch = cu_seqlens_q.shape[0] - 1
        a.seqlen_q, a.seqlen_k = max_seqlen_q, max_seqlen_k
        a.cu_seqlens_q, a.cu_seqlens_k = cu_seqlens_q.data_ptr(), cu_seqlens_k.data_ptr()
    else:
        a.batch, a.seqlen_q, a.seqlen_k = q.shape[0], q.shape[1], k.shape[1]
    a.heads_q, a.heads_kv = q.shape[-2], k.shape[-2]
    a.head_dim, a.head_dim_v = q.shape[-1], v.shape[-1]
    a.dtype = _DTYPES[q.dtype] if q.dtype in _DTYPES else FP8_DTYPES[q.dtype]
    a.softmax_scale = softmax_scale
    a.causal = int(causal)
    a.window_left, a.window_right = window_left, window_right
    a.softcap = softcap
    if alibi_slopes is not None:
        a.alibi_slopes = alibi_slopes.data_ptr()
        a.alibi_stride_batch = alibi_slopes.stride(0) if alibi_slopes.dim() == 2 else 0
    a.dropout_p = dropout_p
    a.dropout_seed, a.dropout_offset = seed, 0
    a.deterministic = int(deterministic)
    return a


def _workspace_bytes(ctx, attn, size_fn, what):
    nbytes = ctypes.c_size_t(0)
    _ffi.check(size_fn(ctx, ctypes.byref(attn), ctypes.byref(nbytes)), what)
    return nbytes.value


def _scratch(nbytes, device):
    """Workspace from torch's allocator (stream-ordered on CUDA), or None."""
    return torch.empty(nbytes, dtype=torch.uint8, device=device) if nbytes else None


# The problem descriptor and workspace size of a call that depends on
# nothing but shapes and options (fixed length, no ALiBi, no dropout):
# built once per key instead of per call (~10 us of a ~100 us call on the
# H100; the C library only reads the descriptor).
_plans = {}
_MAX_PLANS = 64
# The library's tuning variables that change its workspace (read at each
# call; tests and benchmarks set them between calls): part of the key.
_WORKSPACE_ENV = ("FA_SM90_FWD_SPLIT", "FA_SM80_FWD_SPLIT", "FA_SM80_BWD_SPLIT", "FA_SM90_PACK_GQA",
                  "FA_SM80_PACK_GQA", "FA_SM90_SPLIT_BLOCK_M", "FA_SM90_FP8_VT", "FA_SM80_SMEM_LIMIT")


def _plan(ctx, what, size_fn, problem_args, dropout_offset=0):
    """(fa_attn, workspace bytes) of a forward/backward call; cached when
    the descriptor depends on nothing but shapes and options."""
    (q, k, v, cu_seqlens_q, _, _, _, dropout_p, softmax_scale, causal, window_left, window_right,
     softcap, alibi_slopes, deterministic, _) = problem_args
    cached = cu_seqlens_q is None and alibi_slopes is None and dropout_p == 0
    if cached:
        # the CPU workspace grows with the thread count
        threads = _ffi.cpu_threads() if q.device.type == "cpu" else 0
        key = (what, q.shape, k.shape, v.shape[-1], q.dtype, q.device, softmax_scale, causal,
               window_left, window_right, softcap, deterministic, _ffi.forced_backend(), threads,
               tuple(os.environ.get(name) for name in _WORKSPACE_ENV))
        plan = _plans.get(key)
        if plan is not None:
            return plan
    attn = _problem(*problem_args)
    attn.dropout_offset = dropout_offset
    plan = (attn, _workspace_bytes(ctx, attn, size_fn, what))
    if cached:
        if len(_plans) >= _MAX_PLANS:
            _plans.clear()
        _plans[key] = plan
    return plan


# rng_state of every call without dropout (read, never written)
_NO_DROPOUT_RNG_STATE = torch.zeros(2, dtype=torch.int64)


def _lse_shape(q, k, varlen):
    # lse is (b, hq, sq) fixed-length, (hq, total_q) varlen.
    return (q.shape[1], q.shape[0]) if varlen else (q.shape[0], q.shape[2], q.shape[1])


def _draw_seed():
    # Seeded by torch.manual_seed; drawn on the CPU generator so that a CUDA
    # call does not synchronise to read it back.
    return int(torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64).item())


def _check_total_tokens(cu_seqlens_q, cu_seqlens_k, q, k):
    # The library cannot see the tensors' sizes: make sure the sequences
    # cu_seqlens describes lie inside q and k (a host read of one entry).
    for name, cu, t in (("cu_seqlens_q", cu_seqlens_q, q), ("cu_seqlens_k", cu_seqlens_k, k)):
        total = int(cu[-1])
        if total > t.shape[0]:
            raise ValueError(
                f"{name}[-1] = {total} tokens, but {'q' if t is q else 'k'} has only {t.shape[0]}"
            )


def _run_forward(ctx, attn, ws_size, q, k, v, out, lse, varlen):
    """fa_forward of attn on torch tensors, with a workspace of ws_size
    bytes from torch's allocator."""
    ws = _scratch(ws_size, q.device)
    tq, tk, tv, to = (_view(t, varlen) for t in (q, k, v, out))
    _ffi.check(
        _ffi.fa_forward(ctx, ctypes.byref(attn), tq, tk, tv, to, lse.data_ptr(),
                        ws.data_ptr() if ws is not None else None, ws_size),
        "forward",
    )


def forward_impl(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                 softmax_scale, causal, window_left, window_right, softcap, alibi_slopes,
                 deterministic):
    """out (.., hq, dv), lse fp32, rng_state int64 (2,) = (seed, offset) on
    the CPU. q (b, sq, hq, d) / k, v (b, sk, hkv, d[v]), or packed varlen."""
    varlen = cu_seqlens_q is not None
    out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
    lse = torch.empty(_lse_shape(q, k, varlen), dtype=torch.float32, device=q.device)
    seed = _draw_seed() if dropout_p > 0 else 0
    rng_state = torch.tensor([seed, 0], dtype=torch.int64) if dropout_p > 0 else _NO_DROPOUT_RNG_STATE
    if out.numel() == 0:
        return out, lse, rng_state
    if varlen:
        _check_total_tokens(cu_seqlens_q, cu_seqlens_k, q, k)
    if k.shape[-3] == 0:  # no keys at all: every row fully masked
        return out.zero_(), lse.fill_(float("-inf")), rng_state
    problem_args = (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                    softmax_scale, causal, window_left, window_right, softcap, alibi_slopes,
                    deterministic, seed)
    with _ffi.device_guard(q.device):
        ctx = _ffi.context_for(q.device)
        attn, ws_size = _plan(ctx, "forward", _ffi.fa_forward_workspace_size, problem_args)
        _run_forward(ctx, attn, ws_size, q, k, v, out, lse, varlen)
    return out, lse, rng_state


def backward_impl(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                  max_seqlen_k, dropout_p, softmax_scale, causal, window_left, window_right,
                  softcap, alibi_slopes, deterministic, rng_state):
    """dq, dk, dv with the shapes of q, k, v."""
    varlen = cu_seqlens_q is not None
    dout = last_dim_contiguous(dout)
    dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    if dq.numel() == 0 or k.shape[-3] == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    seed, offset = (int(x) for x in rng_state.tolist()) if dropout_p > 0 else (0, 0)
    problem_args = (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                    softmax_scale, causal, window_left, window_right, softcap, alibi_slopes,
                    deterministic, seed)
    views = [_view(t, varlen) for t in (q, k, v, out, dout, dq, dk, dv)]
    tq, tk, tv, to, tdo, tdq, tdk, tdv = views
    with _ffi.device_guard(q.device):
        ctx = _ffi.context_for(q.device)
        attn, ws_size = _plan(ctx, "backward", _ffi.fa_backward_workspace_size, problem_args, offset)
        ws = _scratch(ws_size, q.device)
        _ffi.check(
            _ffi.fa_backward(ctx, ctypes.byref(attn), tq, tk, tv, to, lse.data_ptr(), tdo,
                             tdq, tdk, tdv, ws.data_ptr() if ws is not None else None, ws_size),
            "backward",
        )
    return dq, dk, dv


# ---------------------------------------------------------------------------
# Autograd. Eager calls go through a torch.autograd.Function: torch's
# custom-op dispatch costs ~120 us of host time per call on the device
# machine (torch 2.11), more than the whole kernel at seqlen 512. Under
# torch.compile (torch >= 2.4) the same forward/backward are registered as
# torch.library.custom_op, so that the compiler traces them without graph
# breaks. Both share _setup_context and _backward.

_NUM_INPUTS = 15  # forward_impl's arguments


def _setup_context(ctx, inputs, output):
    (q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, scale, causal, wl, wr, softcap, alibi,
     deterministic) = inputs
    out, lse, rng_state = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, alibi, rng_state)
    ctx.options = (max_q, max_k, dropout_p, scale, causal, wl, wr, softcap)
    ctx.deterministic = deterministic


def _backward(ctx, dout, backward_fn):
    """(dq, dk, dv)."""
    q, k, v, out, lse, cu_q, cu_k, alibi, rng_state = ctx.saved_tensors
    max_q, max_k, dropout_p, scale, causal, wl, wr, softcap = ctx.options
    return backward_fn(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, dropout_p, scale, causal,
                       wl, wr, softcap, alibi, ctx.deterministic, rng_state)


class _AttentionFunction(torch.autograd.Function):
    """Takes (q, k, v, the other 12 inputs as one tuple): autograd's
    per-input bookkeeping then sees 4 inputs instead of 15."""

    @staticmethod
    def forward(ctx, q, k, v, options):
        inputs = (q, k, v) + options
        output = forward_impl(*inputs)
        _setup_context(ctx, inputs, output)
        ctx.mark_non_differentiable(output[1], output[2])
        return output

    @staticmethod
    def backward(ctx, dout, *unused_grads):
        return _backward(ctx, dout, backward_impl) + (None,)


HAS_CUSTOM_OP = hasattr(torch, "library") and hasattr(torch.library, "custom_op")
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)

if HAS_CUSTOM_OP:
    from typing import Optional, Tuple

    Tensor = torch.Tensor

    @torch.library.custom_op("flashattn::fwd", mutates_args=())
    def _compiled_forward(
        q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Optional[Tensor],
        cu_seqlens_k: Optional[Tensor], max_seqlen_q: int, max_seqlen_k: int,
        dropout_p: float, softmax_scale: float, causal: bool, window_left: int,
        window_right: int, softcap: float, alibi_slopes: Optional[Tensor],
        deterministic: bool,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        out, lse, rng_state = forward_impl(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                           max_seqlen_k, dropout_p, softmax_scale, causal,
                                           window_left, window_right, softcap, alibi_slopes,
                                           deterministic)
        # a custom op's outputs are fresh tensors, never a shared one
        return out, lse, rng_state.clone() if rng_state is _NO_DROPOUT_RNG_STATE else rng_state

    @_compiled_forward.register_fake
    def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
          softmax_scale, causal, window_left, window_right, softcap, alibi_slopes,
          deterministic):
        varlen = cu_seqlens_q is not None
        out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
        lse = q.new_empty(_lse_shape(q, k, varlen), dtype=torch.float32)
        return out, lse, torch.empty(2, dtype=torch.int64, device="cpu")

    @torch.library.custom_op("flashattn::bwd", mutates_args=())
    def _compiled_backward(
        dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
        cu_seqlens_q: Optional[Tensor], cu_seqlens_k: Optional[Tensor], max_seqlen_q: int,
        max_seqlen_k: int, dropout_p: float, softmax_scale: float, causal: bool,
        window_left: int, window_right: int, softcap: float, alibi_slopes: Optional[Tensor],
        deterministic: bool, rng_state: Tensor,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        return backward_impl(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                             max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal,
                             window_left, window_right, softcap, alibi_slopes, deterministic,
                             rng_state)

    @_compiled_backward.register_fake
    def _(dout, q, k, v, *rest):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    _compiled_forward.register_autograd(
        lambda ctx, dout, *unused: _backward(ctx, dout, _compiled_backward) + (None,) * (_NUM_INPUTS - 3),
        setup_context=_setup_context)


def attention_forward(*inputs):
    """forward_impl with autograd: the custom op while torch.compile traces,
    the autograd.Function when a gradient will be needed, forward_impl alone
    otherwise (inference: no autograd bookkeeping)."""
    if HAS_CUSTOM_OP and _is_compiling():
        return _compiled_forward(*inputs)
    q, k, v = inputs[:3]
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _AttentionFunction.apply(q, k, v, inputs[3:])
    return forward_impl(*inputs)


def kv_cache_forward(q, k, v, seqused_k, block_table=None, softmax_scale=None, causal=False,
                     window_size=(-1, -1), softcap=0.0, alibi_slopes=None, cu_seqlens_q=None,
                     cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None):
    """Inference attention over a KV cache in one library call (no
    autograd): (out (b, sq, hq, dv), lse (b, hq, sq)). q (b, sq, hq, d);
    seqused_k (b,) int32: the keys sequence b uses. Contiguous: k/v
    (b, sk, hkv, d/dv). Paged: k/v (num_pages, page_size, hkv, d/dv) and
    block_table (b, max_pages) int32, position j of sequence b in page
    block_table[b, j // page_size]. Varlen (cu_seqlens, no table): q, k, v
    packed (total, h, d), out likewise, lse (hq, total_q). The caller has
    checked the shapes and the table; the library checks the lengths and
    the used entries again."""
    q, k, v = (last_dim_contiguous(t) for t in (q, k, v))
    if softmax_scale is None:
        softmax_scale = q.shape[-1] ** -0.5
    if alibi_slopes is not None:
        alibi_slopes = alibi_slopes.contiguous()
    seqused_k = seqused_k.contiguous()
    varlen = cu_seqlens_q is not None
    out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
    lse = torch.empty(_lse_shape(q, k, varlen), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    if varlen:
        _check_total_tokens(cu_seqlens_q, cu_seqlens_k, q, k)
    attn = _problem(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, 0.0,
                    float(softmax_scale), bool(causal), max(int(window_size[0]), -1),
                    max(int(window_size[1]), -1), float(softcap), alibi_slopes, False, 0)
    attn.seqused_k = seqused_k.data_ptr()
    if block_table is not None:
        block_table = block_table.contiguous()
        attn.kv_block_table = block_table.data_ptr()
        attn.kv_block_table_stride = block_table.shape[1]
        attn.kv_page_size = k.shape[1]
        attn.kv_num_pages = k.shape[0]
        attn.seqlen_k = block_table.shape[1] * k.shape[1]  # the positions a table row holds
    with _ffi.device_guard(q.device):
        ctx = _ffi.context_for(q.device)
        ws_size = _workspace_bytes(ctx, attn, _ffi.fa_forward_workspace_size, "forward")
        _run_forward(ctx, attn, ws_size, q, k, v, out, lse, varlen)
    return out, lse


def attention(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
              max_seqlen_k=None, dropout_p=0.0, softmax_scale=None, causal=False,
              window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False):
    """Validated, differentiable attention: returns (out, lse, rng_state)."""
    check_attention_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                         dropout_p, window_size, alibi_slopes, softmax_scale, softcap)
    q, k, v = (last_dim_contiguous(t) for t in (q, k, v))
    if softmax_scale is None:
        softmax_scale = q.shape[-1] ** -0.5
    if alibi_slopes is not None:
        alibi_slopes = alibi_slopes.contiguous()
    if cu_seqlens_q is not None:
        cu_seqlens_q, cu_seqlens_k = cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous()
    else:
        max_seqlen_q, max_seqlen_k = q.shape[1], k.shape[1]
    return attention_forward(
        q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
        float(dropout_p), float(softmax_scale), bool(causal), max(int(window_size[0]), -1),
        max(int(window_size[1]), -1), float(softcap), alibi_slopes, bool(deterministic),
    )


def _descale_arg(name, t, shape, device):
    """A descale tensor as the C API reads it: fp32, contiguous, `shape`."""
    if t is None:
        return None
    check_tensor(name, t, len(shape), torch.float32, device)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    return t.contiguous()


def fp8_forward(q, k, v, q_descale=None, k_descale=None, v_descale=None, softmax_scale=None,
                causal=False, window_size=(-1, -1), softcap=0.0, descale_block_q=0,
                descale_block_k=0, seqused_k=None, block_table=None):
    """The FP8 forward (no autograd: FP8 is forward-only). q (b, sq, hq, d),
    k / v (b, sk, hkv, d) of one float8 dtype; descales fp32 (b, hq,
    ceil(sq / descale_block_q)) for q and (b, hkv, ceil(sk / descale_block_k))
    for k / v (block 0: one per sequence, last dim 1), None = 1. Returns out
    (b, sq, hq, d) bf16 and lse (b, hq, sq) fp32. A KV cache: seqused_k
    (b,) int32, the keys sequence b uses; block_table (b, max_pages) int32
    with k / v (num_pages, page_size, hkv, d), position j of sequence b in
    page block_table[b, j // page_size] (sk = max_pages * page_size). The
    library checks the lengths and the used table entries."""
    b = q.shape[0]
    k_seqs, v_seqs = k, v  # what stands for each sequence's keys in the checks
    if block_table is not None:
        check_tensor("block_table", block_table, 2, torch.int32, q.device)
        if block_table.shape[0] != b:
            raise ValueError(f"block_table must have batch_size = {b} rows, got {block_table.shape[0]}")
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4:
                raise ValueError(f"{name} must be a (num_pages, page_size, nheads_k, headdim) tensor with "
                                 "block_table")
        if k.shape[:-1] != v.shape[:-1]:  # the checks below see one page of each
            raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must agree in every dimension but "
                             "the last")
        k_seqs, v_seqs = (t[:1].expand(b, *t.shape[1:]) if t.shape[0] else t for t in (k, v))
    check_attention_args(q, k_seqs, v_seqs, None, None, None, None, 0.0, window_size, None, softmax_scale,
                         softcap, fp8=True)
    if seqused_k is not None:
        check_tensor("seqused_k", seqused_k, 1, torch.int32, q.device)
        if seqused_k.shape[0] != b:
            raise ValueError(f"seqused_k must have shape (batch_size,) = ({b},), got {tuple(seqused_k.shape)}")
        seqused_k = seqused_k.contiguous()
    if (q.requires_grad or k.requires_grad or v.requires_grad) and torch.is_grad_enabled():
        raise NotImplementedError("flashattn: FP8 attention is forward-only (no gradient)")
    _, sq, hq, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    if block_table is not None:
        block_table = block_table.contiguous()
        sk = block_table.shape[1] * k.shape[1]
    blocks = lambda rows, block: 1 if block == 0 else -(-rows // block)
    qd = _descale_arg("q_descale", q_descale, (b, hq, blocks(sq, descale_block_q)), q.device)
    kd = _descale_arg("k_descale", k_descale, (b, hkv, blocks(sk, descale_block_k)), q.device)
    vd = _descale_arg("v_descale", v_descale, (b, hkv, blocks(sk, descale_block_k)), q.device)
    q, k, v = (last_dim_contiguous(t) for t in (q, k, v))
    out = torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=torch.bfloat16, device=q.device)
    lse = torch.empty((b, hq, sq), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    if sk == 0:  # no keys at all: every row fully masked
        return out.zero_(), lse.fill_(float("-inf"))
    if softmax_scale is None:
        softmax_scale = d ** -0.5
    a = _problem(q, k, v, None, None, sq, sk, 0.0, float(softmax_scale), causal,
                 max(int(window_size[0]), -1), max(int(window_size[1]), -1), float(softcap), None,
                 False, 0)
    a.q_descale, a.k_descale, a.v_descale = (t.data_ptr() if t is not None else None for t in (qd, kd, vd))
    a.descale_block_q, a.descale_block_k = descale_block_q, descale_block_k
    if seqused_k is not None:
        a.seqused_k = seqused_k.data_ptr()
    if block_table is not None:
        a.kv_block_table = block_table.data_ptr()
        a.kv_block_table_stride = block_table.shape[1]
        a.kv_page_size, a.kv_num_pages = k.shape[1], k.shape[0]
        a.seqlen_k = sk
    with _ffi.device_guard(q.device):
        ctx = _ffi.context_for(q.device)
        ws_size = _workspace_bytes(ctx, a, _ffi.fa_forward_workspace_size, "forward")
        _run_forward(ctx, a, ws_size, q, k, v, out, lse, False)
    return out, lse
