"""Where a whole backward's time goes, kernel by kernel: ours on the
portable (sm80) backend against PyTorch SDPA's FLASH_ATTENTION
(FlashAttention-2), free-running, on the same inputs (bf16, 16k tokens,
hidden 2048). Each contender runs --reps forward + backward passes after
one warm-up under torch.profiler; the table sums the CUDA time of every
kernel launched by the backward pass (the forward's kernels excluded),
per kernel name, in microseconds per backward.

    python3 bench/kernel_split.py [--reps 10] hdim:causal:seqlen ...
"""

import argparse
import collections
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import flashattn  # noqa: E402
from flashattn import flash_attn_func  # noqa: E402


def backward_kernels(run_forward, reps):
    """{kernel name: microseconds per backward} of reps backward passes."""
    out, grads_of = run_forward()
    torch.autograd.grad(out, grads_of, torch.randn_like(out))  # warm-up
    torch.cuda.synchronize()
    times = collections.Counter()
    for _ in range(reps):
        out, grads_of = run_forward()
        dout = torch.randn_like(out)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            with record_function("backward"):
                torch.autograd.grad(out, grads_of, dout)
            torch.cuda.synchronize()
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA and "memcpy" not in e.name.lower():
                times[e.name] += e.time_range.elapsed_us() / reps
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cells", nargs="+", help="hdim:causal:seqlen")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    flashattn.set_backend("cuda_sm80")
    for cell in args.cells:
        d, causal, s = (int(x) for x in cell.split(":"))
        b, h = 16384 // s, 2048 // d
        q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))

        def ours():
            qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
            return flash_attn_func(qq, kk, vv, causal=bool(causal)), (qq, kk, vv)

        def fa2():
            qq, kk, vv = (t.detach().requires_grad_() for t in (qt, kt, vt))
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(qq, kk, vv, is_causal=bool(causal)), (qq, kk, vv)

        for label, fn in (("ours", ours), ("FA2", fa2)):
            times = backward_kernels(fn, args.reps)
            total = sum(times.values())
            print(f"{cell} {label}: backward {total:.1f} us")
            for name, us in times.most_common():
                print(f"    {us:9.1f} us  {name[:110]}")


if __name__ == "__main__":
    main()
