#!/bin/bash
# call 6: the final tree: hdim 128 transposes V in the kernel below 3072 query rows per key (else
# the pass), hdim 256 the pass; the FP8 mode of the device script (FP8 grid forced to each form and
# auto, sanitizers on both forms, Python FP8 tests, quantizer, accuracy, the FP8 speed grid).
CHECK=0 PREBUILT=build-s28/p OUT=$OUT bash scripts/device_run.sh fp8 > $OUT/run.log 2>&1
tail -44 $OUT/run.log
mkdir -p $OUT/logs && mv $OUT/*.log $OUT/logs/ 2>/dev/null; cp $OUT/logs/run.log $OUT/ 2>/dev/null
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $OUT/logs
