// Exact magnitude top-k selection, shared by Ties trimming, Breadcrumbs and
// the magnitude sparsifier. It keeps exactly k entries: those with |x| above
// the k-th largest magnitude, plus the lowest-indexed entries equal to it
// (so bf16 tensors full of repeated values still keep exactly k, and the
// choice does not depend on the thread count).
//
// The k-th largest magnitude is found on the bit pattern of |x| (which
// orders like the value for non-negative floats), without sorting or copying
// the data: a sample brackets it in a window, one pass collects the keys
// inside the window, and a radix select among them decides (select_top_ks;
// a two-pass radix select over every key where the window misses).
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <span>
#include <tuple>
#include <utility>
#include <vector>

#include "twin/backend/cpu/lines_ahead.hpp"
#include "twin/config.hpp"
#include "twin/merge/lanes.hpp"
#include "twin/parallel.hpp"

#if TWIN_X86_KERNELS
#  include <immintrin.h>
#endif

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
  // Where the cut keeps exactly the keys ≥ some key (no quota of ties to
  // take in index order): that key, 0x80000000 (above every key) where it
  // keeps nothing.
  std::optional<std::uint32_t> min_key() const noexcept {
    if (needs_tie_order()) return std::nullopt;
    if (quota == all_ties) return threshold;
    return threshold >= 0x7fffffffu ? 0x80000000u : threshold + 1;
  }
};

