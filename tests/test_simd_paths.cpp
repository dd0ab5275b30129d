// The code paths a build takes only where the compiler targets wider vector
// instructions than the library's default (x86-64 baseline), built here with
// AVX2 and FMA (x86-64-v3) so that the test suite runs them too; they are
// skipped, and say so, on a CPU without AVX2.
#include <doctest/doctest.h>

#include <cstdint>
#include <vector>

#include "twin/random.hpp"

namespace {
bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}
}  // namespace

TEST_CASE("Philox::uniforms' AVX2 rounds give the values of Philox::uniform for any start and length") {
  // Property: the intrinsic rounds (vpmuludq) equal the scalar block
  // function, the reference, word for word.
#if !defined(__AVX2__)
  FAIL("this test is meant to be built with AVX2 (-march=x86-64-v3)");
#endif
  if (!cpu_has_avx2()) {
    MESSAGE("SKIPPED: this CPU has no AVX2");
    return;
  }
  for (const std::uint64_t key : {0ull, 0x1234567890abcdefull, ~0ull}) {
    const twin::Philox rng(key);
    for (const std::uint64_t first : {0ull, 1ull, 6ull, 4294967294ull * 4 + 3, (1ull << 60) + 1}) {
      for (const std::uint64_t stream : {0ull, 99ull, ~0ull}) {
        for (const std::size_t n : {0u, 1u, 3u, 4u, 5u, 63u, 64u, 65u, 256u, 1000u}) {
          std::vector<float> u(n);
          rng.uniforms(first, n, stream, u.data());
          std::size_t differ = 0;
          for (std::size_t k = 0; k < n; ++k) differ += u[k] != rng.uniform(first + k, stream);
          CAPTURE(key);
          CAPTURE(first);
          CAPTURE(stream);
          CAPTURE(n);
          CHECK(differ == 0);
        }
      }
    }
  }
}
