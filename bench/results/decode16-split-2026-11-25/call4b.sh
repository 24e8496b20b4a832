#!/bin/bash
# call 4b (call 4's machine, warm; call 4 ran past the 10-minute limit in its last step): the whole
# grid on auto, then the decoding shapes again, twice (call 4's read 1.3-2x slower than call 3b's at
# some shapes for every contender but cuDNN, with the same kernels).
P=build-s30/p
export PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/$P/libflashattn.so LD_LIBRARY_PATH=$PWD/$P PYTHONUNBUFFERED=1
timeout 200 $P/tests/test_grid --device cuda --backend auto > $OUT/grid-auto.log 2>&1; echo "grid-auto rc=$?: $(tail -1 $OUT/grid-auto.log | cut -c1-140)"
grep -A3 "^FAIL" $OUT/grid-auto.log | head
SHAPES="8:32:8:64:1:8192 1:32:8:128:1:131072 4:16:2:256:1:16384 2:32:8:128:1:32768"
for i in 1 2; do
  timeout 100 python3 bench/decode_bench.py --reps 5 --out $OUT/rows1-$i.json $SHAPES > $OUT/rows1-$i.txt 2>&1; cat $OUT/rows1-$i.txt
done
