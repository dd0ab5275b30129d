#!/usr/bin/env bash
# Builds and runs twin's whole test suite on Debian 12 (as root: installs what
# is missing first). CPU tests run under AddressSanitizer + UndefinedBehavior-
# Sanitizer; when the CUDA toolkit is in /usr/local/cuda the CUDA path is
# compiled too and its tests run (they skip cleanly without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${JOBS:-$(nproc)}

packages=(cmake ninja-build g++ clang libclang-rt-14-dev libeigen3-dev xtensor-dev xtl-dev doctest-dev
          nlohmann-json3-dev libcli11-dev zlib1g-dev dataset-fashion-mnist)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# -O1 keeps sanitized tests quick; TWIN_ENABLE_ASSERTS stays on (no NDEBUG).
# Benchmarks are built by their own commands (benchmarks/RESULTS.md), not here:
# their -O3 -march=native builds would double the time of a CI run.
cmake -S . -B build/test -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
  -DTWIN_SANITIZE=address,undefined -DTWIN_BUILD_BENCHMARKS=OFF
cmake --build build/test -j "$jobs"
ctest --test-dir build/test --output-on-failure -j "$jobs"

if [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "CUDA toolkit found: compiling the CUDA path"
  cmake -S . -B build/cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DTWIN_ENABLE_CUDA=ON \
    -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc -DTWIN_BUILD_EXAMPLES=OFF -DTWIN_BUILD_BENCHMARKS=OFF \
    -DTWIN_BUILD_FUZZERS=OFF
  # Only the CUDA targets: the CPU suite above already built and ran the rest.
  cmake --build build/cuda -j "$jobs" --target test_cuda_seam test_cuda_kernels
  ctest --test-dir build/cuda --output-on-failure -L gpu
fi
