// Moving values between any float view and f32 buffers, in bounded chunks
// so that no conversion allocates per element: the one place strided and
// 16-bit storage are read and written.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "twin/config.hpp"
#include "twin/dtype.hpp"
#include "twin/error.hpp"
#include "twin/tensor_view.hpp"

namespace twin {

// Moving values between any float view and f32 buffers. Contiguous views take
// the bulk-conversion path; strided ones walk their index.

namespace detail {
template <class V, class F>
void for_each_offset(const BasicTensorView<V>& v, std::int64_t start, std::int64_t n, F&& f) {
  // Nothing to visit (also keeps an empty view's zero extents out of the
  // index arithmetic below).
  if (n <= 0) return;
  const int r = v.rank();
  if (r == 0) {
    f(std::int64_t{0}, std::int64_t{0});
    return;
  }
  std::array<std::int64_t, TWIN_MAX_RANK> idx{};
  std::int64_t rem = start;
  for (int i = r - 1; i >= 0; --i) {
    idx[static_cast<std::size_t>(i)] = rem % v.dim(i);
    rem /= v.dim(i);
  }
  std::int64_t off = 0;
  for (int i = 0; i < r; ++i) off += idx[static_cast<std::size_t>(i)] * v.stride(i);
  for (std::int64_t k = 0; k < n; ++k) {
    f(k, off);
    for (int i = r - 1; i >= 0; --i) {
      auto& x = idx[static_cast<std::size_t>(i)];
      ++x;
      off += v.stride(i);
      if (x < v.dim(i)) break;
      off -= x * v.stride(i);
      x = 0;
    }
  }
}
}  // namespace detail

// dst[k] = v[start + k] (row-major linear index) as f32, k < n.
inline void read_f32(const ConstTensorView& v, std::int64_t start, std::int64_t n, float* dst) {
  TWIN_ASSERT(start >= 0 && start + n <= v.numel());
  const std::size_t es = v.element_size();
  if (v.is_contiguous()) {
    convert_to_f32(static_cast<const std::byte*>(v.data()) + start * static_cast<std::int64_t>(es), v.dtype(), n, dst);
    return;
  }
  const auto* base = static_cast<const std::byte*>(v.data());
  const twin::dtype t = v.dtype();
  detail::for_each_offset(v, start, n, [&](std::int64_t k, std::int64_t off) {
    dst[k] = static_cast<float>(load_as_f64(base + off * static_cast<std::int64_t>(es), t, 0));
  });
}

// v[start + k] = src[k], rounded to v's dtype.
inline void write_f32(const float* src, std::int64_t start, std::int64_t n, const TensorView& v) {
  TWIN_ASSERT(start >= 0 && start + n <= v.numel());
  const std::size_t es = v.element_size();
  if (v.is_contiguous()) {
    convert_from_f32(src, n, static_cast<std::byte*>(v.data()) + start * static_cast<std::int64_t>(es), v.dtype());
    return;
  }
  auto* base = static_cast<std::byte*>(v.data());
  const twin::dtype t = v.dtype();
  detail::for_each_offset(v, start, n, [&](std::int64_t k, std::int64_t off) {
    convert_from_f32(src + k, 1, base + off * static_cast<std::int64_t>(es), t);
  });
}

// Element i (row-major) as double; for tests, diagnostics and small tensors.
inline double element_f64(const ConstTensorView& v, std::int64_t i) {
  return load_as_f64(static_cast<const std::byte*>(v.data()) + v.offset_of(i), v.dtype(), 0);
}

// All elements as f64, row-major.
inline std::vector<double> to_f64_vector(const ConstTensorView& v) {
  std::vector<double> out(static_cast<std::size_t>(v.numel()));
  for (std::int64_t i = 0; i < v.numel(); ++i) out[static_cast<std::size_t>(i)] = element_f64(v, i);
  return out;
}

// dst = src elementwise, converted between float dtypes (rounded to nearest
// even); shapes must hold the same number of elements (row-major order).
inline void copy_convert(const ConstTensorView& src, const TensorView& dst) {
  TWIN_ASSERT(src.numel() == dst.numel());
  constexpr std::int64_t chunk = TWIN_CHUNK_ELEMENTS;
  std::array<float, chunk> buf;
  for (std::int64_t s = 0; s < src.numel(); s += chunk) {
    const std::int64_t c = std::min(chunk, src.numel() - s);
    read_f32(src, s, c, buf.data());
    write_f32(buf.data(), s, c, dst);
  }
}

}  // namespace twin
