#!/usr/bin/env python3
"""Plots the JSON of flashattn-bench-cpu (bench/cpu_bench.c).

    python3 bench/plot_cpu.py cpu-bench.json [-o cpu-bench.png]

Left panels: GFLOP/s against seqlen, flash vs standard attention (OpenBLAS),
forward and backward, one line per dtype / head_dim / causal, with the
measured f32 FMA peak as a dashed line. Right: peak extra memory against
seqlen (memory sweep), flash vs standard, log-log.
Needs matplotlib (Debian: python3-matplotlib).
"""
import argparse
import json
import sys


def series(grid, variant, direction):
    """{(dtype, head_dim, causal): [(seqlen, gflops)]} of the successful runs."""
    lines = {}
    for row in grid:
        run = row.get(variant, {})
        if not run.get("ok"):
            continue
        key = (row["dtype"], row["head_dim"], row["causal"])
        lines.setdefault(key, []).append((row["seqlen"], run[direction]["gflops"]))
    return {k: sorted(v) for k, v in lines.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file")
    parser.add_argument("-o", "--output", default="cpu-bench.png")
    args = parser.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_cpu.py needs matplotlib (Debian: apt-get install python3-matplotlib)")

    with open(args.json_file) as f:
        data = json.load(f)
    grid, memory, peak = data["grid"], data["memory"], data.get("peak_gflops")

    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    keys = sorted({(row["dtype"], row["head_dim"], row["causal"]) for row in grid})
    colors = {key: f"C{i % 10}" for i, key in enumerate(keys)}  # same problem, same color
    for ax, direction in zip(axes[:2], ("forward", "backward")):
        for variant, style in (("flash", "-"), ("standard", ":")):
            for (dtype, head_dim, causal), points in series(grid, variant, direction).items():
                seqlens, gflops = zip(*points)
                label = f"{variant} {dtype} d{head_dim}{' causal' if causal else ''}"
                ax.plot(seqlens, gflops, style, marker="o", label=label,
                        color=colors[(dtype, head_dim, causal)])
        if peak:
            ax.axhline(peak, color="black", linestyle="--", label=f"f32 FMA peak {peak:.0f}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("seqlen")
        ax.set_ylabel("GFLOP/s (FlashAttention FLOP count)")
        ax.set_title(f"{direction}")
        ax.legend(fontsize=6, ncol=2)

    ax = axes[2]
    for variant in ("flash", "standard"):
        points = [(row["seqlen"], row[variant]["backward"]["peak_extra_bytes_measured"])
                  for row in memory if row.get(variant, {}).get("ok")]
        if points:
            seqlens, peak_bytes = zip(*points)
            ax.plot(seqlens, [b / 2**20 for b in peak_bytes], marker="o",
                    label=f"{variant} (measured, fwd+bwd)")
    ax.plot([row["seqlen"] for row in memory],
            [row["standard_extra_bytes"] / 2**20 for row in memory], "k:",
            label="standard: P + scratch (size)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("seqlen")
    ax.set_ylabel("peak extra memory (MiB)")
    ax.set_title("memory")
    ax.legend(fontsize=7)

    machine = data.get("machine", {})
    fig.suptitle(f"flashattn CPU vs standard attention (OpenBLAS): {machine.get('model', '')}, "
                 f"{machine.get('threads', '?')} threads")
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
