// Helpers for the compression, fusion and grouping tests: matrices with a
// chosen spectrum, small Twin models, and the dense double-precision
// reference θ* + Σ w_t v̂_t computed straight from the stored parts.
#pragma once

#include "test_support.hpp"

#include <Eigen/Dense>

#include "twin/compress/exclusive_module.hpp"
#include "twin/model/twin_model.hpp"
#include "twin/route/routing.hpp"

namespace twin_test {

using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

inline MatD gaussian(std::mt19937_64& rng, std::int64_t m, std::int64_t n) {
  std::normal_distribution<double> nd;
  MatD g(m, n);
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) g(i, j) = nd(rng);
  return g;
}

// U diag(s) Vᵀ with random orthonormal U [m×p], V [n×p], p = s.size().
inline MatD with_spectrum(std::mt19937_64& rng, std::int64_t m, std::int64_t n, const std::vector<double>& s) {
  const auto p = static_cast<std::int64_t>(s.size());
  Eigen::MatrixXd gu = gaussian(rng, m, p), gv = gaussian(rng, n, p);
  const Eigen::MatrixXd U = Eigen::HouseholderQR<Eigen::MatrixXd>(gu).householderQ() * Eigen::MatrixXd::Identity(m, p);
  const Eigen::MatrixXd V = Eigen::HouseholderQR<Eigen::MatrixXd>(gv).householderQ() * Eigen::MatrixXd::Identity(n, p);
  Eigen::VectorXd sv(p);
  for (std::int64_t i = 0; i < p; ++i) sv(i) = s[static_cast<std::size_t>(i)];
  return U * sv.asDiagonal() * V.transpose();
}

inline twin::Tensor to_tensor(const MatD& a, twin::dtype t = twin::dtype::f32) {
  std::vector<float> v(static_cast<std::size_t>(a.size()));
  for (Eigen::Index i = 0; i < a.size(); ++i) v[static_cast<std::size_t>(i)] = static_cast<float>(a.data()[i]);
  const std::int64_t shape[2] = {a.rows(), a.cols()};
  return twin::Tensor::from_f32(v, shape, t);
}

inline MatD to_mat(const twin::ConstTensorView& v, std::int64_t rows, std::int64_t cols) {
  const std::vector<double> d = twin::to_f64_vector(v);
  MatD m(rows, cols);
  for (std::size_t i = 0; i < d.size(); ++i) m.data()[i] = d[i];
  return m;
}

// A quantized factor M [n×r] in double, decoded from its codes and scales
// as packed.hpp documents them (column-major codes, groups of rows).
inline MatD dequantized_ref(const twin::QuantizedFactor& f, std::int64_t n, std::int64_t r, const twin::QuantSpec& q) {
  const auto* codes = static_cast<const std::uint8_t*>(f.codes.data());
  const std::vector<double> scales = twin::to_f64_vector(f.scales.view());
  const std::int64_t ng = (n + q.group - 1) / q.group, cb = q.bits == 8 ? n : (n + 1) / 2;
  MatD m(n, r);
  for (std::int64_t j = 0; j < r; ++j)
    for (std::int64_t i = 0; i < n; ++i) {
      int c;
      if (q.bits == 8) {
        c = codes[j * cb + i];
        if (c >= 128) c -= 256;
      } else {
        c = (codes[j * cb + i / 2] >> (i % 2 == 0 ? 0 : 4)) & 0xf;
        if (c >= 8) c -= 16;
      }
      m(i, j) = c * scales[static_cast<std::size_t>(j * ng + i / q.group)];
    }
  return m;
}

