"""GPU check and benchmark of the CUDA backends against PyTorch SDPA.

    python3 bench/gpu_bench.py check            # correctness vs a float64 reference
    python3 bench/gpu_bench.py bench [--out F]  # FA3-paper grid, TFLOP/s
    python3 bench/gpu_bench.py profile --dims 128 --seqlens 4096  # one fwd+bwd, for ncu
    python3 bench/gpu_bench.py table --out F.json  # markdown tables of a result file

Uses the flashattn Python package (PYTHONPATH=python, FLASHATTN_LIB=<lib>);
`check` and `profile` force the sm80 backend, `bench` uses `--backend`
(default auto: the dispatcher's choice, i.e. the sm90 kernels on an H100
where they support the problem). The benchmark times, in one process, our
library on its native (b, s, h, d) layout and torch SDPA with the
FLASH_ATTENTION and CUDNN_ATTENTION backends on their native (b, h, s, d)
layout: CUDA events around back-to-back calls (at least `--calls`, as many as
make a rep last ~2 ms, at most 25), median of `--reps`, the contenders'
reps alternating in every order in turn (`--order balanced`), each after
at least `--warmup-ms` of untimed calls of its own (see time_contenders),
fresh random inputs per configuration; `--passes N`
repeats the grid (every other pass in reverse order) and reports the
per-cell median. `--peers` picks the contenders besides ours (default:
sdpa-flash, sdpa-cudnn and cublas); `fa3` is
FlashAttention-3's Hopper forward built outside this project
(bench/fa3_peer/build.sh), loaded from `--fa3-lib`, forward only;
`cublas` is the GEMM ceiling: per cell and direction a square bf16 GEMM
(torch.matmul, i.e. cuBLAS) of about the cell's FLOP count, timed with the
others (see gemm_ceiling). The
backward is timed on its own (torch.autograd.grad on one retained forward
graph, allocating the gradients as a training step does), and
forward+backward together. FLOPs: forward 4·b·s²·h·d (half
when causal), backward 2.5x the forward.
"""

import argparse
import datetime
import itertools
import json
import math
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

def time_contenders(fns, calls, reps, rep_ms=2.0, max_calls=25, order="balanced", warmup_ms=150.0):
    """{name: median over reps of the mean time of back-to-back calls} for
    callables `fns` ({name: fn}). Each contender gets at least `calls` calls
    per rep, and as many as make a rep last ~rep_ms (at most max_calls), so
    that the host time of a rep's first call (the GPU is idle until its
    kernel is queued) is spread over enough GPU work. The reps of the
    contenders alternate (rep 1 of each, then rep 2 of each, ...), so that
    a drift of clock or power state during a cell reaches all of them alike.
    Before each timed rep the contender runs untimed for at least
    `warmup_ms` (and at least one rep's worth), so that the timed rep runs
    in the clock and power state its own work leads to rather than the one
    its predecessor left. `order`: "balanced" (the default) cycles through
    every permutation of the contenders, rep by rep, so that each follows
    each other one equally often; "fixed" runs them in the order of `fns`
    in every rep, "reverse" in the opposite order.
    Why (docs/perf.md, twelfth session): at the power cap a rep's speed
    depends on what ran before it. With one untimed rep and a fixed order
    (ours, FA2, cuDNN: ours always after cuDNN) the same binaries read
    0.96x cuDNN at hdim 128 non-causal 16k, and 1.11x with the order
    reversed; sm80 backward hdim 128 non-causal 4k 0.98x / 1.07x FA2.
    A contender that raises is left out and its error returned instead."""
    times, counts, errors, once_ms = {}, {}, {}, {}
    event = lambda: torch.cuda.Event(enable_timing=True)
    for name, fn in fns.items():
        try:
            fn()
            torch.cuda.synchronize()
            start, stop = event(), event()
            start.record()
            fn()
            stop.record()
            stop.synchronize()
        except Exception as e:  # an SDPA backend may refuse a shape
            errors[name] = str(e).splitlines()[0][:200]
            continue
        once = max(start.elapsed_time(stop), 1e-3)
        once_ms[name] = once
        counts[name] = max(calls, min(math.ceil(rep_ms / once), max_calls))
        times[name] = []
    names = list(counts)
    if order == "reverse":
        names.reverse()
    orders = list(itertools.permutations(names)) if order == "balanced" else [names]
    warm_calls = {name: max(n, math.ceil(warmup_ms / once_ms[name])) for name, n in counts.items()}
    for rep in range(reps):
        for name in orders[rep % len(orders)]:
            fn, n = fns[name], counts[name]
            for _ in range(warm_calls[name]):  # the untimed calls
                fn()
            start, stop = event(), event()
            start.record()
            for _ in range(n):
                fn()
            stop.record()
            stop.synchronize()
            times[name].append(start.elapsed_time(stop) / n)
    medians = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    return medians, errors


