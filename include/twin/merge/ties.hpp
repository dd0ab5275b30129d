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

// Each expert's trim cut for one tensor, and, for a cut that keeps only
// some of the ties at its threshold, the number of ties before each merge
// block (in index order).
struct TensorCuts {
  std::vector<MagnitudeCut> cut;
  std::vector<std::vector<std::int64_t>> ties_before;

  std::vector<BlockCut> at_block(std::size_t b) const {
    std::vector<BlockCut> out;
    for (std::size_t i = 0; i < cut.size(); ++i) out.push_back(BlockCut::at(cut[i], ties_before[i], b));
    return out;
  }
};

// Fills ties_before for the cuts that need the tie order: one pass over τ
// counting, per merge block, the entries at each such cut's threshold.
inline void count_ties(const TensorMergeArgs& a, TensorCuts& tc) {
  const std::size_t T = tc.cut.size();
  tc.ties_before.assign(T, {});
  std::vector<std::size_t> need;
  for (std::size_t i = 0; i < T; ++i)
    if (tc.cut[i].needs_tie_order()) need.push_back(i);
  if (need.empty()) return;
  const std::int64_t n = a.base.numel(), blocks = (n + merge_block - 1) / merge_block;
  for (std::size_t i : need) tc.ties_before[i].assign(static_cast<std::size_t>(blocks) + 1, 0);
  parallel_blocks(n, merge_block, [&](std::int64_t b0, std::int64_t b1) {
    const auto b = static_cast<std::size_t>(b0 / merge_block);
    for_input_chunks(a, b0, b1, [&](std::int64_t, std::int64_t c, const float* base, const float* const* ex, float*) {
      for (std::size_t i : need) {
        const std::uint32_t t = tc.cut[i].threshold;
        std::int64_t k = 0;
        for (std::int64_t j = 0; j < c; ++j) k += magnitude_key(ex[i][j] - base[j]) == t;
        tc.ties_before[i][b + 1] += k;
      }
    });
  });
  for (std::size_t i : need)
    for (std::size_t b = 1; b < tc.ties_before[i].size(); ++b) tc.ties_before[i][b] += tc.ties_before[i][b - 1];
}

// rows[i][0..c) = τ_i = ex[i] − base (as task_vectors_f32 forms it) where
// expert i's cut keeps it, else 0, over one chunk of the current block.
inline void trimmed_rows(std::int64_t c, const float* TWIN_RESTRICT base, const float* const* ex,
                         std::vector<BlockCut>& cuts, float* const* rows) noexcept {
  for (std::size_t i = 0; i < cuts.size(); ++i) {
    const float* TWIN_RESTRICT e = ex[i];
    float* TWIN_RESTRICT r = rows[i];
    if (cuts[i].uniform) {
      const std::uint32_t t = cuts[i].threshold;
      const bool ties = cuts[i].keep_ties;
      for (std::int64_t j = 0; j < c; ++j) {
        const float x = e[j] - base[j];
        const std::uint32_t k = magnitude_key(x);
        r[j] = (k > t) | (ties & (k == t)) ? x : 0.0f;
      }
    } else {
      CutCursor& cur = cuts[i].cursor;
      for (std::int64_t j = 0; j < c; ++j) {
        const float x = e[j] - base[j];
        r[j] = cur.keep(x) ? x : 0.0f;
      }
    }
  }
}

// The cut keeping the k largest |τ_i| of expert i alone, τ_i held (the
// fallback of task_vector_cuts).
inline MagnitudeCut held_task_vector_cut(const TensorMergeArgs& a, std::size_t i, std::int64_t k) {
  const ConstTensorView one[1] = {a.experts[i]};
  const TensorMergeArgs ai{a.name, a.base, one, TensorView{}};
  std::vector<float> tau;
  task_vectors_f32(ai, tau);
  return select_top_k(std::span<const float>(tau.data(), static_cast<std::size_t>(a.base.numel())), k);
}

