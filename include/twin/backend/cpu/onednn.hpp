// oneDNN (Debian's libdnnl-dev) behind backend/cpu/gemm.hpp's fastest mode:
// its sgemm for f32 products and its matmul primitive for bf16 ones. oneDNN
// picks its kernels at run time from cpuid (AVX2, AVX-512, AVX-512 BF16, AMX),
// so a build without -march flags still multiplies at the CPU's speed.
// Compiled only where TWIN_HAVE_ONEDNN is 1 (CMake sets it and links -ldnnl
// when it finds oneDNN); docs/design.md §8 says when each path runs.
#pragma once

#include "twin/config.hpp"

#if TWIN_HAVE_ONEDNN

#  include <oneapi/dnnl/dnnl.hpp>

#  include <cstdint>
#  include <cstring>
#  include <string>
#  include <type_traits>

#  include "twin/error.hpp"

namespace twin::backend::cpu::onednn {

// One CPU engine for the process; engines and primitives are thread-safe to
// share, streams are made per call (cheap on the CPU).
inline const dnnl::engine& engine() {
  static const dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

// C = alpha·op(A)·op(B) + (accumulate ? C : 0), all row-major (oneDNN's own
// sgemm convention). Called inside a parallel region it runs on the calling
// thread; outside one it spreads over the OpenMP threads.
inline void sgemm(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, float alpha,
                  const float* A, std::int64_t lda, const float* B, std::int64_t ldb, bool accumulate, float* C,
                  std::int64_t ldc) {
  const dnnl_status_t s = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb,
                                     accumulate ? 1.0f : 0.0f, C, ldc);
  if (s != dnnl_success)
    throw error("oneDNN sgemm failed (status " + std::to_string(static_cast<int>(s)) + ") for M=" + std::to_string(M) +
                " N=" + std::to_string(N) + " K=" + std::to_string(K));
}

namespace detail {

// A [rows×cols] matrix of `type` stored row-major with leading dimension ld,
// or its transpose (a column-major view of the same bytes).
inline dnnl::memory::desc matrix_desc(dnnl::memory::data_type type, std::int64_t rows, std::int64_t cols,
                                      std::int64_t ld, bool transposed) {
  return transposed ? dnnl::memory::desc({rows, cols}, type, {1, ld}) : dnnl::memory::desc({rows, cols}, type, {ld, 1});
}

inline dnnl::matmul::primitive_desc bf16_matmul_desc(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N,
                                                     std::int64_t K, std::int64_t lda, std::int64_t ldb,
                                                     dnnl::memory::data_type c_type, std::int64_t ldc,
                                                     bool accumulate) {
  using dt = dnnl::memory::data_type;
  const auto a = matrix_desc(dt::bf16, M, K, lda, trans_a);
  const auto b = matrix_desc(dt::bf16, K, N, ldb, trans_b);
  const auto c = matrix_desc(c_type, M, N, ldc, false);
  dnnl::primitive_attr attr;
  if (accumulate) {
    dnnl::post_ops po;
    po.append_sum(1.0f);
    attr.set_post_ops(po);
  }
  // Primitive descriptors are looked up in oneDNN's primitive cache, so a
  // shape seen before costs a hash lookup, not a JIT compilation.
  return dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, b, c), attr, engine());
}

}  // namespace detail

// Whether this CPU multiplies bf16 matrices with a bf16 kernel of oneDNN's
// (AVX-512 BF16 or AMX dot products, or AVX-512 emulating them) rather than
// its slow reference code or not at all (CPUs without AVX-512). Probed once.
inline bool bf16_matmul_native() {
  static const bool ok = [] {
    try {
      const auto pd =
          detail::bf16_matmul_desc(false, false, 32, 32, 32, 32, 32, dnnl::memory::data_type::f32, 32, true);
      return std::strncmp(pd.impl_info_str(), "ref", 3) != 0;
    } catch (const dnnl::error&) {
      return false;
    }
  }();
  return ok;
}

// C = op(A)·op(B) + (accumulate ? C : 0) with A and B bf16 (bits in
// uint16), products accumulated in f32 and C either f32 or bf16 (rounded
// once, to nearest even). Row-major like sgemm. Callers check
// bf16_matmul_native() first.
template <class CT>
void bf16_matmul(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, const std::uint16_t* A,
                 std::int64_t lda, const std::uint16_t* B, std::int64_t ldb, bool accumulate, CT* C, std::int64_t ldc) {
  static_assert(std::is_same_v<CT, float> || std::is_same_v<CT, std::uint16_t>);
  using dt = dnnl::memory::data_type;
  constexpr dt c_type = std::is_same_v<CT, float> ? dt::f32 : dt::bf16;
  const auto pd = detail::bf16_matmul_desc(trans_a, trans_b, M, N, K, lda, ldb, c_type, ldc, accumulate);
  const dnnl::matmul prim(pd);
  dnnl::stream s(engine());
  dnnl::memory a(pd.src_desc(), engine(), const_cast<std::uint16_t*>(A));
  dnnl::memory b(pd.weights_desc(), engine(), const_cast<std::uint16_t*>(B));
  dnnl::memory c(pd.dst_desc(), engine(), C);
  prim.execute(s, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
  s.wait();
}

}  // namespace twin::backend::cpu::onednn

#endif  // TWIN_HAVE_ONEDNN
