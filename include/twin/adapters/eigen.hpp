// Eigen matrices, arrays and Maps as twin tensors (opt-in: include this
// header). Row-major storage maps directly; column-major storage is handled
// as a strided view (strides {1, ld}), so no copy is made either way. A
// vector type (VectorXf, RowVectorXf, a column block, a diagonal) is rank 1.
#pragma once

#include <Eigen/Core>

#include "twin/adapter.hpp"

namespace twin {

template <>
struct dtype_of_impl<Eigen::half> {
  static constexpr dtype value = dtype::f16;
};
template <>
struct dtype_of_impl<Eigen::bfloat16> {
  static constexpr dtype value = dtype::bf16;
};

namespace detail {
// Shape and element strides of any Eigen dense expression with direct access:
// rank 1 for a vector type (one dimension fixed at 1 at compile time:
// VectorXf, RowVectorXf, a diagonal or a column block), else rank 2.
template <class E>
struct EigenLayout {
  static constexpr bool column = E::ColsAtCompileTime == 1, row = !column && E::RowsAtCompileTime == 1;
  static constexpr std::size_t rank = column || row ? 1 : 2;
  std::array<std::int64_t, 2> shape{};
  std::array<std::int64_t, 2> strides{};
  explicit EigenLayout(const E& e) {
    if constexpr (column) {
      shape[0] = e.rows(), strides[0] = e.rowStride();
    } else if constexpr (row) {
      shape[0] = e.cols(), strides[0] = e.colStride();
    } else {
      shape = {static_cast<std::int64_t>(e.rows()), static_cast<std::int64_t>(e.cols())};
      strides = {static_cast<std::int64_t>(e.rowStride()), static_cast<std::int64_t>(e.colStride())};
    }
  }
};

// clang-format 14 misindents the continuation lines of this concept.
// clang-format off
template <class E>
concept eigen_direct = std::is_base_of_v<Eigen::DenseBase<E>, E> &&
                       (static_cast<int>(E::Flags) & Eigen::DirectAccessBit) != 0 &&
                       has_dtype<typename E::Scalar>;
// clang-format on
}  // namespace detail

// Matrix and Array own their coefficients (Map, Ref and Block do not).
template <class E>
  requires std::is_base_of_v<Eigen::PlainObjectBase<E>, E>
inline constexpr bool owns_elements<E> = true;

// Any Eigen Matrix, Array, Map, Ref or Block with direct access to its
// memory. shape() must outlive the call, so the adapter keeps the extents in
// thread-local storage refreshed on each call; adapt() copies them at once.
template <class E>
  requires detail::eigen_direct<E>
struct tensor_adapter<E> {
  static auto* data(E& e) {
    if constexpr (std::is_const_v<std::remove_pointer_t<decltype(e.data())>>) return static_cast<const void*>(e.data());
    else return static_cast<void*>(e.data());
  }
  static const void* data(const E& e) { return e.data(); }
  static twin::dtype dtype(const E&) { return dtype_of<typename E::Scalar>; }
  static std::span<const std::int64_t> shape(const E& e) {
    thread_local std::array<std::int64_t, 2> s;
    s = detail::EigenLayout<E>(e).shape;
    return std::span<const std::int64_t>(s.data(), detail::EigenLayout<E>::rank);
  }
  static std::span<const std::int64_t> strides(const E& e) {
    thread_local std::array<std::int64_t, 2> s;
    s = detail::EigenLayout<E>(e).strides;
    return std::span<const std::int64_t>(s.data(), detail::EigenLayout<E>::rank);
  }
};

}  // namespace twin
