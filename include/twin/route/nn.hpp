// Small neural-network pieces for training MLPs on the CPU: Linear,
// BatchNorm1d, LeakyReLU, Dropout, softmax cross-entropy and Adam, with
// PyTorch's semantics and defaults. The router is built from them; so are the
// small experts of the paper reproduction. Templated on the scalar (float for
// training, double for gradient checks); results do not depend on the number
// of threads.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "twin/backend/cpu/nn.hpp"
#include "twin/error.hpp"
#include "twin/parallel.hpp"
#include "twin/random.hpp"
#include "twin/route/labels.hpp"

namespace twin::nn {

using backend::cpu::Index;
// Every product of the networks is thread-count-invariant: a seed gives the
// same router on any machine size.
inline constexpr backend::cpu::GemmMode product_mode = backend::cpu::GemmMode::invariant;
template <class S>
using Matrix = backend::cpu::RowMatrix<S>;
// Inputs may be any row-major block with unit inner stride (rows of a larger
// matrix, a Map over a host buffer) without a copy.
template <class S>
using ConstRef = Eigen::Ref<const Matrix<S>>;

// A trainable tensor and the gradient of the loss with respect to it. Every
// backward() overwrites grad (no accumulation across calls).
template <class S>
struct Parameter {
  Matrix<S> value;
  Matrix<S> grad;

  void resize(Index rows, Index cols) {
    value.setZero(rows, cols);
    grad.setZero(rows, cols);
  }
};

namespace detail {
inline void check_batch(Index rows, Index cols, Index want_cols, const char* layer) {
  if (cols != want_cols)
    throw shape_error(std::string(layer) + ": expected inputs with " + std::to_string(want_cols) + " features, found " +
                      std::to_string(cols) + " (batch of " + std::to_string(rows) + ")");
}
}  // namespace detail

// y = x Wᵀ + b with W [out, in] (PyTorch's layout, so weights move between
// the two unchanged) and b [1, out].
template <class S>
class Linear {
 public:
  Parameter<S> weight;
  Parameter<S> bias;

  Linear() = default;
  Linear(Index in, Index out) {
    weight.resize(out, in);
    bias.resize(1, out);
  }

  Index in_features() const noexcept { return weight.value.cols(); }
  Index out_features() const noexcept { return weight.value.rows(); }

  // PyTorch's default: W and b uniform in ±1/sqrt(in), drawn from the stream
  // of `key` (counter-based, so the same key gives the same weights anywhere).
  void reset_parameters(std::uint64_t key) {
    const Philox rng(key);
    const S bound = S(1) / std::sqrt(static_cast<S>(std::max<Index>(in_features(), 1)));
    S* w = weight.value.data();
    const Index nw = weight.value.size();
    for (Index i = 0; i < nw; ++i) w[i] = bound * (S(2) * static_cast<S>(rng.uniform(std::uint64_t(i), 0)) - S(1));
    S* b = bias.value.data();
    for (Index i = 0; i < bias.value.size(); ++i)
      b[i] = bound * (S(2) * static_cast<S>(rng.uniform(std::uint64_t(i), 1)) - S(1));
  }

  void forward(const ConstRef<S>& x, Matrix<S>& y) const {
    detail::check_batch(x.rows(), x.cols(), in_features(), "Linear");
    y.resize(x.rows(), out_features());
    backend::cpu::gemm<S>(product_mode, false, true, x.rows(), out_features(), in_features(), S(1), x.data(),
                          x.outerStride(), weight.value.data(), in_features(), false, y.data(), out_features(),
                          bias.value.data());
  }

