// Eigen kernels behind the small neural-network pieces (twin/route/nn.hpp):
// row-major matrix products and column reductions whose results are
// bit-identical for any thread count, which is what makes router training
// reproducible for a seed.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "twin/config.hpp"
#include "twin/parallel.hpp"

namespace twin::backend::cpu {

template <class S>
using RowMatrix = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

using Index = Eigen::Index;

// Tiles of the product that one worker computes. Fixed sizes (never derived
// from the thread count) keep every tile's arithmetic the same however many
// threads share them; 256 x 256 tiles keep Eigen's kernel near its peak.
inline constexpr Index gemm_tile_rows = 256;
inline constexpr Index gemm_tile_cols = 256;

// Below parallel_min_work multiply-adds (GEMM) or parallel_min_elements
// elements (elementwise kernels) a kernel stays on the calling thread: waking
// the team costs more than the work, and much more on a loaded machine where
// a barrier may wait for a descheduled thread. Serial or parallel, the blocks
// and so the bits are the same. The values come from config.hpp.
inline constexpr double parallel_min_work = TWIN_NN_PARALLEL_MIN_WORK;
inline constexpr Index parallel_min_elements = TWIN_NN_PARALLEL_MIN_ELEMENTS;

namespace detail {

// Rows of C per call into Eigen. A destination whose compile-time row bound
// is 32 or less is one Eigen never spreads over threads, so each call runs
// single-threaded with a cache blocking chosen from the shapes alone, never
// from the thread count: the order of the sums, and so the bits of the
// result, do not depend on how many threads share the tiles.
inline constexpr Index gemm_panel_rows = 32;

template <class S>
using PanelMap =
    Eigen::Map<Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor, gemm_panel_rows, Eigen::Dynamic>,
               Eigen::Unaligned, Eigen::OuterStride<>>;
template <class S>
using ConstRowMap = Eigen::Map<const RowMatrix<S>, Eigen::Unaligned, Eigen::OuterStride<>>;

// C[M,N] += op(A) * op(B) on the calling thread, all row-major.
template <class S, bool TransA, bool TransB>
void gemm_serial(Index M, Index N, Index K, const S* A, Index lda, const S* B, Index ldb, S* C, Index ldc) {
  if (M == 0 || N == 0 || K == 0) return;
  const ConstRowMap<S> b(B, TransB ? N : K, TransB ? K : N, Eigen::OuterStride<>(ldb));
  for (Index i0 = 0; i0 < M; i0 += gemm_panel_rows) {
    const Index m = std::min(gemm_panel_rows, M - i0);
    PanelMap<S> c(C + i0 * ldc, m, N, Eigen::OuterStride<>(ldc));
    const ConstRowMap<S> a(TransA ? A + i0 : A + i0 * lda, TransA ? K : m, TransA ? m : K, Eigen::OuterStride<>(lda));
    if constexpr (TransA && TransB) c.noalias() += a.transpose() * b.transpose();
    else if constexpr (TransA) c.noalias() += a.transpose() * b;
    else if constexpr (TransB) c.noalias() += a * b.transpose();
    else c.noalias() += a * b;
  }
}

}  // namespace detail

// C[M,N] = op(A)[M,K] * op(B)[K,N] (+ C when accumulate), where every matrix
// is row-major with leading dimension ld*: op(A) = A when !trans_a (A is
// [M,K]) and Aᵀ when trans_a (A is [K,M]); likewise B. When `row_init` is
// given (N values), each row of C starts from it instead of zero (a bias).
template <class S>
void gemm(bool trans_a, bool trans_b, Index M, Index N, Index K, const S* A, Index lda, const S* B, Index ldb, S* C,
          Index ldc, bool accumulate = false, const S* row_init = nullptr) {
  if (M == 0 || N == 0) return;
  const Index tm = (M + gemm_tile_rows - 1) / gemm_tile_rows;
  const Index tn = (N + gemm_tile_cols - 1) / gemm_tile_cols;
  auto tiles = [&](std::int64_t t0, std::int64_t t1) {
    for (std::int64_t t = t0; t < t1; ++t) {
      const Index i0 = (t / tn) * gemm_tile_rows, j0 = (t % tn) * gemm_tile_cols;
      const Index m = std::min(gemm_tile_rows, M - i0), n = std::min(gemm_tile_cols, N - j0);
      S* c = C + i0 * ldc + j0;
      if (!accumulate)
        for (Index i = 0; i < m; ++i) {
          S* row = c + i * ldc;
          if (row_init) std::copy(row_init + j0, row_init + j0 + n, row);
          else std::fill(row, row + n, S(0));
        }
      const S* a = trans_a ? A + i0 : A + i0 * lda;
      const S* b = trans_b ? B + j0 * ldb : B + j0;
      if (trans_a) {
        if (trans_b) detail::gemm_serial<S, true, true>(m, n, K, a, lda, b, ldb, c, ldc);
        else detail::gemm_serial<S, true, false>(m, n, K, a, lda, b, ldb, c, ldc);
      } else {
        if (trans_b) detail::gemm_serial<S, false, true>(m, n, K, a, lda, b, ldb, c, ldc);
        else detail::gemm_serial<S, false, false>(m, n, K, a, lda, b, ldb, c, ldc);
      }
    }
  };
  if (static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K) < parallel_min_work) {
    tiles(0, tm * tn);
  } else {
    // Eigen's cache-size statics must be set before threads call its kernels.
    Eigen::initParallel();
    parallel_blocks(tm * tn, 1, tiles);
  }
}

#if TWIN_EXTERN_TEMPLATES
TWIN_TEMPLATE_INSTANCE void gemm<float>(bool, bool, Index, Index, Index, const float*, Index, const float*, Index,
                                        float*, Index, bool, const float*);
TWIN_TEMPLATE_INSTANCE void gemm<double>(bool, bool, Index, Index, Index, const double*, Index, const double*, Index,
                                         double*, Index, bool, const double*);
#endif

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
