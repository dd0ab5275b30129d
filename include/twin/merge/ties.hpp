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
#include <bit>
#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "twin/merge/merger.hpp"
#include "twin/merge/selection.hpp"
#include "twin/merge/streamed_cuts.hpp"

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
inline float sign_of(std::int64_t v) noexcept { return static_cast<float>((v > 0) - (v < 0)); }

// Σ_j sign(Σ_i w_i τ'_ij) over one tensor's trimmed task values (as
// disjoint_mean forms the sums). An integer: the same for any blocking.
inline std::int64_t trimmed_sign_votes(const TensorMergeArgs& a, const TensorCuts& tc, const std::vector<float>& w) {
  const std::size_t T = w.size();
  return parallel_sum<std::int64_t>(a.base.numel(), merge_block, [&](std::int64_t b0, std::int64_t b1) {
    std::vector<BlockCut> cuts = tc.at_block(static_cast<std::size_t>(b0 / merge_block));
    float* buf = scratch_floats<5>(static_cast<std::size_t>(TWIN_CHUNK_ELEMENTS) * T);
    std::vector<float*> rows(T);
    for (std::size_t i = 0; i < T; ++i) rows[i] = buf + i * static_cast<std::size_t>(TWIN_CHUNK_ELEMENTS);
    std::int64_t votes = 0;
    for_input_chunks(a, b0, b1,
                     [&](std::int64_t, std::int64_t c, const float* base, const float* const* ex, float* sum) {
                       trimmed_rows(c, base, ex, cuts, nullptr, rows.data());
                       weighted_sum(c, T, rows.data(), w.data(), sum);
                       for (std::int64_t j = 0; j < c; ++j) votes += (sum[j] > 0.0f) - (sum[j] < 0.0f);
                     });
    return votes;
  });
}

// base + λ · disjoint_mean at one position, as disjoint_mean and the
// θ0 + λ· step compute it: t(i) is expert i's trimmed value (a vector of
// it in ties_lanes, V any width of Lanes, the result into `out`; one entry
// in ties_one), n experts in model order.
template <class V, class Lane>
TWIN_ALWAYS_INLINE void ties_lanes(std::size_t n, Lane&& t, const float* w, const V& base, float lambda,
                                   bool zero_positive, V& out) noexcept {
  using M = LaneMask<V>;
  const V zero = {};
  V sum = {};
  for (std::size_t i = 0; i < n; ++i) sum += w[i] * t(i);
  const M positive = (M)(sum > 0.0f) | ((M)(sum == 0.0f) & (zero_positive ? ~0u : 0u));
  V merged = {}, den = {};
  for (std::size_t i = 0; i < n; ++i) {
    const V ti = t(i);
    const M agree = (positive & (M)(ti > 0.0f)) | (~positive & (M)(ti < 0.0f));
    V add = w[i] * ti, weight = zero + w[i];
    keep_lanes(add, agree);
    keep_lanes(weight, agree);
    merged += add;
    den += weight;
  }
  const V mean = den != 0.0f ? merged / den : zero;
  out = base + lambda * mean;
}
template <class One>
float ties_one(std::size_t n, One&& t, const float* w, float base, float lambda, bool zero_positive) noexcept {
  float sum = 0.0f;
  for (std::size_t i = 0; i < n; ++i) sum += w[i] * t(i);
  const bool positive = sum > 0.0f || (sum == 0.0f && zero_positive);
  float merged = 0.0f, den = 0.0f;
  for (std::size_t i = 0; i < n; ++i) {
    const float ti = t(i);
    const bool agree = positive ? ti > 0.0f : ti < 0.0f;
    merged += agree ? w[i] * ti : 0.0f;
    den += agree ? w[i] : 0.0f;
  }
  return base + lambda * (den != 0.0f ? merged / den : 0.0f);
}

