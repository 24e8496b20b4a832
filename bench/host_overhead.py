"""Host time per call against GPU time per call, ours and SDPA's.

    python3 bench/host_overhead.py [--seqlens 512 1024] [--dims 64 128 256]

For each cell of the FA3 grid (forward, bf16, 16k tokens, hidden 2048):
  host: wall time per call of 200 back-to-back calls on a tiny problem
        (the GPU is never the limit), i.e. what one call costs the CPU;
  gpu:  CUDA-event time per call of 25 calls queued behind a ~20 ms
        torch.cuda._sleep, so all of them are queued before the first runs
        (pure GPU time, no launch gaps);
  bench: the same 25 calls without the sleep, as bench/gpu_bench.py times
        them (host and GPU both matter).
A cell whose `bench` time is above its `gpu` time is (partly) host-bound.
"""
import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from flashattn import flash_attn_func


def per_call_ms(fn, calls, sleep_cycles):
    fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(7):
        if sleep_cycles:
            torch.cuda._sleep(sleep_cycles)
        start.record()
        for _ in range(calls):
            fn()
        stop.record()
        stop.synchronize()
        best = min(best, start.elapsed_time(stop) / calls)
    return best


def host_us(fn, calls=200):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / calls * 1e6


def contenders(q, k, v, causal):
    qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))

    def sdpa(backend):
        def fn():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
        return fn
    return {"ours": lambda: flash_attn_func(q, k, v, causal=causal),
            "sdpa-cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
            "sdpa-flash": sdpa(SDPBackend.FLASH_ATTENTION)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqlens", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128, 256])
    args = ap.parse_args()
    dt = torch.bfloat16
    with torch.no_grad():
        tiny = [torch.randn(1, 128, 1, 128, device="cuda", dtype=dt) for _ in range(3)]
        for name, fn in contenders(*tiny, False).items():
            print(f"host per call ({name}): {host_us(fn):.1f} us")
        cycles = int(20e-3 * torch.cuda.get_device_properties(0).clock_rate * 1e3)
        print(f"{'hdim':>4} {'causal':>6} {'seqlen':>6} {'impl':>10} {'gpu_us':>8} {'bench_us':>8} {'gpu_tflops':>10} {'bench_tflops':>12}")
        for d in args.dims:
            for causal in (False, True):
                for s in args.seqlens:
                    b, h = 16384 // s, 2048 // d
                    flops = 4 * b * s * s * h * d / (2 if causal else 1)
                    q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=dt) for _ in range(3))
                    for name, fn in contenders(q, k, v, causal).items():
                        g = per_call_ms(fn, 25, cycles)
                        bt = per_call_ms(fn, 25, 0)
                        print(f"{d:>4} {int(causal):>6} {s:>6} {name:>10} {g * 1e3:8.1f} {bt * 1e3:8.1f} "
                              f"{flops / g / 1e9:10.1f} {flops / bt / 1e9:12.1f}")


if __name__ == "__main__":
    main()
