// Magnitude cuts of task vectors τ_i = expert_i − base found and applied
// without holding τ (Ties' trim, breadcrumbs' band, mergekit's magnitude
// sparsifier): τ is formed chunk by chunk from the inputs in each pass.
//   window_cuts / task_vector_cuts: exact top-k cuts, any number per expert,
//     over one tensor or a sequence of them (global scope), from a sample
//     and one counting pass over the inputs (docs/design.md §3);
//   count_ties: where a cut keeps only some of the ties at its threshold,
//     how many come before each merge block (one more pass, only then);
//   trimmed_rows: one chunk of each expert's kept τ entries, by a band
//     (kept by one cut, not by another) or a single cut;
//   combine_trimmed: the chunk driver of a combination over them (TIES'
//     disjoint mean, the GTA sums), in registers for up to 8 experts where
//     no cut splits its ties inside the block (docs/design.md §7).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "twin/merge/lanes.hpp"
#include "twin/merge/merger.hpp"
#include "twin/merge/selection.hpp"

namespace twin::detail {

// One cut per expert for one tensor, and, for a cut that keeps only some
// of the ties at its threshold, the number of ties before each merge block
// (in index order).
struct TensorCuts {
  std::vector<MagnitudeCut> cut;
  std::vector<std::vector<std::int64_t>> ties_before;

