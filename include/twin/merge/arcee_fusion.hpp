// ArceeFusion (mergekit's `arcee_fusion`, docs/mergekit_methods.md §13): the
// expert's changes are taken only where they matter most, per tensor:
//   per vector along the last axis (a rank-0 or rank-1 tensor is one vector),
//   p = softmax(expert) + 1e-8, q = softmax(base) + 1e-8 and
//   KL = Σ p·log(p/q); importance imp_j = |expert_j − base_j| · KL(its vector);
//   thr = median + 1.5·(q3 − q1) of the importances, a quantile at q being
//   the sorted value at index floor(q·(n − 1)) (no interpolation);
//   θ_j = base_j + (expert_j − base_j) where imp_j ≥ thr, else base_j.
// mergekit takes the quantiles from samples of 10⁶ entries (torch.randperm,
// a fresh sample for the median and another for q1 and q3) where a tensor
// has more; rng = philox (default) takes them exactly over every entry,
// rng = torch draws mergekit's two samples from torch.manual_seed(seed), so
// the result is mergekit's for that tensor when it is seeded right before.
// (Where most importances are 0, thr ≤ 0 and the whole expert is taken, as
// in mergekit.) Softmax and KL in double (exp and log by vectorizable
// kernels within 2 ulp, backend/cpu/elementary.hpp), importances in f32.
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <unordered_map>

#include "twin/backend/cpu/elementary.hpp"
#include "twin/merge/lanes.hpp"
#include "twin/merge/merger.hpp"
#include "twin/merge/selection.hpp"
#include "twin/random.hpp"

namespace twin {

namespace detail {
// The first `m` entries of torch.randperm(n) on the CPU (n < 2³²/20), drawn
// from g; the generator is left where randperm leaves it (n − 1 draws).
inline std::vector<std::uint32_t> torch_randperm_prefix(TorchCpuGenerator& g, std::uint32_t n, std::uint32_t m) {
  std::unordered_map<std::uint32_t, std::uint32_t> moved;  // positions whose value is not their index
  auto at = [&](std::uint32_t i) {
    const auto it = moved.find(i);
    return it == moved.end() ? i : it->second;
  };
  std::vector<std::uint32_t> out(m);
  for (std::uint32_t i = 0; i + 1 < n; ++i) {
    const std::uint32_t z = g.randperm_step(n - i);
    if (i < m) {
      const std::uint32_t a = at(i), b = at(i + z);
      moved[i + z] = a;
      out[i] = b;
    }
  }
  if (m > 0 && m == n) out[n - 1] = at(n - 1);
  return out;
}
}  // namespace detail

struct ArceeFusion {
  std::uint64_t seed = 0;
  RngKind rng = RngKind::philox;

  static constexpr std::int64_t sample_size = 1000000;  // mergekit's sample of importances

  std::string_view name() const noexcept { return "arcee_fusion"; }

  // max_j v[j] (n ≥ 1) in 16 lanes, written on a vector type: GCC keeps a
  // 16-float lane array in 16 scalar registers (a maximum does not depend
  // on the order, NaN aside, which poisons the row's softmax either way).
  static float row_max(const float* v, std::int64_t n) {
    using detail::f32x16;
    f32x16 lane = f32x16{} + v[0];
    std::int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
      f32x16 x;
      std::memcpy(&x, v + j, sizeof x);
      lane = lane < x ? x : lane;
    }
    float m = v[0];
    for (; j < n; ++j) m = m < v[j] ? v[j] : m;
    for (int l = 0; l < 16; ++l) m = m < lane[l] ? lane[l] : m;
    return m;
  }