def sdpa_forward(name, q, k, v, causal):
    """A callable running the SDPA backend of PEERS entry `name` on q, k, v
    shaped (b, h, s, d) (any strides SDPA takes)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F
    backend = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}[name]

    def fwd():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return fwd


def fa3_forward(lib, q, k, v, causal):
    """A callable running FlashAttention-3's Hopper forward on q, k, v shaped
    (b, s, h, d), through the C entry point of a peer library built outside
    this project (`--fa3-lib`; bf16, hdim 64/128/256, forward only). As FA3's
    own interface it allocates out and lse per call and zeroes the causal
    scheduler's tile counter before the kernel."""
    import ctypes
    b, s_q, h, d = q.shape
    s_k, h_k = k.shape[1], k.shape[2]
    sem = torch.zeros(1, dtype=torch.int32, device=q.device)
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    ptr = ctypes.c_void_p

    def fwd():
        out = torch.empty_like(q)
        lse = torch.empty(b, h, s_q, dtype=torch.float32, device=q.device)
        rc = lib.fa3_peer_fwd(ptr(q.data_ptr()), ptr(k.data_ptr()), ptr(v.data_ptr()), ptr(out.data_ptr()),
                              ptr(lse.data_ptr()), b, s_q, s_k, h, h_k, d, int(causal),
                              ctypes.c_float(d ** -0.5), ptr(sem.data_ptr()), sms,
                              ptr(torch.cuda.current_stream().cuda_stream))
        if rc != 0:
            raise RuntimeError(f"fa3 peer: status {rc} (hdim {d})")
        return out
    return fwd


def gemm_ceiling(flops):
    """The GEMM ceiling for a cell of `flops`: a square bf16 GEMM of side
    n = (flops / 2)^(1/3), rounded to a multiple of 256, so that it runs about
    as long as the attention kernels it is timed with (and in the same clock
    and power state). Returns (callable, scale): its times are multiplied by
    scale = flops / 2n³, so that the row's TFLOP/s, computed with the cell's
    FLOPs, are the GEMM's own rate."""
    n = max(256, round((flops / 2) ** (1 / 3) / 256) * 256)
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    return (lambda: torch.matmul(a, b)), flops / (2 * n ** 3)


