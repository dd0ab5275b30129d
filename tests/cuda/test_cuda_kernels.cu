// nvcc-compiled check that twin's CUDA headers build in device translation
// units and that a kernel launched on the policy's stream runs. The GPU
// kernels of the fusion and merge paths add their tests here.
#include <doctest/doctest.h>

#include <vector>

#include "twin/backend/cuda/policy.hpp"
#include "twin/dtype.hpp"

namespace {
__global__ void axpy(int n, float a, const float* x, float* y) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] += a * x[i];
}
}  // namespace

TEST_CASE("a kernel on the policy's stream computes y += a x like the host" * doctest::test_suite("gpu")) {
  twin::cuda::Stream s = twin::cuda::Stream::create();
  const auto policy = twin::execution::cuda.on(s);
  const int n = 1000;
  std::vector<float> x(n), y(n), ref(n);
  for (int i = 0; i < n; ++i) x[i] = 0.5f * i, y[i] = 1.0f - i, ref[i] = y[i] + 2.0f * x[i];
  twin::cuda::DeviceBuffer dx(n * sizeof(float), policy.stream), dy(n * sizeof(float), policy.stream);
  TWIN_CUDA_CHECK(cudaMemcpyAsync(dx.data(), x.data(), n * sizeof(float), cudaMemcpyHostToDevice, policy.stream));
  TWIN_CUDA_CHECK(cudaMemcpyAsync(dy.data(), y.data(), n * sizeof(float), cudaMemcpyHostToDevice, policy.stream));
  axpy<<<(n + 255) / 256, 256, 0, policy.stream>>>(n, 2.0f, dx.as<float>(), dy.as<float>());
  TWIN_CUDA_CHECK(cudaGetLastError());
  TWIN_CUDA_CHECK(cudaMemcpyAsync(y.data(), dy.data(), n * sizeof(float), cudaMemcpyDeviceToHost, policy.stream));
  s.synchronize();
  CHECK(y == ref);
}
