// mergekit's generalized task arithmetic (GTA) core, per tensor, as
// docs/mergekit_methods.md §8–9 specify it, for the strategies we take with
// mergekit's own semantics (breadcrumbs, breadcrumbs_ties, della,
// della_linear; task_arithmetic, ties and dare keep the papers' rules,
// docs/design.md §3):
//   δ_i = expert_i − base, sparsified per expert with that expert's density
//   (and gamma or epsilon); with `rescale`, the survivors are scaled so the
//   L1 norm is unchanged: m·Σ|δ|/Σ|m|, unless either sum is below 1e-7;
//   D_i = w_i δ_i;
//   sign consensus: S = Σ_i D_i, the elected sign is + where S ≥ 0 and −
//     elsewhere; D_i is kept where its sign is the elected one (an exact zero
//     never is); M = Σ kept D_i, div = Σ kept w_i per element (0 → 1);
//   without: M = Σ_i D_i, div = Σ_i w_i (|div| < 1e-8 → 1);
//   `normalize`: M = M/div; then M = λ·M; the result is base + M.
// Sums run in f32 in model order, L1 norms in double over fixed blocks, so
// results do not depend on the thread count.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "twin/merge/merger.hpp"
#include "twin/merge/selection.hpp"
#include "twin/merge/streamed_cuts.hpp"
#include "twin/random.hpp"

namespace twin::detail {

// A per-expert parameter: `per[i]` when given per expert, else `all`.
inline double expert_param(const std::vector<double>& per, double all, std::size_t i, std::size_t T,
                           std::string_view what) {
  if (per.empty()) return all;
  if (per.size() != T)
    throw argument_error(std::string(what) + ": " + std::to_string(per.size()) + " values given for " +
                         std::to_string(T) + " experts");
  return per[i];
}

inline double l1_norm(std::span<const float> v) {
  // Per block in 8 lanes (lane_sum), the blocks in order.
  return parallel_sum<double>(static_cast<std::int64_t>(v.size()), merge_block, [&](std::int64_t lo, std::int64_t hi) {
    const float* __restrict x = v.data() + lo;
    return lane_sum(hi - lo, [&](std::int64_t j) { return std::abs(static_cast<double>(x[j])); });
  });
}

// mergekit's rescaled_masked_tensor with the L1 norm: `before` is Σ|δ|
// taken before the mask was applied to m.
inline void rescale_l1(std::span<float> m, double before) {
  const double after = l1_norm(m);
  if (before < 1e-7 || after < 1e-7) return;
  const auto s = static_cast<float>(before / after);
  parallel_blocks(static_cast<std::int64_t>(m.size()), merge_block, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t j = lo; j < hi; ++j) m[static_cast<std::size_t>(j)] *= s;
  });
}

// Each expert's kept band of magnitudes: the `keep` largest |δ_i| less the
// `drop` largest (drop ≤ keep; magnitude: drop 0; breadcrumbs: the outliers).
struct MagnitudeBand {
  std::int64_t keep = 0, drop = 0;
};

// breadcrumbs' magnitude_outliers: keep = floor(density·n) entries, after
// dropping the top = floor(gamma·n) largest magnitudes (fewer where
// keep + top > n, so that keep entries remain). density ≥ 1 keeps δ as is.
// Ties rank the lower index first. mergekit zeroes the whole δ when top = 0
// (a Python slice [bot:-0]); we keep the band, as its own docstring intends.
inline MagnitudeBand outlier_band(double density, double gamma, std::int64_t n) noexcept {
  if (density >= 1.0) return {n, 0};
  const std::int64_t keep = keep_count(density, n);
  const std::int64_t top = std::min(keep_count(gamma, n), n - keep);
  return {top + keep, top};
}

