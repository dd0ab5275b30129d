// RAII owners of CUDA streams, events, device memory and the cuBLAS,
// cuBLASLt and cuSOLVER handles. Destructors never throw; creation failures
// throw twin::device_error.
#pragma once

#include <cstddef>
#include <utility>

#include "twin/backend/cuda/error.hpp"

namespace twin::cuda {

// A move-only owner of a handle H destroyed by D.
template <class H, auto Destroy>
class UniqueHandle {
 public:
  UniqueHandle() = default;
  explicit UniqueHandle(H h) noexcept : h_(h) {}
  UniqueHandle(UniqueHandle&& o) noexcept : h_(std::exchange(o.h_, H{})) {}
  UniqueHandle& operator=(UniqueHandle&& o) noexcept {
    if (this != &o) {
      reset();
      h_ = std::exchange(o.h_, H{});
    }
    return *this;
  }
  UniqueHandle(const UniqueHandle&) = delete;
  UniqueHandle& operator=(const UniqueHandle&) = delete;
  ~UniqueHandle() { reset(); }

  H get() const noexcept { return h_; }
  operator H() const noexcept { return h_; }
  explicit operator bool() const noexcept { return h_ != H{}; }
  void reset() noexcept {
    if (h_ != H{}) (void)Destroy(h_);
    h_ = H{};
  }

 private:
  H h_{};
};

class Stream : public UniqueHandle<cudaStream_t, cudaStreamDestroy> {
 public:
  // A non-blocking stream: work on it does not serialize with the legacy
  // default stream.
  static Stream create() {
    cudaStream_t s{};
    TWIN_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    return Stream(s);
  }
  void synchronize() const { TWIN_CUDA_CHECK(cudaStreamSynchronize(get())); }

 private:
  using UniqueHandle::UniqueHandle;
};

class Event : public UniqueHandle<cudaEvent_t, cudaEventDestroy> {
 public:
  static Event create(unsigned flags = cudaEventDefault) {
    cudaEvent_t e{};
    TWIN_CUDA_CHECK(cudaEventCreateWithFlags(&e, flags));
    return Event(e);
  }
  void record(cudaStream_t s) const { TWIN_CUDA_CHECK(cudaEventRecord(get(), s)); }
  // Milliseconds from `start` to this event (both recorded, this one completed).
  float elapsed_since(const Event& start) const {
    TWIN_CUDA_CHECK(cudaEventSynchronize(get()));
    float ms = 0;
    TWIN_CUDA_CHECK(cudaEventElapsedTime(&ms, start.get(), get()));
    return ms;
  }

 private:
  using UniqueHandle::UniqueHandle;
};

class CublasHandle : public UniqueHandle<cublasHandle_t, cublasDestroy> {
 public:
  static CublasHandle create() {
    cublasHandle_t h{};
    TWIN_CUDA_CHECK(cublasCreate(&h));
    return CublasHandle(h);
  }

 private:
  using UniqueHandle::UniqueHandle;
};

class CublasLtHandle : public UniqueHandle<cublasLtHandle_t, cublasLtDestroy> {
 public:
  static CublasLtHandle create() {
    cublasLtHandle_t h{};
    TWIN_CUDA_CHECK(cublasLtCreate(&h));
    return CublasLtHandle(h);
  }

 private:
  using UniqueHandle::UniqueHandle;
};

class CusolverDnHandle : public UniqueHandle<cusolverDnHandle_t, cusolverDnDestroy> {
 public:
  static CusolverDnHandle create() {
    cusolverDnHandle_t h{};
    TWIN_CUDA_CHECK(cusolverDnCreate(&h));
    return CusolverDnHandle(h);
  }

 private:
  using UniqueHandle::UniqueHandle;
};

// Device memory of `bytes` bytes, allocated and freed in stream order.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(std::size_t bytes, cudaStream_t stream) : bytes_(bytes), stream_(stream) {
    if (bytes) TWIN_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream));
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)), stream_(o.stream_) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
      stream_ = o.stream_;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { release(); }

  void* data() const noexcept { return ptr_; }
  template <class T>
  T* as() const noexcept {
    return static_cast<T*>(ptr_);
  }
  std::size_t size() const noexcept { return bytes_; }

 private:
  void release() noexcept {
    if (ptr_) (void)cudaFreeAsync(ptr_, stream_);
    ptr_ = nullptr;
  }
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
  cudaStream_t stream_ = nullptr;
};

// Number of CUDA devices, 0 when there is none or no driver (never throws:
// callers decide whether that is an error or a skip).
inline int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

}  // namespace twin::cuda
