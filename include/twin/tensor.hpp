// Tensors as twin sees them: TensorView (non-owning: pointer, dtype, shape,
// strides in elements, device), the owning Tensor, and the adapter seam
// `tensor_adapter<T>` through which a host engine's own tensor type becomes
// usable by every algorithm (see DESIGN.md §4).
#pragma once

#include <algorithm>
#include <array>
#include <concepts>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__linux__)
#  include <sys/mman.h>
#endif

#include "twin/config.hpp"
#include "twin/dtype.hpp"
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
      : data_(o.data()), dtype_(o.dtype()), shape_(o.extents()), strides_(o.stride_extents()),
        device_(o.device()), numel_(o.numel()) {}

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
      throw shape_error("narrow(" + std::to_string(d) + ", " + std::to_string(start) + ", " +
                        std::to_string(length) + ") is out of range for shape " + shape_str());
    BasicTensorView v = *this;
    v.shape_[d] = length;
    v.numel_ = checked_numel(v.shape());
    using byte_t = std::conditional_t<std::is_const_v<V>, const std::byte, std::byte>;
    v.data_ = static_cast<byte_t*>(data_) + start * strides_[d] * static_cast<std::int64_t>(element_size());
    return v;
  }

  // Same elements under another row-major shape; needs a contiguous view.
  BasicTensorView reshaped(std::span<const std::int64_t> shape) const {
    if (!is_contiguous())
      throw shape_error("cannot reshape a non-contiguous view of shape " + shape_str());
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

// ---------------------------------------------------------------------------
// Owning tensor: CPU memory, 64-byte aligned, row-major. Move-only: copies are
// explicit (clone). A Tensor may also keep external memory alive (a file
// mapping) through `borrow`.
class Tensor {
 public:
  Tensor() = default;

  // Zero-filled.
  Tensor(twin::dtype type, std::span<const std::int64_t> shape) : Tensor(type, shape, uninitialized_tag{}) {
    if (data_) std::memset(data_, 0, nbytes());
  }
  Tensor(twin::dtype type, std::initializer_list<std::int64_t> shape)
      : Tensor(type, std::span<const std::int64_t>(shape.begin(), shape.size())) {}

  // Contents unspecified: for outputs that a kernel overwrites entirely, so
  // pages are first touched by the (parallel) kernel, not by a serial memset.
  static Tensor empty(twin::dtype type, std::span<const std::int64_t> shape) {
    return Tensor(type, shape, uninitialized_tag{});
  }

  // Wraps memory owned elsewhere; `keepalive` holds it (e.g. an mmap).
  static Tensor borrow(std::shared_ptr<const void> keepalive, const void* data, twin::dtype type,
                       std::span<const std::int64_t> shape) {
    Tensor t;
    t.dtype_ = type;
    t.shape_.assign(shape);
    t.numel_ = checked_numel(shape);
    t.owner_ = std::const_pointer_cast<void>(std::move(keepalive));
    t.data_ = const_cast<void*>(data);
    t.read_only_ = true;
    return t;
  }

  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;

  Tensor clone() const { return clone_as(dtype_); }

  // Deep copy converted to another float dtype (values rounded to nearest even).
  Tensor clone_as(twin::dtype to) const;

  bool defined() const noexcept { return owner_ != nullptr || numel() == 0; }
  bool read_only() const noexcept { return read_only_; }
  twin::dtype dtype() const noexcept { return dtype_; }
  int rank() const noexcept { return shape_.size(); }
  std::span<const std::int64_t> shape() const noexcept { return shape_.span(); }
  std::int64_t dim(int i) const noexcept { return shape_[i]; }
  std::int64_t numel() const noexcept { return numel_; }
  std::size_t nbytes() const noexcept { return static_cast<std::size_t>(numel()) * dtype_size(dtype_); }
  std::string shape_str() const { return shape_string(shape()); }

  const void* data() const noexcept { return data_; }
  void* mutable_data() {
    if (read_only_) throw error("tensor borrows read-only memory; clone() it to write");
    return data_;
  }

  template <class T>
  std::span<T> values() {
    check_type<T>();
    return {static_cast<T*>(mutable_data()), static_cast<std::size_t>(numel())};
  }
  template <class T>
  std::span<const T> values() const {
    check_type<T>();
    return {static_cast<const T*>(data_), static_cast<std::size_t>(numel())};
  }

  TensorView view() { return TensorView(mutable_data(), dtype_, shape()); }
  ConstTensorView view() const { return ConstTensorView(data_, dtype_, shape()); }
  ConstTensorView cview() const { return view(); }

  // f32 tensor holding `v` under `shape`.
  static Tensor from_f32(std::span<const float> v, std::span<const std::int64_t> shape,
                         twin::dtype store = twin::dtype::f32) {
    if (checked_numel(shape) != static_cast<std::int64_t>(v.size()))
      throw shape_error("from_f32: " + std::to_string(v.size()) + " values do not fill shape " +
                        shape_string(shape));
    Tensor t(store, shape);
    convert_from_f32(v.data(), static_cast<std::int64_t>(v.size()), t.mutable_data(), store);
    return t;
  }

 private:
  struct uninitialized_tag {};
  Tensor(twin::dtype type, std::span<const std::int64_t> shape, uninitialized_tag) : dtype_(type), shape_(shape) {
    numel_ = checked_numel(shape);
    const std::size_t bytes = static_cast<std::size_t>(numel_) * dtype_size(type);
    // Large tensors are 2 MiB-aligned and, on Linux, asked for huge pages:
    // first-touch page faults cost more than the merge itself otherwise
    // (measured: 1 s to fault 340 MB in 4 KiB pages, 0.07 s in 2 MiB pages).
    const std::size_t align = bytes >= (std::size_t{4} << 20) ? (std::size_t{2} << 20) : 64;
    const std::size_t padded = (bytes + align - 1) / align * align;
    void* p = padded ? ::operator new(padded, std::align_val_t{align}) : nullptr;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (p && align > 64) (void)::madvise(p, padded, MADV_HUGEPAGE);
#endif
    owner_ = std::shared_ptr<void>(p, [align](void* q) {
      if (q) ::operator delete(q, std::align_val_t{align});
    });
    data_ = p;
  }

  template <class T>
  void check_type() const {
    if (dtype_of<T> != dtype_)
      throw dtype_error("tensor of dtype " + std::string(dtype_name(dtype_)) + " read as " +
                        std::string(dtype_name(dtype_of<T>)));
  }

  std::shared_ptr<void> owner_;
  void* data_ = nullptr;
  twin::dtype dtype_ = twin::dtype::f32;
  Extents shape_;
  std::int64_t numel_ = 0;
  bool read_only_ = false;
};

// ---------------------------------------------------------------------------
// Moving values between any float view and f32 buffers. Contiguous views take
// the bulk-conversion path; strided ones walk their index.

namespace detail {
template <class V, class F>
void for_each_offset(const BasicTensorView<V>& v, std::int64_t start, std::int64_t n, F&& f) {
  const int r = v.rank();
  if (r == 0) {
    if (n) f(std::int64_t{0}, std::int64_t{0});
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

inline Tensor Tensor::clone_as(twin::dtype to) const {
  Tensor t = Tensor::empty(to, shape());
  if (to == dtype_) {
    if (nbytes()) std::memcpy(t.data_, data_, nbytes());
    return t;
  }
  require_float(dtype_, "clone_as source");
  require_float(to, "clone_as target");
  constexpr std::int64_t chunk = TWIN_CHUNK_ELEMENTS;
  float buf[chunk];
  const std::int64_t n = numel();
  for (std::int64_t s = 0; s < n; s += chunk) {
    const std::int64_t c = std::min(chunk, n - s);
    read_f32(view(), s, c, buf);
    write_f32(buf, s, c, t.view());
  }
  return t;
}

// ---------------------------------------------------------------------------
// The adapter seam (DESIGN.md §4). A host specializes
//
//   template <> struct twin::tensor_adapter<MyTensor> {
//     static void*       data(MyTensor&);          // and const void* data(const MyTensor&)
//     static twin::dtype dtype(const MyTensor&);
//     static std::span<const std::int64_t> shape(const MyTensor&);
//     // optional: strides(const MyTensor&)      -> extents in elements
//     // optional: byte_strides(const MyTensor&) -> extents in bytes (ggml's nb)
//     // optional: device(const MyTensor&)       -> twin::device
//   };
template <class T>
struct tensor_adapter;

namespace detail {
template <class T>
using adapter_of = tensor_adapter<std::remove_cvref_t<T>>;

template <class T>
concept adapter_has_strides = requires(const std::remove_cvref_t<T>& t) { adapter_of<T>::strides(t); };
template <class T>
concept adapter_has_byte_strides = requires(const std::remove_cvref_t<T>& t) { adapter_of<T>::byte_strides(t); };
template <class T>
concept adapter_has_device = requires(const std::remove_cvref_t<T>& t) {
  { adapter_of<T>::device(t) } -> std::convertible_to<twin::device>;
};
}  // namespace detail

template <class T>
concept tensor_like = requires(T& t, const std::remove_cvref_t<T>& ct) {
  { detail::adapter_of<T>::data(t) } -> std::convertible_to<const void*>;
  { detail::adapter_of<T>::dtype(ct) } -> std::convertible_to<twin::dtype>;
  { std::span<const std::int64_t>(detail::adapter_of<T>::shape(ct)) };
};

// A tensor_like whose data the caller may write through.
template <class T>
concept writable_tensor = tensor_like<T> && !std::is_const_v<std::remove_reference_t<T>> &&
                          requires(std::remove_cvref_t<T>& t) {
                            { detail::adapter_of<T>::data(t) } -> std::convertible_to<void*>;
                          };

// One entry point from any host tensor to a view: writable for non-const
// arguments whose adapter hands out void*, read-only otherwise.
template <tensor_like T>
auto adapt(T&& t) {
  using A = detail::adapter_of<T>;
  using Raw = std::remove_reference_t<T>;
  const std::remove_cvref_t<T>& ct = t;
  const twin::dtype type = A::dtype(ct);
  const std::span<const std::int64_t> shape(A::shape(ct));
  Extents strides;
  if constexpr (detail::adapter_has_strides<T>) {
    strides.assign(std::span<const std::int64_t>(A::strides(ct)));
  } else if constexpr (detail::adapter_has_byte_strides<T>) {
    const std::span<const std::int64_t> nb(A::byte_strides(ct));
    const auto es = static_cast<std::int64_t>(dtype_size(type));
    Extents s(nb);
    for (int i = 0; i < s.size(); ++i) {
      if (s[i] % es != 0)
        throw shape_error("byte stride " + std::to_string(s[i]) + " of dimension " + std::to_string(i) +
                          " is not a multiple of the element size " + std::to_string(es) + " (" +
                          std::string(dtype_name(type)) + ")");
      s[i] /= es;
    }
    strides = s;
  }
  twin::device where{};
  if constexpr (detail::adapter_has_device<T>) where = A::device(ct);
  if constexpr (std::is_const_v<Raw> || !writable_tensor<T>) {
    return ConstTensorView(static_cast<const void*>(A::data(ct)), type, shape, strides.span(), where);
  } else {
    return TensorView(static_cast<void*>(A::data(t)), type, shape, strides.span(), where);
  }
}

// Built-in adapters: the views themselves and the owning Tensor.
template <class V>
struct tensor_adapter<BasicTensorView<V>> {
  static V* data(const BasicTensorView<V>& v) { return v.data(); }
  static twin::dtype dtype(const BasicTensorView<V>& v) { return v.dtype(); }
  static std::span<const std::int64_t> shape(const BasicTensorView<V>& v) { return v.shape(); }
  static std::span<const std::int64_t> strides(const BasicTensorView<V>& v) { return v.strides(); }
  static twin::device device(const BasicTensorView<V>& v) { return v.device(); }
};

template <>
struct tensor_adapter<Tensor> {
  static void* data(Tensor& t) { return t.mutable_data(); }
  static const void* data(const Tensor& t) { return t.data(); }
  static twin::dtype dtype(const Tensor& t) { return t.dtype(); }
  static std::span<const std::int64_t> shape(const Tensor& t) { return t.shape(); }
};

// std::vector with a shape: the simplest host tensor.
template <class T>
struct ShapedVector {
  std::vector<T> values;
  std::vector<std::int64_t> shape;
};

template <class T>
  requires has_dtype<T>
struct tensor_adapter<ShapedVector<T>> {
  static void* data(ShapedVector<T>& v) { check(v); return v.values.data(); }
  static const void* data(const ShapedVector<T>& v) { check(v); return v.values.data(); }
  static twin::dtype dtype(const ShapedVector<T>&) { return dtype_of<T>; }
  static std::span<const std::int64_t> shape(const ShapedVector<T>& v) { return v.shape; }

 private:
  static void check(const ShapedVector<T>& v) {
    if (checked_numel(v.shape) != static_cast<std::int64_t>(v.values.size()))
      throw shape_error("ShapedVector holds " + std::to_string(v.values.size()) + " values but its shape " +
                        shape_string(v.shape) + " needs " + std::to_string(checked_numel(v.shape)));
  }
};

inline void check_same_shape(std::string_view name, std::span<const std::int64_t> expected,
                             std::span<const std::int64_t> found, std::string_view what = "tensor") {
  if (!std::equal(expected.begin(), expected.end(), found.begin(), found.end()))
    throw shape_error(std::string(what) + " '" + std::string(name) + "': expected shape " +
                      shape_string(expected) + ", found " + shape_string(found));
}

}  // namespace twin
