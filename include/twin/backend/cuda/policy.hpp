// The CUDA execution policy (Thrust-style): it carries the stream and,
// optionally, a workspace the host owns, so that GPU algorithms, which take
// it as their first argument, never allocate or synchronize behind the host's
// back. Only the seam exists so far (no algorithm takes it yet):
//
//   twin::cuda::Context ctx;                                  // handles, made once
//   const twin::cuda_policy p = twin::execution::cuda.on(stream);
//   cublasHandle_t blas = ctx.blas(p);                        // bound to p's stream
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
