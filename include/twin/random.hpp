// Counter-based random numbers (Philox4x32-10, Salmon et al. 2011): the value
// at position i depends only on (key, i), never on which thread asks or in
// what order, so DARE's drop masks are the same on any thread count and on
// the GPU path.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>

#include "twin/config.hpp"
#include "twin/error.hpp"

#if TWIN_X86_KERNELS
#  include <immintrin.h>
#endif

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

  // Which vector kernel runs the rounds of many blocks side by side (every
  // level gives the same values).
  using Kernel = SimdKernel;

  // Whether this CPU runs `k` (portable always).
  static bool cpu_has(Kernel k) noexcept { return twin::cpu_has(k); }

  // The widest kernel this CPU has, found once.
  static Kernel best_kernel() noexcept { return best_simd_kernel(); }

  // uniform(first + k, stream) for k < n, written to out, by the widest
  // kernel this CPU has (dropout and DARE masks draw one value per entry).
  void uniforms(std::uint64_t first, std::size_t n, std::uint64_t stream, float* out) const noexcept {
    uniforms(best_kernel(), first, n, stream, out);
  }

  // The same with the kernel named (cpu_has(kernel) must hold); the tests
  // compare each level with uniform().
  void uniforms(Kernel kernel, std::uint64_t first, std::size_t n, std::uint64_t stream, float* out) const noexcept {
    std::size_t done = 0;
    std::uint64_t i = first;
    for (; done < n && (i & 3u) != 0; ++done, ++i) out[done] = uniform(i, stream);
    // Whole batches of `batch` blocks, then of half a batch, straight into
    // out, then a last partial half batch through a buffer, then the last
    // elements of a partial block (a 64-value piece, as DARE draws, takes a
    // half batch: no draws thrown away).
    constexpr std::size_t batch = 32;  // blocks per vector kernel call: 128 values
    float tmp[4 * batch];
    while ((n - done) / 4 > 0) {
      const std::size_t left = (n - done) / 4;
      const std::size_t nb = std::min(left >= batch ? batch : batch / 2, left);
      const bool big = nb == batch;
      float* dst = big || nb == batch / 2 ? out + done : tmp;
      const std::uint64_t b0 = i >> 2;
      switch (kernel) {
#if TWIN_X86_KERNELS
        case Kernel::avx512: big ? blocks_avx512<4>(b0, stream, dst) : blocks_avx512<2>(b0, stream, dst); break;
        case Kernel::avx2: big ? blocks_avx2<8>(b0, stream, dst) : blocks_avx2<4>(b0, stream, dst); break;
#endif
        default: blocks_portable(b0, nb, stream, dst); break;
      }
      if (dst == tmp) std::copy(tmp, tmp + 4 * nb, out + done);
      done += 4 * nb;
      i += 4 * nb;
    }
    for (; done < n; ++done, ++i) out[done] = uniform(i, stream);
  }

  // For each generator g[e], e < count: uniform(first + k, stream) for k < n
  // into out + e·stride + k. With AVX-512F the generators' blocks run side
  // by side, four vectors of 8 blocks (32 values) per kernel call, so that a
  // few dozen values per generator keep the vector units as busy as
  // uniforms() does with hundreds (a loop that draws a short piece for every
  // expert, then uses it, overlaps its arithmetic with its memory reads
  // better than one drawing long pieces). Starts inside a block, values
  // past the last whole vector, and other kernels take uniforms() per
  // generator.
  static void uniforms_side_by_side(Kernel kernel, const Philox* g, std::size_t count, std::uint64_t first,
                                    std::size_t n, std::uint64_t stream, float* out, std::size_t stride) noexcept {
    std::size_t whole = 0;
#if TWIN_X86_KERNELS
    if (kernel == Kernel::avx512 && (first & 3u) == 0) {
      whole = n / 32 * 32;
      // The vectors (generator e, piece q) in order, four per call.
      RoundKeys rk[4];
      const RoundKeys* keys[4];
      std::uint64_t blk[4];
      float* dst[4];
      int v = 0;
      for (std::size_t e = 0; e < count; ++e)
        for (std::size_t q = 0; q < whole / 32; ++q) {
          if (q == 0 || v == 0) rk[v] = g[e].round_keys();
          keys[v] = q == 0 || v == 0 ? &rk[v] : keys[v - 1];
          blk[v] = (first >> 2) + 8 * q;
          dst[v] = out + e * stride + 32 * q;
          if (++v == 4) vectors_avx512<4>(keys, blk, stream, dst), v = 0;
        }
      if (v == 1) vectors_avx512<1>(keys, blk, stream, dst);
      if (v == 2) vectors_avx512<2>(keys, blk, stream, dst);
      if (v == 3) vectors_avx512<3>(keys, blk, stream, dst);
    }
#endif
    if (whole < n)
      for (std::size_t e = 0; e < count; ++e)
        g[e].uniforms(kernel, first + whole, n - whole, stream, out + e * stride + whole);
  }

  static void uniforms_side_by_side(const Philox* g, std::size_t count, std::uint64_t first, std::size_t n,
                                    std::uint64_t stream, float* out, std::size_t stride) noexcept {
    uniforms_side_by_side(best_kernel(), g, count, first, n, stream, out, stride);
  }

 private:
  // Round r's keys: k0 + r·0x9E3779B9 and k1 + r·0xBB67AE85 (mod 2³²).
  struct RoundKeys {
    std::uint64_t k0[10], k1[10];
  };
  RoundKeys round_keys() const noexcept {
    RoundKeys rk{};
    std::uint32_t k0 = k0_, k1 = k1_;
    for (int r = 0; r < 10; ++r, k0 += 0x9E3779B9u, k1 += 0xBB67AE85u) rk.k0[r] = k0, rk.k1[r] = k1;
    return rk;
  }

  // blocks_*(b0, stream, out): the blocks b0, b0 + 1, ... of `stream` as
  // uniforms in order: 32 blocks (128 values), or 16 for half a batch (the
  // portable one: nb blocks).
  void blocks_portable(std::uint64_t b0, std::size_t nb, std::uint64_t stream, float* out) const noexcept {
    for (std::uint64_t j = 0; j < nb; ++j) {
      const std::array<std::uint32_t, 4> w = block(b0 + j, stream);
      for (int q = 0; q < 4; ++q) out[4 * j + static_cast<std::uint64_t>(q)] = to_unit(w[static_cast<std::size_t>(q)]);
    }
  }

