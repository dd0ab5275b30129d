// Shapes and strides as twin carries them: the device tag, inline extents
// (no allocation per view), checked element counts for shapes that come from
// untrusted files, and the shape check every operation reports through.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>

#include "twin/config.hpp"
#include "twin/error.hpp"

namespace twin {

struct device {
  enum kind_t : std::uint8_t { cpu, cuda };
  kind_t kind = cpu;
  int index = 0;
  friend bool operator==(const device&, const device&) = default;
};

// Shape or strides, stored inline up to TWIN_MAX_RANK.
class Extents {
 public:
  Extents() = default;
  Extents(std::span<const std::int64_t> v) { assign(v); }
  Extents(std::initializer_list<std::int64_t> v) { assign(std::span<const std::int64_t>(v.begin(), v.size())); }

  void assign(std::span<const std::int64_t> v) {
    if (v.size() > TWIN_MAX_RANK)
      throw shape_error("tensor rank " + std::to_string(v.size()) + " exceeds TWIN_MAX_RANK (" +
                        std::to_string(TWIN_MAX_RANK) + ")");
    rank_ = static_cast<int>(v.size());
    std::copy(v.begin(), v.end(), v_.begin());
  }
  int size() const noexcept { return rank_; }
  std::int64_t operator[](int i) const noexcept { return v_[static_cast<std::size_t>(i)]; }
  std::int64_t& operator[](int i) noexcept { return v_[static_cast<std::size_t>(i)]; }
  std::span<const std::int64_t> span() const noexcept { return {v_.data(), static_cast<std::size_t>(rank_)}; }
  const std::int64_t* begin() const noexcept { return v_.data(); }
  const std::int64_t* end() const noexcept { return v_.data() + rank_; }

  friend bool operator==(const Extents& a, const Extents& b) noexcept {
    return std::equal(a.begin(), a.end(), b.begin(), b.end());
  }

 private:
  std::array<std::int64_t, TWIN_MAX_RANK> v_{};
  int rank_ = 0;
};

inline std::string shape_string(std::span<const std::int64_t> s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// Product of extents, refusing negative extents and int64 overflow (shapes
// may come from untrusted files).
inline std::int64_t checked_numel(std::span<const std::int64_t> s) {
  std::int64_t n = 1;
  for (std::int64_t d : s) {
    if (d < 0) throw shape_error("negative extent in shape " + shape_string(s));
    if (d != 0 && n > INT64_MAX / d) throw shape_error("element count overflows in shape " + shape_string(s));
    n *= d;
  }
  return n;
}

inline Extents row_major_strides(std::span<const std::int64_t> shape) {
  Extents st(shape);
  std::int64_t acc = 1;
  for (int i = static_cast<int>(shape.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= std::max<std::int64_t>(shape[static_cast<std::size_t>(i)], 1);
  }
  return st;
}

inline void check_same_shape(std::string_view name, std::span<const std::int64_t> expected,
                             std::span<const std::int64_t> found, std::string_view what = "tensor") {
  if (!std::equal(expected.begin(), expected.end(), found.begin(), found.end()))
    throw shape_error(std::string(what) + " '" + std::string(name) + "': expected shape " + shape_string(expected) +
                      ", found " + shape_string(found));
}

}  // namespace twin
