// xtensor containers (xarray, xtensor, xtensor_fixed, adaptors of buffers) as twin
// tensors (opt-in: include this header and link xtensor). xtensor's own
// strides are in elements, so any layout maps to a view without a copy.
#pragma once

#include <algorithm>
#include <array>

#include <xtensor/xcontainer.hpp>
#include <xtensor/xtensor_forward.hpp>

#include "twin/adapter.hpp"

namespace twin {

namespace detail {
// clang-format 14 cannot format a requires-expression followed by `&&`.
// clang-format off
template <class X>
concept xtensor_container = requires(X& x) {
  typename X::value_type;
  x.data();
  x.shape();
  x.strides();
  x.layout();
} && std::is_base_of_v<xt::xcontainer<X>, X> && has_dtype<typename X::value_type>;
// clang-format on

// Converts xtensor's unsigned shape/stride containers to int64 extents.
template <class S>
std::span<const std::int64_t> to_extents(const S& s, std::array<std::int64_t, TWIN_MAX_RANK>& out) {
  if (s.size() > TWIN_MAX_RANK) throw shape_error("xtensor rank exceeds TWIN_MAX_RANK");
  std::transform(s.begin(), s.end(), out.begin(), [](auto v) { return static_cast<std::int64_t>(v); });
  return {out.data(), s.size()};
}
}  // namespace detail

// xarray and xtensor own their elements (adapt refuses them as temporaries);
// adaptors of a buffer do not.
template <class EC, xt::layout_type L, class SC, class Tag>
inline constexpr bool owns_elements<xt::xarray_container<EC, L, SC, Tag>> = true;
template <class EC, std::size_t N, xt::layout_type L, class Tag>
inline constexpr bool owns_elements<xt::xtensor_container<EC, N, L, Tag>> = true;

template <class X>
  requires detail::xtensor_container<X>
struct tensor_adapter<X> {
  static void* data(X& x) { return x.data(); }
  static const void* data(const X& x) { return x.data(); }
  static twin::dtype dtype(const X&) { return dtype_of<typename X::value_type>; }
  static std::span<const std::int64_t> shape(const X& x) {
    thread_local std::array<std::int64_t, TWIN_MAX_RANK> s;
    return detail::to_extents(x.shape(), s);
  }
  static std::span<const std::int64_t> strides(const X& x) {
    thread_local std::array<std::int64_t, TWIN_MAX_RANK> s;
    return detail::to_extents(x.strides(), s);
  }
};

}  // namespace twin
