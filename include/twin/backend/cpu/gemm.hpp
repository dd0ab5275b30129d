// The one entry for dense matrix products on the CPU (docs/design.md §8),
// with an explicit choice of what matters more:
//   GemmMode::invariant  the bits of C do not depend on the thread count:
//                        fixed 256×256 tiles of C, each computed by Eigen on
//                        one thread. Router training and the examples'
//                        networks, whose runs must repeat for a seed.
//   GemmMode::fastest    the CPU's best: oneDNN's sgemm (kernels chosen at run
//                        time from cpuid) when built with TWIN_HAVE_ONEDNN,
//                        else Eigen with the rows or columns spread over the
//                        threads. Fusion, mixed-batch apply, model building.
// gemm_bf16 multiplies bf16 operands: bf16 dot products (AVX-512 BF16, AMX)
// through oneDNN where the CPU has them, else the operands widened to f32
// and the fastest f32 product. Called inside a parallel region, every path
// runs on the calling thread.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "twin/backend/cpu/onednn.hpp"
#include "twin/backend/cpu/switch.hpp"
#include "twin/config.hpp"
#include "twin/dtype.hpp"
#include "twin/parallel.hpp"

#if TWIN_ASAN
#  include <sanitizer/asan_interface.h>
#endif

namespace twin::backend::cpu {

template <class S>
using RowMatrix = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

using Index = Eigen::Index;

enum class GemmMode { invariant, fastest };

// Tiles of the invariant product that one worker computes. Fixed sizes
// (never derived from the thread count) keep every tile's arithmetic the
// same however many threads share them; 256 × 256 keeps Eigen near its peak.
inline constexpr Index gemm_tile_rows = 256;
inline constexpr Index gemm_tile_cols = 256;

// Below parallel_min_work multiply-adds the invariant product stays on the
// calling thread (config.hpp): waking the team costs more than the work.
// Serial or parallel, the tiles and so the bits are the same.
inline constexpr double parallel_min_work = TWIN_NN_PARALLEL_MIN_WORK;

namespace detail {

// Rows of C per call into Eigen. A destination whose compile-time row bound
// is 32 or less is one Eigen never spreads over threads, so each call runs
// single-threaded with a cache blocking chosen from the shapes alone, never
// from the thread count.
inline constexpr Index gemm_panel_rows = 32;

template <class S>
using PanelMap =
    Eigen::Map<Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor, gemm_panel_rows, Eigen::Dynamic>,
               Eigen::Unaligned, Eigen::OuterStride<>>;
template <class S>
using ConstRowMap = Eigen::Map<const RowMatrix<S>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class S>
using RowMap = Eigen::Map<RowMatrix<S>, Eigen::Unaligned, Eigen::OuterStride<>>;

// C[M,N] += alpha · op(A) · op(B) on the calling thread, 32 rows at a time.
template <class S, bool TransA, bool TransB>
void gemm_panels(Index M, Index N, Index K, S alpha, const S* A, Index lda, const S* B, Index ldb, S* C, Index ldc) {
  if (M == 0 || N == 0 || K == 0) return;
  const ConstRowMap<S> b(B, TransB ? N : K, TransB ? K : N, Eigen::OuterStride<>(ldb));
  for (Index i0 = 0; i0 < M; i0 += gemm_panel_rows) {
    const Index m = std::min(gemm_panel_rows, M - i0);
    PanelMap<S> c(C + i0 * ldc, m, N, Eigen::OuterStride<>(ldc));
    const ConstRowMap<S> a(TransA ? A + i0 : A + i0 * lda, TransA ? K : m, TransA ? m : K, Eigen::OuterStride<>(lda));
    if constexpr (TransA && TransB) c.noalias() += alpha * a.transpose() * b.transpose();
    else if constexpr (TransA) c.noalias() += alpha * a.transpose() * b;
    else if constexpr (TransB) c.noalias() += alpha * a * b.transpose();
    else c.noalias() += alpha * a * b;
  }
}

// Rows [i0, i0 + m) × columns [j0, j0 + n) of C start from row_init (a bias
// per column) or zero.
template <class S>
void init_block(S* C, Index ldc, Index i0, Index j0, Index m, Index n, const S* row_init) {
  for (Index i = 0; i < m; ++i) {
    S* row = C + (i0 + i) * ldc + j0;
    if (row_init) std::copy(row_init + j0, row_init + j0 + n, row);
    else std::fill(row, row + n, S(0));
  }
}

template <class S>
void invariant_gemm(bool trans_a, bool trans_b, Index M, Index N, Index K, S alpha, const S* A, Index lda, const S* B,
                    Index ldb, bool accumulate, S* C, Index ldc, const S* row_init) {
  const Index tm = (M + gemm_tile_rows - 1) / gemm_tile_rows;
  const Index tn = (N + gemm_tile_cols - 1) / gemm_tile_cols;
  auto tiles = [&](std::int64_t t0, std::int64_t t1) {
    for (std::int64_t t = t0; t < t1; ++t) {
      const Index i0 = (t / tn) * gemm_tile_rows, j0 = (t % tn) * gemm_tile_cols;
      const Index m = std::min(gemm_tile_rows, M - i0), n = std::min(gemm_tile_cols, N - j0);
      if (!accumulate) init_block(C, ldc, i0, j0, m, n, row_init);
      S* c = C + i0 * ldc + j0;
      const S* a = trans_a ? A + i0 : A + i0 * lda;
      const S* b = trans_b ? B + j0 * ldb : B + j0;
      if (trans_a) {
        if (trans_b) gemm_panels<S, true, true>(m, n, K, alpha, a, lda, b, ldb, c, ldc);
        else gemm_panels<S, true, false>(m, n, K, alpha, a, lda, b, ldb, c, ldc);
      } else {
        if (trans_b) gemm_panels<S, false, true>(m, n, K, alpha, a, lda, b, ldb, c, ldc);
        else gemm_panels<S, false, false>(m, n, K, alpha, a, lda, b, ldb, c, ldc);
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

// C = alpha·op(A)·op(B) (+ C) by one Eigen product; outside a parallel
// region Eigen spreads it over the OpenMP threads itself.
template <class S>
void eigen_gemm(bool trans_a, bool trans_b, Index M, Index N, Index K, S alpha, const S* A, Index lda, const S* B,
                Index ldb, bool accumulate, S* C, Index ldc) {
  RowMap<S> c(C, M, N, Eigen::OuterStride<>(ldc));
  auto run = [&](const auto& a, const auto& b) {
    if (accumulate) c.noalias() += alpha * a * b;
    else c.noalias() = alpha * a * b;
  };
  const ConstRowMap<S> a(A, trans_a ? K : M, trans_a ? M : K, Eigen::OuterStride<>(lda));
  const ConstRowMap<S> b(B, trans_b ? N : K, trans_b ? K : N, Eigen::OuterStride<>(ldb));
  if (!trans_a && !trans_b) run(a, b);
  else if (!trans_a && trans_b) run(a, b.transpose());
  else if (trans_a && !trans_b) run(a.transpose(), b);
  else run(a.transpose(), b.transpose());
}

// Eigen's product spread over the threads by twin: the larger of M and N is
// cut into one block per thread, each block one single-threaded Eigen
// product. Eigen's own parallel GEMM synchronizes its threads by spinning,
// which collapses when the cores are shared with other processes.
template <class S>
void fast_gemm(bool trans_a, bool trans_b, Index M, Index N, Index K, S alpha, const S* A, Index lda, const S* B,
               Index ldb, bool accumulate, S* C, Index ldc) {
#if TWIN_HAVE_ONEDNN
  if constexpr (std::is_same_v<S, float>) {
    onednn::sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, accumulate, C, ldc);
    return;
  }
#endif
  const Index nt = num_threads();
  if (nt <= 1 || M * N * std::max<Index>(K, 1) < (Index{1} << 20)) {
    eigen_gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, accumulate, C, ldc);
  } else if (M >= N) {
    parallel_blocks(M, (M + nt - 1) / nt, [&](std::int64_t lo, std::int64_t hi) {
      eigen_gemm(trans_a, trans_b, hi - lo, N, K, alpha, trans_a ? A + lo : A + lo * lda, lda, B, ldb, accumulate,
                 C + lo * ldc, ldc);
    });
  } else {
    parallel_blocks(N, (N + nt - 1) / nt, [&](std::int64_t lo, std::int64_t hi) {
      eigen_gemm(trans_a, trans_b, M, hi - lo, K, alpha, A, lda, trans_b ? B + lo * ldb : B + lo, ldb, accumulate,
                 C + lo, ldc);
    });
  }
}

// Under AddressSanitizer: the first row of a rows × cols operand (leading
// dimension ld) that is not wholly addressable memory, or -1 when every row
// is (always -1 without ASan).
template <class S>
Index unaddressable_row(const S* p, Index rows, Index cols, Index ld) {
#if TWIN_ASAN
  if (cols <= 0) return -1;
  for (Index i = 0; i < rows; ++i)
    if (__asan_region_is_poisoned(const_cast<S*>(p + i * ld), sizeof(S) * static_cast<std::size_t>(cols))) return i;
#else
  (void)p, (void)rows, (void)cols, (void)ld;
#endif
  return -1;
}

// The Eigen engines may run in code built without ASan's checks (twin's test
// suite builds its instances so, docs/design.md §8), so the entries that
// reach them, compiled in the caller's unit, check the bounds of every
// operand the engine reads or writes: a bad one gets ASan's description of
// its first bad byte and an abort. `what` names the operand in the message.
// A no-op without ASan.
template <class S>
void check_addressable(const S* p, Index rows, Index cols, Index ld, const char* what) {
  const Index bad = unaddressable_row(p, rows, cols, ld);
  if (bad < 0) return;
#if TWIN_ASAN
  __asan_describe_address(
      __asan_region_is_poisoned(const_cast<S*>(p + bad * ld), sizeof(S) * static_cast<std::size_t>(cols)));
#endif
  std::fprintf(stderr, "twin: %s (%lld x %lld, leading dimension %lld): row %lld is not addressable\n", what,
               static_cast<long long>(rows), static_cast<long long>(cols), static_cast<long long>(ld),
               static_cast<long long>(bad));
  std::abort();
}

// The operands of C[M,N] (+)= op(A)·op(B), checked as above.
template <class SA, class SC>
void check_operands(bool trans_a, bool trans_b, Index M, Index N, Index K, const SA* A, Index lda, const SA* B,
                    Index ldb, const SC* C, Index ldc) {
  if (K > 0) {
    check_addressable(A, trans_a ? K : M, trans_a ? M : K, lda, "GEMM operand A");
    check_addressable(B, trans_b ? N : K, trans_b ? K : N, ldb, "GEMM operand B");
  }
  check_addressable(C, M, N, ldc, "GEMM operand C");
}

}  // namespace detail

// C[M,N] = alpha · op(A) · op(B), or C += that when `accumulate`; all
// matrices row-major with leading dimensions in elements; op(A) = A [M×K]
// when !trans_a and Aᵀ (A is [K×M]) when trans_a, likewise B. When
// `row_init` is given (N values) and not accumulating, each row of C starts
// from it instead of zero (a bias).
template <class S>
void gemm(GemmMode mode, bool trans_a, bool trans_b, Index M, Index N, Index K, S alpha, const S* A, Index lda,
          const S* B, Index ldb, bool accumulate, S* C, Index ldc, const S* row_init = nullptr) {
  if (M <= 0 || N <= 0) return;
  detail::check_operands(trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc);
  if (row_init && !accumulate) detail::check_addressable(row_init, 1, N, N, "GEMM operand row_init");
  if (mode == GemmMode::invariant) {
    detail::invariant_gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, accumulate, C, ldc, row_init);
    return;
  }
  if (row_init && !accumulate) {
    detail::init_block(C, ldc, 0, 0, M, N, row_init);
    accumulate = true;
  }
  if (K <= 0) {
    if (!accumulate) detail::init_block<S>(C, ldc, 0, 0, M, N, nullptr);
    return;
  }
  detail::fast_gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, accumulate, C, ldc);
}

#if TWIN_EXTERN_TEMPLATES
TWIN_TEMPLATE_INSTANCE void detail::invariant_gemm<float>(bool, bool, Index, Index, Index, float, const float*, Index,
                                                          const float*, Index, bool, float*, Index, const float*);
TWIN_TEMPLATE_INSTANCE void detail::invariant_gemm<double>(bool, bool, Index, Index, Index, double, const double*,
                                                           Index, const double*, Index, bool, double*, Index,
                                                           const double*);
TWIN_TEMPLATE_INSTANCE void detail::fast_gemm<float>(bool, bool, Index, Index, Index, float, const float*, Index,
                                                     const float*, Index, bool, float*, Index);
#endif

// --- bf16 operands ------------------------------------------------------------

namespace detail {
inline EnvSwitch bf16_dot_switch{"TWIN_BF16_DOT"};
}  // namespace detail

// Whether gemm_bf16 runs on bf16 dot products now: oneDNN is built in, the
// CPU has a bf16 kernel there (AVX-512 BF16 / AMX, or AVX-512), and neither
// set_bf16_dot_products(false) nor TWIN_BF16_DOT=0 in the environment turned
// them off.
inline bool bf16_dot_products() {
#if TWIN_HAVE_ONEDNN
  return detail::bf16_dot_switch.on() && onednn::bf16_matmul_native();
#else
  return false;
#endif
}

// Allows (the default) or forbids bf16 dot products; forbidden, gemm_bf16
// widens its operands to f32 (tests compare both paths this way).
inline void set_bf16_dot_products(bool allowed) noexcept { detail::bf16_dot_switch.set(allowed); }

// C = op(A)·op(B) (+ C when accumulate) with A and B bf16 (bits in uint16)
// and C f32 or bf16 (CT = float or std::uint16_t; a bf16 C is rounded once,
// to nearest even, after the f32 sum). Same layout rules as gemm.
template <class CT>
void gemm_bf16(bool trans_a, bool trans_b, Index M, Index N, Index K, const std::uint16_t* A, Index lda,
               const std::uint16_t* B, Index ldb, bool accumulate, CT* C, Index ldc) {
  static_assert(std::is_same_v<CT, float> || std::is_same_v<CT, std::uint16_t>);
  if (M <= 0 || N <= 0) return;
  detail::check_operands(trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc);
#if TWIN_HAVE_ONEDNN
  if (K > 0 && bf16_dot_products()) {
    onednn::bf16_matmul(trans_a, trans_b, M, N, K, A, lda, B, ldb, accumulate, C, ldc);
    return;
  }
#endif
  // Widened: the operands (and a bf16 C) in f32, kept with the thread.
  thread_local std::vector<float> wa, wb, wc;
  auto widen = [](const std::uint16_t* src, Index rows, Index cols, Index ld, std::vector<float>& dst) {
    dst.resize(static_cast<std::size_t>(rows * cols));
    for (Index i = 0; i < rows; ++i) convert_to_f32(src + i * ld, dtype::bf16, cols, dst.data() + i * cols);
  };
  widen(A, trans_a ? K : M, trans_a ? M : K, lda, wa);
  widen(B, trans_b ? N : K, trans_b ? K : N, ldb, wb);
  const Index la = trans_a ? M : K, lb = trans_b ? K : N;
  if constexpr (std::is_same_v<CT, float>) {
    gemm(GemmMode::fastest, trans_a, trans_b, M, N, K, 1.0f, wa.data(), la, wb.data(), lb, accumulate, C, ldc);
  } else {
    if (accumulate) widen(C, M, N, ldc, wc);
    else wc.assign(static_cast<std::size_t>(M * N), 0.0f);
    gemm(GemmMode::fastest, trans_a, trans_b, M, N, K, 1.0f, wa.data(), la, wb.data(), lb, true, wc.data(), N);
    for (Index i = 0; i < M; ++i) convert_from_f32(wc.data() + i * N, N, C + i * ldc, dtype::bf16);
  }
}

}  // namespace twin::backend::cpu