  // Given the forward input x and dL/dy: sets dL/dW, dL/db and, when dx is
  // given, dL/dx (the first layer of a network needs none).
  void backward(const ConstRef<S>& x, const ConstRef<S>& dy, Matrix<S>* dx) {
    const Index B = x.rows(), in = in_features(), out = out_features();
    detail::check_batch(dy.rows(), dy.cols(), out, "Linear backward");
    // dW = dyᵀ x
    backend::cpu::gemm<S>(product_mode, true, false, out, in, B, S(1), dy.data(), dy.outerStride(), x.data(),
                          x.outerStride(), false, weight.grad.data(), in);
    backend::cpu::column_sums<S>(dy.data(), B, out, dy.outerStride(), bias.grad.data());
    if (dx) {
      dx->resize(B, in);
      backend::cpu::gemm<S>(product_mode, false, false, B, in, out, S(1), dy.data(), dy.outerStride(),
                            weight.value.data(), in, false, dx->data(), in);
    }
  }

  std::vector<Parameter<S>*> parameters() { return {&weight, &bias}; }
};

// Batch normalization over the rows of a [batch, features] matrix, as
// torch.nn.BatchNorm1d: training normalizes with the batch mean and biased
// variance and updates running statistics (unbiased variance) with
// `momentum`; evaluation uses the running statistics.
template <class S>
class BatchNorm1d {
 public:
  Parameter<S> weight;  // γ
  Parameter<S> bias;    // β
  Matrix<S> running_mean;
  Matrix<S> running_var;
  double eps = 1e-5;
  double momentum = 0.1;

  BatchNorm1d() = default;
  explicit BatchNorm1d(Index features, double eps_ = 1e-5, double momentum_ = 0.1) : eps(eps_), momentum(momentum_) {
    weight.resize(1, features);
    bias.resize(1, features);
    running_mean.setZero(1, features);
    running_var.setZero(1, features);
    reset_parameters();
  }

  Index features() const noexcept { return weight.value.cols(); }

  void reset_parameters() {
    weight.value.setOnes();
    bias.value.setZero();
    running_mean.setZero();
    running_var.setOnes();
  }

  void forward(const ConstRef<S>& x, Matrix<S>& y, bool training) {
    if (training) forward_train(x, y);
    else forward_eval(x, y);
  }

  void forward_train(const ConstRef<S>& x, Matrix<S>& y) {
    const Index B = x.rows(), F = features();
    detail::check_batch(B, x.cols(), F, "BatchNorm1d");
    if (B < 2)
      throw argument_error("BatchNorm1d: training needs a batch of at least 2 rows to estimate a variance, found " +
                           std::to_string(B));
    y.resize(B, F);
    xhat_.resize(B, F);
    inv_std_.resize(1, F);
    const S* X = x.data();
    const Index ld = x.outerStride();
    backend::cpu::for_column_blocks(B, F, [&](Index c0, Index c1) {
      const Index w = c1 - c0;
      double mean[backend::cpu::column_block] = {}, var[backend::cpu::column_block] = {};
      for (Index r = 0; r < B; ++r)
        for (Index c = 0; c < w; ++c) mean[c] += static_cast<double>(X[r * ld + c0 + c]);
      for (Index c = 0; c < w; ++c) mean[c] /= static_cast<double>(B);
      for (Index r = 0; r < B; ++r)
        for (Index c = 0; c < w; ++c) {
          const double d = static_cast<double>(X[r * ld + c0 + c]) - mean[c];
          var[c] += d * d;
        }
      S m[backend::cpu::column_block], is[backend::cpu::column_block], g[backend::cpu::column_block],
          b[backend::cpu::column_block];
      for (Index c = 0; c < w; ++c) {
        const double biased = var[c] / static_cast<double>(B);
        const double unbiased = var[c] / static_cast<double>(B - 1);
        m[c] = static_cast<S>(mean[c]);
        is[c] = static_cast<S>(1.0 / std::sqrt(biased + eps));
        inv_std_(0, c0 + c) = is[c];
        g[c] = weight.value(0, c0 + c);
        b[c] = bias.value(0, c0 + c);
        S& rm = running_mean(0, c0 + c);
        S& rv = running_var(0, c0 + c);
        rm = static_cast<S>((1.0 - momentum) * static_cast<double>(rm) + momentum * mean[c]);
        rv = static_cast<S>((1.0 - momentum) * static_cast<double>(rv) + momentum * unbiased);
      }
      for (Index r = 0; r < B; ++r) {
        const S* xr = X + r * ld + c0;
        S* hr = xhat_.data() + r * F + c0;
        S* yr = y.data() + r * F + c0;
        for (Index c = 0; c < w; ++c) {
          const S h = (xr[c] - m[c]) * is[c];
          hr[c] = h;
          yr[c] = h * g[c] + b[c];
        }
      }
    });
  }

