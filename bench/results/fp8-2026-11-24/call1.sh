#!/bin/bash
# call 1 (device call 13 of the session's tool): the FP8 mode of the device script on binaries
# built on the development machine (cmake -DFA_CUDA_ARCHS=90-real -DFA_BUILD_TESTS=ON; library,
# tests/test_grid, tests/test_api, tests/test_quant and libcudart.so.13 in build-s27/p)
PREBUILT=build-s27/p OUT=$OUT bash scripts/device_run.sh fp8
