"""GPU check and benchmark of the sm80 backend against PyTorch SDPA.

    python3 bench/gpu_bench.py check            # correctness vs a float64 reference
    python3 bench/gpu_bench.py bench [--out F]  # FA3-paper grid, TFLOP/s
    python3 bench/gpu_bench.py profile --dims 128 --seqlens 4096  # one fwd+bwd, for ncu

Uses the flashattn Python package (PYTHONPATH=python, FLASHATTN_LIB=<lib>)
with the sm80 backend forced. The benchmark times, in one process, our
library on its native (b, s, h, d) layout and torch SDPA with the
FLASH_ATTENTION and CUDNN_ATTENTION backends on their native (b, h, s, d)
layout: CUDA events around `--calls` back-to-back calls, median of `--reps`,
fresh random inputs per configuration. FLOPs: forward 4·b·s²·h·d (half when
causal), backward 2.5x the forward.
"""

import argparse
import datetime
import json
import math
import os
import sys

import torch

import flashattn
from flashattn import flash_attn_func, flash_attn_varlen_func


# ---------------------------------------------------------------------------
# Reference (float64, on the GPU)

def reference(q, k, v, causal=False, window=(-1, -1), softcap=0.0, alibi=None, scale=None):
    """q (b, sq, hq, d), k (b, sk, hkv, d), v (b, sk, hkv, dv) -> out, lse."""
    q, k, v = (t.double() for t in (q, k, v))
    b, sq, hq, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    k = k.repeat_interleave(hq // hkv, dim=2)
    v = v.repeat_interleave(hq // hkv, dim=2)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    s = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(sq, device=q.device)[:, None]
    j = torch.arange(sk, device=q.device)[None, :]
    shift = sk - sq
    if alibi is not None:
        s = s - alibi.double()[None, :, None, None] * (i + shift - j).abs()
    left, right = window
    if causal:
        right = 0
    vis = torch.ones(sq, sk, dtype=torch.bool, device=q.device)
    if left >= 0:
        vis &= j >= i + shift - left
    if right >= 0:
        vis &= j <= i + shift + right
    s = s.masked_fill(~vis, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    return torch.einsum("bhij,bjhd->bihd", p, v), lse


def rel_err(x, ref):
    """‖x − ref‖ / ‖ref‖; for a (near) zero reference (e.g. the score
    gradients of rows that see one key) the RMS error instead."""
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return float("nan")
    floor = 1e-6 * math.sqrt(ref.numel())
    return ((x - ref).norm() / max(ref.norm().item(), floor)).item() if ref.norm() > floor \
        else ((x - ref).norm() / math.sqrt(ref.numel())).item()


def check(args):
    """Forward (out, lse) and backward (dq, dk, dv) against float64."""
    torch.manual_seed(0)
    dev = args.device
    flashattn.set_backend("cuda_sm80" if dev == "cuda" else "cpu")
    cases = []
    for dtype in (torch.bfloat16, torch.float16):
        for d in (64, 96, 128, 192, 256, 40):
            cases.append(dict(dtype=dtype, b=2, sq=257, sk=257, hq=4, hkv=4, d=d, dv=d))
    base = dict(dtype=torch.bfloat16, b=2, sq=300, sk=411, hq=6, hkv=2, d=128, dv=128)
    cases += [
        dict(base, causal=True),
        dict(base, sq=411, sk=300, causal=True),
        dict(base, window=(37, 11)),
        dict(base, window=(0, 0)),
        dict(base, softcap=5.0),
        dict(base, alibi=True, causal=True),
        dict(base, hkv=1, d=64, dv=64),
        dict(base, d=128, dv=64),
        dict(base, d=72, dv=72, causal=True),
        dict(base, sq=1, sk=1000),
        dict(base, sq=1000, sk=3, causal=True),  # rows with no key: out 0, lse -inf
        dict(base, varlen=True, causal=True),
        dict(base, deterministic=True, causal=True),
        dict(base, b=1, sq=4096, sk=4096, hq=2, hkv=2, causal=True),
    ]
    if args.quick:  # small cases only (for compute-sanitizer)
        cases = [c for c in cases if c["sq"] * c["sk"] < 200000][::3]
    failures = 0
    for c in cases:
        c = dict(dict(causal=False, window=(-1, -1), softcap=0.0, alibi=False, varlen=False,
                      deterministic=False), **c)
        dt = c["dtype"]
        q = torch.randn(c["b"], c["sq"], c["hq"], c["d"], device=dev, dtype=dt)
        k = torch.randn(c["b"], c["sk"], c["hkv"], c["d"], device=dev, dtype=dt)
        v = torch.randn(c["b"], c["sk"], c["hkv"], c["dv"], device=dev, dtype=dt)
        dout = torch.randn(c["b"], c["sq"], c["hq"], c["dv"], device=dev, dtype=dt)
        alibi = torch.rand(c["hq"], device=dev) * 0.3 if c["alibi"] else None
        qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
        kw = dict(causal=c["causal"], window_size=c["window"], softcap=c["softcap"],
                  alibi_slopes=alibi, deterministic=c["deterministic"], return_attn_probs=True)
        if c["varlen"]:
            # Same sequences, packed: matches the batched reference.
            cu_q = torch.arange(0, c["b"] + 1, device=dev, dtype=torch.int32) * c["sq"]
            cu_k = torch.arange(0, c["b"] + 1, device=dev, dtype=torch.int32) * c["sk"]
            out, lse, _ = flash_attn_varlen_func(
                qs.flatten(0, 1), ks.flatten(0, 1), vs.flatten(0, 1), cu_q, cu_k, c["sq"],
                c["sk"], **kw)
            out = out.view(c["b"], c["sq"], c["hq"], c["dv"])
            lse = lse.view(c["hq"], c["b"], c["sq"]).transpose(0, 1)
        else:
            out, lse, _ = flash_attn_func(qs, ks, vs, **kw)
        kernel = flashattn.last_kernel(q.device)
        out.backward(dout)
        qr, kr, vr = (t.clone().double().requires_grad_() for t in (q, k, v))
        ref_out, ref_lse = reference(qr, kr, vr, c["causal"], c["window"], c["softcap"], alibi)
        ref_out.backward(dout.double())
        # A low-precision baseline (float32 math on the rounded inputs) sets
        # the tolerance: our error may be at most 3x its error + a floor.
        lp_out, _ = reference(q.float(), k.float(), v.float(), c["causal"], c["window"],
                              c["softcap"], alibi)
        base_err = rel_err(lp_out.to(dt), ref_out)
        errs = {
            "out": rel_err(out, ref_out),
            "dq": rel_err(qs.grad, qr.grad),
            "dk": rel_err(ks.grad, kr.grad),
            "dv": rel_err(vs.grad, vr.grad),
        }
        fin = torch.isfinite(ref_lse)
        lse_ok = bool((torch.isinf(lse) == ~fin).all()) and (
            (lse[fin] - ref_lse[fin]).abs().max().item() < 1e-2 if fin.any() else True)
        tol = max(3 * base_err, 2e-2 if dt == torch.bfloat16 else 4e-3)
        ok = lse_ok and all(e <= tol for e in errs.values())
        if c["deterministic"]:
            dq1 = qs.grad.clone()
            qs.grad = None
            out2, _, _ = flash_attn_func(qs, ks, vs, **kw)
            out2.backward(dout)
            ok = ok and torch.equal(dq1, qs.grad)
        failures += not ok
        desc = {key: (str(val).replace("torch.", "") if key == "dtype" else val)
                for key, val in c.items() if val not in (False, 0.0, (-1, -1))}
        print(f"{'ok  ' if ok else 'FAIL'} {kernel:36s} tol {tol:.1e} "
              + " ".join(f"{n} {e:.1e}" for n, e in errs.items())
              + f" lse {'ok' if lse_ok else 'BAD'} {desc}", flush=True)
    print(f"check: {len(cases) - failures}/{len(cases)} passed")
    return 1 if failures else 0


# ---------------------------------------------------------------------------
# Benchmark

def time_ms(fn, calls, reps):
    """Median over reps of the mean time of `calls` back-to-back calls."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / calls)
    times.sort()
    return times[len(times) // 2]


def bench(args):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    flashattn.set_backend("cuda_sm80")
    dt = torch.bfloat16
    rows = []
    for d in args.dims:
        for causal in (False, True):
            for s in args.seqlens:
                b, h = args.tokens // s, args.hidden // d
                fwd_flops = 4 * b * s * s * h * d / (2 if causal else 1)
                q, k, v, dout = (torch.randn(b, s, h, d, device="cuda", dtype=dt)
                                 for _ in range(4))
                impls = {}
                qa, ka, va = (t.clone().requires_grad_() for t in (q, k, v))

                def ours_fwd():
                    return flash_attn_func(qa, ka, va, causal=causal)

                def ours_fwd_bwd():
                    ours_fwd().backward(dout)
                impls["flashattn-sm80"] = (ours_fwd, ours_fwd_bwd)
                qt, kt, vt, dt_ = (t.transpose(1, 2).contiguous() for t in (q, k, v, dout))
                qt, kt, vt = (t.requires_grad_() for t in (qt, kt, vt))
                for name, backend in (("sdpa-flash", SDPBackend.FLASH_ATTENTION),
                                      ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)):
                    def fwd(backend=backend):
                        with sdpa_kernel(backend):
                            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)

                    def fwd_bwd(fwd=fwd):
                        fwd().backward(dt_)
                    impls[name] = (fwd, fwd_bwd)
                for name, (fwd, fwd_bwd) in impls.items():
                    row = dict(impl=name, hdim=d, causal=causal, seqlen=s, batch=b, heads=h)
                    try:
                        with torch.no_grad():
                            t_f = time_ms(fwd, args.calls, args.reps)
                        t_fb = time_ms(fwd_bwd, args.calls, args.reps)
                        row.update(fwd_ms=t_f, fwd_bwd_ms=t_fb,
                                   fwd_tflops=fwd_flops / t_f / 1e9,
                                   bwd_tflops=2.5 * fwd_flops / max(t_fb - t_f, 1e-9) / 1e9,
                                   fwd_bwd_tflops=3.5 * fwd_flops / t_fb / 1e9)
                    except Exception as e:  # an SDPA backend may refuse a shape
                        row.update(error=str(e).splitlines()[0][:200])
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                del q, k, v, dout, qa, ka, va, qt, kt, vt, dt_
                torch.cuda.empty_cache()
    result = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  device=torch.cuda.get_device_name(), torch=torch.__version__,
                  cudnn=torch.backends.cudnn.version(), tokens=args.tokens,
                  hidden=args.hidden, dtype="bf16", rows=rows)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print_table(rows)
    if args.plot:
        plot(rows, args.plot)
    return 0


def print_table(rows):
    print(f"{'hdim':>4} {'causal':>6} {'seqlen':>6} | {'fwd+bwd TFLOP/s: ours':>21} "
          f"{'sdpa-flash':>10} {'sdpa-cudnn':>10} | {'fwd: ours':>9} {'flash':>6} {'cudnn':>6}")
    key = lambda r: (r["hdim"], r["causal"], r["seqlen"])
    by = {}
    for r in rows:
        by.setdefault(key(r), {})[r["impl"]] = r
    for k_, impls in by.items():
        def get(name, field):
            r = impls.get(name, {})
            return f"{r[field]:.0f}" if field in r else "-"
        print(f"{k_[0]:>4} {str(k_[1]):>6} {k_[2]:>6} | {get('flashattn-sm80', 'fwd_bwd_tflops'):>21} "
              f"{get('sdpa-flash', 'fwd_bwd_tflops'):>10} {get('sdpa-cudnn', 'fwd_bwd_tflops'):>10} | "
              f"{get('flashattn-sm80', 'fwd_tflops'):>9} {get('sdpa-flash', 'fwd_tflops'):>6} "
              f"{get('sdpa-cudnn', 'fwd_tflops'):>6}")


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dims = sorted({r["hdim"] for r in rows})
    fig, axes = plt.subplots(2, len(dims), figsize=(5 * len(dims), 8), squeeze=False)
    for col, d in enumerate(dims):
        for row_i, causal in enumerate((False, True)):
            ax = axes[row_i][col]
            for impl in ("flashattn-sm80", "sdpa-flash", "sdpa-cudnn"):
                pts = [(r["seqlen"], r["fwd_bwd_tflops"]) for r in rows
                       if r["impl"] == impl and r["hdim"] == d and r["causal"] == causal
                       and "fwd_bwd_tflops" in r]
                if pts:
                    ax.plot([str(p[0]) for p in pts], [p[1] for p in pts], marker="o", label=impl)
            ax.set_title(f"fwd+bwd, hdim {d}, {'causal' if causal else 'non-causal'}")
            ax.set_xlabel("seqlen")
            ax.set_ylabel("TFLOP/s")
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def profile(args):
    """One fwd+bwd of the first --dims/--seqlens point (for ncu)."""
    flashattn.set_backend("cuda_sm80")
    d, s = args.dims[0], args.seqlens[0]
    b, h = args.tokens // s, args.hidden // d
    q, k, v, dout = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16)
                     for _ in range(4))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    flash_attn_func(q, k, v, causal=args.causal).backward(dout)
    torch.cuda.synchronize()
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("check", "bench", "profile"))
    ap.add_argument("--causal", action="store_true", help="profile: causal")
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--seqlens", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default="gpu-bench.json")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--quick", action="store_true", help="check: a few small cases")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="check: cpu runs the CPU backend (tests this script without a GPU)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device")
        return 77
    return {"check": check, "bench": bench, "profile": profile}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
