// Kernels behind the small neural-network pieces (twin/route/nn.hpp) besides
// the product (gemm.hpp, GemmMode::invariant): column reductions and
// elementwise loops whose results are bit-identical for any thread count,
// which is what makes router training reproducible for a seed.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "twin/backend/cpu/gemm.hpp"
#include "twin/config.hpp"
#include "twin/parallel.hpp"

namespace twin::backend::cpu {

// Below parallel_min_elements elements the elementwise kernels stay on the
// calling thread (config.hpp); any split gives the same bits.
inline constexpr Index parallel_min_elements = TWIN_NN_PARALLEL_MIN_ELEMENTS;

// Columns per block of the column reductions: each block's sums run down the
// rows in order, so they do not depend on how blocks are spread over threads.
inline constexpr Index column_block = 64;

// f(c0, c1) for blocks of columns [c0, c1) of a matrix with `cols` columns,
// in parallel when there is enough work.
template <class F>
void for_column_blocks(Index rows, Index cols, F&& f) {
  if (rows * cols < parallel_min_elements / 4) {
    for (Index c0 = 0; c0 < cols; c0 += column_block) f(c0, std::min(cols, c0 + column_block));
    return;
  }
  parallel_blocks(cols, column_block, [&](std::int64_t c0, std::int64_t c1) { f(Index(c0), Index(c1)); });
}

// f(r0, r1) for blocks of rows; for elementwise work (no sums across rows, so
// any split gives the same bits). Costly elements (a random draw each) pass
// a lower `min_elements`.
template <class F>
void for_row_blocks(Index rows, Index cols, F&& f, Index min_elements = parallel_min_elements) {
  const Index per = std::max<Index>(1, 65536 / std::max<Index>(cols, 1));
  if (rows * cols < min_elements || rows <= per) {
    f(Index(0), rows);
    return;
  }
  parallel_blocks(rows, per, [&](std::int64_t r0, std::int64_t r1) { f(Index(r0), Index(r1)); });
}

// out[c] = Σ_r X[r, c] over the rows of a row-major [rows, cols] matrix,
// summed in double in row order.
template <class S>
void column_sums(const S* X, Index rows, Index cols, Index ld, S* out) {
  for_column_blocks(rows, cols, [&](Index c0, Index c1) {
    double acc[column_block] = {};
    const Index w = c1 - c0;
    for (Index r = 0; r < rows; ++r) {
      const S* x = X + r * ld + c0;
      for (Index c = 0; c < w; ++c) acc[c] += static_cast<double>(x[c]);
    }
    for (Index c = 0; c < w; ++c) out[c0 + c] = static_cast<S>(acc[c]);
  });
}

}  // namespace twin::backend::cpu
