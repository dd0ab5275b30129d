// Whole-tensor and per-row reductions shared by the interpolating strategies
// (slerp, model_stock): Gram matrices of per-element vectors. Within a chunk
// of TWIN_CHUNK_ELEMENTS the products are summed in 16 f32 lanes (vectorized;
// at most 16 terms per lane), the lanes and chunks in double, over blocks
// whose bounds do not depend on the thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

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

// The G pairs pairs[0..G) over elements [s0, s1) of gram_lane_sums, each
// with its own accumulator register.
template <std::size_t G>
void gram_lane_group(const float* const* v, std::size_t K, const std::uint32_t* pairs, std::int64_t s0, std::int64_t s1,
                     float* lanes) noexcept {
  using f32x16 = float __attribute__((vector_size(gram_lanes * sizeof(float))));
  // Loads through a reference: a 64-byte vector returned by value changes
  // the calling convention between builds with and without AVX-512 (-Wpsabi).
  auto load = [](f32x16& x, const float* p) noexcept { std::memcpy(&x, p, sizeof x); };
  const float* x[G];
  const float* y[G];
  f32x16 acc[G];
  for (std::size_t i = 0; i < G; ++i) {
    x[i] = v[pairs[i] / K];
    y[i] = v[pairs[i] % K];
    load(acc[i], lanes + pairs[i] * gram_lanes);
  }
  for (std::int64_t j = s0; j < s1; j += gram_lanes)
    for (std::size_t i = 0; i < G; ++i) {
      f32x16 xv, yv;
      load(xv, x[i] + j);
      load(yv, y[i] + j);
      acc[i] += xv * yv;
    }
  for (std::size_t i = 0; i < G; ++i) std::memcpy(lanes + pairs[i] * gram_lanes, &acc[i], sizeof acc[i]);
}

// lanes[p·16 + q] += Σ v_k[j]·v_l[j] over j < n, j ≡ q (mod 16), in order of
// j, for each pair p = k·K + l listed in `pairs` (n a multiple of 16). The
// pairs run up to six at a time (12 pointers and 6 accumulators stay in
// registers), each with its own accumulator, so the sums are bound by the
// loads rather than by the latency of one chain of additions; a last group
// of fewer pairs runs as such (slerp's 3 pairs once ran as 6, half of them
// dropped). Each pair's sum is formed in the same order as one pair alone.
inline void gram_lane_sums(const float* const* v, std::size_t K, const std::vector<std::uint32_t>& pairs,
                           std::int64_t n, float* lanes) noexcept {
  constexpr std::int64_t S = 512;  // elements per sub-block: the K vectors' slices stay in L1
  for (std::int64_t s0 = 0; s0 < n; s0 += S) {
    const std::int64_t s1 = std::min(n, s0 + S);
    for (std::size_t p0 = 0; p0 < pairs.size(); p0 += 6) {
      const std::uint32_t* p = pairs.data() + p0;
      switch (std::min<std::size_t>(6, pairs.size() - p0)) {
        case 1: gram_lane_group<1>(v, K, p, s0, s1, lanes); break;
        case 2: gram_lane_group<2>(v, K, p, s0, s1, lanes); break;
        case 3: gram_lane_group<3>(v, K, p, s0, s1, lanes); break;
        case 4: gram_lane_group<4>(v, K, p, s0, s1, lanes); break;
        case 5: gram_lane_group<5>(v, K, p, s0, s1, lanes); break;
        default: gram_lane_group<6>(v, K, p, s0, s1, lanes); break;
      }
    }
  }
}

// A fill for gram_range whose vectors are the inputs themselves, read where
// they are (no copy): the experts in order, with the base before them,
// after them, or not at all (K is then the number of those inputs).
struct InputVectors {
  enum Base { first, last, none } base;
};

