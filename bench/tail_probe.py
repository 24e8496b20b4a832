"""What the last round of tiles costs a forward: runs forwards of shapes
given as backend:hdim:batch:heads:seqlen_q:seqlen_k (bf16, non-causal
unless a seventh field says 1), each `--reps` times, for ncu to count
their cycles at locked clocks:

    FLASHATTN_LIB=... PYTHONPATH=python ncu --kernel-name "regex:fa_sm90_fwd|forward_kernel" \\
        --metrics gpc__cycles_elapsed.max,sm__cycles_active.avg --csv --log-file LOG \\
        python3 bench/tail_probe.py --reps 3 cuda_sm90:128:1:16:16384:16384 cuda_sm90:128:1:16:16896:16384
    python3 bench/tail_probe.py --reps 3 SHAPES... --summarize LOG

With `--ranges` each forward is a profiler range (cudaProfilerStart /
Stop, after a warm-up call outside any range), for `ncu --replay-mode
app-range`: a whole call, its kernels as they overlap, but also the
host's gaps between them (SMs active 0.2-0.9 of the range on the FA3
grid), so compare kernels per launch. (`--replay-mode range` refuses the
library's cudaFuncSetAttribute inside a range.)

Two shapes that differ only in seqlen_q have tiles of the same work (the
key range is seqlen_k); where the larger one fills whole rounds of the
persistent grid (or whole waves of resident CTAs) and the other leaves a
partial last one, cycles per tile show what the partial round costs. The
summary prints per shape the median cycles, the SMs' active share and the
cycles per unit of work relative to the first shape.
"""

import argparse
import os
import statistics
import sys


def parse(shape):
    f = shape.split(":")
    backend, (d, b, h, sq, sk) = f[0], (int(x) for x in f[1:6])
    causal = len(f) > 6 and f[6] == "1"
    return backend, d, b, h, sq, sk, causal


def run(shapes, reps, ranges=False):
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import flashattn
    from flashattn import flash_attn_func

    for shape in shapes:
        backend, d, b, h, sq, sk, causal = parse(shape)
        flashattn.set_backend(backend)
        q = torch.randn(b, sq, h, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(b, sk, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        if ranges:
            flash_attn_func(q, k, v, causal=causal)
        for _ in range(reps):
            if ranges:
                torch.cuda.synchronize()
                torch.cuda.profiler.start()
            flash_attn_func(q, k, v, causal=causal)
            if ranges:
                torch.cuda.synchronize()
                torch.cuda.profiler.stop()
        torch.cuda.synchronize()
        print(shape, file=sys.stderr)


def summarize(shapes, reps, log):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from locked_cycles import ncu_launches

    order = ncu_launches(log)
    if len(order) != len(shapes) * reps:
        sys.exit(f"{log}: {len(order)} launches, expected {len(shapes) * reps}")
    base = None
    print(f"{'shape':40} {'cycles':>12} {'active':>7} {'cycles/work':>12}")
    for i, shape in enumerate(shapes):
        _, d, b, h, sq, sk, _ = parse(shape)
        mine = order[i * reps:(i + 1) * reps]
        cycles = statistics.median(m["gpc__cycles_elapsed.max"] for m in mine)
        active = statistics.median(m["sm__cycles_active.avg"] for m in mine) / cycles
        per_work = cycles / (b * h * sq * sk)
        base = base or per_work
        print(f"{shape:40} {cycles:12.0f} {active:7.3f} {per_work / base:12.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shapes", nargs="+")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ranges", action="store_true", help="one profiler range per forward")
    ap.add_argument("--summarize", metavar="LOG")
    a = ap.parse_args()
    if a.summarize:
        summarize(a.shapes, a.reps, a.summarize)
    else:
        run(a.shapes, a.reps, a.ranges)


if __name__ == "__main__":
    main()