  void forward_eval(const ConstRef<S>& x, Matrix<S>& y) const {
    const Index B = x.rows(), F = features();
    detail::check_batch(B, x.cols(), F, "BatchNorm1d");
    std::vector<S> scale(static_cast<std::size_t>(F)), shift(static_cast<std::size_t>(F));
    for (Index c = 0; c < F; ++c) {
      const S is = static_cast<S>(1.0 / std::sqrt(static_cast<double>(running_var(0, c)) + eps));
      scale[static_cast<std::size_t>(c)] = weight.value(0, c) * is;
      shift[static_cast<std::size_t>(c)] = bias.value(0, c) - running_mean(0, c) * weight.value(0, c) * is;
    }
    y.resize(B, F);
    backend::cpu::for_row_blocks(B, F, [&](Index r0, Index r1) {
      for (Index r = r0; r < r1; ++r) {
        const S* xr = x.data() + r * x.outerStride();
        S* yr = y.data() + r * F;
        for (Index c = 0; c < F; ++c)
          yr[c] = xr[c] * scale[static_cast<std::size_t>(c)] + shift[static_cast<std::size_t>(c)];
      }
    });
  }

  // dL/dx for the last forward_train, and dL/dγ, dL/dβ.
  void backward(const ConstRef<S>& dy, Matrix<S>& dx) {
    const Index B = xhat_.rows(), F = features();
    if (dy.rows() != B || dy.cols() != F)
      throw shape_error("BatchNorm1d backward: expected dy of shape [" + std::to_string(B) + ", " + std::to_string(F) +
                        "], found [" + std::to_string(dy.rows()) + ", " + std::to_string(dy.cols()) + "]");
    dx.resize(B, F);
    const Index ld = dy.outerStride();
    backend::cpu::for_column_blocks(B, F, [&](Index c0, Index c1) {
      const Index w = c1 - c0;
      double sdy[backend::cpu::column_block] = {}, sdyh[backend::cpu::column_block] = {};
      for (Index r = 0; r < B; ++r) {
        const S* d = dy.data() + r * ld + c0;
        const S* h = xhat_.data() + r * F + c0;
        for (Index c = 0; c < w; ++c) {
          sdy[c] += static_cast<double>(d[c]);
          sdyh[c] += static_cast<double>(d[c]) * static_cast<double>(h[c]);
        }
      }
      // dx = γ/σ · (dy − mean(dy) − x̂ · mean(dy · x̂))
      S k[backend::cpu::column_block], a[backend::cpu::column_block], bb[backend::cpu::column_block];
      for (Index c = 0; c < w; ++c) {
        weight.grad(0, c0 + c) = static_cast<S>(sdyh[c]);
        bias.grad(0, c0 + c) = static_cast<S>(sdy[c]);
        k[c] = weight.value(0, c0 + c) * inv_std_(0, c0 + c);
        a[c] = static_cast<S>(sdy[c] / static_cast<double>(B));
        bb[c] = static_cast<S>(sdyh[c] / static_cast<double>(B));
      }
      for (Index r = 0; r < B; ++r) {
        const S* d = dy.data() + r * ld + c0;
        const S* h = xhat_.data() + r * F + c0;
        S* o = dx.data() + r * F + c0;
        for (Index c = 0; c < w; ++c) o[c] = k[c] * (d[c] - a[c] - h[c] * bb[c]);
      }
    });
  }

  std::vector<Parameter<S>*> parameters() { return {&weight, &bias}; }

 private:
  Matrix<S> xhat_;
  Matrix<S> inv_std_;
};

// max(x, 0) + slope · min(x, 0); slope 0 is ReLU.
template <class S>
class LeakyReLU {
 public:
  S slope = S(0.01);