// The band above applied to a held δ.
inline void sparsify_outliers(std::span<float> d, double density, double gamma) {
  if (density >= 1.0) return;
  const auto n = static_cast<std::int64_t>(d.size());
  const MagnitudeBand b = outlier_band(density, gamma, n);
  // Both cuts are taken on the untouched values: the outlier set is a subset
  // of the kept band's upper cut, ties included.
  const std::int64_t ks[2] = {b.drop, b.keep};
  const std::span<const float> cd(d);
  const std::vector<MagnitudeCut> cut = select_top_ks([&](auto&& sink) { sink(cd); }, n, ks);
  apply_band(d, cut[1], cut[0]);
}

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
// (della_magprune); nondecreasing in r.
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
  parallel_blocks(v.count(), std::max<std::int64_t>(1, merge_block / std::max<std::int64_t>(v.len, 1)),
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
                        key[b] =
                            magnitude_key(d[static_cast<std::size_t>(first + static_cast<std::int64_t>(b) * v.inner)]);
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
  parallel_blocks(n, merge_block, [&](std::int64_t lo, std::int64_t hi) {
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
#if TWIN_PHILOX_X86
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
// (Philox::cpu_has(Philox::Kernel::avx512) must hold).
inline std::size_t list_between(const float* TWIN_RESTRICT u, std::size_t n, float lo, float hi,
                                std::uint32_t* TWIN_RESTRICT out, bool avx512) noexcept {
#if TWIN_PHILOX_X86
  if (avx512) return list_between_avx512(u, n, lo, hi, out);
#endif
  (void)avx512;
  return list_between_portable(u, 0, n, lo, hi, out, 0);
}

// DELLA's Philox keep mask of one vector of consecutive entries (len ≥ 2):
// the same mask as bernoulli_mask on della_probabilities' p (entry j kept
// iff uniform(j) < p(rank of j)) without sorting the vector. A histogram
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
        bucket_(L_), start_((std::size_t{1} << bits_) + 1), mid_(L_ + 16), u_(L_), prank_(L_) {
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
    std::uint32_t* TWIN_RESTRICT st = start_.data();
    std::fill(st, st + nb + 1, 0u);
    for (std::size_t b = 0; b < L; ++b) ++st[bk[b] + 1];
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
      std::uint32_t rank = 0;
      for (std::size_t c = 0; c < L; ++c) rank += (k[c] < kb) | ((k[c] == kb) & (c < b));
      keep[b] &= uv[b] < pr[rank] ? 0xffffffffu : 0u;
    }
  }

 private:
  std::size_t L_;
  int bits_;
  bool avx512_ = Philox::cpu_has(Philox::Kernel::avx512);
  std::vector<std::uint32_t> key_, bucket_, start_, mid_;
  std::vector<std::uint32_t> key2_, at_, at2_;  // for a vector that is sorted
  std::vector<float> u_, prank_;
};

// DELLA's Philox mask (DellaVectorMask) on vectors of consecutive entries
// (inner 1, len ≥ 2) of a held δ: dropped entries zeroed.
inline void della_mask_philox(std::span<float> d, std::int64_t len, double density, double epsilon,
                              const Philox& philox) {
  const std::int64_t count = static_cast<std::int64_t>(d.size()) / len;
  const auto L = static_cast<std::size_t>(len);
  parallel_blocks(count, std::max<std::int64_t>(1, merge_block / len), [&](std::int64_t v0, std::int64_t v1) {
    DellaVectorMask mask(len, density, epsilon);
    std::vector<std::uint32_t> keep(L);
    for (std::int64_t vec = v0; vec < v1; ++vec) {
      const std::int64_t first = vec * len;
      float* TWIN_RESTRICT x = d.data() + first;
      mask(x, static_cast<std::uint64_t>(first), philox, keep.data());
      for (std::size_t b = 0; b < L; ++b) x[b] = std::bit_cast<float>(std::bit_cast<std::uint32_t>(x[b]) & keep[b]);
    }
  });
}

// della_magprune on one expert's δ (n entries, the tensor's shape): the
// keep probabilities by magnitude rank, then the draws; p is scratch.
inline void della_magprune(std::span<float> d, std::span<const std::int64_t> shape, double density, double epsilon,
                           RngKind rng, const Philox& philox, TorchCpuGenerator* torch_gen, std::vector<float>& p) {
  const AxisOneVectors v(shape);
  if (rng == RngKind::philox && v.inner == 1 && v.len >= 2) {
    della_mask_philox(d, v.len, density, epsilon, philox);
    return;
  }
  p.resize(d.size());
  della_probabilities(d, shape, density, epsilon, p);
  bernoulli_mask(d, p, rng, philox, torch_gen);
}

// The GTA rule shared by the strategies above.
struct GtaRule {
  std::string_view method;
  bool consensus = false;
  bool normalize = false;
  double scaling = 1.0;
  const std::vector<double>* weights = nullptr;  // per expert; empty: all 1
};

// base + λ·M at one position by the rule above, t(i) the sparsified δ_i
// (a vector of it in gta_lanes, one entry in gta_one), n experts in the
// rule's order of operations (model order, f32). flat_div is Σ w_i (1 where
// |Σ w_i| < 1e-8), the divisor without consensus.
template <class Lane>
f32v gta_lanes(std::size_t n, Lane&& t, const float* w, const GtaRule& r, float flat_div, f32v base) noexcept {
  const f32v zero = {};
  f32v merged = {}, div = {};
  if (r.consensus) {
    f32v sum = {};
    for (std::size_t i = 0; i < n; ++i) sum += w[i] * t(i);
    const auto nonneg = sum >= 0.0f;  // the sign the sum elects: + where S ≥ 0
    for (std::size_t i = 0; i < n; ++i) {
      const f32v dv = w[i] * t(i);
      const auto agree = (nonneg & (dv > 0.0f)) | (~nonneg & (dv < 0.0f));
      merged += agree ? dv : zero;
      div += agree ? zero + w[i] : zero;
    }
    div = div == 0.0f ? zero + 1.0f : div;
  } else {
    for (std::size_t i = 0; i < n; ++i) merged += w[i] * t(i);
    div = zero + flat_div;
  }
  if (r.normalize) merged = merged / div;
  return base + static_cast<float>(r.scaling) * merged;
}
template <class One>
float gta_one(std::size_t n, One&& t, const float* w, const GtaRule& r, float flat_div, float base) noexcept {
  float merged = 0.0f, div = flat_div;
  if (r.consensus) {
    float sum = 0.0f;
    for (std::size_t i = 0; i < n; ++i) sum += w[i] * t(i);
    div = 0.0f;
    for (std::size_t i = 0; i < n; ++i) {
      const float dv = w[i] * t(i);
      const bool agree = (sum >= 0.0f ? dv : -dv) > 0.0f;
      merged += agree ? dv : 0.0f;
      div += agree ? w[i] : 0.0f;
    }
    if (div == 0.0f) div = 1.0f;
  } else {
    for (std::size_t i = 0; i < n; ++i) merged += w[i] * t(i);
  }
  if (r.normalize) merged /= div;
  return base + static_cast<float>(r.scaling) * merged;
}

// Σ w_i, or 1 where it is (nearly) zero: the divisor without consensus.
inline float gta_flat_div(const std::vector<float>& w) noexcept {
  float wsum = 0.0f;
  for (float x : w) wsum += x;
  return std::abs(wsum) < 1e-8f ? 1.0f : wsum;
}

// δ_i for every expert into the thread's scratch rows, sparsify(i, row) on
// each in model order (the order random draws are consumed), then the
// combination into a.out. a.out holds base + M.
template <class Sparsify>
void gta_merge(const TensorMergeArgs& a, const GtaRule& r, Sparsify&& sparsify) {
  const std::vector<float> w = resolve_weights(*r.weights, a.experts.size(), r.method);
  const std::size_t T = w.size();
  const std::int64_t n = a.base.numel();
  std::vector<float>& tau = tau_scratch();
  task_vectors_f32(a, tau);
  for (std::size_t i = 0; i < T; ++i)
    sparsify(i, std::span<float>(tau.data() + static_cast<std::int64_t>(i) * n, static_cast<std::size_t>(n)));
  const float flat_div = gta_flat_div(w);
  merge_chunks(a, merge_block, [&](std::int64_t) {
    return [&, rows = std::vector<const float*>(T)](std::int64_t lo, std::int64_t c, const float* base,
                                                    const float* const*, float* out) mutable {
      for (std::size_t i = 0; i < T; ++i) rows[i] = tau.data() + i * static_cast<std::size_t>(n) + lo;
      combine_rows(
          c, T, rows.data(), base,
          [&](std::size_t k, auto&& t, f32v b) { return gta_lanes(k, t, w.data(), r, flat_div, b); },
          [&](std::size_t k, auto&& t, float b) { return gta_one(k, t, w.data(), r, flat_div, b); }, out);
    };
  });
}

// gta_merge for magnitude bands, δ never held: every expert's cuts from one
// sample and one counting pass over the inputs (merge/streamed_cuts.hpp),
// a tie-count pass only where a cut splits its ties, and the combination
// forming the banded δ chunk by chunk. The same result as gta_merge with the
// band applied to held rows (exact cuts, same order of operations).
inline void gta_merge_bands(const TensorMergeArgs& a, const GtaRule& r, const std::vector<MagnitudeBand>& band) {
  const std::vector<float> w = resolve_weights(*r.weights, a.experts.size(), r.method);
  const std::size_t T = w.size();
  std::vector<CutRequest> req;
  for (std::size_t i = 0; i < T; ++i) {
    req.push_back({i, band[i].keep});
    req.push_back({i, band[i].drop});
  }
  std::vector<std::vector<std::int64_t>> ties;
  const std::vector<MagnitudeCut> cuts = task_vector_cuts(a, req, &ties);
  TensorCuts keep, drop;
  for (std::size_t i = 0; i < T; ++i) {
    keep.cut.push_back(cuts[2 * i]);
    keep.ties_before.push_back(std::move(ties[2 * i]));
    drop.cut.push_back(cuts[2 * i + 1]);
    drop.ties_before.push_back(std::move(ties[2 * i + 1]));
  }
  TensorCuts* both[2] = {&keep, &drop};
  count_ties(a, both);
  const float flat_div = gta_flat_div(w);
  combine_trimmed(
      a, keep, &drop, [&](std::size_t n, auto&& t, f32v b) { return gta_lanes(n, t, w.data(), r, flat_div, b); },
      [&](std::size_t n, auto&& t, float b) { return gta_one(n, t, w.data(), r, flat_div, b); });
}

// How gta_merge_masked masks one expert's δ: kept whole, dropped whole,
// DELLA's ranked draws within vectors (DellaVectorMask), or a Bernoulli
// draw per entry (u < density, bernoulli_mask's rule); the draws from
// `philox` at the entry's position.
struct ExpertMask {
  enum class Kind { all, none, della, bernoulli } kind = Kind::all;
  double density = 1.0, epsilon = 0.0;
  Philox philox{0};
};

// The masks of mergekit's DELLA for one tensor (della_magprune, Philox
// draws) where gta_merge_masked can take them: vectors along axis 1 that
// are consecutive and at most a merge block long; nullopt otherwise.
// Density ≥ 1 keeps δ_i, ≤ 0 drops it; a vector of one entry keeps with
// p = density (della_probabilities' rule).
inline std::optional<std::vector<ExpertMask>> della_masks(const TensorMergeArgs& a, std::span<const double> d,
                                                          std::span<const double> e, std::uint64_t seed) {
  const AxisOneVectors v(a.base.shape());
  if (v.inner != 1 || v.len > merge_block) return std::nullopt;
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

// Adds |x_j| (with Masked, x masked by keep: |+0| where it drops) for the
// positions j in [p0, p1) of a block starting at lo into lane[(j − lo) mod 8],
// in order: lane_sum's order over the block (x and keep indexed from p0).
template <bool Masked>
void add_abs_lanes(std::array<double, 8>& lane, std::int64_t lo, std::int64_t p0, std::int64_t p1,
                   const float* TWIN_RESTRICT x, const std::uint32_t* TWIN_RESTRICT keep) noexcept {
  const auto at = [&](std::int64_t j) {
    std::uint32_t v = std::bit_cast<std::uint32_t>(x[j - p0]);
    if constexpr (Masked) v &= keep[j - p0];
    return std::abs(static_cast<double>(std::bit_cast<float>(v)));
  };
  std::array<double, 8> acc = lane;  // in registers through the loop
  std::int64_t j = p0;
  for (; j < p1 && (j - lo) % 8 != 0; ++j) acc[static_cast<std::size_t>((j - lo) % 8)] += at(j);
  for (; j + 8 <= p1; j += 8)
    for (std::size_t l = 0; l < 8; ++l) acc[l] += at(j + static_cast<std::int64_t>(l));
  for (; j < p1; ++j) acc[static_cast<std::size_t>((j - lo) % 8)] += at(j);
  lane = acc;
}

// Bit l of the word = bit 0 of k[l], l < 64.
inline std::uint64_t mask_word(const std::uint32_t* k) noexcept {
  std::uint64_t v = 0;
  for (int l = 0; l < 64; ++l) v |= static_cast<std::uint64_t>(k[l] & 1u) << l;
  return v;
}
#if TWIN_PHILOX_X86
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
// `avx512` (Philox::cpu_has(Philox::Kernel::avx512) must hold).
inline void set_bits(const std::uint32_t* TWIN_RESTRICT keep, std::int64_t p0, std::int64_t p1,
                     std::uint64_t* TWIN_RESTRICT words, bool avx512) noexcept {
  std::int64_t j = p0;
  for (; j < p1 && (j & 63) != 0; ++j) words[j >> 6] |= static_cast<std::uint64_t>(keep[j - p0] & 1u) << (j & 63);
  for (; j + 64 <= p1; j += 64) {
#if TWIN_PHILOX_X86
    words[j >> 6] = avx512 ? mask_word_avx512(keep + (j - p0)) : mask_word(keep + (j - p0));
#else
    (void)avx512;
    words[j >> 6] = mask_word(keep + (j - p0));
#endif
  }
  for (; j < p1; ++j) words[j >> 6] |= static_cast<std::uint64_t>(keep[j - p0] & 1u) << (j & 63);
}

// The calling thread's mask bits of gta_merge_masked, reused across
// tensors (a fresh buffer per tensor costs page faults).
inline std::vector<std::uint64_t>& mask_bits_scratch() {
  thread_local std::vector<std::uint64_t> bits;
  return bits;
}

// gta_merge with each δ_i masked by its ExpertMask and, with `rescale`,
// the survivors scaled by Σ|δ_i|/Σ|kept δ_i| (rescale_l1's rule and sums)
// — δ never held. Pass 1, per merge block: each vector of `len` entries
// (DELLA's vectors; 4096 entries where no expert is ranked) that meets the block is formed
// from the inputs for every masked expert, its mask drawn, and the block's
// part of it recorded as one bit per entry and expert, with the block's L1
// sums in l1_norm's lanes (a vector across two blocks is masked by both:
// the same draws); pass 2 forms kept δ·scale from the inputs and the bits
// and combines them. The same result as gta_merge with the masks and
// rescale_l1 applied to held rows, for any thread count. Where an expert is
// ranked, the vectors are della_masks': along axis 1, consecutive, at most
// a merge block long.
inline void gta_merge_masked(const TensorMergeArgs& a, const GtaRule& r, std::span<const ExpertMask> mask,
                             bool rescale) {
  using Kind = ExpertMask::Kind;
  const std::vector<float> w = resolve_weights(*r.weights, a.experts.size(), r.method);
  const std::size_t T = w.size();
  const std::int64_t n = a.base.numel();
  const std::int64_t words = (n + 63) / 64, blocks = (n + merge_block - 1) / merge_block;
  bool ranked = false;
  std::vector<std::size_t> drawn;  // the experts whose masks are drawn
  for (std::size_t i = 0; i < T; ++i) {
    ranked |= mask[i].kind == Kind::della;
    if (mask[i].kind == Kind::della || mask[i].kind == Kind::bernoulli) drawn.push_back(i);
  }
  const std::int64_t seg = ranked ? AxisOneVectors(a.base.shape()).len : std::min<std::int64_t>(4096, merge_block);
  // Expert i's bits at words·i; a drawn expert's are zeroed block by block in pass 1.
  std::vector<std::uint64_t>& bits = mask_bits_scratch();
  if (bits.size() < T * static_cast<std::size_t>(words)) bits.resize(T * static_cast<std::size_t>(words));
  for (std::size_t i = 0; i < T; ++i)
    if (mask[i].kind == Kind::all || mask[i].kind == Kind::none)
      std::fill_n(bits.begin() + static_cast<std::ptrdiff_t>(i * static_cast<std::size_t>(words)), words,
                  mask[i].kind == Kind::all ? ~std::uint64_t{0} : 0);
  // Per block and drawn expert: Σ|δ| and Σ|kept δ| (rescale only).
  static const bool avx512 = Philox::cpu_has(Philox::Kernel::avx512);
  std::vector<double> before(rescale ? static_cast<std::size_t>(blocks) * T : 0), after(before.size());
  if (!drawn.empty())
    parallel_blocks(n, merge_block, [&](std::int64_t lo, std::int64_t hi) {
      const auto b = static_cast<std::size_t>(lo / merge_block);
      const auto L = static_cast<std::size_t>(seg);
      float* rows = scratch_floats<6>(drawn.size() * L);
      std::vector<std::uint32_t> keep(L);
      std::vector<float> u(L);  // Bernoulli draws
      std::vector<std::optional<DellaVectorMask>> della(drawn.size());
      for (std::size_t x = 0; x < drawn.size(); ++x)
        if (mask[drawn[x]].kind == Kind::della) della[x].emplace(seg, mask[drawn[x]].density, mask[drawn[x]].epsilon);
      std::vector<std::array<double, 8>> lb(drawn.size()), la(drawn.size());
      for (std::size_t i : drawn)
        std::fill(bits.begin() + static_cast<std::ptrdiff_t>(i * static_cast<std::size_t>(words) +
                                                             static_cast<std::size_t>(lo >> 6)),
                  bits.begin() + static_cast<std::ptrdiff_t>(i * static_cast<std::size_t>(words) +
                                                             static_cast<std::size_t>((hi + 63) >> 6)),
                  0);
      for (std::int64_t s0 = lo / seg * seg; s0 < hi; s0 += seg) {
        const std::int64_t s1 = std::min(n, s0 + seg), p0 = std::max(lo, s0), p1 = std::min(hi, s1);
        for_input_chunks(a, s0, s1,
                         [&](std::int64_t at, std::int64_t c, const float* base, const float* const* ex, float*) {
                           for (std::size_t x = 0; x < drawn.size(); ++x) {
                             const float* TWIN_RESTRICT e = ex[drawn[x]];
                             float* TWIN_RESTRICT d = rows + x * L + (at - s0);
                             for (std::int64_t j = 0; j < c; ++j) d[j] = e[j] - base[j];
                           }
                         });
        for (std::size_t x = 0; x < drawn.size(); ++x) {
          const ExpertMask& m = mask[drawn[x]];
          const float* d = rows + x * L;
          if (rescale) add_abs_lanes<false>(lb[x], lo, p0, p1, d + (p0 - s0), nullptr);
          if (m.kind == Kind::della) {
            (*della[x])(d, static_cast<std::uint64_t>(s0), m.philox, keep.data());
          } else {
            m.philox.uniforms(static_cast<std::uint64_t>(s0), static_cast<std::size_t>(s1 - s0), 0, u.data());
            const auto p = static_cast<float>(m.density);
            for (std::size_t j = 0; j < static_cast<std::size_t>(s1 - s0); ++j) keep[j] = u[j] < p ? 0xffffffffu : 0u;
          }
          if (rescale) add_abs_lanes<true>(la[x], lo, p0, p1, d + (p0 - s0), keep.data() + (p0 - s0));
          set_bits(keep.data() + (p0 - s0), p0, p1, bits.data() + drawn[x] * static_cast<std::size_t>(words), avx512);
        }
      }
      if (rescale)
        for (std::size_t x = 0; x < drawn.size(); ++x) {
          double sb = 0.0, sa = 0.0;
          for (std::size_t l = 0; l < 8; ++l) sb += lb[x][l], sa += la[x][l];
          before[b * T + drawn[x]] = sb, after[b * T + drawn[x]] = sa;
        }
    });
  std::vector<float> scale(T, 1.0f);
  if (rescale)
    for (std::size_t i : drawn) {
      double sb = 0.0, sa = 0.0;  // the blocks in order, as parallel_sum adds them
      for (std::int64_t b = 0; b < blocks; ++b)
        sb += before[static_cast<std::size_t>(b) * T + i], sa += after[static_cast<std::size_t>(b) * T + i];
      if (!(sb < 1e-7 || sa < 1e-7)) scale[i] = static_cast<float>(sb / sa);
    }
  // Pass 2. Vectors of simd_lanes entries start at multiples of simd_lanes
  // (chunks start at multiples of the chunk size): their bits lie in one word.
  u32v lane_bit;
  for (int l = 0; l < simd_lanes; ++l) lane_bit[l] = 1u << l;
  const float flat_div = gta_flat_div(w);
  merge_chunks(a, merge_block, [&](std::int64_t) {
    return [&](std::int64_t lo, std::int64_t c, const float* base, const float* const* ex, float* out) {
      std::int64_t j = 0;
      for (; j + simd_lanes <= c; j += simd_lanes) {
        const std::int64_t pos = lo + j;
        const f32v bv = loadv(base + j);
        const auto t = [&](std::size_t i) {
          const std::uint64_t word = bits[i * static_cast<std::size_t>(words) + static_cast<std::size_t>(pos >> 6)];
          const auto m = static_cast<std::uint32_t>(word >> (pos & 63));
          const f32v x = (loadv(ex[i] + j) - bv) * scale[i];
          return ((u32v{} + m) & lane_bit) != 0 ? x : f32v{};
        };
        const f32v o = gta_lanes(T, t, w.data(), r, flat_div, bv);
        std::memcpy(out + j, &o, sizeof o);
      }
      for (; j < c; ++j) {
        const std::int64_t pos = lo + j;
        const auto t = [&](std::size_t i) {
          const std::uint64_t word = bits[i * static_cast<std::size_t>(words) + static_cast<std::size_t>(pos >> 6)];
          return (word >> (pos & 63)) & 1u ? (ex[i][j] - base[j]) * scale[i] : 0.0f;
        };
        out[j] = gta_one(T, t, w.data(), r, flat_div, base[j]);
      }
    };
  });
}

}  // namespace twin::detail

namespace twin {

// mergekit's sparsification methods (docs/mergekit_methods.md §9).
enum class GtaSparsifier { none, magnitude, random, magnitude_outliers, della_magprune };

// mergekit's generalized task arithmetic as it is, every switch exposed: the
// rule above with
//   none: δ as is; magnitude: the floor(density·n) largest |δ| over the
//   tensor (ties by index); random: kept with probability density (DARE);
//   magnitude_outliers: breadcrumbs' band; della_magprune: DELLA's ranks;
// each returning δ untouched at density ≥ 1 (della: dropped at ≤ 0), then the
// L1 rescale when `rescale`. Draws as in merge/della.hpp (philox by default,
// or torch's stream for the tensor, experts in order). This is what a
// mergekit config's task_arithmetic / ties / dare_linear / dare_ties /
// breadcrumbs* / della* computes; twin's own Ties and Dare keep the papers'
// rules (per-tensor or global top-k; 1/p rescale, normalized dare_ties).
struct GeneralizedTaskArithmetic {
  std::string method = "ties";  // the name it reports
  GtaSparsifier sparsifier = GtaSparsifier::magnitude;
  bool consensus = true;
  bool normalize = true;
  bool rescale = false;
  double scaling = 1.0;           // λ
  std::vector<double> weights;    // per expert; empty: all 1
  std::vector<double> densities;  // per expert; empty: 1 (mergekit's default)
  std::vector<double> gammas;     // per expert; empty: 0.01
  std::vector<double> epsilons;   // per expert; empty: 0.15
  std::uint64_t seed = 0;
  RngKind rng = RngKind::philox;

  std::string_view name() const noexcept { return method; }

  void merge_tensor(const TensorMergeArgs& a) const {
    detail::check_merge_args(a);
    if (detail::merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s); })) return;
    const std::size_t T = a.experts.size();
    std::vector<double> d(T), g(T), e(T);
    for (std::size_t i = 0; i < T; ++i) {
      d[i] = detail::expert_param(densities, 1.0, i, T, method + " density");
      g[i] = detail::expert_param(gammas, 0.01, i, T, method + " gamma");
      e[i] = detail::expert_param(epsilons, 0.15, i, T, method + " epsilon");
      if (!std::isfinite(d[i]) || d[i] < 0.0) throw argument_error(method + ": density must be ≥ 0");
      if (sparsifier == GtaSparsifier::magnitude_outliers) check_unit_interval(g[i], method + " gamma");
      if (sparsifier == GtaSparsifier::della_magprune && d[i] > 0.0 && d[i] < 1.0 &&
          (d[i] + e[i] >= 1.0 || d[i] - e[i] <= 0.0))
        throw argument_error(method + ": density ± epsilon must lie in (0, 1); expert " + std::to_string(i) +
                             " has density " + std::to_string(d[i]) + " and epsilon " + std::to_string(e[i]));
    }
    if (!rescale && (sparsifier == GtaSparsifier::none || sparsifier == GtaSparsifier::magnitude ||
                     sparsifier == GtaSparsifier::magnitude_outliers)) {
      // Deterministic magnitude bands: streamed, δ never held.
      const std::int64_t n = a.base.numel();
      std::vector<detail::MagnitudeBand> band(T);
      for (std::size_t i = 0; i < T; ++i) {
        if (sparsifier == GtaSparsifier::none || d[i] >= 1.0) band[i] = {n, 0};
        else if (sparsifier == GtaSparsifier::magnitude) band[i] = {keep_count(d[i], n), 0};
        else band[i] = detail::outlier_band(d[i], g[i], n);
      }
      detail::gta_merge_bands(a, detail::GtaRule{method, consensus, normalize, scaling, &weights}, band);
      return;
    }
    const detail::GtaRule rule{method, consensus, normalize, scaling, &weights};
    if (rng == RngKind::philox && sparsifier == GtaSparsifier::random) {
      // Drawn masks: streamed, δ never held.
      std::vector<detail::ExpertMask> m(T);
      for (std::size_t i = 0; i < T; ++i) {
        using Kind = detail::ExpertMask::Kind;
        const Kind k = d[i] >= 1.0 ? Kind::all : d[i] <= 0.0 ? Kind::none : Kind::bernoulli;
        m[i] = {k, d[i], 0.0, Philox(random_key(seed, a.name, i))};
      }
      detail::gta_merge_masked(a, rule, m, rescale);
      return;
    }
    if (rng == RngKind::philox && sparsifier == GtaSparsifier::della_magprune)
      if (const auto m = detail::della_masks(a, d, e, seed)) {
        detail::gta_merge_masked(a, rule, *m, rescale);
        return;
      }
    std::optional<TorchCpuGenerator> torch_gen;
    if (rng == RngKind::torch) torch_gen.emplace(seed);
    std::vector<float> p;
    detail::gta_merge(a, rule, [&](std::size_t i, std::span<float> row) {
      if (sparsifier == GtaSparsifier::none || d[i] >= 1.0) return;
      if (sparsifier == GtaSparsifier::della_magprune && d[i] <= 0.0) {
        std::fill(row.begin(), row.end(), 0.0f);
        return;
      }
      const double before = rescale ? detail::l1_norm(row) : 0.0;
      switch (sparsifier) {
        case GtaSparsifier::magnitude:
          apply_cut(row,
                    select_top_k(std::span<const float>(row), keep_count(d[i], static_cast<std::int64_t>(row.size()))));
          break;
        case GtaSparsifier::random:
          p.assign(row.size(), static_cast<float>(d[i]));
          detail::bernoulli_mask(row, p, rng, Philox(random_key(seed, a.name, i)), torch_gen ? &*torch_gen : nullptr);
          break;
        case GtaSparsifier::magnitude_outliers: detail::sparsify_outliers(row, d[i], g[i]); break;
        case GtaSparsifier::della_magprune:
          detail::della_magprune(row, a.base.shape(), d[i], e[i], rng, Philox(random_key(seed, a.name, i)),
                                 torch_gen ? &*torch_gen : nullptr, p);
          break;
        case GtaSparsifier::none: break;
      }
      if (rescale) detail::rescale_l1(row, before);
    });
  }

  // mergekit's rule and defaults for a GTA method name (§8's table), or
  // nullopt for another name.
  static std::optional<GeneralizedTaskArithmetic> mergekit(std::string_view m) {
    GeneralizedTaskArithmetic g;
    g.method = std::string(m);
    auto set = [&](GtaSparsifier s, bool consensus, bool normalize, bool rescale) {
      g.sparsifier = s, g.consensus = consensus, g.normalize = normalize, g.rescale = rescale;
      return g;
    };
    if (m == "task_arithmetic") return set(GtaSparsifier::none, false, false, false);
    if (m == "ties") return set(GtaSparsifier::magnitude, true, true, false);
    if (m == "dare_ties") return set(GtaSparsifier::random, true, false, true);
    if (m == "dare_linear") return set(GtaSparsifier::random, false, false, true);
    if (m == "breadcrumbs") return set(GtaSparsifier::magnitude_outliers, false, false, false);
    if (m == "breadcrumbs_ties") return set(GtaSparsifier::magnitude_outliers, true, false, false);
    if (m == "della") return set(GtaSparsifier::della_magprune, true, true, true);
    if (m == "della_linear") return set(GtaSparsifier::della_magprune, false, false, true);
    return std::nullopt;
  }
};

}  // namespace twin
