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

#include "twin/backend/cpu/avx512_copies.hpp"
#include "twin/merge/gta_masks.hpp"
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
  return backend::cpu::parallel_kernel_sum<double>(
      static_cast<std::int64_t>(v.size()), merge_block, [&](std::int64_t lo, std::int64_t hi) {
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
  backend::cpu::parallel_kernel_blocks(static_cast<std::int64_t>(m.size()), merge_block,
                                       [&](std::int64_t lo, std::int64_t hi) {
                                         for (std::int64_t j = lo; j < hi; ++j) m[static_cast<std::size_t>(j)] *= s;
                                       });
}

// Each expert's kept band of magnitudes: the `keep` largest |δ_i| less the
// `drop` largest (drop ≤ keep; magnitude: drop 0; breadcrumbs: the outliers).
struct MagnitudeBand {
  std::int64_t keep = 0, drop = 0;
};

// breadcrumbs' magnitude_outliers: keep = int(density·n) entries, after
// dropping the top = int(gamma·n) largest magnitudes (fewer where keep + top
// > n, so that keep entries remain); int() truncates the double product as
// Python does (mergekit_keep_count). density ≥ 1 keeps δ as is.
// Ties rank the lower index first. mergekit zeroes the whole δ when top = 0
// (a Python slice [bot:-0]); we keep the band, as its own docstring intends.
inline MagnitudeBand outlier_band(double density, double gamma, std::int64_t n) noexcept {
  if (density >= 1.0) return {n, 0};
  const std::int64_t keep = mergekit_keep_count(density, n);
  const std::int64_t top = std::min(mergekit_keep_count(gamma, n), n - keep);
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
template <class V, class Lane>
TWIN_ALWAYS_INLINE void gta_lanes(std::size_t n, Lane&& t, const float* w, const GtaRule& r, float flat_div,
                                  const V& base, V& out) noexcept {
  using M = LaneMask<V>;
  const V zero = {};
  V merged = {}, div = {};
  if (r.consensus) {
    V sum = {};
    for (std::size_t i = 0; i < n; ++i) sum += w[i] * t(i);
    const M nonneg = (M)(sum >= 0.0f);  // the sign the sum elects: + where S ≥ 0
    for (std::size_t i = 0; i < n; ++i) {
      V dv = w[i] * t(i), weight = zero + w[i];
      const M agree = (nonneg & (M)(dv > 0.0f)) | (~nonneg & (M)(dv < 0.0f));
      keep_lanes(dv, agree);
      keep_lanes(weight, agree);
      merged += dv;
      div += weight;
    }
    div = div == 0.0f ? zero + 1.0f : div;
  } else {
    for (std::size_t i = 0; i < n; ++i) merged += w[i] * t(i);
    div = zero + flat_div;
  }
  if (r.normalize) merged = merged / div;
  out = base + static_cast<float>(r.scaling) * merged;
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
          [&](std::size_t k, auto&& t, const auto& b, auto& o) { gta_lanes(k, t, w.data(), r, flat_div, b, o); },
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
      a, keep, &drop,
      [&](std::size_t n, auto&& t, const auto& b, auto& o) { gta_lanes(n, t, w.data(), r, flat_div, b, o); },
      [&](std::size_t n, auto&& t, float b) { return gta_one(n, t, w.data(), r, flat_div, b); });
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

// The calling thread's mask bits of gta_merge_masked, reused across
// tensors (a fresh buffer per tensor costs page faults); it keeps T·n/8
// bytes of the largest tensor merged, as tau_scratch keeps 4·T·n.
inline std::vector<std::uint64_t>& mask_bits_scratch() {
  thread_local std::vector<std::uint64_t> bits;
  return bits;
}

// gta_merge with each δ_i masked by its ExpertMask and, with `rescale`,
// the survivors scaled by Σ|δ_i|/Σ|kept δ_i| (rescale_l1's rule and sums)
// — δ never held. Pass 1, per merge block: each vector that meets the
// block (DELLA's, along axis 1; runs of 4096 entries where no expert is
// ranked) is formed from the inputs for every drawn expert, its mask
// drawn, and the block's part of it recorded as one bit per entry and
// expert, with the block's L1 sums in l1_norm's lanes (a vector across two
// blocks is masked by both: the same draws); pass 2 forms kept δ·scale
// from the inputs and the bits and combines them. The same result as gta_merge with the masks and
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
  static const bool avx512 = cpu_has_avx512f();
  // Per block and drawn expert: Σ|δ| and Σ|kept δ| (rescale only).
  std::vector<double> before(rescale ? static_cast<std::size_t>(blocks) * T : 0), after(before.size());
  if (!drawn.empty())
    backend::cpu::parallel_kernel_blocks(n, merge_block, [&](std::int64_t lo, std::int64_t hi) {
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
  // Pass 2. Kept δ (dropped: +0) times the scale, as rescale_l1 scales a
  // masked row (+0·scale is NaN where the scale is NaN or infinite, as
  // there). A vector of simd_lanes entries takes its bits from one word, or
  // two where it straddles one (a chunk size not a multiple of simd_lanes).
  u32v lane_bit;
  for (int l = 0; l < simd_lanes; ++l) lane_bit[l] = 1u << l;
  const auto lane_bits = [&](std::size_t i, std::int64_t pos) {
    const std::uint64_t* e = bits.data() + i * static_cast<std::size_t>(words);
    const auto at = static_cast<std::size_t>(pos >> 6);
    const auto sh = static_cast<unsigned>(pos & 63);
    std::uint64_t word = e[at] >> sh;
    if (sh > 64 - simd_lanes && at + 1 < static_cast<std::size_t>(words)) word |= e[at + 1] << (64 - sh);
    return static_cast<std::uint32_t>(word);
  };
  const float flat_div = gta_flat_div(w);
  merge_chunks(a, merge_block, [&](std::int64_t) {
    return [&](std::int64_t lo, std::int64_t c, const float* base, const float* const* ex, float* out) {
      std::int64_t j = 0;
      for (; j + simd_lanes <= c; j += simd_lanes) {
        const std::int64_t pos = lo + j;
        const f32v bv = loadv(base + j);
        const auto t = [&](std::size_t i) {
          const f32v x = loadv(ex[i] + j) - bv;
          return (((u32v{} + lane_bits(i, pos)) & lane_bit) != 0 ? x : f32v{}) * scale[i];
        };
        f32v o;
        gta_lanes(T, t, w.data(), r, flat_div, bv, o);
        std::memcpy(out + j, &o, sizeof o);
      }
      for (; j < c; ++j) {
        const std::int64_t pos = lo + j;
        const auto t = [&](std::size_t i) {
          const std::uint64_t word = bits[i * static_cast<std::size_t>(words) + static_cast<std::size_t>(pos >> 6)];
          return ((word >> (pos & 63)) & 1u ? ex[i][j] - base[j] : 0.0f) * scale[i];
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
//   none: δ as is; magnitude: the int(density·n) largest |δ| over the
//   tensor (Python's truncation of the double product; ties by index); random: kept with probability density (DARE);
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
      if (sparsifier == GtaSparsifier::della_magprune && !std::isfinite(e[i]))
        throw argument_error(method + ": epsilon must be finite");
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
        else if (sparsifier == GtaSparsifier::magnitude) band[i] = {mergekit_keep_count(d[i], n), 0};
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
          apply_cut(row, select_top_k(std::span<const float>(row),
                                      mergekit_keep_count(d[i], static_cast<std::int64_t>(row.size()))));
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
