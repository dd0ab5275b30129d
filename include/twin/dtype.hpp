// Element types a tensor may be stored in, and the conversions between them.
// Arithmetic is always done in f32 (or f64 in references); f16 and bf16 are
// storage only, converted with round-to-nearest-even.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

#include "twin/error.hpp"

namespace twin {

enum class dtype : std::uint8_t { f32, f16, bf16, f64, i64, i32, i16, i8, u8, boolean };

constexpr std::size_t dtype_size(dtype t) noexcept {
  switch (t) {
    case dtype::f64:
    case dtype::i64: return 8;
    case dtype::f32:
    case dtype::i32: return 4;
    case dtype::f16:
    case dtype::bf16:
    case dtype::i16: return 2;
    case dtype::i8:
    case dtype::u8:
    case dtype::boolean: return 1;
  }
  return 0;
}

constexpr bool dtype_is_float(dtype t) noexcept {
  return t == dtype::f32 || t == dtype::f16 || t == dtype::bf16 || t == dtype::f64;
}

// Names as safetensors spells them (F32, BF16, ...).
constexpr std::string_view dtype_name(dtype t) noexcept {
  switch (t) {
    case dtype::f32: return "F32";
    case dtype::f16: return "F16";
    case dtype::bf16: return "BF16";
    case dtype::f64: return "F64";
    case dtype::i64: return "I64";
    case dtype::i32: return "I32";
    case dtype::i16: return "I16";
    case dtype::i8: return "I8";
    case dtype::u8: return "U8";
    case dtype::boolean: return "BOOL";
  }
  return "?";
}

// Every dtype, in the order messages list them.
inline constexpr dtype all_dtypes[] = {dtype::f32, dtype::f16, dtype::bf16, dtype::f64, dtype::i64,
                                       dtype::i32, dtype::i16, dtype::i8,   dtype::u8,  dtype::boolean};

// "F32 F16 BF16 ...", for messages that say what was expected.
inline std::string dtype_name_list() {
  std::string out;
  for (dtype t : all_dtypes) detail::append_listed(out, dtype_name(t), " ");
  return out;
}

// Accepts the safetensors names and the lower-case short ones (f32, bf16, ...).
inline dtype parse_dtype(std::string_view s) {
  std::string u(s);
  for (char& c : u) c = static_cast<char>((c >= 'a' && c <= 'z') ? c - 'a' + 'A' : c);
  for (dtype t : all_dtypes)
    if (u == dtype_name(t)) return t;
  throw dtype_error("unknown dtype '" + std::string(s) + "': expected one of " + dtype_name_list());
}

inline void require_float(dtype t, std::string_view what) {
  if (!dtype_is_float(t))
    throw dtype_error(std::string(what) + ": expected a float dtype (F32, F16, BF16, F64), found " +
                      std::string(dtype_name(t)));
}

// Storage types for the two 16-bit floats: plain bits, no arithmetic.
struct f16_t {
  std::uint16_t bits;
};
struct bf16_t {
  std::uint16_t bits;
};

// One line per dtype: clang-format would spread each specialization over four lines.
// clang-format off
template <class T> struct dtype_of_impl;
template <> struct dtype_of_impl<float> { static constexpr dtype value = dtype::f32; };
template <> struct dtype_of_impl<double> { static constexpr dtype value = dtype::f64; };
template <> struct dtype_of_impl<f16_t> { static constexpr dtype value = dtype::f16; };
template <> struct dtype_of_impl<bf16_t> { static constexpr dtype value = dtype::bf16; };
template <> struct dtype_of_impl<std::int64_t> { static constexpr dtype value = dtype::i64; };
template <> struct dtype_of_impl<std::int32_t> { static constexpr dtype value = dtype::i32; };
template <> struct dtype_of_impl<std::int16_t> { static constexpr dtype value = dtype::i16; };
template <> struct dtype_of_impl<std::int8_t> { static constexpr dtype value = dtype::i8; };
template <> struct dtype_of_impl<std::uint8_t> { static constexpr dtype value = dtype::u8; };
template <> struct dtype_of_impl<bool> { static constexpr dtype value = dtype::boolean; };
// clang-format on

// dtype_of<float> == dtype::f32; hosts with their own 16-bit types add a
// specialization of dtype_of_impl (adapters/eigen.hpp does for Eigen::half).
template <class T>
inline constexpr dtype dtype_of = dtype_of_impl<std::remove_cv_t<T>>::value;

template <class T>
concept has_dtype = requires {
  dtype_of_impl<std::remove_cv_t<T>>::value;
};

// --- scalar conversions ----------------------------------------------------

constexpr float bf16_to_f32(std::uint16_t h) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16);
}

