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
// kernels within 2 ulp, backend/cpu/elementary.hpp; log(p/q) from the
// logits where every softmax value of the row is ≥ 1e-5: row_kl),
// importances in f32.
// Only the rows' KLs are kept: the importances are formed again where they
// are used (threshold_and_kls says where they are held).
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "twin/backend/cpu/avx512_copies.hpp"
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
  // Ours, where the quantiles are over every entry: 512 runs of 64.
  static constexpr std::int64_t sample_runs = 512, sample_run = 64;

  std::string_view name() const noexcept { return "arcee_fusion"; }

  // max_j v[j] (n ≥ 1; the minimum with Min) in 16 lanes, written on a
  // vector type: GCC keeps a 16-float lane array in 16 scalar registers (a
  // maximum does not depend on the order, NaN aside, which poisons the
  // row's softmax either way).
  template <bool Min = false>
  static float row_max(const float* v, std::int64_t n) {
    using detail::f32x16;
    f32x16 lane = f32x16{} + v[0];
    std::int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
      f32x16 x;
      std::memcpy(&x, v + j, sizeof x);
      if constexpr (Min) lane = x < lane ? x : lane;
      else lane = lane < x ? x : lane;
    }
    float m = v[0];
    auto take = [](float a, float b) { return Min ? (b < a ? b : a) : (a < b ? b : a); };
    for (; j < n; ++j) m = take(m, v[j]);
    for (int l = 0; l < 16; ++l) m = take(m, lane[l]);
    return m;
  }

  // max_j |x[j] − b[j]| in f32 (n ≥ 1; NaN where one is), in 16 lanes.
  static float row_max_abs_diff(const float* x, const float* b, std::int64_t n) {
    using detail::f32x16;
    f32x16 lane = {};
    std::int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
      f32x16 u, v;
      std::memcpy(&u, x + j, sizeof u);
      std::memcpy(&v, b + j, sizeof v);
      const f32x16 d = u - v, a = d < 0.0f ? -d : d;
      const detail::i32x16 take = (a > lane) | (a != a);  // a NaN stays
      detail::take_lanes(lane, a, take);
    }
    float m = 0.0f;
    for (; j < n; ++j) {
      const float a = std::abs(x[j] - b[j]);
      m = a > m || a != a ? a : m;
    }
    for (int l = 0; l < 16; ++l) m = lane[l] > m || lane[l] != lane[l] ? lane[l] : m;
    return m;
  }

  // The smallest softmax value for which row_kl takes log(p/q) from the
  // logits: ε/p ≤ 2⁻¹⁰, so three terms of log1p(ε/p) leave under 2⁻⁴⁰ of it.
  static constexpr double analytic_min = 0x1p10 * 1e-8;

  // KL(softmax(x) + 1e-8 ‖ softmax(b) + 1e-8) over one vector of `cols`
  // entries, in double, rounded to float (the factor of its importances);
  // ex and eb: scratch for cols doubles each.
  TWIN_WIDE_VECTORS static float row_kl(const float* x, const float* b, std::int64_t cols, double* __restrict ex,
                                        double* __restrict eb) {
    const double mx = row_max(x, cols), mb = row_max(b, cols);
    // Each exponential once, kept for the KL sum; the loops vectorize
    // (cpu::exp_nonpositive and log_positive), the sums run in 8 lanes
    // (entry j into lane j mod 8), then the lanes in order. The
    // normalizations multiply by 1/z: divisions cost more than the
    // exponentials on this path.
    // Where |δ| ≤ 1/32 for δ = (b − mb) − (x − mx) over the row (an expert
    // near its base: bounded by max |x − b| + |mx − mb|), e^(b − mb) =
    // e^(x − mx)·e^δ with e^δ by its Taylor series to δ⁸ (truncation below
    // 10⁻¹⁹ relative): one exponential per entry, not two.
    if (row_max_abs_diff(x, b, cols) + std::abs(mx - mb) <= 1.0 / 32.0) {
      for (std::int64_t j = 0; j < cols; ++j) {
        const double e = cpu::exp_nonpositive(x[j] - mx), d = (b[j] - mb) - (x[j] - mx);
        const double t = cpu::exp_taylor<8>(d);
        ex[j] = e, eb[j] = e * t;
      }
    } else {
      for (std::int64_t j = 0; j < cols; ++j)
        ex[j] = cpu::exp_nonpositive(x[j] - mx), eb[j] = cpu::exp_nonpositive(b[j] - mb);
    }
    const double zx = detail::lane_sum(cols, [&](std::int64_t j) { return ex[j]; });
    const double zb = detail::lane_sum(cols, [&](std::int64_t j) { return eb[j]; });
    const double rx = 1.0 / zx, rb = 1.0 / zb;
    // The KL terms in place of ex, in this function's (wide) loops, then
    // their sum: a template called with the term as a lambda is compiled
    // apart from it, at the default width. Where every p0 = e^(x − mx)/zx
    // and q0 is at least analytic_min (the rows of weights), log(p/q) with
    // p = p0 + ε, q = q0 + ε is taken from the logits, without a log per
    // entry: log p0 − log q0 = (x − b) − (mx − mb) − log(zx/zb), plus
    // log1p(ε/p0) − log1p(ε/q0) by three terms of each series (ε/p0 and
    // ε/q0 from one division). Else log(p/q) directly.
    const double px_min = cpu::exp_nonpositive(static_cast<double>(row_max<true>(x, cols)) - mx) * rx;
    const double pb_min = cpu::exp_nonpositive(static_cast<double>(row_max<true>(b, cols)) - mb) * rb;
    if (px_min >= analytic_min && pb_min >= analytic_min) {
      const double c0 = (mx - mb) + std::log1p((zx - zb) / zb);
      for (std::int64_t j = 0; j < cols; ++j) {
        const double p0 = ex[j] * rx, q0 = eb[j] * rb;
        const double w = 1e-8 / (p0 * q0), u = q0 * w, v = p0 * w;  // ε/p0, ε/q0
        const double u2 = u * u, v2 = v * v;
        const double c = (u - v) - 0.5 * (u2 - v2) + (u2 * u - v2 * v) * (1.0 / 3.0);
        const double l = ((static_cast<double>(x[j]) - static_cast<double>(b[j])) - c0) + c;
        ex[j] = (p0 + 1e-8) * l;
      }
    } else {
      for (std::int64_t j = 0; j < cols; ++j) {
        const double p = ex[j] * rx + 1e-8, q = eb[j] * rb + 1e-8;
        ex[j] = p * cpu::log_positive(p / q);
      }
    }
    return static_cast<float>(detail::lane_sum(cols, [&](std::int64_t j) { return ex[j]; }));
  }

  // imp[j] = |x_j − b_j| · kl for j < c; returns whether every one is ≥ 0
  // (none negative from a rounded KL below 0, none NaN).
  static bool importances(const float* __restrict x, const float* __restrict b, std::int64_t c, float kl,
                          float* __restrict imp) noexcept {
    unsigned unordered = 0;
    for (std::int64_t j = 0; j < c; ++j) {
      const float v = std::abs(x[j] - b[j]) * kl;
      imp[j] = v;
      unordered |= !(v >= 0.0f);
    }
    return !unordered;
  }

  // Calls f(r, x, b) for the rows r in [r0, r1) (of `cols` entries each),
  // x and b the row of the expert and of the base as f32: read in place
  // where contiguous f32, else converted into scratch.
  template <class F>
  static void for_rows(const TensorMergeArgs& a, std::int64_t r0, std::int64_t r1, std::int64_t cols, F&& f) {
    float* xb = detail::scratch_floats<0>(static_cast<std::size_t>(2 * cols));
    for (std::int64_t r = r0; r < r1; ++r)
      f(r, detail::chunk_f32(a.experts[0], r * cols, cols, xb), detail::chunk_f32(a.base, r * cols, cols, xb + cols));
  }

  // Rows per parallel block: about a merge block of entries.
  static std::int64_t row_block(std::int64_t cols) noexcept {
    return std::max<std::int64_t>(1, detail::merge_block / cols);
  }

  // kl[r] for every row of the tensor.
  static void row_kls(const TensorMergeArgs& a, std::int64_t cols, std::span<float> kl) {
    backend::cpu::parallel_kernel_blocks(
        static_cast<std::int64_t>(kl.size()), row_block(cols), [&](std::int64_t r0, std::int64_t r1) {
          std::vector<double> ex(static_cast<std::size_t>(cols)), eb(static_cast<std::size_t>(cols));
          for_rows(a, r0, r1, cols, [&](std::int64_t r, const float* x, const float* b) {
            kl[static_cast<std::size_t>(r)] = row_kl(x, b, cols, ex.data(), eb.data());
          });
        });
  }

  // Every importance, row-major, into imp[0..n) from the rows' KLs; returns
  // whether every one is ≥ 0, so that their magnitudes order them.
  static bool held_importances(const TensorMergeArgs& a, std::int64_t cols, std::span<const float> kl, float* imp) {
    std::atomic<bool> ordered{true};
    backend::cpu::parallel_kernel_blocks(
        static_cast<std::int64_t>(kl.size()), row_block(cols), [&](std::int64_t r0, std::int64_t r1) {
          bool all = true;
          for_rows(a, r0, r1, cols, [&](std::int64_t r, const float* x, const float* b) {
            all &= importances(x, b, cols, kl[static_cast<std::size_t>(r)], imp + r * cols);
          });
          if (!all) ordered.store(false, std::memory_order_relaxed);
        });
    return ordered.load();
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
    const std::vector<std::int64_t> ks = quantile_ks(n, qs);
    const std::vector<MagnitudeCut> cut = select_top_ks([&](auto&& sink) { sink(v); }, n, ks);
    std::vector<float> out;
    for (const MagnitudeCut& c : cut) out.push_back(std::bit_cast<float>(c.threshold));
    return out;
  }

  // Per quantile q of n values, the k whose k-th largest is the sorted
  // value at index floor(q·(n − 1)).
  static std::vector<std::int64_t> quantile_ks(std::int64_t n, std::initializer_list<float> qs) {
    std::vector<std::int64_t> ks;
    for (float q : qs) ks.push_back(n - static_cast<std::int64_t>(q * static_cast<float>(n - 1)));
    return ks;
  }

  static float iqr_threshold(float median, float q1, float q3) noexcept { return median + 1.5f * (q3 - q1); }

  // thr = median + 1.5·(q3 − q1) of held importances.
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
    return iqr_threshold(median, q1, q3);
  }

  // The threshold of the tensor's importances, and kl[r] for every row.
  // Where the quantiles are taken over every entry of a long tensor, the
  // importances are not held: a sample of them (from the KLs of the rows
  // it touches) brackets each quantile, and one pass computes every row's
  // KL and scans the row's importances against the windows while they are
  // in cache, as select_top_ks does over held values (the same cuts). The
  // importances are held instead where the tensor is short, where
  // mergekit's samples are drawn (rng = torch), where one is negative or
  // NaN (sorted quantiles), and where a window misses.
  float threshold_and_kls(const TensorMergeArgs& a, std::int64_t cols, std::span<float> kl) const {
    const std::int64_t n = a.base.numel();
    const auto held = [&](bool known_ordered, bool kls_done) {
      if (!kls_done) row_kls(a, cols, kl);
      std::vector<float>& buf = detail::tau_scratch();  // reused: a fresh buffer costs page faults
      if (buf.size() < static_cast<std::size_t>(n)) buf.resize(static_cast<std::size_t>(n));
      const bool ordered = held_importances(a, cols, kl, buf.data());
      return threshold(std::span<const float>(buf.data(), static_cast<std::size_t>(n)), ordered && known_ordered);
    };
    if (n <= detail::select_small || (rng == RngKind::torch && n > sample_size)) return held(true, false);
    const std::vector<std::int64_t> ks = quantile_ks(n, {0.5f, 0.25f, 0.75f});
    // The sample: sample_runs runs of sample_run entries spread over the
    // tensor, so that it meets hundreds of rows (each row's importances
    // share its KL: a few long runs would be a few rows); the KLs of the
    // rows they touch first (in parallel, each row once, kept for the pass).
    const std::int64_t run = sample_run, stride = std::max(run, n / sample_runs);
    std::vector<char> done(kl.size(), 0);
    std::vector<std::int64_t> sample_rows;
    for (std::int64_t lo = 0; lo < n; lo += stride)
      for (std::int64_t r = lo / cols; r <= (std::min(n, lo + run) - 1) / cols; ++r)
        if (!done[static_cast<std::size_t>(r)]) done[static_cast<std::size_t>(r)] = 1, sample_rows.push_back(r);
    backend::cpu::parallel_kernel_blocks(
        static_cast<std::int64_t>(sample_rows.size()), 1, [&](std::int64_t i0, std::int64_t i1) {
          std::vector<double> ex(static_cast<std::size_t>(cols)), eb(static_cast<std::size_t>(cols));
          for (std::int64_t i = i0; i < i1; ++i) {
            const std::int64_t r = sample_rows[static_cast<std::size_t>(i)];
            for_rows(a, r, r + 1, cols, [&](std::int64_t, const float* x, const float* b) {
              kl[static_cast<std::size_t>(r)] = row_kl(x, b, cols, ex.data(), eb.data());
            });
          }
        });
    std::vector<std::uint32_t> sample;
    float* xb = detail::scratch_floats<0>(static_cast<std::size_t>(3 * run));
    for (std::int64_t lo = 0; lo < n; lo += stride) {
      const std::int64_t hi = std::min(n, lo + run);
      const float* x = detail::chunk_f32(a.experts[0], lo, hi - lo, xb);
      const float* b = detail::chunk_f32(a.base, lo, hi - lo, xb + run);
      float* imp = xb + 2 * run;
      for (std::int64_t j = lo; j < hi;) {  // row by row
        const std::int64_t r = j / cols, e = std::min(hi, (r + 1) * cols);
        importances(x + (j - lo), b + (j - lo), e - j, kl[static_cast<std::size_t>(r)], imp + (j - lo));
        j = e;
      }
      for (std::int64_t j = 0; j < hi - lo; ++j) sample.push_back(magnitude_key(imp[j]));
    }
    // The pass: each row's KL, then its importances scanned a chunk at a time.
    detail::WindowScan scan(detail::sample_windows(sample, n, ks, static_cast<std::size_t>(run)));
    std::atomic<bool> ordered{true};
    backend::cpu::parallel_kernel_blocks(
        static_cast<std::int64_t>(kl.size()), row_block(cols), [&](std::int64_t r0, std::int64_t r1) {
          std::vector<double> ex(static_cast<std::size_t>(cols)), eb(static_cast<std::size_t>(cols));
          constexpr std::int64_t C = TWIN_CHUNK_ELEMENTS;
          float* imp = detail::scratch_floats<1>(static_cast<std::size_t>(C));
          bool all = true;
          for_rows(a, r0, r1, cols, [&](std::int64_t r, const float* x, const float* b) {
            float& k = kl[static_cast<std::size_t>(r)];
            if (!done[static_cast<std::size_t>(r)]) k = row_kl(x, b, cols, ex.data(), eb.data());
            for (std::int64_t c0 = 0; c0 < cols; c0 += C) {
              const std::int64_t c = std::min(C, cols - c0);
              all &= importances(x + c0, b + c0, c, k, imp);
              scan.scan(imp, nullptr, c);
            }
          });
          if (!all) ordered.store(false, std::memory_order_relaxed);
        });
    if (!ordered.load()) return held(false, true);
    float q[3];
    for (std::size_t x = 0; x < 3; ++x) {
      const std::optional<MagnitudeCut> c = scan.cut(x, ks[x]);
      if (!c) return held(true, true);
      q[x] = std::bit_cast<float>(c->threshold);
    }
    return iqr_threshold(q[0], q[1], q[2]);
  }

  void merge_tensor(const TensorMergeArgs& a) const {
    detail::check_merge_args(a);
    if (a.experts.size() != 1)
      throw argument_error("arcee_fusion fuses the base and exactly one expert; tensor '" + std::string(a.name) +
                           "' has " + std::to_string(a.experts.size()) + " experts");
    if (detail::merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s); })) return;
    const std::int64_t n = a.base.numel();
    const std::int64_t cols = a.base.rank() >= 1 ? std::max<std::int64_t>(a.base.dim(a.base.rank() - 1), 1) : 1;
    std::vector<float> kl(static_cast<std::size_t>(n / cols));
    const float thr = threshold_and_kls(a, cols, kl);
    // The importances formed again from the rows' KLs, where they are used.
    detail::merge_chunks(a, detail::merge_block, [&](std::int64_t) {
      return [&](std::int64_t lo, std::int64_t c, const float* base, const float* const* ex, float* out) {
        // The expert's pointer read once and both values formed: GCC left
        // the loop scalar with ex[0] loaded per entry under the condition.
        const float* __restrict e = ex[0];
        for (std::int64_t j0 = 0; j0 < c;) {  // row by row
          const std::int64_t r = (lo + j0) / cols, j1 = std::min(c, (r + 1) * cols - lo);
          const float k = kl[static_cast<std::size_t>(r)];
          for (std::int64_t j = j0; j < j1; ++j) {
            const float taken = base[j] + (e[j] - base[j]);
            out[j] = std::abs(e[j] - base[j]) * k >= thr ? taken : base[j];
          }
          j0 = j1;
        }
      };
    });
  }
};

}  // namespace twin
