"""Forwards of few query rows over long keys (KV-cache decoding, chunked
prefill, speculative decoding), where the grid has fewer tiles than the GPU
has SMs: ours with the automatic choice (on Hopper the sm90 key split with
the query heads of a KV head packed, where it has one), the Hopper forward
without its split (FA_SM90_FWD_SPLIT=1), the sm80 backend (its key split),
and PyTorch SDPA's FLASH_ATTENTION and CUDNN_ATTENTION (GQA through
enable_gqa; not with --causal, whose SDPA mask is top-left aligned where
ours is bottom-right), timed in one process as bench/gpu_bench.py times
them.

    FLASHATTN_LIB=... PYTHONPATH=python python3 bench/decode_bench.py \\
        [--causal] [--out decode.json] batch:heads_q:heads_kv:hdim:seqlen_q:seqlen_k ...

(batch:heads:hdim:seqlen_q:seqlen_k: heads_kv = heads.) Prints µs per call
and each contender's time relative to auto; bf16. Every contender of ours
is checked against a float32 reference first.
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
from gpu_bench import time_contenders  # noqa: E402

PARTS_ENV = ("FA_SM90_FWD_SPLIT", "FA_SM80_FWD_SPLIT")  # --parts sets both
SPLIT_ENV = PARTS_ENV + ("FA_SM90_SPLIT_BLOCK_M", "FA_SM90_PACK_GQA", "FA_SM80_PACK_GQA")


def ours(q, k, v, causal, backend, env=None):
    """Our forward on `backend` with the split variables of `env` set for the
    call and the others unset (the library reads them at each call; one
    exported before the run does not reach any contender)."""
    def fwd():
        flashattn.set_backend(backend)
        for name in SPLIT_ENV:
            if env and name in env:
                os.environ[name] = env[name]
            else:
                os.environ.pop(name, None)
        return flash_attn_func(q, k, v, causal=causal)
    return fwd


def sdpa(backend_name, q, k, v):
    """SDPA's backend on (b, s, h, d) tensors, GQA by enable_gqa."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F
    backend = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}[backend_name]
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    gqa = q.shape[2] != k.shape[2]

    def fwd():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=gqa)
    return fwd


def reference(q, k, v, causal):
    """float32 attention, bottom-right causal; (b, sq, hq, d)."""
    group = q.shape[2] // k.shape[2]
    kf, vf = (t.float().repeat_interleave(group, dim=2) for t in (k, v))
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), kf) * q.shape[-1] ** -0.5
    if causal:
        sq, sk = q.shape[1], k.shape[1]
        i = torch.arange(sq, device=q.device)[:, None]
        j = torch.arange(sk, device=q.device)[None, :]
        s = s.masked_fill(j > i + sk - sq, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), vf)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shapes", nargs="+")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--parts", default="",
                    help="comma-separated part counts: also time auto with FA_SM90_FWD_SPLIT / FA_SM80_FWD_SPLIT "
                         "forced to each (how the split's model chose)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="also time auto with this split variable set (e.g. FA_SM90_SPLIT_BLOCK_M=128)")
    ap.add_argument("--allocs", type=int, default=1,
                    help="time each shape on this many fresh allocations, the earlier ones kept alive (the "
                         "short shapes' times follow where the tensors land)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    parts = [p for p in a.parts.split(",") if p]
    variants = {f"auto {e}": dict([e.split("=", 1)]) for e in a.env}
    hopper = torch.cuda.get_device_capability() == (9, 0)
    rows = []
    names = (["auto"] + [f"auto k={k}" for k in parts] + list(variants) + (["sm90 whole"] if hopper else []) +
             ["sm80"] + ([] if a.causal else ["sdpa-flash", "sdpa-cudnn"]))
    print(f"{'b:hq:hk:d:sq:sk':26} " + " ".join(f"{n:>22}" for n in names) + ("  (causal)" if a.causal else ""))
    keep = []
    for shape in [s for s in a.shapes for _ in range(a.allocs)]:
        dims = [int(x) for x in shape.split(":")]
        b, hq, hk, d, sq, sk = dims if len(dims) == 6 else dims[:2] + dims[1:]
        q = torch.randn(b, sq, hq, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(b, sk, hk, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        fns = {"auto": ours(q, k, v, a.causal, "auto"),
               "sm90 whole": ours(q, k, v, a.causal, "cuda_sm90", {"FA_SM90_FWD_SPLIT": "1"}),
               "sm80": ours(q, k, v, a.causal, "cuda_sm80"),
               "sdpa-flash": sdpa("sdpa-flash", q, k, v), "sdpa-cudnn": sdpa("sdpa-cudnn", q, k, v)}
        keep += [q, k, v]
        for count in parts:
            fns[f"auto k={count}"] = ours(q, k, v, a.causal, "auto", {n: count for n in PARTS_ENV})
        for name, env in variants.items():
            fns[name] = ours(q, k, v, a.causal, "auto", env)
        fns = {n: fns[n] for n in names}
        ref = reference(q, k, v, a.causal)
        kernels = {}
        for name in ["auto", "sm90 whole", "sm80"] + [f"auto k={k}" for k in parts] + list(variants):
            if name in fns:
                err = (fns[name]().float() - ref).abs().max().item()
                assert err < 2e-2, f"{shape} {name}: max difference {err} from the reference"
                kernels[name] = flashattn.last_kernel(q.device)
        times, errors = time_contenders(fns, calls=5, reps=a.reps, rep_ms=5.0, max_calls=200)
        base = times.get("auto")
        cells = []
        for name in fns:
            t = times.get(name)
            cells.append(f"{t * 1e3:9.1f} us ({t / base:5.2f}x)" if t and base else f"{'-':>22}")
        print(f"{shape:26} " + " ".join(f"{c:>22}" for c in cells) + (f"  {errors}" if errors else ""),
              flush=True)
        print("  ran " + ", ".join(f"{n}: {kn}" for n, kn in kernels.items()), flush=True)
        rows.append({"shape": shape, "causal": a.causal, "us": {n: t * 1e3 for n, t in times.items()},
                     "errors": errors, "kernels": kernels})
    for name in SPLIT_ENV:
        os.environ.pop(name, None)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
