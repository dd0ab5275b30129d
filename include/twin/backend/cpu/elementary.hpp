// exp and log in double as branch-free polynomial kernels, so that a loop
// calling them over an array vectorizes (libm's scalar calls do not):
//   exp_nonpositive(x), x ≤ 0: x = k·ln 2 + r with k = round(x / ln 2)
//     (ln 2 split in a 33-bit head, exact times k, and a tail), e^r by its
//     Taylor series to r¹³ (|r| ≤ ln 2 / 2: truncation below 10⁻¹⁷
//     relative), times 2^k built in the exponent bits; 0 below −708, where
//     e^x is under 2⁻¹⁰²¹ (callers adding anything of normal size lose it);
//   log_positive(y), y a positive normal number (or +inf): y = 2^e·m with
//     m ∈ [√½, √2), log m = 2·atanh(s) with s = (m − 1)/(m + 1), |s| ≤ 0.172,
//     by its series to s²³ (truncation below 10⁻¹⁷ relative), plus e·ln 2.
// Both are within 2 ulp of the correctly rounded value (tests/test_merge_mergekit.cpp
// measures 1 ulp for exp, 2 for log over their domains); NaN gives NaN.
// The exact operations depend only on the build's floating-point
// contraction (FMA), never on the vector width.
#pragma once

#include <bit>
#include <cstdint>
#include <limits>
#include <utility>

#include "twin/config.hpp"

namespace twin::cpu {

// 1/k! as a double (k! is exact in double up to 22!).
constexpr double inv_factorial(int k) noexcept {
  double f = 1.0;
  for (int i = 2; i <= k; ++i) f *= i;
  return 1.0 / f;
}

template <int K>
constexpr double inv_factorial_v = inv_factorial(K);

template <int N, int... K>
TWIN_ALWAYS_INLINE double exp_taylor_steps(double r, std::integer_sequence<int, K...>) noexcept {
  double p = inv_factorial_v<N>;
  ((p = p * r + inv_factorial_v<N - 1 - K>), ...);
  return p;
}

// Σ_{k=0..N} r^k/k!, the Taylor series of e^r to r^N, by Horner's rule from
// the top term (each step p·r + 1/k!, contracted to an FMA where the build
// contracts).
template <int N>
TWIN_ALWAYS_INLINE double exp_taylor(double r) noexcept {
  return exp_taylor_steps<N>(r, std::make_integer_sequence<int, N>{});
}

TWIN_ALWAYS_INLINE double exp_nonpositive(double x) noexcept {
  constexpr double shifter = 0x1.8p52;  // adding it rounds to an integer, kept in the low bits
  constexpr double log2e = 0x1.71547652b82fep0;
  constexpr double ln2_hi = 0x1.62e42fee00000p-1, ln2_lo = 0x1.a39ef35793c76p-33;
  const double xc = x < -708.0 ? -708.0 : x;
  const double t = xc * log2e + shifter;
  const double k = t - shifter;
  const double r = (xc - k * ln2_hi) - k * ln2_lo;
  const double p = exp_taylor<13>(r);
  // 2^k: the low bits of t hold k (two's complement); k + 1023 ∈ [2, 1023].
  const double scale = std::bit_cast<double>((std::bit_cast<std::uint64_t>(t) + 1023u) << 52);
  return x < -708.0 ? 0.0 : p * scale;
}

TWIN_ALWAYS_INLINE double log_positive(double y) noexcept {
  constexpr double ln2_hi = 0x1.62e42fee00000p-1, ln2_lo = 0x1.a39ef35793c76p-33;
  const std::uint64_t bits = std::bit_cast<std::uint64_t>(y);
  // The exponent field as a double, without an integer conversion.
  const double field = std::bit_cast<double>(0x4330000000000000u | (bits >> 52)) - 0x1p52;
  double m = std::bit_cast<double>((bits & 0x000fffffffffffffu) | 0x3ff0000000000000u);  // [1, 2)
  const bool high = m > 0x1.6a09e667f3bcdp0;                                             // √2
  m = high ? 0.5 * m : m;
  const double e = field - (high ? 1022.0 : 1023.0);
  const double f = m - 1.0;  // exact
  const double s = f / (2.0 + f), z = s * s;
  double q = 1.0 / 23.0;
  q = q * z + 1.0 / 21.0;
  q = q * z + 1.0 / 19.0;
  q = q * z + 1.0 / 17.0;
  q = q * z + 1.0 / 15.0;
  q = q * z + 1.0 / 13.0;
  q = q * z + 1.0 / 11.0;
  q = q * z + 1.0 / 9.0;
  q = q * z + 1.0 / 7.0;
  q = q * z + 1.0 / 5.0;
  q = q * z + 1.0 / 3.0;
  const double two_s = 2.0 * s;
  const double out = e * ln2_hi + (two_s + (two_s * (z * q) + e * ln2_lo));
  // +inf stays +inf; NaN and negative numbers give NaN.
  return bits < 0x7ff0000000000000u ? out : y > 0.0 ? y : std::numeric_limits<double>::quiet_NaN();
}

}  // namespace twin::cpu