  // The importances of rows [r0, r1) (of `cols` entries) into imp, row-major;
  // clears `ordered` where one is negative (from rounding) or NaN.
  TWIN_WIDE_VECTORS static void importance_rows(const TensorMergeArgs& a, std::int64_t r0, std::int64_t r1,
                                                std::int64_t cols, float* imp, std::atomic<bool>& ordered) {
    // Rows are read in place where contiguous f32, else converted here.
    float* xb = detail::scratch_floats<0>(static_cast<std::size_t>(2 * cols));
    float* bb = xb + cols;
    std::vector<double> ex(static_cast<std::size_t>(cols)), eb(static_cast<std::size_t>(cols));
    for (std::int64_t r = r0; r < r1; ++r) {
      const float* x = detail::chunk_f32(a.experts[0], r * cols, cols, xb);
      const float* b = detail::chunk_f32(a.base, r * cols, cols, bb);
      const double mx = row_max(x, cols), mb = row_max(b, cols);
      // Each exponential once, kept for the KL sum; the loops vectorize
      // (cpu::exp_nonpositive and log_positive), the sums run in 8 lanes
      // (entry j into lane j mod 8), then the lanes in order. The
      // normalizations multiply by 1/z: divisions cost more than the
      // exponentials on this path.
      double* __restrict px = ex.data();
      double* __restrict pb = eb.data();
      for (std::int64_t j = 0; j < cols; ++j)
        px[j] = cpu::exp_nonpositive(x[j] - mx), pb[j] = cpu::exp_nonpositive(b[j] - mb);
      const double rx = 1.0 / detail::lane_sum(cols, [&](std::int64_t j) { return px[j]; });
      const double rb = 1.0 / detail::lane_sum(cols, [&](std::int64_t j) { return pb[j]; });
      // The KL terms in place of px, in this function's (wide) loop, then
      // their sum: a template called with the term as a lambda is compiled
      // apart from it, at the default width.
      for (std::int64_t j = 0; j < cols; ++j) {
        const double p = px[j] * rx + 1e-8, q = pb[j] * rb + 1e-8;
        px[j] = p * cpu::log_positive(p / q);
      }
      const double kl = detail::lane_sum(cols, [&](std::int64_t j) { return px[j]; });
      const auto klf = static_cast<float>(kl);
      float* __restrict out = imp + r * cols;
      unsigned unordered = 0;
      for (std::int64_t j = 0; j < cols; ++j) {
        const float v = std::abs(x[j] - b[j]) * klf;
        out[j] = v;
        unordered |= !(v >= 0.0f);
      }
      if (unordered) ordered.store(false, std::memory_order_relaxed);
    }
  }

  // The importances of the expert's entries, row-major, into imp[0..n);
  // returns whether every one is ≥ 0 (none negative from rounding, none
  // NaN), so that their magnitudes order them.
  static bool importance(const TensorMergeArgs& a, float* imp) {
    const std::int64_t n = a.base.numel();
    const std::int64_t cols = a.base.rank() >= 1 ? std::max<std::int64_t>(a.base.dim(a.base.rank() - 1), 1) : 1;
    const std::int64_t rows = n / cols;
    std::atomic<bool> all_ordered{true};
    parallel_blocks(rows, std::max<std::int64_t>(1, detail::merge_block / cols),
                    [&](std::int64_t r0, std::int64_t r1) { importance_rows(a, r0, r1, cols, imp, all_ordered); });
    return all_ordered.load();
  }

  // The values at quantiles qs of v (consumed: reordered), as mergekit
  // indexes them. Each selection runs only over the part of v the previous
  // ones left unordered around its index (a partition narrows the next).
  static std::vector<float> quantiles(std::vector<float>& v, std::initializer_list<float> qs) {
    std::vector<float> out;
    std::vector<std::ptrdiff_t> done;  // indices already in their sorted place
    for (float q : qs) {
      const auto k = static_cast<std::ptrdiff_t>(q * static_cast<float>(v.size() - 1));
      std::ptrdiff_t lo = 0, hi = static_cast<std::ptrdiff_t>(v.size());
      for (std::ptrdiff_t d : done) {
        if (d < k) lo = std::max(lo, d + 1);
        else if (d > k) hi = std::min(hi, d);
        else lo = d, hi = d + 1;
      }
      if (hi - lo > 1) std::nth_element(v.begin() + lo, v.begin() + k, v.begin() + hi);
      done.push_back(k);
      out.push_back(v[static_cast<std::size_t>(k)]);
    }
    return out;
  }

