"""Decoding over a KV cache whose sequences have different lengths: what
the KV-cache options of the C API (seqused_k, a paged cache) cost against
the same keys laid out for a plain call, and against the one call per
sequence the Python binding made before them. Timed in one process as
bench/gpu_bench.py times contenders.

    FLASHATTN_LIB=... PYTHONPATH=python python3 bench/kvcache_bench.py \\
        [--out kvcache.json] batch:heads_q:heads_kv:hdim:cache_len ...

One query row per sequence, bf16; sequence b uses lengths[b] keys, drawn
in [cache_len / 4, cache_len] (seeded). Contenders:
  seqused       the library's forward with seqused_k (one call)
  paged16/256   the same keys in a paged cache of 16 / 256-key pages in a
                shuffled order (one call)
  kvcache       flash_attn_with_kvcache(cache_seqlens=...): the binding's
                checks (a host read of the lengths) + the seqused call
  *-trust       the same with flashattn.set_kv_cache_checks(False): no host
                copy of the lengths / table, no wait for the stream
  sm80-trust    seqused-trust on the sm80 backend (forced)
  per-seq       one flash_attn_func per sequence over its keys (the
                binding's path before the KV-cache options)
  full          flash_attn_func over all cache_len keys of every sequence
                (the work of padding every sequence to the longest)
  sdpa-flash    PyTorch SDPA FLASH_ATTENTION over all cache_len keys
                (heads_q == heads_kv only)
Prints µs per call and the ratio to `full`; the key bytes read by the
seqused-trust call over its time as GB/s.
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flashattn  # noqa: E402
from flashattn import _ops, flash_attn_func, flash_attn_with_kvcache  # noqa: E402
from gpu_bench import sdpa_forward, time_contenders  # noqa: E402


def paged_copy(k, v, page, gen):
    """(k_pages, v_pages, table): k / v (b, L, h, d) in pages of `page`
    keys, the pages of all sequences in one shuffled order."""
    b, length, h, d = k.shape
    per_seq = length // page
    table = torch.randperm(b * per_seq, generator=gen).view(b, per_seq).to(k.device)
    kp = torch.empty(b * per_seq, page, h, d, dtype=k.dtype, device=k.device)
    vp = torch.empty_like(kp)
    kp[table] = k.view(b, per_seq, page, h, d)
    vp[table] = v.view(b, per_seq, page, h, d)
    return kp, vp, table.to(torch.int32)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shapes", nargs="+")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    rows = []
    names = ("seqused", "seqused-trust", "sm80-trust", "paged16", "paged16-trust", "paged256", "paged256-trust",
             "kvcache", "kvcache-trust", "per-seq", "full", "sdpa-flash")
    print(f"{'b:hq:hkv:d:L':22} " + " ".join(f"{n:>20}" for n in names) + "   seqused-trust GB/s")
    for shape in a.shapes:
        b, hq, hkv, d, length = (int(x) for x in shape.split(":"))
        gen = torch.Generator().manual_seed(b * 7919 + length)
        lengths = torch.randint(length // 4, length + 1, (b,), generator=gen).tolist()
        used = torch.tensor(lengths, dtype=torch.int32, device="cuda")
        q = torch.randn(b, 1, hq, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(b, length, hkv, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        pages = {p: paged_copy(k, v, p, gen) for p in (16, 256)}
        flashattn.set_backend("auto")

        def trusted(fn):
            def run():
                flashattn.set_kv_cache_checks(False)
                try:
                    return fn()
                finally:
                    flashattn.set_kv_cache_checks(True)
            return run

        fns = {
            "seqused": lambda: _ops.kv_cache_forward(q, k, v, used)[0],
            "paged16": lambda: _ops.kv_cache_forward(q, pages[16][0], pages[16][1], used, pages[16][2])[0],
            "paged256": lambda: _ops.kv_cache_forward(q, pages[256][0], pages[256][1], used, pages[256][2])[0],
            "kvcache": lambda: flash_attn_with_kvcache(q, k, v, cache_seqlens=used),
            "per-seq": lambda: torch.cat([flash_attn_func(q[i:i + 1], k[i:i + 1, :n], v[i:i + 1, :n])
                                          for i, n in enumerate(lengths)]),
            "full": lambda: flash_attn_func(q, k, v),
        }
        for name in ("seqused", "paged16", "paged256", "kvcache"):
            fns[name + "-trust"] = trusted(fns[name])

        def on_sm80(fn):
            def run():
                flashattn.set_backend("cuda_sm80")
                try:
                    return fn()
                finally:
                    flashattn.set_backend("auto")
            return run

        fns["sm80-trust"] = on_sm80(fns["seqused-trust"])
        if hq == hkv:
            fns["sdpa-flash"] = sdpa_forward("sdpa-flash", *(t.transpose(1, 2) for t in (q, k, v)), False)
        # every one-call contender against the per-sequence calls
        ref = fns["per-seq"]().float()
        kernels = {}
        for name in ("seqused", "paged16", "paged256", "kvcache", "seqused-trust", "paged16-trust",
                     "paged256-trust", "kvcache-trust", "sm80-trust"):
            err = (fns[name]().float() - ref).abs().max().item()
            assert err < 2e-2, f"{shape} {name}: max difference {err} from per-seq"
            kernels[name] = flashattn.last_kernel(q.device)
        times, errors = time_contenders(fns, calls=5, reps=a.reps, rep_ms=5.0, max_calls=200)
        base = times.get("full")
        cells = []
        for name in names:
            t = times.get(name)
            cells.append(f"{t * 1e3:8.1f} us ({t / base:5.2f}x)" if t and base else f"{'-':>20}")
        key_bytes = 2 * sum(lengths) * hkv * d * 2  # K and V, bf16
        gbs = key_bytes / (times["seqused-trust"] * 1e-3) / 1e9 if times.get("seqused-trust") else 0.0
        print(f"{shape:22} " + " ".join(f"{c:>20}" for c in cells) + f"   {gbs:8.0f}"
              + (f"  {errors}" if errors else ""), flush=True)
        print(f"  kernels: {kernels}", flush=True)
        rows.append({"shape": shape, "lengths": lengths, "ms": times, "errors": errors,
                     "kernels": kernels, "seqused_GBps": gbs})
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
