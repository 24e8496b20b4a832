"""Forwards of few query rows over long keys (KV-cache decoding, chunked
prefill), where the grid has fewer tiles than the GPU has SMs: ours on the
sm80 backend (with its key split, and with FA_SM80_FWD_SPLIT=1: without),
ours with the automatic choice, and PyTorch SDPA's FLASH_ATTENTION and
CUDNN_ATTENTION, timed in one process as bench/gpu_bench.py times them.

    FLASHATTN_LIB=... PYTHONPATH=python python3 bench/decode_bench.py \\
        [--out decode.json] batch:heads:hdim:seqlen_q:seqlen_k ...

Prints µs per call and each contender's time relative to sdpa-flash; bf16,
non-causal (with one query row the same as bottom-right causal).
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flashattn  # noqa: E402
from flashattn import flash_attn_func  # noqa: E402
from gpu_bench import sdpa_forward, time_contenders  # noqa: E402


def ours(q, k, v, backend, split=None):
    def fwd():
        flashattn.set_backend(backend)
        if split is not None:
            os.environ["FA_SM80_FWD_SPLIT"] = split
        try:
            return flash_attn_func(q, k, v)
        finally:
            if split is not None:
                del os.environ["FA_SM80_FWD_SPLIT"]
    return fwd


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shapes", nargs="+")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    rows = []
    print(f"{'b:h:d:sq:sk':24} " + " ".join(f"{n:>22}" for n in
                                             ("sm80", "sm80 whole", "auto", "sdpa-flash", "sdpa-cudnn")))
    for shape in a.shapes:
        b, h, d, sq, sk = (int(x) for x in shape.split(":"))
        q = torch.randn(b, sq, h, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(b, sk, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        fns = {"sm80": ours(q, k, v, "cuda_sm80"), "sm80 whole": ours(q, k, v, "cuda_sm80", "1"),
               "auto": ours(q, k, v, "auto"),
               "sdpa-flash": sdpa_forward("sdpa-flash", qt, kt, vt, False),
               "sdpa-cudnn": sdpa_forward("sdpa-cudnn", qt, kt, vt, False)}
        ref = fns["sdpa-flash"]().transpose(1, 2).float()
        for name in ("sm80", "sm80 whole", "auto"):
            err = (fns[name]().float() - ref).abs().max().item()
            assert err < 2e-2, f"{shape} {name}: max difference {err} from sdpa-flash"
        flashattn.set_backend("cuda_sm80")
        flash_attn_func(q, k, v)
        kernel = flashattn.last_kernel(q.device)
        times, errors = time_contenders(fns, calls=5, reps=a.reps, rep_ms=5.0, max_calls=200)
        base = times.get("sdpa-flash")
        cells = []
        for name in fns:
            t = times.get(name)
            cells.append(f"{t * 1e3:9.1f} us ({t / base:5.2f}x)" if t and base else f"{'-':>22}")
        print(f"{shape:24} " + " ".join(f"{c:>22}" for c in cells) + (f"  {errors}" if errors else ""),
              flush=True)
        rows.append({"shape": shape, "ms": times, "errors": errors, "sm80_kernel": kernel})
        print(f"  sm80 ran {kernel}", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
