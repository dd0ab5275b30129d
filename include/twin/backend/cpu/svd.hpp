// Truncated SVD engines on the CPU (Eigen): the exact one (divide-and-conquer
// BDCSVD, retried in double precision when f32 does not converge or the kept
// spectrum reaches f32's noise floor) and the randomized one
// (Halko–Martinsson–Tropp range finder with power iterations).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numbers>
#include <span>
#include <vector>

#include <Eigen/Core>
#include <Eigen/QR>
#include <Eigen/SVD>

#include "twin/config.hpp"
#include "twin/random.hpp"

namespace twin::backend::cpu {

// U [m×k] and V [n×k] row-major with the singular values, largest first.
struct SvdFactors {
  std::int64_t m = 0, n = 0, k = 0;
  std::vector<float> u, v;
  std::vector<double> s;         // the k kept values
  std::vector<double> spectrum;  // every singular value the engine computed
  bool used_double = false;      // the exact engine fell back to f64

  // U Σ [m×k] row-major f32 (products in double): the left factor with the
  // singular values folded in, as twin stores A.
  std::vector<float> u_times_s() const {
    std::vector<float> a(u.size());
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t j = 0; j < k; ++j)
        a[static_cast<std::size_t>(i * k + j)] = static_cast<float>(
            static_cast<double>(u[static_cast<std::size_t>(i * k + j)]) * s[static_cast<std::size_t>(j)]);
    return a;
  }
};

namespace detail {
using RowMatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class Svd>
bool svd_ok(const Svd& svd) {
  return svd.info() == Eigen::Success && svd.singularValues().allFinite() && svd.matrixU().allFinite() &&
         svd.matrixV().allFinite();
}

template <class MU, class MV, class VS>
SvdFactors take_factors(const MU& U, const MV& V, const VS& S, std::int64_t m, std::int64_t n, std::int64_t k) {
  SvdFactors f;
  f.m = m, f.n = n, f.k = k;
  f.u.resize(static_cast<std::size_t>(m * k));
  f.v.resize(static_cast<std::size_t>(n * k));
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < k; ++j) f.u[static_cast<std::size_t>(i * k + j)] = static_cast<float>(U(i, j));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < k; ++j) f.v[static_cast<std::size_t>(i * k + j)] = static_cast<float>(V(i, j));
  for (Eigen::Index i = 0; i < S.size(); ++i) f.spectrum.push_back(static_cast<double>(S(i)));
  f.s.assign(f.spectrum.begin(), f.spectrum.begin() + k);
  return f;
}

// Thin orthonormal basis of the columns of Y (in place).
template <class Matrix>
void orthonormalize(Matrix& Y) {
  const Eigen::Index m = Y.rows(), l = Y.cols();
  Eigen::HouseholderQR<Matrix> qr(Y);
  Y = qr.householderQ() * Matrix::Identity(m, l);
}
}  // namespace detail

// Picks the rank from the full spectrum (largest first); may return 0.
using RankPicker = std::function<std::int64_t(std::span<const double>)>;

// Exact truncated SVD of the row-major [m×n] matrix `a`. f32 BDCSVD first;
// it is redone in f64 when it fails to converge, returns non-finite values,
// or the smallest kept singular value is below tol·σ₁ (there f32's rounding
// of the input, ~1e-7·σ₁, is a sizable part of it). Returns false when f64
// fails too.
//
// The SVD entry points are templates on the element type (only float is
// used) so that Eigen's SVD code is instantiated only in the translation
// units that call them: as plain inline functions they cost every includer
// about a minute of compile time.
template <class Real>
bool svd_exact(const Real* a, std::int64_t m, std::int64_t n, const RankPicker& pick, SvdFactors& out,
               double tol = 1e-4) {
  const Eigen::Map<const detail::RowMatrixF> A(a, m, n);
  const std::int64_t p = std::min(m, n);
  {
    Eigen::BDCSVD<Eigen::MatrixXf> svd(A, Eigen::ComputeThinU | Eigen::ComputeThinV);
    if (detail::svd_ok(svd)) {
      const auto& S = svd.singularValues();
      std::vector<double> spec(static_cast<std::size_t>(S.size()));
      for (Eigen::Index i = 0; i < S.size(); ++i) spec[static_cast<std::size_t>(i)] = S(i);
      const std::int64_t k = std::clamp<std::int64_t>(pick(spec), 0, p);
      const bool ill = k > 0 && spec[0] > 0 && spec[static_cast<std::size_t>(k - 1)] < tol * spec[0];
      if (!ill) {
        out = detail::take_factors(svd.matrixU(), svd.matrixV(), S, m, n, k);
        return true;
      }
    }
  }
  const Eigen::MatrixXd Ad = A.cast<double>();
  Eigen::BDCSVD<Eigen::MatrixXd> svd(Ad, Eigen::ComputeThinU | Eigen::ComputeThinV);
  if (!detail::svd_ok(svd)) return false;
  const auto& S = svd.singularValues();
  std::vector<double> spec(S.data(), S.data() + S.size());
  const std::int64_t k = std::clamp<std::int64_t>(pick(spec), 0, p);
  out = detail::take_factors(svd.matrixU(), svd.matrixV(), S, m, n, k);
  out.used_double = true;
  return true;
}

