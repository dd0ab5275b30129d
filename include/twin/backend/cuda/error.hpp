// CUDA runtime, cuBLAS(Lt) and cuSOLVER status codes turned into
// twin::device_error at the boundary, with the call and the library's message
// (Thrust-style: CUB-like status codes inside, exceptions at the API).
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>

#include <string>

#include "twin/error.hpp"

namespace twin::cuda {

inline std::string cusolver_status_string(cusolverStatus_t s) {
  switch (s) {
    case CUSOLVER_STATUS_SUCCESS: return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED: the library was not initialized";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED: resource allocation failed";
    case CUSOLVER_STATUS_INVALID_VALUE:
      return "CUSOLVER_STATUS_INVALID_VALUE: an unsupported value or parameter was passed";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH: the device lacks a required feature";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED: the GPU program failed to execute";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR: an internal operation failed";
    case CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED: return "CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED: the operation is not supported";
    default: return "cuSOLVER status " + std::to_string(static_cast<int>(s));
  }
}

namespace detail {
inline std::string where(const char* call, const char* file, int line) {
  return std::string(call) + " at " + file + ":" + std::to_string(line);
}
}  // namespace detail

inline void check(cudaError_t e, const char* call, const char* file, int line) {
  if (e != cudaSuccess)
    throw device_error(detail::where(call, file, line) + " failed: " + cudaGetErrorName(e) + ": " +
                       cudaGetErrorString(e));
}
inline void check(cublasStatus_t s, const char* call, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw device_error(detail::where(call, file, line) + " failed: " + cublasGetStatusName(s) + ": " +
                       cublasGetStatusString(s));
}
inline void check(cusolverStatus_t s, const char* call, const char* file, int line) {
  if (s != CUSOLVER_STATUS_SUCCESS)
    throw device_error(detail::where(call, file, line) + " failed: " + cusolver_status_string(s));
}

}  // namespace twin::cuda

// Wraps any CUDA runtime / cuBLAS / cuBLASLt / cuSOLVER call.
#define TWIN_CUDA_CHECK(call) ::twin::cuda::check((call), #call, __FILE__, __LINE__)
