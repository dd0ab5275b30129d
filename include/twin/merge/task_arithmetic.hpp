// TaskArithmetic (Ilharco et al. 2023): θ = θ0 + λ Σ_i w_i τ_i, τ_i = θ_i − θ0.
// λ is `scaling`; Twin-Merging's default shared merge uses λ ≈ 0.3.
#pragma once

#include "twin/merge/merger.hpp"

namespace twin {

struct TaskArithmetic {
  double scaling = 1.0;         // λ
  std::vector<double> weights;  // per expert; empty: all 1

  std::string_view name() const noexcept { return "task_arithmetic"; }

  void merge_tensor(const TensorMergeArgs& a) const {
    detail::check_merge_args(a);
    if (detail::merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s); })) return;
    const std::vector<float> w = resolve_weights(weights, a.experts.size(), name());
    const float lambda = static_cast<float>(scaling);
    const std::size_t T = w.size();
    detail::merge_chunks_by_expert(a, detail::merge_block, [&](std::int64_t) {
      return [&](std::int64_t, std::int64_t n, const float* base, const detail::ExpertChunks& ex, float* out) {
        for (std::int64_t j = 0; j < n; ++j) out[j] = 0.0f;
        for (std::size_t i = 0; i < T; ++i)
          ex.with(i, [&, wi = w[i]](auto x) {
            for (std::int64_t j = 0; j < n; ++j) out[j] += wi * (x(j) - base[j]);
          });
        for (std::int64_t j = 0; j < n; ++j) out[j] = base[j] + lambda * out[j];
      };
    });
  }
};

}  // namespace twin
