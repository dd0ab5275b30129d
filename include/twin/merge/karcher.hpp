// Karcher: the Riemannian (Karcher) mean of the inputs' directions on the unit
// sphere, scaled by their mean norm, as mergekit's `karcher` computes it per
// tensor (docs/mergekit_methods.md §6). The inputs are the experts and, with
// use_base (mergekit: a base_model is set), the base after them, each with
// α = 1/n (mergekit has no per-model weights here):
//   n_i = ‖x_i‖, û_i = x_i/n_i (0 for a zero input); valid inputs: n_i > tol,
//   their α renormalized to α'; none valid gives zeros;
//   u = Σ α'_i û_i normalized (û of the first valid input if ‖u‖ < tol);
//   up to max_iter times: d_i = clamp(u·û_i, −1, 1), θ_i = acos d_i (inputs
//   with θ_i < tol skipped), T = Σ α'_i (θ_i/sin θ_i)(û_i − d_i u); stop when
//   ‖T‖ < tol; u ← cos‖T‖·u + sin‖T‖·T/‖T‖, renormalized when ‖u‖ > tol;
//   result = (Σ_i α_i n_i)·u (the mean of all norms, zeros included).
// u stays in the span of the û_i, so it is held as coefficients over them:
// one pass over the tensor forms the inputs' Gram matrix (merge/interpolate.hpp),
// the iteration runs on K×K numbers in double, one pass writes Σ c_i x_i.
// mergekit instead rounds u to the tensor dtype after each step; in f32 the
// two agree to rounding. One input is returned as is.
#pragma once

#include <cmath>

#include "twin/merge/interpolate.hpp"
#include "twin/merge/merger.hpp"

namespace twin {

struct Karcher {
  int max_iter = 10;
  double tol = 1e-5;
  bool use_base = true;  // the base is one more input (mergekit: base_model set)

  std::string_view name() const noexcept { return "karcher"; }

  // The result as a combination of the base and the experts.
  detail::Combination coefficients(const TensorMergeArgs& a) const {
    const std::size_t E = a.experts.size(), K = E + (use_base ? 1 : 0);
    const detail::Gram g = detail::gram_tensor(
        a, K, detail::InputVectors{use_base ? detail::InputVectors::last : detail::InputVectors::none});
    std::vector<double> norm(K);
    for (std::size_t k = 0; k < K; ++k) norm[k] = std::sqrt(g.g[k * K + k]);
    std::vector<double> coef(K, 0.0);  // over the raw inputs x_k
    auto finish = [&] {
      std::vector<double> c(coef.begin(), coef.begin() + static_cast<std::ptrdiff_t>(E));
      return detail::Combination{false, use_base ? coef[E] : 0.0, c};
    };
    if (K == 1) {
      coef[0] = 1.0;
      return finish();
    }
    std::vector<std::size_t> valid;
    for (std::size_t k = 0; k < K; ++k)
      if (norm[k] > tol) valid.push_back(k);
    if (valid.empty()) return finish();
    const std::size_t V = valid.size();
    detail::Gram gu;  // Gram matrix of the valid unit vectors
    gu.g.assign(V * V, 0.0);
    for (std::size_t p = 0; p < V; ++p)
      for (std::size_t q = 0; q < V; ++q)
        gu.g[p * V + q] = g.g[valid[p] * K + valid[q]] / (norm[valid[p]] * norm[valid[q]]);
    const std::vector<double> alpha(V, 1.0 / static_cast<double>(V));
    std::vector<double> u = alpha;  // coefficients of u over the valid û
    const double nu = std::sqrt(std::max(detail::gram_dot(gu, u, u), 0.0));
    if (nu < tol) {
      std::fill(u.begin(), u.end(), 0.0);
      u[0] = 1.0;
    } else {
      for (double& x : u) x /= nu;
    }
    std::vector<double> T(V), gu_u(V);
    for (int it = 0; it < max_iter; ++it) {
      for (std::size_t p = 0; p < V; ++p) {
        gu_u[p] = 0.0;
        for (std::size_t q = 0; q < V; ++q) gu_u[p] += gu.g[p * V + q] * u[q];
      }
      std::fill(T.begin(), T.end(), 0.0);
      for (std::size_t p = 0; p < V; ++p) {
        const double d = std::clamp(gu_u[p], -1.0, 1.0), th = std::acos(d);
        if (th < tol) continue;
        const double f = alpha[p] * th / std::sin(th);
        T[p] += f;
        for (std::size_t q = 0; q < V; ++q) T[q] -= f * d * u[q];
      }
      const double nt = std::sqrt(std::max(detail::gram_dot(gu, T, T), 0.0));
      if (nt < tol) break;
      for (std::size_t q = 0; q < V; ++q) u[q] = std::cos(nt) * u[q] + std::sin(nt) * T[q] / nt;
      const double n2 = std::sqrt(std::max(detail::gram_dot(gu, u, u), 0.0));
      if (n2 > tol)
        for (double& x : u) x /= n2;
    }
    double s = 0.0;
    for (std::size_t k = 0; k < K; ++k) s += norm[k] / static_cast<double>(K);
    for (std::size_t p = 0; p < V; ++p) coef[valid[p]] = s * u[p] / norm[valid[p]];
    return finish();
  }

  void merge_tensor(const TensorMergeArgs& a) const {
    detail::check_merge_args(a);
    if (max_iter < 0 || !(tol >= 0.0)) throw argument_error("karcher: max_iter and tol must be ≥ 0");
    if (detail::merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s); })) return;
    detail::combine_tensor(a, coefficients(a));
  }
};

}  // namespace twin
