// Dense f32 matrix products for fusion, mixed-batch apply and model building,
// through Eigen's GEMM at full speed (its results may depend on the thread
// count). The router and the examples' networks use backend/cpu/nn.hpp's
// thread-count-invariant tiled product instead, and the SVD engines call
// Eigen in backend/cpu/svd.hpp.
#pragma once

#include <cstdint>

#include <Eigen/Core>

#include "twin/parallel.hpp"

namespace twin::backend::cpu {

using RowMatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstRowMapF = Eigen::Map<const RowMatrixF, Eigen::Unaligned, Eigen::OuterStride<>>;
using RowMapF = Eigen::Map<RowMatrixF, Eigen::Unaligned, Eigen::OuterStride<>>;

// C = alpha·op(A)·op(B) (beta = 0) or C += alpha·op(A)·op(B) (beta = 1), all
// row-major with leading dimensions in elements; op(X) = Xᵀ when trans_x.
// A is [M×K] (or [K×M] when trans_a), B is [K×N] (or [N×K] when trans_b).
// Called from inside a parallel region, Eigen runs single-threaded; called
// outside one, it spreads the product over the OpenMP threads itself.
inline void gemm(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, float alpha,
                 const float* A, std::int64_t lda, const float* B, std::int64_t ldb, bool accumulate, float* C,
                 std::int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  RowMapF c(C, M, N, Eigen::OuterStride<>(ldc));
  if (K <= 0) {
    if (!accumulate) c.setZero();
    return;
  }
  auto run = [&](const auto& a, const auto& b) {
    if (accumulate) c.noalias() += alpha * a * b;
    else c.noalias() = alpha * a * b;
  };
  const ConstRowMapF a(A, trans_a ? K : M, trans_a ? M : K, Eigen::OuterStride<>(lda));
  const ConstRowMapF b(B, trans_b ? N : K, trans_b ? K : N, Eigen::OuterStride<>(ldb));
  if (!trans_a && !trans_b) run(a, b);
  else if (!trans_a && trans_b) run(a, b.transpose());
  else if (trans_a && !trans_b) run(a.transpose(), b);
  else run(a.transpose(), b.transpose());
}

// The same product spread over the threads by twin itself: the larger of M
// and N is cut into one block per thread and each block runs Eigen
// single-threaded. Eigen's own parallel GEMM synchronizes its threads by
// spinning, which collapses when the cores are shared with other processes.
inline void gemm_parallel(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, float alpha,
                          const float* A, std::int64_t lda, const float* B, std::int64_t ldb, bool accumulate, float* C,
                          std::int64_t ldc) {
  const std::int64_t nt = num_threads();
  if (nt <= 1 || M * N * std::max<std::int64_t>(K, 1) < (std::int64_t{1} << 20)) {
    gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, accumulate, C, ldc);
    return;
  }
  if (M >= N) {
    parallel_blocks(M, (M + nt - 1) / nt, [&](std::int64_t lo, std::int64_t hi) {
      gemm(trans_a, trans_b, hi - lo, N, K, alpha, trans_a ? A + lo : A + lo * lda, lda, B, ldb, accumulate,
           C + lo * ldc, ldc);
    });
  } else {
    parallel_blocks(N, (N + nt - 1) / nt, [&](std::int64_t lo, std::int64_t hi) {
      gemm(trans_a, trans_b, M, hi - lo, K, alpha, A, lda, trans_b ? B + lo * ldb : B + lo, ldb, accumulate, C + lo,
           ldc);
    });
  }
}

}  // namespace twin::backend::cpu
