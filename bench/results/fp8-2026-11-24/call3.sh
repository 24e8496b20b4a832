#!/bin/bash
# call 3: A/B of FP8 hdim-128 variants, each a library whose fwd_sm90.cu differs (built here, packed
# as bins.tar.xz with libcudart): base (exponentials under the PV: half), e0 (none), e64 (all),
# s3 (three K/V stages); two rounds, cuDNN in each process
AB=$(mktemp -d) && tar xJf build-ab27/bins.tar.xz -C $AB && export PYTHONPATH=$PWD/python LD_LIBRARY_PATH=$AB
for r in 1 2; do for v in base e0 e64 s3; do echo "== $v round $r"
  FLASHATTN_LIB=$AB/$v/libflashattn.so timeout 100 python3 bench/fp8_bench.py bench --dims 128 --seqlens 2048 16384 --reps 3 2>&1 |
    grep -o "d[0-9]* causal=. s[0-9]*: fp8 [0-9]*.*fp8/cudnn [0-9.]*x"; done; done
