// ModelStock: the base moved toward the experts' average by a factor set by
// the angle between their task vectors, as mergekit's `model_stock` computes
// it per tensor (N ≥ 2 experts):
//   o_i = expert_i − base; cos_ij = clamp(o_i·o_j / max(‖o_i‖‖o_j‖, 1e-6),
//   −1, 1); cos = the mean over the N(N−1)/2 pairs i < j;
//   t = N·cos / (1 + (N−1)·cos), not clamped (a negative cos gives t < 0);
//   result = t·(Σ_i expert_i)/N + (1 − t)·base.
// filter_wise: one t per row (the vectors along the last axis) instead of
// one for the whole tensor; a rank-1 tensor is one row. All offsets zero give
// cos = 0, t = 0: the base. Where mergekit divides by zero (cos = −1/(N−1),
// e.g. two exactly opposite task vectors) we throw numeric_error naming the
// tensor. Dots are summed as in merge/interpolate.hpp, the result in f32.
#pragma once

#include <algorithm>
#include <cmath>

#include "twin/backend/cpu/avx512_copies.hpp"
#include "twin/merge/interpolate.hpp"
#include "twin/merge/merger.hpp"

namespace twin {

struct ModelStock {
  bool filter_wise = false;

  std::string_view name() const noexcept { return "model_stock"; }

  // t from the Gram matrix of the N offsets.
  static double ratio(const detail::Gram& g, std::size_t N, std::string_view tensor) {
    double cos_sum = 0.0;
    for (std::size_t i = 0; i < N; ++i)
      for (std::size_t j = i + 1; j < N; ++j) {
        const double den = std::max(std::sqrt(g.g[i * N + i]) * std::sqrt(g.g[j * N + j]), 1e-6);
        cos_sum += std::clamp(g.g[i * N + j] / den, -1.0, 1.0);
      }
    const double cos = cos_sum / static_cast<double>(N * (N - 1) / 2);
    const double den = 1.0 + static_cast<double>(N - 1) * cos;
    if (den == 0.0)
      throw numeric_error("model_stock: tensor '" + std::string(tensor) + "' has mean task-vector cosine " +
                          std::to_string(cos) + " = -1/(N-1), which divides by zero");
    return static_cast<double>(N) * cos / den;
  }

  void merge_tensor(const TensorMergeArgs& a) const {
    detail::check_merge_args(a);
    const std::size_t N = a.experts.size();
    if (N < 2)
      throw argument_error("model_stock needs at least 2 experts; tensor '" + std::string(a.name) + "' has " +
                           std::to_string(N));
    if (detail::merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s); })) return;
    // With a contiguous f32 output the Gram pass also writes the experts'
    // mean into it, and the second pass reads the base and that mean only
    // (2 streams instead of N + 1); the values are those of the mean formed
    // in the second pass.
    const float inv_n = 1.0f / static_cast<float>(N);
    float* const mean_out = detail::contiguous_f32(a.out) ? static_cast<float*>(a.out.data()) : nullptr;
    auto mean_into = [N, inv_n](std::int64_t c, const float* const* ex, float* m) {
      for (std::int64_t j = 0; j < c; ++j) m[j] = 0.0f;
      for (std::size_t i = 0; i < N; ++i)
        for (std::int64_t j = 0; j < c; ++j) m[j] += ex[i][j];
      for (std::int64_t j = 0; j < c; ++j) m[j] *= inv_n;
    };
    // The offsets are formed in the Gram kernel's registers.
    const detail::InputVectorsThen offsets{
        {detail::InputVectors::offsets},
        [mean_out, &mean_into](std::int64_t lo, std::int64_t c, const float*, const float* const* ex) {
          if (mean_out) mean_into(c, ex, mean_out + lo);
        }};
    // t per element: one value, or one per row of `cols` elements.
    std::vector<float> t;
    std::int64_t cols = a.base.numel();
    if (filter_wise) {
      for (const detail::Gram& g : detail::gram_rows(a, N, offsets))
        t.push_back(static_cast<float>(ratio(g, N, a.name)));
      if (a.base.rank() >= 2) cols = a.base.dim(a.base.rank() - 1);
    } else {
      t.push_back(static_cast<float>(ratio(detail::gram_tensor(a, N, offsets), N, a.name)));
    }
    auto mix = [&](std::int64_t lo, std::int64_t n, const float* base, float* out) {
      detail::for_row_segments(lo, n, cols, [&](std::int64_t row, std::int64_t j0, std::int64_t j1) {
        const float tj = t[static_cast<std::size_t>(row)];
        for (std::int64_t j = j0; j < j1; ++j) out[j] = tj * out[j] + (1.0f - tj) * base[j];
      });
    };
    if (mean_out) {
      backend::cpu::parallel_kernel_blocks(a.base.numel(), detail::merge_block, [&](std::int64_t b0, std::int64_t b1) {
        constexpr std::int64_t C = TWIN_CHUNK_ELEMENTS;
        float* buf = detail::scratch_floats<0>(static_cast<std::size_t>(C));
        for (std::int64_t lo = b0; lo < b1; lo += C) {
          const std::int64_t c = std::min(C, b1 - lo);
          mix(lo, c, detail::chunk_f32(a.base, lo, c, buf), mean_out + lo);
        }
      });
      return;
    }
    detail::merge_chunks(a, detail::merge_block, [&](std::int64_t) {
      return [&](std::int64_t lo, std::int64_t n, const float* base, const float* const* ex, float* out) {
        mean_into(n, ex, out);
        mix(lo, n, base, out);
      };
    });
  }
};

}  // namespace twin
