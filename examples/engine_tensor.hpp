// A foreign engine's tensor, shaped like ggml's: its own type enum, extents
// innermost-first (ne[0] is the row length) and strides in bytes (nb). The
// adapter below is all a host writes to hand such tensors to twin.
#pragma once

#include <cstddef>
#include <cstdint>

#include "twin/adapter.hpp"

namespace engine {
enum class ggml_type { f32 = 0, f16 = 1, bf16 = 30 };
struct tensor {
  ggml_type type;
  int n_dims;
  std::int64_t ne[4];  // extents, innermost first
  std::size_t nb[4];   // byte strides, innermost first
  void* data;
};
}  // namespace engine

// ---- the adapter: 30 lines ------------------------------------------------
template <>
struct twin::tensor_adapter<engine::tensor> {
  static void* data(engine::tensor& t) { return t.data; }
  static const void* data(const engine::tensor& t) { return t.data; }
  static twin::dtype dtype(const engine::tensor& t) {
    switch (t.type) {
      case engine::ggml_type::f32: return twin::dtype::f32;
      case engine::ggml_type::f16: return twin::dtype::f16;
      case engine::ggml_type::bf16: return twin::dtype::bf16;
    }
    throw twin::dtype_error("engine tensor of unsupported ggml type " + std::to_string(static_cast<int>(t.type)));
  }
  // twin is row-major outermost-first: reverse ggml's innermost-first order.
  static std::span<const std::int64_t> shape(const engine::tensor& t) {
    thread_local std::int64_t s[4];
    for (int i = 0; i < t.n_dims; ++i) s[i] = t.ne[t.n_dims - 1 - i];
    return {s, static_cast<std::size_t>(t.n_dims)};
  }
  // Byte strides: twin divides them by the element size and rejects any
  // that do not divide evenly.
  static std::span<const std::int64_t> byte_strides(const engine::tensor& t) {
    thread_local std::int64_t s[4];
    for (int i = 0; i < t.n_dims; ++i) s[i] = static_cast<std::int64_t>(t.nb[t.n_dims - 1 - i]);
    return {s, static_cast<std::size_t>(t.n_dims)};
  }
};
// ---------------------------------------------------------------------------
