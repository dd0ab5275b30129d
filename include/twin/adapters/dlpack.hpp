// DLPack tensors as twin tensors (opt-in: include this header; Debian's
// libdlpack-dev), so any engine that exports DLPack (PyTorch, JAX, TVM,
// CuPy, MXNet...) plugs in without writing an adapter. DLTensor and
// DLManagedTensor are plain handles: their data is writable through const
// references. Strides are in elements (NULL: compact row-major) and
// byte_offset is applied; kDLCUDA tensors carry their device index.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <dlpack/dlpack.h>

#include "twin/adapter.hpp"
#include "twin/dtype.hpp"
#include "twin/error.hpp"
#include "twin/shape.hpp"

namespace twin {

namespace detail {
inline twin::dtype dlpack_dtype(const DLDataType& t) {
  if (t.lanes == 1) {
    if (t.code == kDLFloat && t.bits == 32) return dtype::f32;
    if (t.code == kDLFloat && t.bits == 16) return dtype::f16;
    if (t.code == kDLFloat && t.bits == 64) return dtype::f64;
    if (t.code == kDLBfloat && t.bits == 16) return dtype::bf16;
    if (t.code == kDLInt && t.bits == 64) return dtype::i64;
    if (t.code == kDLInt && t.bits == 32) return dtype::i32;
    if (t.code == kDLInt && t.bits == 16) return dtype::i16;
    if (t.code == kDLInt && t.bits == 8) return dtype::i8;
    if (t.code == kDLUInt && t.bits == 8) return dtype::u8;
    if (t.code == kDLUInt && t.bits == 1) return dtype::boolean;
  }
  throw dtype_error("DLPack dtype (code " + std::to_string(t.code) + ", " + std::to_string(t.bits) + " bits, " +
                    std::to_string(t.lanes) + " lanes) has no twin dtype");
}

inline twin::device dlpack_device(const DLDevice& d) {
  switch (d.device_type) {
    case kDLCPU:
    case kDLCUDAHost: return {};
    case kDLCUDA:
    case kDLCUDAManaged: return {device::cuda, static_cast<int>(d.device_id)};
    default:
      throw argument_error("DLPack device type " + std::to_string(static_cast<int>(d.device_type)) +
                           " is neither host memory nor CUDA");
  }
}

inline void* dlpack_data(const DLTensor& t) {
  return static_cast<void*>(static_cast<std::byte*>(t.data) + t.byte_offset);
}

inline std::span<const std::int64_t> dlpack_shape(const DLTensor& t) {
  if (t.ndim < 0) throw shape_error("DLPack tensor has negative ndim " + std::to_string(t.ndim));
  return {t.shape, static_cast<std::size_t>(t.ndim)};
}

// Element strides, computed on the spot (adapt copies them out at once);
// compact row-major when the producer gives none.
inline std::vector<std::int64_t> dlpack_strides(const DLTensor& t) {
  const auto shape = dlpack_shape(t);
  if (t.strides != nullptr) return {t.strides, t.strides + shape.size()};
  const Extents s = row_major_strides(shape);
  return {s.begin(), s.end()};
}
}  // namespace detail

template <>
struct tensor_adapter<DLTensor> {
  static void* data(const DLTensor& t) { return detail::dlpack_data(t); }
  static twin::dtype dtype(const DLTensor& t) { return detail::dlpack_dtype(t.dtype); }
  static std::span<const std::int64_t> shape(const DLTensor& t) { return detail::dlpack_shape(t); }
  static std::vector<std::int64_t> strides(const DLTensor& t) { return detail::dlpack_strides(t); }
  static twin::device device(const DLTensor& t) { return detail::dlpack_device(t.device); }
};

template <>
struct tensor_adapter<DLManagedTensor> {
  static void* data(const DLManagedTensor& t) { return detail::dlpack_data(t.dl_tensor); }
  static twin::dtype dtype(const DLManagedTensor& t) { return detail::dlpack_dtype(t.dl_tensor.dtype); }
  static std::span<const std::int64_t> shape(const DLManagedTensor& t) { return detail::dlpack_shape(t.dl_tensor); }
  static std::vector<std::int64_t> strides(const DLManagedTensor& t) { return detail::dlpack_strides(t.dl_tensor); }
  static twin::device device(const DLManagedTensor& t) { return detail::dlpack_device(t.dl_tensor.device); }
};

}  // namespace twin
