// Passthrough (mergekit's `passthrough`, docs/mergekit_methods.md §14): the
// one expert's tensor as it is, times `scale` when one is set (a per-tensor
// factor, usually chosen through a config filter). The base only gives the
// shape; more than one expert is refused.
#pragma once

#include <optional>

#include "twin/merge/merger.hpp"

namespace twin {

struct Passthrough {
  std::optional<double> scale;

  std::string_view name() const noexcept { return "passthrough"; }

  void merge_tensor(const TensorMergeArgs& a) const {
    detail::check_merge_args(a);
    if (a.experts.size() != 1)
      throw argument_error("passthrough takes exactly one model; tensor '" + std::string(a.name) + "' has " +
                           std::to_string(a.experts.size()));
    if (detail::merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s); })) return;
    if (!scale) {
      copy_convert(a.experts[0], a.out);
      return;
    }
    const auto s = static_cast<float>(*scale);
    detail::merge_chunks(a, detail::merge_block, [&](std::int64_t) {
      return [&](std::int64_t, std::int64_t n, const float*, const float* const* ex, float* out) {
        for (std::int64_t j = 0; j < n; ++j) out[j] = ex[0][j] * s;
      };
    });
  }
};

}  // namespace twin
