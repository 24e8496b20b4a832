"""Forward time by memory layout: ours and the SDPA peers, each on the same
tensors in (b, s, h, d) and in (b, h, s, d) memory.

    python3 bench/layout_probe.py [--backend auto|cuda_sm80] [--dims ..]
        [--seqlens ..] [--out F.json]

gpu_bench times every contender on its native layout (ours (b, s, h, d),
SDPA's (b, h, s, d)). Where a forward is bound by the DRAM stream (short
causal cells) the layout may matter by itself: a (b, s, h, d) tile of one
head is BlockM rows of head_dim·2 bytes, h·d·2 bytes apart, where a
(b, h, s, d) tile is one contiguous run. Each contender here reads the same
values from both layouts (strided views; the library takes any row
strides, SDPA's cuDNN and FLASH backends take (b, h, s, d) views of
(b, s, h, d) memory, as after a model's q.view(b, s, h, d).transpose(1, 2)),
timed with gpu_bench's time_contenders in one fixed order (the three
contenders on (b, s, h, d), then on (b, h, s, d)), each timed rep after one
untimed rep (as the probe ran in the twelfth session). Prints one JSON line
per cell and a table of TFLOP/s."""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flashattn import flash_attn_func  # noqa: E402
from gpu_bench import BACKENDS, PEERS, cuda_ready, sdpa_forward, time_contenders  # noqa: E402


def measure(args, d, causal, s):
    b, h = args.tokens // s, args.hidden // d
    bshd = [torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    bhsd = [t.transpose(1, 2).contiguous() for t in bshd]
    # (b, s, h, d)-shaped views of (b, h, s, d) memory, and the reverse
    views = {"bshd": ([t for t in bshd], [t.transpose(1, 2) for t in bshd]),
             "bhsd": ([t.transpose(1, 2) for t in bhsd], [t for t in bhsd])}
    fns = {}
    for layout, (ours_in, sdpa_in) in views.items():
        fns["flashattn-" + layout] = lambda x=ours_in: flash_attn_func(*x, causal=causal)
        for name in PEERS:
            fns[name + "-" + layout] = sdpa_forward(name, *sdpa_in, causal)
    with torch.no_grad():
        times, errors = time_contenders(fns, args.calls, args.reps, order="fixed", warmup_ms=0.0)
    flops = 4 * b * s * s * h * d / (2 if causal else 1)
    return {n: flops / t / 1e9 for n, t in times.items()}, errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--seqlens", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--causal", type=int, nargs="+", default=[1, 0])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--backend", default="auto", choices=BACKENDS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not cuda_ready(args.backend):
        return 77
    rows = []
    for d in args.dims:
        for causal in args.causal:
            for s in args.seqlens:
                tflops, errors = measure(args, d, bool(causal), s)
                row = dict(hdim=d, causal=bool(causal), seqlen=s, tflops=tflops, errors=errors)
                print(json.dumps(row), flush=True)
                rows.append(row)
    names = sorted({n for r in rows for n in r["tflops"]})
    print("| hdim | causal | seqlen | " + " | ".join(names) + " |")
    for r in rows:
        cells = ["%.0f" % r["tflops"][n] if n in r["tflops"] else "-" for n in names]
        print("| %d | %s | %d | %s |" % (r["hdim"], "yes" if r["causal"] else "no", r["seqlen"],
                                         " | ".join(cells)))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                           cudnn=torch.backends.cudnn.version(), backend=args.backend,
                           rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
