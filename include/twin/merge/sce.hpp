// SCE (Select, Calculate, Erase; Wan et al. 2024) as mergekit's `sce`
// computes it per tensor (docs/mergekit_methods.md §10), with no per-model
// weights:
//   T_i = expert_i − base;
//   select (select_topk < 1): the population variance over the experts at
//     each position; the k = int(nnz(var)·select_topk) positions of largest
//     variance (the product in float32, as torch promotes an int64 count
//     times a float: sce_keep_count) are kept (ties by index) and every T_i is zeroed elsewhere
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
#include <optional>
#include <utility>
#include <vector>

#include "twin/merge/lanes.hpp"
#include "twin/merge/merger.hpp"
#include "twin/merge/selection.hpp"
#include "twin/merge/streamed_cuts.hpp"

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
  using i64x8 = detail::i64x8;

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

  // variances() for NT experts known at compile time (the same operations
  // in the same order, each τ converted to double once and kept in
  // registers), adding τ_i² in double to sums[8·i + q] (lane q: the
  // positions ≡ q mod 8) where the variance's key is above `whi`; returns
  // how many variances are nonzero. sums is plain doubles: an f64x8 array
  // on the heap is aligned to 16 bytes in a build without AVX, wherever it
  // is allocated, and the AVX-512 copy would load it as 64-byte aligned.
  template <std::size_t NT>
  static std::int64_t variances_sums(const float* base, const float* const* ex, std::int64_t c, float* var,
                                     std::uint32_t whi, double* sums) noexcept {
    const double dn = NT;
    std::int64_t nonzero = 0, j = 0;
    f64x8 acc[NT];  // in registers: sums could alias var for the compiler
    for (std::size_t i = 0; i < NT; ++i) std::memcpy(&acc[i], sums + 8 * i, sizeof acc[i]);
    for (; j + 8 <= c; j += 8) {
      f32x8 b, x;
      std::memcpy(&b, base + j, sizeof b);
      f64x8 t[NT], m = {};
      for (std::size_t i = 0; i < NT; ++i) {
        std::memcpy(&x, ex[i] + j, sizeof x);
        t[i] = __builtin_convertvector(x - b, f64x8);
        m += t[i];
      }
      m /= dn;
      f64x8 v = {};
      for (std::size_t i = 0; i < NT; ++i) {
        const f64x8 d = t[i] - m;
        v += d * d;
      }
      const f32x8 out = __builtin_convertvector(v / dn, f32x8);
      std::memcpy(var + j, &out, sizeof out);
      u32x8 key;
      std::memcpy(&key, &out, sizeof key);
      const auto up = __builtin_convertvector((key & 0x7fffffffu) > whi, i64x8);
      for (std::size_t i = 0; i < NT; ++i) {
        f64x8 sq = t[i] * t[i];
        detail::keep_lanes(sq, up);
        acc[i] += sq;
      }
      for (int l = 0; l < 8; ++l) nonzero += out[l] != 0.0f;
    }
    for (std::size_t i = 0; i < NT; ++i) std::memcpy(sums + 8 * i, &acc[i], sizeof acc[i]);
    if (j < c) {
      const float* tail_ex[NT];
      for (std::size_t i = 0; i < NT; ++i) tail_ex[i] = ex[i] + j;
      nonzero += variances(base + j, tail_ex, NT, c - j, var + j);
      if (whi != 0xffffffffu)
        for (std::size_t i = 0; i < NT; ++i) sums[8 * i] += sum_squares(base + j, tail_ex[i], var + j, whi + 1, c - j);
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
        detail::keep_lanes(x, kept);
        sum += x;
      }
      // (sum ≥ 0 ? t : −t) as t with its sign bit flipped where not sum ≥ 0
      // (a NaN sum too); the selects as bitwise ands (detail::keep_lanes).
      const u32x16 flip = ~u32x16(sum >= 0.0f) & 0x80000000u;
      f32x16 o = {}, den = {};
      for (std::size_t i = 0; i < N; ++i) {
        std::memcpy(&x, ex[i] + j, sizeof x);
        x -= b;
        detail::keep_lanes(x, kept);
        u32x16 signed_t;
        std::memcpy(&signed_t, &x, sizeof signed_t);
        signed_t ^= flip;
        f32x16 st;
        std::memcpy(&st, &signed_t, sizeof st);
        const i32x16 keep = st > 0.0f;
        f32x16 term = s[i] * x, weight = f32x16{} + s[i];
        detail::keep_lanes(term, keep);
        detail::keep_lanes(weight, keep);
        o += term;
        den += weight;
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

  // The kept τ_i² sums of one merge block, from the fused first pass: over
  // the positions whose variance key lies above the window (all kept,
  // whatever the cut), and the positions inside it, in index order, with
  // their keys and τ (N per position) for when the cut is known.
  struct WindowBlock {
    std::vector<double> above;  // N sums
    std::vector<std::uint32_t> key;
    std::vector<float> tau;
  };

  // Where the variances' cut falls inside a window the sample predicts
  // (the usual case), the experts' kept mean squares come from the first
  // pass: returns them (not yet divided by n) with the cut, or nullopt
  // where the window misses (the caller then selects over the variances and
  // sums in a pass of its own, as before). var[0..n) is written either way.
  std::optional<std::pair<std::vector<double>, MagnitudeCut>> fused_first_pass(const TensorMergeArgs& a,
                                                                               std::span<float> var,
                                                                               std::int64_t& nonzero) const {
    const std::size_t N = a.experts.size();
    const std::int64_t n = a.base.numel();
    nonzero = -1;  // until the pass has written var
    // The sample: runs of the variances (as select_top_ks samples), and the
    // share of them that is nonzero, which sets the rank to bracket.
    const std::int64_t stride = detail::sample_stride(n), run = detail::sample_run;
    std::vector<std::uint32_t> sample;
    std::int64_t sample_nz = 0;
    float* vb = detail::scratch_floats<2>(static_cast<std::size_t>(run));
    for (std::int64_t lo = 0; lo < n; lo += stride)
      detail::for_input_chunks(a, lo, std::min(n, lo + run),
                               [&](std::int64_t, std::int64_t c, const float* base, const float* const* ex, float*) {
                                 sample_nz += variances(base, ex, N, c, vb);
                                 for (std::int64_t j = 0; j < c; ++j) sample.push_back(magnitude_key(vb[j]));
                               });
    const auto est = static_cast<std::int64_t>(select_topk * static_cast<double>(sample_nz) /
                                               static_cast<double>(sample.size()) * static_cast<double>(n));
    if (est <= 0) return std::nullopt;
    const std::int64_t ks[1] = {est};
    // Plain variables, not a structured binding: the lambdas below use them,
    // and clang before 16 does not capture bindings.
    const std::pair<std::uint32_t, std::uint32_t> window = detail::sample_windows(sample, n, ks)[0];
    const std::uint32_t wlo = window.first, whi = window.second;
    sample = {};
    // The pass: variances, their keys against the window, the τ² sums.
    const std::int64_t nblocks = (n + detail::merge_block - 1) / detail::merge_block;
    std::vector<WindowBlock> blocks(static_cast<std::size_t>(nblocks));
    std::vector<std::int64_t> nz(static_cast<std::size_t>(nblocks), 0), above(static_cast<std::size_t>(nblocks), 0);
    parallel_blocks(nblocks, 1, [&](std::int64_t b0, std::int64_t b1) {
      for (std::int64_t blk = b0; blk < b1; ++blk) {
        WindowBlock& w = blocks[static_cast<std::size_t>(blk)];
        std::vector<double> lanes(8 * N, 0.0);  // the sums above the window, 8 lanes per expert
        const std::int64_t lo = blk * detail::merge_block, hi = std::min(n, lo + detail::merge_block);
        detail::for_input_chunks(
            a, lo, hi, [&](std::int64_t p, std::int64_t c, const float* base, const float* const* ex, float*) {
              float* v = var.data() + p;
              std::int64_t& nzb = nz[static_cast<std::size_t>(blk)];
              const bool fixed = detail::with_expert_count(
                  N, [&]<std::size_t NT>() { nzb += variances_sums<NT>(base, ex, c, v, whi, lanes.data()); });
              if (!fixed) {
                nzb += variances(base, ex, N, c, v);
                if (whi != 0xffffffffu)
                  for (std::size_t i = 0; i < N; ++i) lanes[8 * i] += sum_squares(base, ex[i], v, whi + 1, c);
              }
              // The count above vectorizes; the positions inside (a few
              // per cent) are taken by a test that rarely branches.
              const std::uint32_t lo_key = wlo, width = whi - wlo;
              std::int64_t up = 0;
              for (std::int64_t j = 0; j < c; ++j) up += magnitude_key(v[j]) > whi;
              for (std::int64_t j = 0; j < c; ++j) {
                const std::uint32_t key = magnitude_key(v[j]);
                if (key - lo_key > width) continue;  // outside [wlo, whi]
                w.key.push_back(key);
                for (std::size_t i = 0; i < N; ++i) w.tau.push_back(ex[i][j] - base[j]);
              }
              above[static_cast<std::size_t>(blk)] += up;
            });
        w.above.assign(N, 0.0);
        for (std::size_t i = 0; i < N; ++i)
          for (int l = 0; l < 8; ++l) w.above[i] += lanes[8 * i + l];
      }
    });
    nonzero = 0;
    std::int64_t up = 0;
    std::vector<std::uint32_t> keys;
    for (std::size_t b = 0; b < blocks.size(); ++b) {
      nonzero += nz[b], up += above[b];
      keys.insert(keys.end(), blocks[b].key.begin(), blocks[b].key.end());
    }
    const std::int64_t k = sce_keep_count(select_topk, nonzero);
    if (!(k > 0 && up < k && k <= up + static_cast<std::int64_t>(keys.size()))) return std::nullopt;
    const MagnitudeCut cut = detail::small_cut(keys, k - up);
    // The sums: per block, the sums above the window, then the kept
    // positions inside it in index order (ties at the cut up to its quota).
    std::vector<double> ms(N, 0.0);
    std::int64_t ties_left = cut.quota;
    for (const WindowBlock& w : blocks) {
      for (std::size_t x = 0; x < w.key.size(); ++x) {
        const bool keep = w.key[x] > cut.threshold || (w.key[x] == cut.threshold && ties_left-- > 0);
        if (!keep) continue;
        for (std::size_t i = 0; i < N; ++i) {
          const auto t = static_cast<double>(w.tau[x * N + i]);
          ms[i] += t * t;
        }
      }
      for (std::size_t i = 0; i < N; ++i) ms[i] += w.above[i];
    }
    return std::pair{ms, cut};
  }

  // Streaming passes over the inputs, τ formed per chunk and never held
  // whole: the variances (only with select_topk < 1), the experts' mean
  // squares over the kept positions, the combination. Past the selection's
  // small size the first pass also finds the mean squares (fused_first_pass),
  // so two passes run unless its sampled window misses.
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
    std::optional<std::vector<double>> fused_sums;  // the kept τ_i² sums, where the first pass found them
    if (select) {
      if (var_buf.size() < static_cast<std::size_t>(n)) var_buf.resize(static_cast<std::size_t>(n));
      var = std::span<float>(var_buf.data(), static_cast<std::size_t>(n));
      std::int64_t nonzero = 0;  // an integer sum: the same for any thread count
      MagnitudeCut cut = MagnitudeCut::keep_none();
      if (select_topk > 0.0 && n > detail::select_small) {
        auto fused = fused_first_pass(a, var, nonzero);
        if (fused) fused_sums = std::move(fused->first), cut = fused->second;
      } else {
        nonzero = select_topk > 0.0 ? -1 : 0;
      }
      if (!fused_sums) {
        if (nonzero < 0) {
          std::atomic<std::int64_t> nz_all{0};
          parallel_blocks(n, detail::merge_block, [&](std::int64_t lo, std::int64_t hi) {
            std::int64_t nz = 0;
            detail::for_input_chunks(
                a, lo, hi, [&](std::int64_t p, std::int64_t c, const float* base, const float* const* ex, float*) {
                  nz += variances(base, ex, N, c, var.data() + p);
                });
            nz_all.fetch_add(nz, std::memory_order_relaxed);
          });
          nonzero = nz_all.load();
        }
        const std::int64_t k = select_topk > 0.0 ? sce_keep_count(select_topk, nonzero) : 0;
        cut = k == 0 ? MagnitudeCut::keep_none() : select_top_k(std::span<const float>(var.data(), var.size()), k);
      }
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
    const std::int64_t nblocks = fused_sums ? 0 : (n + detail::merge_block - 1) / detail::merge_block;
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
    std::vector<double> ms = fused_sums ? *fused_sums : std::vector<double>(N, 0.0);
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
