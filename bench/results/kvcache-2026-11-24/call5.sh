#!/bin/bash
# call 5: sm90 pages smaller than a key block; paged prefill (CTA pairs); bench
P=build-s26/p
export LD_LIBRARY_PATH=$PWD/$P PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/$P/libflashattn.so PYTHONUNBUFFERED=1
G=$P/tests/test_grid
mkdir -p logs
for be in sm90 auto sm80; do for f in paged decode seqused; do
  timeout 120 $G --device cuda --backend $be --filter $f > logs/g-$be-$f.log 2>&1; echo "grid $be $f rc=$? $(tail -1 logs/g-$be-$f.log | cut -c12-110)"; grep -A3 FAIL logs/g-$be-$f.log | head -8
  grep -E "^(ok|FAIL|SKIP)" logs/g-$be-$f.log | head -0
done; done
timeout 120 $G --device cuda --backend sm90 --filter pagedprefill --verbose > logs/g-sm90-pp.log 2>&1; echo "sm90 pagedprefill kernels: $(grep -o '\[sm90[^]]*\]' logs/g-sm90-pp.log | sort | uniq -c | tr '\n' ' ')"
timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 $G --device cuda --backend sm90 --filter paged > logs/mc-sm90.log 2>&1; echo "memcheck sm90 paged (incl. prefill) rc=$? $(grep -E 'ERROR SUMMARY' logs/mc-sm90.log | tail -1)"
timeout 150 compute-sanitizer --tool racecheck --error-exitcode 9 $G --device cuda --backend sm90 --quick --filter paged > logs/rc-sm90.log 2>&1; echo "racecheck sm90 paged rc=$? $(grep -E 'RACECHECK SUMMARY' logs/rc-sm90.log | tail -1)"
PYTHONPATH=$PWD/python:$PWD/python/tests timeout 200 python3 -m pytest -p no:cacheprovider -q python/tests/test_kvcache.py > logs/pytest.log 2>&1; echo "pytest kvcache rc=$? $(tail -1 logs/pytest.log)"
timeout 200 python3 bench/kvcache_bench.py --reps 7 --out logs/kvcache.json 8:32:8:128:4096 64:32:8:128:1024 32:32:4:128:8192 16:16:2:64:4096 16:32:32:128:4096 4:32:32:128:16384 2>&1 | tee logs/kvcache.txt
tar czf $OUT/logs.tgz logs