// v̂ in double from the module's stored parts (independent of the library's
// reconstruction code).
inline std::vector<double> module_dense(const twin::ExclusiveModule& m) {
  const std::int64_t n = twin::checked_numel(m.shape());
  std::vector<double> out(static_cast<std::size_t>(n), 0.0);
  using twin::ModuleKind;
  if (m.kind() == ModuleKind::dense) return twin::to_f64_vector(m.values().view());
  if (m.kind() == ModuleKind::sign) {
    const auto* s = static_cast<const std::uint8_t*>(m.signs().data());
    const auto* mk = m.mask().numel() > 0 ? static_cast<const std::uint8_t*>(m.mask().data()) : nullptr;
    const std::vector<double> alpha = twin::to_f64_vector(m.alpha().view());
    const std::int64_t cols = m.matrix().cols;
    for (std::int64_t i = 0; i < n; ++i) {
      if (mk && !((mk[i / 8] >> (i % 8)) & 1)) continue;
      const double a = alpha.size() == 1 ? alpha[0] : alpha[static_cast<std::size_t>(i / cols)];
      out[static_cast<std::size_t>(i)] = ((s[i / 8] >> (i % 8)) & 1) ? -a : a;
    }
    return out;
  }
  if (m.has_factors()) {
    const std::int64_t rows = m.matrix().rows, cols = m.matrix().cols, r = m.rank();
    MatD A, B;
    if (m.quantized()) {
      A = dequantized_ref(m.quantized_a(), rows, r, m.quant());
      B = dequantized_ref(m.quantized_b(), cols, r, m.quant());
    } else {
      A = to_mat(m.a().view(), rows, r);
      B = to_mat(m.b().view(), cols, r);
    }
    const MatD P = A * B.transpose();
    for (std::int64_t i = 0; i < n; ++i) out[static_cast<std::size_t>(i)] = P.data()[i];
  }
  if (m.kind() == ModuleKind::sparse || m.kind() == ModuleKind::low_rank_sparse) {
    const auto idx = twin::to_f64_vector(m.indices().view());
    const auto val = twin::to_f64_vector(m.values().view());
    for (std::size_t k = 0; k < idx.size(); ++k) out[static_cast<std::size_t>(idx[k])] += val[k];
  }
  return out;
}

// θ* + Σ w_t v̂_t in double; for excluded tensors the copy of the task with
// the largest weight.
inline std::vector<double> reference_fusion(const twin::TwinModel& model, const std::string& name,
                                            const std::vector<double>& w) {
  const auto& e = model.at(name);
  if (e.excluded) {
    const auto best = static_cast<std::size_t>(std::max_element(w.begin(), w.end()) - w.begin());
    return twin::to_f64_vector(e.copies[best].view());
  }
  std::vector<double> out = twin::to_f64_vector(model.shared().at(name).view());
  for (std::size_t t = 0; t < w.size(); ++t) {
    if (w[t] == 0.0) continue;
    const std::vector<double> v = module_dense(e.modules[t]);
    for (std::size_t i = 0; i < out.size(); ++i) out[i] += w[t] * v[i];
  }
  return out;
}

// softmax(logits / temperature) over the top_k largest logits, in double.
inline std::vector<double> reference_weights(const std::vector<float>& logits, double temperature = 1.0,
                                             int top_k = 0) {
  std::vector<std::size_t> order(logits.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return logits[a] > logits[b]; });
  const std::size_t k = top_k > 0 ? static_cast<std::size_t>(top_k) : logits.size();
  std::vector<double> w(logits.size(), 0.0);
  double sum = 0.0;
  for (std::size_t i = 0; i < k; ++i)
    sum += w[order[i]] = std::exp((logits[order[i]] - logits[order[0]]) / temperature);
  for (double& x : w) x /= sum;
  return w;
}

// Base and T experts over a small model: two linear layers, a bias, a norm,
// a conv kernel and a classifier head. Each expert's delta is low rank plus
// a little noise, so truncation errors are small but nonzero.
struct SmallModel {
  twin::StateDict base;
  std::vector<twin::StateDict> experts;
};

inline SmallModel small_model(std::uint64_t seed, std::size_t T, twin::dtype t = twin::dtype::f32) {
  std::mt19937_64 rng(seed);
  SmallModel sm;
  const std::vector<std::pair<std::string, std::vector<std::int64_t>>> shapes = {
      {"layer.0.attn.w", {48, 32}}, {"layer.0.attn.b", {48}}, {"layer.0.mlp.w", {32, 48}},
      {"layer.0.norm", {32}},       {"conv.w", {8, 3, 3, 3}}, {"head.w", {5, 32}}};
  for (const auto& [name, shape] : shapes) sm.base.insert(name, random_tensor(rng, t, shape, 0.0, 0.5));
  for (std::size_t e = 0; e < T; ++e) {
    twin::StateDict ex;
    for (const auto& [name, b] : sm.base) {
      const auto bv = twin::to_f64_vector(b.view());
      std::vector<float> v(bv.size());
      if (b.rank() >= 2) {
        const twin::MatrixShape ms = twin::matrix_shape(b.shape());
        const MatD d =
            gaussian(rng, ms.rows, 3) * gaussian(rng, 3, ms.cols) * 0.05 + gaussian(rng, ms.rows, ms.cols) * 0.002;
        for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(bv[i] + d.data()[i]);
      } else {
        std::normal_distribution<double> nd(0.0, 0.05);
        for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(bv[i] + nd(rng));
      }
      ex.insert(name, twin::Tensor::from_f32(v, b.shape(), t));
    }
    sm.experts.push_back(std::move(ex));
  }
  return sm;
}

}  // namespace twin_test
