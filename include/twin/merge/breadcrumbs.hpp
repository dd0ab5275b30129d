// Breadcrumbs (Davari & Belilovsky 2024) and mergekit's breadcrumbs_ties: from
// each τ_i drop the largest γ·n entries by |·| (outliers) and the smallest, so
// that floor(density·n) are kept (merge/gta.hpp: sparsify_outliers), then
//   Breadcrumbs:     θ0 + λ Σ w_i τ''_i (mergekit's breadcrumbs);
//   BreadcrumbsTies: θ0 + λ Σ kept w_i τ''_i under TIES' sign consensus of the
//                    weighted τ'' (merge/gta.hpp), not normalized by default.
// Density ≥ 1 keeps τ as is; where density + γ > 1 fewer outliers are dropped
// so that the density holds (both as mergekit). Tensors with fewer than 1/γ
// entries lose no outliers (floor(γn) = 0) and are trimmed like any other;
// mergekit zeroes them instead, which we do not copy.
// density, gamma: one value for every expert, or one per expert (densities,
// gammas); mergekit's defaults are density 1 and gamma 0.01.
#pragma once

#include "twin/merge/gta.hpp"

namespace twin {

namespace detail {
template <bool Consensus>
struct BreadcrumbsBase {
  double density = 0.9;           // fraction of each task vector kept
  double gamma = 0.01;            // fraction of largest-magnitude entries dropped
  double scaling = 1.0;           // λ
  std::vector<double> weights;    // per expert; empty: all 1
  std::vector<double> densities;  // per expert; empty: `density` for all
  std::vector<double> gammas;     // per expert; empty: `gamma` for all
  bool normalize = false;         // divide by the (kept) weight sum

  std::string_view name() const noexcept { return Consensus ? "breadcrumbs_ties" : "breadcrumbs"; }

  void merge_tensor(const TensorMergeArgs& a) const {
    check_merge_args(a);
    if (merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s); })) return;
    const std::size_t T = a.experts.size();
    std::vector<double> d(T), g(T);
    for (std::size_t i = 0; i < T; ++i) {
      d[i] = expert_param(densities, density, i, T, std::string(name()) + " density");
      g[i] = expert_param(gammas, gamma, i, T, std::string(name()) + " gamma");
      check_unit_interval(d[i], std::string(name()) + " density");
      check_unit_interval(g[i], std::string(name()) + " gamma");
    }
    std::vector<MagnitudeBand> band(T);
    for (std::size_t i = 0; i < T; ++i) band[i] = outlier_band(d[i], g[i], a.base.numel());
    // δ never held: the bands' cuts from one counting pass, then the combination.
    gta_merge_bands(a, GtaRule{name(), Consensus, normalize, scaling, &weights}, band);
  }
};
}  // namespace detail

struct Breadcrumbs : detail::BreadcrumbsBase<false> {};
struct BreadcrumbsTies : detail::BreadcrumbsBase<true> {};

}  // namespace twin
