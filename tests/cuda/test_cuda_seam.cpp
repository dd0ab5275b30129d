// The CUDA seam: status codes become twin::device_error naming the call and
// the library's message (checked without a device: the message tables are
// host code), and the RAII handles work on a device (suite "gpu": run by
// test_cuda_seam_device, SKIPPED without a GPU).
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "twin/backend/cuda/policy.hpp"

TEST_CASE("a failing CUDA runtime call throws device_error with the call and cudaGetErrorString") {
  try {
    TWIN_CUDA_CHECK(cudaErrorInvalidValue);
    FAIL("no exception");
  } catch (const twin::device_error& e) {
    const std::string m = e.what();
    CHECK(m.find("cudaErrorInvalidValue") != std::string::npos);
    CHECK(m.find(cudaGetErrorString(cudaErrorInvalidValue)) != std::string::npos);
    CHECK(m.find("test_cuda_seam.cpp") != std::string::npos);
  }
  CHECK_NOTHROW(TWIN_CUDA_CHECK(cudaSuccess));
}

TEST_CASE("cuBLAS and cuSOLVER statuses throw with the library's status name") {
  CHECK_THROWS_WITH_AS(TWIN_CUDA_CHECK(CUBLAS_STATUS_INVALID_VALUE), doctest::Contains("CUBLAS_STATUS_INVALID_VALUE"),
                       twin::device_error);
  CHECK_THROWS_WITH_AS(TWIN_CUDA_CHECK(CUSOLVER_STATUS_INVALID_VALUE),
                       doctest::Contains("CUSOLVER_STATUS_INVALID_VALUE"), twin::device_error);
}

TEST_CASE("the policy carries the stream and workspace it is given") {
  const auto s = reinterpret_cast<cudaStream_t>(0x10);
  int scratch = 0;
  const twin::cuda_policy p = twin::execution::cuda.on(s).with_workspace(&scratch, 4);
  CHECK(p.stream == s);
  CHECK(p.workspace == &scratch);
  CHECK(p.workspace_bytes == 4);
  CHECK(twin::execution::cuda.stream == nullptr);
}

TEST_CASE("on a device: handles, stream, events and stream-ordered memory round trip" * doctest::test_suite("gpu")) {
  twin::cuda::Stream s = twin::cuda::Stream::create();
  twin::cuda::Context ctx;
  CHECK(ctx.blas(twin::execution::cuda.on(s)) != nullptr);
  twin::cuda::DeviceBuffer buf(1024, s);
  std::vector<float> host(256, 3.0f), back(256, 0.0f);
  TWIN_CUDA_CHECK(cudaMemcpyAsync(buf.data(), host.data(), 1024, cudaMemcpyHostToDevice, s));
  TWIN_CUDA_CHECK(cudaMemcpyAsync(back.data(), buf.data(), 1024, cudaMemcpyDeviceToHost, s));
  s.synchronize();
  CHECK(back == host);
}