namespace detail {
constexpr std::int64_t select_block = std::int64_t{1} << 16;
// Sequences up to this long are selected by a radix select over a copy of
// their keys (kth_largest): cheaper than sampling and scanning.
constexpr std::int64_t select_small = std::int64_t{1} << 14;
// The sample of a longer sequence: runs of sample_run entries, one starting
// every sample_stride(n) entries, about 32K keys in all.
constexpr std::int64_t sample_run = 1024;
constexpr std::int64_t sample_stride(std::int64_t n) noexcept {
  return std::max<std::int64_t>(sample_run, n / (std::int64_t{1} << 15) * sample_run);
}
constexpr std::size_t high_bins = std::size_t{1} << 15;  // keys are < 2^31: their high 16 bits
constexpr std::size_t low_bins = std::size_t{1} << 16;

// hist[b] += the number of entries of v whose key has high bits b. Each
// thread counts into 4 interleaved copies (entry i into copy i mod 4), so
// runs of entries in one bin do not wait on each other's increments. Counts
// are integers: the sum is the same for any thread count.
inline void add_high_histogram(std::span<const float> v, std::vector<std::int64_t>& hist) {
  constexpr std::size_t copies = 4, B = high_bins;
  const std::size_t threads = static_cast<std::size_t>(num_threads());
  std::vector<std::uint32_t> local(threads * copies * B, 0);
  const float* x = v.data();
  parallel_blocks(static_cast<std::int64_t>(v.size()), 4 * select_block, [&](std::int64_t lo, std::int64_t hi) {
    std::uint32_t* h = local.data() + static_cast<std::size_t>(thread_index()) * copies * B;
    std::int64_t i = lo;
    for (; i + 4 <= hi; i += 4) {
      ++h[magnitude_key(x[i]) >> 16];
      ++h[B + (magnitude_key(x[i + 1]) >> 16)];
      ++h[2 * B + (magnitude_key(x[i + 2]) >> 16)];
      ++h[3 * B + (magnitude_key(x[i + 3]) >> 16)];
    }
    for (; i < hi; ++i) ++h[magnitude_key(x[i]) >> 16];
  });
  for (std::size_t c = 0; c < threads * copies; ++c)
    for (std::size_t b = 0; b < B; ++b) hist[b] += local[c * B + b];
}

// hist[s·2^16 + l] += the number of entries of v whose key is
// (bins[s] << 16) | l, for each of the (few) high bins given. Entries are
// screened 16 at a time, a vectorized test; only groups holding a match are
// counted one by one.
inline void add_low_histograms(std::span<const float> v, std::span<const std::uint32_t> bins,
                               std::vector<std::int64_t>& hist) {
  const std::size_t m = bins.size(), threads = static_cast<std::size_t>(num_threads());
  std::vector<std::uint32_t> local(threads * m * low_bins, 0);
  const float* x = v.data();
  parallel_blocks(static_cast<std::int64_t>(v.size()), 4 * select_block, [&](std::int64_t lo, std::int64_t hi) {
    std::uint32_t* h = local.data() + static_cast<std::size_t>(thread_index()) * m * low_bins;
    auto count = [&](std::int64_t i) {
      const std::uint32_t k = magnitude_key(x[i]);
      for (std::size_t s = 0; s < m; ++s)
        if ((k >> 16) == bins[s]) ++h[s * low_bins + (k & 0xffffu)];
    };
    constexpr std::int64_t G = 16;
    using u32x16 = std::uint32_t __attribute__((vector_size(G * sizeof(std::uint32_t))));
    std::int64_t i = lo;
    for (; i + G <= hi; i += G) {
      u32x16 k;
      std::memcpy(&k, x + i, sizeof k);
      k = (k >> 16) & 0x7fffu;
      u32x16 hit = k == bins[0];
      for (std::size_t s = 1; s < m; ++s) hit |= k == bins[s];
      std::uint32_t any = 0;
      for (std::int64_t q = 0; q < G; ++q) any |= hit[q];
      if (any)
        for (std::int64_t q = 0; q < G; ++q) count(i + q);
    }
    for (; i < hi; ++i) count(i);
  });
  for (std::size_t t = 0; t < threads; ++t)
    for (std::size_t b = 0; b < m * low_bins; ++b) hist[b] += local[t * m * low_bins + b];
}

// The high bin holding the k-th largest key of a high-bits histogram, and
// how many keys lie above that bin.
inline std::pair<std::uint32_t, std::int64_t> high_bin_of(const std::int64_t* hist, std::int64_t k) {
  std::int64_t above = 0;
  for (std::int64_t x = static_cast<std::int64_t>(high_bins) - 1; x >= 0; --x) {
    if (above + hist[x] >= k) return {static_cast<std::uint32_t>(x), above};
    above += hist[x];
  }
  return {0u, above};
}

// The cut keeping the k largest keys, from the low-bits histogram of the
// keys in high bin `bin`, above of which lie above it.
inline MagnitudeCut cut_in_bin(const std::int64_t* low, std::uint32_t bin, std::int64_t above, std::int64_t k) {
  for (std::int64_t b = static_cast<std::int64_t>(low_bins) - 1; b >= 0; --b) {
    const std::int64_t c = low[b];
    if (above + c >= k) {
      const std::int64_t quota = k - above;
      return {(bin << 16) | static_cast<std::uint32_t>(b), quota == c ? MagnitudeCut::all_ties : quota};
    }
    above += c;
  }
  return MagnitudeCut::keep_all();  // unreachable when counts add up
}

// The rank-th largest of `keys` (0-based, rank < keys.size()), with how
// many keys lie above it and how many equal it. A radix select on 11, 11 and
// 10 bits: each round counts the keys' digits (into four interleaved
// tables: keys crowd into a few digits, whose increments would otherwise
// wait on each other) and keeps those in the digit holding the rank,
// without branches, so it runs at a few cycles per key whatever the data.
// A digit every key shares (the top ones of a sample window's keys) is
// taken without a round. Reorders and shrinks keys.
struct KthKey {
  std::uint32_t key = 0;
  std::int64_t above = 0, ties = 0;
};
inline KthKey kth_largest(std::vector<std::uint32_t>& keys, std::int64_t rank) {
  KthKey r;
  std::size_t n = keys.size();
  std::uint32_t* k = keys.data();
  constexpr int shifts[3] = {21, 10, 0};
  constexpr std::uint32_t masks[3] = {2047u, 2047u, 1023u};
  constexpr std::size_t D = 2048, copies = 4;
  std::uint32_t all = ~0u, any = 0u;  // the bits every key has, and those some key has
  for (std::size_t j = 0; j < n; ++j) all &= k[j], any |= k[j];
  std::vector<std::int64_t> count(copies * D);
  for (int level = 0; level < 3; ++level) {
    const int sh = shifts[level];
    const std::uint32_t mask = masks[level];
    if ((((all ^ any) >> sh) & mask) == 0) {  // one digit: every key in it
      r.key |= all & (mask << sh);
      r.ties = static_cast<std::int64_t>(n);
      continue;
    }
    std::fill(count.begin(), count.end(), 0);
    std::size_t j = 0;
    for (; j + copies <= n; j += copies)
      for (std::size_t c = 0; c < copies; ++c) ++count[c * D + ((k[j + c] >> sh) & mask)];
    for (; j < n; ++j) ++count[(k[j] >> sh) & mask];
    std::uint32_t digit = 0;
    for (std::int64_t d = mask; d >= 0; --d) {
      std::int64_t c = 0;
      for (std::size_t t = 0; t < copies; ++t) c += count[t * D + static_cast<std::size_t>(d)];
      if (r.above + c > rank) {
        digit = static_cast<std::uint32_t>(d);
        r.ties = c;
        break;
      }
      r.above += c;
    }
    r.key |= digit << sh;
    std::size_t m = 0;
    for (std::size_t i = 0; i < n; ++i) {
      k[m] = k[i];
      m += ((k[i] >> sh) & mask) == digit;
    }
    n = m;
  }
  keys.resize(n);
  return r;
}

// The cut keeping the k largest of `keys` (0 < k <= keys.size()); consumes keys.
inline MagnitudeCut small_cut(std::vector<std::uint32_t>& keys, std::int64_t k) {
  const KthKey r = kth_largest(keys, k - 1);
  const std::int64_t quota = k - r.above;
  return {r.key, quota == r.ties ? MagnitudeCut::all_ties : quota};
}

// Keys collected without clearing the space they are written into.
struct KeyBuffer {
  std::unique_ptr<std::uint32_t[]> keys;
  std::size_t size = 0, capacity = 0;
  // Room for n more keys after the first `size`.
  std::uint32_t* tail(std::size_t n) {
    if (size + n > capacity) {
      const std::size_t cap = std::max(2 * capacity, size + n);
      std::unique_ptr<std::uint32_t[]> grown(new std::uint32_t[cap]);  // left uninitialized
      std::copy(keys.get(), keys.get() + size, grown.get());
      keys = std::move(grown), capacity = cap;
    }
    return keys.get() + size;
  }
  std::span<const std::uint32_t> view() const noexcept { return {keys.get(), size}; }
};

// One key window per x: keys in [win[x].first, win[x].second] are
// collected, those above counted.
using KeyWindow = std::pair<std::uint32_t, std::uint32_t>;

// scan_windows' loop over entries [j, c), one window after another.
template <class E>
void scan_windows_from(const E* const* v, const float* TWIN_RESTRICT base, std::int64_t j0, std::int64_t c,
                       std::span<const KeyWindow> win, std::int64_t* above, std::uint32_t** out) noexcept {
  for (std::size_t x = 0; x < win.size(); ++x) {
    const E* TWIN_RESTRICT e = v[x];
    const std::uint32_t lo = win[x].first, hi = win[x].second;
    std::uint32_t* o = out[x];
    std::int64_t up = 0;
    for (std::int64_t j = j0; j < c; ++j) {
      const std::uint32_t key = magnitude_key(base ? load1(e + j) - base[j] : load1(e + j));
      up += key > hi;
      *o = key;
      o += key >= lo && key <= hi;
    }
    above[x] += up, out[x] = o;
  }
}
#if TWIN_X86_KERNELS
// The vector kernels take up to scan_group windows at a time, their
// counts and cursors in locals (which the keys' stores cannot alias: in the
// caller's arrays every cursor was reloaded after each store, 20% slower),
// added back by add_scan_group.
constexpr std::size_t scan_group = 16;
inline void add_scan_group(std::uint32_t* const* o, const std::int64_t* up, std::size_t n, std::int64_t* above,
                           std::uint32_t** out) noexcept {
  for (std::size_t x = 0; x < n; ++x) out[x] = o[x], above[x] += up[x];
}
// 16 stored values as f32 (bf16: widened, exact).
__attribute__((target("avx512f"))) inline __m512 load16_f32(const float* p) noexcept { return _mm512_loadu_ps(p); }
__attribute__((target("avx512f"))) inline __m512 load16_f32(const std::uint16_t* p) noexcept {
  // The zero-masked forms: the plain ones pass an undefined vector, which
  // GCC 12 reports as maybe uninitialized in a build without AVX-512.
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xffff, _mm512_maskz_cvtepu16_epi32(0xffff, h), 16));
}
// The same 16 entries at a time, every window at each position (so the
// vectors are read side by side, as a merge reads them: one vector at a
// time over a chunk left the memory idle between them, breadcrumbs' 16
// windows 5.5 → 4.5 ms, benchmarks/RESULTS.md); windows over the same
// vector as the one before share its keys. The keys inside are compressed
// in a register and stored whole (room for c keys is there): the memory
// form of the compress is microcoded on Zen 4. Returns where it stopped
// (the last c mod 16 entries are left to scan_windows_from).
template <bool Base, class E>
__attribute__((target("avx512f,popcnt"))) std::int64_t scan_windows_avx512(
    const E* const* v, const float* TWIN_RESTRICT base, std::int64_t c, std::span<const KeyWindow> win,
    std::int64_t* above, std::uint32_t** out, backend::cpu::LinesAhead* ahead, std::int64_t per) noexcept {
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  const std::int64_t end = c / 16 * 16;
  const std::size_t n = win.size();  // ≤ scan_group
  std::uint32_t* o[scan_group];
  std::int64_t up[scan_group] = {};
  std::copy(out, out + n, o);
  for (std::int64_t j = 0; j < end; j += 16) {
    if (per > 0) ahead->ask(per);
    __m512 b;
    if constexpr (Base) b = _mm512_loadu_ps(base + j);
    __m512i key = abs_mask;
    for (std::size_t x = 0; x < n; ++x) {
      if (x == 0 || v[x] != v[x - 1]) {
        __m512 e = load16_f32(v[x] + j);
        if constexpr (Base) e = _mm512_sub_ps(e, b);
        key = _mm512_and_si512(_mm512_castps_si512(e), abs_mask);
      }
      const __m512i vlo = _mm512_set1_epi32(static_cast<int>(win[x].first));
      const __m512i vhi = _mm512_set1_epi32(static_cast<int>(win[x].second));
      const __mmask16 hi = _mm512_cmpgt_epu32_mask(key, vhi);
      const __mmask16 inside = _mm512_mask_cmpge_epu32_mask(_mm512_cmple_epu32_mask(key, vhi), key, vlo);
      up[x] += std::popcount(static_cast<unsigned>(hi));
      _mm512_storeu_si512(o[x], _mm512_maskz_compress_epi32(inside, key));
      o[x] += std::popcount(static_cast<unsigned>(inside));
    }
  }
  add_scan_group(o, up, n, above, out);
  return end;
}

