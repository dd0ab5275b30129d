// Breadcrumbs (Davari & Belilovsky 2024): from each τ_i drop the largest
// γ·n entries by |·| (outliers) and the smallest, so that density·n are kept:
// with order by decreasing |τ|, ranks [floor(γn), floor(γn) + floor(density·n))
// survive (clamped to n); then Task Arithmetic, θ0 + λ Σ w_i τ''_i.
// Tensors with fewer than 1/γ entries lose no outliers (floor(γn) = 0) and are
// trimmed like any other; mergekit zeroes them instead, which we do not copy.
#pragma once

#include "twin/merge/merger.hpp"
#include "twin/merge/selection.hpp"

namespace twin {

struct Breadcrumbs {
  double density = 0.9;         // fraction of each task vector kept
  double gamma = 0.01;          // fraction of largest-magnitude entries dropped
  double scaling = 1.0;         // λ
  std::vector<double> weights;  // per expert; empty: all 1

  std::string_view name() const noexcept { return "breadcrumbs"; }

  void merge_tensor(const TensorMergeArgs& a) const {
    detail::check_merge_args(a);
    if (detail::merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s); })) return;
    check_unit_interval(density, "breadcrumbs density");
    check_unit_interval(gamma, "breadcrumbs gamma");
    const std::vector<float> w = resolve_weights(weights, a.experts.size(), name());
    const std::int64_t n = a.base.numel();
    std::vector<float>& tau = detail::tau_scratch();
    detail::task_vectors_f32(a, tau);
    const std::int64_t top = keep_count(gamma, n);
    const std::int64_t keep = std::min(n, top + keep_count(density, n));
    for (std::size_t i = 0; i < w.size(); ++i) {
      std::span<float> row(tau.data() + static_cast<std::int64_t>(i) * n, static_cast<std::size_t>(n));
      // Both cuts are taken on the untouched row: the outlier set is a
      // subset of the kept band's upper cut, ties included.
      const MagnitudeCut upper = select_top_k(std::span<const float>(row), top);
      const MagnitudeCut lower = select_top_k(std::span<const float>(row), keep);
      apply_cut(row, lower);
      apply_cut(row, upper, /*zero_selected=*/true);
    }
    const float lambda = static_cast<float>(scaling);
    const std::size_t T = w.size();
    detail::merge_chunks(a, detail::merge_block, [&](std::int64_t) {
      return [&](std::int64_t lo, std::int64_t c, const float* base, const float* const*, float* out) {
        for (std::int64_t j = 0; j < c; ++j) out[j] = 0.0f;
        for (std::size_t i = 0; i < T; ++i) {
          const float* t = tau.data() + static_cast<std::int64_t>(i) * n + lo;
          for (std::int64_t j = 0; j < c; ++j) out[j] += w[i] * t[j];
        }
        for (std::int64_t j = 0; j < c; ++j) out[j] = base[j] + lambda * out[j];
      };
    });
  }
};

}  // namespace twin
