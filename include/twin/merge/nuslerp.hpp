// NuSlerp: slerp of two experts A and B (mergekit's `nuslerp`, docs/
// mergekit_methods.md §4) with t = w_B/(w_A + w_B) from their weights (t = 0.5
// where |w_A + w_B| < 1e-6; t = 0 gives A). With use_base (mergekit: a
// base_model is set) it interpolates the task vectors and adds the base back:
// base + f(t, A − base, B − base); else f(t, A, B). f per pair of vectors:
//   u = x/max(‖x‖, 1e-7); c = clamp(u0·u1, −1, 1); θ = acos c;
//   (sin((1−t)θ)·x0 + sin(tθ)·x1)/sin θ, or (1−t)·x0 + t·x1 where
//   |sin θ| < 1e-8 (colinear).
// Vectors: flatten (default) = the whole tensor; else along the last axis
// (one per row), or with row_wise along axis 0 (one per column; mergekit
// swaps axes 0 and −1). A rank-1 tensor is one vector either way.
// Norms and dots are summed as in merge/interpolate.hpp and the angle taken
// in double, so antipodal vectors (θ = π, sin θ ≈ 1e-16) take the lerp
// branch; mergekit, in f32, divides by sin(π) ≈ −8.7e-8 there and blows up.
#pragma once

#include <cmath>

#include "twin/backend/cpu/avx512_copies.hpp"
#include "twin/merge/interpolate.hpp"
#include "twin/merge/merger.hpp"

namespace twin {

namespace detail {
// One Gram matrix per vector along axis 0: `inner` = numel/dim0 vectors of
// dim0 entries, entry b of vector v at b·inner + v.
template <class Fill>
std::vector<Gram> gram_columns(const TensorMergeArgs& a, std::size_t K, Fill&& fill) {
  const std::int64_t n = a.base.numel();
  const std::int64_t rows = a.base.rank() >= 1 ? a.base.dim(0) : 1;
  const std::int64_t inner = rows > 0 ? n / rows : 0;
  std::vector<Gram> g(static_cast<std::size_t>(inner));
  for (Gram& x : g) x.g.assign(K * K, 0.0);
  constexpr std::int64_t C = TWIN_CHUNK_ELEMENTS;
  backend::cpu::parallel_kernel_blocks(inner, C, [&](std::int64_t c0, std::int64_t c1) {
    const std::size_t T = a.experts.size();
    float* buf = scratch_floats<2>(static_cast<std::size_t>(C) * (T + 1 + K));
    std::vector<const float*> ex(T);
    std::vector<float*> v(K);
    for (std::size_t k = 0; k < K; ++k) v[k] = buf + C * static_cast<std::int64_t>(T + 1 + k);
    const std::int64_t c = c1 - c0;
    for (std::int64_t b = 0; b < rows; ++b) {
      const std::int64_t lo = b * inner + c0;
      const float* base = chunk_f32(a.base, lo, c, buf);
      for (std::size_t i = 0; i < T; ++i) ex[i] = chunk_f32(a.experts[i], lo, c, buf + C * (i + 1));
      fill(c, base, ex.data(), v.data());
      for (std::int64_t j = 0; j < c; ++j) {
        double* gj = g[static_cast<std::size_t>(c0 + j)].g.data();
        for (std::size_t k = 0; k < K; ++k)
          for (std::size_t l = 0; l < K; ++l) gj[k * K + l] += static_cast<double>(v[k][j]) * v[l][j];
      }
    }
  });
  return g;
}
}  // namespace detail

struct NuSlerp {
  std::vector<double> weights;  // w_A, w_B; empty: 1, 1 (t = 0.5)
  bool flatten = true;          // mergekit's nuslerp_flatten
  bool row_wise = false;        // mergekit's nuslerp_row_wise (vectors along axis 0)
  bool use_base = true;

  std::string_view name() const noexcept { return "nuslerp"; }

  double t() const {
    if (weights.empty()) return 0.5;
    if (weights.size() != 2)
      throw argument_error("nuslerp takes 2 weights (one per expert), found " + std::to_string(weights.size()));
    const double s = weights[0] + weights[1];
    return std::abs(s) < 1e-6 ? 0.5 : weights[1] / s;
  }

