// Counter-based random numbers (Philox4x32-10, Salmon et al. 2011): the value
// at position i depends only on (key, i), never on which thread asks or in
// what order, so DARE's drop masks are the same on any thread count and on
// the GPU path.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#if defined(__AVX2__)
#  include <immintrin.h>
#endif
#include <random>
#include <string>
#include <string_view>

#include "twin/error.hpp"

namespace twin {

// 64-bit FNV-1a of a string; folds a tensor name into a random key.
constexpr std::uint64_t fnv1a64(std::string_view s) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

class Philox {
 public:
  constexpr explicit Philox(std::uint64_t key) noexcept
      : k0_(static_cast<std::uint32_t>(key)), k1_(static_cast<std::uint32_t>(key >> 32)) {}

  // Four independent 32-bit words for the 128-bit counter (ctr, stream).
  constexpr std::array<std::uint32_t, 4> block(std::uint64_t ctr, std::uint64_t stream = 0) const noexcept {
    std::uint32_t c0 = static_cast<std::uint32_t>(ctr), c1 = static_cast<std::uint32_t>(ctr >> 32);
    std::uint32_t c2 = static_cast<std::uint32_t>(stream), c3 = static_cast<std::uint32_t>(stream >> 32);
    std::uint32_t k0 = k0_, k1 = k1_;
    for (int round = 0; round < 10; ++round) {
      const std::uint64_t p0 = 0xD2511F53ull * c0;
      const std::uint64_t p1 = 0xCD9E8D57ull * c2;
      const std::uint32_t hi0 = static_cast<std::uint32_t>(p0 >> 32), lo0 = static_cast<std::uint32_t>(p0);
      const std::uint32_t hi1 = static_cast<std::uint32_t>(p1 >> 32), lo1 = static_cast<std::uint32_t>(p1);
      c0 = hi1 ^ c1 ^ k0;
      c1 = lo1;
      c2 = hi0 ^ c3 ^ k1;
      c3 = lo0;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    return {c0, c1, c2, c3};
  }

  // Uniform float in [0, 1) for element i: 24 random bits, exact in f32.
  // One Philox block serves four consecutive elements.
  constexpr float uniform(std::uint64_t i, std::uint64_t stream = 0) const noexcept {
    return to_unit(block(i >> 2, stream)[i & 3u]);
  }

  // f(k, c, u) for consecutive pieces [k, k + c) of [0, n), up to 256
  // long, u[0..c) = uniform(first + k + ·, stream): draws through uniforms
  // without a buffer the size of n.
  template <class F>
  void uniform_pieces(std::uint64_t first, std::int64_t n, std::uint64_t stream, F&& f) const {
    constexpr std::int64_t piece = 256;
    float u[piece];
    for (std::int64_t k = 0; k < n; k += piece) {
      const std::int64_t c = std::min(piece, n - k);
      uniforms(first + static_cast<std::uint64_t>(k), static_cast<std::size_t>(c), stream, u);
      f(k, c, static_cast<const float*>(u));
    }
  }

  static constexpr float to_unit(std::uint32_t bits) noexcept { return static_cast<float>(bits >> 8) * 0x1.0p-24f; }

  // uniform(first + k, stream) for k < n, written to out. Runs the rounds of
  // 16 blocks side by side so the compiler can vectorize them (dropout masks
  // draw one value per activation).
  void uniforms(std::uint64_t first, std::size_t n, std::uint64_t stream, float* out) const noexcept {
    constexpr std::size_t W = 16;
    std::size_t done = 0;
    std::uint64_t i = first;
    for (; done < n && (i & 3u) != 0; ++done, ++i) out[done] = uniform(i, stream);
    // 32-bit words held in 64-bit lanes: the 32x32 -> 64 products then
    // vectorize (there is no SIMD "high half of a 32-bit product").
    std::uint64_t c0[W], c1[W], c2[W], c3[W];
    while (n - done >= 4) {
      const std::size_t nb = std::min<std::size_t>(W, (n - done) / 4);
      const std::uint64_t b0 = i >> 2;
      for (std::size_t j = 0; j < W; ++j) {
        c0[j] = (b0 + j) & 0xffffffffu;
        c1[j] = (b0 + j) >> 32;
        c2[j] = stream & 0xffffffffu;
        c3[j] = stream >> 32;
      }
#if defined(__AVX2__)
      // The same rounds with the 32x32 -> 64 vector multiply (vpmuludq)
      // spelled out: compilers emit a full 64-bit multiply for the portable
      // loop below (3 uops on x86), though every word is below 2^32.
      {
        const __m256i lo = _mm256_set1_epi64x(0xffffffff);
        const __m256i m0 = _mm256_set1_epi64x(0xD2511F53), m1 = _mm256_set1_epi64x(0xCD9E8D57);
        const __m256i w0 = _mm256_set1_epi64x(0x9E3779B9), w1 = _mm256_set1_epi64x(0xBB67AE85);
        for (std::size_t j = 0; j < W; j += 4) {
          auto load = [&](const std::uint64_t* p) {
            return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + j));
          };
          __m256i x0 = load(c0), x1 = load(c1), x2 = load(c2), x3 = load(c3);
          __m256i k0 = _mm256_set1_epi64x(k0_), k1 = _mm256_set1_epi64x(k1_);
          for (int round = 0; round < 10; ++round) {
            const __m256i p0 = _mm256_mul_epu32(x0, m0), p1 = _mm256_mul_epu32(x2, m1);
            x0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), x1), k0);
            x1 = _mm256_and_si256(p1, lo);
            x2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), x3), k1);
            x3 = _mm256_and_si256(p0, lo);
            k0 = _mm256_and_si256(_mm256_add_epi64(k0, w0), lo);
            k1 = _mm256_and_si256(_mm256_add_epi64(k1, w1), lo);
          }
          auto store = [&](std::uint64_t* p, __m256i v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j), v); };
          store(c0, x0), store(c1, x1), store(c2, x2), store(c3, x3);
        }
      }