// Exact top-k[i] cuts of each τ_i = expert_i − base of one tensor, with τ
// recomputed from the inputs and never held:
//   1. a sample (runs of 1024 entries spread over the tensor, about 32K
//      entries) brackets each expert's k-th largest key in a window of
//      ranks k·m/n ± (4σ + 16);
//   2. one pass counts, per expert, the keys above the window (a vectorized
//      compare) and collects the keys inside it;
//   3. where the k-th largest key lies in the window (nearly always), the
//      cut is found among the collected keys; otherwise that expert's τ is
//      held and selected exactly (select_top_k).
// Exact either way: the sample only decides how much work step 3 does.
// Short tensors hold τ and select row by row.
inline std::vector<MagnitudeCut> task_vector_cuts(const TensorMergeArgs& a, const std::vector<std::int64_t>& k) {
  const std::int64_t n = a.base.numel();
  const std::size_t T = a.experts.size();
  std::vector<MagnitudeCut> cut(T);
  std::vector<std::size_t> todo;
  for (std::size_t i = 0; i < T; ++i) {
    if (k[i] <= 0) cut[i] = MagnitudeCut::keep_none();
    else if (k[i] >= n) cut[i] = MagnitudeCut::keep_all();
    else todo.push_back(i);
  }
  if (todo.empty()) return cut;
  if (n <= select_small) {
    std::vector<float> tau;
    task_vectors_f32(a, tau);
    for (std::size_t i : todo)
      cut[i] = select_top_k(
          std::span<const float>(tau.data() + static_cast<std::int64_t>(i) * n, static_cast<std::size_t>(n)), k[i]);
    return cut;
  }
  // 1. The sample: run r covers [r·stride, r·stride + run).
  constexpr std::int64_t run = sample_run;
  const std::int64_t stride = sample_stride(n);
  const std::int64_t runs = (n + stride - 1) / stride;
  std::vector<std::vector<std::uint32_t>> sample(T);
  for (std::size_t i : todo) sample[i].assign(static_cast<std::size_t>(runs * run), 0xffffffffu);
  parallel_blocks(runs, 8, [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      const std::int64_t lo = r * stride, hi = std::min(n, lo + run);
      for_input_chunks(
          a, lo, hi, [&](std::int64_t at, std::int64_t c, const float* base, const float* const* ex, float*) {
            for (std::size_t i : todo)
              for (std::int64_t j = 0; j < c; ++j)
                sample[i][static_cast<std::size_t>(r * run + (at - lo) + j)] = magnitude_key(ex[i][j] - base[j]);
          });
    }
  });
  std::vector<std::uint32_t> wlo(T, 0), whi(T, 0xffffffffu);  // window [wlo, whi] of keys
  // Per expert, in parallel (each expert's window depends on its sample alone).
  parallel_blocks(static_cast<std::int64_t>(todo.size()), 1, [&](std::int64_t x0, std::int64_t x1) {
    for (std::int64_t x = x0; x < x1; ++x) {
      const std::size_t i = todo[static_cast<std::size_t>(x)];
      std::vector<std::uint32_t>& sm = sample[i];
      std::erase(sm, 0xffffffffu);  // past the tensor's end (no key is 0xffffffff)
      std::tie(wlo[i], whi[i]) = sample_window(sm, static_cast<double>(k[i]) / static_cast<double>(n));
      sm = {};
    }
  });
  // 2. Counts above each window, and the keys inside it, per thread and expert.
  const auto threads = static_cast<std::size_t>(num_threads());
  std::vector<std::int64_t> above_n(threads * T, 0);
  std::vector<KeyBuffer> inside(threads * T);
  parallel_blocks(n, merge_block, [&](std::int64_t b0, std::int64_t b1) {
    const auto t = static_cast<std::size_t>(thread_index());
    for_input_chunks(a, b0, b1, [&](std::int64_t, std::int64_t c, const float* base, const float* const* ex, float*) {
      for (std::size_t i : todo) {
        const std::int64_t above = scan_window(ex[i], base, c, wlo[i], whi[i], inside[t * T + i]);
        above_n[t * T + i] += above;
      }
    });
  });
  // 3. The cut inside each window, or the exact fallback; experts in parallel.
  parallel_blocks(static_cast<std::int64_t>(todo.size()), 1, [&](std::int64_t x0, std::int64_t x1) {
    for (std::int64_t x = x0; x < x1; ++x) {
      const std::size_t i = todo[static_cast<std::size_t>(x)];
      const std::optional<MagnitudeCut> c = cut_in_window(above_n, inside, threads, T, i, k[i]);
      cut[i] = c ? *c : held_task_vector_cut(a, i, k[i]);
    }
  });
  return cut;
}

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
                       trimmed_rows(c, base, ex, cuts, rows.data());
                       weighted_sum(c, T, rows.data(), w.data(), sum);
                       for (std::int64_t j = 0; j < c; ++j) votes += (sum[j] > 0.0f) - (sum[j] < 0.0f);
                     });
    return votes;
  });
}