// Randomized truncated SVD of rank k (Halko, Martinsson & Tropp 2011, alg.
// 4.4 + 5.1): Gaussian test matrix Ω [n×(k+p)] drawn from Philox(seed), q
// power iterations re-orthonormalized at each step (f32 loses the small
// directions otherwise), then an exact f64 SVD of the small (k+p)×n
// projection.
template <class Real>
bool svd_randomized(const Real* a, std::int64_t m, std::int64_t n, std::int64_t k, int oversample, int power_iters,
                    std::uint64_t seed, SvdFactors& out) {
  const Eigen::Map<const detail::RowMatrixF> A(a, m, n);
  const std::int64_t p = std::min(m, n);
  k = std::clamp<std::int64_t>(k, 0, p);
  const std::int64_t l = std::min<std::int64_t>(p, k + std::max(oversample, 0));
  if (l == 0) {
    out = SvdFactors{m, n, 0, {}, {}, {}, {}, false};
    return true;
  }
  // Box–Muller on Philox words: the matrix depends on (seed, index) only.
  const Philox rng(seed);
  Eigen::MatrixXf omega(n, l);
  const std::int64_t total = n * l;
  for (std::int64_t c = 0; c < (total + 1) / 2; ++c) {
    const auto w = rng.block(static_cast<std::uint64_t>(c));
    const double u1 = (static_cast<double>(w[0]) + 1.0) * 0x1.0p-32;  // (0, 1]
    const double u2 = static_cast<double>(w[1]) * 0x1.0p-32;
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double t = 2.0 * std::numbers::pi * u2;
    for (int h = 0; h < 2; ++h) {
      const std::int64_t idx = 2 * c + h;
      if (idx < total) omega(idx / l, idx % l) = static_cast<float>(h == 0 ? r * std::cos(t) : r * std::sin(t));
    }
  }
  Eigen::MatrixXf Y = A * omega;  // [m×l]
  detail::orthonormalize(Y);
  for (int it = 0; it < power_iters; ++it) {
    Eigen::MatrixXf Z = A.transpose() * Y;  // [n×l]
    detail::orthonormalize(Z);
    Y.noalias() = A * Z;
    detail::orthonormalize(Y);
  }
  const Eigen::MatrixXd Bt = (A.transpose() * Y).cast<double>();  // [n×l] = (QᵀA)ᵀ
  Eigen::BDCSVD<Eigen::MatrixXd> svd(Bt, Eigen::ComputeThinU | Eigen::ComputeThinV);
  if (!detail::svd_ok(svd)) return false;
  // Bt = Ub S Vbᵀ  =>  A ≈ Q Bᵀᵀ = (Q Vb) S Ubᵀ.
  const Eigen::MatrixXd U = Y.cast<double>() * svd.matrixV();
  out = detail::take_factors(U, svd.matrixU(), svd.singularValues(), m, n, k);
  return true;
}

#if TWIN_EXTERN_TEMPLATES
TWIN_TEMPLATE_INSTANCE bool svd_exact<float>(const float*, std::int64_t, std::int64_t, const RankPicker&, SvdFactors&,
                                             double);
TWIN_TEMPLATE_INSTANCE bool svd_randomized<float>(const float*, std::int64_t, std::int64_t, std::int64_t, int, int,
                                                  std::uint64_t, SvdFactors&);
#endif

}  // namespace twin::backend::cpu
