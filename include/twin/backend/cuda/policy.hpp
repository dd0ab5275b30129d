// The CUDA execution policy (Thrust-style): the first argument of a GPU call,
// carrying the stream and, optionally, a workspace the host owns, so twin never
// allocates or synchronizes behind the host's back on the hot path.
//
//   twin::cuda::Context ctx;                           // handles, made once
//   fuser.fuse(twin::execution::cuda.on(stream), ctx, weights, logits);
#pragma once

#include <cstddef>

#include "twin/backend/cuda/handles.hpp"

namespace twin {

struct cuda_policy {
  cudaStream_t stream = nullptr;
  void* workspace = nullptr;  // device memory the call may use as scratch
  std::size_t workspace_bytes = 0;

  constexpr cuda_policy on(cudaStream_t s) const noexcept { return {s, workspace, workspace_bytes}; }
  constexpr cuda_policy with_workspace(void* p, std::size_t bytes) const noexcept { return {stream, p, bytes}; }
};

namespace execution {
inline constexpr cuda_policy cuda{};
}  // namespace execution

namespace cuda {

// The library handles one host thread uses on one device; bound to a stream
// per call. Creating handles is slow (milliseconds), so hosts keep one.
class Context {
 public:
  Context() : blas_(CublasHandle::create()), lt_(CublasLtHandle::create()), solver_(CusolverDnHandle::create()) {}

  cublasHandle_t blas(const cuda_policy& p) const {
    TWIN_CUDA_CHECK(cublasSetStream(blas_, p.stream));
    return blas_;
  }
  cublasLtHandle_t lt() const noexcept { return lt_; }
  cusolverDnHandle_t solver(const cuda_policy& p) const {
    TWIN_CUDA_CHECK(cusolverDnSetStream(solver_, p.stream));
    return solver_;
  }

 private:
  CublasHandle blas_;
  CublasLtHandle lt_;
  CusolverDnHandle solver_;
};

}  // namespace cuda
}  // namespace twin
