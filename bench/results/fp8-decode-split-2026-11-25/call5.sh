#!/bin/bash
# call 5: packing under causal and sliding windows (a packed row masked by its query), the review's
# test cases (packed tiles of several m blocks, packed rows over two Q descale blocks, three paged
# sequences): the FP8 mode of the device script (as call 4), auto without packing, then decoding
# shapes: one row, four rows, four rows causal.
CHECK=0 PREBUILT=build-s29/p OUT=$OUT FP8_BENCH_ARGS="--dims 128 --seqlens 512" \
    bash scripts/device_run.sh fp8 > $OUT/run.log 2>&1
export PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/build-s29/p/libflashattn.so LD_LIBRARY_PATH=$PWD/build-s29/p
FA_SM90_PACK_GQA=0 timeout 200 build-s29/p/tests/test_grid --device cuda --backend auto --filter fp8 > $OUT/grid-nopack.log 2>&1
echo "test_grid auto fp8 without packing rc=$?: $(tail -1 $OUT/grid-nopack.log | cut -c1-100)"
grep -A3 FAIL $OUT/grid-nopack.log | head -8
timeout 120 build-s29/p/tests/test_grid --device cuda --backend auto --filter fp8decode --verbose > $OUT/grid-fp8decode-kernels.log 2>&1
grep -E "^(ok|FAIL)" $OUT/grid-fp8decode-kernels.log | cut -c1-150
for r in "1" "4" "4 --causal"; do
  tag=$(echo $r | tr -d ' -')
  timeout 150 python3 bench/fp8_bench.py decode --rows $r --out $OUT/decode-rows$tag.json > $OUT/decode-rows$tag.log 2>&1
done
tail -22 $OUT/run.log; cat $OUT/decode-rows*.log
mkdir -p $OUT/logs && mv $OUT/*.log $OUT/logs/ 2>/dev/null; cp $OUT/logs/run.log $OUT/logs/decode-rows*.log $OUT/ 2>/dev/null
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $OUT/logs
