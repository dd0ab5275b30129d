# The CUDA path (TWIN_ENABLE_CUDA=ON): twin::cuda adds the toolkit's runtime,
# cuBLAS, cuBLASLt and cuSOLVER to twin::twin. So far include/twin/backend/cuda/
# holds the seam only (execution policy, context, RAII handles, status ->
# device_error), plain C++ over those libraries; device kernels, when they
# come, go in .cuh files that only nvcc-built translation units include.
find_package(CUDAToolkit REQUIRED)

add_library(twin_cuda INTERFACE)
add_library(twin::cuda ALIAS twin_cuda)
target_link_libraries(twin_cuda INTERFACE twin CUDA::cudart CUDA::cublas CUDA::cublasLt CUDA::cusolver)
target_compile_definitions(twin_cuda INTERFACE TWIN_HAS_CUDA=1)
set_target_properties(twin_cuda PROPERTIES EXPORT_NAME cuda)

if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  # Hopper (H100/H200) first, Ampere second; override on the command line.
  set(CMAKE_CUDA_ARCHITECTURES "90;80")
endif()
include(CheckLanguage)
check_language(CUDA)
if(CMAKE_CUDA_COMPILER)
  enable_language(CUDA)
  # CMake 3.25 does not know that nvcc 12+ speaks C++20, so the dialect is
  # passed directly instead of through CMAKE_CUDA_STANDARD.
  target_compile_options(twin_cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:--std=c++20>)
else()
  message(WARNING "TWIN_ENABLE_CUDA: no CUDA compiler found; only host-side CUDA code is built")
endif()

if(TWIN_INSTALL)
  install(TARGETS twin_cuda EXPORT twinCudaTargets)
  install(EXPORT twinCudaTargets NAMESPACE twin:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/twin)
endif()
