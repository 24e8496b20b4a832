#!/bin/bash
# call 2: regression grids (auto full, sm80 quick), the Python suite, ncu of the FP8 and bf16
# Hopper forwards at hdim 256 / 128 non-causal 16k, the FP8 kernels' SASS opcode mix
P=build-s27/p
export LD_LIBRARY_PATH=$PWD/$P FLASHATTN_LIB=$PWD/$P/libflashattn.so PYTHONPATH=$PWD/python
G=$P/tests/test_grid
timeout 240 $G --device cuda --backend auto > $OUT/grid-auto.log 2>&1; echo "grid auto rc=$? $(tail -1 $OUT/grid-auto.log)"
timeout 120 $G --device cuda --backend sm80 --quick > $OUT/grid-sm80-quick.log 2>&1; echo "grid sm80 quick rc=$? $(tail -1 $OUT/grid-sm80-quick.log)"
PYTHONPATH=$PWD/python:$PWD/python/tests timeout 240 python3 -m pytest -p no:cacheprovider -q python/tests > $OUT/pytest.log 2>&1; echo "pytest rc=$? $(tail -1 $OUT/pytest.log)"
for what in "--dims 256" "--dims 256 --bf16" "--dims 128" "--dims 128 --bf16"; do
  tag=$(echo $what | tr -d ' -')
  timeout 120 ncu --kernel-name regex:fa_sm90_fwd_kernel --launch-skip 1 --launch-count 1 --section SpeedOfLight \
    --section WarpStateStats --section SchedulerStats --section InstructionStats --section ComputeWorkloadAnalysis \
    python3 bench/fp8_bench.py profile --seqlens 16384 $what > $OUT/ncu-$tag.log 2>&1
  echo "== ncu $what rc=$?"; grep -E "Duration|SM Frequency|Executed Ipc A|Issue Slots Busy|No Eligible|Stall|Compute \(SM\) Th|Registers Per" $OUT/ncu-$tag.log | head -14
done
cuobjdump -sass $P/libflashattn.so.0.1.0 > $OUT/all.sass 2>/dev/null
python3 - "$OUT/all.sass" > $OUT/fp8-opcodes.txt <<'PY'
import re, sys, collections
text = open(sys.argv[1]).read()
for m in re.finditer(r"Function : (\S*fa_sm90_fwd_kernel\S*(?:fp8_e4m3|bfloat16)Li(?:128|256)ELi(?:128|80)ELi2ELi2ELi1\S*)\n(.*?)(?=\n\s*Function :|\Z)", text, re.S):
    ops = collections.Counter(re.findall(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", m.group(2)))
    print(m.group(1), sum(ops.values()))
    print("  ", ", ".join(f"{k} {v}" for k, v in ops.most_common(28)))
PY
head -12 $OUT/fp8-opcodes.txt; rm -f $OUT/all.sass