  // The values at quantiles qs of v, exactly as quantiles() finds them,
  // from the k-th largest magnitudes (index k ascending is the (n − k)-th
  // largest): a sample and one parallel pass over v, not a sort (every v ≥ 0).
  static std::vector<float> ordered_quantiles(std::span<const float> v, std::initializer_list<float> qs) {
    const auto n = static_cast<std::int64_t>(v.size());
    std::vector<std::int64_t> ks;
    for (float q : qs) ks.push_back(n - static_cast<std::int64_t>(q * static_cast<float>(n - 1)));
    const std::vector<MagnitudeCut> cut = select_top_ks([&](auto&& sink) { sink(v); }, n, ks);
    std::vector<float> out;
    for (const MagnitudeCut& c : cut) out.push_back(std::bit_cast<float>(c.threshold));
    return out;
  }

  // thr = median + 1.5·(q3 − q1).
  float threshold(std::span<const float> imp, bool ordered = false) const {
    if (imp.empty()) return 0.0f;
    const auto n = static_cast<std::int64_t>(imp.size());
    float median = 0.0f, q1 = 0.0f, q3 = 0.0f;
    if (rng == RngKind::torch && n > sample_size) {
      if (n >= (std::int64_t{1} << 32) / 20)
        throw argument_error("arcee_fusion --rng torch: tensor of " + std::to_string(n) +
                             " entries is beyond torch.randperm's small-n algorithm");
      TorchCpuGenerator g(seed);
      auto sample = [&] {
        std::vector<float> s;
        for (std::uint32_t i : detail::torch_randperm_prefix(g, static_cast<std::uint32_t>(n), sample_size))
          s.push_back(imp[i]);
        return s;
      };
      std::vector<float> s1 = sample();
      median = quantiles(s1, {0.5f})[0];
      std::vector<float> s2 = sample();
      const auto q = quantiles(s2, {0.25f, 0.75f});
      q1 = q[0], q3 = q[1];
    } else {
      std::vector<float> q;
      if (ordered) {
        q = ordered_quantiles(imp, {0.5f, 0.25f, 0.75f});
      } else {
        std::vector<float> s(imp.begin(), imp.end());
        q = quantiles(s, {0.5f, 0.25f, 0.75f});
      }
      median = q[0], q1 = q[1], q3 = q[2];
    }
    return median + 1.5f * (q3 - q1);
  }

  void merge_tensor(const TensorMergeArgs& a) const {
    detail::check_merge_args(a);
    if (a.experts.size() != 1)
      throw argument_error("arcee_fusion fuses the base and exactly one expert; tensor '" + std::string(a.name) +
                           "' has " + std::to_string(a.experts.size()) + " experts");
    if (detail::merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s); })) return;
    // The importances in reused scratch: a fresh buffer per tensor cost
    // more in page faults than the combination pass.
    std::vector<float>& buf = detail::tau_scratch();
    const auto n = static_cast<std::size_t>(a.base.numel());
    if (buf.size() < n) buf.resize(n);
    const bool ordered = importance(a, buf.data());
    const std::span<const float> imp(buf.data(), n);
    const float thr = threshold(imp, ordered);
    detail::merge_chunks(a, detail::merge_block, [&](std::int64_t) {
      return [&](std::int64_t lo, std::int64_t c, const float* base, const float* const* ex, float* out) {
        // The expert's pointer read once and both values formed: GCC left
        // the loop scalar with ex[0] loaded per entry under the condition.
        const float* __restrict e = ex[0];
        const float* __restrict im = imp.data() + lo;
        for (std::int64_t j = 0; j < c; ++j) {
          const float taken = base[j] + (e[j] - base[j]);
          out[j] = im[j] >= thr ? taken : base[j];
        }
      };
    });
  }
};

}  // namespace twin
