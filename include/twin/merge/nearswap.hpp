// Nearswap: where base and expert are close, take the expert; where they
// differ by more than t, move toward it only by t — mergekit's `nearswap`,
// elementwise (exactly one expert):
//   w = clamp(t / max(|base − expert|, 1e-6), 0, 1);
//   result = w·expert + (1 − w)·base.
// t ≥ 0 (t = 0 gives the base); computed in f32.
#pragma once

#include <algorithm>
#include <cmath>

#include "twin/merge/merger.hpp"

namespace twin {

struct Nearswap {
  double t = 0.001;

  std::string_view name() const noexcept { return "nearswap"; }

  void merge_tensor(const TensorMergeArgs& a) const {
    detail::check_merge_args(a);
    if (a.experts.size() != 1)
      throw argument_error("nearswap takes the base and exactly one expert; tensor '" + std::string(a.name) + "' has " +
                           std::to_string(a.experts.size()) + " experts");
    if (!(t >= 0.0) || !std::isfinite(t)) throw argument_error("nearswap: t must be finite and >= 0");
    if (detail::merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s); })) return;
    const auto tf = static_cast<float>(t);
    detail::merge_chunks(a, detail::merge_block, [&](std::int64_t) {
      return [&](std::int64_t, std::int64_t n, const float* base, const float* const* ex, float* out) {
        for (std::int64_t j = 0; j < n; ++j) {
          const float w = std::clamp(tf / std::max(std::abs(base[j] - ex[0][j]), 1e-6f), 0.0f, 1.0f);
          out[j] = w * ex[0][j] + (1.0f - w) * base[j];
        }
      };
    });
  }
};

}  // namespace twin
