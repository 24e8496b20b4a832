#!/bin/bash
# call 6: how long the Vᵀ pass takes against the FP8 kernel (torch.profiler's CUDA kernel times),
# FA3 grid cells, e4m3, per-head descales, trusted
P=build-s27/p
export LD_LIBRARY_PATH=$PWD/$P FLASHATTN_LIB=$PWD/$P/libflashattn.so PYTHONPATH=$PWD/python
python3 - <<'PY'
import torch
from torch.profiler import profile, ProfilerActivity
from flashattn import _ffi, _ops
_ffi.set_kv_cache_checks(False)
for d in (128, 256):
    for s in (512, 2048, 16384):
        b, h = 16384 // s, 2048 // d
        q8, k8, v8 = (torch.randn(b, s, h, d, device="cuda").to(torch.float8_e4m3fn) for _ in range(3))
        ones = torch.ones(b, h, 1, device="cuda")
        for _ in range(3):
            _ops.fp8_forward(q8, k8, v8, ones, ones, ones)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                _ops.fp8_forward(q8, k8, v8, ones, ones, ones)
            torch.cuda.synchronize()
        times = {}
        for e in prof.key_averages():
            for key in ("transpose_v", "fwd_kernel"):
                if key in e.key:
                    times[key] = e.device_time_total / e.count if hasattr(e, "device_time_total") else e.cuda_time_total / e.count
        t, f = times.get("transpose_v", 0), times.get("fwd_kernel", 0)
        print(f"d{d} s{s}: transpose {t:.1f} us, kernel {f:.1f} us, transpose share {t / (t + f):.1%}")
PY