def measure_cell(args, d, causal, s):
    """{contender: (fwd_ms, fwd_bwd_ms, bwd_ms) or error string}, and our
    forward kernel's name, for one cell with fresh random inputs
    (`--forward-only`: the backward times are None)."""
    dt = torch.bfloat16
    b, h = args.tokens // s, args.hidden // d
    q, k, v, dout = (torch.randn(b, s, h, d, device="cuda", dtype=dt) for _ in range(4))
    impls = {}
    qa, ka, va = (t.clone().requires_grad_() for t in (q, k, v))

    def ours_fwd():
        return flash_attn_func(qa, ka, va, causal=causal)

    def ours_fwd_bwd():
        ours_fwd().backward(dout)
    impls[OURS] = (ours_fwd, ours_fwd_bwd)
    qt, kt, vt, dt_ = (t.transpose(1, 2).contiguous() for t in (q, k, v, dout))
    qt, kt, vt = (t.requires_grad_() for t in (qt, kt, vt))
    fwd_flops = 4 * b * s * s * h * d / (2 if causal else 1)
    gemms = {}  # the ceiling's GEMM per direction: (callable, time scale)
    for name in PEERS:
        if name == "cublas":
            gemms = {dirn: gemm_ceiling(f * fwd_flops) for dirn, f in (("fwd", 1), ("fwd_bwd", 3.5), ("bwd", 2.5))}
            impls[name] = (gemms["fwd"][0], gemms["fwd_bwd"][0])
            continue
        if name == "fa3":  # forward only (main() allows it with --forward-only alone)
            fa3 = fa3_forward(args.fa3, q, k, v, causal)
            with torch.no_grad():  # a peer built elsewhere: its output is checked against ours
                diff = (fa3().float() - ours_fwd().float()).abs().max().item()
            if not diff < 0.05:  # the cell records the error for this contender (time_contenders)
                def fa3(diff=diff):
                    raise RuntimeError(f"fa3 peer differs from ours by {diff}")
            impls[name] = (fa3, None)
            continue
        fwd = sdpa_forward(name, qt, kt, vt, causal)

        def fwd_bwd(fwd=fwd):
            fwd().backward(dt_)
        impls[name] = (fwd, fwd_bwd)
    timing = dict(order=args.order, warmup_ms=args.warmup_ms)
    with torch.no_grad():
        t_f, errors = time_contenders({n: f for n, (f, _) in impls.items()}, args.calls, args.reps,
                                      **timing)
    # before any backward (which runs on autograd's own thread)
    fwd_kernel = flashattn.last_kernel(q.device)

    def scaled(times, dirn):  # the ceiling's times at the cell's FLOPs
        if "cublas" in times:
            times["cublas"] *= gemms[dirn][1]
    scaled(t_f, "fwd")
    if args.forward_only:
        return {n: errors[n] if n in errors else (t_f[n], None, None) for n in (OURS,) + PEERS}, fwd_kernel
    impls = {n: fns for n, fns in impls.items() if n not in errors}
    t_fb, errors_fb = time_contenders({n: fb for n, (_, fb) in impls.items()}, args.calls, args.reps,
                                      **timing)
    scaled(t_fb, "fwd_bwd")
    errors.update(errors_fb)
    impls = {n: fns for n, fns in impls.items() if n not in errors}
    bwd_fns = {}
    for name, (fwd, _) in impls.items():
        if name == "cublas":
            bwd_fns[name] = gemms["bwd"][0]
            continue
        out = fwd()
        inputs = (qa, ka, va) if name == OURS else (qt, kt, vt)
        grad = dout if name == OURS else dt_

        def bwd(out=out, inputs=inputs, grad=grad):
            torch.autograd.grad(out, inputs, grad, retain_graph=True)
        bwd_fns[name] = bwd
    t_b, errors_b = time_contenders(bwd_fns, args.calls, args.reps, **timing)
    scaled(t_b, "bwd")
    errors.update(errors_b)
    del bwd_fns, gemms, q, k, v, dout, qa, ka, va, qt, kt, vt, dt_
    torch.cuda.empty_cache()
    return {n: errors[n] if n in errors else (t_f[n], t_fb[n], t_b[n]) for n in (OURS,) + PEERS}, fwd_kernel


def bench(args):
    """The grid, `--passes` times (every other pass in reverse cell order, as
    the FA3 anchor was measured), each cell with fresh inputs; a row's times
    are the per-contender medians over the passes (the mean of two), and
    the passes' own times are kept in the row (`passes`)."""
    flashattn.set_backend(args.backend)
    cells = [(d, causal, s) for d in args.dims for causal in (False, True) for s in args.seqlens]
    results = {cell: [] for cell in cells}
    kernels = {}
    for p in range(args.passes):
        for cell in (cells if p % 2 == 0 else cells[::-1]):
            res, kernels[cell] = measure_cell(args, *cell)
            results[cell].append(res)
            print(json.dumps(dict(hdim=cell[0], causal=cell[1], seqlen=cell[2], pass_=p,
                                  ms={n: r for n, r in res.items()})), flush=True)

    def median(xs):
        xs = sorted(xs)
        return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2

    rows = []
    for (d, causal, s) in cells:
        b, h = args.tokens // s, args.hidden // d
        fwd_flops = 4 * b * s * s * h * d / (2 if causal else 1)
        for name in (OURS,) + PEERS:
            row = dict(impl=name, hdim=d, causal=causal, seqlen=s, batch=b, heads=h)
            if name == OURS:
                row.update(fwd_kernel=kernels[(d, causal, s)])
            got = [r[name] for r in results[(d, causal, s)]]
            errors = [g for g in got if isinstance(g, str)]
            if errors:
                row.update(error=errors[0])
            else:
                t_f = median([g[0] for g in got])
                row.update(fwd_ms=t_f, fwd_tflops=fwd_flops / t_f / 1e9,
                           passes=[dict(fwd_ms=g[0], fwd_bwd_ms=g[1], bwd_ms=g[2]) for g in got])
                if not args.forward_only:
                    t_fb, t_b = (median([g[i] for g in got]) for i in (1, 2))
                    row.update(bwd_ms=t_b, fwd_bwd_ms=t_fb,
                               bwd_tflops=2.5 * fwd_flops / t_b / 1e9,
                               fwd_bwd_tflops=3.5 * fwd_flops / t_fb / 1e9)
            rows.append(row)
    result = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  device=torch.cuda.get_device_name(), torch=torch.__version__,
                  cudnn=torch.backends.cudnn.version(), tokens=args.tokens,
                  hidden=args.hidden, dtype="bf16", passes=args.passes, order=args.order,
                  warmup_ms=args.warmup_ms, rows=rows)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print_table(rows)
    if args.plot:
        plot(rows, args.plot)
    return 0


