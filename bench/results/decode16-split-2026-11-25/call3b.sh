#!/bin/bash
# call 3b (the machine of call 3, warm): after the missing import of call 3, the whole Python suite,
# the parts sweep and four query rows.
P=build-s30/p
export PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/$P/libflashattn.so LD_LIBRARY_PATH=$PWD/$P PYTHONUNBUFFERED=1
PYTHONPATH=$PWD/python:$PWD/python/tests PYTHONDONTWRITEBYTECODE=1 timeout 200 python3 -m pytest -p no:cacheprovider -q python/tests > $OUT/pytest.log 2>&1; echo "pytest rc=$?: $(tail -1 $OUT/pytest.log)"; grep FAILED $OUT/pytest.log | head
SHAPES="8:32:8:64:1:8192 8:32:8:128:1:8192 1:32:8:128:1:131072 4:16:2:256:1:16384 2:32:8:128:1:32768"
timeout 200 python3 bench/decode_bench.py --reps 5 --parts 2,4,8,16,32 --out $OUT/parts.json $SHAPES > $OUT/parts.txt 2>&1; tail -12 $OUT/parts.txt
R4="1:32:8:128:4:131072 2:32:8:128:4:32768 8:32:8:128:4:8192 4:16:16:128:4:16384"
timeout 100 python3 bench/decode_bench.py --reps 5 --out $OUT/rows4.json $R4 > $OUT/rows4.txt 2>&1; cat $OUT/rows4.txt
timeout 100 python3 bench/decode_bench.py --reps 5 --causal --out $OUT/rows4-causal.json $R4 > $OUT/rows4-causal.txt 2>&1; cat $OUT/rows4-causal.txt
