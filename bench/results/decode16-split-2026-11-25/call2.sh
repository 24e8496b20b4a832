#!/bin/bash
# call 2: how many parts (the split's model against forced counts, FA_SM90_FWD_SPLIT / FA_SM80_FWD_SPLIT
# = k for auto) at five one-row shapes; sm80's split with four query rows, causal and not.
P=build-s30/p
export PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/$P/libflashattn.so LD_LIBRARY_PATH=$PWD/$P PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
SHAPES="8:32:8:64:1:8192 8:32:8:128:1:8192 1:32:8:128:1:131072 4:16:2:256:1:16384 2:32:8:128:1:32768"
timeout 240 python3 bench/decode_bench.py --reps 5 --parts 2,4,8,16,32 --out $OUT/parts.json $SHAPES 2>&1 | tee $OUT/parts.txt
R4="1:32:8:128:4:131072 8:32:8:128:4:8192"
timeout 100 python3 bench/decode_bench.py --reps 5 --out $OUT/rows4.json $R4 2>&1 | tee $OUT/rows4.txt
timeout 100 python3 bench/decode_bench.py --reps 5 --causal --out $OUT/rows4-causal.json $R4 2>&1 | tee $OUT/rows4-causal.txt
