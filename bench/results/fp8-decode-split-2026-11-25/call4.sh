#!/bin/bash
# call 4: the key split with the query heads of a KV head packed into one tile (GQA, power-of-two
# ratios, no window): the FP8 mode of the device script (FP8 grid, now with the fp8decode family, on
# each V form without the split, auto, 5 parts forced, and auto without packing; sanitizers; Python
# FP8 tests; quantizer; accuracy; one speed cell), then decoding shapes with one and four query rows.
CHECK=0 PREBUILT=build-s29/p OUT=$OUT FP8_BENCH_ARGS="--dims 128 --seqlens 16384" \
    bash scripts/device_run.sh fp8 > $OUT/run.log 2>&1
export PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/build-s29/p/libflashattn.so LD_LIBRARY_PATH=$PWD/build-s29/p
FA_SM90_PACK_GQA=0 timeout 200 build-s29/p/tests/test_grid --device cuda --backend auto --filter fp8 > $OUT/grid-nopack.log 2>&1
echo "test_grid auto fp8 without packing rc=$?: $(tail -1 $OUT/grid-nopack.log | cut -c1-100)"
grep -A3 FAIL $OUT/grid-nopack.log | head -8
for r in 1 4; do
  timeout 150 python3 bench/fp8_bench.py decode --rows $r --out $OUT/decode-rows$r.json > $OUT/decode-rows$r.log 2>&1
done
tail -22 $OUT/run.log; cat $OUT/decode-rows*.log
mkdir -p $OUT/logs && mv $OUT/*.log $OUT/logs/ 2>/dev/null; cp $OUT/logs/run.log $OUT/logs/decode-rows*.log $OUT/ 2>/dev/null
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $OUT/logs
