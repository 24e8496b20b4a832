"""SM clock and board power while each contender's forward runs alone.

    PYTHONPATH=python FLASHATTN_LIB=<lib> python3 bench/power_probe.py \\
        [--fa3-lib libfa3peer.so] [--seconds 4] HDIM:CAUSAL:SEQLEN ...

gpu_bench.py alternates the contenders every few milliseconds, so a
sampler cannot tell their clocks apart. Here each contender (ours, cuDNN
through SDPA, FA3 if given) runs back to back for --seconds on one cell of
the FA3 grid (16k tokens, hidden 2048, bf16) while nvidia-smi samples the
SM clock and the power draw every 50 ms; the report is the median of the
samples of the run's second half (after the clock settles) and the TFLOP/s
of that half. Long cells run at the board's power cap: two kernels at the
same TFLOP/s per clock can differ in speed by the clock the cap leaves
them (perf.md, eighteenth session)."""
import argparse
import ctypes
import subprocess
import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, "bench")
import gpu_bench  # noqa: E402
from flashattn import flash_attn_func  # noqa: E402


def sample_while(fn, seconds):
    """Runs fn back to back for `seconds` while sampling clock and power;
    returns (median MHz, median W, calls per second) over the second half."""
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,clocks.sm,power.draw",
                            "--format=csv,noheader,nounits", "-lms", "50"],
                           stdout=subprocess.PIPE, text=True)
    t0 = time.time()
    half, calls_half, t_half = t0 + seconds / 2, 0, None
    while time.time() < t0 + seconds:
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
        now = time.time()
        if now >= half:
            if t_half is None:
                t_half = now
            else:
                calls_half += 10
    t_end = time.time()
    smi.terminate()
    lines = smi.communicate()[0].strip().splitlines()
    # the sampler's second half: its samples are evenly spaced
    rows = [l.split(", ") for l in lines[len(lines) // 2:]]
    mhz = sorted(float(r[1]) for r in rows if len(r) == 3)
    watts = sorted(float(r[2]) for r in rows if len(r) == 3)
    med = lambda xs: xs[len(xs) // 2] if xs else float("nan")
    return med(mhz), med(watts), calls_half / (t_end - t_half)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cells", nargs="+", help="HDIM:CAUSAL:SEQLEN, e.g. 128:0:16384")
    ap.add_argument("--fa3-lib", help="FA3 peer library (bench/fa3_peer/build.sh)")
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    fa3_lib = ctypes.CDLL(args.fa3_lib) if args.fa3_lib else None
    print("hdim causal seqlen contender MHz W TFLOP/s TFLOP/s-per-GHz")
    for cell in args.cells:
        d, causal, s = (int(x) for x in cell.split(":"))
        b, h = 16384 // s, 2048 // d
        q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        contenders = {"ours": lambda: flash_attn_func(q, k, v, causal=bool(causal))}

        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=bool(causal))
        contenders["cudnn"] = cudnn
        if fa3_lib is not None:
            contenders["fa3"] = gpu_bench.fa3_forward(fa3_lib, q, k, v, bool(causal))
        flops = 4 * b * s * s * h * d / (2 if causal else 1)
        with torch.no_grad():
            for name, fn in contenders.items():
                mhz, watts, rate = sample_while(fn, args.seconds)
                tflops = flops * rate / 1e12
                print(f"{d} {causal} {s} {name} {mhz:.0f} {watts:.0f} {tflops:.0f} {tflops / (mhz / 1000):.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
