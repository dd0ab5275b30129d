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

#include <atomic>
#include <cstring>

#include "twin/merge/lanes.hpp"
#include "twin/merge/merger.hpp"
#include "twin/merge/selection.hpp"

namespace twin {

struct Sce {
  double select_topk = 1.0;  // fraction of positions kept by variance

  std::string_view name() const noexcept { return "sce"; }

  // The kernels below work on 8 or 16 positions at a time with every
  // expert's values in registers (GCC vector types), each position's sums
  // in the order of the experts: the same operations, in the same order, as
  // the elementwise loops they replace, without staging τ in memory.
  using f32x8 = detail::f32x8;
  using f32x16 = detail::f32x16;
  using f64x8 = detail::f64x8;
  using u32x8 = detail::u32x8;
  using u32x16 = detail::u32x16;
  using i32x16 = detail::i32x16;

  // var[j] = (1/N) Σ_i (t_ij − m_j)², m_j = (1/N) Σ_i t_ij, t_ij = e_i[j] −
  // base[j] in f32, the sums in double; returns how many are nonzero.
  static std::int64_t variances(const float* base, const float* const* ex, std::size_t N, std::int64_t c,
                                float* var) noexcept {
    const auto dn = static_cast<double>(N);
    std::int64_t nonzero = 0, j = 0;
    for (; j + 8 <= c; j += 8) {
      f32x8 b, x;
      std::memcpy(&b, base + j, sizeof b);
      f64x8 m = {};
      for (std::size_t i = 0; i < N; ++i) {
        std::memcpy(&x, ex[i] + j, sizeof x);
        m += __builtin_convertvector(x - b, f64x8);
      }
      m /= dn;
      f64x8 v = {};
      for (std::size_t i = 0; i < N; ++i) {
        std::memcpy(&x, ex[i] + j, sizeof x);
        const f64x8 d = __builtin_convertvector(x - b, f64x8) - m;
        v += d * d;
      }
      const f32x8 out = __builtin_convertvector(v / dn, f32x8);
      std::memcpy(var + j, &out, sizeof out);
      for (int l = 0; l < 8; ++l) nonzero += out[l] != 0.0f;
    }
    for (; j < c; ++j) {
      double m = 0.0, v = 0.0;
      for (std::size_t i = 0; i < N; ++i) m += ex[i][j] - base[j];
      m /= dn;
      for (std::size_t i = 0; i < N; ++i) {
        const double d = (ex[i][j] - base[j]) - m;
        v += d * d;
      }
      var[j] = static_cast<float>(v / dn);
      nonzero += var[j] != 0.0f;
    }
    return nonzero;
  }

  // Σ_j t_j² in double of t = e − base where kept (magnitude_key(var[j]) ≥
  // min_key; all without var): 8 lanes (lane q takes the entries ≡ q mod 8), then the lanes in
  // order, then the tail.
  static double sum_squares(const float* base, const float* e, const float* var, std::uint32_t min_key,
                            std::int64_t c) noexcept {
    f64x8 lane = {};
    std::int64_t j = 0;
    for (; j + 8 <= c; j += 8) {
      f32x8 b, x;
      std::memcpy(&b, base + j, sizeof b);
      std::memcpy(&x, e + j, sizeof x);
      x -= b;
      if (var) {
        u32x8 v;
        std::memcpy(&v, var + j, sizeof v);
        x = (v & 0x7fffffffu) >= min_key ? x : f32x8{};
      }
      const f64x8 w = __builtin_convertvector(x, f64x8);
      lane += w * w;
    }
    double sq = 0.0;
    for (int l = 0; l < 8; ++l) sq += lane[l];
    for (; j < c; ++j) {
      const float t = var && magnitude_key(var[j]) < min_key ? 0.0f : e[j] - base[j];
      sq += static_cast<double>(t) * static_cast<double>(t);
    }
    return sq;
  }

  // out[j] = base[j] + Σ_i s_i·t_ij·[sign elected] / max(Σ_i s_i·[sign
  // elected], 1e-6), t_ij = e_i[j] − base[j] where kept (as in sum_squares),
  // else 0; the elected sign is that of Σ_i t_ij (+ where ≥ 0).
  static void combine(const float* base, const float* const* ex, const float* s, std::size_t N, const float* var,
                      std::uint32_t min_key, std::int64_t c, float* out) noexcept {
    std::int64_t j = 0;
    for (; j + 16 <= c; j += 16) {
      f32x16 b, x;
      std::memcpy(&b, base + j, sizeof b);
      i32x16 kept = i32x16{} - 1;  // every lane true
      if (var) {
        u32x16 v;
        std::memcpy(&v, var + j, sizeof v);
        kept = (v & 0x7fffffffu) >= min_key;
      }
      f32x16 sum = {};
      for (std::size_t i = 0; i < N; ++i) {
        std::memcpy(&x, ex[i] + j, sizeof x);
        x -= b;
        sum += kept ? x : f32x16{};
      }
      f32x16 o = {}, den = {};
      for (std::size_t i = 0; i < N; ++i) {
        std::memcpy(&x, ex[i] + j, sizeof x);
        x -= b;
        const f32x16 t = kept ? x : f32x16{};
        const auto keep = (sum >= 0.0f ? t : -t) > 0.0f;
        o += keep ? s[i] * t : f32x16{};
        den += keep ? f32x16{} + s[i] : f32x16{};
      }
      den = den < 1e-6f ? f32x16{} + 1e-6f : den;
      const f32x16 r = b + o / den;
      std::memcpy(out + j, &r, sizeof r);
    }
    for (; j < c; ++j) {
      const bool kept = !var || magnitude_key(var[j]) >= min_key;
      float sum = 0.0f, o = 0.0f, den = 0.0f;
      for (std::size_t i = 0; i < N; ++i) sum += kept ? ex[i][j] - base[j] : 0.0f;
      for (std::size_t i = 0; i < N; ++i) {
        const float t = kept ? ex[i][j] - base[j] : 0.0f;
        const bool keep = (sum >= 0.0f ? t : -t) > 0.0f;
        o += keep ? s[i] * t : 0.0f;
        den += keep ? s[i] : 0.0f;
      }
      out[j] = base[j] + o / std::max(den, 1e-6f);
    }
  }

