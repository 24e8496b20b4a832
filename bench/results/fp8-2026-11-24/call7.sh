#!/bin/bash
# call 7: the Vᵀ pass without shared memory (byte permutes in registers; bench/variants/sm90-fp8-vt-pass-registers.patch,
# not kept: 53-60 us against 32): the FP8 checks, memcheck, and
# the pass's time as in call 6, on binaries built here (build-s27/p)
P=build-s27/p
export LD_LIBRARY_PATH=$PWD/$P FLASHATTN_LIB=$PWD/$P/libflashattn.so PYTHONPATH=$PWD/python
python3 bench/fp8_bench.py check 2>&1 | tail -1
for backend in sm90 auto; do timeout 150 $P/tests/test_grid --device cuda --backend $backend --filter fp8 > $OUT/g-$backend.log 2>&1; echo "grid $backend fp8 rc=$? $(tail -1 $OUT/g-$backend.log | cut -c1-110)"; done
timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 $P/tests/test_grid --device cuda --backend sm90 --quick --filter fp8 > $OUT/mc.log 2>&1; echo "memcheck rc=$? $(grep 'ERROR SUMMARY' $OUT/mc.log | tail -1)"
PYTHONPATH=$PWD/python:$PWD/python/tests timeout 120 python3 -m pytest -p no:cacheprovider -q python/tests/test_fp8.py 2>&1 | tail -1
bash bench/results/fp8-2026-11-24/call6.sh 2>&1 | grep "^d"
python3 bench/fp8_bench.py bench --dims 128 256 --seqlens 512 2048 --reps 3 2>&1 | grep -o "d[0-9]* causal=. s[0-9]*: fp8 [0-9]*.*fp8/bf16 [0-9.]*x"
