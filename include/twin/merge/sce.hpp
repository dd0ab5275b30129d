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

#include <cstring>

#include "twin/merge/merger.hpp"
#include "twin/merge/selection.hpp"

namespace twin {

struct Sce {
  double select_topk = 1.0;  // fraction of positions kept by variance

  std::string_view name() const noexcept { return "sce"; }

  // Three streaming passes over the inputs, τ formed per chunk and never
  // held whole: the variances (only with select_topk < 1), the experts'
  // mean squares over the kept positions, the combination.
  void merge_tensor(const TensorMergeArgs& a) const {
    detail::check_merge_args(a);
    if (!std::isfinite(select_topk)) throw argument_error("sce: select_topk must be finite");
    if (detail::merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s); })) return;
    constexpr std::int64_t C = TWIN_CHUNK_ELEMENTS;
    const std::size_t N = a.experts.size();
    const std::int64_t n = a.base.numel();
    const bool select = select_topk < 1.0;
    // After the cut, var[j] != 0 exactly where position j is kept.
    std::vector<float> var;
    if (select) {
      var.assign(static_cast<std::size_t>(n), 0.0f);
      if (select_topk > 0.0)
        parallel_blocks(n, detail::merge_block, [&](std::int64_t lo, std::int64_t hi) {
          std::vector<double> m(C), v(C);
          detail::for_input_chunks(
              a, lo, hi, [&](std::int64_t p, std::int64_t c, const float* base, const float* const* ex, float* t) {
                for (std::int64_t j = 0; j < c; ++j) m[j] = 0.0, v[j] = 0.0;
                for (std::size_t i = 0; i < N; ++i)
                  for (std::int64_t j = 0; j < c; ++j) m[j] += ex[i][j] - base[j];
                for (std::int64_t j = 0; j < c; ++j) m[j] /= static_cast<double>(N);
                for (std::size_t i = 0; i < N; ++i) {
                  for (std::int64_t j = 0; j < c; ++j) t[j] = ex[i][j] - base[j];
                  for (std::int64_t j = 0; j < c; ++j) v[j] += (t[j] - m[j]) * (t[j] - m[j]);
                }
                for (std::int64_t j = 0; j < c; ++j)
                  var[static_cast<std::size_t>(p + j)] = static_cast<float>(v[j] / static_cast<double>(N));
              });
        });
      const auto nonzero = parallel_sum<std::int64_t>(n, detail::merge_block, [&](std::int64_t lo, std::int64_t hi) {
        std::int64_t c = 0;
        for (std::int64_t j = lo; j < hi; ++j) c += var[static_cast<std::size_t>(j)] != 0.0f;
        return c;
      });
      const std::int64_t k = select_topk > 0.0 ? keep_count(select_topk, nonzero) : 0;
      apply_cut(var, select_top_k(std::span<const float>(var), k));
    }
    // Mean squares of every kept τ_i in one pass: per chunk and expert, 8
    // independent double lanes (lane q takes the entries ≡ q mod 8), then
    // the lanes in order; per block in chunk order, then the blocks in order.
    const std::int64_t nblocks = (n + detail::merge_block - 1) / detail::merge_block;
    std::vector<double> part(static_cast<std::size_t>(nblocks) * N, 0.0);
    // The kept τ of a chunk in f32 (an elementwise loop that vectorizes),
    // then its squares in double summed in an 8-lane vector.
    using f32x8 = float __attribute__((vector_size(8 * sizeof(float))));
    using f64x8 = double __attribute__((vector_size(8 * sizeof(double))));
    parallel_blocks(nblocks, 1, [&](std::int64_t b0, std::int64_t b1) {
      for (std::int64_t blk = b0; blk < b1; ++blk) {
        double* q = part.data() + static_cast<std::size_t>(blk) * N;
        const std::int64_t lo = blk * detail::merge_block, hi = std::min(n, lo + detail::merge_block);
        detail::for_input_chunks(
            a, lo, hi, [&](std::int64_t p, std::int64_t c, const float* base, const float* const* ex, float* tau) {
              for (std::size_t i = 0; i < N; ++i) {
                const float* __restrict e = ex[i];
                float* __restrict t = tau;
                if (select) {
                  const float* __restrict v = var.data() + p;
                  for (std::int64_t j = 0; j < c; ++j) {
                    const float d = e[j] - base[j];  // loaded whatever the mask, so the select vectorizes
                    t[j] = v[j] != 0.0f ? d : 0.0f;
                  }
                } else {
                  for (std::int64_t j = 0; j < c; ++j) t[j] = e[j] - base[j];
                }
                f64x8 lane = {};
                std::int64_t j = 0;
                for (; j + 8 <= c; j += 8) {
                  f32x8 x;
                  std::memcpy(&x, t + j, sizeof x);
                  const f64x8 w = __builtin_convertvector(x, f64x8);
                  lane += w * w;
                }
                double sq = 0.0;
                for (int l = 0; l < 8; ++l) sq += lane[l];
                for (; j < c; ++j) sq += static_cast<double>(t[j]) * static_cast<double>(t[j]);
                q[i] += sq;
              }
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
    // The kept τ of a chunk in N rows of C, then expert-outer loops (they vectorize).
    detail::merge_chunks(a, detail::merge_block, [&](std::int64_t) {
      return [&, tau = std::vector<float>(static_cast<std::size_t>(C) * N), sum = std::vector<float>(C),
              den = std::vector<float>(C)](std::int64_t lo, std::int64_t c, const float* base, const float* const* ex,
                                           float* out) mutable {
        for (std::size_t i = 0; i < N; ++i) {
          float* t = tau.data() + i * C;
          for (std::int64_t j = 0; j < c; ++j) t[j] = ex[i][j] - base[j];
          if (select)
            for (std::int64_t j = 0; j < c; ++j)
              if (var[static_cast<std::size_t>(lo + j)] == 0.0f) t[j] = 0.0f;
        }
        for (std::int64_t j = 0; j < c; ++j) sum[j] = 0.0f, den[j] = 0.0f, out[j] = 0.0f;
        for (std::size_t i = 0; i < N; ++i) {
          const float* t = tau.data() + i * C;
          for (std::int64_t j = 0; j < c; ++j) sum[j] += t[j];
        }
        float* __restrict o = out;
        float* __restrict dn = den.data();
        const float* __restrict sm = sum.data();
        for (std::size_t i = 0; i < N; ++i) {
          const float* __restrict t = tau.data() + i * C;
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
