// Merging straight into a foreign engine's own tensors: three experts'
// weights live in engine::tensor buffers (ggml-like, see engine_tensor.hpp);
// twin reads them through the adapter and writes the TIES merge into an
// engine-owned output, including a transposed (strided) one.
#include <cstdio>
#include <random>
#include <vector>

#include "engine_tensor.hpp"
#include "twin/twin.hpp"

namespace {
engine::tensor make_matrix(std::vector<float>& storage, std::int64_t rows, std::int64_t cols) {
  storage.resize(static_cast<std::size_t>(rows * cols));
  return {engine::ggml_type::f32, 2, {cols, rows, 1, 1}, {sizeof(float), sizeof(float) * cols, 0, 0}, storage.data()};
}
}  // namespace

int main() {
  constexpr std::int64_t rows = 4, cols = 6;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> base_s, out_s, e_s[3];
  engine::tensor base = make_matrix(base_s, rows, cols), out = make_matrix(out_s, rows, cols), experts[3];
  for (float& x : base_s) x = nd(rng);
  for (int i = 0; i < 3; ++i) {
    experts[i] = make_matrix(e_s[i], rows, cols);
    for (std::size_t j = 0; j < e_s[i].size(); ++j) e_s[i][j] = base_s[j] + 0.1f * nd(rng);
  }
  const twin::ConstTensorView ev[] = {twin::adapt(std::as_const(experts[0])), twin::adapt(std::as_const(experts[1])),
                                      twin::adapt(std::as_const(experts[2]))};
  twin::Ties ties;
  ties.density = 0.5;
  ties.merge_tensor({"blk.0.attn_q.weight", twin::adapt(std::as_const(base)), ev, twin::adapt(out)});
  std::printf("TIES merge of 3 experts into an engine tensor [%lld x %lld]:\n", static_cast<long long>(rows),
              static_cast<long long>(cols));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c)
      std::printf(" %+.4f (base %+.4f)", static_cast<double>(out_s[static_cast<std::size_t>(r * cols + c)]),
                  static_cast<double>(base_s[static_cast<std::size_t>(r * cols + c)]));
    std::printf("\n");
  }
  // A transposed engine view (ne swapped, nb swapped) is a strided twin view.
  engine::tensor t = out;
  t.ne[0] = rows, t.ne[1] = cols, t.nb[0] = sizeof(float) * cols, t.nb[1] = sizeof(float);
  const twin::ConstTensorView tv = twin::adapt(std::as_const(t));
  std::printf("transposed view: shape %s, contiguous: %s, element [1, 0] = %+.4f (= out[0, 1] %+.4f)\n",
              tv.shape_str().c_str(), tv.is_contiguous() ? "yes" : "no", twin::element_f64(tv, rows),
              static_cast<double>(out_s[1]));
  return 0;
}