// θ0 + λ · disjoint_mean(τ'), the trimmed task values formed chunk by chunk:
// in registers for up to 8 experts where every cut keeps all of its ties
// or none in the block, else staged in rows (the elements outer, a vector to a
// register, so the sums never leave registers).
inline void ties_combine(const TensorMergeArgs& a, const TensorCuts& tc, const std::vector<float>& w, float lambda,
                         float zero_sign) {
  const bool zp = zero_sign > 0.0f;
  combine_trimmed(
      a, tc, nullptr,
      [&](std::size_t n, auto&& t, const auto& b, auto& o) { ties_lanes(n, t, w.data(), b, lambda, zp, o); },
      [&](std::size_t n, auto&& t, float b) { return ties_one(n, t, w.data(), b, lambda, zp); });
}
}  // namespace detail

struct Ties {
  double density = 0.2;  // fraction of each task vector kept by the trim
  double scaling = 1.0;  // λ
  TopKScope scope = TopKScope::per_tensor;
  std::vector<double> weights;  // per expert; empty: all 1
  TopKSelection selection = TopKSelection::exact;
  ZeroSign zero_sign = ZeroSign::plus;

  // Global scope: the cut of each expert for each tensor, for a cut that
  // keeps only some of its ties in a tensor the number of ties before each
  // merge block of it (as count_ties gives them; absent where the merge
  // counts them), and the model's majority sign (zero_sign = majority).
  struct Plan {
    std::unordered_map<std::string, std::vector<MagnitudeCut>> cuts;
    std::unordered_map<std::string, std::vector<std::vector<std::int64_t>>> ties_before;
    float majority = 1.0f;

    // Tensor `name`'s cuts and known tie counts.
    detail::TensorCuts tensor(std::string_view name) const {
      auto it = cuts.find(std::string(name));
      if (it == cuts.end()) throw name_error("ties plan has no tensor '" + std::string(name) + "'");
      detail::TensorCuts tc;
      tc.cut = it->second;
      if (auto tb = ties_before.find(it->first); tb != ties_before.end()) tc.ties_before = tb->second;
      return tc;
    }
  };

  std::string_view name() const noexcept { return "ties"; }

  void validate() const { check_unit_interval(density, "ties density"); }

