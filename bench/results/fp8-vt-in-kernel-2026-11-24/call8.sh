#!/bin/bash
# call 8: the Python FP8 KV cache (flash_attn_with_kvcache with float8 caches: cache_seqlens,
# page_table) and the rest of the FP8 / FA3-interface / KV-cache tests, on the final binaries.
export PYTHONPATH=$PWD/python:$PWD/python/tests FLASHATTN_LIB=$PWD/build-s28/p/libflashattn.so \
    LD_LIBRARY_PATH=$PWD/build-s28/p PYTHONDONTWRITEBYTECODE=1
timeout 300 python3 -m pytest -p no:cacheprovider -q python/tests/test_fp8.py python/tests/test_fa3_interface.py \
    python/tests/test_kvcache.py python/tests/test_signatures.py python/tests/test_errors.py 2>&1 | tail -15
