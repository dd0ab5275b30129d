// The owning Tensor: CPU memory, 64-byte (or, when large, 2 MiB) aligned,
// row-major, move-only; copies are explicit (clone). It may also keep memory
// owned elsewhere alive, such as a file mapping (borrow).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <utility>

#if defined(__linux__)
#  include <sys/mman.h>
#endif

#include "twin/convert.hpp"
#include "twin/dtype.hpp"
#include "twin/error.hpp"
#include "twin/shape.hpp"
#include "twin/tensor_view.hpp"

namespace twin {

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
      throw shape_error("from_f32: " + std::to_string(v.size()) + " values do not fill shape " + shape_string(shape));
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
    void* p = padded ? ::operator new(padded, static_cast<std::align_val_t>(align)) : nullptr;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (p && align > 64) (void)::madvise(p, padded, MADV_HUGEPAGE);
#endif
    owner_ = std::shared_ptr<void>(p, [align](void* q) {
      if (q) ::operator delete(q, static_cast<std::align_val_t>(align));
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

inline Tensor Tensor::clone_as(twin::dtype to) const {
  Tensor t = Tensor::empty(to, shape());
  if (to == dtype_) {
    if (nbytes()) std::memcpy(t.data_, data_, nbytes());
    return t;
  }
  require_float(dtype_, "clone_as source");
  require_float(to, "clone_as target");
  copy_convert(view(), t.view());
  return t;
}

}  // namespace twin
