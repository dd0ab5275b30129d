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

#include <cstdint>
#include <cstring>

#include "twin/merge/lanes.hpp"
#include "twin/merge/merger.hpp"
#include "twin/merge/ties.hpp"
#include "twin/random.hpp"

namespace twin {

namespace detail {
// Positions per piece of dare_combine: each expert's uniforms for a piece
// are drawn right before the piece is combined, so the draws' arithmetic
// and the reads of the inputs overlap (benchmarks/RESULTS.md, "DARE drawn
// in short pieces": 81 ms per merge against 94 drawing whole chunks).
constexpr std::int64_t dare_piece = 64;

// One chunk of DARE: τ̃_i = (x_i − base)·(1/density) where u_i < density,
// else +0, from each expert's values x_i (E: f32, or bf16 bits read in
// place) and its uniforms u_i; then
//   Ties = false: out = base + λ Σ_i w_i τ̃_i;
//   Ties = true:  out = base + λ·disjoint_mean(τ̃, w) (ties_lanes: the sign
//                 of Σ w_i τ̃_i, + where ≥ 0; 0 where no τ̃_i has it).
// Per piece [p, p + m) of dare_piece positions, draw(p, m, u) writes
// expert i's uniforms at positions p .. p + m − 1 to u + i·dare_piece;
// then W lanes of positions at a time (Lanes<W>: the build's own width, or
// 16 in the AVX-512 copy of a build without AVX-512) with their sums in
// registers across the experts, each position's operations in the order of
// the experts: the same as disjoint_mean's and an expert-by-expert loop's.
template <bool Ties, int W, class E, class Draw>
void dare_combine(const float* base, const E* const* ex, const float* w, std::size_t T, float density, float lambda,
                  std::int64_t c, float* out, float* u, Draw&& draw) {
  using L = Lanes<W>;
  using V = typename L::f32;
  const float scale = density > 0.0f ? 1.0f / density : 0.0f;
  constexpr std::int64_t P = dare_piece;
  for (std::int64_t p = 0; p < c; p += P) {
    const std::int64_t m = std::min(P, c - p);
    draw(p, m, u);
    std::int64_t k = 0;
    for (; k + L::n <= m; k += L::n) {
      const std::int64_t j = p + k;
      V b, t, o;
      L::load(b, base + j);
      // Expert i's τ̃ into t, returned by reference (a vector wider than the
      // build's is never returned by value); each use reads it at once.
      const auto tau = [&](std::size_t i) -> const V& {
        V ui;
        L::load(t, ex[i] + j);
        L::load(ui, u + static_cast<std::int64_t>(i) * P + k);
        t = (t - b) * scale;
        keep_lanes(t, (LaneMask<V>)(ui < density));
        return t;
      };
      if constexpr (Ties) {
        ties_lanes(T, tau, w, b, lambda, true, o);
      } else {
        V sum = {};
        for (std::size_t i = 0; i < T; ++i) sum += w[i] * tau(i);
        o = b + lambda * sum;
      }
      std::memcpy(out + j, &o, sizeof o);
    }
    for (; k < m; ++k) {
      const std::int64_t j = p + k;
      const auto tau = [&](std::size_t i) {
        const float t = (load1(ex[i] + j) - base[j]) * scale;
        return u[static_cast<std::int64_t>(i) * P + k] < density ? t : 0.0f;
      };
      if constexpr (Ties) {
        out[j] = ties_one(T, tau, w, base[j], lambda, true);
      } else {
        float sum = 0.0f;
        for (std::size_t i = 0; i < T; ++i) sum += w[i] * tau(i);
        out[j] = base[j] + lambda * sum;
      }
    }
  }
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
    // Per piece: every expert's uniforms (Philox, drawn side by side), or
    // with rng = torch u = 0 where its mask keeps and 1 where it drops
    // (u < density then holds exactly where it keeps: density ≤ 1, and a
    // mask keeps nothing at density 0); the experts read where they are.
    merge_chunks_stored(a, merge_block, [&](std::int64_t) {
      return [&, u = scratch_floats<4>(T * static_cast<std::size_t>(dare_piece))](
                 std::int64_t lo, std::int64_t c, const float* base, auto ex, float* out, auto width) {
        constexpr int W = decltype(width)::value;
        dare_combine<Ties, W>(
            base, ex, w.data(), T, d, lambda, c, out, u, [&](std::int64_t p, std::int64_t m, float* ui) {
              const std::uint64_t first = static_cast<std::uint64_t>(lo + p);
              if (torch_mask.empty()) {
                Philox::uniforms_side_by_side(philox.data(), T, first, static_cast<std::size_t>(m), 0, ui, dare_piece);
                return;
              }
              for (std::size_t i = 0; i < T; ++i)
                for (std::int64_t k = 0; k < m; ++k)
                  ui[static_cast<std::int64_t>(i) * dare_piece + k] = torch_mask[i * n_all + first + k] ? 0.0f : 1.0f;
            });
      };
    });
  }
};
}  // namespace detail

struct DareLinear : detail::DareBase<false> {};
struct DareTies : detail::DareBase<true> {};

}  // namespace twin