#if TWIN_X86_KERNELS
  // The vector kernels hold each 32-bit word in a 64-bit lane whose high
  // half is ignored: the 32x32 -> 64 multiply (vpmuludq) reads only the low
  // halves and XOR keeps the low halves apart from the high ones, so the
  // rounds need no masking; the round keys are computed once per call.
  template <int V>  // vectors of 4 blocks side by side
  __attribute__((target("avx2"))) void blocks_avx2(std::uint64_t b0, std::uint64_t stream, float* out) const noexcept {
    const RoundKeys rk = round_keys();
    const __m256i m0 = _mm256_set1_epi64x(0xD2511F53), m1 = _mm256_set1_epi64x(0xCD9E8D57);
    const __m256i s_lo = _mm256_set1_epi64x(static_cast<long long>(stream));
    const __m256i s_hi = _mm256_set1_epi64x(static_cast<long long>(stream >> 32));
    const __m256 scale = _mm256_set1_ps(0x1.0p-24f);
    __m256i x0[V], x1[V], x2[V], x3[V];
    for (int v = 0; v < V; ++v) {
      const std::uint64_t b = b0 + 4 * static_cast<std::uint64_t>(v);
      x0[v] = _mm256_add_epi64(_mm256_set1_epi64x(static_cast<long long>(b)), _mm256_set_epi64x(3, 2, 1, 0));
      x1[v] = _mm256_srli_epi64(x0[v], 32);
      x2[v] = s_lo;
      x3[v] = s_hi;
    }
    for (int r = 0; r < 10; ++r) {
      const __m256i k0 = _mm256_set1_epi64x(static_cast<long long>(rk.k0[r]));
      const __m256i k1 = _mm256_set1_epi64x(static_cast<long long>(rk.k1[r]));
      for (int v = 0; v < V; ++v) {
        const __m256i p0 = _mm256_mul_epu32(x0[v], m0), p1 = _mm256_mul_epu32(x2[v], m1);
        x0[v] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), x1[v]), k0);
        x1[v] = p1;
        x2[v] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), x3[v]), k1);
        x3[v] = p0;
      }
    }
    for (int v = 0; v < V; ++v) {
      // Lane j holds words (w0, w1) in a and (w2, w3) in b; interleave the
      // 64-bit pairs block by block and turn the words into uniforms.
      const __m256i a = _mm256_blend_epi32(x0[v], _mm256_slli_epi64(x1[v], 32), 0xAA);
      const __m256i b = _mm256_blend_epi32(x2[v], _mm256_slli_epi64(x3[v], 32), 0xAA);
      const __m256i lo = _mm256_unpacklo_epi64(a, b), hi = _mm256_unpackhi_epi64(a, b);
      const __m256i w[2] = {_mm256_permute2x128_si256(lo, hi, 0x20), _mm256_permute2x128_si256(lo, hi, 0x31)};
      for (int h = 0; h < 2; ++h) {
        const __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(w[h], 8)), scale);
        _mm256_storeu_ps(out + 16 * v + 8 * h, u);
      }
    }
  }

  template <int V>  // vectors of 8 blocks side by side
  __attribute__((target("avx512f"))) void blocks_avx512(std::uint64_t b0, std::uint64_t stream,
                                                        float* out) const noexcept {
    const RoundKeys rk = round_keys();
    const RoundKeys* keys[V];
    std::uint64_t blk[V];
    float* dst[V];
    for (int v = 0; v < V; ++v) keys[v] = &rk, blk[v] = b0 + 8 * static_cast<std::uint64_t>(v), dst[v] = out + 32 * v;
    vectors_avx512<V>(keys, blk, stream, dst);
  }

  // V vectors side by side, vector v: the 8 blocks blk[v] .. blk[v] + 7 of
  // `stream` under the round keys rk[v], as 32 uniforms in order at
  // dst[v]. Written with the zero-masking forms (mask all ones: the same
  // instructions): GCC 12 warns of an uninitialized variable inside the
  // plain forms' _mm512_undefined_* (GCC bug 105593), and a diagnostic
  // pragma does not survive a precompiled header.
  template <int V>
  __attribute__((target("avx512f"))) static void vectors_avx512(const RoundKeys* const* rk, const std::uint64_t* blk,
                                                                std::uint64_t stream, float* const* dst) noexcept {
    const __mmask8 all = 0xFF;
    const __m512i m0 = _mm512_set1_epi64(0xD2511F53), m1 = _mm512_set1_epi64(0xCD9E8D57);
    const __m512i s_lo = _mm512_set1_epi64(static_cast<long long>(stream));
    const __m512i s_hi = _mm512_set1_epi64(static_cast<long long>(stream >> 32));
    __m512i x0[V], x1[V], x2[V], x3[V];
    for (int v = 0; v < V; ++v) {
      x0[v] =
          _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(blk[v])), _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0));
      x1[v] = _mm512_maskz_srli_epi64(all, x0[v], 32);
      x2[v] = s_lo;
      x3[v] = s_hi;
    }
    for (int r = 0; r < 10; ++r) {
      for (int v = 0; v < V; ++v) {
        const __m512i k0 = _mm512_set1_epi64(static_cast<long long>(rk[v]->k0[r]));
        const __m512i k1 = _mm512_set1_epi64(static_cast<long long>(rk[v]->k1[r]));
        const __m512i p0 = _mm512_maskz_mul_epu32(all, x0[v], m0), p1 = _mm512_maskz_mul_epu32(all, x2[v], m1);
        x0[v] = _mm512_ternarylogic_epi64(_mm512_maskz_srli_epi64(all, p1, 32), x1[v], k0, 0x96);  // a ^ b ^ c
        x1[v] = p1;
        x2[v] = _mm512_ternarylogic_epi64(_mm512_maskz_srli_epi64(all, p0, 32), x3[v], k1, 0x96);
        x3[v] = p0;
      }
    }
    const __m512i first = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
    const __m512i second = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
    for (int v = 0; v < V; ++v) {
      // As in blocks_avx2: (w0, w1) and (w2, w3) per lane, interleaved.
      const __m512i a = _mm512_mask_blend_epi32(0xAAAA, x0[v], _mm512_maskz_slli_epi64(all, x1[v], 32));
      const __m512i b = _mm512_mask_blend_epi32(0xAAAA, x2[v], _mm512_maskz_slli_epi64(all, x3[v], 32));
      const __m512i w[2] = {_mm512_permutex2var_epi64(a, first, b), _mm512_permutex2var_epi64(a, second, b)};
      for (int h = 0; h < 2; ++h) {
        const __m512 u = _mm512_mul_ps(_mm512_maskz_cvtepi32_ps(0xFFFF, _mm512_maskz_srli_epi32(0xFFFF, w[h], 8)),
                                       _mm512_set1_ps(0x1.0p-24f));
        _mm512_storeu_ps(dst[v] + 16 * h, u);
      }
    }
  }
#endif

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
