#!/bin/bash
# call 9: after the review's fixes (the binding checks k / v page counts; the launch refuses a
# workspace smaller than the Vᵀ pass needs): the Python tests of call 8 and the FP8 grid on both forms.
export PYTHONPATH=$PWD/python:$PWD/python/tests FLASHATTN_LIB=$PWD/build-s28/p/libflashattn.so \
    LD_LIBRARY_PATH=$PWD/build-s28/p PYTHONDONTWRITEBYTECODE=1
timeout 300 python3 -m pytest -p no:cacheprovider -q python/tests/test_fp8.py python/tests/test_fa3_interface.py \
    python/tests/test_kvcache.py python/tests/test_signatures.py python/tests/test_errors.py 2>&1 | tail -4
for vt in kernel pass; do
  FA_SM90_FP8_VT=$vt timeout 200 build-s28/p/tests/test_grid --device cuda --backend sm90 --filter fp8 2>&1 | tail -1 | cut -c1-110
done