// For each 8-bit mask, the positions of its set bits, lowest first (the
// AVX2 compress: a permutation of 8 lanes).
inline constexpr std::array<std::array<std::uint8_t, 8>, 256> compress_order = [] {
  std::array<std::array<std::uint8_t, 8>, 256> t{};
  for (std::size_t m = 0; m < 256; ++m) {
    std::size_t n = 0;
    for (std::uint8_t b = 0; b < 8; ++b)
      if (m >> b & 1u) t[m][n++] = b;
  }
  return t;
}();
// 8 stored values as f32 (bf16: widened, exact).
__attribute__((target("avx2"))) inline __m256 load8_f32(const float* p) noexcept { return _mm256_loadu_ps(p); }
__attribute__((target("avx2"))) inline __m256 load8_f32(const std::uint16_t* p) noexcept {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
// scan_windows_avx512 for AVX2 (a CPU without AVX-512: most desktops), 8
// entries at a time: unsigned comparisons as signed ones of keys and
// bounds with the top bit flipped, the compress a permutation from
// compress_order. Returns where it stopped (c rounded down to 8).
template <bool Base, class E>
__attribute__((target("avx2,popcnt"))) std::int64_t scan_windows_avx2(
    const E* const* v, const float* TWIN_RESTRICT base, std::int64_t c, std::span<const KeyWindow> win,
    std::int64_t* above, std::uint32_t** out, backend::cpu::LinesAhead* ahead, std::int64_t per) noexcept {
  const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), flip = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const std::int64_t end = c / 8 * 8;
  const std::size_t n = win.size();  // ≤ scan_group
  std::uint32_t* o[scan_group];
  std::int64_t up[scan_group] = {};
  std::copy(out, out + n, o);
  for (std::int64_t j = 0; j < end; j += 8) {
    if (per > 0) ahead->ask(per);
    __m256 b;
    if constexpr (Base) b = _mm256_loadu_ps(base + j);
    __m256i key = abs_mask, flipped = abs_mask;
    for (std::size_t x = 0; x < n; ++x) {
      if (x == 0 || v[x] != v[x - 1]) {
        __m256 e = load8_f32(v[x] + j);
        if constexpr (Base) e = _mm256_sub_ps(e, b);
        key = _mm256_and_si256(_mm256_castps_si256(e), abs_mask);
        flipped = _mm256_xor_si256(key, flip);
      }
      const __m256i lo = _mm256_set1_epi32(static_cast<int>(win[x].first ^ 0x80000000u));
      const __m256i hi = _mm256_set1_epi32(static_cast<int>(win[x].second ^ 0x80000000u));
      const __m256i over = _mm256_cmpgt_epi32(flipped, hi);
      const __m256i outside = _mm256_or_si256(over, _mm256_cmpgt_epi32(lo, flipped));
      const auto m_over = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(over)));
      const auto m_in = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(outside))) ^ 0xffu;
      up[x] += std::popcount(m_over);
      const __m128i order = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(compress_order[m_in].data()));
      const __m256i packed = _mm256_permutevar8x32_epi32(key, _mm256_cvtepu8_epi32(order));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o[x]), packed);
      o[x] += std::popcount(m_in);
    }
  }
  add_scan_group(o, up, n, above, out);
  return end;
}
#endif

