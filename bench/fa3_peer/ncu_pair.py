"""Three forwards each of ours and of the FA3 peer on one cell of the FA3
grid (16k tokens, hidden 2048, bf16), for ncu side by side; prints their
largest difference. From the checkout:

    ncu --set full --kernel-name regex:"fa_sm90_fwd|device_kernel" --launch-skip 4 \\
        --launch-count 2 -o REPORT python3 bench/fa3_peer/ncu_pair.py LIB HDIM CAUSAL SEQLEN
"""
import ctypes
import sys

import torch

sys.path.insert(0, "bench")
import flashattn  # noqa: E402
import gpu_bench  # noqa: E402
from flashattn import flash_attn_func  # noqa: E402

lib = ctypes.CDLL(sys.argv[1])
d, causal, s = int(sys.argv[2]), bool(int(sys.argv[3])), int(sys.argv[4])
b, h = 16384 // s, 2048 // d
q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
fa3 = gpu_bench.fa3_forward(lib, q, k, v, causal)
with torch.no_grad():
    for _ in range(3):
        ours, theirs = flash_attn_func(q, k, v, causal=causal), fa3()
    torch.cuda.synchronize()
    print("largest difference", (ours.float() - theirs.float()).abs().max().item(),
          "our kernel", flashattn.last_kernel(q.device))