  LeakyReLU() = default;
  explicit LeakyReLU(S s) : slope(s) {}

  void forward(const ConstRef<S>& x, Matrix<S>& y) const {
    y.resize(x.rows(), x.cols());
    const Index C = x.cols();
    backend::cpu::for_row_blocks(x.rows(), C, [&](Index r0, Index r1) {
      for (Index r = r0; r < r1; ++r) {
        const S* xr = x.data() + r * x.outerStride();
        S* yr = y.data() + r * C;
        for (Index c = 0; c < C; ++c) yr[c] = xr[c] > S(0) ? xr[c] : slope * xr[c];
      }
    });
  }

  // dL/dx given the forward input x.
  void backward(const ConstRef<S>& x, const ConstRef<S>& dy, Matrix<S>& dx) const {
    dx.resize(x.rows(), x.cols());
    const Index C = x.cols();
    backend::cpu::for_row_blocks(x.rows(), C, [&](Index r0, Index r1) {
      for (Index r = r0; r < r1; ++r) {
        const S* xr = x.data() + r * x.outerStride();
        const S* dr = dy.data() + r * dy.outerStride();
        S* o = dx.data() + r * C;
        for (Index c = 0; c < C; ++c) o[c] = xr[c] > S(0) ? dr[c] : slope * dr[c];
      }
    });
  }
};

// Inverted dropout: in training each element is zeroed with probability p
// and survivors are scaled by 1/(1−p); evaluation is the identity. The mask of
// element i at step `stream` is a pure function of (key, stream, i) through
// Philox, so it is the same on any thread count.
template <class S>
class Dropout {
 public:
  double p = 0.5;
  std::uint64_t key = 0;

  Dropout() = default;
  Dropout(double p_, std::uint64_t key_) : p(p_), key(key_) {
    if (!(p_ >= 0.0 && p_ < 1.0)) throw argument_error("Dropout: p must be in [0, 1), found " + std::to_string(p_));
  }

  void forward_train(const ConstRef<S>& x, Matrix<S>& y, std::uint64_t stream) {
    const Index R = x.rows(), C = x.cols();
    y.resize(R, C);
    mask_.resize(R, C);
    const Philox rng(key);
    const S keep_scale = p > 0 ? static_cast<S>(1.0 / (1.0 - p)) : S(1);
    const float pf = static_cast<float>(p);
    backend::cpu::for_row_blocks(
        R, C,
        [&](Index r0, Index r1) {
          std::vector<float> u(static_cast<std::size_t>(C));
          for (Index r = r0; r < r1; ++r) {
            const S* xr = x.data() + r * x.outerStride();
            S* yr = y.data() + r * C;
            S* mr = mask_.data() + r * C;
            rng.uniforms(static_cast<std::uint64_t>(r) * static_cast<std::uint64_t>(C), u.size(), stream, u.data());
            using Row = Eigen::Array<S, 1, Eigen::Dynamic>;
            Eigen::Map<Row> m(mr, C);
            m = (Eigen::Map<const Eigen::Array<float, 1, Eigen::Dynamic>>(u.data(), C) >= pf).template cast<S>() *
                keep_scale;
            Eigen::Map<Row>(yr, C) = Eigen::Map<const Row>(xr, C) * m;
          }
        },
        backend::cpu::parallel_min_elements / 32);
  }

  void forward_eval(const ConstRef<S>& x, Matrix<S>& y) const { y = x; }

  // dL/dx for the last forward_train.
  void backward(const ConstRef<S>& dy, Matrix<S>& dx) const {
    if (dy.rows() != mask_.rows() || dy.cols() != mask_.cols())
      throw shape_error("Dropout backward: dy does not match the last forward batch");
    dx.resize(dy.rows(), dy.cols());
    const Index C = dy.cols();
    backend::cpu::for_row_blocks(dy.rows(), C, [&](Index r0, Index r1) {
      for (Index r = r0; r < r1; ++r) {
        const S* d = dy.data() + r * dy.outerStride();
        const S* m = mask_.data() + r * C;
        S* o = dx.data() + r * C;
        for (Index c = 0; c < C; ++c) o[c] = d[c] * m[c];
      }
    });
  }

