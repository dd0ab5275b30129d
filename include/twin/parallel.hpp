// Work sharing over the cores, through OpenMP when the build enables it
// (twin::twin links OpenMP::OpenMP_CXX when found) and serially otherwise.
// Every parallel loop in twin splits work into blocks whose boundaries do not
// depend on the thread count, so results are bit-identical for any count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <mutex>
#include <vector>

#if defined(_OPENMP)
#  include <omp.h>
#endif

namespace twin {

// Threads a parallel region may use (OpenMP's current setting, 1 without it).
inline int num_threads() noexcept {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Index of the calling thread inside a parallel region (0 outside, or
// without OpenMP); for per-thread scratch whose use cannot affect results.
inline int thread_index() noexcept {
#if defined(_OPENMP)
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Sets the number of threads for later parallel regions (n <= 0: all cores).
inline void set_num_threads(int n) noexcept {
#if defined(_OPENMP)
  omp_set_num_threads(n > 0 ? n : omp_get_num_procs());
#else
  (void)n;
#endif
}

// Calls f(block_begin, block_end) for consecutive blocks of `block` indices
// covering [0, n), in parallel. The first exception thrown by any block is
// rethrown on the calling thread after the loop.
template <class F>
void parallel_blocks(std::int64_t n, std::int64_t block, F&& f) {
  if (n <= 0) return;
  block = std::max<std::int64_t>(block, 1);
  const std::int64_t nblocks = (n + block - 1) / block;
  if (nblocks == 1) {
    f(std::int64_t{0}, n);
    return;
  }
  std::exception_ptr err;
  std::mutex err_mutex;
#if defined(_OPENMP)
#  pragma omp parallel for schedule(dynamic, 1) if (nblocks > 1)
#endif
  for (std::int64_t b = 0; b < nblocks; ++b) {
    try {
      const std::int64_t lo = b * block;
      f(lo, std::min(n, lo + block));
    } catch (...) {
      std::lock_guard<std::mutex> lock(err_mutex);
      if (!err) err = std::current_exception();
    }
  }
  if (err) std::rethrow_exception(err);
}

// Deterministic sum over blocks: partial(lo, hi) per block, added in block
// order, so the result does not depend on how many threads ran.
template <class T, class F>
T parallel_sum(std::int64_t n, std::int64_t block, F&& partial) {
  if (n <= 0) return T{};
  block = std::max<std::int64_t>(block, 1);
  const std::int64_t nblocks = (n + block - 1) / block;
  std::vector<T> parts(static_cast<std::size_t>(nblocks));
  parallel_blocks(nblocks, 1, [&](std::int64_t b0, std::int64_t b1) {
    for (std::int64_t b = b0; b < b1; ++b)
      parts[static_cast<std::size_t>(b)] = partial(b * block, std::min(n, (b + 1) * block));
  });
  T total{};
  for (const T& p : parts) total += p;
  return total;
}

}  // namespace twin
