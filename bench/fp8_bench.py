"""The FP8 forward on a GPU: its error against float64 attention of the
dequantized inputs, and its speed on the FA3 paper's grid against the
library's bf16 forward and PyTorch SDPA (cuDNN) in the same process.

    FLASHATTN_LIB=... PYTHONPATH=python python3 bench/fp8_bench.py check
    FLASHATTN_LIB=... PYTHONPATH=python python3 bench/fp8_bench.py bench \\
        [--dims 128 256] [--seqlens 512 ... 16384] [--out fp8.json]
    ... fp8_bench.py accuracy [--out acc.json]
    ... fp8_bench.py profile --dims 256 --seqlens 16384 [--causal]

check: for each case, q / k / v drawn N(0, 1), quantized per block of
128 rows (or per head) in torch;
reports the relative RMSE and max error of out and the max |lse error|
against float64 attention of the dequantized values, next to what the
bf16 forward of the same values gives, and fails (exit 1) where the FP8
error exceeds 1.5x the error of float64 attention with only P rounded to
e4m3 (plus 1e-3), or the LSE is off by more than 1e-3.
bench: TFLOP/s (FLOPs 4·b·s²·h·d, half if causal) of the FP8 forward
(e4m3, per-head descales trusted, i.e. without the host check's wait;
the Vᵀ pass included where the dispatcher runs it; FA_SM90_FP8_VT forces
one form), the bf16 forward and
SDPA's CUDNN_ATTENTION, timed as gpu_bench.py times contenders.
decode: one query row (or --rows) over long caches (b, heads_q,
heads_kv, keys: DECODE_SHAPES), hdim 128: microseconds of the FP8
forward as the dispatcher runs it, the same without packing the query
heads of a KV head into one tile (FA_SM90_PACK_GQA=0) and without the
key split (FA_SM90_FWD_SPLIT=1; both set per call), and the bf16
forward, in one process.
accuracy: FA3 §4.3's experiment (N(0, 1) plus 0.1% N(0, 100) outliers,
b 4, s 4096, h 16, d 128): RMSE against float64 attention of the
unquantized values for per-head and 128-row block scales, with and
without incoherent processing (fa_quantize_fp8 rotate=1 on q and k).
"""

import argparse
import ctypes
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flashattn import _ffi, _ops, flash_attn_func  # noqa: E402
from gpu_bench import sdpa_forward, time_contenders  # noqa: E402

FP8_MAX = 448.0


