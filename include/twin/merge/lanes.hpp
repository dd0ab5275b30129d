// GCC / Clang vector types for the merge kernels that take 8 or 16
// positions at a time with each position's sums in registers across the
// experts, and loads of 16 stored values (f32, or bf16 bits) as f32.
#pragma once

#include <cstdint>
#include <cstring>

#include "twin/dtype.hpp"

namespace twin::detail {

using f32x8 = float __attribute__((vector_size(8 * sizeof(float))));
using f32x16 = float __attribute__((vector_size(16 * sizeof(float))));
using f64x8 = double __attribute__((vector_size(8 * sizeof(double))));
using u16x16 = std::uint16_t __attribute__((vector_size(16 * sizeof(std::uint16_t))));
using u32x8 = std::uint32_t __attribute__((vector_size(8 * sizeof(std::uint32_t))));
using u32x16 = std::uint32_t __attribute__((vector_size(16 * sizeof(std::uint32_t))));
using i32x16 = std::int32_t __attribute__((vector_size(16 * sizeof(std::int32_t))));  // a comparison's mask

inline f32x16 load16(const float* p) noexcept {
  f32x16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// 16 bf16 values (their bits) widened to f32: exact.
inline f32x16 load16(const std::uint16_t* p) noexcept {
  u16x16 h;
  std::memcpy(&h, p, sizeof h);
  const u32x16 w = __builtin_convertvector(h, u32x16) << 16;
  f32x16 v;
  std::memcpy(&v, &w, sizeof v);
  return v;
}

inline void store16(float* p, const f32x16& v) noexcept { std::memcpy(p, &v, sizeof v); }

inline float load1(const float* p) noexcept { return *p; }
inline float load1(const std::uint16_t* p) noexcept { return bf16_to_f32(*p); }

}  // namespace twin::detail