// out = base + λ · disjoint_mean(rows) over m elements, as disjoint_mean
// and the θ0 + λ· step compute them element by element, with the elements
// outer, 16 to a register, so the sums never leave registers.
inline void ties_elect_and_mean(std::int64_t m, std::size_t T, const float* const* rows, const float* w,
                                const float* TWIN_RESTRICT base, float lambda, float zero_sign,
                                float* TWIN_RESTRICT out) noexcept {
  constexpr std::int64_t L = 16;
  using f32x16 = float __attribute__((vector_size(L * sizeof(float))));
  auto load = [](const float* p) noexcept {
    f32x16 x;
    std::memcpy(&x, p, sizeof x);
    return x;
  };
  const bool zero_positive = zero_sign > 0.0f;
  std::int64_t j = 0;
  for (; j + L <= m; j += L) {
    f32x16 sum = {};
    for (std::size_t i = 0; i < T; ++i) sum += w[i] * load(rows[i] + j);
    const auto positive = (sum > 0.0f) | ((sum == 0.0f) & (zero_positive ? -1 : 0));
    f32x16 merged = {}, den = {};
    const f32x16 zero = {};
    for (std::size_t i = 0; i < T; ++i) {
      const f32x16 t = load(rows[i] + j);
      const auto agree = (positive & (t > 0.0f)) | (~positive & (t < 0.0f));
      merged += agree ? w[i] * t : zero;
      den += agree ? f32x16{} + w[i] : zero;
    }
    const f32x16 mean = den != 0.0f ? merged / den : zero;
    const f32x16 r = load(base + j) + lambda * mean;
    std::memcpy(out + j, &r, sizeof r);
  }
  for (; j < m; ++j) {
    float sum = 0.0f;
    for (std::size_t i = 0; i < T; ++i) sum += w[i] * rows[i][j];
    const bool positive = sum > 0.0f || (sum == 0.0f && zero_positive);
    float merged = 0.0f, den = 0.0f;
    for (std::size_t i = 0; i < T; ++i) {
      const float t = rows[i][j];
      const bool agree = positive ? t > 0.0f : t < 0.0f;
      merged += agree ? w[i] * t : 0.0f;
      den += agree ? w[i] : 0.0f;
    }
    out[j] = base[j] + lambda * (den != 0.0f ? merged / den : 0.0f);
  }
}