// Over c entries of each of the vectors v[x], one per window x, keys of
// v[x] − base (as task_vectors_f32 forms τ; of v[x] where base is null;
// E: f32, or bf16's bits widened exactly): window x's keys inside it are
// written at out[x] (advanced; room for c keys must be there) and the
// count above it added to above[x]. By the kernel level given (the CPU's
// widest by default; cpu_has(kernel) must hold), the last entries one at
// a time. `ahead`'s lines (where given) are asked for over the vector
// kernels' steps, a few per step, and the rest at the end.
template <class E>
void scan_windows(const E* const* v, const float* TWIN_RESTRICT base, std::int64_t c, std::span<const KeyWindow> win,
                  std::int64_t* above, std::uint32_t** out, SimdKernel kernel = best_simd_kernel(),
                  backend::cpu::LinesAhead* ahead = nullptr) noexcept {
  std::int64_t j = 0;
#if TWIN_X86_KERNELS
  if (kernel == SimdKernel::avx512 || kernel == SimdKernel::avx2) {
    const std::int64_t step = kernel == SimdKernel::avx512 ? 16 : 8;
    const auto groups = static_cast<std::int64_t>((win.size() + scan_group - 1) / scan_group);
    const std::int64_t per = ahead ? ahead->per(c / step * groups) : 0;
    for (std::size_t x0 = 0; x0 < win.size(); x0 += scan_group) {
      const std::span<const KeyWindow> g = win.subspan(x0, std::min(scan_group, win.size() - x0));
      const auto run = [&]<bool Base>() {
        return kernel == SimdKernel::avx512
                   ? scan_windows_avx512<Base>(v + x0, base, c, g, above + x0, out + x0, ahead, per)
                   : scan_windows_avx2<Base>(v + x0, base, c, g, above + x0, out + x0, ahead, per);
      };
      j = base ? run.template operator()<true>() : run.template operator()<false>();
    }
  }
#endif
  (void)kernel;
  scan_windows_from(v, base, j, c, win, above, out);
  if (ahead) ahead->ask(ahead->left());  // what the steps did not ask for (no vector kernel, short c)
}

// The r0-th and r1-th largest of `keys` (0-based, r0 ≤ r1 < keys.size()
// < 2^32), from one copy of the keys: one pass counts their top 11 bits
// (into 4 interleaved tables: keys crowd into a few digits, whose
// increments would otherwise wait on each other), those in the digits from
// r1's to r0's are kept without branches (a sample's window spans a digit
// or two), and each rank is selected among them. Two radix selects over
// copies of a 32K-key sample took 23% of a 768×768 bf16 TIES merge.
inline std::pair<std::uint32_t, std::uint32_t> keys_at_ranks(const std::vector<std::uint32_t>& keys, std::int64_t r0,
                                                             std::int64_t r1) {
  constexpr int shift = 21;
  constexpr std::size_t D = std::size_t{1} << (32 - shift), copies = 4;
  std::vector<std::uint32_t> count(copies * D, 0);
  const std::uint32_t* k = keys.data();
  const std::size_t n = keys.size();
  std::size_t j = 0;
  for (; j + copies <= n; j += copies)
    for (std::size_t c = 0; c < copies; ++c) ++count[c * D + (k[j + c] >> shift)];
  for (; j < n; ++j) ++count[k[j] >> shift];
  std::int64_t above = 0, above0 = -1;
  std::uint32_t d0 = 0, d1 = 0;
  for (auto d = static_cast<std::int64_t>(D) - 1; d >= 0; --d) {
    std::int64_t c = 0;
    for (std::size_t t = 0; t < copies; ++t) c += count[t * D + static_cast<std::size_t>(d)];
    if (above0 < 0 && above + c > r0) d0 = static_cast<std::uint32_t>(d), above0 = above;
    above += c;
    if (above > r1) {
      d1 = static_cast<std::uint32_t>(d);
      break;
    }
  }
  std::vector<std::uint32_t> in(static_cast<std::size_t>(above - above0) + 1);  // + 1: the last write may miss
  std::size_t m = 0;
  for (j = 0; j < n; ++j) {
    in[m] = k[j];
    m += (k[j] >> shift) - d1 <= d0 - d1;  // d1 ≤ digit ≤ d0
  }
  in.resize(m);
  std::vector<std::uint32_t> copy = in;
  return {kth_largest(in, r0 - above0).key, kth_largest(copy, r1 - above0).key};
}

