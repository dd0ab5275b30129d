// Whole-tensor and per-row reductions shared by the interpolating strategies
// (slerp, model_stock): Gram matrices of per-element vectors. Within each run
// of gram_run elements the products are summed in 16 f32 lanes (vectorized;
// at most 16 terms per lane), added into 16 double lanes per pair; the
// double lanes are summed in order at the end of a block, over blocks whose
// bounds do not depend on the thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "twin/backend/cpu/avx512_copies.hpp"
#include "twin/merge/merger.hpp"

namespace twin::detail {

// A K×K Gram matrix (row-major) that parallel_sum can add.
struct Gram {
  std::vector<double> g;
  Gram& operator+=(const Gram& o) {
    if (g.empty()) g.assign(o.g.size(), 0.0);
    for (std::size_t i = 0; i < o.g.size(); ++i) g[i] += o.g[i];
    return *this;
  }
};

constexpr std::int64_t gram_lanes = 16;
// Elements whose products a pair's f32 lanes sum before they go to double.
constexpr std::int64_t gram_run = 256;

// Vectors per side of a tile of gram_lane_sums: a 4×4 tile keeps 16
// accumulators and 8 vectors in zmm registers; without AVX-512 a 16-float
// vector takes 2 (AVX2) or 4 registers, so the tiles are 2×2.
#if defined(__AVX512F__)
constexpr std::size_t gram_tile = 4;
#else
constexpr std::size_t gram_tile = 2;
#endif

// The products of vectors k0 + a (a < A) with l0 + b (b < B) over elements
// [s0, s1) of gram_lane_sums (at most gram_run), summed in f32 lanes from
// zero and then added to the pairs' double lanes; on the diagonal (Diag:
// k0 = l0, A = B) only b ≥ a. Each pair has its own accumulator and each of
// the A + B vectors is loaded once per 16 elements (6 pairs at a time
// loaded 12).
template <std::size_t A, std::size_t B, bool Diag, bool Sub>
void gram_tile_sums(const float* const* v, const float* sub, std::size_t K, std::size_t k0, std::size_t l0,
                    std::int64_t s0, std::int64_t s1, double* lanes) noexcept {
  using f32x16 = float __attribute__((vector_size(gram_lanes * sizeof(float))));
  using f64x16 = double __attribute__((vector_size(gram_lanes * sizeof(double))));
  // Loads and stores through a local copy, never a vector returned by
  // value: a 64-byte vector's calling convention differs between builds
  // with and without AVX-512 (-Wpsabi), and an accumulator whose address
  // is taken stays in memory instead of a register.
  auto load = [](f32x16& to, const float* p) noexcept {
    f32x16 t;
    std::memcpy(&t, p, sizeof t);
    to = t;
  };
  auto lane = [&](std::size_t a, std::size_t b) { return lanes + ((k0 + a) * K + l0 + b) * gram_lanes; };
  f32x16 acc[A][B] = {};
  for (std::int64_t j = s0; j < s1; j += gram_lanes) {
    f32x16 x[A], y[B], s = {};
    if constexpr (Sub) load(s, sub + j);
#pragma GCC unroll 4
    for (std::size_t a = 0; a < A; ++a) {
      load(x[a], v[k0 + a] + j);
      if constexpr (Sub) x[a] -= s;
    }
#pragma GCC unroll 4
    for (std::size_t b = 0; b < B; ++b) {
      if constexpr (Diag) {
        y[b] = x[b < A ? b : 0];
      } else {
        load(y[b], v[l0 + b] + j);
        if constexpr (Sub) y[b] -= s;
      }
    }
#pragma GCC unroll 4
    for (std::size_t a = 0; a < A; ++a)
#pragma GCC unroll 4
      for (std::size_t b = Diag ? a : 0; b < B; ++b) acc[a][b] += x[a] * y[b];
  }
#pragma GCC unroll 4
  for (std::size_t a = 0; a < A; ++a)
#pragma GCC unroll 4
    for (std::size_t b = Diag ? a : 0; b < B; ++b) {
      f64x16 d;
      std::memcpy(&d, lane(a, b), sizeof d);
      d += __builtin_convertvector(acc[a][b], f64x16);
      std::memcpy(lane(a, b), &d, sizeof d);
    }
}

// gram_lane_sums' tiles, with or without `sub`.
template <std::size_t R, bool Sub>
void gram_lane_tiles(const float* const* v, const float* sub, std::size_t K, std::int64_t n, double* lanes,
                     backend::cpu::LinesAhead* ahead, std::int64_t budget) noexcept {
  static_assert(R >= 1 && R <= 4);
  // `ahead` is asked for a share of the budget at a time, after each tile:
  // a burst of prefetches fills the core's miss buffers and stalls the
  // products.
  const std::size_t groups = (K + R - 1) / R,
                    tiles = groups * (groups + 1) / 2 * static_cast<std::size_t>((n + gram_run - 1) / gram_run);
  if (!ahead) budget = 0;
  const std::int64_t share = tiles ? (budget + static_cast<std::int64_t>(tiles) - 1) / static_cast<std::int64_t>(tiles)
                                   : 0;
  auto ask = [&](std::int64_t count) {
    count = std::min(count, budget);
    if (count > 0) ahead->ask(count), budget -= count;
  };
  // One run at a time: the K vectors' slices stay in L1 across the pairs.
  for (std::int64_t s0 = 0; s0 < n; s0 += gram_run) {
    const std::int64_t s1 = std::min(n, s0 + gram_run);
    for (std::size_t k0 = 0; k0 < K; k0 += R) {
      // Only the last group of vectors can be short, so an off-diagonal
      // tile has R rows and 1 .. R columns.
      switch (std::min(R, K - k0)) {
        case 1: gram_tile_sums<1, 1, true, Sub>(v, sub, K, k0, k0, s0, s1, lanes); break;
        case 2: gram_tile_sums<2, 2, true, Sub>(v, sub, K, k0, k0, s0, s1, lanes); break;
        case 3: gram_tile_sums<3, 3, true, Sub>(v, sub, K, k0, k0, s0, s1, lanes); break;
        default: gram_tile_sums<R, R, true, Sub>(v, sub, K, k0, k0, s0, s1, lanes); break;
      }
      ask(share);
      for (std::size_t l0 = k0 + R; l0 < K; l0 += R) {
        switch (std::min(R, K - l0)) {
          case 1: gram_tile_sums<R, 1, false, Sub>(v, sub, K, k0, l0, s0, s1, lanes); break;
          case 2: gram_tile_sums<R, 2, false, Sub>(v, sub, K, k0, l0, s0, s1, lanes); break;
          case 3: gram_tile_sums<R, 3, false, Sub>(v, sub, K, k0, l0, s0, s1, lanes); break;
          default: gram_tile_sums<R, R, false, Sub>(v, sub, K, k0, l0, s0, s1, lanes); break;
        }
        ask(share);
      }
    }
  }
  ask(budget);
}

// lanes[(k·K + l)·16 + q] += Σ v_k[j]·v_l[j] over j < n, j ≡ q (mod 16), for
// every pair k ≤ l of the K vectors (n a multiple of 16): each run of
// gram_run elements summed in f32 in order of j, the runs added in double in
// order; with `sub`, the vectors are v_k − sub formed in registers. `budget`
// of ahead's next lines are asked for along the way (where ahead is given).
// The pairs run in tiles of gram_tile × gram_tile vectors (a triangle on
// the diagonal), so the sums are bound by the multiply-adds rather than by
// the loads; each pair's sum is formed in the same order as one pair alone,
// whatever the tile size R (the tests run R = 2 and 4 in any build).
template <std::size_t R = gram_tile>
void gram_lane_sums(const float* const* v, std::size_t K, std::int64_t n, double* lanes, const float* sub = nullptr,
                    backend::cpu::LinesAhead* ahead = nullptr, std::int64_t budget = 0) noexcept {
  if (sub) gram_lane_tiles<R, true>(v, sub, K, n, lanes, ahead, budget);
  else gram_lane_tiles<R, false>(v, nullptr, K, n, lanes, ahead, budget);
}

// A fill for gram_range whose vectors are the inputs themselves, read where
// they are (no copy): the experts in order, with the base before them,
// after them, or not at all (K is then the number of those inputs); or,
// with `offsets`, the experts' task vectors expert_i − base, formed in
// registers (the values a fill writing ex[i][j] − b[j] would give).
struct InputVectors {
  enum Base { first, last, none, offsets } base;
};

// InputVectors that also calls then(lo, c, base, ex) on each chunk, with the
// base's and the experts' f32 values as a fill gets them (model_stock forms
// the experts' mean there, in the same pass).
template <class Then>
struct InputVectorsThen : InputVectors {
  Then then;
};
template <class Then>
InputVectorsThen(InputVectors, Then) -> InputVectorsThen<Then>;

// The inputs' cache lines are asked for one span ahead of the chunk being
// summed, input by input (plan_inputs_ahead), a chunk's share of them
// spread over its Gram tiles: the memory serves long runs of one stream
// faster than T + 1 streams a chunk at a time (Gram of 9 inputs 39 → 30 ms;
// benchmarks/RESULTS.md, "Gram sums"). The chunk drivers of merger.hpp do
// not do this: a share asked for at once at each chunk made DARE and sce
// slower.
constexpr std::int64_t span_prefetch = std::max<std::int64_t>(1024 / TWIN_CHUNK_ELEMENTS, 1) * TWIN_CHUNK_ELEMENTS;

// Σ_j v_k[j] v_l[j] over the elements [lo, hi) (row-major order), where
// fill(c, base, ex, v) writes the K vectors' values for c consecutive
// elements into v[k][0..c) from the base's and the experts' f32 values
// (fill(lo, c, base, ex, v) where it needs the chunk's first element index),
// or, with fill an InputVectors, the inputs themselves (or the experts'
// task vectors) read in place. The inputs are prefetched up to fetch_end
// (where the caller goes on reading; hi when smaller).
template <class Fill>
Gram gram_range(const TensorMergeArgs& a, std::size_t K, std::int64_t lo, std::int64_t hi, Fill&& fill,
                std::int64_t fetch_end = 0) {
  constexpr std::int64_t C = TWIN_CHUNK_ELEMENTS;
  const std::size_t T = a.experts.size();
  constexpr bool in_place = std::is_base_of_v<InputVectors, std::decay_t<Fill>>;
  const std::size_t filled = in_place ? 0 : K;  // vectors written by a fill, after the inputs' buffers
  float* buf = scratch_floats<1>(static_cast<std::size_t>(C) * (T + 1 + filled));
  std::vector<const float*> ex(T);
  std::vector<float*> v(K, nullptr);
  for (std::size_t k = 0; k < filled; ++k) v[k] = buf + C * static_cast<std::int64_t>(T + 1 + k);
  std::vector<const float*> vin(v.begin(), v.end());  // the vectors read: v, or the inputs
  if constexpr (in_place)
    TWIN_ASSERT(K == T + (fill.base == InputVectors::first || fill.base == InputVectors::last ? 1 : 0));
  Gram out;
  out.g.assign(K * K, 0.0);
  std::vector<double> lanes(K * K * gram_lanes, 0.0), tail(K * K, 0.0);
  backend::cpu::LinesAhead ahead;
  const std::int64_t end = std::max(fetch_end, hi), spans = span_prefetch / C;
  std::int64_t share = 0;
  for (std::int64_t p = lo; p < hi; p += C) {
    const std::int64_t c = std::min(C, hi - p);
    if ((p - lo) / C % spans == 0) {  // the span after this one
      const std::int64_t s0 = std::min(p + span_prefetch, end);
      plan_inputs_ahead(ahead, a, s0, std::min(s0 + span_prefetch, end) - s0);
      share = ahead.per(spans);
    }
    const float* base = chunk_f32(a.base, p, c, buf);
    for (std::size_t i = 0; i < T; ++i) ex[i] = chunk_f32(a.experts[i], p, c, buf + C * (i + 1));
    const float* sub = nullptr;  // with InputVectors::offsets, the vectors are vin[k] − sub
    if constexpr (in_place) {
      if (fill.base == InputVectors::offsets) sub = base;
      std::size_t k = 0;
      if (fill.base == InputVectors::first) vin[k++] = base;
      for (std::size_t i = 0; i < T; ++i) vin[k++] = ex[i];
      if (fill.base == InputVectors::last) vin[k++] = base;
      if constexpr (!std::is_same_v<std::decay_t<Fill>, InputVectors>)
        fill.then(p, c, base, static_cast<const float* const*>(ex.data()));
    } else if constexpr (std::is_invocable_v<Fill&, std::int64_t, std::int64_t, const float*, const float* const*,
                                             float* const*>)
      fill(p, c, base, static_cast<const float* const*>(ex.data()), static_cast<float* const*>(v.data()));
    else fill(c, base, static_cast<const float* const*>(ex.data()), static_cast<float* const*>(v.data()));
    // Σ v_k v_l for every pair in 16 independent lanes (lane q takes the
    // elements ≡ q mod 16, in order), the elements past the last whole 16
    // (only a range's last chunk has them) in double apart; the span after
    // this one is asked for meanwhile, a share per chunk.
    const std::int64_t full = c - c % gram_lanes;
    gram_lane_sums(vin.data(), K, full, lanes.data(), sub, &ahead, share);
    auto at = [&](std::size_t k, std::int64_t j) { return static_cast<double>(sub ? vin[k][j] - sub[j] : vin[k][j]); };
    for (std::int64_t j = full; j < c; ++j)
      for (std::size_t k = 0; k < K; ++k)
        for (std::size_t l = k; l < K; ++l) tail[k * K + l] += at(k, j) * at(l, j);
  }
  for (std::size_t k = 0; k < K; ++k)
    for (std::size_t l = k; l < K; ++l) {
      const double* ln = lanes.data() + (k * K + l) * gram_lanes;
      double s = 0.0;
      for (std::int64_t q = 0; q < gram_lanes; ++q) s += ln[q];
      out.g[k * K + l] = out.g[l * K + k] = s + tail[k * K + l];
    }
  return out;
}

// Calls f(row, j0, j1) for the runs [j0, j1) of the chunk [lo, lo + n) that
// lie in one row of `cols` elements (row = (lo + j)/cols), in order.
template <class F>
void for_row_segments(std::int64_t lo, std::int64_t n, std::int64_t cols, F&& f) {
  std::int64_t j = 0;
  while (j < n) {
    const std::int64_t row = cols > 0 ? (lo + j) / cols : 0;
    const std::int64_t end = cols > 0 ? std::min(n, (row + 1) * cols - lo) : n;
    f(row, j, end);
    j = end;
  }
}

// The Gram matrix over the whole tensor (zeros for a tensor without elements).
template <class Fill>
Gram gram_tensor(const TensorMergeArgs& a, std::size_t K, Fill&& fill) {
  Gram g = backend::cpu::parallel_kernel_sum<Gram>(
      a.base.numel(), merge_block, [&](std::int64_t lo, std::int64_t hi) { return gram_range(a, K, lo, hi, fill); });
  if (g.g.empty()) g.g.assign(K * K, 0.0);
  return g;
}

// One Gram matrix per row (the vectors along the last axis; a rank-0 or
// rank-1 tensor is one row).
template <class Fill>
std::vector<Gram> gram_rows(const TensorMergeArgs& a, std::size_t K, Fill&& fill) {
  const std::int64_t n = a.base.numel();
  const std::int64_t cols = a.base.rank() >= 2 ? a.base.dim(a.base.rank() - 1) : n;
  const std::int64_t rows = cols > 0 ? n / cols : 0;
  std::vector<Gram> g(static_cast<std::size_t>(rows));
  const std::int64_t rows_per_block = std::max<std::int64_t>(1, merge_block / std::max<std::int64_t>(cols, 1));
  backend::cpu::parallel_kernel_blocks(rows, rows_per_block, [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r)
      g[static_cast<std::size_t>(r)] = gram_range(a, K, r * cols, (r + 1) * cols, fill, r1 * cols);
  });
  return g;
}

}  // namespace twin::detail