def quantize(x, block, rotate=False, seed=0):
    """(x8 float8_e4m3fn, descale (b, h, blocks) fp32) of x (b, s, h, d) by
    the library's quantizer: one scale per `block` rows (0: per head)."""
    b, s, h, d = x.shape
    blocks = 1 if block == 0 else -(-s // block)
    x8 = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    descale = torch.empty((b, h, blocks), dtype=torch.float32, device=x.device)
    qz = _ffi.FaQuant()
    _ffi.fa_quant_init(ctypes.byref(qz))
    qz.batch, qz.seqlen, qz.heads, qz.dim = b, s, h, d
    qz.src_dtype = _ops._DTYPES[x.dtype]
    qz.dst_dtype = _ffi.FA_DTYPE_FP8_E4M3
    qz.block_rows, qz.rotate, qz.rotate_seed = block, int(rotate), seed
    src, dst = _ops._view(x, False), _ops._view(x8, False)
    with _ffi.device_guard(x.device):
        ctx = _ffi.context_for(x.device)
        _ffi.check(_ffi.fa_quantize_fp8(ctx, ctypes.byref(qz), src, dst, descale.data_ptr()), "quantize")
    return x8, descale


def quantize_torch(x, block):
    """quantize() written in torch (no rotation): the check's quantizer,
    independent of the library's."""
    b, s, h, d = x.shape
    rows = block if block else s
    blocks = -(-s // rows)
    pad = torch.zeros(b, blocks * rows, h, d, device=x.device)
    pad[:, :s] = x.float()
    amax = pad.view(b, blocks, rows, h, d).abs().amax(dim=(2, 4))  # (b, blocks, h)
    descale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    scaled = pad.view(b, blocks, rows, h, d) / descale.view(b, blocks, 1, h, 1)
    x8 = scaled.view(b, blocks * rows, h, d)[:, :s].to(torch.float8_e4m3fn)
    return x8, descale.permute(0, 2, 1).contiguous()


def dequantize(x8, descale, block):
    b, s, h, d = x8.shape
    rows = block if block else s
    scale = descale.repeat_interleave(rows, dim=2)[:, :, :s]  # (b, h, s)
    return x8.double() * scale.permute(0, 2, 1).unsqueeze(-1).double()


def reference(q, k, v, causal, p_fp8=False):
    """float64 out (b, s, h, d) and lse (b, h, s) of (b, s, h, d) inputs;
    p_fp8: with the probabilities (times 2^8 over the row max, as the
    kernel scales them) rounded to e4m3 before P·V, the row sums not."""
    group = q.shape[2] // k.shape[2]
    qh, kh, vh = (t.transpose(1, 2).double() for t in (q, k, v))
    kh, vh = kh.repeat_interleave(group, 1), vh.repeat_interleave(group, 1)
    s = qh @ kh.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        sq, sk = s.shape[-2:]
        mask = torch.ones(sq, sk, dtype=torch.bool, device=s.device).tril(sk - sq)
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, -1)
    if p_fp8:
        p = torch.exp(s - s.amax(-1, keepdim=True)).nan_to_num(0.0) * 256
        out = (p.to(torch.float8_e4m3fn).double() @ vh) / p.sum(-1, keepdim=True)
        return out.nan_to_num(0.0).transpose(1, 2), lse
    out = torch.softmax(s, -1).nan_to_num(0.0) @ vh
    return out.transpose(1, 2), lse


def errors(out, lse, ref_out, ref_lse):
    diff = out.double() - ref_out
    rms = ref_out.pow(2).mean().sqrt().item()
    finite = torch.isfinite(ref_lse)
    return {"rel_rmse": diff.pow(2).mean().sqrt().item() / rms, "max_abs": diff.abs().max().item(),
            "lse_max": (lse.double() - ref_lse)[finite].abs().max().item() if finite.any() else 0.0}


def check(args):
    torch.manual_seed(args.seed)
    cases = [  # b, sq, sk, hq, hkv, d, causal, block
        (2, 128, 128, 2, 2, 128, False, 0), (1, 300, 300, 4, 2, 128, True, 128),
        (2, 129, 1000, 2, 1, 256, False, 128), (1, 1000, 1000, 2, 2, 256, True, 256),
        (3, 17, 333, 4, 4, 128, False, 0), (1, 2048, 2048, 2, 1, 128, True, 128),
        (2, 1, 777, 8, 2, 128, False, 128), (1, 640, 640, 2, 2, 256, False, 0),
        # decoding shapes, which the key split runs
        (1, 1, 16384, 32, 8, 128, False, 128), (2, 4, 5000, 4, 4, 256, True, 0),
    ]
    failed = 0
    for b, sq, sk, hq, hkv, d, causal, block in cases:
        q = torch.randn(b, sq, hq, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, sk, hkv, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(b, sk, hkv, d, device="cuda", dtype=torch.bfloat16)
        (q8, qd), (k8, kd), (v8, vd) = (quantize_torch(t, block) for t in (q, k, v))
        out, lse = _ops.fp8_forward(q8, k8, v8, qd, kd, vd, causal=causal, descale_block_q=block,
                                    descale_block_k=block)
        kernel = _ffi.fa_context_last_kernel(_ffi.context_for(q.device)).decode()
        qf, kf, vf = (dequantize(t, s, block) for t, s in ((q8, qd), (k8, kd), (v8, vd)))
        ref_out, ref_lse = reference(qf, kf, vf, causal)
        e8 = errors(out, lse, ref_out, ref_lse)
        o16, l16, _ = _ops.attention(qf.bfloat16(), kf.bfloat16(), vf.bfloat16(), causal=causal)
        e16 = errors(o16, l16, ref_out, ref_lse)
        naive = errors(reference(qf, kf, vf, causal, p_fp8=True)[0], ref_lse, ref_out, ref_lse)
        bound = 1.5 * naive["rel_rmse"] + 1e-3
        ok = e8["rel_rmse"] <= bound and e8["lse_max"] <= 1e-3 and torch.isfinite(out).all().item()
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} b{b} sq{sq} sk{sk} h{hq}/{hkv} d{d} causal={int(causal)} "
              f"block={block} {kernel}: fp8 rel_rmse {e8['rel_rmse']:.2e} max {e8['max_abs']:.2e} "
              f"lse {e8['lse_max']:.1e} (bound {bound:.1e}) | bf16 rel_rmse {e16['rel_rmse']:.2e} "
              f"lse {e16['lse_max']:.1e}")
    print(f"fp8 check: {len(cases) - failed}/{len(cases)} passed")
    return 1 if failed else 0