// The window of keys [lo, hi] at sampled ranks q·m ± (4σ + 16) of m sampled
// keys, keys_at(r0, r1) the r0-th and r1-th largest of them (r from 0,
// r0 ≤ r1).
template <class KeysAt>
KeyWindow window_at_ranks(std::size_t m, double q, double sigma, KeysAt&& keys_at) {
  const double r = q * static_cast<double>(m), d = 4.0 * sigma + 16.0;
  const auto top = static_cast<std::int64_t>(std::floor(r - d)), bottom = static_cast<std::int64_t>(std::ceil(r + d));
  const bool has_top = top >= 0, has_bottom = bottom < static_cast<std::int64_t>(m);  // top < m, bottom ≥ 0
  KeyWindow w{0u, 0xffffffffu};
  if (!has_top && !has_bottom) return w;
  const auto [hi, lo] = keys_at(has_top ? top : bottom, has_bottom ? bottom : top);
  if (has_bottom) w.first = lo;
  if (has_top) w.second = hi;
  return w;
}

// The window of keys [lo, hi] that brackets the k-th largest of n keys,
// k = q·n, with high probability, from a uniform sample of them: sampled
// ranks q·m ± (4σ + 16) of the m sampled keys, σ the binomial deviation.
inline KeyWindow sample_window(const std::vector<std::uint32_t>& sample, double q) {
  const auto m = static_cast<double>(sample.size());
  return window_at_ranks(sample.size(), q, std::sqrt(m * q * (1.0 - q)),
                         [&](std::int64_t r0, std::int64_t r1) { return keys_at_ranks(sample, r0, r1); });
}

// keys in descending order: an LSD radix sort of ~key, digits of 11, 11
// and 10 bits.
inline std::vector<std::uint32_t> sorted_descending(const std::vector<std::uint32_t>& keys) {
  std::vector<std::uint32_t> a(keys.size()), b(keys.size());
  for (std::size_t j = 0; j < keys.size(); ++j) a[j] = ~keys[j];
  constexpr int shifts[3] = {0, 11, 22};
  std::vector<std::size_t> count(2048);
  for (const int sh : shifts) {
    std::fill(count.begin(), count.end(), 0);
    for (const std::uint32_t k : a) ++count[(k >> sh) & 2047u];
    std::size_t at = 0;
    for (std::size_t& c : count) at += std::exchange(c, at);
    for (const std::uint32_t k : a) b[count[(k >> sh) & 2047u]++] = k;
    a.swap(b);
  }
  for (std::uint32_t& k : a) k = ~k;
  return a;
}

// sample_window for a sample of runs of `batch` consecutive keys (batch >
// 0), desc the sample sorted in descending order: where the data's parts
// differ (rows of different scales), the runs' keys are not independent,
// and σ is at least the deviation the runs show, from how far each run's
// count of keys above the sampled rank strays from q·(its length) (batch
// means). batch = 0: the binomial σ alone.
inline KeyWindow sample_window(const std::vector<std::uint32_t>& sample, const std::vector<std::uint32_t>& desc,
                               double q, std::size_t batch = 0) {
  const auto m = static_cast<double>(sample.size());
  double sd = std::sqrt(m * q * (1.0 - q));
  if (batch > 0 && sample.size() >= 2 * batch) {
    const std::uint32_t v = desc[static_cast<std::size_t>(std::min(q * m, m - 1.0))];
    double var = 0.0;
    for (std::size_t b0 = 0; b0 < sample.size(); b0 += batch) {
      const std::size_t b1 = std::min(sample.size(), b0 + batch);
      std::size_t above = 0;
      for (std::size_t j = b0; j < b1; ++j) above += sample[j] > v;
      const double dev = static_cast<double>(above) - q * static_cast<double>(b1 - b0);
      var += dev * dev;
    }
    sd = std::max(sd, std::sqrt(var));
  }
  return window_at_ranks(sample.size(), q, sd, [&](std::int64_t r0, std::int64_t r1) {
    return std::pair{desc[static_cast<std::size_t>(r0)], desc[static_cast<std::size_t>(r1)]};
  });
}

