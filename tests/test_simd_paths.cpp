// The vector kernels a build chooses at run time from the CPU (Philox's
// rounds: AVX-512F, AVX2, portable): each is run here by name, whatever the
// CPU would pick, and a kernel this CPU lacks is reported SKIPPED.
#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "twin/random.hpp"

TEST_CASE("every Philox::uniforms kernel gives the values of Philox::uniform for any start and length") {
  // Property: each kernel's rounds (vpmuludq, round keys computed once, no
  // masking between rounds) and its interleaving of the four words equal
  // the scalar block function, the reference, word for word.
  using Kernel = twin::Philox::Kernel;
  const std::pair<Kernel, const char*> kernels[] = {
      {Kernel::portable, "portable"}, {Kernel::avx2, "avx2"}, {Kernel::avx512, "avx512"}};
  for (const auto& [kernel, name] : kernels) {
    CAPTURE(name);
    if (!twin::Philox::cpu_has(kernel)) {
      MESSAGE("SKIPPED: this CPU has no " << name);
      continue;
    }
    for (const std::uint64_t key : {0ull, 0x1234567890abcdefull, ~0ull}) {
      const twin::Philox rng(key);
      // Starts inside a block and across the 2^32 boundary of the block
      // counter's low word; lengths around whole batches (32 blocks = 128
      // values) and partial ones.
      for (const std::uint64_t first : {0ull, 1ull, 6ull, 4294967294ull * 4 + 3, (1ull << 60) + 1}) {
        for (const std::uint64_t stream : {0ull, 99ull, 0xffffffffull, ~0ull}) {
          for (const std::size_t n : {0u, 1u, 3u, 4u, 5u, 63u, 64u, 65u, 127u, 128u, 129u, 256u, 1000u}) {
            std::vector<float> u(n);
            rng.uniforms(kernel, first, n, stream, u.data());
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
}

TEST_CASE("Philox::best_kernel is the widest kernel this CPU has") {
  // Property: the run-time choice is one the CPU runs, and no wider one is
  // left unused (the reference: cpu_has for each level, widest first).
  using Kernel = twin::Philox::Kernel;
  const Kernel best = twin::Philox::best_kernel();
  CHECK(twin::Philox::cpu_has(best));
  const Kernel expected = twin::Philox::cpu_has(Kernel::avx512) ? Kernel::avx512
                          : twin::Philox::cpu_has(Kernel::avx2) ? Kernel::avx2
                                                                : Kernel::portable;
  CHECK(best == expected);
}

TEST_CASE("Philox::uniforms_side_by_side gives each generator's Philox::uniform values in its own row") {
  // Property: drawing several generators' values side by side (AVX-512:
  // vectors of different generators and counters in one kernel call, four
  // per call, round keys per vector) equals each generator's scalar block
  // function, for starts inside and at block boundaries, lengths around
  // whole 32-value vectors, and counts around the four vectors per call; the
  // gap between rows (stride > n) is left as it was.
  using Kernel = twin::Philox::Kernel;
  for (const Kernel kernel : {Kernel::portable, Kernel::avx2, Kernel::avx512}) {
    CAPTURE(static_cast<int>(kernel));
    if (!twin::Philox::cpu_has(kernel)) {
      MESSAGE("SKIPPED: this CPU lacks kernel " << static_cast<int>(kernel));
      continue;
    }
    std::vector<twin::Philox> g;
    for (std::uint64_t e = 0; e < 9; ++e) g.emplace_back(0x9E3779B97F4A7C15ull * (e + 1));
    for (const std::size_t count : {1u, 3u, 4u, 5u, 9u}) {
      for (const std::uint64_t first : {0ull, 4ull, 2ull, 4294967294ull * 4 + 4, 64ull}) {
        for (const std::size_t n : {0u, 1u, 31u, 32u, 33u, 64u, 96u, 100u}) {
          const std::size_t stride = n + 3;
          std::vector<float> u(count * stride, -1.0f);
          twin::Philox::uniforms_side_by_side(kernel, g.data(), count, first, n, 7, u.data(), stride);
          std::size_t differ = 0, touched = 0;
          for (std::size_t e = 0; e < count; ++e) {
            for (std::size_t k = 0; k < n; ++k) differ += u[e * stride + k] != g[e].uniform(first + k, 7);
            for (std::size_t k = n; k < stride; ++k) touched += u[e * stride + k] != -1.0f;
          }
          CAPTURE(count);
          CAPTURE(first);
          CAPTURE(n);
          CHECK(differ == 0);
          CHECK(touched == 0);
        }
      }
    }
  }
}
