#!/bin/bash
# call 9: the paged producer as its own path: sm90 KV-cache grids, memcheck, graph test; A/B prod0 / lanes / new
P=build-s26/p
export LD_LIBRARY_PATH=$PWD/$P
G=$P/tests/test_grid
for f in paged decode seqused hdim; do timeout 100 $G --device cuda --backend sm90 --filter $f > $OUT/g-$f.log 2>&1; echo "grid sm90 $f rc=$? $(tail -1 $OUT/g-$f.log | cut -c12-100)"; grep -A3 FAIL $OUT/g-$f.log | head -6; done
timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 $G --device cuda --backend sm90 --filter paged > $OUT/mc.log 2>&1; echo "memcheck sm90 paged rc=$? $(grep -E 'ERROR SUMMARY' $OUT/mc.log | tail -1)"
PYTHONPATH=$PWD/python:$PWD/python/tests FLASHATTN_LIB=$PWD/$P/libflashattn.so timeout 200 python3 -m pytest -p no:cacheprovider -q python/tests/test_kvcache.py > $OUT/pytest-kvcache.log 2>&1; echo "pytest kvcache rc=$? $(tail -1 $OUT/pytest-kvcache.log)"
rm -rf build-ab/variants
BACKEND=cuda_sm90 DIMS="64 128 256" SEQS="2048 16384" BENCH_ARGS="--forward-only --peers sdpa-cudnn" BENCH_TIMEOUT=280 TAG=sm90prod2- scripts/device_ab.sh run build-ab 2>&1 | tail -8
rm -f $OUT/g-*.log $OUT/mc.log
