#!/bin/bash
# call 6: the spread between processes: the same one-row shapes on six fresh allocations in one
# process (alloc_probe.py), in two processes.
P=build-s30/p
export PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/$P/libflashattn.so LD_LIBRARY_PATH=$PWD/$P PYTHONUNBUFFERED=1
for i in 1 2; do
  timeout 150 python3 bench/results/decode16-split-2026-11-25/alloc_probe.py 4:16:2:256:1:16384 8:32:8:64:1:8192 2>&1 | tee $OUT/alloc-$i.txt
done
