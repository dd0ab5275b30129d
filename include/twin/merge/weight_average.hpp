// WeightAverage: θ = Σ_i w_i θ_i / Σ_i w_i over the experts (the base is not
// averaged in). With the default weights (all 1) this is the plain mean.
#pragma once

#include <numeric>

#include "twin/merge/merger.hpp"

namespace twin {

struct WeightAverage {
  std::vector<double> weights;  // per expert; empty: all 1

  std::string_view name() const noexcept { return "average"; }

  void merge_tensor(const TensorMergeArgs& a) const {
    detail::check_merge_args(a);
    if (detail::merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s); })) return;
    const std::vector<float> w = resolve_weights(weights, a.experts.size(), name());
    const float wsum = std::accumulate(w.begin(), w.end(), 0.0f);
    if (wsum == 0.0f) throw argument_error("average: the weights sum to 0");
    const std::size_t T = w.size();
    detail::merge_chunks(a, detail::merge_block, [&](std::int64_t) {
      return [&](std::int64_t, std::int64_t n, const float*, const float* const* ex, float* out) {
        for (std::int64_t j = 0; j < n; ++j) out[j] = 0.0f;
        for (std::size_t i = 0; i < T; ++i)
          for (std::int64_t j = 0; j < n; ++j) out[j] += w[i] * ex[i][j];
        for (std::int64_t j = 0; j < n; ++j) out[j] /= wsum;
      };
    });
  }
};

}  // namespace twin
