// C = S + A·Bᵀ on AVX-512 BF16 dot products (vdpbf16ps), the fusion's
// product with bf16 factors (docs/design.md §8): A [M×K] bf16, S and C [M×N]
// both bf16 or both f32, B given once in pairs order (pack_bf16_pairs) and
// reused by every row block. Each entry is Σ_k a_k·b_k over the pairs
// (k, k+1) in order, summed in f32 (bf16 products are exact in f32), S added
// in f32, a bf16 C rounded once to nearest even: the arithmetic of oneDNN's
// bf16 matmul with a sum post-op, without its B repacked on every call and S
// copied into C first. The bits of an entry depend on its row and column
// only, never on the blocking or the thread count. The kernel is compiled
// for AVX-512 BF16 by function target whatever the build's -march, and runs
// where cpuid has it (bf16_pairs_cpu).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "twin/backend/cpu/switch.hpp"
#include "twin/config.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#  define TWIN_BF16_PAIRS 1
#  include <immintrin.h>
#else
#  define TWIN_BF16_PAIRS 0
#endif

namespace twin::backend::cpu {

// Whether this CPU has the AVX-512 BF16 instructions the kernel uses.
inline bool bf16_pairs_cpu() noexcept {
#if TWIN_BF16_PAIRS
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
  return ok;
#else
  return false;
#endif
}

namespace detail {
inline EnvSwitch bf16_pairs_switch{"TWIN_BF16_PAIRS"};
}  // namespace detail

// Whether callers should use the kernel: the CPU has it, and neither
// set_bf16_pairs(false) nor TWIN_BF16_PAIRS=0 in the environment turned it
// off (the fusion then takes oneDNN's product; tests compare the two).
inline bool bf16_pairs_enabled() noexcept { return detail::bf16_pairs_switch.on() && bf16_pairs_cpu(); }

inline void set_bf16_pairs(bool allowed) noexcept { detail::bf16_pairs_switch.set(allowed); }

// Entries of B [N×K] (row j at B + j·ldb) in pairs order: out[(p·N + j)·2 + e]
// = B[j][2p + e] for p < ⌈K/2⌉, a zero where 2p + e = K. Rows [j0, j1) only,
// so that callers can spread the packing over threads.
inline void pack_bf16_pairs(const std::uint16_t* B, std::int64_t N, std::int64_t K, std::int64_t ldb, std::int64_t j0,
                            std::int64_t j1, std::uint16_t* out) {
  // 16 rows at a time, pair after pair: the rows' pairs (4 KiB at K = 128)
  // stay in L1 while each pair's 16 entries are written side by side.
  const std::int64_t pairs = K / 2;
  for (std::int64_t jb = j0; jb < j1; jb += 16) {
    const std::int64_t je = std::min(j1, jb + 16);
    for (std::int64_t p = 0; p < pairs; ++p)
      for (std::int64_t j = jb; j < je; ++j) std::memcpy(out + (p * N + j) * 2, B + j * ldb + 2 * p, 4);
    if (K & 1)
      for (std::int64_t j = jb; j < je; ++j) {
        out[(pairs * N + j) * 2] = B[j * ldb + K - 1];
        out[(pairs * N + j) * 2 + 1] = 0;
      }
  }
}

// Elements of pack_bf16_pairs' output for N rows of K.
constexpr std::int64_t bf16_pairs_size(std::int64_t N, std::int64_t K) noexcept { return (K + 1) / 2 * N * 2; }

#if TWIN_BF16_PAIRS
namespace detail {

// GCC 12 at -O2 keeps the accumulator array in memory (3× slower); the
// kernel asks for -O3's treatment whatever the build's level.
#  if defined(__clang__)
#    define TWIN_BF16_PAIRS_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#  else
#    define TWIN_BF16_PAIRS_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"), optimize("O3")))
#  endif

// MR rows × NV·16 columns of C; `last` masks the columns of the last vector.
// MR·NV accumulators stay in registers over all K (24 of the 32 at 6 × 4).
// T: std::uint16_t (bf16 bits) or float, the type of S and C.
template <int MR, int NV, class T>
TWIN_BF16_PAIRS_TARGET void bf16_pairs_tile(std::int64_t K, const std::uint16_t* A, std::int64_t lda,
                                            const std::uint16_t* Bp, std::int64_t N, const T* S, std::int64_t lds, T* C,
                                            std::int64_t ldc, __mmask16 last) {
  __m512 acc[MR][NV];
#  pragma GCC unroll 32
  for (int r = 0; r < MR; ++r)
#  pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  // θ* and C come from memory: the lines of the tile after next in these
  // rows are fetched while this one computes (prefetches past a row's end
  // are harmless).
  constexpr std::int64_t ahead = 128, line = 64 / sizeof(T);
#  pragma GCC unroll 32
  for (int r = 0; r < MR; ++r)
#  pragma GCC unroll 4
    for (std::int64_t e = 0; e < 64; e += line) {
      __builtin_prefetch(S + r * lds + ahead + e, 0, 3);
      __builtin_prefetch(C + r * ldc + ahead + e, 1, 3);
    }
  const std::int64_t pairs = (K + 1) / 2;
  for (std::int64_t p = 0; p < pairs; ++p) {
    const std::uint16_t* bp = Bp + p * N * 2;
    __m512bh b[NV];
#  pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      b[v] = (__m512bh)_mm512_maskz_loadu_epi32(v + 1 == NV ? last : __mmask16(0xFFFF), bp + v * 32);
    // An odd K's last pair is the row's last entry and a zero (B's packed
    // zero alone would not do: 0 · a NaN read past the row is a NaN).
    const bool whole = 2 * p + 1 < K;
#  pragma GCC unroll 32
    for (int r = 0; r < MR; ++r) {
      std::uint32_t x = A[r * lda + 2 * p];
      if (whole) std::memcpy(&x, A + r * lda + 2 * p, sizeof x);
      const auto xv = (__m512bh)_mm512_set1_epi32(static_cast<int>(x));
#  pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], xv, b[v]);
    }
  }
#  pragma GCC unroll 32
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) {
      const __mmask16 m = v + 1 == NV ? last : __mmask16(0xFFFF);
      if constexpr (std::is_same_v<T, float>) {
        const __m512 sf = _mm512_maskz_loadu_ps(m, S + r * lds + v * 16);
        _mm512_mask_storeu_ps(C + r * ldc + v * 16, m, _mm512_add_ps(acc[r][v], sf));
      } else {
        const __m256i s = _mm256_maskz_loadu_epi16(m, S + r * lds + v * 16);
        // Widened by the zero-masked forms: the unmasked ones start from an
        // undefined register that GCC 12 warns about under a function target.
        const __m512 sf = _mm512_castsi512_ps(
            _mm512_maskz_slli_epi32(__mmask16(0xFFFF), _mm512_maskz_cvtepu16_epi32(__mmask16(0xFFFF), s), 16));
        const __m256bh o = _mm512_cvtneps_pbh(_mm512_add_ps(acc[r][v], sf));
        _mm256_mask_storeu_epi16(C + r * ldc + v * 16, m, (__m256i)o);
      }
    }
}

template <int MR, class T>
TWIN_BF16_PAIRS_TARGET void bf16_pairs_row_tile(std::int64_t N, std::int64_t K, const std::uint16_t* A,
                                                std::int64_t lda, const std::uint16_t* Bp, std::int64_t j0, const T* S,
                                                std::int64_t lds, T* C, std::int64_t ldc) {
  const std::int64_t w = std::min<std::int64_t>(64, N - j0);
  const int nv = static_cast<int>((w + 15) / 16);
  const auto last = static_cast<__mmask16>((1u << (w - (nv - 1) * 16)) - 1u);
  const std::uint16_t* bp = Bp + j0 * 2;
  switch (nv) {
    case 1: bf16_pairs_tile<MR, 1, T>(K, A, lda, bp, N, S + j0, lds, C + j0, ldc, last); break;
    case 2: bf16_pairs_tile<MR, 2, T>(K, A, lda, bp, N, S + j0, lds, C + j0, ldc, last); break;
    case 3: bf16_pairs_tile<MR, 3, T>(K, A, lda, bp, N, S + j0, lds, C + j0, ldc, last); break;
    default: bf16_pairs_tile<MR, 4, T>(K, A, lda, bp, N, S + j0, lds, C + j0, ldc, last); break;
  }
}

#  undef TWIN_BF16_PAIRS_TARGET

}  // namespace detail
#endif

