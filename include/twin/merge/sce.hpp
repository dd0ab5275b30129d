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
          constexpr std::int64_t C = TWIN_CHUNK_ELEMENTS;
          std::vector<double> m(C), v(C);
          for (std::int64_t p = lo; p < hi; p += C) {
            const std::int64_t c = std::min(C, hi - p);
            for (std::int64_t j = 0; j < c; ++j) m[j] = 0.0, v[j] = 0.0;
            for (std::size_t i = 0; i < N; ++i) {
              const float* t = tau.data() + i * un + static_cast<std::size_t>(p);
              for (std::int64_t j = 0; j < c; ++j) m[j] += t[j];
            }
            for (std::int64_t j = 0; j < c; ++j) m[j] /= static_cast<double>(N);
            for (std::size_t i = 0; i < N; ++i) {
              const float* t = tau.data() + i * un + static_cast<std::size_t>(p);
              for (std::int64_t j = 0; j < c; ++j) v[j] += (t[j] - m[j]) * (t[j] - m[j]);
            }
            for (std::int64_t j = 0; j < c; ++j)
              var[static_cast<std::size_t>(p + j)] = static_cast<float>(v[j] / static_cast<double>(N));
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
    // Expert-outer loops over each chunk (they vectorize).
    detail::merge_chunks(a, detail::merge_block, [&](std::int64_t) {
      return [&, sum = std::vector<float>(TWIN_CHUNK_ELEMENTS), den = std::vector<float>(TWIN_CHUNK_ELEMENTS)](
                 std::int64_t lo, std::int64_t c, const float* base, const float* const*, float* out) mutable {
        for (std::int64_t j = 0; j < c; ++j) sum[j] = 0.0f, den[j] = 0.0f, out[j] = 0.0f;
        for (std::size_t i = 0; i < N; ++i) {
          const float* t = tau.data() + i * un + static_cast<std::size_t>(lo);
          for (std::int64_t j = 0; j < c; ++j) sum[j] += t[j];
        }
        float* __restrict o = out;
        float* __restrict dn = den.data();
        const float* __restrict sm = sum.data();
        for (std::size_t i = 0; i < N; ++i) {
          const float* __restrict t = tau.data() + i * un + static_cast<std::size_t>(lo);
          const float si = s[i];
          for (std::int64_t j = 0; j < c; ++j) {
            const bool keep = (sm[j] >= 0.0f ? t[j] : -t[j]) > 0.0f;  // the sign the sum elects
            o[j] += keep ? si * t[j] : 0.0f;
            dn[j] += keep ? si : 0.0f;
          }
        }
        for (std::int64_t j = 0; j < c; ++j) out[j] = base[j] + out[j] / std::max(den[j], 1e-6f);
      };
    });
  }
};

}  // namespace twin