// The cut keeping the k largest keys of window x, from the per-thread
// counts above it and keys inside it (entry t·per + x of each), or nullopt
// where the k-th largest is not inside. Releases the window's keys unless
// told to keep them.
inline std::optional<MagnitudeCut> cut_in_window(const std::vector<std::int64_t>& above_n,
                                                 std::vector<KeyBuffer>& inside_n, std::size_t threads, std::size_t per,
                                                 std::size_t x, std::int64_t k, bool release = true) {
  std::int64_t above = 0;
  std::vector<std::uint32_t> keys;
  for (std::size_t t = 0; t < threads; ++t) {
    above += above_n[t * per + x];
    const std::span<const std::uint32_t> got = inside_n[t * per + x].view();
    keys.insert(keys.end(), got.begin(), got.end());
    if (release) inside_n[t * per + x] = {};
  }
  if (!(above < k && k <= above + static_cast<std::int64_t>(keys.size()))) return std::nullopt;
  return small_cut(keys, k - above);
}

// A window per k in ks (sample_window).
inline std::vector<KeyWindow> sample_windows(const std::vector<std::uint32_t>& sample, std::int64_t total,
                                             std::span<const std::int64_t> ks, std::size_t batch = 0) {
  // With batch means, one sort serves every window and their ranks; else
  // two radix selects per window cost less than a sort.
  const std::vector<std::uint32_t> desc = batch > 0 ? sorted_descending(sample) : std::vector<std::uint32_t>{};
  std::vector<KeyWindow> window(ks.size());
  for (std::size_t x = 0; x < ks.size(); ++x) {
    const double q = static_cast<double>(ks[x]) / static_cast<double>(total);
    window[x] = batch > 0 ? sample_window(sample, desc, q, batch) : sample_window(sample, q);
  }
  return window;
}

// The counting pass of a windowed selection: per thread and window, the
// keys above it and the keys inside it, fed chunk by chunk (each chunk
// scanned against every window while it is in L1) from the threads of a
// parallel region; counts are integers and the keys inside are ranked as
// a set, so the cuts do not depend on the thread count.
struct WindowScan {
  std::vector<KeyWindow> window;
  std::size_t threads, m;
  std::vector<std::int64_t> above;
  std::vector<KeyBuffer> inside;
  std::vector<std::uint32_t*> cursor;  // per thread and window, during a scan
  std::vector<const float*> same;      // per thread: m copies of one vector

  explicit WindowScan(std::vector<KeyWindow> w)
      : window(std::move(w)), threads(static_cast<std::size_t>(num_threads())), m(window.size()), above(threads * m, 0),
        inside(threads * m), cursor(threads * m), same(threads * m) {}
  // Thread t's keys inside window x.
  KeyBuffer& keys(std::size_t t, std::size_t x) noexcept { return inside[t * m + x]; }
  // Keys of v[x][0..c) (of v[x] − base where base is given) against
  // window x, every window, for thread t (the calling one), asking for
  // ahead's lines meanwhile (where given).
  template <class E>
  void scan_each(std::size_t t, const E* const* v, const float* base, std::int64_t c,
                 backend::cpu::LinesAhead* ahead = nullptr) {
    std::uint32_t** out = cursor.data() + t * m;
    for (std::size_t x = 0; x < m; ++x) out[x] = keys(t, x).tail(static_cast<std::size_t>(c));
    scan_windows(v, base, c, window, above.data() + t * m, out, best_simd_kernel(), ahead);
    for (std::size_t x = 0; x < m; ++x) keys(t, x).size = static_cast<std::size_t>(out[x] - keys(t, x).keys.get());
  }
  // The same keys against every window, from the calling thread.
  void scan(const float* v, const float* base, std::int64_t c) {
    const auto t = static_cast<std::size_t>(thread_index());
    const float** vs = same.data() + t * m;
    std::fill(vs, vs + m, v);
    scan_each(t, vs, base, c);
  }
  // The cut keeping the k largest keys, where window x holds the k-th;
  // releases the window's keys unless told to keep them.
  std::optional<MagnitudeCut> cut(std::size_t x, std::int64_t k, bool release = true) {
    return cut_in_window(above, inside, threads, m, x, k, release);
  }
};

}  // namespace detail

namespace detail {
// select_top_ks by a radix select over every key, for ks strictly between 0
// and total and sequences longer than select_small: one pass counts the high
// 16 bits of every key, one the low 16 bits inside the high bins the ks fall
// in (visit called twice, whatever the number of ks).
template <class Visit>
std::vector<MagnitudeCut> select_top_ks_radix(Visit&& visit, [[maybe_unused]] std::int64_t total,
                                              std::span<const std::int64_t> ks) {
  std::vector<MagnitudeCut> out(ks.size());
  std::vector<std::size_t> todo(ks.size());
  std::iota(todo.begin(), todo.end(), std::size_t{0});
  std::vector<std::int64_t> hi(detail::high_bins, 0);
  // Pieces of at most 2^31 entries keep the 32-bit per-thread counts exact.
  constexpr std::size_t piece = std::size_t{1} << 31;
  visit([&](std::span<const float> seg) {
    for (std::size_t p = 0; p < seg.size(); p += piece)
      detail::add_high_histogram(seg.subspan(p, std::min(piece, seg.size() - p)), hi);
  });
  // Per k: the high bin holding the k-th largest key, and the count above it.
  std::vector<std::uint32_t> bin(ks.size()), bins;
  std::vector<std::int64_t> above(ks.size(), 0);
  for (std::size_t s : todo) {
    std::tie(bin[s], above[s]) = detail::high_bin_of(hi.data(), ks[s]);
    if (std::find(bins.begin(), bins.end(), bin[s]) == bins.end()) bins.push_back(bin[s]);
  }
  std::vector<std::int64_t> lo(bins.size() * detail::low_bins, 0);
  visit([&](std::span<const float> seg) {
    for (std::size_t p = 0; p < seg.size(); p += piece)
      detail::add_low_histograms(seg.subspan(p, std::min(piece, seg.size() - p)), bins, lo);
  });
  for (std::size_t s : todo) {
    const auto slot = static_cast<std::size_t>(std::find(bins.begin(), bins.end(), bin[s]) - bins.begin());
    out[s] = detail::cut_in_bin(lo.data() + slot * detail::low_bins, bin[s], above[s], ks[s]);
  }
  return out;
}
}  // namespace detail

