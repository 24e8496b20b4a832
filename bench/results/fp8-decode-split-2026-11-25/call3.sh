#!/bin/bash
# call 3: the key split as instances of its own (kKeySplit; every other kernel byte-identical to
# a4a3777's): the FP8 mode of the device script (FP8 grid on each V form without the split, auto,
# and 5 parts forced; sanitizers; Python FP8 tests; quantizer; accuracy; one speed cell), test_api,
# then the decoding shapes with one and four query rows.
CHECK=0 PREBUILT=build-s29/p OUT=$OUT FP8_BENCH_ARGS="--dims 128 --seqlens 16384" \
    bash scripts/device_run.sh fp8 > $OUT/run.log 2>&1
export PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/build-s29/p/libflashattn.so LD_LIBRARY_PATH=$PWD/build-s29/p
timeout 120 build-s29/p/tests/test_api > $OUT/test-api.log 2>&1; echo "test_api rc=$?: $(tail -1 $OUT/test-api.log)"
for r in 1 4; do
  timeout 150 python3 bench/fp8_bench.py decode --rows $r --out $OUT/decode-rows$r.json > $OUT/decode-rows$r.log 2>&1
done
tail -22 $OUT/run.log; cat $OUT/decode-rows*.log
mkdir -p $OUT/logs && mv $OUT/*.log $OUT/logs/ 2>/dev/null; cp $OUT/logs/run.log $OUT/logs/decode-rows*.log $OUT/ 2>/dev/null
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $OUT/logs
