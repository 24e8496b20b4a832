#!/bin/bash
# call 7: decoding shapes (one and four query rows over long caches, hdim 128): the FP8 forward with V
# transposed in the kernel (what the dispatcher picks there) against the pass, and bf16, one process each.
export PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/build-s28/p/libflashattn.so LD_LIBRARY_PATH=$PWD/build-s28/p
for r in 1 4; do
  python3 bench/fp8_bench.py decode --rows $r --out $OUT/decode-rows$r.json 2>&1 | tee $OUT/decode-rows$r.log
done