def bench(args):
    # the descales are trusted, as FA3 does: their host check (on by
    # default) waits for the stream, which back-to-back calls would time
    _ffi.set_kv_cache_checks(False)
    rows = []
    for d in args.dims:
        for causal in (False, True):
            for s in args.seqlens:
                b, h = 16384 // s, 2048 // d
                q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
                q8, k8, v8 = (t.to(torch.float8_e4m3fn) for t in (q, k, v))
                ones = torch.ones(b, h, 1, device="cuda")
                qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
                fns = {
                    "fp8": lambda: _ops.fp8_forward(q8, k8, v8, ones, ones, ones, causal=causal),
                    "bf16": lambda: _ops.attention(q, k, v, causal=causal),
                    "sdpa-cudnn": sdpa_forward("sdpa-cudnn", qt, kt, vt, causal),
                }
                times, errs = time_contenders(fns, calls=5, reps=args.reps)
                kernel = "-"
                if "fp8" in times:  # it ran: ask which kernel
                    fns["fp8"]()
                    kernel = _ffi.fa_context_last_kernel(_ffi.context_for(q.device)).decode()
                flops = 4 * b * s * s * h * d / (2 if causal else 1)
                row = {"hdim": d, "causal": causal, "seqlen": s, "fp8_kernel": kernel}
                row.update({name: flops / t / 1e9 for name, t in times.items()})
                row["errors"] = errs
                rows.append(row)
                print(f"d{d} causal={int(causal)} s{s}: " +
                      "  ".join(f"{n} {row[n]:.0f}" for n in fns if n in row) +
                      (f"  fp8/cudnn {row['fp8'] / row['sdpa-cudnn']:.2f}x fp8/bf16 {row['fp8'] / row['bf16']:.2f}x"
                       if all(n in row for n in fns) else f"  errors {errs}") + f"  ({kernel})", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "cudnn": torch.backends.cudnn.version(), "unit": "TFLOP/s", "rows": rows}, f, indent=1)
    return 0


# (batch, heads_q, heads_kv, keys) of the decode mode: GQA 4 and none; the
# last three have fewer tiles than SMs (the key split runs them)
DECODE_SHAPES = [(8, 32, 8, 8192), (8, 32, 8, 32768), (8, 16, 16, 8192), (1, 32, 8, 131072), (2, 32, 8, 32768),
                 (4, 16, 16, 16384)]


