"""One forward + backward of ours (sm80 backend) and of PyTorch SDPA's
FLASH_ATTENTION (FlashAttention-2) on the same inputs, for a profiler to
capture both (scripts/ncu_vs_fa2.sh). Env: D (head dim), S (seqlen),
CAUSAL (0/1), H (heads; default 2048 / D); bf16, 16k tokens per batch."""
import os

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import flashattn
from flashattn import flash_attn_func

flashattn.set_backend("cuda_sm80")
d, s = int(os.environ.get("D", 128)), int(os.environ.get("S", 8192))
causal = os.environ.get("CAUSAL", "0") == "1"
b, h = 16384 // s, int(os.environ.get("H", 2048 // d))
q, k, v, do = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))
qa, ka, va = (t.clone().requires_grad_() for t in (q, k, v))
flash_attn_func(qa, ka, va, causal=causal).backward(do)
qt, kt, vt, dt = (t.transpose(1, 2).contiguous() for t in (q, k, v, do))
qt, kt, vt = (t.requires_grad_() for t in (qt, kt, vt))
with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
    F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal).backward(dt)
torch.cuda.synchronize()
