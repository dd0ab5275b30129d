// Ties (TIES-Merging, Yadav et al. 2023):
//   1. trim: keep the top-k entries of each τ_i by |·|, k = floor(density·n),
//      per tensor, or per model over all merged tensors with scope = global
//      (the official Twin-Merging code); ties at the k-th magnitude keep the
//      lowest indices (in checkpoint order for global scope);
//   2. elect: s = sign(Σ_i w_i τ'_i), a sum of exactly 0 electing +1;
//   3. disjoint mean: Σ w_i τ'_i [sign τ'_i = s] / Σ w_i [sign τ'_i = s],
//      0 where the divisor is 0;
//   θ = θ0 + λ · merged.
// The official TIES / Twin-Merging code differs in two rules, available as
// options so its numbers can be reproduced (defaults unchanged):
//   selection = kthvalue: its topk_values_mask keeps every |τ| at least the
//     (n − k)-th smallest, k = int(n·density): k + 1 entries plus every tie
//     (density 1 keeps all; the official code fails there);
//   zero_sign = majority: a zero sum elects the sign of Σ_j s_j over the
//     whole vector (each tensor, or the whole model with scope = global);
//     where that is 0 too, the negative entries are kept, as there.
#pragma once

#include <algorithm>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "twin/merge/merger.hpp"
#include "twin/merge/selection.hpp"

namespace twin {

enum class TopKScope { per_tensor, global };

inline TopKScope parse_scope(std::string_view s) {
  if (s == "per-tensor" || s == "per_tensor" || s == "tensor") return TopKScope::per_tensor;
  if (s == "global") return TopKScope::global;
  throw argument_error("unknown top-k scope '" + std::string(s) + "': expected per-tensor or global");
}

enum class TopKSelection { exact, kthvalue };
enum class ZeroSign { plus, majority };

inline TopKSelection parse_selection(std::string_view s) {
  if (s == "exact") return TopKSelection::exact;
  if (s == "kthvalue") return TopKSelection::kthvalue;
  throw argument_error("unknown top-k selection '" + std::string(s) + "': expected exact or kthvalue");
}

inline ZeroSign parse_zero_sign(std::string_view s) {
  if (s == "plus") return ZeroSign::plus;
  if (s == "majority") return ZeroSign::majority;
  throw argument_error("unknown zero sign '" + std::string(s) + "': expected plus or majority");
}

namespace detail {
// Σ_j sign(Σ_i w_i τ_ij) over T rows of n (the sums as disjoint_mean forms
// them, so both agree on which sums are exactly zero). An integer: the
// same for any chunking.
inline std::int64_t sign_votes(const std::vector<float>& tau, const std::vector<float>& w, std::int64_t n) {
  const std::size_t T = w.size();
  std::vector<const float*> rows(T);
  std::vector<float> sum(TWIN_CHUNK_ELEMENTS);
  std::int64_t votes = 0;
  for (std::int64_t lo = 0; lo < n; lo += TWIN_CHUNK_ELEMENTS) {
    const std::int64_t c = std::min<std::int64_t>(TWIN_CHUNK_ELEMENTS, n - lo);
    for (std::size_t i = 0; i < T; ++i) rows[i] = tau.data() + static_cast<std::int64_t>(i) * n + lo;
    weighted_sum(c, T, rows.data(), w.data(), sum.data());
    for (std::int64_t j = 0; j < c; ++j)
      votes += (sum[static_cast<std::size_t>(j)] > 0.0f) - (sum[static_cast<std::size_t>(j)] < 0.0f);
  }
  return votes;
}

inline float sign_of(std::int64_t v) noexcept { return static_cast<float>((v > 0) - (v < 0)); }

// θ0 + λ · disjoint_mean(τ') over trimmed task vectors held as T rows of n.
inline void ties_combine(const TensorMergeArgs& a, const std::vector<float>& tau, const std::vector<float>& w,
                         float lambda, float zero_sign) {
  const std::size_t T = w.size();
  const std::int64_t n = a.base.numel();
  merge_chunks(a, merge_block, [&](std::int64_t) {
    return [&, rows = std::vector<const float*>(T), scratch = std::vector<float>(std::size_t{2} * TWIN_CHUNK_ELEMENTS)](
               std::int64_t lo, std::int64_t c, const float* base, const float* const*, float* out) mutable {
      for (std::size_t i = 0; i < T; ++i) rows[i] = tau.data() + static_cast<std::int64_t>(i) * n + lo;
      disjoint_mean(c, T, rows.data(), w.data(), out, scratch.data(), scratch.data() + TWIN_CHUNK_ELEMENTS, zero_sign);
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
  TopKSelection selection = TopKSelection::exact;
  ZeroSign zero_sign = ZeroSign::plus;

  // Global scope: the cut of each expert for each tensor, and the model's
  // majority sign (zero_sign = majority).
  struct Plan {
    std::unordered_map<std::string, std::vector<MagnitudeCut>> cuts;
    float majority = 1.0f;
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
      const MagnitudeCut cut = trim_cut(visit, total);
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
    if (zero_sign == ZeroSign::majority) {
      // The elected signs of the whole model, tensor by tensor.
      const std::vector<float> w = resolve_weights(weights, static_cast<std::size_t>(c.num_experts), name());
      std::int64_t votes = 0;
      for (std::size_t t = 0; t < c.names.size(); ++t) {
        std::vector<ConstTensorView> ex;
        ex.reserve(static_cast<std::size_t>(c.num_experts));
        for (int m = 0; m < c.num_experts; ++m) ex.push_back(c.view(t, m));
        const TensorMergeArgs a{c.names[t], c.view(t, -1), ex, TensorView{}};
        std::vector<float>& tau = detail::tau_scratch();
        detail::task_vectors_f32(a, tau);
        trim(a, tau, p);
        votes += detail::sign_votes(tau, w, a.base.numel());
      }
      p.majority = detail::sign_of(votes);
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
    std::vector<float>& tau = detail::tau_scratch();
    detail::task_vectors_f32(a, tau);
    trim(a, tau, p);
    float zero = 1.0f;
    if (zero_sign == ZeroSign::majority)
      zero = scope == TopKScope::global ? p.majority : detail::sign_of(detail::sign_votes(tau, w, a.base.numel()));
    detail::ties_combine(a, tau, w, static_cast<float>(scaling), zero);
  }

 private:
  template <class Visit>
  MagnitudeCut trim_cut(Visit&& visit, std::int64_t total) const {
    if (selection == TopKSelection::kthvalue) return select_kthvalue(std::forward<Visit>(visit), total, density);
    return select_top_k(std::forward<Visit>(visit), total, keep_count(density, total));
  }

  // Trims each expert's row of τ: by the plan's cuts with global scope, by
  // its own top-k otherwise.
  void trim(const TensorMergeArgs& a, std::vector<float>& tau, const Plan& p) const {
    const std::int64_t n = a.base.numel();
    for (std::size_t i = 0; i < a.experts.size(); ++i) {
      std::span<float> row(tau.data() + static_cast<std::int64_t>(i) * n, static_cast<std::size_t>(n));
      MagnitudeCut cut;
      if (scope == TopKScope::global) {
        auto it = p.cuts.find(std::string(a.name));
        if (it == p.cuts.end()) throw name_error("ties plan has no tensor '" + std::string(a.name) + "'");
        cut = it->second.at(i);
      } else {
        const std::span<const float> crow(row);
        cut = trim_cut([&](auto&& sink) { sink(crow); }, n);
      }
      apply_cut(row, cut);
    }
  }
};

}  // namespace twin
