"""Whether the one-row decoding shapes' spread between processes follows
where K / V land in memory: in one process, the same shape on six fresh
allocations (the earlier ones kept alive, so each lands elsewhere), ours
(auto) and cuDNN timed on each as decode_bench times them."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
sys.path.insert(0, os.path.join(os.getcwd(), "python"))
from decode_bench import ours, sdpa  # noqa: E402
from gpu_bench import time_contenders  # noqa: E402

keep = []
for shape in sys.argv[1:]:
    b, hq, hk, d, sq, sk = (int(x) for x in shape.split(":"))
    for alloc in range(6):
        q = torch.randn(b, sq, hq, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(b, sk, hk, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        keep += [q, k, v]
        fns = {"auto": ours(q, k, v, False, "auto"), "sdpa-cudnn": sdpa("sdpa-cudnn", q, k, v)}
        times, errors = time_contenders(fns, calls=5, reps=5, rep_ms=5.0, max_calls=200)
        print(f"{shape} alloc {alloc} k at {k.data_ptr() % (1 << 40):#x}: " +
              "  ".join(f"{n} {t * 1e3:.1f} us" for n, t in times.items()) + (f"  {errors}" if errors else ""),
              flush=True)