// θ0 + λ · disjoint_mean(τ'), the trimmed task values formed chunk by chunk.
inline void ties_combine(const TensorMergeArgs& a, const TensorCuts& tc, const std::vector<float>& w, float lambda,
                         float zero_sign) {
  const std::size_t T = w.size();
  constexpr std::size_t S = 512;
  merge_chunks(a, merge_block, [&](std::int64_t b0) {
    return [&, cuts = tc.at_block(static_cast<std::size_t>(b0 / merge_block)), rows = std::vector<float*>(T),
            at = std::vector<const float*>(T)](std::int64_t, std::int64_t c, const float* base, const float* const* ex,
                                               float* out) mutable {
      float* buf = scratch_floats<5>(S * T);
      for (std::size_t i = 0; i < T; ++i) rows[i] = buf + i * S;
      // Sub-chunks of S elements keep the T trimmed rows in L1.
      for (std::int64_t s0 = 0; s0 < c; s0 += static_cast<std::int64_t>(S)) {
        const std::int64_t m = std::min(c - s0, static_cast<std::int64_t>(S));
        for (std::size_t i = 0; i < T; ++i) at[i] = ex[i] + s0;
        trimmed_rows(m, base + s0, at.data(), cuts, rows.data());
        ties_elect_and_mean(m, T, rows.data(), w.data(), base + s0, lambda, zero_sign, out + s0);
      }
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
    // Every expert's cut from one sample and one counting pass over the
    // model (all experts at once); an expert whose window missed, and the
    // kthvalue selection, take the per-expert path below.
    std::vector<std::optional<MagnitudeCut>> found(static_cast<std::size_t>(c.num_experts));
    const std::int64_t k = keep_count(density, total);
    if (selection == TopKSelection::exact && total > detail::select_small && k > 0 && k < total)
      found = window_cuts(c, sizes, total, k);
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
      const auto& f = found[static_cast<std::size_t>(m)];
      const MagnitudeCut cut = f ? *f : trim_cut(visit, total);
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
    // τ is never held: the cuts come from a sample and one counting pass
    // over the inputs (or from the plan), the combination from another.
    detail::TensorCuts tc;
    if (scope == TopKScope::global) {
      auto it = p.cuts.find(std::string(a.name));
      if (it == p.cuts.end()) throw name_error("ties plan has no tensor '" + std::string(a.name) + "'");
      tc.cut = it->second;
    } else {
      const std::int64_t n = a.base.numel();
      std::vector<std::int64_t> k(a.experts.size());
      for (std::int64_t& x : k)
        x = selection == TopKSelection::kthvalue ? kthvalue_count(density, n) : keep_count(density, n);
      tc.cut = detail::task_vector_cuts(a, k);
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
  // The top-k cut of each expert's τ over the whole model (tensors in
  // catalog order), τ formed per chunk and never held: a sample (runs of
  // 1024 entries, about 32K in all) brackets each expert's k-th largest key
  // in a window, then one pass over the model counts, for every expert at
  // once, the keys above its window and collects those inside. nullopt for
  // an expert whose k-th key fell outside its window (rare; exact either way).
  static std::vector<std::optional<MagnitudeCut>> window_cuts(const MergeCatalog& c,
                                                              const std::vector<std::int64_t>& sizes,
                                                              std::int64_t total, std::int64_t k) {
    const auto T = static_cast<std::size_t>(c.num_experts);
    std::vector<ConstTensorView> ex;
    auto args = [&](std::size_t t) {
      ex.clear();
      for (int m = 0; m < c.num_experts; ++m) ex.push_back(c.view(t, m));
      return TensorMergeArgs{c.names[t], c.view(t, -1), ex, TensorView{}};
    };
    constexpr std::int64_t run = detail::sample_run;
    const std::int64_t stride = detail::sample_stride(total);
    std::vector<std::vector<std::uint32_t>> sample(T);
    std::int64_t pos = 0;
    for (std::size_t t = 0; t < c.names.size(); ++t) {
      const std::int64_t len = sizes[t];
      const TensorMergeArgs a = args(t);
      for (std::int64_t r = pos / stride; len > 0 && r <= (pos + len - 1) / stride; ++r) {
        const std::int64_t lo = std::max(pos, r * stride), hi = std::min(pos + len, r * stride + run);
        detail::for_input_chunks(a, lo - pos, hi - pos,
                                 [&](std::int64_t, std::int64_t n, const float* base, const float* const* e, float*) {
                                   for (std::size_t i = 0; i < T; ++i)
                                     for (std::int64_t j = 0; j < n; ++j)
                                       sample[i].push_back(magnitude_key(e[i][j] - base[j]));
                                 });
      }
      pos += len;
    }
    std::vector<std::pair<std::uint32_t, std::uint32_t>> window(T);
    for (std::size_t i = 0; i < T; ++i)
      window[i] = detail::sample_window(sample[i], static_cast<double>(k) / static_cast<double>(total));
    const auto threads = static_cast<std::size_t>(num_threads());
    std::vector<std::int64_t> above(threads * T, 0);
    std::vector<detail::KeyBuffer> inside(threads * T);
    for (std::size_t t = 0; t < c.names.size(); ++t) {
      const TensorMergeArgs a = args(t);
      parallel_blocks(sizes[t], detail::merge_block, [&](std::int64_t b0, std::int64_t b1) {
        const auto th = static_cast<std::size_t>(thread_index());
        detail::for_input_chunks(
            a, b0, b1, [&](std::int64_t, std::int64_t n, const float* base, const float* const* e, float*) {
              for (std::size_t i = 0; i < T; ++i)
                above[th * T + i] +=
                    detail::scan_window(e[i], base, n, window[i].first, window[i].second, inside[th * T + i]);
            });
      });
    }
    std::vector<std::optional<MagnitudeCut>> out(T);
    for (std::size_t i = 0; i < T; ++i) out[i] = detail::cut_in_window(above, inside, threads, T, i, k);
    return out;
  }

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
