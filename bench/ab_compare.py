"""Per-cell comparison of library variants measured by scripts/device_ab.sh.

    python3 bench/ab_compare.py DIR [--pass fwd|bwd] [--peer sdpa-flash|sdpa-cudnn] [--variants a,b]

DIR holds ab-<variant>-<round>.json (gpu_bench.py bench output), or for a
round cut short by its time limit, bench-<variant>-<round>.log (the
per-cell lines gpu_bench prints as it goes; default tokens and hidden
assumed). For each
cell (hdim, causal, seqlen): each variant's TFLOP/s and its ratio to the
peer measured in the same run, both the mean over the rounds; last, the
geometric mean of the ratios over the cells every variant has. Ratios to
the same-run peer, not raw TFLOP/s, are what compare across rounds.
"""
import argparse
import glob
import json
import math
import os
import re


def load_rows(path):
    data = json.load(open(path))
    return data["rows"] if isinstance(data, dict) else data


def log_rows(path, tokens=16384, hidden=2048):
    """Rows as in the JSON from the cell lines of a bench log."""
    rows = []
    for line in open(path):
        if not line.startswith('{"hdim"'):
            continue
        cell = json.loads(line)
        d, s, causal = cell["hdim"], cell["seqlen"], cell["causal"]
        fwd_flops = 4 * (tokens // s) * s * s * (hidden // d) * d / (2 if causal else 1)
        for impl, ms in cell["ms"].items():
            if not isinstance(ms, list):
                continue
            row = dict(impl=impl, hdim=d, causal=causal, seqlen=s)
            # ms: [fwd, fwd+bwd, bwd] (gpu_bench's measure_cell)
            for i, (name, flops) in enumerate((("fwd", fwd_flops), ("bwd", 2.5 * fwd_flops))):
                t = ms[2 * i] if len(ms) > 2 * i else None
                row[name + "_tflops"] = flops / t / 1e9 if t else None
            rows.append(row)
    return rows


def variant_ratios(directory, variant, key, peer):
    """{cell: [(tflops, ratio to peer), ...]} over the variant's rounds."""
    out = {}
    paths = sorted(glob.glob(os.path.join(directory, f"ab-{variant}-*.json")))
    done = {re.search(r"-(\d+)\.json$", p).group(1) for p in paths}
    paths += [p for p in sorted(glob.glob(os.path.join(directory, f"bench-{variant}-*.log")))
              if re.search(r"-(\d+)\.log$", p).group(1) not in done]
    for path in paths:
        rows = load_rows(path) if path.endswith(".json") else log_rows(path)
        ours = {(r["hdim"], r["causal"], r["seqlen"]): r for r in rows if r["impl"] == "flashattn"}
        theirs = {(r["hdim"], r["causal"], r["seqlen"]): r for r in rows if r["impl"] == peer}
        for cell, r in ours.items():
            p = theirs.get(cell)
            if p and r.get(key) and p.get(key):
                out.setdefault(cell, []).append((r[key], r[key] / p[key]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--pass", dest="which", choices=["fwd", "bwd"], default="bwd")
    ap.add_argument("--peer", default="sdpa-flash", choices=["sdpa-flash", "sdpa-cudnn"])
    ap.add_argument("--variants", help="comma-separated, in column order (default: every ab-*.json, sorted)")
    args = ap.parse_args()
    if args.variants:
        variants = args.variants.split(",")
    else:
        names = {re.match(r"(?:ab-(.+)-\d+\.json|bench-(.+)-\d+\.log)$", os.path.basename(p)).group(1, 2)
                 for p in glob.glob(os.path.join(args.dir, "ab-*-*.json")) + glob.glob(os.path.join(args.dir, "bench-*-*.log"))}
        names = {a or b for a, b in names}
        variants = sorted(names)
    if not variants:
        raise SystemExit(f"no ab-<variant>-<round>.json or bench-<variant>-<round>.log in {args.dir}")
    key = args.which + "_tflops"
    data = {v: variant_ratios(args.dir, v, key, args.peer) for v in variants}
    cells = sorted(set.intersection(*(set(d) for d in data.values())))
    if not cells:
        raise SystemExit("no cell that every variant has")
    print(f"{args.which} TFLOP/s and ratio to {args.peer} (mean over rounds)")
    print("hdim causal seqlen | " + " | ".join(f"{v:>14}" for v in variants))
    logs = {v: [] for v in variants}
    for cell in cells:
        parts = []
        for v in variants:
            xs = data[v][cell]
            tflops = sum(x[0] for x in xs) / len(xs)
            ratio = sum(x[1] for x in xs) / len(xs)
            logs[v].append(math.log(ratio))
            parts.append(f"{tflops:7.1f} {ratio:.3f}")
        print(f"{cell[0]:4d} {int(cell[1]):6d} {cell[2]:6d} | " + " | ".join(parts))
    print("geomean " + "  ".join(f"{v} {math.exp(sum(l) / len(l)):.4f}" for v, l in logs.items()))


if __name__ == "__main__":
    main()
