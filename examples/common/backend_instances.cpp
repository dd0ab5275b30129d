// The one translation unit of twin's own programs (examples, tests) that
// instantiates the Eigen engines of backend/cpu (the GEMMs and the SVDs);
// every other unit is compiled with TWIN_EXTERN_TEMPLATES=1 and sees them as
// `extern template` (config.hpp). A host with many translation units can do
// the same. The test suite builds this unit without AddressSanitizer's
// instrumentation (UBSan stays): Eigen's packed kernels under ASan were three
// quarters of the paper smoke test's time. The entries that reach these
// engines (gemm, gemm_bf16, SvdCompressor::factorize), compiled with ASan in
// the callers' units, check their operands' bounds instead (docs/design.md §8).
// The bf16 dot-product kernel, twin's own code, is in bf16_instances.cpp.
#define TWIN_INSTANTIATE_TEMPLATES
#include "twin/backend/cpu/gemm.hpp"
#include "twin/backend/cpu/svd.hpp"
