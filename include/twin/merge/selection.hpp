// Exact magnitude top-k selection, shared by Ties trimming, Breadcrumbs and
// the magnitude sparsifier. It keeps exactly k entries: those with |x| above
// the k-th largest magnitude, plus the lowest-indexed entries equal to it
// (so bf16 tensors full of repeated values still keep exactly k, and the
// choice does not depend on the thread count).
//
// The k-th largest magnitude is found by a two-pass radix select on the bit
// pattern of |x| (which orders like the value for non-negative floats):
// memory-speed, no sort, no copy of the data.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <utility>
#include <vector>

#include "twin/parallel.hpp"

namespace twin {

inline std::uint32_t magnitude_key(float x) noexcept { return std::bit_cast<std::uint32_t>(x) & 0x7fffffffu; }

// Keeps entries whose key is above `threshold`, and the first `quota`
// entries (in index order) whose key equals it.
struct MagnitudeCut {
  static constexpr std::int64_t all_ties = std::numeric_limits<std::int64_t>::max();
  std::uint32_t threshold = 0xffffffffu;  // above every key: keeps nothing
  std::int64_t quota = 0;

  static MagnitudeCut keep_none() noexcept { return {}; }
  static MagnitudeCut keep_all() noexcept { return {0u, all_ties}; }
  bool keeps_nothing() const noexcept { return threshold == 0xffffffffu && quota == 0; }
  bool needs_tie_order() const noexcept { return quota != all_ties && quota > 0; }
};

namespace detail {
constexpr std::int64_t select_block = std::int64_t{1} << 16;

// Adds the histogram of bin(key) over entries passing want(key). Counts are
// integers, so per-thread histograms summed in any order give the same result.
template <class Want, class Bin>
void add_histogram(std::span<const float> v, std::vector<std::int64_t>& hist, Want want, Bin bin) {
  const std::size_t threads = static_cast<std::size_t>(num_threads());
  std::vector<std::int64_t> local(threads * hist.size(), 0);
  parallel_blocks(static_cast<std::int64_t>(v.size()), 4 * select_block, [&](std::int64_t lo, std::int64_t hi) {
    std::int64_t* h = local.data() + static_cast<std::size_t>(thread_index()) * hist.size();
    for (std::int64_t i = lo; i < hi; ++i) {
      const std::uint32_t k = magnitude_key(v[static_cast<std::size_t>(i)]);
      if (want(k)) ++h[bin(k)];
    }
  });
  for (std::size_t t = 0; t < threads; ++t)
    for (std::size_t b = 0; b < hist.size(); ++b) hist[b] += local[t * hist.size() + b];
}
}  // namespace detail

// Finds the cut keeping the k largest magnitudes of a sequence of `total`
// values. `visit(sink)` must call sink(std::span<const float>) on the
// segments of the sequence in order (one segment for one tensor; one per
// tensor for a global selection). visit is called twice.
template <class Visit>
MagnitudeCut select_top_k(Visit&& visit, std::int64_t total, std::int64_t k) {
  if (k <= 0) return MagnitudeCut::keep_none();
  if (k >= total) return MagnitudeCut::keep_all();
  // Pass 1: high 16 bits of the key (keys are < 2^31, so 32768 bins).
  std::vector<std::int64_t> hi(1u << 15, 0);
  visit([&](std::span<const float> seg) {
    detail::add_histogram(
        seg, hi, [](std::uint32_t) { return true; }, [](std::uint32_t key) { return key >> 16; });
  });
  std::int64_t above = 0;
  std::uint32_t bin = 0;
  for (std::int64_t b = static_cast<std::int64_t>(hi.size()) - 1; b >= 0; --b) {
    if (above + hi[static_cast<std::size_t>(b)] >= k) {
      bin = static_cast<std::uint32_t>(b);
      break;
    }
    above += hi[static_cast<std::size_t>(b)];
  }
  // Pass 2: low 16 bits inside the chosen high bin.
  std::vector<std::int64_t> lo(1u << 16, 0);
  visit([&](std::span<const float> seg) {
    detail::add_histogram(
        seg, lo, [bin](std::uint32_t key) { return (key >> 16) == bin; },
        [](std::uint32_t key) { return key & 0xffffu; });
  });
  for (std::int64_t b = static_cast<std::int64_t>(lo.size()) - 1; b >= 0; --b) {
    const std::int64_t c = lo[static_cast<std::size_t>(b)];
    if (above + c >= k) {
      const std::int64_t quota = k - above;
      return {(bin << 16) | static_cast<std::uint32_t>(b), quota == c ? MagnitudeCut::all_ties : quota};
    }
    above += c;
  }
  return MagnitudeCut::keep_all();  // unreachable when counts add up
}

inline MagnitudeCut select_top_k(std::span<const float> v, std::int64_t k) {
  return select_top_k([&](auto&& sink) { sink(v); }, static_cast<std::int64_t>(v.size()), k);
}

// Number of entries equal to the cut's threshold in each block of
// `block` entries of v, as an exclusive prefix sum (ties seen before the block).
inline std::vector<std::int64_t> ties_before_blocks(std::span<const float> v, std::uint32_t threshold,
                                                    std::int64_t block) {
  const std::int64_t n = static_cast<std::int64_t>(v.size());
  const std::int64_t nb = (n + block - 1) / block;
  std::vector<std::int64_t> count(static_cast<std::size_t>(nb) + 1, 0);
  parallel_blocks(nb, 1, [&](std::int64_t b0, std::int64_t b1) {
    for (std::int64_t b = b0; b < b1; ++b) {
      std::int64_t c = 0;
      for (std::int64_t i = b * block; i < std::min(n, (b + 1) * block); ++i)
        c += magnitude_key(v[static_cast<std::size_t>(i)]) == threshold;
      count[static_cast<std::size_t>(b) + 1] = c;
    }
  });
  for (std::size_t b = 1; b < count.size(); ++b) count[b] += count[b - 1];
  return count;
}

// Applies a cut to one block: `tie_seen` is the number of ties before the
// block's first entry (from ties_before_blocks, or 0 when the cut keeps
// all ties) and is advanced past the block.
struct CutCursor {
  MagnitudeCut cut;
  std::int64_t tie_seen = 0;
  bool keep(float x) noexcept {
    const std::uint32_t k = magnitude_key(x);
    if (k > cut.threshold) return true;
    if (k != cut.threshold || cut.quota == 0) return false;
    return tie_seen++ < cut.quota;
  }
};

// k = floor(density * n), mergekit's count of kept entries. The tiny nudge
// keeps products such as 0.29 * 100 from flooring to 28.
inline std::int64_t keep_count(double density, std::int64_t n) noexcept {
  const double k = std::floor(density * static_cast<double>(n) + 1e-9);
  return std::clamp<std::int64_t>(static_cast<std::int64_t>(k), 0, n);
}

// The official TIES-Merging / Twin-Merging code's trim (topk_values_mask):
// keep every entry whose magnitude is at least the (n − k)-th smallest,
// k = int(n · density) truncated as Python does (no nudge): the k + 1
// largest plus every tie with the last of them. Where k = n (density 1) the
// official code fails (torch's kthvalue(0)); here everything is kept.
// `visit` as for select_top_k.
template <class Visit>
MagnitudeCut select_kthvalue(Visit&& visit, std::int64_t total, double density) {
  const auto k = std::clamp<std::int64_t>(static_cast<std::int64_t>(static_cast<double>(total) * density), 0, total);
  if (k >= total) return MagnitudeCut::keep_all();
  MagnitudeCut cut = select_top_k(std::forward<Visit>(visit), total, k + 1);
  cut.quota = MagnitudeCut::all_ties;
  return cut;
}

// Zeroes, in place, every entry of v the cut does not keep (or, with
// zero_selected, every entry it does keep).
inline void apply_cut(std::span<float> v, const MagnitudeCut& cut, bool zero_selected = false) {
  const std::int64_t n = static_cast<std::int64_t>(v.size());
  const std::int64_t block = detail::select_block;
  std::vector<std::int64_t> prefix;
  if (cut.needs_tie_order()) prefix = ties_before_blocks(v, cut.threshold, block);
  parallel_blocks(n, block, [&](std::int64_t lo, std::int64_t hi) {
    CutCursor c{cut, prefix.empty() ? 0 : prefix[static_cast<std::size_t>(lo / block)]};
    for (std::int64_t i = lo; i < hi; ++i)
      if (c.keep(v[static_cast<std::size_t>(i)]) == zero_selected) v[static_cast<std::size_t>(i)] = 0.0f;
  });
}

// Per-segment cuts of a global cut: the ties a global cut keeps are the
// first `quota` in the order of segments, so each segment gets its share.
inline std::vector<MagnitudeCut> split_cut(const MagnitudeCut& cut, std::span<const std::int64_t> ties_per_segment) {
  std::vector<MagnitudeCut> out(ties_per_segment.size(), cut);
  if (!cut.needs_tie_order()) return out;
  std::int64_t left = cut.quota;
  for (std::size_t s = 0; s < ties_per_segment.size(); ++s) {
    const std::int64_t take = std::min(left, ties_per_segment[s]);
    out[s].quota = take == ties_per_segment[s] ? MagnitudeCut::all_ties : take;
    left -= take;
  }
  return out;
}

}  // namespace twin
