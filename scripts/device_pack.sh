#!/usr/bin/env bash
# Build here for the device's GPU and pack what scripts/device_run.sh needs
# into one small folder, to carry to the device machine (its PREBUILT=):
#   scripts/device_pack.sh [build-dir [pack-dir]]   (default build-device-here, build-device-bin)
# Env: FA_ARCHS (default 90-real: the device is an H100).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build-device-here}
PACK=${2:-build-device-bin}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DFA_CUDA_ARCHS="${FA_ARCHS:-90-real}" -DFA_BUILD_TESTS=ON >/dev/null
cmake --build "$BUILD" -j"$(nproc)" >/dev/null
rm -rf "$PACK" && mkdir -p "$PACK/tests" "$PACK/tools"
cp -P "$BUILD"/libflashattn.so* "$PACK/"
cp "$BUILD/tests/test_grid" "$PACK/tests/"
cp "$BUILD/tools/flashattn-run" "$PACK/tools/" 2>/dev/null || true
# the CUDA runtime the tests link, in case the device's toolkit differs
cudart=$(ldd "$PACK/tests/test_grid" | awk '/libcudart/ {print $3}')
[ -n "$cudart" ] && cp -L "$cudart" "$PACK/"
du -sh "$PACK"
