#!/usr/bin/env bash
# On the device machine: ncu (full set, SASS-level stall samples) of one
# sm80 kernel of ours next to PyTorch's FlashAttention-2 kernel for the same
# problem, from one process (one forward + backward of each, bf16, 16k
# tokens, hidden 2048), exported as CSV to read on the development machine.
#   FLASHATTN_LIB=.../libflashattn.so scripts/ncu_vs_fa2.sh [kind:hdim:seqlen:causal ...]
# kind is fwd or bwd; default bwd:128:8192:0. Output: $OUT/ncu-<cell>-details.csv
# (both kernels' metrics) and -sass.csv.xz (per-instruction samples).
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${OUT:-ncu-out}
mkdir -p "$LOGS"
export PYTHONPATH=python
for cell in "${@:-bwd:128:8192:0}"; do
  IFS=: read -r kind hdim seqlen causal <<< "$cell"
  if [ "$kind" = bwd ]; then kernels="regex:backward_kernel|flash_bwd_dq_dk_dv"
  else kernels="regex:^forward_kernel|flash_fwd_kernel"; fi
  rep=$LOGS/ncu-$kind-d$hdim-s$seqlen-c$causal
  D=$hdim S=$seqlen CAUSAL=$causal timeout 300 ncu --set full --import-source yes -k "$kernels" \
    --launch-count 2 -o "$rep" -f python3 bench/fa2_pair.py > "$rep.log" 2>&1
  echo "$cell: ncu rc=$?"
  ncu --import "$rep.ncu-rep" --page details --csv > "$rep-details.csv" 2>&1
  ncu --import "$rep.ncu-rep" --page source --csv --print-source sass > "$rep-sass.csv" 2>&1
  xz -T0 -f "$rep-sass.csv" && rm -f "$rep.ncu-rep"
done
