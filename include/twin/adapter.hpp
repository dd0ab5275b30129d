// The adapter seam (docs/design.md §4): `tensor_adapter<T>` is the one trait
// through which a host engine's own tensor type becomes usable by every
// algorithm, and `adapt` turns such a tensor into a view.
#pragma once

#include <concepts>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "twin/dtype.hpp"
#include "twin/error.hpp"
#include "twin/shape.hpp"
#include "twin/tensor.hpp"
#include "twin/tensor_view.hpp"

namespace twin {

// A host specializes
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

// clang-format 14 mangles some of these concept definitions; keep them as written.
// clang-format off
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

namespace detail {
// A shared handle (at::Tensor, a view): the adapter hands out void* even for
// a const object, so the tensor is written through const references.
template <class T>
concept adapter_handle = requires(const std::remove_cvref_t<T>& ct) {
  { adapter_of<T>::data(ct) } -> std::convertible_to<void*>;
};
template <class T>
concept adapter_mutable = !std::is_const_v<std::remove_reference_t<T>> && requires(std::remove_cvref_t<T>& t) {
  { adapter_of<T>::data(t) } -> std::convertible_to<void*>;
};
}  // namespace detail

// A tensor_like whose data may be written through T. The adapter decides:
// its data() returns void* for a const object (a handle type), or for a
// non-const one when T is not const (a container).
template <class T>
concept writable_tensor = tensor_like<T> && (detail::adapter_handle<T> || detail::adapter_mutable<T>);
// clang-format on

// Containers that own their elements (Tensor, ShapedVector, an Eigen Matrix
// or Array): adapt() refuses a temporary one, whose view would dangle once
// the full expression ends. Views, maps, blocks and handles may be
// temporaries.
template <class T>
inline constexpr bool owns_elements = false;

// One entry point from any host tensor to a view: a TensorView when the
// tensor is writable through T (writable_tensor), a ConstTensorView otherwise.
template <tensor_like T>
auto adapt(T&& t) {
  static_assert(std::is_lvalue_reference_v<T> || !owns_elements<std::remove_cvref_t<T>>,
                "adapt() of a temporary container: the view would point into memory freed at the end of the "
                "expression; name the container (auto w = load(); adapt(w)) and keep it alive while the view is used");
  using A = detail::adapter_of<T>;
  const std::remove_cvref_t<T>& ct = t;
  const twin::dtype type = A::dtype(ct);
  // Shape and strides are copied out within the full expression that asked
  // for them: an adapter may return a temporary container (a std::vector
  // computed on the spot), which a span would outlive.
  const Extents shape{std::span<const std::int64_t>(A::shape(ct))};
  Extents strides;
  if constexpr (detail::adapter_has_strides<T>) {
    strides.assign(std::span<const std::int64_t>(A::strides(ct)));
  } else if constexpr (detail::adapter_has_byte_strides<T>) {
    const auto es = static_cast<std::int64_t>(dtype_size(type));
    Extents s{std::span<const std::int64_t>(A::byte_strides(ct))};
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
  if constexpr (detail::adapter_handle<T>) {
    return TensorView(static_cast<void*>(A::data(ct)), type, shape.span(), strides.span(), where);
  } else if constexpr (detail::adapter_mutable<T>) {
    return TensorView(static_cast<void*>(A::data(t)), type, shape.span(), strides.span(), where);
  } else {
    return ConstTensorView(static_cast<const void*>(A::data(ct)), type, shape.span(), strides.span(), where);
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
inline constexpr bool owns_elements<Tensor> = true;

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
  static void* data(ShapedVector<T>& v) {
    check(v);
    return v.values.data();
  }
  static const void* data(const ShapedVector<T>& v) {
    check(v);
    return v.values.data();
  }
  static twin::dtype dtype(const ShapedVector<T>&) { return dtype_of<T>; }
  static std::span<const std::int64_t> shape(const ShapedVector<T>& v) { return v.shape; }

 private:
  static void check(const ShapedVector<T>& v) {
    if (checked_numel(v.shape) != static_cast<std::int64_t>(v.values.size()))
      throw shape_error("ShapedVector holds " + std::to_string(v.values.size()) + " values but its shape " +
                        shape_string(v.shape) + " needs " + std::to_string(checked_numel(v.shape)));
  }
};
template <class T>
inline constexpr bool owns_elements<ShapedVector<T>> = true;

}  // namespace twin