#else
      for (std::size_t j = 0; j < W; ++j) {
        std::uint64_t x0 = c0[j], x1 = c1[j], x2 = c2[j], x3 = c3[j];
        std::uint64_t k0 = k0_, k1 = k1_;
        for (int round = 0; round < 10; ++round) {
          const std::uint64_t p0 = 0xD2511F53ull * x0;
          const std::uint64_t p1 = 0xCD9E8D57ull * x2;
          x0 = (p1 >> 32) ^ x1 ^ k0;
          x1 = p1 & 0xffffffffu;
          x2 = (p0 >> 32) ^ x3 ^ k1;
          x3 = p0 & 0xffffffffu;
          k0 = (k0 + 0x9E3779B9u) & 0xffffffffu;
          k1 = (k1 + 0xBB67AE85u) & 0xffffffffu;
        }
        c0[j] = x0, c1[j] = x1, c2[j] = x2, c3[j] = x3;
      }
#endif
      for (std::size_t j = 0; j < nb; ++j) {
        out[done + 4 * j + 0] = to_unit(static_cast<std::uint32_t>(c0[j]));
        out[done + 4 * j + 1] = to_unit(static_cast<std::uint32_t>(c1[j]));
        out[done + 4 * j + 2] = to_unit(static_cast<std::uint32_t>(c2[j]));
        out[done + 4 * j + 3] = to_unit(static_cast<std::uint32_t>(c3[j]));
      }
      done += 4 * nb;
      i += 4 * nb;
    }
    for (; done < n; ++done, ++i) out[done] = uniform(i, stream);
  }

 private:
  std::uint32_t k0_, k1_;
};

// Key of the stream for (seed, tensor name, model index).
constexpr std::uint64_t random_key(std::uint64_t seed, std::string_view tensor, std::uint64_t model) noexcept {
  std::uint64_t h = fnv1a64(tensor) ^ (seed * 0x9E3779B97F4A7C15ull);
  h ^= (model + 1) * 0xC2B2AE3D27D4EB4Full;
  h ^= h >> 29;
  return h;
}

// Which random stream a randomized merge draws from: our Philox counters
// (default; any thread count, any order, the GPU too) or PyTorch's CPU
// generator as mergekit uses it (opt-in, for parity with a mergekit run
// seeded before that tensor; serial).
enum class RngKind { philox, torch };

inline RngKind parse_rng(std::string_view s) {
  if (s == "philox") return RngKind::philox;
  if (s == "torch") return RngKind::torch;
  throw argument_error("unknown random stream '" + std::string(s) + "': expected philox or torch");
}

// PyTorch's CPU generator after torch.manual_seed(seed): MT19937 seeded with
// the low 32 bits (the standard init_genrand), one 32-bit draw per call.
// bernoulli(p) is torch.bernoulli on a float32 probability: one draw per
// element, kept iff (u32 & 0xFFFFFF)·2⁻²⁴ < p. randperm_step(m) is one step
// of torch.randperm's Fisher–Yates on CPU (n < 2³²/20): u32 mod m.
// (docs/mergekit_methods.md §1; checked against python3-torch 1.13.)
class TorchCpuGenerator {
 public:
  explicit TorchCpuGenerator(std::uint64_t seed) : g_(static_cast<std::uint32_t>(seed)) {}
  bool bernoulli(float p) { return static_cast<float>(g_() & 0xFFFFFFu) * 0x1.0p-24f < p; }
  std::uint32_t randperm_step(std::uint32_t m) { return static_cast<std::uint32_t>(g_()) % m; }

 private:
  std::mt19937 g_;
};

}  // namespace twin