def cuda_ready(backend):
    """Whether a CUDA device is there (says so when not); selects the
    library backend to time if it is."""
    if not torch.cuda.is_available():
        print("no CUDA device")
        return False
    flashattn.set_backend(backend)
    return True


OURS = "flashattn"
PEERS = ("sdpa-flash", "sdpa-cudnn", "cublas")  # `--peers` may change it
PEER_LABELS = {"sdpa-flash": "FA2", "sdpa-cudnn": "cuDNN", "fa3": "FA3", "cublas": "GEMM"}
BACKENDS = ("auto", "cuda_sm80", "cuda_sm90")  # the library backends a benchmark can force


def print_table(rows):
    """Forward and backward TFLOP/s of ours and the peers, and our ratios."""
    by = {}
    for r in rows:
        by.setdefault((r["hdim"], r["causal"], r["seqlen"]), {})[r["impl"]] = r
    for direction in ("fwd", "bwd"):
        field = f"{direction}_tflops"
        print(f"\n{direction} TFLOP/s (bf16)")
        names = [PEER_LABELS[n] for n in PEERS]
        print(f"{'hdim':>4} {'causal':>6} {'seqlen':>6} | {'ours':>5} " + " ".join(f"{n:>5}" for n in names)
              + " | " + " ".join(f"{'/' + n:>6}" for n in names))
        for (d, causal, s), impls in by.items():
            vals = [impls.get(n, {}).get(field) for n in (OURS,) + PEERS]
            cells = [f"{v:5.0f}" if v else "    -" for v in vals]
            ratios = [f"{vals[0] / v:6.2f}" if vals[0] and v else "     -" for v in vals[1:]]
            print(f"{d:>4} {str(causal):>6} {s:>6} | {' '.join(cells)} | {' '.join(ratios)}")


