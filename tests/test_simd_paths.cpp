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
