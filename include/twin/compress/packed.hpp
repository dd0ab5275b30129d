// Packed forms of exclusive knowledge (docs/design.md §2, "Exclusive modules
// at a fraction of the bytes"): group-wise int8 / int4 quantization of
// low-rank factors, and bit-packed signs and masks.
//
// Quantization. A factor M [n×r] (row-major, as A and B are stored) is
// quantized column by column, because A = UΣ carries σ_j in column j: each
// column's n values are cut into groups of `group` consecutive rows, and a
// group holds q_i = round(x_i / s) with one f16 scale s per group,
//   s = max_i |x_i| / qmax rounded UP to an f16 (qmax = 127 for 8 bits,
//   7 for 4), so |q_i| ≤ qmax without clamping and |x_i − q_i·s| ≤ s / 2.
// Codes are stored column-major: I8 [r, n] for 8 bits; U8 [r, ceil(n/2)]
// for 4 bits, two's-complement nibbles, the even row in the low nibble.
// Scales are F16 [r, ceil(n / group)].
//
// Bits. A bit vector over n entries is U8 [ceil(n/8)], entry i in bit i % 8
// (least significant first) of byte i / 8; the padding bits of the last byte
// are zero.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "twin/error.hpp"
#include "twin/tensor.hpp"

namespace twin {

struct QuantSpec {
  int bits = 0;             // 8 or 4; 0: not quantized
  std::int64_t group = 64;  // rows per scale, ≥ 1

