// Must not compile: a view of a temporary Tensor, which is freed at the end
// of the full expression (the view would dangle). tests/CMakeLists.txt checks
// that the message says so.
#include "twin/adapter.hpp"
#include "twin/tensor.hpp"

twin::TensorView dangling() { return twin::adapt(twin::Tensor(twin::dtype::f32, {4})); }
