// The random masks of mergekit's GTA sparsifiers (docs/mergekit_methods.md
// §9): DELLA's keep probabilities by magnitude rank within each vector along
// axis 1 and dare's Bernoulli draws, applied to a held δ (della_magprune,
// bernoulli_mask) or drawn one vector at a time (DellaVectorMask) and kept
// as one bit per entry (set_bits) by merge/gta.hpp's streamed merge.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <vector>

#include "twin/backend/cpu/avx512_copies.hpp"
#include "twin/merge/merger.hpp"
#include "twin/merge/selection.hpp"
#include "twin/random.hpp"

namespace twin::detail {

// The tensor's vectors along axis 1 (rank ≥ 2; a rank-0 or rank-1 tensor is
// one vector): `outer` groups of `len` entries `inner` apart.
struct AxisOneVectors {
  std::int64_t outer = 1, len = 1, inner = 1;
  explicit AxisOneVectors(std::span<const std::int64_t> shape) {
    if (shape.size() == 1) len = shape[0];
    if (shape.size() >= 2) {
      outer = shape[0], len = shape[1];
      for (std::size_t k = 2; k < shape.size(); ++k) inner *= shape[k];
    }
  }
  std::int64_t count() const noexcept { return outer * inner; }
  std::int64_t at(std::int64_t vec, std::int64_t b) const noexcept {
    return (vec / inner) * len * inner + b * inner + vec % inner;
  }
};

// Sorts key ascending, carrying val, stably (equal keys keep their order):
// an LSD radix sort on 8-bit digits, the four digits' counts taken in one
// pass, a digit that every key shares skipped. k2 and v2 are scratch of the
// same size.
inline void stable_radix_sort(std::vector<std::uint32_t>& key, std::vector<std::uint32_t>& val,
                              std::vector<std::uint32_t>& k2, std::vector<std::uint32_t>& v2) {
  const std::size_t n = key.size();
  std::uint32_t count[4][256] = {};
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t k = key[i];
    ++count[0][k & 0xffu], ++count[1][(k >> 8) & 0xffu], ++count[2][(k >> 16) & 0xffu], ++count[3][k >> 24];
  }
  for (int d = 0; d < 4; ++d) {
    const int shift = 8 * d;
    std::uint32_t* c = count[d];
    if (c[(key[0] >> shift) & 0xffu] == n) continue;  // one digit for all: already in order
    std::uint32_t start = 0;
    for (int x = 0; x < 256; ++x) {
      const std::uint32_t here = c[x];
      c[x] = start;
      start += here;
    }
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint32_t to = c[(key[i] >> shift) & 0xffu]++;
      k2[to] = key[i];
      v2[to] = val[i];
    }
    key.swap(k2);
    val.swap(v2);
  }
}

// p(r) for every ascending-magnitude rank r of a vector of len ≥ 2 entries:
// (density − ε) + (r/(len − 1))·2·ε in f32, as mergekit forms it
// (della_magprune); nondecreasing in r where ε ≥ 0.
inline void della_rank_probabilities(std::int64_t len, float lo_p, float eps, float* p) {
  const auto den = static_cast<float>(len - 1);
  for (std::int64_t r = 0; r < len; ++r) {
    const float rn = std::clamp(static_cast<float>(r) / den, 0.0f, 1.0f);
    p[r] = lo_p + rn * 2.0f * eps;
  }
}

// DELLA's magnitude-ranked keep probabilities (della_magprune): within each
// vector along axis 1, the entry of ascending-magnitude rank r (0-based,
// ties by index) gets p(r) above; a vector of one entry gets p = density
// (mergekit's formula divides 0 by 0 there and torch refuses the NaN).
inline void della_probabilities(std::span<const float> d, std::span<const std::int64_t> shape, double density,
                                double epsilon, std::span<float> p) {
  const AxisOneVectors v(shape);
  const auto lo_p = static_cast<float>(density - epsilon), eps = static_cast<float>(epsilon);
  backend::cpu::parallel_kernel_blocks(
      v.count(), std::max<std::int64_t>(1, merge_block / std::max<std::int64_t>(v.len, 1)),
      [&](std::int64_t v0, std::int64_t v1) {
        const auto len = static_cast<std::size_t>(v.len);
        std::vector<std::uint32_t> key(len), key2(len), at(len), at2(len);
        std::vector<float> prank(len);
        if (len >= 2) della_rank_probabilities(v.len, lo_p, eps, prank.data());
        for (std::int64_t vec = v0; vec < v1; ++vec) {
          // Entry b of the vector lies at first + b·inner.
          const std::int64_t first = v.at(vec, 0);
          if (v.len == 1) {
            p[static_cast<std::size_t>(first)] = static_cast<float>(density);
            continue;
          }
          for (std::size_t b = 0; b < len; ++b) {
            key[b] = magnitude_key(d[static_cast<std::size_t>(first + static_cast<std::int64_t>(b) * v.inner)]);
            at[b] = static_cast<std::uint32_t>(b);
          }
          // Ascending magnitude, ties by index: a stable LSD radix
          // sort on the keys (entries start in index order).
          stable_radix_sort(key, at, key2, at2);
          for (std::size_t r = 0; r < len; ++r)
            p[static_cast<std::size_t>(first + static_cast<std::int64_t>(at[r]) * v.inner)] = prank[r];
        }
      });
}

