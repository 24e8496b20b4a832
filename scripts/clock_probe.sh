#!/usr/bin/env bash
# Sustained speed and the SM clock / power it runs at, ours next to cuDNN
# (PyTorch SDPA), on the device machine: samples nvidia-smi every 100 ms
# while each contender runs one cell back to back for a few seconds.
#   scripts/clock_probe.sh HARNESS [seconds] [cells...]   cells as hdim:causal:seqlen
# HARNESS is a built scripts/sm90_dev (scripts/device_sm90.sh build).
set -uo pipefail
cd "$(dirname "$0")/.."
HARNESS=$1; SECS=${2:-4}; shift 2 || shift $#
CELLS=${*:-128:0:16384 256:0:16384 64:0:16384}
LOGS=${OUT:-/tmp}/clock_probe; mkdir -p "$LOGS"
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu --format=csv,noheader,nounits -lms 100 \
    >"$LOGS/smi.csv" &
smi=$!
stamp() { date +"%Y/%m/%d %H:%M:%S.%3N"; }
: >"$LOGS/spans.txt"
for cell in $CELLS; do
    IFS=: read -r d c s <<<"$cell"
    # the span is the launch loop only (the harness sets up in well under
    # a second; Python's import takes seconds, so it reports its own span)
    t0=$(stamp); "$HARNESS" --burn "$d" "$c" "$s" "$SECS" >"$LOGS/ours-$d-$c-$s.log"; t1=$(stamp)
    echo "ours $d $c $s|$t0|$t1|$(tail -1 "$LOGS/ours-$d-$c-$s.log" | awk '{print $(NF-4)}')" >>"$LOGS/spans.txt"
    span=$(python3 - "$d" "$c" "$s" "$SECS" <<'PY'
import sys, time, datetime, torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
d, c, s, secs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
b, h = 16384 // s, 2048 // d
q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
flops = 4.0 * b * s * s * h * d / (2 if c else 1)
e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
stamp = lambda: datetime.datetime.now().strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]
with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
    F.scaled_dot_product_attention(q, k, v, is_causal=bool(c))
    torch.cuda.synchronize()
    start = stamp()
    end, last = time.time() + secs, 0.0
    while time.time() < end:
        e0.record()
        for _ in range(50):
            F.scaled_dot_product_attention(q, k, v, is_causal=bool(c))
        e1.record(); e1.synchronize()
        last = flops * 50 / (e0.elapsed_time(e1) * 1e-3) / 1e12
print(f"{start}|{stamp()}|{last:.1f}")
PY
)
    echo "cudnn $d $c $s|$span" >>"$LOGS/spans.txt"
done
kill $smi
# per span: TFLOP/s of the last second, and the mean SM clock / power over
# its second half (past the ramp)
python3 - "$LOGS/smi.csv" "$LOGS/spans.txt" <<'PY'
import sys
from datetime import datetime
fmt = "%Y/%m/%d %H:%M:%S.%f"
rows = []
for line in open(sys.argv[1]):
    f = [x.strip() for x in line.split(",")]
    try:
        rows.append((datetime.strptime(f[0], fmt), float(f[1]), float(f[2]), float(f[3])))
    except (ValueError, IndexError):
        pass
print(f"{'who':<6} {'hdim':>4} {'causal':>6} {'seqlen':>6} {'TFLOP/s':>8} {'MHz':>6} {'W':>6} {'C':>4}")
for line in open(sys.argv[2]):
    who, t0, t1, tf = line.strip().split("|")
    a, b = datetime.strptime(t0, fmt), datetime.strptime(t1, fmt)
    mid = a + (b - a) / 2
    sel = [r for r in rows if mid <= r[0] <= b]
    n = max(len(sel), 1)
    name, d, c, s = who.split()
    print(f"{name:<6} {d:>4} {c:>6} {s:>6} {float(tf or 0):8.1f} {sum(r[1] for r in sel)/n:6.0f} "
          f"{sum(r[2] for r in sel)/n:6.0f} {sum(r[3] for r in sel)/n:4.0f}")
PY
