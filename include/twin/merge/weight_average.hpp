// WeightAverage ("average") and Linear (mergekit's `linear`, docs/
// mergekit_methods.md §2): θ = Σ_i w_i θ_i, divided by Σ_i w_i when
// `normalize` (the default); with base_weight set the base is one more input
// with that weight (mergekit: a base_model listed, or given a weight).
// Weights that sum to 0 under normalize are refused (mergekit divides by 0).
// The default (all weights 1, normalize, no base) is the plain mean of the
// experts.
#pragma once

#include <numeric>
#include <optional>

#include "twin/merge/merger.hpp"

namespace twin {

namespace detail {
template <bool IsLinear>
struct LinearBase {
  std::vector<double> weights;        // per expert; empty: all 1
  bool normalize = true;              // divide by the weight sum
  std::optional<double> base_weight;  // the base as one more input, with this weight

  std::string_view name() const noexcept { return IsLinear ? "linear" : "average"; }

  void merge_tensor(const TensorMergeArgs& a) const {
    check_merge_args(a);
    if (merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s); })) return;
    const std::vector<float> w = resolve_weights(weights, a.experts.size(), name());
    const auto wb = static_cast<float>(base_weight.value_or(0.0));
    const float wsum = std::accumulate(w.begin(), w.end(), 0.0f) + wb;
    if (normalize && wsum == 0.0f) throw argument_error(std::string(name()) + ": the weights sum to 0");
    const float div = normalize ? wsum : 1.0f;
    const std::size_t T = w.size();
    const bool with_base = base_weight.has_value();
    merge_chunks_by_expert(a, merge_block, [&](std::int64_t) {
      return [&](std::int64_t, std::int64_t n, const float* base, const ExpertChunks& ex, float* out) {
        for (std::int64_t j = 0; j < n; ++j) out[j] = 0.0f;
        for (std::size_t i = 0; i < T; ++i)
          ex.with(i, [&, wi = w[i]](auto x) {
            for (std::int64_t j = 0; j < n; ++j) out[j] += wi * x(j);
          });
        if (with_base)
          for (std::int64_t j = 0; j < n; ++j) out[j] += wb * base[j];
        for (std::int64_t j = 0; j < n; ++j) out[j] /= div;
      };
    });
  }
};
}  // namespace detail

struct WeightAverage : detail::LinearBase<false> {};
struct Linear : detail::LinearBase<true> {};

}  // namespace twin