  // Three streaming passes over the inputs, τ formed per chunk and never
  // held whole: the variances (only with select_topk < 1), the experts'
  // mean squares over the kept positions, the combination.
  void merge_tensor(const TensorMergeArgs& a) const {
    detail::check_merge_args(a);
    if (!std::isfinite(select_topk)) throw argument_error("sce: select_topk must be finite");
    if (detail::merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s); })) return;
    const std::size_t N = a.experts.size();
    const std::int64_t n = a.base.numel();
    const bool select = select_topk < 1.0;
    // Position j is kept where magnitude_key(var[j]) ≥ min_key: the cut's
    // key, or where its ties must be taken in index order, 1 after the cut
    // is applied (var[j] ≠ 0 exactly where kept). var is in reused scratch:
    // a fresh n-float buffer per tensor page-faults.
    std::vector<float>& var_buf = detail::tau_scratch();
    std::span<float> var;
    std::uint32_t min_key = 0;
    if (select) {
      if (var_buf.size() < static_cast<std::size_t>(n)) var_buf.resize(static_cast<std::size_t>(n));
      var = std::span<float>(var_buf.data(), static_cast<std::size_t>(n));
      std::atomic<std::int64_t> nonzero{0};  // an integer sum: the same for any thread count
      if (select_topk > 0.0)
        parallel_blocks(n, detail::merge_block, [&](std::int64_t lo, std::int64_t hi) {
          std::int64_t nz = 0;
          detail::for_input_chunks(
              a, lo, hi, [&](std::int64_t p, std::int64_t c, const float* base, const float* const* ex, float*) {
                nz += variances(base, ex, N, c, var.data() + p);
              });
          nonzero.fetch_add(nz, std::memory_order_relaxed);
        });
      const std::int64_t k = select_topk > 0.0 ? keep_count(select_topk, nonzero.load()) : 0;
      const MagnitudeCut cut = k == 0 ? MagnitudeCut::keep_none()
                                      : select_top_k(std::span<const float>(var.data(), var.size()), k);
      if (const std::optional<std::uint32_t> key = cut.min_key()) {
        min_key = *key;
      } else {
        apply_cut(var, cut);
        min_key = 1;
      }
    }
    const float* kept = select ? var.data() : nullptr;
    // Mean squares of every kept τ_i in one pass: per chunk and expert
    // (sum_squares), per block in chunk order, then the blocks in order.
    const std::int64_t nblocks = (n + detail::merge_block - 1) / detail::merge_block;
    std::vector<double> part(static_cast<std::size_t>(nblocks) * N, 0.0);
    parallel_blocks(nblocks, 1, [&](std::int64_t b0, std::int64_t b1) {
      for (std::int64_t blk = b0; blk < b1; ++blk) {
        double* q = part.data() + static_cast<std::size_t>(blk) * N;
        const std::int64_t lo = blk * detail::merge_block, hi = std::min(n, lo + detail::merge_block);
        detail::for_input_chunks(
            a, lo, hi, [&](std::int64_t p, std::int64_t c, const float* base, const float* const* ex, float*) {
              for (std::size_t i = 0; i < N; ++i)
                q[i] += sum_squares(base, ex[i], kept ? kept + p : nullptr, min_key, c);
            });
      }
    });
    std::vector<double> ms(N, 0.0);
    for (std::int64_t blk = 0; blk < nblocks; ++blk)
      for (std::size_t i = 0; i < N; ++i) ms[i] += part[static_cast<std::size_t>(blk) * N + i];
    double ssum = 0.0;
    for (std::size_t i = 0; i < N; ++i) {
      ms[i] /= static_cast<double>(std::max<std::int64_t>(n, 1));
      ssum += ms[i];
    }
    std::vector<float> s(N);
    for (std::size_t i = 0; i < N; ++i)
      s[i] = static_cast<float>(std::abs(ssum) < 1e-6 ? 1.0 / static_cast<double>(N) : ms[i] / ssum);
    detail::merge_chunks(a, detail::merge_block, [&](std::int64_t) {
      return [&](std::int64_t lo, std::int64_t c, const float* base, const float* const* ex, float* out) {
        combine(base, ex, s.data(), N, kept ? kept + lo : nullptr, min_key, c, out);
      };
    });
  }
};

}  // namespace twin
