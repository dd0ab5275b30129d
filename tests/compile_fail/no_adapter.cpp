// Must not compile: a type without a tensor_adapter used as a fusion output.
// The concept's message must say what to do (tests/CMakeLists.txt checks it).
#include "twin/fuse/dynamic_fuser.hpp"

struct NotATensor {
  float* data;
};

void fuse_into(const twin::DynamicFuser& f, NotATensor& out, std::span<const float> w) { f.fuse_tensor("x", out, w); }