constexpr std::uint16_t f32_to_bf16(float f) noexcept {
  std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>(x >> 16);
}

constexpr float f16_to_f32(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  const std::uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    // zero or subnormal: mant * 2^-24 is exact in f32
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return std::bit_cast<float>(sign | std::bit_cast<std::uint32_t>(v));
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
}

constexpr std::uint16_t f32_to_f16(float f) noexcept {
  std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u)  // inf or NaN (NaN stays quiet NaN)
    return static_cast<std::uint16_t>(sign | 0x7c00u | (x > 0x7f800000u ? 0x200u : 0u));
  if (x >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds past 65504
  if (x < 0x38800000u) {
    // Result is subnormal: adding 0.5 puts the half's ulp (2^-24) at the
    // float's ulp, so the FPU does the round-to-nearest-even for us.
    const float v = std::bit_cast<float>(x) + 0.5f;
    return static_cast<std::uint16_t>(sign | (std::bit_cast<std::uint32_t>(v) - 0x3f000000u));
  }
  const std::uint32_t odd = (x >> 13) & 1u;
  x += 0xc8000fffu + odd;  // rebias exponent 127 -> 15, round half to even
  return static_cast<std::uint16_t>(sign | (x >> 13));
}

// Reads element i of a buffer of type t as double (any dtype, ints included).
inline double load_as_f64(const void* p, dtype t, std::int64_t i) noexcept {
  switch (t) {
    case dtype::f32: return static_cast<const float*>(p)[i];
    case dtype::f64: return static_cast<const double*>(p)[i];
    case dtype::f16: return f16_to_f32(static_cast<const std::uint16_t*>(p)[i]);
    case dtype::bf16: return bf16_to_f32(static_cast<const std::uint16_t*>(p)[i]);
    case dtype::i64: return static_cast<double>(static_cast<const std::int64_t*>(p)[i]);
    case dtype::i32: return static_cast<const std::int32_t*>(p)[i];
    case dtype::i16: return static_cast<const std::int16_t*>(p)[i];
    case dtype::i8: return static_cast<const std::int8_t*>(p)[i];
    case dtype::u8: return static_cast<const std::uint8_t*>(p)[i];
    case dtype::boolean: return static_cast<const std::uint8_t*>(p)[i] != 0;
  }
  return 0;
}

// Bulk conversion of n contiguous float-typed elements to f32.
inline void convert_to_f32(const void* TWIN_RESTRICT src, dtype t, std::int64_t n, float* TWIN_RESTRICT dst) {
  switch (t) {
    case dtype::f32: {
      const float* s = static_cast<const float*>(src);
      for (std::int64_t i = 0; i < n; ++i) dst[i] = s[i];
      return;
    }
    case dtype::f64: {
      const double* s = static_cast<const double*>(src);
      for (std::int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]);
      return;
    }
    case dtype::bf16: {
      const std::uint16_t* s = static_cast<const std::uint16_t*>(src);
      for (std::int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case dtype::f16: {
      const std::uint16_t* s = static_cast<const std::uint16_t*>(src);
      for (std::int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    default:
      for (std::int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(load_as_f64(src, t, i));
  }
}

// Bulk conversion of n f32 values to a float dtype.
inline void convert_from_f32(const float* TWIN_RESTRICT src, std::int64_t n, void* TWIN_RESTRICT dst, dtype t) {
  switch (t) {
    case dtype::f32: {
      float* d = static_cast<float*>(dst);
      for (std::int64_t i = 0; i < n; ++i) d[i] = src[i];
      return;
    }
    case dtype::f64: {
      double* d = static_cast<double*>(dst);
      for (std::int64_t i = 0; i < n; ++i) d[i] = src[i];
      return;
    }
    case dtype::bf16: {
      std::uint16_t* d = static_cast<std::uint16_t*>(dst);
      for (std::int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case dtype::f16: {
      std::uint16_t* d = static_cast<std::uint16_t*>(dst);
      for (std::int64_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
    default: throw dtype_error("cannot store float values as " + std::string(dtype_name(t)));
  }
}

}  // namespace twin
