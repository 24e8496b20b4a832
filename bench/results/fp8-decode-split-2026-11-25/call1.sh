#!/bin/bash
# call 1: the FP8 key split and the warpgroups without rows (build-s29/p): the FP8 mode of the device
# script (FP8 grid on each V form, auto, no split and 5 parts forced; sanitizers; Python FP8 tests;
# quantizer; accuracy; a few speed cells), then the decoding shapes with one and four query rows.
CHECK=0 PREBUILT=build-s29/p OUT=$OUT FP8_BENCH_ARGS="--dims 128 256 --seqlens 512 16384" \
    bash scripts/device_run.sh fp8 > $OUT/run.log 2>&1
export PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/build-s29/p/libflashattn.so LD_LIBRARY_PATH=$PWD/build-s29/p
for r in 1 4; do
  timeout 150 python3 bench/fp8_bench.py decode --rows $r --out $OUT/decode-rows$r.json > $OUT/decode-rows$r.log 2>&1
done
tail -30 $OUT/run.log; cat $OUT/decode-rows*.log
mkdir -p $OUT/logs && mv $OUT/*.log $OUT/logs/ 2>/dev/null; cp $OUT/logs/run.log $OUT/logs/decode-rows*.log $OUT/ 2>/dev/null
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $OUT/logs
