// The one translation unit of twin's own programs (examples, tests) that
// instantiates the heavy Eigen engines of backend/cpu; every other unit is
// compiled with TWIN_EXTERN_TEMPLATES=1 and sees them as `extern template`
// (config.hpp). A host with many translation units can do the same.
#define TWIN_INSTANTIATE_TEMPLATES
#include "twin/backend/cpu/bf16_pairs.hpp"
#include "twin/backend/cpu/gemm.hpp"
#include "twin/backend/cpu/nn.hpp"
#include "twin/backend/cpu/svd.hpp"