def plot(rows, path):
    """Bars per seqlen; one panel per (direction, causal) row and hdim column."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dims = sorted({r["hdim"] for r in rows})
    # a direction no row measured (--forward-only: bwd) gets no panels
    dirns = [dirn for dirn in ("fwd", "bwd") if any(r.get(f"{dirn}_tflops") for r in rows)]
    panels = [(dirn, causal) for dirn in dirns for causal in (False, True)]
    fig, axes = plt.subplots(len(panels), len(dims), figsize=(5 * len(dims), 3.2 * len(panels)),
                             squeeze=False)
    impls = (OURS,) + PEERS
    for col, d in enumerate(dims):
        for row_i, (dirn, causal) in enumerate(panels):
            ax = axes[row_i][col]
            seqlens = sorted({r["seqlen"] for r in rows if r["hdim"] == d})
            width = 0.8 / len(impls)
            for n, impl in enumerate(impls):
                vals = []
                for s in seqlens:
                    match = [r for r in rows if r["impl"] == impl and r["hdim"] == d
                             and r["causal"] == causal and r["seqlen"] == s]
                    vals.append(match[0].get(f"{dirn}_tflops", 0) if match else 0)
                ax.bar([i + n * width for i in range(len(seqlens))], vals, width, label=impl)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(seqlens))])
            ax.set_xticklabels([f"{s // 1024}k" if s >= 1024 else str(s) for s in seqlens])
            ax.set_title(f"{dirn}, hdim {d}, {'causal' if causal else 'non-causal'}")
            ax.set_ylabel("TFLOP/s")
            if row_i == 0 and col == 0:
                ax.legend(fontsize=8)
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


def markdown(args):
    """Markdown tables (TFLOP/s and same-run ratios) and geometric means of a
    `bench` result file, against the peers it holds."""
    global PEERS
    with open(args.out) as f:
        result = json.load(f)
    PEERS = tuple(p for p in PEER_LABELS if any(r["impl"] == p for r in result["rows"]))
    cell = {(r["impl"], r["hdim"], r["causal"], r["seqlen"]): r for r in result["rows"]}
    seqlens = sorted({r["seqlen"] for r in result["rows"]})
    dims = sorted({r["hdim"] for r in result["rows"]})
    label = lambda s: f"{s // 1024}k" if s >= 1024 else str(s)
    print(f"{result['device']}, torch {result['torch']}, cuDNN {result['cudnn']}, {result['date']}")
    for direction in ("fwd", "bwd"):
        print(f"\n**{direction} TFLOP/s** (ours (ratio to " + " / to ".join(PEER_LABELS[p] for p in PEERS) + "))\n")
        print("| hdim | causal | " + " | ".join(map(label, seqlens)) + " |")
        print("|---|---|" + "---|" * len(seqlens))
        ratios = {peer: [] for peer in PEERS}
        for d in dims:
            for causal in (False, True):
                out = []
                for s in seqlens:
                    ours = cell.get((OURS, d, causal, s), {}).get(f"{direction}_tflops")
                    peers = [cell.get((p, d, causal, s), {}).get(f"{direction}_tflops") for p in PEERS]
                    if ours is None or None in peers:
                        out.append("-")
                        continue
                    for p, v in zip(PEERS, peers):
                        ratios[p].append(ours / v)
                    out.append(f"{ours:.0f} (" + " / ".join(f"{ours / v:.2f}×" for v in peers) + ")")
                print(f"| {d} | {'yes' if causal else 'no'} | " + " | ".join(out) + " |")
        for p, r in ratios.items():
            if r:
                g = math.exp(sum(map(math.log, r)) / len(r))
                print(f"\n{direction} vs {p}: geometric mean {g:.2f}× ({min(r):.2f}–{max(r):.2f}×) over {len(r)} cells")
    return 0


def main():
    global PEERS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("check", "bench", "profile", "table"))
    ap.add_argument("--causal", action="store_true", help="profile: causal")
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--seqlens", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--reps", type=int, default=6,
                    help="timed reps per contender (6: each order of three contenders once)")
    ap.add_argument("--passes", type=int, default=1,
                    help="bench: times over the grid (median per cell and contender)")
    ap.add_argument("--order", default="balanced", choices=("balanced", "fixed", "reverse"),
                    help="bench: the contenders' order within a rep (time_contenders)")
    ap.add_argument("--warmup-ms", type=float, default=150.0,
                    help="bench: untimed calls of a contender before each timed rep, in ms")
    ap.add_argument("--forward-only", action="store_true",
                    help="bench: time the forward alone (an A/B of forward kernels)")
    ap.add_argument("--out", default="gpu-bench.json")
    ap.add_argument("--backend", default="auto", choices=BACKENDS,
                    help="bench: the library backend to time")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--quick", action="store_true", help="check: a few small cases")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="check: cpu runs the CPU backend (tests this script without a GPU)")
    ap.add_argument("--peers", nargs="+", default=list(PEERS), choices=tuple(PEER_LABELS),
                    help="bench: the contenders besides ours (fa3 needs --fa3-lib and --forward-only)")
    ap.add_argument("--fa3-lib", default=None,
                    help="bench: a library exporting fa3_peer_fwd (FlashAttention-3's Hopper "
                         "forward, built outside this project) for the fa3 peer")
    args = ap.parse_args()
    PEERS = tuple(args.peers)
    args.fa3 = None
    if "fa3" in PEERS and args.mode == "bench":
        if not args.fa3_lib or not args.forward_only:
            ap.error("the fa3 peer needs --fa3-lib and --forward-only")
        import ctypes
        args.fa3 = ctypes.CDLL(args.fa3_lib)
        args.fa3.fa3_peer_fwd.restype = ctypes.c_int
    if args.mode == "table":
        return markdown(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device")
        return 77
    return {"check": check, "bench": bench, "profile": profile}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
