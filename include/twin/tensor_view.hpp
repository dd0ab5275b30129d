// TensorView: the non-owning view every algorithm takes (pointer, dtype,
// shape, strides in elements, device). Views are cheap to copy and never own
// or allocate.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "twin/dtype.hpp"
#include "twin/error.hpp"
#include "twin/shape.hpp"

namespace twin {

// Non-owning view. V is `void` (writable) or `const void` (read-only).
template <class V>
class BasicTensorView {
  static_assert(std::is_same_v<std::remove_const_t<V>, void>);

 public:
  using pointer = V*;

  BasicTensorView() = default;

  BasicTensorView(V* data, twin::dtype type, std::span<const std::int64_t> shape,
                  std::span<const std::int64_t> strides = {}, twin::device where = {})
      : data_(data), dtype_(type), shape_(shape), device_(where) {
    numel_ = checked_numel(shape);
    if (strides.empty()) {
      strides_ = row_major_strides(shape);
    } else {
      if (strides.size() != shape.size())
        throw shape_error("strides " + shape_string(strides) + " do not match the rank of shape " +
                          shape_string(shape));
      strides_.assign(strides);
    }
    if (data_ == nullptr && numel_ > 0) throw error("tensor view of shape " + shape_string(shape) + " has no data");
  }

  BasicTensorView(V* data, twin::dtype type, std::initializer_list<std::int64_t> shape)
      : BasicTensorView(data, type, std::span<const std::int64_t>(shape.begin(), shape.size())) {}

  // A writable view converts to a read-only one, never the other way.
  template <class W>
    requires(std::is_const_v<V> && !std::is_const_v<W>)
  BasicTensorView(const BasicTensorView<W>& o)
      : data_(o.data()), dtype_(o.dtype()), shape_(o.extents()), strides_(o.stride_extents()), device_(o.device()),
        numel_(o.numel()) {}

  V* data() const noexcept { return data_; }
  twin::dtype dtype() const noexcept { return dtype_; }
  twin::device device() const noexcept { return device_; }
  int rank() const noexcept { return shape_.size(); }
  std::span<const std::int64_t> shape() const noexcept { return shape_.span(); }
  std::span<const std::int64_t> strides() const noexcept { return strides_.span(); }
  const Extents& extents() const noexcept { return shape_; }
  const Extents& stride_extents() const noexcept { return strides_; }
  std::int64_t dim(int i) const noexcept { return shape_[i]; }
  std::int64_t stride(int i) const noexcept { return strides_[i]; }
  std::int64_t numel() const noexcept { return numel_; }
  std::size_t element_size() const noexcept { return dtype_size(dtype_); }
  std::string shape_str() const { return shape_string(shape()); }

  // Row-major contiguous (extents of 1 may carry any stride).
  bool is_contiguous() const noexcept {
    std::int64_t acc = 1;
    for (int i = rank() - 1; i >= 0; --i) {
      if (shape_[i] != 1 && strides_[i] != acc) return false;
      acc *= shape_[i];
    }
    return true;
  }

  // Byte offset of the element with row-major linear index `linear`.
  std::int64_t offset_of(std::int64_t linear) const noexcept {
    std::int64_t off = 0;
    for (int i = rank() - 1; i >= 0; --i) {
      const std::int64_t e = shape_[i];
      off += (linear % e) * strides_[i];
      linear /= e;
    }
    return off * static_cast<std::int64_t>(element_size());
  }

  // Sub-range [start, start+length) along dimension d (a view, no copy).
  BasicTensorView narrow(int d, std::int64_t start, std::int64_t length) const {
    if (d < 0 || d >= rank() || start < 0 || length < 0 || start + length > shape_[d])
      throw shape_error("narrow(" + std::to_string(d) + ", " + std::to_string(start) + ", " + std::to_string(length) +
                        ") is out of range for shape " + shape_str());
    BasicTensorView v = *this;
    v.shape_[d] = length;
    v.numel_ = checked_numel(v.shape());
    using byte_t = std::conditional_t<std::is_const_v<V>, const std::byte, std::byte>;
    v.data_ = static_cast<byte_t*>(data_) + start * strides_[d] * static_cast<std::int64_t>(element_size());
    return v;
  }

  // Same elements under another row-major shape; needs a contiguous view.
  BasicTensorView reshaped(std::span<const std::int64_t> shape) const {
    if (!is_contiguous()) throw shape_error("cannot reshape a non-contiguous view of shape " + shape_str());
    if (checked_numel(shape) != numel_)
      throw shape_error("cannot reshape " + shape_str() + " to " + shape_string(shape));
    return BasicTensorView(data_, dtype_, shape, {}, device_);
  }

