// DELLA (Deep et al. 2024) as mergekit's `della` and `della_linear` compute it
// per tensor: each τ_i is pruned at random with a keep probability that grows
// with the entry's magnitude rank (della_magprune, merge/gta_masks.hpp),
// within each vector along axis 1 (a row of a matrix; a rank-1 tensor is one
// vector):
//   p = (density − ε) + 2ε · r/(len − 1), r the ascending-magnitude rank from
//   0 (ties by index), so the smallest entry is kept with density − ε and the
//   largest with density + ε; survivors rescaled to the L1 norm of τ_i (mergekit's
//   rescale, not 1/p); then
//   Della:       TIES' sign consensus of the weighted τ̃, normalized by the
//                kept weights (mergekit's defaults normalize = rescale = true);
//   DellaLinear: Σ w_i τ̃_i, not normalized;
//   θ = θ0 + λ · M (merge/gta.hpp).
// density ≥ 1 keeps τ_i; density ≤ 0 drops it; otherwise density ± ε must lie
// in (0, 1); ε < 0 (as mergekit allows) makes p fall with the rank. A vector
// of one entry keeps with p = density (mergekit fails on it with a NaN
// probability).
// Draws: rng = philox (default): entry j of expert i is kept iff
// Philox(seed, tensor name, i).uniform(j) < p, for any thread count;
// rng = torch: torch.manual_seed(seed) then torch.bernoulli, one MT19937 draw
// per entry, expert after expert in order, none for an expert at density ≥ 1
// or ≤ 0: the mask mergekit draws for this tensor when seeded right before it,
// where no two |τ| of a vector are equal and the inputs are f32. mergekit
// ranks by argsort().argsort(), which is not stable: torch orders equal
// magnitudes of vectors of 100 entries or more otherwise than by index, so
// there the probabilities (and the mask) differ; with a bf16 `dtype` it also
// computes the ranks and probabilities in bf16.
#pragma once

#include "twin/merge/gta.hpp"
#include "twin/random.hpp"

namespace twin {

namespace detail {

template <bool Consensus>
struct DellaBase {
  double density = 0.5;   // mean keep probability
  double epsilon = 0.15;  // half-width of the probability band
  double scaling = 1.0;   // λ
  std::uint64_t seed = 0;
  std::vector<double> weights;    // per expert; empty: all 1
  std::vector<double> densities;  // per expert; empty: `density` for all
  std::vector<double> epsilons;   // per expert; empty: `epsilon` for all
  bool normalize = Consensus;     // mergekit: della true, della_linear false
  bool rescale = true;            // L1-norm matching of the survivors
  RngKind rng = RngKind::philox;

  std::string_view name() const noexcept { return Consensus ? "della" : "della_linear"; }

  void merge_tensor(const TensorMergeArgs& a) const {
    check_merge_args(a);
    if (merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s); })) return;
    const std::size_t T = a.experts.size();
    std::vector<double> d(T), e(T);
    for (std::size_t i = 0; i < T; ++i) {
      d[i] = expert_param(densities, density, i, T, std::string(name()) + " density");
      e[i] = expert_param(epsilons, epsilon, i, T, std::string(name()) + " epsilon");
      if (!std::isfinite(d[i]) || !std::isfinite(e[i]))
        throw argument_error(std::string(name()) + ": density and epsilon must be finite");
      if (d[i] > 0.0 && d[i] < 1.0 && (d[i] + e[i] >= 1.0 || d[i] - e[i] <= 0.0))
        throw argument_error(std::string(name()) + ": density ± epsilon must lie in (0, 1); expert " +
                             std::to_string(i) + " has density " + std::to_string(d[i]) + " and epsilon " +
                             std::to_string(e[i]));
    }
    const GtaRule rule{name(), Consensus, normalize, scaling, &weights};
    if (rng == RngKind::philox)
      if (const auto m = della_masks(a, d, e, seed)) {  // δ never held
        gta_merge_masked(a, rule, *m, rescale);
        return;
      }
    std::optional<TorchCpuGenerator> torch_gen;
    if (rng == RngKind::torch) torch_gen.emplace(seed);
    std::vector<float> p;  // scratch of della_magprune
    gta_merge(a, rule, [&](std::size_t i, std::span<float> row) {
      if (d[i] >= 1.0) return;
      if (d[i] <= 0.0) {
        std::fill(row.begin(), row.end(), 0.0f);
        return;
      }
      const double before = rescale ? l1_norm(row) : 0.0;
      della_magprune(row, a.base.shape(), d[i], e[i], rng, Philox(random_key(seed, a.name, i)),
                     torch_gen ? &*torch_gen : nullptr, p);
      if (rescale) rescale_l1(row, before);
    });
  }
};
}  // namespace detail

struct Della : detail::DellaBase<true> {};
struct DellaLinear : detail::DellaBase<false> {};

}  // namespace twin
