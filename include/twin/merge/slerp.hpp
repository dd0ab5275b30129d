// Slerp: spherical interpolation between the base (t = 0) and one expert
// (t = 1), as mergekit's `slerp` computes it per tensor:
//   the whole tensor is one vector; u0 = v0/‖v0‖ and u1 = v1/‖v1‖ (a vector
//   of norm ≤ 1e-8 is left unnormalized, so a zero tensor counts as
//   orthogonal — kept for parity); dot = u0·u1, not clamped;
//   |dot| > 0.9995 (near-colinear or antiparallel): (1−t)·v0 + t·v1;
//   else θ0 = acos(dot), s0 = sin((1−t)θ0)/sin θ0, s1 = sin(tθ0)/sin θ0 and
//   the result is s0·v0 + s1·v1, on the original (unnormalized) tensors.
// t is not clamped (outside [0, 1] it extrapolates). Norms and the dot are
// summed in f32 lanes per chunk and double across chunks (mergekit: float32),
// the result formed in f32; t = 0 gives the base back exactly.
#pragma once

#include <cmath>

#include "twin/merge/interpolate.hpp"
#include "twin/merge/merger.hpp"

namespace twin {

struct Slerp {
  double t = 0.5;

  std::string_view name() const noexcept { return "slerp"; }

  // (s0, s1): the coefficients of base and expert for this tensor.
  std::pair<double, double> coefficients(const TensorMergeArgs& a) const {
    const detail::Gram g = detail::gram_tensor(a, 2, detail::InputVectors{detail::InputVectors::first});
    const double n0 = std::sqrt(g.g[0]), n1 = std::sqrt(g.g[3]);
    const double dot = g.g[1] / ((n0 > 1e-8 ? n0 : 1.0) * (n1 > 1e-8 ? n1 : 1.0));
    if (std::abs(dot) > 0.9995) return {1.0 - t, t};
    const double theta = std::acos(dot), s = std::sin(theta);
    return {std::sin((1.0 - t) * theta) / s, std::sin(t * theta) / s};
  }

  void merge_tensor(const TensorMergeArgs& a) const {
    detail::check_merge_args(a);
    if (a.experts.size() != 1)
      throw argument_error("slerp interpolates the base and exactly one expert; tensor '" + std::string(a.name) +
                           "' has " + std::to_string(a.experts.size()) + " experts");
    if (!std::isfinite(t)) throw argument_error("slerp: t must be finite");
    if (detail::merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s); })) return;
    const auto [s0d, s1d] = coefficients(a);
    const auto s0 = static_cast<float>(s0d), s1 = static_cast<float>(s1d);
    detail::merge_chunks(a, detail::merge_block, [&](std::int64_t) {
      return [&](std::int64_t, std::int64_t n, const float* base, const float* const* ex, float* out) {
        for (std::int64_t j = 0; j < n; ++j) out[j] = s0 * base[j] + s1 * ex[0][j];
      };
    });
  }
};

}  // namespace twin