  // (coefficient of x0, of x1) for a pair with Gram matrix g.
  static std::pair<double, double> pair_coefficients(const detail::Gram& g, double t) {
    const double n0 = std::max(std::sqrt(g.g[0]), 1e-7), n1 = std::max(std::sqrt(g.g[3]), 1e-7);
    const double th = std::acos(std::clamp(g.g[1] / (n0 * n1), -1.0, 1.0)), s = std::sin(th);
    if (std::abs(s) < 1e-8) return {1.0 - t, t};
    return {std::sin((1.0 - t) * th) / s, std::sin(t * th) / s};
  }

  void merge_tensor(const TensorMergeArgs& a) const {
    detail::check_merge_args(a);
    if (a.experts.size() != 2)
      throw argument_error("nuslerp interpolates exactly two experts; tensor '" + std::string(a.name) + "' has " +
                           std::to_string(a.experts.size()));
    const double tt = t();
    if (detail::merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s); })) return;
    const bool ub = use_base;
    auto pair = [ub](std::int64_t c, const float* b, const float* const* ex, float* const* v) {
      for (std::int64_t j = 0; j < c; ++j) v[0][j] = ub ? ex[0][j] - b[j] : ex[0][j];
      for (std::int64_t j = 0; j < c; ++j) v[1][j] = ub ? ex[1][j] - b[j] : ex[1][j];
    };
    // Coefficients per vector and the map from an element to its vector.
    std::vector<std::pair<float, float>> k;
    const std::int64_t n = a.base.numel();
    const int rank = a.base.rank();
    std::int64_t div = n, mod = 0;  // vector of element e: e / div, or e % mod when mod > 0
    auto add = [&](const detail::Gram& g) {
      const auto [c0, c1] = pair_coefficients(g, tt);
      k.emplace_back(static_cast<float>(c0), static_cast<float>(c1));
    };
    // The pair's vectors read in place where they are whole rows or the tensor.
    const detail::InputVectors in{ub ? detail::InputVectors::offsets : detail::InputVectors::none};
    if (flatten || rank <= 1) {
      add(detail::gram_tensor(a, 2, in));
      div = std::max<std::int64_t>(n, 1);
    } else if (!row_wise) {
      for (const detail::Gram& g : detail::gram_rows(a, 2, in)) add(g);
      div = std::max<std::int64_t>(a.base.dim(rank - 1), 1);
    } else {
      for (const detail::Gram& g : detail::gram_columns(a, 2, pair)) add(g);
      mod = std::max<std::int64_t>(a.base.dim(0) > 0 ? n / a.base.dim(0) : 1, 1);
    }
    std::vector<float> k0(k.size()), k1(k.size());
    for (std::size_t v = 0; v < k.size(); ++v) k0[v] = k[v].first, k1[v] = k[v].second;
    detail::merge_chunks(a, detail::merge_block, [&](std::int64_t) {
      return [&, ub](std::int64_t lo, std::int64_t c, const float* base, const float* const* ex, float* out) {
        // Runs of elements whose vector index is v0 + (j − j0) (columns) or v0 (rows).
        // The experts' pointers read once, the choice of form outside the
        // loop: GCC left it scalar with ex[0], ex[1] loaded per entry.
        const float* __restrict e0 = ex[0];
        const float* __restrict e1 = ex[1];
        auto run = [&](std::int64_t j0, std::int64_t j1, std::int64_t v0, std::int64_t step) {
          const float* a0 = k0.data() + v0;
          const float* a1 = k1.data() + v0;
          if (ub) {
            for (std::int64_t j = j0; j < j1; ++j) {
              const std::int64_t q = (j - j0) * step;
              out[j] = base[j] + (a0[q] * (e0[j] - base[j]) + a1[q] * (e1[j] - base[j]));
            }
          } else {
            for (std::int64_t j = j0; j < j1; ++j) {
              const std::int64_t q = (j - j0) * step;
              out[j] = a0[q] * e0[j] + a1[q] * e1[j];
            }
          }
        };
        if (mod > 0) {
          std::int64_t j = 0;
          while (j < c) {
            const std::int64_t col = (lo + j) % mod, end = std::min(c, j + (mod - col));
            run(j, end, col, 1);
            j = end;
          }
        } else {
          detail::for_row_segments(lo, c, div,
                                   [&](std::int64_t row, std::int64_t j0, std::int64_t j1) { run(j0, j1, row, 0); });
        }
      };
    });
  }
};

}  // namespace twin