// Finds, for each k in ks, the cut keeping the k largest magnitudes of a
// sequence of `total` values. `visit(sink)` must call
// sink(std::span<const float>) on the segments of the sequence in order (one
// segment for one tensor; one per tensor for a global selection). Short
// sequences: nth-key radix select over a copy of their keys. Longer ones:
// visit is called twice, whatever the number of ks: a sample (runs of 1024
// keys spread over the sequence, about 32K keys) brackets each k-th largest
// key in a window (sample_window), then one vectorized pass counts the keys
// above each window and collects those inside, among which the cut is
// found. Where a window misses (rare; exactness never depends on the
// sample), the radix select over every key decides (two more visits).
template <class Visit>
std::vector<MagnitudeCut> select_top_ks(Visit&& visit, std::int64_t total, std::span<const std::int64_t> ks) {
  std::vector<MagnitudeCut> out(ks.size());
  std::vector<std::size_t> todo;
  for (std::size_t s = 0; s < ks.size(); ++s) {
    if (ks[s] <= 0) out[s] = MagnitudeCut::keep_none();
    else if (ks[s] >= total) out[s] = MagnitudeCut::keep_all();
    else todo.push_back(s);
  }
  if (todo.empty()) return out;
  if (total <= detail::select_small) {
    std::vector<std::uint32_t> keys;
    keys.reserve(static_cast<std::size_t>(total));
    visit([&](std::span<const float> seg) {
      for (float x : seg) keys.push_back(magnitude_key(x));
    });
    for (std::size_t s : todo) {
      std::vector<std::uint32_t> copy = keys;  // small_cut consumes its keys
      out[s] = detail::small_cut(copy, ks[s]);
    }
    return out;
  }
  // The sample: run r covers sequence entries [r·stride, r·stride + run).
  constexpr std::int64_t run = detail::sample_run;
  const std::int64_t stride = detail::sample_stride(total);
  std::vector<std::uint32_t> sample;
  std::int64_t pos = 0;
  visit([&](std::span<const float> seg) {
    const auto len = static_cast<std::int64_t>(seg.size());
    for (std::int64_t r = pos / stride; len > 0 && r <= (pos + len - 1) / stride; ++r) {
      const std::int64_t lo = std::max(pos, r * stride), hi = std::min(pos + len, r * stride + run);
      for (std::int64_t j = lo; j < hi; ++j) sample.push_back(magnitude_key(seg[static_cast<std::size_t>(j - pos)]));
    }
    pos += len;
  });
  const std::size_t m = todo.size();
  std::vector<std::int64_t> ks_todo(m);
  for (std::size_t x = 0; x < m; ++x) ks_todo[x] = ks[todo[x]];
  detail::WindowScan scan(detail::sample_windows(sample, total, ks_todo));
  visit([&](std::span<const float> seg) {
    parallel_blocks(static_cast<std::int64_t>(seg.size()), detail::select_block, [&](std::int64_t lo, std::int64_t hi) {
      constexpr std::int64_t C = TWIN_CHUNK_ELEMENTS;
      for (std::int64_t c0 = lo; c0 < hi; c0 += C) scan.scan(seg.data() + c0, nullptr, std::min(C, hi - c0));
    });
  });
  std::vector<std::int64_t> missed;
  std::vector<std::size_t> missed_at;
  for (std::size_t x = 0; x < m; ++x) {
    if (const std::optional<MagnitudeCut> c = scan.cut(x, ks_todo[x])) {
      out[todo[x]] = *c;
    } else {
      missed.push_back(ks[todo[x]]);
      missed_at.push_back(todo[x]);
    }
  }
  if (!missed.empty()) {
    const std::vector<MagnitudeCut> exact = detail::select_top_ks_radix(visit, total, missed);
    for (std::size_t x = 0; x < missed.size(); ++x) out[missed_at[x]] = exact[x];
  }
  return out;
}