// Σ_j v_k[j] v_l[j] over the elements [lo, hi) (row-major order), where
// fill(c, base, ex, v) writes the K vectors' values for c consecutive
// elements into v[k][0..c) from the base's and the experts' f32 values
// (fill(lo, c, base, ex, v) where it needs the chunk's first element index),
// or, with fill an InputVectors, the inputs themselves.
template <class Fill>
Gram gram_range(const TensorMergeArgs& a, std::size_t K, std::int64_t lo, std::int64_t hi, Fill&& fill) {
  constexpr std::int64_t C = TWIN_CHUNK_ELEMENTS;
  const std::size_t T = a.experts.size();
  float* buf = scratch_floats<1>(static_cast<std::size_t>(C) * (T + 1 + K));
  std::vector<const float*> ex(T);
  std::vector<float*> v(K);
  for (std::size_t k = 0; k < K; ++k) v[k] = buf + C * static_cast<std::int64_t>(T + 1 + k);
  std::vector<const float*> vin(v.begin(), v.end());  // the vectors read: v, or the inputs
  if constexpr (std::is_same_v<std::decay_t<Fill>, InputVectors>)
    TWIN_ASSERT(K == T + (fill.base == InputVectors::none ? 0 : 1));
  Gram out;
  out.g.assign(K * K, 0.0);
  std::vector<float> lanes(K * K * gram_lanes);
  std::vector<std::uint32_t> pairs;  // k·K + l for k <= l, in the order k, then l
  for (std::size_t k = 0; k < K; ++k)
    for (std::size_t l = k; l < K; ++l) pairs.push_back(static_cast<std::uint32_t>(k * K + l));
  for (std::int64_t p = lo; p < hi; p += C) {
    const std::int64_t c = std::min(C, hi - p);
    const float* base = chunk_f32(a.base, p, c, buf);
    for (std::size_t i = 0; i < T; ++i) ex[i] = chunk_f32(a.experts[i], p, c, buf + C * (i + 1));
    if constexpr (std::is_same_v<std::decay_t<Fill>, InputVectors>) {
      std::size_t k = 0;
      if (fill.base == InputVectors::first) vin[k++] = base;
      for (std::size_t i = 0; i < T; ++i) vin[k++] = ex[i];
      if (fill.base == InputVectors::last) vin[k++] = base;
    } else if constexpr (std::is_invocable_v<Fill&, std::int64_t, std::int64_t, const float*, const float* const*,
                                             float* const*>)
      fill(p, c, base, static_cast<const float* const*>(ex.data()), static_cast<float* const*>(v.data()));
    else fill(c, base, static_cast<const float* const*>(ex.data()), static_cast<float* const*>(v.data()));
    // The next chunk's inputs are fetched while this one is summed (the
    // products are compute-bound, the fill memory-bound).
    if (p + C < hi) {
      const std::int64_t nc = std::min(C, hi - p - C);
      auto prefetch = [&](const ConstTensorView& t) {
        if (!t.is_contiguous()) return;
        const char* b = static_cast<const char*>(t.data()) + (p + C) * static_cast<std::int64_t>(t.element_size());
        for (std::int64_t off = 0; off < nc * static_cast<std::int64_t>(t.element_size()); off += 64)
          __builtin_prefetch(b + off);
      };
      prefetch(a.base);
      for (const ConstTensorView& e : a.experts) prefetch(e);
    }
    // Σ v_k v_l for every pair in 16 independent f32 lanes (lane q takes the
    // elements ≡ q mod 16, in order), over sub-blocks that stay in L1 across
    // the pairs; then the lanes in order and the tail in double.
    std::fill(lanes.begin(), lanes.end(), 0.0f);
    const std::int64_t full = c - c % gram_lanes;
    gram_lane_sums(vin.data(), K, pairs, full, lanes.data());
    for (std::size_t k = 0; k < K; ++k)
      for (std::size_t l = k; l < K; ++l) {
        const float* ln = lanes.data() + (k * K + l) * gram_lanes;
        double s = 0.0;
        for (std::int64_t q = 0; q < gram_lanes; ++q) s += static_cast<double>(ln[q]);
        for (std::int64_t j = full; j < c; ++j) s += static_cast<double>(vin[k][j]) * static_cast<double>(vin[l][j]);
        out.g[k * K + l] += s;
      }
  }
  for (std::size_t k = 0; k < K; ++k)
    for (std::size_t l = 0; l < k; ++l) out.g[k * K + l] = out.g[l * K + k];
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
  Gram g = parallel_sum<Gram>(a.base.numel(), merge_block,
                              [&](std::int64_t lo, std::int64_t hi) { return gram_range(a, K, lo, hi, fill); });
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
  parallel_blocks(rows, rows_per_block, [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r)
      g[static_cast<std::size_t>(r)] = gram_range(a, K, r * cols, (r + 1) * cols, fill);
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
  merge_chunks(a, merge_block, [&](std::int64_t) {
    return [&](std::int64_t, std::int64_t n, const float* base, const float* const* ex, float* out) {
      if (k.relative) {
        for (std::int64_t j = 0; j < n; ++j) out[j] = 0.0f;
        for (std::size_t i = 0; i < cf.size(); ++i)
          for (std::int64_t j = 0; j < n; ++j) out[j] += cf[i] * (ex[i][j] - base[j]);
        for (std::int64_t j = 0; j < n; ++j) out[j] += base[j];
        return;
      }
      for (std::int64_t j = 0; j < n; ++j) out[j] = cb * base[j];
      for (std::size_t i = 0; i < cf.size(); ++i)
        for (std::int64_t j = 0; j < n; ++j) out[j] += cf[i] * ex[i][j];
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
