// SCE (Select, Calculate, Erase; Wan et al. 2024) as mergekit's `sce`
// computes it per tensor (docs/mergekit_methods.md §10), with no per-model
// weights:
//   T_i = expert_i − base;
//   select (select_topk < 1): the population variance over the experts at
//     each position; the k = floor(nnz(var)·select_topk) positions of largest
//     variance are kept (ties by index) and every T_i is zeroed elsewhere
//     (select_topk ≤ 0 or k = 0 zeroes all);
//   erase: TIES' sign consensus of the unweighted T_i (S = Σ T_i, + where
//     S ≥ 0), a T_i entry kept where its sign is the elected one;
//   calculate: s_i = mean(T_i²) over the tensor, divided by Σ s (uniform 1/N
//     where |Σ s| < 1e-6: an absolute threshold, kept as mergekit has it);
//   θ = θ0 + Σ_i s_i kept T_i / max(Σ_i s_i [kept], 1e-6).
// Variances and mean squares in double, the rest in f32.
#pragma once

#include "twin/merge/merger.hpp"
#include "twin/merge/selection.hpp"

namespace twin {

struct Sce {
  double select_topk = 1.0;  // fraction of positions kept by variance

  std::string_view name() const noexcept { return "sce"; }

  void merge_tensor(const TensorMergeArgs& a) const {
    detail::check_merge_args(a);
    if (!std::isfinite(select_topk)) throw argument_error("sce: select_topk must be finite");
    if (detail::merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s); })) return;
    const std::size_t N = a.experts.size();
    const std::int64_t n = a.base.numel();
    const auto un = static_cast<std::size_t>(n);
    std::vector<float>& tau = detail::tau_scratch();
    detail::task_vectors_f32(a, tau);
    if (select_topk < 1.0) {
      std::vector<float> var(un, 0.0f);
      if (select_topk > 0.0)
        parallel_blocks(n, detail::merge_block, [&](std::int64_t lo, std::int64_t hi) {
          for (std::int64_t j = lo; j < hi; ++j) {
            double m = 0.0, v = 0.0;
            for (std::size_t i = 0; i < N; ++i) m += tau[i * un + static_cast<std::size_t>(j)];
            m /= static_cast<double>(N);
            for (std::size_t i = 0; i < N; ++i) {
              const double d = tau[i * un + static_cast<std::size_t>(j)] - m;
              v += d * d;
            }
            var[static_cast<std::size_t>(j)] = static_cast<float>(v / static_cast<double>(N));
          }
        });
      const auto nonzero = parallel_sum<std::int64_t>(n, detail::merge_block, [&](std::int64_t lo, std::int64_t hi) {
        std::int64_t c = 0;
        for (std::int64_t j = lo; j < hi; ++j) c += var[static_cast<std::size_t>(j)] != 0.0f;
        return c;
      });
      const std::int64_t k = select_topk > 0.0 ? keep_count(select_topk, nonzero) : 0;
      apply_cut(var, select_top_k(std::span<const float>(var), k));
      parallel_blocks(n, detail::merge_block, [&](std::int64_t lo, std::int64_t hi) {
        for (std::int64_t j = lo; j < hi; ++j)
          if (var[static_cast<std::size_t>(j)] == 0.0f)
            for (std::size_t i = 0; i < N; ++i) tau[i * un + static_cast<std::size_t>(j)] = 0.0f;
      });
    }
    std::vector<float> s(N);
    double ssum = 0.0;
    std::vector<double> ms(N);
    for (std::size_t i = 0; i < N; ++i) {
      ms[i] = parallel_sum<double>(n, detail::merge_block,
                                   [&](std::int64_t lo, std::int64_t hi) {
                                     double q = 0.0;
                                     for (std::int64_t j = lo; j < hi; ++j) {
                                       const double x = tau[i * un + static_cast<std::size_t>(j)];
                                       q += x * x;
                                     }
                                     return q;
                                   }) /
              static_cast<double>(std::max<std::int64_t>(n, 1));
      ssum += ms[i];
    }
    for (std::size_t i = 0; i < N; ++i)
      s[i] = static_cast<float>(std::abs(ssum) < 1e-6 ? 1.0 / static_cast<double>(N) : ms[i] / ssum);
    detail::merge_chunks(a, detail::merge_block, [&](std::int64_t) {
      return [&](std::int64_t lo, std::int64_t c, const float* base, const float* const*, float* out) {
        for (std::int64_t j = 0; j < c; ++j) {
          const auto e = static_cast<std::size_t>(lo + j);
          float sum = 0.0f;
          for (std::size_t i = 0; i < N; ++i) sum += tau[i * un + e];
          const bool positive = sum >= 0.0f;
          float m = 0.0f, den = 0.0f;
          for (std::size_t i = 0; i < N; ++i) {
            const float t = tau[i * un + e];
            if (positive ? t > 0.0f : t < 0.0f) m += s[i] * t, den += s[i];
          }
          out[j] = base[j] + m / std::max(den, 1e-6f);
        }
      };
    });
  }
};

}  // namespace twin