template <class Visit>
MagnitudeCut select_top_k(Visit&& visit, std::int64_t total, std::int64_t k) {
  const std::int64_t ks[1] = {k};
  return select_top_ks(std::forward<Visit>(visit), total, ks).front();
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

// k = floor(density * n), twin's own count of kept entries (Ties). The tiny
// nudge keeps products such as 0.29 * 100 from flooring to 28.
inline std::int64_t keep_count(double density, std::int64_t n) noexcept {
  const double k = std::floor(density * static_cast<double>(n) + 1e-9);
  return std::clamp<std::int64_t>(static_cast<std::int64_t>(k), 0, n);
}

// mergekit's count of kept entries in its sparsifiers (magnitude,
// magnitude_outliers): Python's int(density * numel), the double product
// truncated with no nudge, so 0.29 * 100 = 28.999999999999996 keeps 28.
inline std::int64_t mergekit_keep_count(double density, std::int64_t n) noexcept {
  return std::clamp<std::int64_t>(static_cast<std::int64_t>(density * static_cast<double>(n)), 0, n);
}

// mergekit's sce count, int(nonzero * select_topk) with nonzero a 0-d int64
// tensor: torch promotes the product to float32, so both factors and the
// product are rounded to float (900 * 0.13 is 116.99999 there: 116 kept;
// 100 * 0.29 is 29).
inline std::int64_t sce_keep_count(double select_topk, std::int64_t nonzero) noexcept {
  const float k = static_cast<float>(nonzero) * static_cast<float>(select_topk);
  return std::clamp<std::int64_t>(static_cast<std::int64_t>(k), 0, nonzero);
}

// The official code's k + 1, k = int(n · density) truncated as Python does
// (clamped to [0, n]): how many entries select_kthvalue selects before it
// adds every tie; above n it keeps everything.
inline std::int64_t kthvalue_count(double density, std::int64_t n) noexcept {
  return std::clamp<std::int64_t>(static_cast<std::int64_t>(static_cast<double>(n) * density), 0, n) + 1;
}

// The official TIES-Merging / Twin-Merging code's trim (topk_values_mask):
// keep every entry whose magnitude is at least the (n − k)-th smallest,
// k = int(n · density) truncated as Python does (no nudge): the k + 1
// largest plus every tie with the last of them. Where k = n (density 1) the
// official code fails (torch's kthvalue(0)); here everything is kept.
// `visit` as for select_top_k.
template <class Visit>
MagnitudeCut select_kthvalue(Visit&& visit, std::int64_t total, double density) {
  const std::int64_t k = kthvalue_count(density, total);
  if (k > total) return MagnitudeCut::keep_all();
  MagnitudeCut cut = select_top_k(std::forward<Visit>(visit), total, k);
  cut.quota = MagnitudeCut::all_ties;
  return cut;
}

// A cut within one block of select_block entries, given the number of ties
// before each block (ties_before_blocks; empty when the cut keeps all of
// its ties or none). Uniform where the block's ties are all kept or all
// dropped: selects(key) then decides each entry alone (a loop that
// vectorizes); otherwise the cursor follows the tie order entry by entry.
struct BlockCut {
  std::uint32_t threshold = 0;
  bool keep_ties = false, uniform = true;
  CutCursor cursor;

  static BlockCut at(const MagnitudeCut& cut, const std::vector<std::int64_t>& ties_before, std::size_t block) {
    const std::int64_t seen = ties_before.empty() ? 0 : ties_before[block];
    const std::int64_t after = ties_before.empty() ? 0 : ties_before[block + 1];
    BlockCut b;
    b.threshold = cut.threshold;
    b.keep_ties = ties_before.empty() ? cut.quota != 0 : after <= cut.quota;
    b.uniform = ties_before.empty() || after <= cut.quota || seen >= cut.quota;
    b.cursor = CutCursor{cut, seen};
    return b;
  }
  bool selects(std::uint32_t key) const noexcept { return (key > threshold) | (keep_ties & (key == threshold)); }
  // The least key selected: for a magnitude key (≤ 0x7fffffff), selects(key)
  // is key ≥ least(), one comparison (0x80000000: none).
  std::uint32_t least() const noexcept {
    if (threshold > 0x7fffffffu) return 0x80000000u;
    return keep_ties ? threshold : threshold + 1;
  }
};

// Zeroes, in place, every entry of v that `keep` does not select or `drop`
// does: one pass for a band of magnitudes (breadcrumbs). Blocks where each
// cut keeps all of its ties or none run a branch-free loop that vectorizes;
// the rest follow the tie order entry by entry.
inline void apply_band(std::span<float> v, const MagnitudeCut& keep, const MagnitudeCut& drop) {
  const std::int64_t n = static_cast<std::int64_t>(v.size());
  const std::int64_t block = detail::select_block;
  std::vector<std::int64_t> prefix[2];
  if (keep.needs_tie_order()) prefix[0] = ties_before_blocks(v, keep.threshold, block);
  if (drop.needs_tie_order()) prefix[1] = ties_before_blocks(v, drop.threshold, block);
  parallel_blocks(n, block, [&](std::int64_t lo, std::int64_t hi) {
    const auto b = static_cast<std::size_t>(lo / block);
    BlockCut k0 = BlockCut::at(keep, prefix[0], b), k1 = BlockCut::at(drop, prefix[1], b);
    float* TWIN_RESTRICT x = v.data();
    if (k0.uniform && k1.uniform) {
      for (std::int64_t i = lo; i < hi; ++i) {
        const std::uint32_t k = magnitude_key(x[i]);
        x[i] = (k0.selects(k) && !k1.selects(k)) ? x[i] : 0.0f;
      }
      return;
    }
    for (std::int64_t i = lo; i < hi; ++i) {
      const bool a = k0.cursor.keep(x[i]), d = k1.cursor.keep(x[i]);  // both cursors see every entry
      if (!a || d) x[i] = 0.0f;
    }
  });
}

// Zeroes, in place, every entry of v the cut does not keep (or, with
// zero_selected, every entry it does keep).
inline void apply_cut(std::span<float> v, const MagnitudeCut& cut, bool zero_selected = false) {
  if (zero_selected) apply_band(v, MagnitudeCut::keep_all(), cut);
  else apply_band(v, cut, MagnitudeCut::keep_none());
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