  Plan plan(const MergeCatalog& c) const {
    validate();
    Plan p;
    if (scope != TopKScope::global) return p;
    const auto T = static_cast<std::size_t>(c.num_experts);
    const std::size_t S = c.names.size();
    // The model as one sequence of tensors, each with every expert.
    std::vector<std::vector<ConstTensorView>> views(S);
    std::vector<TensorMergeArgs> seq;
    std::int64_t total = 0;
    for (std::size_t t = 0; t < S; ++t) {
      seq.push_back(tensor_args(c, t, views[t]));
      total += seq.back().base.numel();
    }
    for (const auto& name : c.names) p.cuts[name].resize(T);
    // Every expert's cut from one sample and one counting pass over the
    // model (all experts at once), with the ties of a cut that keeps only
    // some counted per tensor and merge block from its window's keys; an
    // expert whose window missed, and the kthvalue selection, take the
    // per-expert path below.
    detail::WindowCuts found;
    found.cut.resize(T);
    found.ties_before.resize(T);
    const std::int64_t k = keep_count(density, total);
    if (selection == TopKSelection::exact && total > detail::select_small && k > 0 && k < total) {
      std::vector<detail::CutRequest> req(T);
      for (std::size_t m = 0; m < T; ++m) req[m] = {m, k};
      found = detail::window_cuts(seq, req, true);
    }
    std::vector<MagnitudeCut> cut(T);
    for (std::size_t m = 0; m < T; ++m) {
      // Visits τ_m tensor by tensor, never holding more than one of them.
      auto visit = [&](auto&& sink) {
        for (std::size_t t = 0; t < S; ++t) {
          const ConstTensorView one[1] = {seq[t].experts[m]};
          const TensorMergeArgs a{c.names[t], seq[t].base, one, TensorView{}};
          std::vector<float>& tau = detail::tau_scratch();
          detail::task_vectors_f32(a, tau);
          sink(std::span<const float>(tau.data(), static_cast<std::size_t>(a.base.numel())));
        }
      };
      cut[m] = found.cut[m] ? *found.cut[m] : trim_cut(visit, total);
    }
    // A cut that keeps some of its ties keeps the first in model order. Per
    // tensor, the ties of every such cut before each merge block: from the
    // window's keys, or (an expert without them) counted in one pass over
    // the model for all such experts at once (τ formed per chunk).
    std::vector<detail::TensorCuts> per(S);
    for (std::size_t t = 0; t < S; ++t) {
      per[t].cut = cut;
      per[t].ties_before.resize(T);
      for (std::size_t m = 0; m < T; ++m)
        if (!found.ties_before[m].empty()) per[t].ties_before[m] = std::move(found.ties_before[m][t]);
      detail::count_ties(seq[t], per[t]);
    }
    for (std::size_t m = 0; m < T; ++m) {
      std::vector<std::int64_t> ties(S, 0);
      if (cut[m].needs_tie_order())
        for (std::size_t t = 0; t < S; ++t) ties[t] = per[t].ties_before[m].back();
      const std::vector<MagnitudeCut> split = split_cut(cut[m], ties);
      for (std::size_t t = 0; t < S; ++t) {
        p.cuts[c.names[t]][m] = split[t];
        if (split[t].needs_tie_order()) {  // the one tensor where its quota ends
          auto& tb = p.ties_before[c.names[t]];
          tb.resize(T);
          tb[m] = std::move(per[t].ties_before[m]);
        }
      }
    }
    if (zero_sign == ZeroSign::majority) {
      // The elected signs of the whole model, tensor by tensor, the trimmed
      // τ formed per chunk as the merge forms them (never held).
      const std::vector<float> w = resolve_weights(weights, static_cast<std::size_t>(c.num_experts), name());
      std::int64_t votes = 0;
      for (std::size_t t = 0; t < S; ++t) {
        detail::TensorCuts tc = p.tensor(c.names[t]);
        detail::count_ties(seq[t], tc);
        votes += detail::trimmed_sign_votes(seq[t], tc, w);
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
    // τ is never held: the cuts come from a sample and one counting pass
    // over the inputs (or from the plan), the combination from another.
    detail::TensorCuts tc;
    if (scope == TopKScope::global) {
      tc = p.tensor(a.name);
    } else {
      const std::int64_t n = a.base.numel();
      std::vector<std::int64_t> k(a.experts.size());
      for (std::int64_t& x : k)
        x = selection == TopKSelection::kthvalue ? kthvalue_count(density, n) : keep_count(density, n);
      tc.cut = detail::task_vector_cuts(a, k, &tc.ties_before);
      if (selection == TopKSelection::kthvalue)
        for (MagnitudeCut& c : tc.cut) c.quota = MagnitudeCut::all_ties;  // select_kthvalue's rule
    }
    detail::count_ties(a, tc);
    float zero = 1.0f;
    if (zero_sign == ZeroSign::majority)
      zero = scope == TopKScope::global ? p.majority : detail::sign_of(detail::trimmed_sign_votes(a, tc, w));
    detail::ties_combine(a, tc, w, static_cast<float>(scaling), zero);
  }

 private:
  // Tensor t of the catalog with every expert (their views kept in ex).
  static TensorMergeArgs tensor_args(const MergeCatalog& c, std::size_t t, std::vector<ConstTensorView>& ex) {
    ex.clear();
    for (int m = 0; m < c.num_experts; ++m) ex.push_back(c.view(t, m));
    return TensorMergeArgs{c.names[t], c.view(t, -1), ex, TensorView{}};
  }

  template <class Visit>
  MagnitudeCut trim_cut(Visit&& visit, std::int64_t total) const {
    if (selection == TopKSelection::kthvalue) return select_kthvalue(std::forward<Visit>(visit), total, density);
    return select_top_k(std::forward<Visit>(visit), total, keep_count(density, total));
  }
};

}  // namespace twin
