// RAM and RAM+ (tensor-local), as mergekit's `ram` and `ramplus_tl` compute
// them per tensor (docs/mergekit_methods.md §11):
//   τ_i = expert_i − base; an entry contributes where |τ_ij| > ε (strictly);
//   c_j = the number of contributing experts; Z_ij = τ_ij if it contributes,
//   else 0;
//   Ram:       θ0 + Σ_i [c_j = 1] Z_ij + [c_j > 1] Z_ij / c_j
//              (the single value where one expert moves an entry, the mean of
//              the movers where several do, the base where none does);
//   RamPlusTl: the unique entries of expert i scaled by
//              λ_i = 1 + r·clamp(ρ_i, 0, α), ρ_i = shared_i / max(unique_i, ε),
//              shared_i / unique_i = how many of expert i's contributing
//              entries of this tensor have c > 1 / c = 1.
// Counts are integers (the same for any thread count); values in f32 in
// expert order, as mergekit sums them.
#pragma once

#include <algorithm>

#include "twin/merge/merger.hpp"

namespace twin {

namespace detail {

struct RamCounts {
  std::vector<std::int64_t> shared, unique;
  RamCounts& operator+=(const RamCounts& o) {
    if (shared.empty()) shared.assign(o.shared.size(), 0), unique.assign(o.unique.size(), 0);
    for (std::size_t i = 0; i < o.shared.size(); ++i) shared[i] += o.shared[i], unique[i] += o.unique[i];
    return *this;
  }
};

// cnt[j] = the number of experts whose |τ_j| > eps over the chunk of ex
// (as an integer count or its float value).
template <class Count>
void count_contributors(const ExpertChunks& ex, std::size_t T, const float* base, float eps, Count* cnt) {
  const std::int64_t n = ex.n;
  for (std::int64_t j = 0; j < n; ++j) cnt[j] = Count(0);
  for (std::size_t i = 0; i < T; ++i)
    ex.with(i, [&, eps](auto x) {
      for (std::int64_t j = 0; j < n; ++j) cnt[j] += std::abs(x(j) - base[j]) > eps ? Count(1) : Count(0);
    });
}

template <bool Plus>
struct RamBase {
  double epsilon = 1e-5;  // an entry contributes where |τ| > epsilon
  double r = 0.1;         // RamPlusTl: gain on the unique entries
  double alpha = 0.2;     // RamPlusTl: cap of the shared/unique ratio

  std::string_view name() const noexcept { return Plus ? "ramplus_tl" : "ram"; }

  void merge_tensor(const TensorMergeArgs& a) const {
    check_merge_args(a);
    if (!(epsilon >= 0.0) || !std::isfinite(r) || !std::isfinite(alpha))
      throw argument_error(std::string(name()) + ": epsilon must be ≥ 0 and r, alpha finite");
    if (merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s); })) return;
    const std::size_t T = a.experts.size();
    const auto eps = static_cast<float>(epsilon);
    std::vector<float> lambda(T, 1.0f);
    if constexpr (Plus) {
      RamCounts c = parallel_sum<RamCounts>(a.base.numel(), merge_block, [&](std::int64_t lo, std::int64_t hi) {
        RamCounts k{std::vector<std::int64_t>(T, 0), std::vector<std::int64_t>(T, 0)};
        constexpr std::int64_t C = TWIN_CHUNK_ELEMENTS;
        float* buf = scratch_floats<3>(static_cast<std::size_t>(2 * C));  // base, one expert
        std::vector<std::int32_t> cnt(static_cast<std::size_t>(C));
        for (std::int64_t p = lo; p < hi; p += C) {
          const std::int64_t n = std::min(C, hi - p);
          prefetch_next_chunk(a, p, hi);
          const float* base = chunk_f32(a.base, p, n, buf);
          const ExpertChunks ex{&a, p, n, buf + C};  // each expert read in place, twice
          count_contributors(ex, T, base, eps, cnt.data());
          for (std::size_t i = 0; i < T; ++i)
            ex.with(i, [&, eps](auto x) {
              std::int32_t sh = 0, un = 0;  // at most a chunk's count
              const std::int32_t* __restrict cn = cnt.data();
              for (std::int64_t j = 0; j < n; ++j) {
                const std::int32_t nz = std::abs(x(j) - base[j]) > eps ? 1 : 0;
                sh += cn[j] > 1 ? nz : 0;
                un += cn[j] == 1 ? nz : 0;
              }
              k.shared[i] += sh, k.unique[i] += un;
            });
        }
        return k;
      });
      if (c.shared.empty()) c.shared.assign(T, 0), c.unique.assign(T, 0);
      for (std::size_t i = 0; i < T; ++i) {
        const float rho = static_cast<float>(c.shared[i]) / std::max(static_cast<float>(c.unique[i]), eps);
        lambda[i] = 1.0f + static_cast<float>(r) * std::clamp(rho, 0.0f, static_cast<float>(alpha));
      }
    }
    // Expert-outer loops over each chunk (they vectorize): the counts, then
    // each expert's term in order, Z/c as mergekit divides it.
    merge_chunks_by_expert(a, merge_block, [&](std::int64_t) {
      return [&, cnt = std::vector<float>(TWIN_CHUNK_ELEMENTS)](std::int64_t, std::int64_t n, const float* base,
                                                                const ExpertChunks& ex, float* out) mutable {
        for (std::int64_t j = 0; j < n; ++j) out[j] = 0.0f;
        count_contributors(ex, T, base, eps, cnt.data());
        for (std::size_t i = 0; i < T; ++i)
          ex.with(i, [&, eps, li = lambda[i]](auto x) {
            for (std::int64_t j = 0; j < n; ++j) {
              const float t = x(j) - base[j];
              const float z = std::abs(t) > eps ? t : 0.0f;
              out[j] += cnt[j] == 1.0f ? z * li : z / std::max(cnt[j], 1.0f);
            }
          });
        for (std::int64_t j = 0; j < n; ++j) out[j] += base[j];
      };
    });
  }
};
}  // namespace detail

struct Ram : detail::RamBase<false> {};
struct RamPlusTl : detail::RamBase<true> {};

}  // namespace twin