  std::vector<BlockCut> at_block(std::size_t b) const {
    std::vector<BlockCut> out;
    for (std::size_t i = 0; i < cut.size(); ++i) out.push_back(BlockCut::at(cut[i], ties_before[i], b));
    return out;
  }
};

// Fills ties_before for every cut of `all` that needs the tie order and
// has no counts yet (task_vector_cuts counts most from its window keys):
// one pass over the inputs (for all of them at once) counting, per merge
// block, the entries of τ at each such cut's threshold. No pass where none
// needs one.
inline void count_ties(const TensorMergeArgs& a, std::span<TensorCuts* const> all) {
  std::vector<std::pair<TensorCuts*, std::size_t>> need;
  for (TensorCuts* tc : all) {
    tc->ties_before.resize(tc->cut.size());
    for (std::size_t i = 0; i < tc->cut.size(); ++i)
      if (tc->cut[i].needs_tie_order() && tc->ties_before[i].empty()) need.emplace_back(tc, i);
  }
  if (need.empty()) return;
  const std::int64_t n = a.base.numel(), blocks = (n + merge_block - 1) / merge_block;
  for (auto [tc, i] : need) tc->ties_before[i].assign(static_cast<std::size_t>(blocks) + 1, 0);
  parallel_blocks(n, merge_block, [&](std::int64_t b0, std::int64_t b1) {
    const auto b = static_cast<std::size_t>(b0 / merge_block);
    for_input_chunks(a, b0, b1, [&](std::int64_t, std::int64_t c, const float* base, const float* const* ex, float*) {
      for (auto [tc, i] : need) {
        const std::uint32_t t = tc->cut[i].threshold;
        const float* e = ex[i];
        std::int64_t k = 0;
        for (std::int64_t j = 0; j < c; ++j) k += magnitude_key(e[j] - base[j]) == t;
        tc->ties_before[i][b + 1] += k;
      }
    });
  });
  for (auto [tc, i] : need)
    for (std::size_t b = 1; b < tc->ties_before[i].size(); ++b) tc->ties_before[i][b] += tc->ties_before[i][b - 1];
}

inline void count_ties(const TensorMergeArgs& a, TensorCuts& tc) {
  TensorCuts* one[1] = {&tc};
  count_ties(a, one);
}

// rows[i][0..c) = τ_i = ex[i] − base (as task_vectors_f32 forms it) where
// expert i's `keep` cut selects it and its `drop` cut (when given) does not,
// else 0, over one chunk of the current block (E: f32, or bf16 bits).
template <class E>
void trimmed_rows(std::int64_t c, const float* TWIN_RESTRICT base, const E* const* ex, std::vector<BlockCut>& keep,
                  std::vector<BlockCut>* drop, float* const* rows) noexcept {
  for (std::size_t i = 0; i < keep.size(); ++i) {
    const E* TWIN_RESTRICT e = ex[i];
    float* TWIN_RESTRICT r = rows[i];
    BlockCut* d = drop ? &(*drop)[i] : nullptr;
    if (d && d->uniform && d->threshold == 0xffffffffu && !d->keep_ties) d = nullptr;  // drops nothing
    if (keep[i].uniform && (!d || d->uniform)) {
      const BlockCut k0 = keep[i];
      if (!d) {
        for (std::int64_t j = 0; j < c; ++j) {
          const float x = load1(e + j) - base[j];
          r[j] = k0.selects(magnitude_key(x)) ? x : 0.0f;
        }
      } else {
        const BlockCut k1 = *d;
        for (std::int64_t j = 0; j < c; ++j) {
          const float x = load1(e + j) - base[j];
          const std::uint32_t k = magnitude_key(x);
          r[j] = (k0.selects(k) && !k1.selects(k)) ? x : 0.0f;
        }
      }
    } else {
      CutCursor& c0 = keep[i].cursor;
      for (std::int64_t j = 0; j < c; ++j) {
        const float x = load1(e + j) - base[j];
        const bool in = c0.keep(x), out = d && d->cursor.keep(x);  // both cursors see every entry
        r[j] = in && !out ? x : 0.0f;
      }
    }
  }
}

// Calls f.template operator()<NT>() with NT = T and returns true for
// 1 ≤ T ≤ 8 (kernels whose experts' values stay in registers); false past 8.
template <class F>
bool with_expert_count(std::size_t T, F&& f) {
  switch (T) {
    case 1: f.template operator()<1>(); return true;
    case 2: f.template operator()<2>(); return true;
    case 3: f.template operator()<3>(); return true;
    case 4: f.template operator()<4>(); return true;
    case 5: f.template operator()<5>(); return true;
    case 6: f.template operator()<6>(); return true;
    case 7: f.template operator()<7>(); return true;
    case 8: f.template operator()<8>(); return true;
    default: return false;
  }
}

// Whether every cut keeps all of its ties or none in the block.
inline bool all_uniform(const std::vector<BlockCut>& cuts) noexcept {
  return std::all_of(cuts.begin(), cuts.end(), [](const BlockCut& b) { return b.uniform; });
}

// A combination over trimmed values without staging them: for NT experts
// whose cuts (keep, and drop when Band) are uniform in the block, each vector of
// entries' t[i] = τ_i where kept, else 0 (as trimmed_rows forms them), are
// formed in registers and lanes(t, base lanes, out lanes) sets the output
// (t: NT vectors of Lanes<W>, W lanes; W = 0 the build's own); the last
// m mod W entries one by one, out = one(t, base) (t: NT floats).
template <std::size_t NT, bool Band, int W, class E, class LanesFn, class One>
void trimmed_in_registers(std::int64_t m, const float* TWIN_RESTRICT base, const E* const* ex,
                          const std::vector<BlockCut>& keep, const std::vector<BlockCut>* drop, LanesFn&& lanes,
                          One&& one, float* TWIN_RESTRICT out) noexcept {
  using L = Lanes<W>;
  using V = typename L::f32;
  using K = typename L::u32;
  // Each cut as its least selected key (BlockCut::least): one comparison.
  std::uint32_t kl[NT], dl[NT];
  for (std::size_t i = 0; i < NT; ++i) kl[i] = keep[i].least(), dl[i] = Band ? (*drop)[i].least() : 0x80000000u;
  std::int64_t j = 0;
  for (; j + L::n <= m; j += L::n) {
    V b, t[NT];
    L::load(b, base + j);
    for (std::size_t i = 0; i < NT; ++i) {
      V x;
      L::load(x, ex[i] + j);
      x -= b;
      K key;
      std::memcpy(&key, &x, sizeof key);
      key &= 0x7fffffffu;
      K sel = (K)(key >= kl[i]);
      if constexpr (Band) sel &= ~(K)(key >= dl[i]);
      keep_lanes(x, sel);
      t[i] = x;
    }
    V r;
    lanes(t, b, r);
    std::memcpy(out + j, &r, sizeof r);
  }
  for (; j < m; ++j) {
    float t[NT];
    for (std::size_t i = 0; i < NT; ++i) {
      const float x = load1(ex[i] + j) - base[j];
      const std::uint32_t k = magnitude_key(x);
      t[i] = keep[i].selects(k) && !(Band && (*drop)[i].selects(k)) ? x : 0.0f;
    }
    out[j] = one(t, base[j]);
  }
}

// out[0..m) from rows[i][0..m) (T experts) and base[0..m), the elements
// outer: lanes(T, t, base vector, out vector) a vector at a time, t(i)
// expert i's vector, then out = one(T, t, base) per remaining entry, t(i)
// expert i's value.
template <class LanesFn, class One>
void combine_rows(std::int64_t m, std::size_t T, const float* const* rows, const float* TWIN_RESTRICT base,
                  LanesFn&& lanes, One&& one, float* TWIN_RESTRICT out) noexcept {
  std::int64_t j = 0;
  for (; j + simd_lanes <= m; j += simd_lanes) {
    f32v r;
    lanes(
        T, [&](std::size_t i) { return loadv(rows[i] + j); }, loadv(base + j), r);
    std::memcpy(out + j, &r, sizeof r);
  }
  for (; j < m; ++j)
    out[j] = one(
        T, [&](std::size_t i) { return rows[i][j]; }, base[j]);
}

// Where a cut keeps only some of its ties in a block, whether it keeps all
// of the chunk's ties (the quota not used up by the last of them) or none
// (used up before the chunk): cuts[i] as it applies to this chunk of expert
// i's values, uniform unless the quota ends inside the chunk. `ties` gets
// how many of the chunk's keys are ties of each split cut (0 elsewhere).
template <class E>
void chunk_cuts(const std::vector<BlockCut>& cuts, std::int64_t c, const float* TWIN_RESTRICT base, const E* const* ex,
                std::vector<BlockCut>& chunk, std::vector<std::int64_t>& ties) {
  chunk = cuts;
  ties.assign(cuts.size(), 0);
  for (std::size_t i = 0; i < cuts.size(); ++i) {
    if (cuts[i].uniform) continue;
    const CutCursor& cur = cuts[i].cursor;
    const std::int64_t left = cur.cut.quota - cur.tie_seen;
    if (left > 0) {
      const E* TWIN_RESTRICT e = ex[i];
      const std::uint32_t thr = cuts[i].threshold;
      std::int64_t n = 0;
      for (std::int64_t j = 0; j < c; ++j) n += magnitude_key(load1(e + j) - base[j]) == thr;
      ties[i] = n;
      if (n > left) continue;  // the quota ends here: not uniform
    }
    chunk[i].keep_ties = left > 0, chunk[i].uniform = true;
  }
}

// out = a combination of the trimmed task values τ' (trimmed_rows by
// `keep`, less `drop` when given) over each tensor chunk, lanes and one as
// for combine_rows. For up to 8 experts whose cuts keep all of their ties
// or none in the chunk (every chunk of a block but the one where a split
// cut's quota ends), τ' is formed in registers (trimmed_in_registers);
// otherwise it is staged in rows of 512 elements, which stay in L1.
// Contiguous bf16 experts are read in place (merge_chunks_stored); the
// AVX-512 copy of a build without AVX-512 forms τ' 16 lanes wide
// (with_avx512_copy_width).
template <class LanesFn, class One>
void combine_trimmed(const TensorMergeArgs& a, const TensorCuts& keep, const TensorCuts* drop, LanesFn&& lanes,
                     One&& one) {
  const std::size_t T = a.experts.size();
  constexpr std::size_t S = 512;
  merge_chunks_stored(a, merge_block, [&](std::int64_t b0) {
    const auto b = static_cast<std::size_t>(b0 / merge_block);
    return [&, kc = keep.at_block(b), dc = drop ? drop->at_block(b) : std::vector<BlockCut>{},
            rows = std::vector<float*>(T), atf = std::vector<const float*>(T),
            ath = std::vector<const std::uint16_t*>(T), kx = std::vector<BlockCut>{}, dx = std::vector<BlockCut>{},
            kt = std::vector<std::int64_t>{}, dt = std::vector<std::int64_t>{}](
               std::int64_t, std::int64_t c, const float* base, const auto* const* ex, float* out, auto width) mutable {
      using E = std::remove_cvref_t<decltype(*ex[0])>;
      constexpr int W = decltype(width)::value;
      // The cuts as they apply to this chunk; where each is uniform here the
      // split cuts' cursors move past the chunk's ties, as trimmed_rows'
      // would.
      const bool split = !all_uniform(kc) || (drop && !all_uniform(dc));
      if (split) {
        chunk_cuts(kc, c, base, ex, kx, kt);
        if (drop) chunk_cuts(dc, c, base, ex, dx, dt);
      }
      const std::vector<BlockCut>& kcut = split ? kx : kc;
      const std::vector<BlockCut>& dcut = split ? dx : dc;
      auto in_registers = [&]<bool Band>() {
        return with_expert_count(T, [&]<std::size_t NT>() {
          using V = typename Lanes<W>::f32;
          trimmed_in_registers<NT, Band, W>(
              c, base, ex, kcut, &dcut,
              [&](const V(&t)[NT], const V& bv, V& r) {
                lanes(
                    NT, [&](std::size_t i) -> const V& { return t[i]; }, bv, r);
              },
              [&](const float(&t)[NT], float bv) {
                return one(
                    NT, [&](std::size_t i) { return t[i]; }, bv);
              },
              out);
        });
      };
      if (all_uniform(kcut) && (drop ? all_uniform(dcut) && in_registers.template operator()<true>()
                                     : in_registers.template operator()<false>())) {
        if (split)
          for (std::size_t i = 0; i < T; ++i) {
            kc[i].cursor.tie_seen += kt[i];
            if (drop) dc[i].cursor.tie_seen += dt[i];
          }
        return;
      }
      float* buf = scratch_floats<5>(S * T);
      for (std::size_t i = 0; i < T; ++i) rows[i] = buf + i * S;
      std::vector<const E*>& at = [&]() -> auto& {
        if constexpr (std::is_same_v<E, float>) return atf;
        else return ath;
      }
      ();
      for (std::int64_t s0 = 0; s0 < c; s0 += static_cast<std::int64_t>(S)) {
        const std::int64_t m = std::min(c - s0, static_cast<std::int64_t>(S));
        for (std::size_t i = 0; i < T; ++i) at[i] = ex[i] + s0;
        trimmed_rows(m, base + s0, at.data(), kc, drop ? &dc : nullptr, rows.data());
        combine_rows(m, T, static_cast<const float* const*>(rows.data()), base + s0, lanes, one, out + s0);
      }
    };
  });
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

// One cut asked of task_vector_cuts: the k largest |τ| of one expert.
struct CutRequest {
  std::size_t expert = 0;
  std::int64_t k = 0;
};

// The cuts found inside their windows by window_cuts: per request, the cut
// (nullopt where the k-th largest key fell outside the window: rare, the
// caller then selects exactly another way) and, where the cut keeps only
// some of its tied keys and tie counts were asked for, per tensor of the
// sequence the number of ties before each of its merge blocks (blocks + 1
// prefix sums, as count_ties gives them); empty otherwise.
struct WindowCuts {
  std::vector<std::optional<MagnitudeCut>> cut;
  std::vector<std::vector<std::vector<std::int64_t>>> ties_before;
};

// Exact top-k cuts of the task vectors τ_i = expert_i − base over a
// sequence of tensors taken as one (one tensor for a per-tensor cut, the
// whole model in catalog order for a global one), one per request (an
// expert may have several; each 0 < k < the sequence's length), τ
// recomputed from the inputs and never held:
//   1. a sample (runs of 1024 entries spread over the sequence, about 32K
//      entries) brackets each request's k-th largest key in a window of
//      ranks k·m/n ± (4σ + 16);
//   2. one pass counts, per request, the keys above the window (a
//      vectorized compare) and collects the keys inside it;
//   3. where the k-th largest key lies in the window (nearly always), the
//      cut is found among the collected keys.
// Exact where found: the sample only decides how much work step 3 does.
// The keys inside are collected in index order per merge block and every
// key tied at a cut's threshold is inside its window, so where a cut keeps
// only some of its ties their count before each block comes from those
// keys (when `tie_counts`), not from another pass.
inline WindowCuts window_cuts(std::span<const TensorMergeArgs> seq, std::span<const CutRequest> req, bool tie_counts) {
  const std::size_t S = seq.size(), R = req.size();
  const std::size_t T = S ? seq[0].experts.size() : 0;
  std::vector<std::int64_t> len(S), first_block(S + 1, 0);
  std::int64_t total = 0;
  for (std::size_t s = 0; s < S; ++s) {
    len[s] = seq[s].base.numel();
    total += len[s];
    first_block[s + 1] = first_block[s] + (len[s] + merge_block - 1) / merge_block;
  }
  std::vector<char> sampled(T, 0);
  for (const CutRequest& r : req) sampled[r.expert] = 1;
  // 1. The sample: run r covers [r·stride, r·stride + run) of the sequence
  //    (a run may go on into the next tensor).
  constexpr std::int64_t run = sample_run;
  const std::int64_t stride = sample_stride(total);
  const std::int64_t runs = (total + stride - 1) / stride;
  std::vector<std::vector<std::uint32_t>> sample(T);
  for (std::size_t i = 0; i < T; ++i)
    if (sampled[i]) sample[i].assign(static_cast<std::size_t>(runs * run), 0xffffffffu);
  std::int64_t pos = 0;  // the first entry of tensor s in the sequence
  for (std::size_t s = 0; s < S; pos += len[s], ++s) {
    if (len[s] == 0) continue;
    const std::int64_t r_first = pos / stride, r_last = (pos + len[s] - 1) / stride;
    parallel_blocks(r_last - r_first + 1, 8, [&](std::int64_t r0, std::int64_t r1) {
      for (std::int64_t r = r_first + r0; r < r_first + r1; ++r) {
        const std::int64_t lo = std::max(pos, r * stride), hi = std::min(pos + len[s], r * stride + run);
        if (lo >= hi) continue;
        for_input_chunks(seq[s], lo - pos, hi - pos,
                         [&](std::int64_t at, std::int64_t c, const float* base, const float* const* ex, float*) {
                           const auto first = static_cast<std::size_t>(r * run + (pos + at - r * stride));
                           for (std::size_t i = 0; i < T; ++i)
                             if (sampled[i])
                               for (std::int64_t j = 0; j < c; ++j)
                                 sample[i][first + static_cast<std::size_t>(j)] = magnitude_key(ex[i][j] - base[j]);
                         });
      }
    });
  }
  for (std::size_t i = 0; i < T; ++i) std::erase(sample[i], 0xffffffffu);  // past the end (no key is 0xffffffff)
  std::vector<KeyWindow> window(R);
  // Per request, in parallel (each window depends on its expert's sample alone).
  parallel_blocks(static_cast<std::int64_t>(R), 1, [&](std::int64_t x0, std::int64_t x1) {
    for (auto x = static_cast<std::size_t>(x0); x < static_cast<std::size_t>(x1); ++x)
      window[x] = sample_window(sample[req[x].expert], static_cast<double>(req[x].k) / static_cast<double>(total));
  });
  sample = {};
  // 2. Counts above each window, and the keys inside it, per thread and request.
  WindowScan scan(std::move(window));
  // Per merge block of the sequence and request: the thread that scanned it
  // and where its keys lie in that thread's buffer.
  struct Span {
    std::size_t thread = 0, begin = 0, end = 0;
  };
  std::vector<Span> span(tie_counts ? static_cast<std::size_t>(first_block[S]) * R : 0);
  for (std::size_t s = 0; s < S; ++s)
    parallel_blocks(len[s], merge_block, [&](std::int64_t b0, std::int64_t b1) {
      const auto t = static_cast<std::size_t>(thread_index());
      const auto b = static_cast<std::size_t>(first_block[s] + b0 / merge_block);
      if (tie_counts)
        for (std::size_t x = 0; x < R; ++x) span[b * R + x] = {t, scan.keys(t, x).size, 0};
      std::vector<const float*> vf(R);
      std::vector<const std::uint16_t*> vh(R);
      for_input_runs(
          seq[s], b0, b1,
          [&](std::int64_t, std::int64_t c, const float* base, const auto* const* ex, backend::cpu::LinesAhead* ahead) {
            auto& v = [&]() -> auto& {
              if constexpr (std::is_same_v<std::remove_cvref_t<decltype(*ex[0])>, float>) return vf;
              else return vh;
            }
            ();
            for (std::size_t x = 0; x < R; ++x) v[x] = ex[req[x].expert];
            scan.scan_each(t, v.data(), base, c, ahead);
          });
      if (tie_counts)
        for (std::size_t x = 0; x < R; ++x) span[b * R + x].end = scan.keys(t, x).size;
    });
  // 3. The cut inside each window, its ties per block; requests in parallel.
  WindowCuts out;
  out.cut.resize(R);
  out.ties_before.resize(R);
  parallel_blocks(static_cast<std::int64_t>(R), 1, [&](std::int64_t x0, std::int64_t x1) {
    for (auto x = static_cast<std::size_t>(x0); x < static_cast<std::size_t>(x1); ++x) {
      // The window's keys stay until its ties are counted, then go.
      const std::optional<MagnitudeCut> c = scan.cut(x, req[x].k, false);
      out.cut[x] = c;
      if (tie_counts && c && c->needs_tie_order()) {
        out.ties_before[x].resize(S);
        for (std::size_t s = 0; s < S; ++s) {
          std::vector<std::int64_t>& tb = out.ties_before[x][s];
          tb.assign(static_cast<std::size_t>(first_block[s + 1] - first_block[s]) + 1, 0);
          for (std::size_t b = 0; b + 1 < tb.size(); ++b) {
            const Span& sp = span[(static_cast<std::size_t>(first_block[s]) + b) * R + x];
            const std::uint32_t* k = scan.keys(sp.thread, x).keys.get();
            tb[b + 1] = tb[b] + std::count(k + sp.begin, k + sp.end, c->threshold);
          }
        }
      }
      for (std::size_t t = 0; t < scan.threads; ++t) scan.keys(t, x) = {};
    }
  });
  return out;
}

// Exact cuts of one tensor's task vectors, one per request: window_cuts
// over the one tensor, an expert whose window missed having its τ held and
// selected exactly. Short tensors hold τ and select row by row. Where a
// cut keeps only some of its ties, their counts before each merge block go
// into ties_before[x] when given, so count_ties needs no pass for it.
inline std::vector<MagnitudeCut> task_vector_cuts(const TensorMergeArgs& a, std::span<const CutRequest> req,
                                                  std::vector<std::vector<std::int64_t>>* ties_before = nullptr) {
  const std::int64_t n = a.base.numel();
  const std::size_t R = req.size();
  std::vector<MagnitudeCut> cut(R);
  if (ties_before) ties_before->assign(R, {});
  std::vector<std::size_t> todo;
  std::vector<CutRequest> sub;
  for (std::size_t x = 0; x < R; ++x) {
    if (req[x].k <= 0) cut[x] = MagnitudeCut::keep_none();
    else if (req[x].k >= n) cut[x] = MagnitudeCut::keep_all();
    else todo.push_back(x), sub.push_back(req[x]);
  }
  if (todo.empty()) return cut;
  if (n <= select_small) {
    std::vector<float> tau;
    task_vectors_f32(a, tau);
    for (std::size_t x : todo)
      cut[x] = select_top_k(std::span<const float>(tau.data() + static_cast<std::int64_t>(req[x].expert) * n,
                                                   static_cast<std::size_t>(n)),
                            req[x].k);
    return cut;
  }
  WindowCuts w = window_cuts(std::span<const TensorMergeArgs>(&a, 1), sub, ties_before != nullptr);
  for (std::size_t y = 0; y < todo.size(); ++y) {
    const std::size_t x = todo[y];
    cut[x] = w.cut[y] ? *w.cut[y] : held_task_vector_cut(a, req[x].expert, req[x].k);
    if (ties_before && !w.ties_before[y].empty()) (*ties_before)[x] = std::move(w.ties_before[y][0]);
  }
  return cut;
}

// One cut per expert: the k[i] largest |τ_i|.
inline std::vector<MagnitudeCut> task_vector_cuts(const TensorMergeArgs& a, const std::vector<std::int64_t>& k,
                                                  std::vector<std::vector<std::int64_t>>* ties_before = nullptr) {
  std::vector<CutRequest> req(k.size());
  for (std::size_t i = 0; i < k.size(); ++i) req[i] = {i, k[i]};
  return task_vector_cuts(a, req, ties_before);
}

}  // namespace twin::detail
