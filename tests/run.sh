#!/usr/bin/env bash
# Builds and runs twin's whole test suite on Debian 12 (as root: installs what
# is missing first): the format check, every header compiled by clang, then
# the CPU tests under AddressSanitizer + UndefinedBehaviorSanitizer (preset
# asan, fuzzers included), then, when the CUDA toolkit is in /usr/local/cuda,
# the CUDA path compiled and its tests run (they report SKIPPED without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${JOBS:-$(nproc)}
start=$SECONDS
stage() { printf '== %s (%ds)\n' "$1" $((SECONDS - start)); }

packages=(cmake ninja-build g++ clang clang-format libclang-rt-14-dev libeigen3-dev xtensor-dev xtl-dev doctest-dev
          nlohmann-json3-dev libcli11-dev libyaml-cpp-dev libdlpack-dev libdnnl-dev zlib1g-dev
          dataset-fashion-mnist)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  stage "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

stage "format (clang-format, .clang-format)"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z '*.hpp' '*.cpp' '*.cu' '*.cuh'
else
  find include examples tests benchmarks \( -name '*.hpp' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' \) -print0
fi | xargs -0 clang-format --dry-run --Werror

# Engines that embed twin build with clang too: every header (the CUDA ones
# aside) must compile there, warning-free, with oneDNN's path on (~15 s).
stage "headers under clang (-Wall -Wextra -Werror)"
(cd include && find twin -name '*.hpp' -not -path '*/cuda/*' | sort | sed 's/.*/#include "&"/') |
  clang++ -std=c++20 -fsyntax-only -Wall -Wextra -Werror -DTWIN_HAVE_ONEDNN=1 -Iinclude -isystem /usr/include/eigen3 \
    -x c++ -

# -O1 keeps sanitized tests quick (the tests' own units and the examples they
# drive -O0: they compile in about half the time, more than they then lose in
# running; the Eigen engines without ASan's instrumentation, docs/design.md
# §8); line tables (-g1) are all sanitizer reports need and save a tenth of
# the compile time; TWIN_ENABLE_ASSERTS stays on.
# Benchmarks are built by their own commands (benchmarks/RESULTS.md), not here.
stage "configure (preset asan)"
cmake --preset asan >/dev/null
stage "build"
cmake --build --preset asan -j "$jobs"
stage "test"
ctest --preset asan -j "$jobs"

if [ -x /usr/local/cuda/bin/nvcc ]; then
  stage "CUDA toolkit found: compiling the CUDA path (preset cuda)"
  cmake --preset cuda >/dev/null
  # Only the CUDA targets: the CPU suite above already built and ran the rest.
  cmake --build --preset cuda -j "$jobs" --target test_cuda_seam test_cuda_kernels
  ctest --preset cuda
fi
stage "done"
