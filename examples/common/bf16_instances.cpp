// The bf16 dot-product kernel of backend/cpu/bf16_pairs.hpp, instantiated
// once for twin's own programs (config.hpp, TWIN_EXTERN_TEMPLATES), apart
// from the Eigen engines: this one is twin's own code and keeps every
// sanitizer of the build.
#define TWIN_INSTANTIATE_TEMPLATES
#include "twin/backend/cpu/bf16_pairs.hpp"
