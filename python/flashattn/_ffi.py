"""ctypes binding of libflashattn (include/flashattn.h).

Everything that touches the C library lives here: finding and loading the
shared library, the struct layouts, the function signatures, the mapping of
fa_status to Python exceptions, and the per-thread cache of fa_context
handles. The rest of the package works with torch tensors and calls
`forward()` / `backward()` below.
"""

import contextlib
import ctypes
import glob
import os
import sys
import threading

# ---------------------------------------------------------------------------
# Finding the library

_LIB_NAME = {"darwin": "libflashattn.dylib", "win32": "flashattn.dll"}.get(
    sys.platform, "libflashattn.so"
)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_REPO_ROOT = os.path.dirname(os.path.dirname(_PACKAGE_DIR))


def _candidate_paths():
    """Where the library is looked for, in order: $FLASHATTN_LIB, the copy
    installed inside the package (flashattn/_lib/), then build*/ folders of
    the source tree when the package is used in-tree (PYTHONPATH=python)."""
    env = os.environ.get("FLASHATTN_LIB")
    if env:
        return [env]
    paths = [os.path.join(_PACKAGE_DIR, "_lib", _LIB_NAME)]
    # Newest build first, so that a fresh `cmake --build build-x` wins.
    in_tree = glob.glob(os.path.join(_REPO_ROOT, "build*", _LIB_NAME))
    in_tree.sort(key=os.path.getmtime, reverse=True)
    return paths + in_tree


def _load():
    tried = []
    for path in _candidate_paths():
        if not os.path.exists(path):
            tried.append(f"{path} (missing)")
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as e:
            tried.append(f"{path} ({e})")
    raise ImportError(
        "flashattn: cannot load the C library libflashattn; tried: "
        + "; ".join(tried)
        + ". Install the package with `pip install --no-build-isolation ./python`"
        " from the repository root, or build it (cmake -B build . && cmake --build build)"
        " and set FLASHATTN_LIB to the path of libflashattn.so."
    )


lib, lib_path = _load()

# ---------------------------------------------------------------------------
# Types (must match include/flashattn.h field for field)

FA_SUCCESS = 0
FA_ERROR_INVALID_ARGUMENT = 1
FA_ERROR_UNSUPPORTED = 2
FA_ERROR_OUT_OF_MEMORY = 3
FA_ERROR_DEVICE = 4
FA_ERROR_INTERNAL = 5

FA_DTYPE_F32, FA_DTYPE_F16, FA_DTYPE_BF16, FA_DTYPE_FP8_E4M3, FA_DTYPE_FP8_E5M2 = 0, 1, 2, 3, 4
FA_DEVICE_CPU, FA_DEVICE_CUDA = 0, 1
BACKENDS = {"auto": 0, "cpu": 1, "cuda_sm80": 2, "cuda_sm90": 3}


class FaTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("stride_batch", ctypes.c_int64),
        ("stride_seq", ctypes.c_int64),
        ("stride_head", ctypes.c_int64),
    ]


