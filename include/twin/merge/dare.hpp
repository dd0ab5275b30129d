// DARE (Yu et al. 2024): drop each entry of τ_i with probability 1 − density
// and rescale the survivors by 1/density, then
//   DareLinear: Task Arithmetic, θ0 + λ Σ w_i τ̃_i;
//   DareTies:   Ties' sign election and disjoint mean on τ̃_i, without trim.
// (mergekit's dare_ties defaults to an unnormalized sum; ours is the disjoint
// mean, as docs/design.md §3 specifies.)
// The mask of entry j of expert i is Philox(seed, tensor name, i) at j:
// the same for any thread count, any chunking, and on the GPU. With
// rng = torch the masks are mergekit's for this tensor when seeded right
// before it: torch.manual_seed(seed), then torch.bernoulli(density) per
// expert in order, one MT19937 draw per entry (none at density ≥ 1); the
// survivors are still rescaled by 1/density (mergekit: L1-norm matching).
#pragma once

#include <bit>
#include <cstdint>

#include "twin/merge/merger.hpp"
#include "twin/merge/ties.hpp"
#include "twin/random.hpp"

namespace twin {

namespace detail {
// keep ? t : +0, as a bit mask: the select vectorizes without AVX-512's
// masked moves too (GCC leaves the conditional form scalar on SSE2).
inline float masked(float t, bool keep) noexcept {
  return std::bit_cast<float>(std::bit_cast<std::uint32_t>(t) & (0u - static_cast<std::uint32_t>(keep)));
}

// τ̃ for n entries starting at linear index lo, written to out (Add =
// false) or added to it as out[j] += w·τ̃[j] (Add = true): the uniforms
// drawn in pieces by Philox::uniforms (the CPU's widest vector kernel; the
// same values as uniform(j)), then an elementwise select; the expert's
// values x(j) read through an ExpertChunks accessor.
template <bool Add, class X>
void dare_drop(const Philox& rng, float density, float w, std::int64_t lo, std::int64_t n, const float* base, X expert,
               float* out) noexcept {
  const float scale = density > 0.0f ? 1.0f / density : 0.0f;
  // The parameters are copied into the piece's loop: read through the
  // lambda's captures they could alias out, and the loop stayed scalar.
  rng.uniform_pieces(static_cast<std::uint64_t>(lo), n, 0, [&](std::int64_t k, std::int64_t c, const float* u) {
    const float* __restrict b = base + k;
    float* __restrict o = out + k;
    const float s = scale, d = density, wt = w;
    for (std::int64_t j = 0; j < c; ++j) {
      const float t = masked((expert(k + j) - b[j]) * s, u[j] < d);
      if constexpr (Add) o[j] += wt * t;
      else o[j] = t;
    }
  });
}

template <bool Ties>
struct DareBase {
  double density = 0.5;  // probability of keeping an entry
  double scaling = 1.0;  // λ
  std::uint64_t seed = 0;
  std::vector<double> weights;  // per expert; empty: all 1
  RngKind rng = RngKind::philox;

  std::string_view name() const noexcept { return Ties ? "dare_ties" : "dare_linear"; }

  void merge_tensor(const TensorMergeArgs& a) const {
    check_merge_args(a);
    if (merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s); })) return;
    check_unit_interval(density, std::string(name()) + " density");
    const std::vector<float> w = resolve_weights(weights, a.experts.size(), name());
    const std::size_t T = w.size();
    std::vector<Philox> philox;
    for (std::size_t i = 0; i < T; ++i) philox.emplace_back(random_key(seed, a.name, i));
    const float d = static_cast<float>(density), lambda = static_cast<float>(scaling);
    // rng = torch: the masks, drawn serially expert after expert (1 = kept).
    std::vector<std::uint8_t> torch_mask;
    const auto n_all = static_cast<std::size_t>(a.base.numel());
    if (rng == RngKind::torch) {
      torch_mask.assign(T * n_all, 1);
      TorchCpuGenerator g(seed);
      if (density < 1.0)
        for (std::size_t k = 0; k < T * n_all; ++k) torch_mask[k] = g.bernoulli(d) ? 1 : 0;
    }
    if (!Ties && torch_mask.empty()) {
      // Σ w_i τ̃_i with each τ̃_i formed and added as it is drawn, the
      // experts read one at a time where they are (the same operations as
      // below, without the T masked buffers).
      merge_chunks_by_expert(a, merge_block, [&](std::int64_t) {
        return [&](std::int64_t lo, std::int64_t n, const float* base, const ExpertChunks& ex, float* out) {
          for (std::int64_t j = 0; j < n; ++j) out[j] = 0.0f;
          for (std::size_t i = 0; i < T; ++i)
            ex.with(i, [&](auto x) { dare_drop<true>(philox[i], d, w[i], lo, n, base, x, out); });
          for (std::int64_t j = 0; j < n; ++j) out[j] = base[j] + lambda * out[j];
        };
      });
      return;
    }
    // Each expert's τ̃ into its row of `drop`, the experts read where they are.
    merge_chunks_by_expert(a, merge_block, [&](std::int64_t) {
      return [&, drop = std::vector<float>(T * TWIN_CHUNK_ELEMENTS), rows = std::vector<const float*>(T),
              scratch = std::vector<float>(std::size_t{2} * TWIN_CHUNK_ELEMENTS)](
                 std::int64_t lo, std::int64_t n, const float* base, const ExpertChunks& ex, float* out) mutable {
        for (std::size_t i = 0; i < T; ++i) {
          float* t = drop.data() + i * TWIN_CHUNK_ELEMENTS;
          ex.with(i, [&](auto x) {
            if (torch_mask.empty()) {
              dare_drop<false>(philox[i], d, 1.0f, lo, n, base, x, t);
              return;
            }
            const std::uint8_t* mk = torch_mask.data() + i * n_all + static_cast<std::size_t>(lo);
            const float scale = d > 0.0f ? 1.0f / d : 0.0f;
            for (std::int64_t j = 0; j < n; ++j) t[j] = mk[j] ? (x(j) - base[j]) * scale : 0.0f;
          });
          rows[i] = t;
        }
        if constexpr (Ties) {
          disjoint_mean(n, T, rows.data(), w.data(), out, scratch.data(), scratch.data() + TWIN_CHUNK_ELEMENTS);
        } else {
          for (std::int64_t j = 0; j < n; ++j) out[j] = 0.0f;
          for (std::size_t i = 0; i < T; ++i)
            for (std::int64_t j = 0; j < n; ++j) out[j] += w[i] * rows[i][j];
        }
        for (std::int64_t j = 0; j < n; ++j) out[j] = base[j] + lambda * out[j];
      };
    });
  }
};
}  // namespace detail

struct DareLinear : detail::DareBase<false> {};
struct DareTies : detail::DareBase<true> {};

}  // namespace twin