// Keeps entry j of d iff keep(j) per the probabilities p (drawn by `rng`),
// zeroes the rest.
inline void bernoulli_mask(std::span<float> d, std::span<const float> p, RngKind rng, const Philox& philox,
                           TorchCpuGenerator* torch_gen) {
  const auto n = static_cast<std::int64_t>(d.size());
  if (rng == RngKind::torch) {
    for (std::int64_t j = 0; j < n; ++j)
      if (!torch_gen->bernoulli(p[static_cast<std::size_t>(j)])) d[static_cast<std::size_t>(j)] = 0.0f;
    return;
  }
  // The uniforms drawn in pieces by Philox::uniforms (vectorized; the same
  // values as uniform(j)).
  backend::cpu::parallel_kernel_blocks(n, merge_block, [&](std::int64_t lo, std::int64_t hi) {
    philox.uniform_pieces(static_cast<std::uint64_t>(lo), hi - lo, 0,
                          [&](std::int64_t k, std::int64_t c, const float* u) {
                            float* __restrict dv = d.data() + lo + k;
                            const float* __restrict pv = p.data() + lo + k;
                            for (std::int64_t j = 0; j < c; ++j) dv[j] = u[j] < pv[j] ? dv[j] : 0.0f;
                          });
  });
}

// The indices b in [b0, n) with lo ≤ u[b] < hi, ascending, appended to
// out at k; returns the new count.
inline std::size_t list_between_portable(const float* TWIN_RESTRICT u, std::size_t b0, std::size_t n, float lo,
                                         float hi, std::uint32_t* TWIN_RESTRICT out, std::size_t k) noexcept {
  for (std::size_t b = b0; b < n; ++b) {
    out[k] = static_cast<std::uint32_t>(b);
    k += (u[b] >= lo) & (u[b] < hi);
  }
  return k;
}
#if TWIN_X86_KERNELS
// The same 16 entries at a time by AVX-512 compresses (out must have room
// for 16 more than it gets).
__attribute__((target("avx512f"))) inline std::size_t list_between_avx512(const float* TWIN_RESTRICT u, std::size_t n,
                                                                          float lo, float hi,
                                                                          std::uint32_t* TWIN_RESTRICT out) noexcept {
  const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  const __m512i step = _mm512_set1_epi32(16);
  __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  std::size_t k = 0, b = 0;
  for (; b + 16 <= n; b += 16) {
    const __m512 v = _mm512_loadu_ps(u + b);
    const __mmask16 m = _mm512_cmp_ps_mask(v, vlo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(v, vhi, _CMP_LT_OQ);
    // The register form of the compress and a full store (the memory form is microcoded on Zen 4).
    _mm512_storeu_si512(out + k, _mm512_maskz_compress_epi32(m, idx));
    k += static_cast<std::size_t>(std::popcount(static_cast<unsigned>(m)));
    idx = _mm512_add_epi32(idx, step);
  }
  return list_between_portable(u, b, n, lo, hi, out, k);
}
#endif

// The indices b < n with lo ≤ u[b] < hi, ascending, into out (room for
// n + 16); returns how many. By AVX-512 compresses where `avx512`
// (cpu_has_avx512f() must hold).
inline std::size_t list_between(const float* TWIN_RESTRICT u, std::size_t n, float lo, float hi,
                                std::uint32_t* TWIN_RESTRICT out, bool avx512) noexcept {
#if TWIN_X86_KERNELS
  if (avx512) return list_between_avx512(u, n, lo, hi, out);
#endif
  (void)avx512;
  return list_between_portable(u, 0, n, lo, hi, out, 0);
}

// DELLA's Philox keep mask of one vector of consecutive entries (len ≥ 2,
// ε ≥ 0): the same mask as bernoulli_mask on della_probabilities' p (entry j
// kept iff uniform(j) < p(rank of j)) without sorting the vector. A histogram
// of the vector's keys in buckets monotone in the key bounds each entry's
// rank to its bucket's range [lo, hi], and p being nondecreasing, u < p(lo)
// keeps the entry and u ≥ p(hi) drops it (a draw outside [p(0), p(len − 1))
// needs no lookup at all); an entry whose u lies between
// (a few per vector: the range of p over one bucket is narrow) gets its
// exact rank by counting the keys below it and its equal keys before it. A
// vector with more undecided entries than `undecided_max` (long runs of
// ties) is sorted instead. Holds its scratch: one per thread.
class DellaVectorMask {
 public:
  DellaVectorMask(std::int64_t len, double density, double epsilon)
      : L_(static_cast<std::size_t>(len)),
        // Buckets: a power of two from len/2 to len (at least 16, at most
        // 4096; from len to 2·len the zeroing and prefix sums of mostly
        // empty buckets cost more than the few more undecided entries).
        bits_(std::clamp(static_cast<int>(std::bit_width(static_cast<std::uint64_t>(len - 1))) - 1, 4, 12)), key_(L_),
        bucket_(L_), start_((std::size_t{1} << bits_) + 1), start2_(start_.size()), mid_(L_ + 16), u_(L_), prank_(L_) {
    della_rank_probabilities(len, static_cast<float>(density - epsilon), static_cast<float>(epsilon), prank_.data());
  }

  // keep[b] = all ones where entry b of x (the vector at positions first,
  // first + 1, … of the tensor, drawn from `philox`) is kept, else 0.
  void operator()(const float* TWIN_RESTRICT x, std::uint64_t first, const Philox& philox,
                  std::uint32_t* TWIN_RESTRICT keep) {
    constexpr std::size_t undecided_max = 32;
    const std::size_t L = L_;
    std::uint32_t* TWIN_RESTRICT k = key_.data();
    std::uint32_t kmin = 0xffffffffu, kmax = 0;
    for (std::size_t b = 0; b < L; ++b) {
      k[b] = magnitude_key(x[b]);
      kmin = std::min(kmin, k[b]), kmax = std::max(kmax, k[b]);
    }
    philox.uniforms(first, L, 0, u_.data());
    const float* TWIN_RESTRICT uv = u_.data();
    const float* TWIN_RESTRICT pr = prank_.data();
    if (kmin == kmax) {  // all tied: the ranks are the indices
      for (std::size_t b = 0; b < L; ++b) keep[b] = uv[b] < pr[b] ? 0xffffffffu : 0u;
      return;
    }
    const int shift = std::max(0, static_cast<int>(std::bit_width(kmax - kmin)) - bits_);
    std::uint32_t* TWIN_RESTRICT bk = bucket_.data();
    for (std::size_t b = 0; b < L; ++b) bk[b] = (k[b] - kmin) >> shift;
    const std::size_t nb = ((kmax - kmin) >> shift) + 1;
    // Counted into two histograms, even and odd entries (runs of tied keys
    // would otherwise wait on the previous increment of the same bucket).
    std::uint32_t* TWIN_RESTRICT st = start_.data();
    std::uint32_t* TWIN_RESTRICT st2 = start2_.data();
    std::fill(st, st + nb + 1, 0u);
    std::fill(st2, st2 + nb + 1, 0u);
    std::size_t b2 = 0;
    for (; b2 + 2 <= L; b2 += 2) ++st[bk[b2] + 1], ++st2[bk[b2 + 1] + 1];
    if (b2 < L) ++st[bk[b2] + 1];
    for (std::size_t q = 1; q <= nb; ++q) st[q] += st2[q];
    for (std::size_t q = 1; q <= nb; ++q) st[q] += st[q - 1];  // st[q]: how many lie in buckets below q
    // Branch-free (the draws are random): u < p(0) keeps and u ≥
    // p(len − 1) drops whatever the rank; the others (about 2ε of them)
    // are listed in `mid`, then each is dropped where u ≥ p(hi) of its
    // bucket, and the undecided ones, p(lo) ≤ u < p(hi), stay listed
    // (mid[0..marked)).
    const float p_first = pr[0], p_last = pr[L - 1];
    std::size_t mids = 0;
    for (std::size_t b = 0; b < L; ++b) keep[b] = uv[b] < p_last ? 0xffffffffu : 0u;
    std::uint32_t* TWIN_RESTRICT mid = mid_.data();
    mids = list_between(uv, L, p_first, p_last, mid, avx512_);
    std::uint32_t marked = 0;
    for (std::size_t q = 0; q < mids; ++q) {
      const std::uint32_t b = mid[q];
      const float lo = pr[st[bk[b]]], hi = pr[st[bk[b] + 1] - 1];
      const std::uint32_t m = (uv[b] >= lo) & (uv[b] < hi);
      keep[b] &= uv[b] < hi ? 0xffffffffu : 0u;  // a mask: GCC made the select a branch
      mid[marked] = b;
      marked += m;
    }
    if (marked > undecided_max) {
      // Many undecided: every rank from a stable sort (ties by index) of
      // the keys themselves, which the next vector rewrites.
      key2_.resize(L), at_.resize(L), at2_.resize(L);
      for (std::size_t b = 0; b < L; ++b) at_[b] = static_cast<std::uint32_t>(b);
      stable_radix_sort(key_, at_, key2_, at2_);
      for (std::size_t r = 0; r < L; ++r) keep[at_[r]] &= uv[at_[r]] < pr[r] ? 0xffffffffu : 0u;
      return;
    }
    for (std::uint32_t q = 0; q < marked; ++q) {
      const std::uint32_t b = mid[q];
      const std::uint32_t kb = k[b];
      // The keys below kb and its equal keys before b: two plain counts in
      // 32-bit lanes, split at b (an index compare in one loop took 64-bit
      // lanes and half the speed).
      std::uint32_t rank = 0;
      for (std::size_t c = 0; c < b; ++c) rank += k[c] <= kb;
      for (std::size_t c = b; c < L; ++c) rank += k[c] < kb;
      keep[b] &= uv[b] < pr[rank] ? 0xffffffffu : 0u;
    }
  }

 private:
  std::size_t L_;
  int bits_;
  bool avx512_ = cpu_has_avx512f();
  std::vector<std::uint32_t> key_, bucket_, start_, start2_, mid_;
  std::vector<std::uint32_t> key2_, at_, at2_;  // for a vector that is sorted
  std::vector<float> u_, prank_;
};

// DELLA's Philox mask (DellaVectorMask) on vectors of consecutive entries
// (inner 1, len ≥ 2; ε ≥ 0) of a held δ: dropped entries zeroed.
inline void della_mask_philox(std::span<float> d, std::int64_t len, double density, double epsilon,
                              const Philox& philox) {
  const std::int64_t count = static_cast<std::int64_t>(d.size()) / len;
  const auto L = static_cast<std::size_t>(len);
  backend::cpu::parallel_kernel_blocks(count, std::max<std::int64_t>(1, merge_block / len),
                                       [&](std::int64_t v0, std::int64_t v1) {
                                         DellaVectorMask mask(len, density, epsilon);
                                         std::vector<std::uint32_t> keep(L);
                                         for (std::int64_t vec = v0; vec < v1; ++vec) {
                                           const std::int64_t first = vec * len;
                                           float* TWIN_RESTRICT x = d.data() + first;
                                           mask(x, static_cast<std::uint64_t>(first), philox, keep.data());
                                           for (std::size_t b = 0; b < L; ++b)
                                             x[b] = std::bit_cast<float>(std::bit_cast<std::uint32_t>(x[b]) & keep[b]);
                                         }
                                       });
}

// della_magprune on one expert's δ (n entries, the tensor's shape): the
// keep probabilities by magnitude rank, then the draws; p is scratch.
inline void della_magprune(std::span<float> d, std::span<const std::int64_t> shape, double density, double epsilon,
                           RngKind rng, const Philox& philox, TorchCpuGenerator* torch_gen, std::vector<float>& p) {
  const AxisOneVectors v(shape);
  if (d.empty()) return;
  // DellaVectorMask needs p nondecreasing in the rank: ε ≥ 0.
  if (rng == RngKind::philox && v.inner == 1 && v.len >= 2 && epsilon >= 0.0) {
    della_mask_philox(d, v.len, density, epsilon, philox);
    return;
  }
  p.resize(d.size());
  della_probabilities(d, shape, density, epsilon, p);
  bernoulli_mask(d, p, rng, philox, torch_gen);
}

// How one expert's δ is masked (gta_merge_masked, merge/gta.hpp): kept
// whole, dropped whole, DELLA's ranked draws within vectors
// (DellaVectorMask), or a Bernoulli draw per entry (u < density,
// bernoulli_mask's rule); the draws from `philox` at the entry's position.
struct ExpertMask {
  enum class Kind { all, none, della, bernoulli } kind = Kind::all;
  double density = 1.0, epsilon = 0.0;
  Philox philox{0};
};

// The masks of mergekit's DELLA for one tensor (della_magprune, Philox
// draws) where gta_merge_masked can take them: vectors along axis 1 that
// are consecutive and at most a merge block long, ε ≥ 0 (DellaVectorMask's
// p nondecreasing in the rank; mergekit also takes ε < 0); nullopt
// otherwise.
// Density ≥ 1 keeps δ_i, ≤ 0 drops it; a vector of one entry keeps with
// p = density (della_probabilities' rule).
inline std::optional<std::vector<ExpertMask>> della_masks(const TensorMergeArgs& a, std::span<const double> d,
                                                          std::span<const double> e, std::uint64_t seed) {
  const AxisOneVectors v(a.base.shape());
  if (v.inner != 1 || v.len > merge_block) return std::nullopt;
  for (std::size_t i = 0; i < d.size(); ++i)
    if (d[i] > 0.0 && d[i] < 1.0 && !(e[i] >= 0.0)) return std::nullopt;  // p decreasing in the rank
  std::vector<ExpertMask> m(d.size());
  for (std::size_t i = 0; i < d.size(); ++i) {
    const Philox philox(random_key(seed, a.name, i));
    if (d[i] >= 1.0) m[i] = {ExpertMask::Kind::all, 1.0, 0.0, philox};
    else if (d[i] <= 0.0) m[i] = {ExpertMask::Kind::none, 0.0, 0.0, philox};
    else if (v.len >= 2) m[i] = {ExpertMask::Kind::della, d[i], e[i], philox};
    else m[i] = {ExpertMask::Kind::bernoulli, d[i], 0.0, philox};
  }
  return m;
}

// Bit l of the word = bit 0 of k[l], l < 64.
inline std::uint64_t mask_word(const std::uint32_t* k) noexcept {
  std::uint64_t v = 0;
  for (int l = 0; l < 64; ++l) v |= static_cast<std::uint64_t>(k[l] & 1u) << l;
  return v;
}
#if TWIN_X86_KERNELS
// The same from four AVX-512 test masks (the loop above stays scalar).
__attribute__((target("avx512f"))) inline std::uint64_t mask_word_avx512(const std::uint32_t* k) noexcept {
  const __m512i one = _mm512_set1_epi32(1);
  std::uint64_t v = 0;
  for (int q = 0; q < 4; ++q)
    v |= static_cast<std::uint64_t>(_mm512_test_epi32_mask(_mm512_loadu_si512(k + 16 * q), one)) << (16 * q);
  return v;
}
#endif

// Bit j of words (j in [p0, p1)) = bit 0 of keep[j − p0], the bits of
// words outside [p0, p1) untouched; words that [p0, p1) covers only in
// part must be zero in it. Whole words are built in a register (an OR into
// memory per entry waits on the previous one), by mask_word_avx512 where
// `avx512` (cpu_has_avx512f() must hold).
inline void set_bits(const std::uint32_t* TWIN_RESTRICT keep, std::int64_t p0, std::int64_t p1,
                     std::uint64_t* TWIN_RESTRICT words, bool avx512) noexcept {
  std::int64_t j = p0;
  for (; j < p1 && (j & 63) != 0; ++j) words[j >> 6] |= static_cast<std::uint64_t>(keep[j - p0] & 1u) << (j & 63);
  for (; j + 64 <= p1; j += 64) {
#if TWIN_X86_KERNELS
    words[j >> 6] = avx512 ? mask_word_avx512(keep + (j - p0)) : mask_word(keep + (j - p0));
#else
    (void)avx512;
    words[j >> 6] = mask_word(keep + (j - p0));
#endif
  }
  for (; j < p1; ++j) words[j >> 6] |= static_cast<std::uint64_t>(keep[j - p0] & 1u) << (j & 63);
}

}  // namespace twin::detail
