#!/bin/bash
# call 8: CUDA-graph test of the unchecked KV-cache step, then the A/B of the sm90 producer (paged boxes) against the producer before paging
P=build-s26/p
PYTHONPATH=$PWD/python:$PWD/python/tests FLASHATTN_LIB=$PWD/$P/libflashattn.so LD_LIBRARY_PATH=$PWD/$P timeout 200 python3 -m pytest -p no:cacheprovider -q python/tests/test_kvcache.py > $OUT/pytest-kvcache.log 2>&1; echo "pytest kvcache rc=$? $(tail -1 $OUT/pytest-kvcache.log)"; grep -B5 -A30 "Error\|FAILED" $OUT/pytest-kvcache.log | head -60
rm -rf build-ab/variants
BACKEND=cuda_sm90 DIMS="64 128 256" SEQS="2048 16384" BENCH_ARGS="--forward-only --peers sdpa-cudnn" BENCH_TIMEOUT=280 TAG=sm90prod- scripts/device_ab.sh run build-ab 2>&1 | tail -8
