#!/usr/bin/env python3
"""Static instruction mix of each kernel's main loop, from its SASS.

    cuobjdump -sass libflashattn.so > lib.sass
    scripts/sass_mix.py lib.sass [--fun REGEX] [--outer] [--top N]

For each function whose mangled name matches REGEX, the loop chosen is the
innermost one (a backward branch before the last EXIT, and its target) that holds a
tensor-core instruction (HGMMA or HMMA); --outer takes the loop holding the
most of them instead (the sm80 kernels' loops nest). Its instructions are
counted by opcode, every path of the body once: a static count, not the
executed one, so it compares builds of one kernel (how a source change
moved ptxas's output) rather than kernels with each other.

What it answers without a GPU, in seconds: e.g. how many uniform
instructions (UMOV, UIADD3, ...) the sm90 forward spends on wgmma
descriptors per key block (perf-sm90.md, seventeenth session).

--mufu: how the loop's exponentials are spaced. The special-function unit
takes a warp's MUFU every 8 cycles, so a softmax stretch issues one MUFU
per 8 cycles and whatever ptxas places between them is free; the report
counts the instructions between consecutive MUFU.EX2 (gaps of at most 30),
the fixed stall cycles ptxas encodes there (the control word's 4-bit
stall count, bits 41-44 of each instruction's second 64-bit word), and the
opcodes that fill the gaps (perf-sm90.md, eighteenth session: FA3's
forward places ~4 instructions per MUFU there, ours ~2)."""
import argparse
import collections
import re

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("sass", help="cuobjdump -sass output")
ap.add_argument("--fun", default=".", help="regex on the mangled function name")
ap.add_argument("--top", type=int, default=25, help="opcodes listed per function")
ap.add_argument("--outer", action="store_true", help="the loop with the most MMA, not the innermost")
ap.add_argument("--mufu", action="store_true", help="the spacing of the loop's MUFU.EX2 (see above)")
args = ap.parse_args()

# function -> [(address, instruction text)]; stall cycles per address
funcs, stalls, cur, last = {}, {}, None, None
with open(args.sass) as f:
    for line in f:
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = m.group(1)
            funcs[cur] = []
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m and cur:
            last = (cur, int(m.group(1), 16))
            funcs[cur].append((last[1], m.group(2).strip()))
            continue
        m = re.match(r"\s*/\* (0x[0-9a-f]{16}) \*/\s*$", line)
        if m and last:  # the instruction's second word: control bits on top
            stalls[last] = (int(m.group(1), 16) >> 41) & 15
            last = None


def opcode(text):
    """'@!P0 HGMMA.64x128x16.F32.BF16 R24, ...' -> 'HGMMA.64x128x16.F32.BF16'"""
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0]


def is_mma(text):
    return re.match(r"HG?MMA", opcode(text)) is not None


for name, ins in funcs.items():
    if not re.search(args.fun, name):
        continue
    index = {address: i for i, (address, _) in enumerate(ins)}
    # Out-of-line stubs (an mbarrier wait's retry) follow the last EXIT and
    # branch back into the body: their branches are no loops.
    exits = [address for address, text in ins if opcode(text) == "EXIT"]
    body_end = exits[-1] if exits else ins[-1][0]
    best = None  # (key, first, last)
    for i, (address, text) in enumerate(ins):
        m = re.search(r"BRA (?:\S+ )?(0x[0-9a-f]+)", text)
        if not m:
            continue
        target = int(m.group(1), 16)
        if target >= address or target not in index or address > body_end:
            continue
        body = ins[index[target]:i + 1]
        mma = sum(is_mma(t) for _, t in body)
        key = (mma, len(body)) if args.outer else (mma > 0, -len(body))
        if best is None or key > best[0]:
            best = (key, index[target], i)
    print(name)
    if best is None:
        print("  no loop")
        continue
    _, first, last = best
    body = ins[first:last + 1]
    mix = collections.Counter(opcode(t) for _, t in body)
    uniform = sum(c for op, c in mix.items() if op.startswith("U") and not op.startswith("UTMA"))
    print(f"  loop 0x{body[0][0]:x}-0x{body[-1][0]:x}: {len(body)} instructions, "
          f"{sum(is_mma(t) for _, t in body)} MMA, {uniform} uniform")
    print("  " + ", ".join(f"{op} {c}" for op, c in mix.most_common(args.top)))
    if args.mufu:
        where = [i for i, (_, t) in enumerate(body) if opcode(t).startswith("MUFU.EX2")]
        gaps = [(a, b) for a, b in zip(where, where[1:]) if b - a <= 30]
        fill = collections.Counter(opcode(t) for a, b in gaps for _, t in body[a + 1:b])
        cycles = collections.Counter(sum(stalls.get((name, body[k][0]), 0) for k in range(a, b)) for a, b in gaps)
        per = sum(fill.values()) / len(gaps) if gaps else 0.0
        print(f"  MUFU.EX2 {len(where)}, {per:.1f} instructions between consecutive ones; "
              f"stall cycles between them: {dict(sorted(cycles.items()))}")
        print("  between them: " + ", ".join(f"{op} {c}" for op, c in fill.most_common(args.top)))