  const Matrix<S>& mask() const noexcept { return mask_; }

 private:
  Matrix<S> mask_;
};

// Mean softmax cross-entropy of `logits` [B, T] against class ids; when grad
// is given it receives dL/dlogits = (softmax − onehot) / B.
template <class S>
S softmax_cross_entropy(const ConstRef<S>& logits, std::span<const std::int64_t> labels, Matrix<S>* grad = nullptr) {
  const Index B = logits.rows(), T = logits.cols();
  if (static_cast<Index>(labels.size()) != B)
    throw shape_error("softmax_cross_entropy: " + std::to_string(labels.size()) + " labels for " + std::to_string(B) +
                      " rows of logits");
  if (B == 0) throw argument_error("softmax_cross_entropy: empty batch");
  check_labels(labels, T, "softmax_cross_entropy");
  if (grad) grad->resize(B, T);
  double total = 0;
  for (Index r = 0; r < B; ++r) {
    const std::int64_t y = labels[static_cast<std::size_t>(r)];
    const S* z = logits.data() + r * logits.outerStride();
    double mx = -std::numeric_limits<double>::infinity();
    for (Index c = 0; c < T; ++c) mx = std::max(mx, static_cast<double>(z[c]));
    double sum = 0;
    for (Index c = 0; c < T; ++c) sum += std::exp(static_cast<double>(z[c]) - mx);
    const double lse = mx + std::log(sum);
    total += lse - static_cast<double>(z[y]);
    if (grad) {
      S* g = grad->data() + r * T;
      const double inv_b = 1.0 / static_cast<double>(B);
      for (Index c = 0; c < T; ++c)
        g[c] = static_cast<S>((std::exp(static_cast<double>(z[c]) - lse) - (c == y ? 1.0 : 0.0)) * inv_b);
    }
  }
  return static_cast<S>(total / static_cast<double>(B));
}

// Adam (Kingma & Ba) as torch.optim.Adam: weight_decay adds λ·θ to the
// gradient (L2); with decoupled_weight_decay it shrinks θ by lr·λ instead
// (AdamW).
struct AdamOptions {
  double lr = 5e-4;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool decoupled_weight_decay = false;
};

// Scales the gradients of `params` by max_norm / (‖g‖ + 1e-6) where that is
// below 1, ‖g‖ the L2 norm of all of them together (summed in double, in
// order: the same bits on any thread count), as
// torch.nn.utils.clip_grad_norm_. Returns ‖g‖ before clipping.
template <class S>
double clip_grad_norm(std::span<Parameter<S>* const> params, double max_norm) {
  double sq = 0.0;
  for (const Parameter<S>* p : params)
    for (Index i = 0; i < p->grad.size(); ++i) sq += static_cast<double>(p->grad.data()[i]) * p->grad.data()[i];
  const double norm = std::sqrt(sq), coef = max_norm / (norm + 1e-6);
  if (coef < 1.0)
    for (Parameter<S>* p : params) p->grad *= static_cast<S>(coef);
  return norm;
}

template <class S>
class Adam {
 public:
  Adam() = default;
  Adam(std::vector<Parameter<S>*> params, AdamOptions opts) : params_(std::move(params)), opts_(opts) {
    if (!(opts.lr > 0) || !(opts.beta1 >= 0 && opts.beta1 < 1) || !(opts.beta2 >= 0 && opts.beta2 < 1) ||
        !(opts.eps >= 0) || !(opts.weight_decay >= 0))
      throw argument_error("Adam: expected lr > 0, betas in [0, 1), eps >= 0, weight_decay >= 0; found lr " +
                           std::to_string(opts.lr) + ", betas (" + std::to_string(opts.beta1) + ", " +
                           std::to_string(opts.beta2) + "), eps " + std::to_string(opts.eps) + ", weight_decay " +
                           std::to_string(opts.weight_decay));
    reset();
  }