  // The matrix twin works on: rank 2 as is, rank > 2 as [d0, d1*...*dk]
  // (conv kernels [out, in, kh, kw] -> [out, in*kh*kw]); needs contiguous
  // trailing dims when rank > 2.
  BasicTensorView as_matrix() const {
    if (rank() == 2) return *this;
    if (rank() < 2) throw shape_error("tensor of shape " + shape_str() + " is not a matrix");
    const std::int64_t rows = shape_[0];
    const std::int64_t cols = rows == 0 ? 0 : numel_ / rows;
    const std::int64_t s[2] = {rows, cols};
    return reshaped(s);
  }

 private:
  V* data_ = nullptr;
  twin::dtype dtype_ = twin::dtype::f32;
  Extents shape_;
  Extents strides_;
  twin::device device_{};
  std::int64_t numel_ = 0;
};

using TensorView = BasicTensorView<void>;
using ConstTensorView = BasicTensorView<const void>;

// Whether two elements of `v` share memory (a zero stride, as broadcast
// views have, or strides that interleave). Such a view is fine to read and
// wrong to write: the last write to a shared element would win.
template <class V>
bool has_overlapping_elements(const BasicTensorView<V>& v) {
  std::array<std::pair<std::int64_t, std::int64_t>, TWIN_MAX_RANK> dims{};  // (|stride|, extent)
  int n = 0;
  for (int i = 0; i < v.rank(); ++i) {
    if (v.dim(i) == 0) return false;  // no elements at all
    if (v.dim(i) > 1) dims[static_cast<std::size_t>(n++)] = {v.stride(i) < 0 ? -v.stride(i) : v.stride(i), v.dim(i)};
  }
  // Insertion sort of the n ≤ TWIN_MAX_RANK pairs: GCC 12 at -O3 -Wall warns
  // of an out-of-bounds subscript inside std::sort's insertion pass over a
  // short std::array (a false positive, but in every includer's build).
  for (int i = 1; i < n; ++i)
    for (int j = i; j > 0 && dims[static_cast<std::size_t>(j)] < dims[static_cast<std::size_t>(j - 1)]; --j)
      std::swap(dims[static_cast<std::size_t>(j)], dims[static_cast<std::size_t>(j - 1)]);
  // Each dimension must step past everything the smaller ones span.
  std::int64_t span = 1;
  for (int i = 0; i < n; ++i) {
    const auto [stride, extent] = dims[static_cast<std::size_t>(i)];
    if (stride < span) return true;
    span = stride * extent;
  }
  return false;
}

// The bytes [first, last) a view may touch (for views of host memory).
template <class V>
std::pair<const std::byte*, const std::byte*> byte_range(const BasicTensorView<V>& v) {
  const auto* p = static_cast<const std::byte*>(v.data());
  if (v.numel() == 0) return {p, p};
  const auto es = static_cast<std::int64_t>(v.element_size());
  std::int64_t lo = 0, hi = 0;
  for (int i = 0; i < v.rank(); ++i) {
    const std::int64_t reach = (v.dim(i) - 1) * v.stride(i) * es;
    (reach < 0 ? lo : hi) += reach;
  }
  return {p + lo, p + hi + es};
}

// Whether two views may share memory (their byte ranges intersect).
template <class V, class W>
bool may_alias(const BasicTensorView<V>& a, const BasicTensorView<W>& b) {
  if (a.numel() == 0 || b.numel() == 0 || a.device() != b.device()) return false;
  const auto [a0, a1] = byte_range(a);
  const auto [b0, b1] = byte_range(b);
  return a0 < b1 && b0 < a1;
}

// The CPU code reads and writes host memory: a view of device memory is
// refused by name, not dereferenced.
template <class V>
void require_host(const BasicTensorView<V>& v, std::string_view what) {
  if (v.device() != device{})
    throw argument_error(std::string(what) + " is on CUDA device " + std::to_string(v.device().index) +
                         "; this CPU code reads host memory: copy it to the host first");
}

// An output must have distinct elements.
inline void check_output_layout(const TensorView& out, std::string_view name) {
  if (has_overlapping_elements(out))
    throw shape_error("output tensor '" + std::string(name) + "' of shape " + out.shape_str() + " with strides " +
                      shape_string(out.strides()) +
                      " has elements that share memory (a zero or overlapping stride); write into a tensor whose "
                      "elements are distinct");
}

}  // namespace twin
