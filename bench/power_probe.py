"""Sustained forward speed with the SM clock and board power it runs at:
ours (a library backend) and the SDPA peers, each running one cell back to
back for a few seconds while nvidia-smi samples every 100 ms.

    python3 bench/power_probe.py [--backend auto|cuda_sm80] [--secs 3]
        [--rounds 2] [--peers sdpa-flash,sdpa-cudnn[,fa3] --fa3-lib LIB]
        [--out F.json] hdim:causal:seqlen ...

Why: a kernel that is faster than a peer at a locked clock (ncu) can be
slower free-running when it draws more power per FLOP and the board's
power cap lowers its clock. Each contender's span is its launch loop alone;
the samples inside a span (the first 0.5 s, or a quarter of a shorter
span, dropped while the clock settles) give its mean clock and power.
The contenders alternate, `--rounds` times. `fa3` is FlashAttention-3's
Hopper forward built outside this project (bench/fa3_peer/build.sh), as in
gpu_bench. Same inputs and layouts as gpu_bench (ours (b, s, h, d), SDPA's
(b, h, s, d)); bf16, 16k tokens, hidden 2048."""

import argparse
import ctypes
import json
import os
import subprocess
import sys
import threading
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flashattn  # noqa: E402
from flashattn import flash_attn_func  # noqa: E402
from gpu_bench import BACKENDS, cuda_ready, fa3_forward, sdpa_forward  # noqa: E402


class Sampler:
    """nvidia-smi's clock / power samples with the host time they arrived."""

    def __init__(self):
        self.samples = []
        self.proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
             "-lms", "100"], stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                clock, power = (float(x) for x in line.split(","))
            except ValueError:
                continue
            self.samples.append((time.time(), clock, power))

    def between(self, t0, t1):
        got = [(c, p) for (t, c, p) in self.samples if t0 <= t <= t1]
        if not got:
            return None, None
        return sum(c for c, _ in got) / len(got), sum(p for _, p in got) / len(got)

    def stop(self):
        self.proc.terminate()


def burn(fn, secs, flops):
    """Runs fn back to back for ~secs; (start, end, TFLOP/s)."""
    fn()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start = time.time()
    calls = 0
    e0.record()
    while time.time() < start + secs:
        for _ in range(10):
            fn()
        calls += 10
        torch.cuda.synchronize()
    e1.record()
    e1.synchronize()
    end = time.time()
    return start, end, flops * calls / (e0.elapsed_time(e1) * 1e-3) / 1e12


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cells", nargs="+", help="hdim:causal:seqlen")
    ap.add_argument("--backend", default="auto", choices=BACKENDS)
    ap.add_argument("--peers", default="sdpa-flash,sdpa-cudnn", help="comma-separated: sdpa-flash, sdpa-cudnn, fa3")
    ap.add_argument("--fa3-lib", default=None, help="the FA3 peer library, for the fa3 peer")
    ap.add_argument("--secs", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not cuda_ready(args.backend):
        return 77
    peers = args.peers.split(",")
    if "fa3" in peers and not args.fa3_lib:
        ap.error("the fa3 peer needs --fa3-lib")
    fa3_lib = ctypes.CDLL(args.fa3_lib) if "fa3" in peers else None
    sampler = Sampler()
    time.sleep(1.0)
    rows = []
    for cell in args.cells:
        d, causal, s = (int(x) for x in cell.split(":"))
        b, h = 16384 // s, 2048 // d
        q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        fns = {"flashattn": lambda: flash_attn_func(q, k, v, causal=bool(causal))}
        for name in peers:
            fns[name] = (fa3_forward(fa3_lib, q, k, v, bool(causal)) if name == "fa3"
                         else sdpa_forward(name, qt, kt, vt, bool(causal)))
        flops = 4.0 * b * s * s * h * d / (2 if causal else 1)
        with torch.no_grad():
            for rnd in range(args.rounds):
                for name, fn in fns.items():
                    t0, t1, tflops = burn(fn, args.secs, flops)
                    time.sleep(0.3)  # the last samples of the span arrive
                    clock, power = sampler.between(t0 + min(0.5, args.secs / 4), t1)
                    row = dict(cell=cell, round=rnd, impl=name, tflops=tflops, clock_mhz=clock,
                               power_w=power, kernel=flashattn.last_kernel(q.device)
                               if name == "flashattn" else None)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        del q, k, v, qt, kt, vt
        torch.cuda.empty_cache()
    sampler.stop()
    print("| cell | impl | TFLOP/s | MHz | W | TFLOP/s per GHz |")
    for r in rows:
        if r["clock_mhz"]:
            print("| %s | %s | %.0f | %.0f | %.0f | %.0f |" % (
                r["cell"], r["impl"], r["tflops"], r["clock_mhz"], r["power_w"],
                r["tflops"] / r["clock_mhz"] * 1000))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), backend=args.backend, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