  bool enabled() const noexcept { return bits != 0; }
  int qmax() const noexcept { return bits == 8 ? 127 : 7; }
  void validate(const std::string& what) const {
    if (bits != 8 && bits != 4)
      throw argument_error(what + ": quantization bits must be 8 or 4, found " + std::to_string(bits));
    // The group size is stored as I32 in a model file.
    if (group < 1 || group > std::numeric_limits<std::int32_t>::max())
      throw argument_error(what + ": quantization group size must be in [1, 2^31 - 1], found " + std::to_string(group));
  }
  // Bytes of the codes of one column of n values, and its scale count.
  std::int64_t code_bytes(std::int64_t n) const noexcept { return bits == 8 ? n : (n + 1) / 2; }
  std::int64_t groups(std::int64_t n) const noexcept { return n <= 0 ? 0 : (n - 1) / group + 1; }
};

// One quantized factor: codes and scales as above.
struct QuantizedFactor {
  Tensor codes, scales;
};

namespace detail {
// The smallest f16 not below x (x ≥ 0 and finite); +inf past f16's range.
inline std::uint16_t f16_at_least(float x) noexcept {
  std::uint16_t h = f32_to_f16(x);
  if (f16_to_f32(h) < x) ++h;  // positive f16 bit patterns are ordered
  return h;
}
}  // namespace detail

// Quantizes M [n×r] (row-major f32). `name` is for errors only.
inline QuantizedFactor quantize_factor(const float* m, std::int64_t n, std::int64_t r, const QuantSpec& q,
                                       const std::string& name) {
  q.validate(name);
  const std::int64_t cb = q.code_bytes(n), ng = q.groups(n);
  const std::int64_t cshape[2] = {r, cb}, sshape[2] = {r, ng};
  QuantizedFactor f{Tensor(q.bits == 8 ? dtype::i8 : dtype::u8, cshape), Tensor(dtype::f16, sshape)};
  auto* codes = static_cast<std::uint8_t*>(f.codes.mutable_data());
  auto* scales = static_cast<std::uint16_t*>(f.scales.mutable_data());
  if (r * cb > 0) std::memset(codes, 0, static_cast<std::size_t>(r * cb));  // no storage at rank 0
  const float qmax = static_cast<float>(q.qmax());
  for (std::int64_t j = 0; j < r; ++j)
    for (std::int64_t g = 0; g < ng; ++g) {
      const std::int64_t i0 = g * q.group, i1 = std::min(n, i0 + q.group);
      float amax = 0.0f;
      bool finite = true;
      for (std::int64_t i = i0; i < i1; ++i) {
        const float x = m[i * r + j];
        finite = finite && std::isfinite(x);
        amax = std::max(amax, std::abs(x));
      }
      if (!finite) throw numeric_error(name + ": cannot quantize a non-finite factor");
      const std::uint16_t sh = detail::f16_at_least(amax / qmax);
      const float s = f16_to_f32(sh);
      if (!std::isfinite(s))
        throw numeric_error(name + ": factor values up to " + std::to_string(amax) + " exceed what f16 scales hold");
      scales[j * ng + g] = sh;
      if (s == 0.0f) continue;
      for (std::int64_t i = i0; i < i1; ++i) {
        const int c = static_cast<int>(std::nearbyint(m[i * r + j] / s));
        if (q.bits == 8) codes[j * cb + i] = static_cast<std::uint8_t>(static_cast<std::int8_t>(c));
        else codes[j * cb + i / 2] |= static_cast<std::uint8_t>((c & 0xf) << (4 * (i & 1)));
      }
    }
  return f;
}

// Checks that codes and scales fit M [n×r] under spec q (shape_error /
// dtype_error naming `what`).
inline void check_quantized_factor(const QuantizedFactor& f, std::int64_t n, std::int64_t r, const QuantSpec& q,
                                   const std::string& what) {
  q.validate(what);
  const dtype want = q.bits == 8 ? dtype::i8 : dtype::u8;
  if (f.codes.dtype() != want || f.codes.rank() != 2 || f.codes.dim(0) != r || f.codes.dim(1) != q.code_bytes(n))
    throw shape_error(what + ": codes " + std::string(dtype_name(f.codes.dtype())) + " " + f.codes.shape_str() +
                      " do not hold " + std::to_string(q.bits) + "-bit codes of a [" + std::to_string(n) + "x" +
                      std::to_string(r) + "] factor (expected " + std::string(dtype_name(want)) + " [" +
                      std::to_string(r) + ", " + std::to_string(q.code_bytes(n)) + "])");
  if (f.scales.dtype() != dtype::f16 || f.scales.rank() != 2 || f.scales.dim(0) != r || f.scales.dim(1) != q.groups(n))
    throw shape_error(what + ": scales " + std::string(dtype_name(f.scales.dtype())) + " " + f.scales.shape_str() +
                      " do not match groups of " + std::to_string(q.group) + " (expected F16 [" + std::to_string(r) +
                      ", " + std::to_string(q.groups(n)) + "])");
  const auto* s = static_cast<const std::uint16_t*>(f.scales.data());
  for (std::int64_t i = 0; i < f.scales.numel(); ++i) {
    const float v = f16_to_f32(s[i]);
    if (!(v >= 0.0f) || !std::isfinite(v))
      throw shape_error(what + ": scale " + std::to_string(i) + " is negative or not finite");
  }
}

// out [n×r] row-major = the dequantized factor.
inline void dequantize_factor(const QuantizedFactor& f, std::int64_t n, std::int64_t r, const QuantSpec& q,
                              float* out) {
  const std::int64_t cb = q.code_bytes(n), ng = q.groups(n);
  const auto* codes = static_cast<const std::uint8_t*>(f.codes.data());
  const auto* scales = static_cast<const std::uint16_t*>(f.scales.data());
  for (std::int64_t j = 0; j < r; ++j)
    for (std::int64_t i = 0; i < n; ++i) {
      int c;
      if (q.bits == 8) c = static_cast<std::int8_t>(codes[j * cb + i]);
      else c = static_cast<std::int8_t>(static_cast<std::uint8_t>(codes[j * cb + i / 2] >> (4 * (i & 1)) << 4)) >> 4;
      out[i * r + j] = static_cast<float>(c) * f16_to_f32(scales[j * ng + i / q.group]);
    }
}

// --- bits --------------------------------------------------------------------
inline std::int64_t bit_bytes(std::int64_t n) noexcept { return (n + 7) / 8; }
inline bool bit_at(const std::uint8_t* bits, std::int64_t i) noexcept { return (bits[i >> 3] >> (i & 7)) & 1u; }
inline void set_bit(std::uint8_t* bits, std::int64_t i) noexcept {
  bits[i >> 3] = static_cast<std::uint8_t>(bits[i >> 3] | (1u << (i & 7)));
}

namespace detail {
// ±1 for the 8 entries of a sign byte (bit set: negative), and 0/1 for a
// mask byte: a fused sign module is dst += α · sign_table[s] ⊙ mask_table[m],
// eight lanes at a time.
struct BitTables {
  alignas(32) float sign[256][8];
  alignas(32) float mask[256][8];
  BitTables() {
    for (int b = 0; b < 256; ++b)
      for (int k = 0; k < 8; ++k) {
        sign[b][k] = (b >> k) & 1 ? -1.0f : 1.0f;
        mask[b][k] = (b >> k) & 1 ? 1.0f : 0.0f;
      }
  }
};
inline const BitTables& bit_tables() {
  static const BitTables t;
  return t;
}
}  // namespace detail

// dst[j] += a · (mask_i ? ±1 : 0) for entries i = first + j, j < len, signs
// and mask (null: every entry kept) as bit vectors.
inline void sign_axpy(const std::uint8_t* signs, const std::uint8_t* mask, std::int64_t first, std::int64_t len,
                      float a, float* dst) {
  const detail::BitTables& tb = detail::bit_tables();
  std::int64_t j = 0;
  auto one = [&](std::int64_t jj) {
    const std::int64_t i = first + jj;
    if (!mask || bit_at(mask, i)) dst[jj] += bit_at(signs, i) ? -a : a;
  };
  for (; j < len && ((first + j) & 7) != 0; ++j) one(j);
  for (; j + 8 <= len; j += 8) {
    const std::int64_t byte = (first + j) >> 3;
    const float* s = tb.sign[signs[byte]];
    float* d = dst + j;
    if (mask) {
      const float* mk = tb.mask[mask[byte]];
      for (int k = 0; k < 8; ++k) d[k] += a * s[k] * mk[k];
    } else {
      for (int k = 0; k < 8; ++k) d[k] += a * s[k];
    }
  }
  for (; j < len; ++j) one(j);
}

}  // namespace twin
