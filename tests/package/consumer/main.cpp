// Merges two tiny experts through the packaged library and checks the result
// against the hand-computed value, so a broken package fails loudly.
// find_package compiles the umbrella header from the install tree (every
// installed header must be there and compile; the Eigen engines extern, see
// CMakeLists.txt); add_subdirectory checks the target's wiring with the one
// header the merge needs. Each compiles in seconds.
#ifdef TWIN_CONSUMER_ONE_HEADER
#  include <twin/merge/task_arithmetic.hpp>
#else
#  include <twin/twin.hpp>
#endif

#include <cstdio>
#include <exception>
#include <vector>

int main() try {
  const std::int64_t shape[] = {2};
  twin::Tensor base = twin::Tensor::from_f32(std::vector<float>{1.0f, 2.0f}, shape);
  twin::Tensor e1 = twin::Tensor::from_f32(std::vector<float>{2.0f, 2.0f}, shape);
  twin::Tensor e2 = twin::Tensor::from_f32(std::vector<float>{1.0f, 4.0f}, shape);
  const twin::ConstTensorView ev[] = {e1.view(), e2.view()};
  const twin::Tensor out = twin::merge_tensor(twin::TaskArithmetic{0.5, {}}, "w", base.view(), ev);
  const auto v = out.values<float>();
  // base + 0.5 * ((1, 0) + (0, 2)) = (1.5, 3)
  if (v[0] != 1.5f || v[1] != 3.0f) {
    std::fprintf(stderr, "consumer: wrong merge %g %g\n", static_cast<double>(v[0]), static_cast<double>(v[1]));
    return 1;
  }
  std::printf("consumer: twin %d.%d.%d merged correctly\n", TWIN_VERSION_MAJOR, TWIN_VERSION_MINOR, TWIN_VERSION_PATCH);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "consumer: %s\n", e.what());
  return 1;
}
