#!/usr/bin/env bash
# Build a kernel variant for an A/B (scripts/device_ab.sh) without touching
# the checkout: a git worktree of HEAD in build-wt-NAME (ignored), the patch
# applied there, the library and test_grid built for the device's GPU in
# build-wt-NAME/build.
#   scripts/build_variant.sh NAME [PATCH [CUDA flags...]]
# e.g. scripts/build_variant.sh e8 bench/variants/sm90-fwd-exp2-on-fma.patch -DFA_SM90_EXP_ON_FMA=8
# then scripts/device_ab.sh pack build-ab base=build-wt-base/build e8=build-wt-e8/build
# (NAME without a patch builds HEAD itself: the base). Env: FA_ARCHS (default 90-real).
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:?usage: $0 NAME [PATCH [CUDA flags...]]}
PATCH=${2:-}
shift $(( $# < 2 ? $# : 2 ))
WT=build-wt-$NAME
if [ -d "$WT" ]; then git worktree remove --force "$WT"; fi
git worktree add --detach "$WT" HEAD >/dev/null
[ -z "$PATCH" ] || git -C "$WT" apply "$PWD/$PATCH"
cmake -S "$WT" -B "$WT/build" -DCMAKE_BUILD_TYPE=Release -DFA_CUDA_ARCHS="${FA_ARCHS:-90-real}" \
    -DFA_BUILD_TESTS=ON -DFA_BUILD_TOOLS=OFF -DCMAKE_CUDA_FLAGS="$*" >/dev/null
cmake --build "$WT/build" -j"$(nproc)" 2>&1 | grep -E "spill|error|warning" | grep -v " 0 bytes spill" || true
ls "$WT/build/libflashattn.so" "$WT/build/tests/test_grid"
