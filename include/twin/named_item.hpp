// The other half of the host seam (docs/design.md §4): how an element of a
// host's range of named tensors gives its name and its tensor. Pairs and
// maps (first/second), engine containers whose items have key()/value()
// (libtorch's OrderedDict from named_parameters()) and tuple-likes work as
// they are; a host with another item type specializes twin::named_item.
#pragma once

#include <concepts>
#include <cstddef>
#include <iterator>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

namespace twin {

// name(item) -> something convertible to std::string_view;
// tensor(item) -> the tensor (a reference, or a handle by value).
template <class Item>
struct named_item {
  template <class I>
  static decltype(auto) name(I&& item) {
    if constexpr (requires { item.key(); }) return item.key();
    else if constexpr (requires { item.first; }) return (item.first);
    else return std::get<0>(std::forward<I>(item));
  }
  template <class I>
  static decltype(auto) tensor(I&& item) {
    if constexpr (requires { item.value(); }) return item.value();
    else if constexpr (requires { item.second; }) return (item.second);
    else return std::get<1>(std::forward<I>(item));
  }
};

template <class I>
decltype(auto) item_name(I&& item) {
  return named_item<std::remove_cvref_t<I>>::name(std::forward<I>(item));
}
template <class I>
decltype(auto) item_tensor(I&& item) {
  return named_item<std::remove_cvref_t<I>>::tensor(std::forward<I>(item));
}

// A range whose elements give a name and a tensor.
template <class R>
concept named_tensor_range = requires(R& r) {
  { item_name(*std::begin(r)) } -> std::convertible_to<std::string_view>;
  item_tensor(*std::begin(r));
};

}  // namespace twin
