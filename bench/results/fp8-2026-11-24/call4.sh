#!/bin/bash
# call 4: the final tree (FP8 without exponentials under the PV): the FP8 mode of the device script
# on binaries built here for sm_90 (build-s27/p, as call 1)
PREBUILT=build-s27/p OUT=$OUT bash scripts/device_run.sh fp8 > $OUT/run.log 2>&1
tail -42 $OUT/run.log