def decode(args):
    _ffi.set_kv_cache_checks(False)
    d, rows_q, out = 128, args.rows, []

    def fp8_with(env, q8, k8, v8, qd, kd, vd):
        def call():
            for name in ("FA_SM90_FWD_SPLIT", "FA_SM90_PACK_GQA"):  # read by the library at each call
                if name in env:
                    os.environ[name] = env[name]
                else:
                    os.environ.pop(name, None)
            return _ops.fp8_forward(q8, k8, v8, qd, kd, vd, causal=args.causal)
        return call
    for b, hq, hk, sk in DECODE_SHAPES:
        q = torch.randn(b, rows_q, hq, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(b, sk, hk, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        q8, k8, v8 = (t.to(torch.float8_e4m3fn) for t in (q, k, v))
        qd, kd, vd = torch.ones(b, hq, 1, device="cuda"), torch.ones(b, hk, 1, device="cuda"), torch.ones(b, hk, 1, device="cuda")
        fns = {"fp8": fp8_with({}, q8, k8, v8, qd, kd, vd),
               "fp8-nopack": fp8_with({"FA_SM90_PACK_GQA": "0"}, q8, k8, v8, qd, kd, vd),
               "fp8-nosplit": fp8_with({"FA_SM90_FWD_SPLIT": "1"}, q8, k8, v8, qd, kd, vd),
               "bf16": lambda: _ops.attention(q, k, v, causal=args.causal)}
        times, errs = time_contenders(fns, calls=5, reps=args.reps)
        kernel = "-"
        if "fp8" in times:  # it ran: ask which kernel
            fns["fp8"]()
            kernel = _ffi.fa_context_last_kernel(_ffi.context_for(q.device)).decode()
        row = {"batch": b, "heads_q": hq, "heads_kv": hk, "keys": sk, "rows_q": rows_q, "causal": args.causal,
               "fp8_kernel": kernel}
        row.update({name: t * 1e3 for name, t in times.items()})  # us
        row["errors"] = errs
        out.append(row)
        print(f"b{b} h{hq}/{hk} sq{rows_q} sk{sk}{' causal' if args.causal else ''}: " + "  ".join(f"{n} {row[n]:.1f} us" for n in fns if n in row) +
              (f"  fp8/bf16 {row['fp8'] / row['bf16']:.2f}x fp8/nosplit {row['fp8'] / row['fp8-nosplit']:.2f}x"
               if all(n in row for n in fns) else f"  errors {errs}") + f"  ({kernel})", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "unit": "us",
                       "rows": out}, f, indent=1)
    return 0


def profile(args):
    """A few FP8 forwards of one cell (--dims / --seqlens, first values;
    --causal), or bf16 ones (--bf16), for a profiler."""
    _ffi.set_kv_cache_checks(False)
    d, s = args.dims[0], args.seqlens[0]
    b, h = 16384 // s, 2048 // d
    q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    q8, k8, v8 = (t.to(torch.float8_e4m3fn) for t in (q, k, v))
    ones = torch.ones(b, h, 1, device="cuda")
    for _ in range(3):
        if args.bf16:
            _ops.attention(q, k, v, causal=args.causal)
        else:
            _ops.fp8_forward(q8, k8, v8, ones, ones, ones, causal=args.causal)
    torch.cuda.synchronize()
    return 0


def accuracy(args):
    torch.manual_seed(args.seed)
    b, s, h, d = 4, 4096, 16, 128
    rows = {}

    def draw():
        x = torch.randn(b, s, h, d, device="cuda")
        outliers = (torch.rand(b, s, h, d, device="cuda") < 1e-3) * torch.randn(b, s, h, d, device="cuda") * 10
        return (x + outliers).bfloat16()
    q, k, v = draw(), draw(), draw()
    ref_out, _ = reference(q, k, v, False)
    o16, _, _ = _ops.attention(q, k, v)
    rows["bf16"] = (o16.double() - ref_out).pow(2).mean().sqrt().item()
    for block in (0, 128):
        for rotate in (False, True):
            (q8, qd), (k8, kd) = quantize(q, block, rotate, 7), quantize(k, block, rotate, 7)
            v8, vd = quantize(v, block)
            out, _ = _ops.fp8_forward(q8, k8, v8, qd, kd, vd, descale_block_q=block, descale_block_k=block)
            name = f"fp8 {'block128' if block else 'per-head'}{' + incoherent' if rotate else ''}"
            rows[name] = (out.double() - ref_out).pow(2).mean().sqrt().item()
    for name, rmse in rows.items():
        print(f"{name:32s} rmse {rmse:.3e}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "shape": [b, s, h, d], "rmse": rows}, f, indent=1)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["check", "bench", "decode", "accuracy", "profile"])
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--seqlens", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", type=int, default=1, help="decode: query rows per sequence")
    ap.add_argument("--causal", action="store_true", help="profile: the causal cell; decode: causal over the rows")
    ap.add_argument("--bf16", action="store_true", help="profile: the bf16 forward instead")
    ap.add_argument("--out")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("fp8_bench: no GPU, skipped")
        return 77
    return {"check": check, "bench": bench, "decode": decode, "accuracy": accuracy, "profile": profile}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
