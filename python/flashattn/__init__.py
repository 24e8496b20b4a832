"""flashattn: FlashAttention (exact, IO-aware attention) over the flashattn C
library, as a drop-in for the `flash_attn` package.

    from flashattn import flash_attn_func               # FlashAttention-2 API
    from flashattn.flash_attn_interface import flash_attn_func  # FA3 API
    from flashattn.bert_padding import pad_input, unpad_input

Works on CPU tensors (the library's CPU backend) and CUDA tensors (current
stream) with the same calls, with autograd, and with torch.compile where the
installed torch has torch.library.custom_op.
"""

from . import _ffi
from ._ffi import last_kernel, set_backend, set_kv_cache_checks
from .fa2 import (
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_with_kvcache,
)
from . import bert_padding, flash_attn_interface

__version__ = _ffi.version
library_path = _ffi.lib_path


def backend_compiled(name):
    """True if the loaded library contains the backend ("cpu", "cuda_sm80",
    "cuda_sm90")."""
    return bool(_ffi.fa_backend_compiled(_ffi.BACKENDS[name]))


__all__ = [
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_with_kvcache",
    "bert_padding",
    "flash_attn_interface",
    "backend_compiled",
    "last_kernel",
    "set_backend",
    "set_kv_cache_checks",
]