// Rows of C per tile of add_product_bf16_pairs.
inline constexpr std::int64_t bf16_pairs_rows = 6;

// C = S + A·Bᵀ for M rows, Bp = pack_bf16_pairs of B [N×K]; S and C both
// bf16 (T = std::uint16_t: the sum rounded once) or both f32 (T = float).
// Callers check bf16_pairs_cpu() first. Row blocks of a few dozen rows suit
// it.
template <class T>
void add_product_bf16_pairs(std::int64_t M, std::int64_t N, std::int64_t K, const std::uint16_t* A, std::int64_t lda,
                            const std::uint16_t* Bp, const T* S, std::int64_t lds, T* C, std::int64_t ldc) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, std::uint16_t>);
#if TWIN_BF16_PAIRS
  // Columns in chunks whose part of Bp (≤ ~256 KiB at K = 128) stays in L2;
  // within a chunk row tiles outer, panels inner: θ* and C pass as 6
  // sequential streams that the prefetchers follow from memory.
  const std::int64_t chunk =
      std::max<std::int64_t>(64, (std::int64_t{1} << 17) / std::max<std::int64_t>(K, 1) / 64 * 64);
  for (std::int64_t c0 = 0; c0 < N; c0 += chunk) {
    const std::int64_t c1 = std::min(N, c0 + chunk);
    std::int64_t i = 0;
    for (; i + bf16_pairs_rows <= M; i += bf16_pairs_rows)
      for (std::int64_t j0 = c0; j0 < c1; j0 += 64)
        detail::bf16_pairs_row_tile<bf16_pairs_rows, T>(N, K, A + i * lda, lda, Bp, j0, S + i * lds, lds, C + i * ldc,
                                                        ldc);
    const std::uint16_t* a = A + i * lda;
    const T* s = S + i * lds;
    T* c = C + i * ldc;
    for (std::int64_t j0 = c0; j0 < c1; j0 += 64) switch (M - i) {
        case 0: break;
        case 1: detail::bf16_pairs_row_tile<1, T>(N, K, a, lda, Bp, j0, s, lds, c, ldc); break;
        case 2: detail::bf16_pairs_row_tile<2, T>(N, K, a, lda, Bp, j0, s, lds, c, ldc); break;
        case 3: detail::bf16_pairs_row_tile<3, T>(N, K, a, lda, Bp, j0, s, lds, c, ldc); break;
        case 4: detail::bf16_pairs_row_tile<4, T>(N, K, a, lda, Bp, j0, s, lds, c, ldc); break;
        default: detail::bf16_pairs_row_tile<5, T>(N, K, a, lda, Bp, j0, s, lds, c, ldc); break;
      }
  }
#else
  (void)M, (void)N, (void)K, (void)A, (void)lda, (void)Bp, (void)S, (void)lds, (void)C, (void)ldc;
#endif
}

#if TWIN_EXTERN_TEMPLATES
TWIN_TEMPLATE_INSTANCE void add_product_bf16_pairs<float>(std::int64_t, std::int64_t, std::int64_t,
                                                          const std::uint16_t*, std::int64_t, const std::uint16_t*,
                                                          const float*, std::int64_t, float*, std::int64_t);
TWIN_TEMPLATE_INSTANCE void add_product_bf16_pairs<std::uint16_t>(std::int64_t, std::int64_t, std::int64_t,
                                                                  const std::uint16_t*, std::int64_t,
                                                                  const std::uint16_t*, const std::uint16_t*,
                                                                  std::int64_t, std::uint16_t*, std::int64_t);
#endif

}  // namespace twin::backend::cpu
