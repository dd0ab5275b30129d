// MultiSlerp: barycentric interpolation of several experts on a hypersphere,
// as mergekit's `multislerp` computes it per tensor (docs/mergekit_methods.md
// §5). With use_base the vectors are y_i = expert_i − base (else the experts
// themselves), each flattened to one vector:
//   w = the weights (divided by Σ w when normalize_weights; no zero guard);
//   n_i = ‖y_i‖, u_i = y_i/(n_i + eps); m = Σ w_i u_i;
//   ‖m‖ < eps: with two experts Σ w_i y_i, else an error; m̂ = m/‖m‖;
//   τ = Σ w_i (u_i − (u_i·m̂) m̂) (a projection onto the tangent space at m̂,
//   not a log map), ν = ‖τ‖ + eps;
//   r = (m̂ cos ν + τ sin ν/ν)·Σ w_i n_i, plus the base with use_base.
// The result lies in the span of the y_i: one pass forms their Gram matrix
// (merge/interpolate.hpp), the algebra runs on coefficients in double, one
// pass writes the combination. One expert is returned as is.
#pragma once

#include <cmath>
#include <numeric>

#include "twin/merge/interpolate.hpp"
#include "twin/merge/merger.hpp"

namespace twin {

struct MultiSlerp {
  std::vector<double> weights;  // per expert; empty: all 1
  bool normalize_weights = true;
  double eps = 1e-8;
  bool use_base = true;  // interpolate the task vectors (mergekit: base_model set)

  std::string_view name() const noexcept { return "multislerp"; }

  // The result as a combination of the experts (relative to the base with use_base).
  detail::Combination coefficients(const TensorMergeArgs& a) const {
    const std::size_t N = a.experts.size();
    if (N == 1) return {false, 0.0, {1.0}};
    std::vector<double> w(N, 1.0);
    if (!weights.empty()) {
      if (weights.size() != N)
        throw argument_error("multislerp: " + std::to_string(weights.size()) + " weights given for " +
                             std::to_string(N) + " experts");
      w = weights;
    }
    if (normalize_weights) {
      const double s = std::accumulate(w.begin(), w.end(), 0.0);
      if (s == 0.0) throw argument_error("multislerp: the weights sum to 0 and normalize_weights is set");
      for (double& x : w) x /= s;
    }
    // The vectors y_i (task vectors or the experts) read in place.
    const detail::Gram g = detail::gram_tensor(
        a, N, detail::InputVectors{use_base ? detail::InputVectors::offsets : detail::InputVectors::none});
    std::vector<double> n(N), scale(N);  // scale: u_i = y_i · scale_i
    for (std::size_t i = 0; i < N; ++i) n[i] = std::sqrt(g.g[i * N + i]), scale[i] = 1.0 / (n[i] + eps);
    detail::Gram gu;
    gu.g.assign(N * N, 0.0);
    for (std::size_t i = 0; i < N; ++i)
      for (std::size_t k = 0; k < N; ++k) gu.g[i * N + k] = g.g[i * N + k] * scale[i] * scale[k];
    std::vector<double> y;  // coefficients over the y_i
    const double mn = std::sqrt(std::max(detail::gram_dot(gu, w, w), 0.0));
    if (mn < eps) {
      if (N != 2)
        throw numeric_error("multislerp: tensor '" + std::string(a.name) +
                            "': the weighted mean of the unit vectors is zero (antipodal inputs whose weights "
                            "balance); choose other weights");
      y = w;
    } else {
      std::vector<double> mu(N);  // m̂ over the u_i
      for (std::size_t i = 0; i < N; ++i) mu[i] = w[i] / mn;
      double wd = 0.0;  // Σ w_i (u_i·m̂)
      for (std::size_t i = 0; i < N; ++i) {
        double d = 0.0;
        for (std::size_t k = 0; k < N; ++k) d += gu.g[i * N + k] * mu[k];
        wd += w[i] * d;
      }
      std::vector<double> tau(N);
      for (std::size_t i = 0; i < N; ++i) tau[i] = w[i] - wd * mu[i];
      const double nu = std::sqrt(std::max(detail::gram_dot(gu, tau, tau), 0.0)) + eps;
      double avg = 0.0;
      for (std::size_t i = 0; i < N; ++i) avg += n[i] * w[i];
      y.resize(N);
      for (std::size_t i = 0; i < N; ++i) y[i] = (mu[i] * std::cos(nu) + tau[i] * std::sin(nu) / nu) * avg * scale[i];
    }
    return {use_base, 0.0, y};
  }

  void merge_tensor(const TensorMergeArgs& a) const {
    detail::check_merge_args(a);
    if (!(eps >= 0.0)) throw argument_error("multislerp: eps must be ≥ 0");
    if (detail::merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s); })) return;
    detail::combine_tensor(a, coefficients(a));
  }
};

}  // namespace twin
