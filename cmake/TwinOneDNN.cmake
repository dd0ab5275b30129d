# oneDNN (Debian's libdnnl-dev) for the fastest CPU products: f32 sgemm and
# bf16 matmuls with kernels chosen at run time from cpuid
# (include/twin/backend/cpu/onednn.hpp). Found by path, not through
# dnnl-config.cmake, which Debian's package ties to OpenCL.
find_path(TWIN_ONEDNN_INCLUDE_DIR oneapi/dnnl/dnnl.hpp)
find_library(TWIN_ONEDNN_LIBRARY NAMES dnnl)
if(TWIN_ONEDNN_INCLUDE_DIR AND TWIN_ONEDNN_LIBRARY)
  message(STATUS "twin: oneDNN found (${TWIN_ONEDNN_LIBRARY}): fastest products and bf16 dot products through it")
  target_include_directories(twin INTERFACE $<BUILD_INTERFACE:${TWIN_ONEDNN_INCLUDE_DIR}>)
  target_link_libraries(twin INTERFACE ${TWIN_ONEDNN_LIBRARY})
  target_compile_definitions(twin INTERFACE TWIN_HAVE_ONEDNN=1)
  set(TWIN_HAVE_ONEDNN ON)
else()
  message(STATUS "twin: oneDNN not found (apt-get install libdnnl-dev): every product through Eigen")
  set(TWIN_HAVE_ONEDNN OFF)
endif()
