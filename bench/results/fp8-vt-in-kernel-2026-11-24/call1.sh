#!/bin/bash
# call 1: FP8 with V transposed inside the kernel (the producer warpgroup's warps 1-3) and
# FP8 over a paged cache: the FP8 mode of the device script on binaries built here for sm_90
# (scripts/device_pack.sh build-s28 build-s28/p)
PREBUILT=build-s28/p OUT=$OUT bash scripts/device_run.sh fp8 > $OUT/run.log 2>&1
tail -45 $OUT/run.log