  // Forgets the moments and the step count.
  void reset() {
    m_.clear();
    v_.clear();
    for (Parameter<S>* p : params_) {
      m_.push_back(Matrix<S>::Zero(p->value.rows(), p->value.cols()));
      v_.push_back(Matrix<S>::Zero(p->value.rows(), p->value.cols()));
    }
    t_ = 0;
    chunks_.clear();
    total_ = 0;
    constexpr std::int64_t chunk = 1 << 16;
    for (std::size_t k = 0; k < params_.size(); ++k) {
      const std::int64_t n = params_[k]->value.size();
      total_ += n;
      for (std::int64_t lo = 0; lo < n; lo += chunk) chunks_.push_back({k, lo, std::min(n, lo + chunk)});
    }
  }

  // One update at learning rate options().lr · lr_scale (a schedule's
  // factor; decoupled weight decay takes the scaled rate too, as torch's
  // AdamW under a scheduler).
  void step(double lr_scale = 1.0) {
    ++t_;
    const double b1 = opts_.beta1, b2 = opts_.beta2, lr = opts_.lr * lr_scale;
    const S step_size = static_cast<S>(lr / (1.0 - std::pow(b1, static_cast<double>(t_))));
    const S inv_sqrt_bc2 = static_cast<S>(1.0 / std::sqrt(1.0 - std::pow(b2, static_cast<double>(t_))));
    const S sb1 = static_cast<S>(b1), sb2 = static_cast<S>(b2), c1 = static_cast<S>(1.0 - b1),
            c2 = static_cast<S>(1.0 - b2), eps = static_cast<S>(opts_.eps), wd = static_cast<S>(opts_.weight_decay);
    const S decay = static_cast<S>(1.0 - lr * opts_.weight_decay);
    const bool coupled = !opts_.decoupled_weight_decay && opts_.weight_decay != 0.0;
    const bool decoupled = opts_.decoupled_weight_decay && opts_.weight_decay != 0.0;
    // Eigen array expressions: vectorized sqrt and division (a plain loop
    // keeps std::sqrt's errno path and stays scalar).
    using Arr = Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>>;
    auto update = [&](std::size_t k, std::int64_t lo, std::int64_t hi) {
      const Index n = hi - lo;
      Arr th(params_[k]->value.data() + lo, n), m(m_[k].data() + lo, n), v(v_[k].data() + lo, n);
      const Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>> g(params_[k]->grad.data() + lo, n);
      if (coupled) {
        m = sb1 * m + c1 * (g + wd * th);
        v = sb2 * v + c2 * (g + wd * th).square();
      } else {
        if (decoupled) th *= decay;
        m = sb1 * m + c1 * g;
        v = sb2 * v + c2 * g.square();
      }
      th -= step_size * m / (v.sqrt() * inv_sqrt_bc2 + eps);
    };
    // One parallel region for all parameters (elementwise: any split gives
    // the same bits).
    if (total_ < backend::cpu::parallel_min_elements) {
      for (std::size_t k = 0; k < params_.size(); ++k) update(k, 0, params_[k]->value.size());
      return;
    }
    parallel_blocks(static_cast<std::int64_t>(chunks_.size()), 1, [&](std::int64_t c0, std::int64_t c1) {
      for (std::int64_t c = c0; c < c1; ++c) {
        const Chunk& ch = chunks_[static_cast<std::size_t>(c)];
        update(ch.param, ch.lo, ch.hi);
      }
    });
  }

  std::int64_t steps() const noexcept { return t_; }
  const AdamOptions& options() const noexcept { return opts_; }
  const std::vector<Parameter<S>*>& parameters() const noexcept { return params_; }

 private:
  std::vector<Parameter<S>*> params_;
  AdamOptions opts_;
  struct Chunk {
    std::size_t param;
    std::int64_t lo, hi;
  };
  std::vector<Matrix<S>> m_, v_;
  std::vector<Chunk> chunks_;
  std::int64_t total_ = 0;
  std::int64_t t_ = 0;
};

}  // namespace twin::nn
