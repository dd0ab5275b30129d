// GCC / Clang vector types for the merge kernels that take several
// positions at a time with each position's sums in registers across the
// experts.
#pragma once

#include <cstdint>
#include <cstring>

#include "twin/config.hpp"
#include "twin/dtype.hpp"

namespace twin::detail {

// The kernels' f32 vectors, as wide as the build's widest vector registers
// (16 lanes with AVX-512, 8 with AVX, 4 otherwise): each lane is an element
// of its own, so the width changes the speed, never a result, and no vector
// is wider than the registers the build passes them in.
#if defined(__AVX512F__)
inline constexpr std::int64_t simd_lanes = 16;
#elif defined(__AVX__)
inline constexpr std::int64_t simd_lanes = 8;
#else
inline constexpr std::int64_t simd_lanes = 4;
#endif
using f32v = float __attribute__((vector_size(simd_lanes * sizeof(float))));
using u32v = std::uint32_t __attribute__((vector_size(simd_lanes * sizeof(std::uint32_t))));
using i32v = std::int32_t __attribute__((vector_size(simd_lanes * sizeof(std::int32_t))));  // a comparison's mask

// Vectors of W f32 lanes (W = 0: the build's own, f32v) for kernels
// compiled at either width: the AVX-512 copies of a build without AVX-512
// run them 16 lanes wide (backend/cpu/avx512_copies.hpp,
// with_avx512_copy_width). Values of a wider type than the build's stay in
// the kernel's locals (loaded and stored through memcpy, selects as
// bitwise ands: keep_lanes below), never passed across a function that is
// not inlined.
template <std::int64_t N>
struct LaneTypes;  // f32, u32 and u16 vectors of N lanes (GCC takes no dependent vector_size)
template <>
struct LaneTypes<4> {
  using f32 = float __attribute__((vector_size(16)));
  using u32 = std::uint32_t __attribute__((vector_size(16)));
  using u16 = std::uint16_t __attribute__((vector_size(8)));
};
template <>
struct LaneTypes<8> {
  using f32 = float __attribute__((vector_size(32)));
  using u32 = std::uint32_t __attribute__((vector_size(32)));
  using u16 = std::uint16_t __attribute__((vector_size(16)));
};
template <>
struct LaneTypes<16> {
  using f32 = float __attribute__((vector_size(64)));
  using u32 = std::uint32_t __attribute__((vector_size(64)));
  using u16 = std::uint16_t __attribute__((vector_size(32)));
};
// The integer vector of a comparison of V's lanes, as a variable holds it:
// `const LaneMask<V> m = (LaneMask<V>)(x > 0.0f)`, never `const auto m = x >
// 0.0f`. A comparison kept as such in a variable and combined with others
// (&, |, ~) is typed for the build's own instructions, and the AVX-512
// copy of a build without AVX-512 computes it one lane at a time (GCC folds
// `c ? ~0 : 0` back into the comparison; a cast does not): breadcrumbs_ties
// took 2× the time of its 4-lane build until its sign masks were cast.
template <class V>
using LaneMask = typename LaneTypes<sizeof(V) / sizeof(float)>::u32;

template <int W>
struct Lanes {
  static constexpr std::int64_t n = W == 0 ? simd_lanes : W;
  using f32 = typename LaneTypes<n>::f32;
  using u32 = typename LaneTypes<n>::u32;
  using u16 = typename LaneTypes<n>::u16;
  // x = n f32 values at p (out parameters: a value of a type wider than
  // the build's is not returned, whose ABI would differ).
  TWIN_ALWAYS_INLINE static void load(f32& x, const float* p) noexcept { std::memcpy(&x, p, sizeof x); }
  // x = n bf16 values (their bits) at p widened to f32: exact.
  TWIN_ALWAYS_INLINE static void load(f32& x, const std::uint16_t* p) noexcept {
    u16 h;
    std::memcpy(&h, p, sizeof h);
    const u32 w = __builtin_convertvector(h, u32) << 16;
    std::memcpy(&x, &w, sizeof x);
  }
};

// simd_lanes f32 values at p.
inline f32v loadv(const float* p) noexcept {
  f32v x;
  Lanes<0>::load(x, p);
  return x;
}

// One stored value as f32 (the kernels' scalar tails).
inline float load1(const float* p) noexcept { return *p; }
inline float load1(const std::uint16_t* p) noexcept { return bf16_to_f32(*p); }

// Vectors of a fixed width, for kernels written for AVX-512's 16 f32 lanes
// (or 8 f64) whatever the build: kept in locals, loaded and stored through
// memcpy, never passed or returned by value (the ABI of a 64-byte vector
// differs between builds with and without AVX-512) nor kept in arrays on the
// heap: a build without AVX aligns them to 16 bytes, not their size, and the
// AVX-512 copies of the loops (backend/cpu/avx512_copies.hpp) would load
// them as size-aligned.
using f32x8 = float __attribute__((vector_size(8 * sizeof(float))));
using f32x16 = float __attribute__((vector_size(16 * sizeof(float))));
using f64x8 = double __attribute__((vector_size(8 * sizeof(double))));
using u32x8 = std::uint32_t __attribute__((vector_size(8 * sizeof(std::uint32_t))));
using u32x16 = std::uint32_t __attribute__((vector_size(16 * sizeof(std::uint32_t))));
using i32x16 = std::int32_t __attribute__((vector_size(16 * sizeof(std::int32_t))));  // a comparison's mask
using i64x8 = std::int64_t __attribute__((vector_size(8 * sizeof(std::int64_t))));    // a comparison's mask

// x's lanes where m is all ones, +0 where it is 0: `m ? x : 0` as a bitwise
// and. A ?: on a mask held in a variable, not a comparison written in
// place, is what the AVX-512 copies (backend/cpu/avx512_copies.hpp) of a
// build without AVX-512 compile one lane at a time: GCC typed the mask for
// the build's own instructions (a vector, not a mask register). M: an
// integer vector of x's size.
template <class V, class M>
TWIN_ALWAYS_INLINE void keep_lanes(V& x, const M& m) noexcept {
  static_assert(sizeof(V) == sizeof(M));
  M bits;
  std::memcpy(&bits, &x, sizeof bits);
  bits &= m;
  std::memcpy(&x, &bits, sizeof x);
}

// x = m ? y : x lane by lane, as bitwise operations (see keep_lanes).
template <class V, class M>
TWIN_ALWAYS_INLINE void take_lanes(V& x, const V& y, const M& m) noexcept {
  static_assert(sizeof(V) == sizeof(M));
  M bx, by;
  std::memcpy(&bx, &x, sizeof bx);
  std::memcpy(&by, &y, sizeof by);
  bx = (by & m) | (bx & ~m);
  std::memcpy(&x, &bx, sizeof x);
}

}  // namespace twin::detail
