"""Bad input raises an exception whose message names the argument, from the
Python checks and from the C library's validation alike."""

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: flashattn's tests need it")

import flashattn  # noqa: E402
from flashattn import _ffi  # noqa: E402

from attention_reference import dtype_for  # noqa: E402


def qkv(device, b=2, sq=5, sk=6, hq=4, hkv=2, d=16):
    dtype = dtype_for(device)
    return (torch.randn(b, sq, hq, d, device=device, dtype=dtype),
            torch.randn(b, sk, hkv, d, device=device, dtype=dtype),
            torch.randn(b, sk, hkv, d, device=device, dtype=dtype))


FIXED_CASES = [
    ("q int", lambda q, k, v: (q.long(), k, v, {}), TypeError, "q must be float16, bfloat16 or float32"),
    ("k dtype", lambda q, k, v: (q, k.double(), v, {}), TypeError, "k must be float(16|32)"),
    ("v dtype", lambda q, k, v: (q, k, v.double(), {}), TypeError, "v must be float(16|32)"),
    ("q dims", lambda q, k, v: (q[0], k, v, {}), ValueError, "q must have 4 dimensions"),
    ("q not tensor", lambda q, k, v: (q.tolist(), k, v, {}), TypeError, "q must be a torch.Tensor"),
    ("batch", lambda q, k, v: (q[:1], k, v, {}), ValueError, "same batch size"),
    ("k vs v", lambda q, k, v: (q, k, v[:, :3], {}), ValueError, "k and v must agree"),
    ("head dim", lambda q, k, v: (q[..., :8], k, v, {}), ValueError, "k's head dim 16 differs from q's 8"),
    ("heads", lambda q, k, v: (q[:, :, :3], k, v, {}), ValueError, r"heads in q \(3\) must be a multiple"),
    ("dropout", lambda q, k, v: (q, k, v, dict(dropout_p=1.0)), ValueError, "dropout_p"),
    ("window", lambda q, k, v: (q, k, v, dict(window_size=4)), ValueError, "window_size"),
    ("alibi shape", lambda q, k, v: (q, k, v, dict(alibi_slopes=torch.ones(3, device=q.device))),
     ValueError, "alibi_slopes must be"),
    ("alibi dtype", lambda q, k, v: (q, k, v, dict(alibi_slopes=torch.ones(4, device=q.device).double())),
     TypeError, "alibi_slopes must be float32"),
    ("alibi list", lambda q, k, v: (q, k, v, dict(alibi_slopes=[0.5] * 4)), TypeError,
     "alibi_slopes must be a torch.Tensor"),
    ("softcap", lambda q, k, v: (q, k, v, dict(softcap=-1.0)), ValueError, "softcap must be"),
    ("scale nan", lambda q, k, v: (q, k, v, dict(softmax_scale=float("nan"))), ValueError,
     "softmax_scale must be"),
    # 0 would otherwise reach the C API, where it means 1/sqrt(d)
    ("scale zero", lambda q, k, v: (q, k, v, dict(softmax_scale=0.0)), ValueError,
     "softmax_scale must be a finite number > 0"),
    ("scale negative", lambda q, k, v: (q, k, v, dict(softmax_scale=-0.25)), ValueError,
     "softmax_scale must be"),
]


@pytest.mark.parametrize("case", FIXED_CASES, ids=[c[0] for c in FIXED_CASES])
def test_fixed_length_errors(device, case):
    _, mutate, exc, message = case
    q, k, v, options = mutate(*qkv(device))
    with pytest.raises(exc, match=message):
        flashattn.flash_attn_func(q, k, v, **options)


def test_head_dim_too_large(device):
    q, k, v = qkv(device, d=264)
    with pytest.raises(ValueError, match="head dim must be in 1..256"):
        flashattn.flash_attn_func(q, k, v)


def _varlen(device, cu_q=(0, 3, 7), cu_k=(0, 4, 9), max_q=4, max_k=5, dtype=torch.int32):
    q = torch.randn(7, 2, 16, device=device, dtype=dtype_for(device))
    k = torch.randn(9, 2, 16, device=device, dtype=dtype_for(device))
    return (q, k, k.clone(), torch.tensor(cu_q, dtype=dtype, device=device),
            torch.tensor(cu_k, dtype=dtype, device=device), max_q, max_k)


VARLEN_CASES = [
    ("cu dtype", dict(dtype=torch.int64), TypeError, "cu_seqlens_q must be int32"),
    ("cu lengths", dict(cu_k=(0, 9)), ValueError, "both have batch \\+ 1 entries"),
    ("decreasing (library)", dict(cu_q=(0, 5, 3), max_q=5), ValueError, "cu_seqlens_q is not non-decreasing"),
    ("first not 0 (library)", dict(cu_k=(1, 4, 9)), ValueError, r"cu_seqlens_k\[0\]"),
    ("max too small (library)", dict(max_q=2), ValueError, "cu_seqlens_q: sequence 0 has length 3 > the max seqlen \\(2\\)"),
    ("beyond q", dict(cu_q=(0, 3, 8), max_q=5), ValueError, r"cu_seqlens_q\[-1\] = 8 tokens"),
    ("max_seqlen type", dict(max_k=4.5), ValueError, "max_seqlen"),
]


@pytest.mark.parametrize("case", VARLEN_CASES, ids=[c[0] for c in VARLEN_CASES])
def test_varlen_errors(device, case):
    _, kwargs, exc, message = case
    with pytest.raises(exc, match=message):
        flashattn.flash_attn_varlen_func(*_varlen(device, **kwargs))


def test_packed_shape_errors(device):
    with pytest.raises(ValueError, match="qkv must have size 3 in dimension 2"):
        flashattn.flash_attn_qkvpacked_func(torch.randn(1, 4, 2, 2, 8, device=device))
    with pytest.raises(ValueError, match="kv must have size 2 in dimension 1"):
        flashattn.flash_attn_varlen_kvpacked_func(
            torch.randn(4, 2, 8, device=device), torch.randn(4, 3, 2, 8, device=device),
            *_varlen(device)[3:])


def test_forced_backend_that_cannot_run(device):
    q, k, v = qkv(device)
    other = "cuda_sm80" if device == "cpu" else "cpu"
    flashattn.set_backend(other)
    try:
        with pytest.raises(NotImplementedError) as info:
            flashattn.flash_attn_func(q, k, v)
        message = str(info.value)
        assert message.startswith("flashattn ") and ("sm80" in message or "cpu" in message)
    finally:
        flashattn.set_backend("auto")
    flashattn.flash_attn_func(q, k, v)  # back to normal


def test_set_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="backend must be one of"):
        flashattn.set_backend("tpu")


def test_status_mapping():
    for status, exc in ((_ffi.FA_ERROR_INVALID_ARGUMENT, ValueError),
                        (_ffi.FA_ERROR_UNSUPPORTED, NotImplementedError),
                        (_ffi.FA_ERROR_OUT_OF_MEMORY, MemoryError),
                        (_ffi.FA_ERROR_DEVICE, RuntimeError),
                        (_ffi.FA_ERROR_INTERNAL, RuntimeError)):
        with pytest.raises(exc):
            _ffi.check(status, "test")
    _ffi.check(_ffi.FA_SUCCESS, "test")


def test_device_mismatch():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device to put one tensor on")
    q, k, v = qkv("cpu")
    with pytest.raises(ValueError, match="k is on cuda:0 but q is on cpu"):
        flashattn.flash_attn_func(q, k.cuda(), v)
