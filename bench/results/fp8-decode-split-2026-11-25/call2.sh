#!/bin/bash
# call 2: where the decoding time of call 1 went. Three library builds, alternating processes:
# A = main before this session (a4a3777), B = the key split only, C = the key split and the
# warpgroups without rows issuing no GEMMs (call 1's build). Decoding shapes (one query row), then
# the hdim-128 FP8 forward at 512 / 2k / 16k, causal and not.
tar xJf build-s29/ab.tar.xz -C build-s29
export PYTHONPATH=$PWD/python LD_LIBRARY_PATH=$PWD/build-s29/pC
for round in 1 2; do
  for v in A B C; do
    FLASHATTN_LIB=$PWD/build-s29/p$v/libflashattn.so timeout 100 python3 bench/fp8_bench.py decode --rows 1 \
        --out $OUT/decode-$v$round.json > $OUT/decode-$v$round.log 2>&1
    echo "== decode $v round $round"; cut -c1-150 $OUT/decode-$v$round.log
  done
done
for round in 1 2; do
  for v in A B C; do
    FLASHATTN_LIB=$PWD/build-s29/p$v/libflashattn.so timeout 100 python3 bench/fp8_bench.py bench --dims 128 \
        --seqlens 512 2048 16384 --out $OUT/bench-$v$round.json > $OUT/bench-$v$round.log 2>&1
    echo "== bench $v round $round"; grep "^d" $OUT/bench-$v$round.log | cut -c1-150
  done
done
