// Ties (TIES-Merging, Yadav et al. 2023):
//   1. trim: keep the top-k entries of each τ_i by |·|, k = floor(density·n),
//      per tensor, or per model over all merged tensors with scope = global
//      (the official Twin-Merging code); ties at the k-th magnitude keep the
//      lowest indices (in checkpoint order for global scope);
//   2. elect: s = sign(Σ_i w_i τ'_i), a sum of exactly 0 electing +1;
//   3. disjoint mean: Σ w_i τ'_i [sign τ'_i = s] / Σ w_i [sign τ'_i = s],
//      0 where the divisor is 0;
//   θ = θ0 + λ · merged.
#pragma once

#include <unordered_map>

#include "twin/merge/merger.hpp"
#include "twin/merge/selection.hpp"

namespace twin {

enum class TopKScope { per_tensor, global };

inline TopKScope parse_scope(std::string_view s) {
  if (s == "per-tensor" || s == "per_tensor" || s == "tensor") return TopKScope::per_tensor;
  if (s == "global") return TopKScope::global;
  throw argument_error("unknown top-k scope '" + std::string(s) + "': expected per-tensor or global");
}

namespace detail {
// θ0 + λ · disjoint_mean(τ') over trimmed task vectors held as T rows of n.
inline void ties_combine(const TensorMergeArgs& a, const std::vector<float>& tau, const std::vector<float>& w,
                         float lambda) {
  const std::size_t T = w.size();
  const std::int64_t n = a.base.numel();
  merge_chunks(a, merge_block, [&](std::int64_t) {
    return [&, rows = std::vector<const float*>(T), scratch = std::vector<float>(2 * TWIN_CHUNK_ELEMENTS)](
               std::int64_t lo, std::int64_t c, const float* base, const float* const*, float* out) mutable {
      for (std::size_t i = 0; i < T; ++i) rows[i] = tau.data() + static_cast<std::int64_t>(i) * n + lo;
      disjoint_mean(c, T, rows.data(), w.data(), out, scratch.data(), scratch.data() + TWIN_CHUNK_ELEMENTS);
      for (std::int64_t j = 0; j < c; ++j) out[j] = base[j] + lambda * out[j];
    };
  });
}
}  // namespace detail

struct Ties {
  double density = 0.2;  // fraction of each task vector kept by the trim
  double scaling = 1.0;  // λ
  TopKScope scope = TopKScope::per_tensor;
  std::vector<double> weights;  // per expert; empty: all 1

  // Global scope: the cut of each expert for each tensor.
  struct Plan {
    std::unordered_map<std::string, std::vector<MagnitudeCut>> cuts;
  };

  std::string_view name() const noexcept { return "ties"; }

  void validate() const { check_unit_interval(density, "ties density"); }

  Plan plan(const MergeCatalog& c) const {
    validate();
    Plan p;
    if (scope != TopKScope::global) return p;
    std::int64_t total = 0;
    std::vector<std::int64_t> sizes;
    for (std::size_t t = 0; t < c.names.size(); ++t) {
      sizes.push_back(c.view(t, -1).numel());
      total += sizes.back();
    }
    for (const auto& name : c.names) p.cuts[name].resize(static_cast<std::size_t>(c.num_experts));
    for (int m = 0; m < c.num_experts; ++m) {
      // Visits τ_m tensor by tensor, never holding more than one of them.
      auto visit = [&](auto&& sink) {
        for (std::size_t t = 0; t < c.names.size(); ++t) {
          const ConstTensorView one[1] = {c.view(t, m)};
          const TensorMergeArgs a{c.names[t], c.view(t, -1), one, TensorView{}};
          std::vector<float>& tau = detail::tau_scratch();
          detail::task_vectors_f32(a, tau);
          sink(std::span<const float>(tau.data(), static_cast<std::size_t>(a.base.numel())));
        }
      };
      const MagnitudeCut cut = select_top_k(visit, total, keep_count(density, total));
      std::vector<std::int64_t> ties(c.names.size(), 0);
      if (cut.needs_tie_order()) {
        std::size_t t = 0;
        visit([&](std::span<const float> seg) {
          ties[t++] = ties_before_blocks(seg, cut.threshold, detail::select_block).back();
        });
      }
      const std::vector<MagnitudeCut> per = split_cut(cut, ties);
      for (std::size_t t = 0; t < c.names.size(); ++t) p.cuts[c.names[t]][static_cast<std::size_t>(m)] = per[t];
    }
    return p;
  }

  void merge_tensor(const TensorMergeArgs& a) const {
    if (scope == TopKScope::global)
      throw argument_error("ties with global scope needs plan(): merge through merge_state");
    merge_tensor(a, Plan{});
  }

  void merge_tensor(const TensorMergeArgs& a, const Plan& p) const {
    detail::check_merge_args(a);
    if (detail::merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s, p); })) return;
    validate();
    const std::vector<float> w = resolve_weights(weights, a.experts.size(), name());
    const std::int64_t n = a.base.numel();
    std::vector<float>& tau = detail::tau_scratch();
    detail::task_vectors_f32(a, tau);
    for (std::size_t i = 0; i < w.size(); ++i) {
      std::span<float> row(tau.data() + static_cast<std::int64_t>(i) * n, static_cast<std::size_t>(n));
      MagnitudeCut cut;
      if (scope == TopKScope::global) {
        auto it = p.cuts.find(std::string(a.name));
        if (it == p.cuts.end()) throw name_error("ties plan has no tensor '" + std::string(a.name) + "'");
        cut = it->second.at(i);
      } else {
        cut = select_top_k(std::span<const float>(row), keep_count(density, n));
      }
      apply_cut(row, cut);
    }
    detail::ties_combine(a, tau, w, static_cast<float>(scaling));
  }
};

}  // namespace twin