class FaAttn(ctypes.Structure):
    _fields_ = [
        ("batch", ctypes.c_int64),
        ("seqlen_q", ctypes.c_int64),
        ("seqlen_k", ctypes.c_int64),
        ("heads_q", ctypes.c_int64),
        ("heads_kv", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("head_dim_v", ctypes.c_int64),
        ("dtype", ctypes.c_int),
        ("cu_seqlens_q", ctypes.c_void_p),
        ("cu_seqlens_k", ctypes.c_void_p),
        ("softmax_scale", ctypes.c_float),
        ("causal", ctypes.c_int),
        ("window_left", ctypes.c_int64),
        ("window_right", ctypes.c_int64),
        ("softcap", ctypes.c_float),
        ("alibi_slopes", ctypes.c_void_p),
        ("alibi_stride_batch", ctypes.c_int64),
        ("dropout_p", ctypes.c_float),
        ("dropout_seed", ctypes.c_uint64),
        ("dropout_offset", ctypes.c_uint64),
        ("block_mask", ctypes.c_void_p),
        ("block_size_q", ctypes.c_int64),
        ("block_size_k", ctypes.c_int64),
        ("block_mask_blocks_q", ctypes.c_int64),
        ("block_mask_blocks_k", ctypes.c_int64),
        ("block_mask_stride_batch", ctypes.c_int64),
        ("block_mask_stride_head", ctypes.c_int64),
        ("deterministic", ctypes.c_int),
        ("seqused_k", ctypes.c_void_p),
        ("kv_block_table", ctypes.c_void_p),
        ("kv_block_table_stride", ctypes.c_int64),
        ("kv_page_size", ctypes.c_int64),
        ("kv_num_pages", ctypes.c_int64),
        ("q_descale", ctypes.c_void_p),
        ("k_descale", ctypes.c_void_p),
        ("v_descale", ctypes.c_void_p),
        ("descale_block_q", ctypes.c_int64),
        ("descale_block_k", ctypes.c_int64),
    ]


class FaQuant(ctypes.Structure):
    _fields_ = [
        ("batch", ctypes.c_int64),
        ("seqlen", ctypes.c_int64),
        ("heads", ctypes.c_int64),
        ("dim", ctypes.c_int64),
        ("cu_seqlens", ctypes.c_void_p),
        ("src_dtype", ctypes.c_int),
        ("dst_dtype", ctypes.c_int),
        ("block_rows", ctypes.c_int64),
        ("rotate", ctypes.c_int),
        ("rotate_seed", ctypes.c_uint64),
    ]


_p = ctypes.POINTER
_ctx_p = ctypes.c_void_p


def _declare(name, restype, *argtypes):
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


fa_version = _declare("fa_version", ctypes.c_uint)
fa_version_string = _declare("fa_version_string", ctypes.c_char_p)
fa_status_string = _declare("fa_status_string", ctypes.c_char_p, ctypes.c_int)
fa_last_error = _declare("fa_last_error", ctypes.c_char_p)
fa_backend_name = _declare("fa_backend_name", ctypes.c_char_p, ctypes.c_int)
fa_backend_compiled = _declare("fa_backend_compiled", ctypes.c_int, ctypes.c_int)
fa_attn_init = _declare("fa_attn_init", None, _p(FaAttn))
fa_context_create = _declare(
    "fa_context_create", ctypes.c_int, _p(ctypes.c_void_p), ctypes.c_int, ctypes.c_int
)
fa_context_destroy = _declare("fa_context_destroy", None, _ctx_p)
fa_context_set_stream = _declare("fa_context_set_stream", ctypes.c_int, _ctx_p, ctypes.c_void_p)
fa_context_set_num_threads = _declare(
    "fa_context_set_num_threads", ctypes.c_int, _ctx_p, ctypes.c_int
)
fa_context_set_backend = _declare("fa_context_set_backend", ctypes.c_int, _ctx_p, ctypes.c_int)
fa_context_set_kv_cache_checks = _declare("fa_context_set_kv_cache_checks", ctypes.c_int, _ctx_p,
                                          ctypes.c_int)
fa_context_last_kernel = _declare("fa_context_last_kernel", ctypes.c_char_p, _ctx_p)
fa_forward_workspace_size = _declare(
    "fa_forward_workspace_size", ctypes.c_int, _ctx_p, _p(FaAttn), _p(ctypes.c_size_t)
)
fa_backward_workspace_size = _declare(
    "fa_backward_workspace_size", ctypes.c_int, _ctx_p, _p(FaAttn), _p(ctypes.c_size_t)
)
_T = _p(FaTensor)
fa_forward = _declare(
    "fa_forward", ctypes.c_int,
    _ctx_p, _p(FaAttn), _T, _T, _T, _T, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
)
fa_backward = _declare(
    "fa_backward", ctypes.c_int,
    _ctx_p, _p(FaAttn), _T, _T, _T, _T, ctypes.c_void_p, _T, _T, _T, _T,
    ctypes.c_void_p, ctypes.c_size_t,
)
fa_quant_init = _declare("fa_quant_init", None, _p(FaQuant))
fa_quantize_fp8 = _declare("fa_quantize_fp8", ctypes.c_int, _ctx_p, _p(FaQuant), _T, _T, ctypes.c_void_p)
fa_dropout_keep = _declare(
    "fa_dropout_keep", ctypes.c_int,
    ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
    ctypes.c_int64, ctypes.c_int64, ctypes.c_float,
)


def _check_struct_layout():
    """fa_attn_init() writes the documented defaults; if the ctypes layout
    disagreed with the header they would land in the wrong fields (or past
    the end, into the guard bytes)."""
    guard = 64

    class Guarded(ctypes.Structure):
        _fields_ = [("attn", FaAttn), ("pad", ctypes.c_ubyte * guard)]

    g = Guarded()
    ctypes.memset(ctypes.byref(g), 0x5A, ctypes.sizeof(g))
    fa_attn_init(ctypes.byref(g.attn))
    a = g.attn
    ok = (
        a.window_left == -1 and a.window_right == -1 and a.dtype == FA_DTYPE_F32
        and a.batch == 0 and a.softmax_scale == 0.0 and a.dropout_p == 0.0
        and a.cu_seqlens_q is None and a.block_mask is None and a.deterministic == 0
        and a.seqused_k is None and a.kv_block_table is None and a.kv_num_pages == 0
        and a.q_descale is None and a.v_descale is None and a.descale_block_k == 0
        and all(b == 0x5A for b in g.pad)
    )
    if not ok:
        raise ImportError(
            f"flashattn: {lib_path} does not match this binding's fa_attn layout "
            "(library and Python package come from different versions)"
        )


_check_struct_layout()
version = fa_version_string().decode()

# ---------------------------------------------------------------------------
# Errors

_EXCEPTIONS = {
    FA_ERROR_INVALID_ARGUMENT: ValueError,
    FA_ERROR_UNSUPPORTED: NotImplementedError,
    FA_ERROR_OUT_OF_MEMORY: MemoryError,
    FA_ERROR_DEVICE: RuntimeError,
    FA_ERROR_INTERNAL: RuntimeError,
}


def check(status, what):
    """Raise the exception for a failed fa_status, carrying the library's
    message (which names the offending argument)."""
    if status == FA_SUCCESS:
        return
    message = fa_last_error().decode(errors="replace")
    kind = fa_status_string(status).decode()
    exc = _EXCEPTIONS.get(status, RuntimeError)
    raise exc(f"flashattn {what}: {message or kind}")


# ---------------------------------------------------------------------------
# Contexts: one per (thread, device), created on first use

class _Context:
    # settings: the (threads or stream, backend) last given to the library,
    # so that a call that changes neither costs no ctypes round trips
    __slots__ = ("handle", "_destroy", "settings")

    def __init__(self, device, index):
        handle = ctypes.c_void_p()
        check(fa_context_create(ctypes.byref(handle), device, index), "context")
        self.handle = handle
        self.settings = None
        # Keep the function alive for __del__ at interpreter shutdown.
        self._destroy = fa_context_destroy

    def __del__(self):
        self._destroy(self.handle)


_local = threading.local()
_forced_backend = [BACKENDS["auto"]]
_kv_cache_checks = [True]


def set_kv_cache_checks(enabled):
    """Whether the library checks seqused_k, block tables and FP8 descales
    on the host before a CUDA forward (the default; it waits for the
    stream). False trusts them (no wait, no copy: a decoding step can be
    captured in a CUDA graph); a length or page out of range, or a descale
    that is not finite and > 0, is then undefined behavior, as in
    FlashAttention. For every later call on every thread."""
    _kv_cache_checks[0] = bool(enabled)


def set_backend(name):
    """Force a backend ("auto", "cpu", "cuda_sm80", "cuda_sm90") for every
    later call on every thread; a forced backend that cannot run a call
    raises NotImplementedError."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {name!r}")
    _forced_backend[0] = BACKENDS[name]


def forced_backend():
    """The backend set_backend chose (an FA_BACKEND_* value)."""
    return _forced_backend[0]


FA_MAX_THREADS = 1024  # flashattn.h


def cpu_threads():
    """The CPU thread count of the next call: torch's, within the library's
    bound."""
    import torch

    return min(torch.get_num_threads(), FA_MAX_THREADS)


def context_for(device):
    """The calling thread's fa_context for a torch.device, configured for
    the next call: CPU thread count from torch, CUDA current stream."""
    import torch

    contexts = getattr(_local, "contexts", None)
    if contexts is None:
        contexts = _local.contexts = {}
    if device.type == "cpu":
        key = ("cpu", 0)
    elif device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        key = ("cuda", index)
    else:
        raise ValueError(f"flashattn: tensors on device type {device.type!r} are not supported")
    ctx = contexts.get(key)
    if ctx is None:
        ctx = contexts[key] = _Context(
            FA_DEVICE_CPU if key[0] == "cpu" else FA_DEVICE_CUDA, key[1]
        )
    h = ctx.handle
    if key[0] == "cpu":
        settings = (cpu_threads(), _forced_backend[0])
    else:
        # the raw stream handle without a torch.cuda.Stream object (~5 us
        # less per call on torch 2.x; older torch has only the object)
        raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        stream = raw_stream(key[1]) if raw_stream else torch.cuda.current_stream(key[1]).cuda_stream
        settings = (stream, _forced_backend[0], _kv_cache_checks[0])
    if settings != ctx.settings:
        if key[0] == "cpu":
            check(fa_context_set_num_threads(h, settings[0]), "context")
        else:
            check(fa_context_set_stream(h, ctypes.c_void_p(settings[0])), "context")
        check(fa_context_set_backend(h, settings[1]), "context")
        if key[0] == "cuda":
            check(fa_context_set_kv_cache_checks(h, int(settings[2])), "context")
        ctx.settings = settings
    return h


_NO_GUARD = contextlib.nullcontext()


def device_guard(device):
    """torch's current-device guard for a CUDA tensor on another device than
    torch's current one (the library switches to the context's device; torch
    restores its own afterwards); nothing to guard otherwise."""
    import torch

    if device.type != "cuda" or device.index is None or device.index == torch.cuda.current_device():
        return _NO_GUARD
    return torch.cuda.device(device)


def last_kernel(device):
    """Name of the kernel the last call on this thread and device ran."""
    import torch

    h = context_for(torch.device(device))
    name = fa_context_last_kernel(h)
    return name.decode() if name else ""
