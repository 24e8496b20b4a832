#!/bin/bash
# call 4: the GQA fold: grids (KV families, seqlen family, full auto), Python, check, kvcache bench
P=build-s26/p
export LD_LIBRARY_PATH=$PWD/$P PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/$P/libflashattn.so PYTHONUNBUFFERED=1
G=$P/tests/test_grid
mkdir -p logs
for be in sm80 sm90; do for f in seqused paged decode seqlen; do
  timeout 120 $G --device cuda --backend $be --filter $f > logs/g-$be-$f.log 2>&1; echo "grid $be $f rc=$? $(tail -1 logs/g-$be-$f.log | cut -c12-110)"; grep -A3 FAIL logs/g-$be-$f.log | head -8
done; done
timeout 200 $G --device cuda --backend auto > logs/grid-auto.log 2>&1; echo "grid auto full rc=$? $(tail -1 logs/grid-auto.log | cut -c12-400)"; grep -A3 FAIL logs/grid-auto.log | head -8
timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 $G --device cuda --backend auto --quick --filter decode > logs/mc.log 2>&1; echo "memcheck auto decode rc=$? $(grep -E 'ERROR SUMMARY' logs/mc.log | tail -1)"
python3 bench/gpu_bench.py check > logs/check.log 2>&1; echo "check rc=$? $(tail -1 logs/check.log)"
PYTHONPATH=$PWD/python:$PWD/python/tests timeout 200 python3 -m pytest -p no:cacheprovider -q python/tests/test_kvcache.py python/tests/test_execution.py > logs/pytest.log 2>&1; echo "pytest kvcache+execution rc=$? $(tail -1 logs/pytest.log)"
timeout 230 python3 bench/kvcache_bench.py --reps 7 --out logs/kvcache.json 8:32:8:128:4096 64:32:8:128:1024 32:32:4:128:8192 16:16:2:64:4096 16:32:32:128:4096 4:32:32:128:16384 2>&1 | tee logs/kvcache.txt
tar czf $OUT/logs.tgz logs
