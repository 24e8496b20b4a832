"""Our forward's kernel cycles at locked clocks, for comparing kernel
variants without the power cap in the way. Free-running, the H100 sits at
its power cap: a variant that does the same work in fewer cycles draws more
power per cycle, gets a lower clock, and its gain shrinks into the A/B's
noise (docs/perf-sm90.md, nineteenth session). ncu locks the clocks and
counts the cycles of each launch exactly, so a 1% per-cycle difference
shows.

Runs `--reps` forwards of each cell (bf16, 16k tokens, hidden 2048, the
FA3 grid's shapes) under ncu, which records one metric per launch:

    FLASHATTN_LIB=... ncu --kernel-name regex:fa_sm90_fwd \\
        --metrics gpc__cycles_elapsed.max --csv --log-file LOG \\
        python3 bench/locked_cycles.py [--reps 3] hdim:causal:seqlen ...
    python3 bench/locked_cycles.py [--reps 3] hdim:causal:seqlen ... --summarize LOG [LOG ...]

The summary prints, per cell, the median cycles of each log (one log per
library variant) and its ratio to the first log's.

`--backward` runs a forward and a backward per rep (time the backward's
main kernel with the matching ncu filter, e.g. `regex:backward_kernel`
for the portable one), `--backend` forces a library backend (e.g.
cuda_sm80).
"""

import argparse
import csv
import os
import statistics
import sys


def run(cells, reps, backward=False, backend=None):
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import flashattn
    from flashattn import flash_attn_func

    if backend:
        flashattn.set_backend(backend)
    for cell in cells:
        d, causal, s = (int(x) for x in cell.split(":"))
        b, h = 16384 // s, 2048 // d
        q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
                   for _ in range(3))
        dout = torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) if backward else None
        for _ in range(reps):
            with torch.set_grad_enabled(backward):
                out = flash_attn_func(q, k, v, causal=bool(causal))
                if backward:
                    torch.autograd.grad(out, (q, k, v), dout)
        torch.cuda.synchronize()
        print(cell, file=sys.stderr)


def ncu_launches(log):
    """Each launch's (or range's) {metric: value} from an ncu --csv log, in
    launch order."""
    with open(log) as f:
        rows = [r for r in csv.reader(line for line in f if line.startswith('"'))]
    header, rows = rows[0], rows[1:]
    ids, names, values = header.index("ID"), header.index("Metric Name"), header.index("Metric Value")
    launches = {}
    for r in rows:
        launches.setdefault(int(r[ids]), {})[r[names]] = float(r[values].replace(",", ""))
    return [launches[i] for i in sorted(launches)]


def cycles_of(log, cells, reps):
    """The launches' cycles from an ncu --csv log, in launch order."""
    got = [m["gpc__cycles_elapsed.max"] for m in ncu_launches(log)]
    if len(got) != len(cells) * reps:
        raise SystemExit(f"{log}: {len(got)} launches, expected {len(cells) * reps}")
    return {c: statistics.median(got[i * reps:(i + 1) * reps]) for i, c in enumerate(cells)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cells", nargs="*", help="hdim:causal:seqlen")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--backward", action="store_true", help="a forward and a backward per rep")
    ap.add_argument("--backend", default=None, help="force a library backend, e.g. cuda_sm80")
    ap.add_argument("--summarize", nargs="+", metavar="LOG", help="ncu logs, one per variant (same cells, same reps)")
    args = ap.parse_args()
    if not args.cells:
        raise SystemExit("no cells")
    if not args.summarize:
        run(args.cells, args.reps, args.backward, args.backend)
        return
    base = None
    for log in args.summarize:
        cyc = cycles_of(log, args.cells, args.reps)
        base = base or cyc
        print(os.path.basename(log), " ".join(f"{c} {cyc[c]:.0f} ({cyc[c] / base[c]:.3f})" for c in args.cells))


if __name__ == "__main__":
    main()
