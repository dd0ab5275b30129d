// Must not compile: a const Tensor (a container, not a handle) as a fusion
// output. The concept's message must say why (tests/CMakeLists.txt checks it).
#include "twin/fuse/dynamic_fuser.hpp"

void fuse_into(const twin::DynamicFuser& f, const twin::Tensor& out, std::span<const float> w) {
  f.fuse_tensor("x", out, w);
}
