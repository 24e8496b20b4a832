#!/usr/bin/env python3
"""How evenly the sm90 forward's persistent walk spreads causal work over the
CTAs: a model, no GPU.

    python3 bench/tile_balance_model.py [--sms 132]

For each cell of the FA3 grid (16k tokens, hidden 2048, causal) it builds
the tile list as the launch does (src/cuda/sm90/fwd_sm90.cu: sections of
heads within 32 MB of K/V, one round per section at <= 8 m blocks; tiles
heaviest first within a section, fwd_kernel.cuh fa_sm90_tile_of), gives
each tile a cost of its key blocks + 0.5 (the per-tile work that does not
scale with its keys), walks it as fa_tile_iter does, and prints the spread:
(max - mean) / max of the CTAs' totals, the share of the kernel the average
SM would idle at the end.

Walks: `snake` (the kernel's: round r of section c runs forward when
r + c is even) and `rotated` (the seventeenth session's variant: in sections
of more than one round, positions rotated by the earlier sections' tiles
and the snake turning with r alone; perf-sm90.md). At locked clocks ncu
read our SMs idle 5.4% of the kernel at hdim 128 causal 2k against FA3's
2.4% (its dynamic schedule), as the model's 3% predicts; free-running, the
rotated walk measured no faster (the idle SMs' power goes to the others'
clocks)."""
import argparse
import math

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--sms", type=int, default=132, help="persistent CTAs (one per SM)")
args = ap.parse_args()


def sections(num_m, head_batches, per_section):
    """Tile costs per section, heaviest first (m block descending, heads fastest)."""
    out = []
    for first in range(0, head_batches, per_section):
        heads = min(per_section, head_batches - first)
        out.append([(num_m - 1 - i // heads) + 1 + 0.5 for i in range(heads * num_m)])
    return out


def spread(secs, g, rotated):
    """(max - mean) / max of the CTAs' totals under fa_tile_iter's walk."""
    work = [0.0] * g
    section_units = len(secs[0])
    rotate = rotated and section_units > g
    for c, tiles in enumerate(secs):
        first = c * section_units
        for b in range(g):
            q = (b - first) % g if rotate else b
            r = 0
            while True:
                turn = (r if rotate else r + c) & 1
                pos = r * g + (g - 1 - q if turn else q)
                if pos >= len(tiles):
                    break
                work[b] += tiles[pos]
                r += 1
    mean = sum(work) / g
    return (max(work) - mean) / max(work)


print("hdim seqlen  m blocks  heads/section  snake  rotated")
for d in (64, 128, 256):
    for s in (512, 1024, 2048, 4096, 8192, 16384):
        block_m = 192 if d == 64 and s >= 2048 else 128  # the causal configs (fwd_sm90.cu)
        num_m = math.ceil(s / block_m)
        head_batches = (16384 // s) * (2048 // d)
        per_section = max(1, (32 << 20) // (4 * s * d))
        if num_m <= 8 and 1 <= args.sms // num_m < per_section:
            per_section = args.sms // num_m
        per_section = min(per_section, head_batches)
        secs = sections(num_m, head_batches, per_section)
        print(f"{d:4d} {s:6d} {num_m:9d} {per_section:14d} {100 * spread(secs, args.sms, False):5.1f}% "
              f"{100 * spread(secs, args.sms, True):7.1f}%")
