// The doctest main of the CUDA tests. Cases that need a device belong to the
// test suite "gpu". Run plainly, a program runs its other cases; run with
// --gpu-only, it runs the "gpu" cases, or, without a device, exits with 77,
// which ctest reports as SKIPPED (SKIP_RETURN_CODE) rather than passed.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <cstring>

#include "twin/backend/cuda/handles.hpp"

int main(int argc, char** argv) {
  bool gpu_only = false;
  for (int i = 1; i < argc; ++i) gpu_only = gpu_only || std::strcmp(argv[i], "--gpu-only") == 0;
  doctest::Context ctx;
  ctx.applyCommandLine(argc, argv);
  if (gpu_only) {
    if (twin::cuda::device_count() == 0) {
      std::printf("SKIPPED: no CUDA device\n");
      return 77;
    }
    ctx.addFilter("test-suite", "gpu");
  } else {
    ctx.addFilter("test-suite-exclude", "gpu");
  }
  return ctx.run();
}