namespace twin::detail {

// A result in the span of the inputs (the methods whose algebra runs on
// Gram matrices): out = c_base·base + Σ_i c[i]·expert_i, or with `relative`
// out = base + Σ_i c[i]·(expert_i − base), per element in f32.
struct Combination {
  bool relative = false;
  double c_base = 0.0;
  std::vector<double> c;
};

inline void combine_tensor(const TensorMergeArgs& a, const Combination& k) {
  const auto cb = static_cast<float>(k.c_base);
  const std::vector<float> cf(k.c.begin(), k.c.end());
  merge_chunks_by_expert(a, merge_block, [&](std::int64_t) {
    return [&](std::int64_t, std::int64_t n, const float* base, const ExpertChunks& ex, float* out) {
      if (k.relative) {
        for (std::int64_t j = 0; j < n; ++j) out[j] = 0.0f;
        for (std::size_t i = 0; i < cf.size(); ++i)
          ex.with(i, [&, ci = cf[i]](auto x) {
            for (std::int64_t j = 0; j < n; ++j) out[j] += ci * (x(j) - base[j]);
          });
        for (std::int64_t j = 0; j < n; ++j) out[j] += base[j];
        return;
      }
      for (std::int64_t j = 0; j < n; ++j) out[j] = cb * base[j];
      for (std::size_t i = 0; i < cf.size(); ++i)
        ex.with(i, [&, ci = cf[i]](auto x) {
          for (std::int64_t j = 0; j < n; ++j) out[j] += ci * x(j);
        });
    };
  });
}

// The inner product of two combinations of K vectors whose Gram matrix is g: ⟨Σ a_k v_k, Σ b_l v_l⟩ = aᵀ G b.
inline double gram_dot(const Gram& g, const std::vector<double>& x, const std::vector<double>& y) {
  const std::size_t K = x.size();
  double s = 0.0;
  for (std::size_t k = 0; k < K; ++k)
    for (std::size_t l = 0; l < K; ++l) s += x[k] * g.g[k * K + l] * y[l];
  return s;
}

}  // namespace twin::detail
