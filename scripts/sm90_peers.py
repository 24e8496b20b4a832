"""Peer timings for docs/perf-sm90.md: PyTorch SDPA's cuDNN and FlashAttention-2
backends on FA3's forward grid (bf16, 16k tokens per batch, hidden 2048,
layout (B, H, S, D)), timed like scripts/sm90_dev.cu: a sample is `calls`
back-to-back calls lasting >= ~2 ms between CUDA events, median of 15.
Usage: python3 scripts/sm90_peers.py [hdim,...]"""
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import torch.nn.functional as F

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "fa2": SDPBackend.FLASH_ATTENTION}


def time_ms(fn):
    for _ in range(3):
        fn()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    fn()
    e1.record()
    e1.synchronize()
    calls = min(25, int(2.0 / max(e0.elapsed_time(e1), 1e-3)) + 1)
    samples = []
    for _ in range(15):
        e0.record()
        for _ in range(calls):
            fn()
        e1.record()
        e1.synchronize()
        samples.append(e0.elapsed_time(e1) / calls)
    return sorted(samples)[7]


def main():
    dims = [int(x) for x in sys.argv[1].split(",")] if len(sys.argv) > 1 else [64, 128, 256]
    print("peers (bf16, 16k tokens, hidden 2048): TFLOP/s")
    print(f"{'hdim':<6} {'causal':<6} {'seqlen':<7} " + " ".join(f"{n:>10}" for n in BACKENDS))
    for d in dims:
        for causal in (0, 1):
            for s in (512, 1024, 2048, 4096, 8192, 16384):
                b, h = 16384 // s, 2048 // d
                q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
                flops = 4.0 * b * s * s * h * d / (2 if causal else 1)
                cells = []
                for backend in BACKENDS.values():
                    try:
                        with sdpa_kernel(backend):
                            ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal)))
                        cells.append(f"{flops / ms / 1e9:10.1f}")
                    except RuntimeError:
                        cells.append(f"{'n/a':>10}")
                print(f"{d:<6} {causal:<6} {s:<7} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
