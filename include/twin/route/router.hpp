// Router (docs/design.md §1 step 5): the MLP that maps an embedding of an
// input, computed by the host with the shared model, to logits over the T
// tasks. This header holds the network and its inference; training is
// route/router_training.hpp, the file format io/router_file.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "twin/adapter.hpp"
#include "twin/error.hpp"
#include "twin/random.hpp"
#include "twin/route/labels.hpp"
#include "twin/route/nn.hpp"
#include "twin/route/router_config.hpp"
#include "twin/state_dict.hpp"
#include "twin/tensor.hpp"

namespace twin {

namespace detail {
struct RouterTraining;
}

class Router {
 public:
  using Matrix = nn::Matrix<float>;

  Router() = default;

  // An untrained router with weights drawn from `seed` (PyTorch's init).
  explicit Router(const RouterConfig& config, std::uint64_t seed = 0) : config_(config) {
    config_.validate();
    build();
    initialize(seed);
  }

  const RouterConfig& config() const noexcept { return config_; }
  std::int64_t input_dim() const noexcept { return config_.input_dim; }
  std::int64_t num_tasks() const noexcept { return config_.num_tasks; }

  // --- inference -----------------------------------------------------------

  // Logits [N, T] (f32) for embeddings [N, d], or [T] for one embedding [d];
  // BatchNorm uses its running statistics and dropout is off.
  template <tensor_like E>
  Tensor logits(const E& embeddings) const {
    const ConstTensorView v = adapt(embeddings);
    const Matrix X = to_matrix(v, "embeddings");
    Matrix out;
    logits_into(X, out);
    Tensor t = v.rank() == 1 ? Tensor(dtype::f32, {num_tasks()}) : Tensor(dtype::f32, {X.rows(), num_tasks()});
    if (out.size()) std::copy(out.data(), out.data() + out.size(), t.values<float>().data());
    return t;
  }

  std::vector<float> logits(std::span<const float> embedding) const {
    const std::int64_t shape[1] = {static_cast<std::int64_t>(embedding.size())};
    const Tensor t = logits(ConstTensorView(embedding.data(), dtype::f32, shape));
    const auto v = t.values<float>();
    return {v.begin(), v.end()};
  }

  // The task with the largest logit, per embedding.
  template <tensor_like E>
  std::vector<std::int64_t> predict(const E& embeddings) const {
    const Matrix X = to_matrix(adapt(embeddings), "embeddings");
    Matrix out;
    logits_into(X, out);
    return argmax_rows(out);
  }

  template <tensor_like E>
  RouterDiagnostics evaluate(const E& embeddings, std::span<const std::int64_t> labels) const {
    const Matrix X = to_matrix(adapt(embeddings), "embeddings");
    check_rows(labels, X.rows(), "evaluation");
    check_labels(labels, num_tasks(), "evaluation");
    if (X.rows() == 0) throw argument_error("evaluation set is empty: no embeddings given");
    Matrix out;
    logits_into(X, out);
    const std::vector<std::int64_t> pred = argmax_rows(out);
    const std::int64_t T = num_tasks();
    RouterDiagnostics d;
    d.num_tasks = T;
    d.total = X.rows();
    d.per_task_count.assign(static_cast<std::size_t>(T), 0);
    d.confusion.assign(static_cast<std::size_t>(T * T), 0);
    for (std::size_t i = 0; i < pred.size(); ++i) {
      ++d.per_task_count[static_cast<std::size_t>(labels[i])];
      ++d.confusion[static_cast<std::size_t>(labels[i] * T + pred[i])];
      d.correct += pred[i] == labels[i];
    }
    d.accuracy = static_cast<double>(d.correct) / static_cast<double>(d.total);
    for (std::int64_t t = 0; t < T; ++t) {
      const std::int64_t n = d.per_task_count[static_cast<std::size_t>(t)];
      d.per_task_accuracy.push_back(n ? static_cast<double>(d.confusion_at(t, t)) / static_cast<double>(n)
                                      : std::numeric_limits<double>::quiet_NaN());
    }
    return d;
  }

  // --- state -------------------------------------------------------------

  // Named tensors: <prefix>input_mean, <prefix>input_scale [d];
  // <prefix>layer<i>.weight [out, in] and .bias [out] for i = 0..depth;
  // <prefix>norm<i>.weight, .bias, .running_mean, .running_var [hidden].
  StateDict to_state_dict(std::string_view prefix = "router.") const {
    require_built();
    const std::string p(prefix);
    StateDict sd;
    auto put = [&](const std::string& name, const Matrix& m, bool vector) {
      std::vector<std::int64_t> shape = vector ? std::vector<std::int64_t>{m.size()}
                                               : std::vector<std::int64_t>{m.rows(), m.cols()};
      sd.insert(p + name,
                Tensor::from_f32(std::span<const float>(m.data(), static_cast<std::size_t>(m.size())), shape));
    };
    put("input_mean", mean_, true);
    put("input_scale", scale_, true);
    for (int l = 0; l <= config_.depth; ++l) {
      const std::string n = "layer" + std::to_string(l);
      put(n + ".weight", linear_[static_cast<std::size_t>(l)].weight.value, false);
      put(n + ".bias", linear_[static_cast<std::size_t>(l)].bias.value, true);
    }
    for (int l = 0; l < config_.depth; ++l) {
      const std::string n = "norm" + std::to_string(l);
      const auto& bn = norm_[static_cast<std::size_t>(l)];
      put(n + ".weight", bn.weight.value, true);
      put(n + ".bias", bn.bias.value, true);
      put(n + ".running_mean", bn.running_mean, true);
      put(n + ".running_var", bn.running_var, true);
    }
    return sd;
  }

  // The router of architecture `c` holding the tensors that to_state_dict
  // wrote under `prefix`. A missing tensor is a name_error, a tensor of
  // another shape a shape_error, a NaN or infinity a numeric_error (files
  // turn these into io_errors naming the file: io/router_file.hpp).
  static Router from_state_dict(const RouterConfig& c, const StateDict& sd, std::string_view prefix = "router.") {
    const std::string p(prefix);
    Router r(c);
    auto load = [&](const std::string& name, Matrix& m) {
      const Tensor& t = sd.at(p + name);
      const bool vector = m.rows() == 1;
      const std::vector<std::int64_t> want = vector ? std::vector<std::int64_t>{m.size()}
                                                    : std::vector<std::int64_t>{m.rows(), m.cols()};
      check_same_shape(p + name, want, t.shape(), "router tensor");
      require_float(t.dtype(), "router tensor '" + p + name + "'");
      read_f32(t.view(), 0, t.numel(), m.data());
      if (!m.allFinite()) throw numeric_error("router tensor '" + p + name + "' holds a NaN or infinity");
    };
    load("input_mean", r.mean_);
    load("input_scale", r.scale_);
    if ((r.scale_.array() <= 0.0f).any())
      throw numeric_error("router tensor '" + p + "input_scale' holds a value <= 0");
    r.inv_scale_ = r.scale_.cwiseInverse();
    for (int l = 0; l <= c.depth; ++l) {
      const std::string n = "layer" + std::to_string(l);
      load(n + ".weight", r.linear_[static_cast<std::size_t>(l)].weight.value);
      load(n + ".bias", r.linear_[static_cast<std::size_t>(l)].bias.value);
    }
    for (int l = 0; l < c.depth; ++l) {
      const std::string n = "norm" + std::to_string(l);
      auto& bn = r.norm_[static_cast<std::size_t>(l)];
      load(n + ".weight", bn.weight.value);
      load(n + ".bias", bn.bias.value);
      load(n + ".running_mean", bn.running_mean);
      load(n + ".running_var", bn.running_var);
    }
    return r;
  }

  // Direct access to the layers (tests, hosts that inspect weights).
  const std::vector<nn::Linear<float>>& linear_layers() const noexcept { return linear_; }
  const std::vector<nn::BatchNorm1d<float>>& norm_layers() const noexcept { return norm_; }
  const Matrix& input_mean() const noexcept { return mean_; }
  const Matrix& input_scale() const noexcept { return scale_; }

 private:
  // Inference rows per pass: bounds the hidden activations' memory.
  static constexpr Eigen::Index eval_chunk = 1024;

  friend struct detail::RouterTraining;

  void build() {
    const std::int64_t d = config_.input_dim, h = config_.hidden_width(), T = config_.num_tasks;
    linear_.clear();
    norm_.clear();
    drop_.clear();
    for (int l = 0; l < config_.depth; ++l) {
      linear_.emplace_back(l == 0 ? d : h, h);
      norm_.emplace_back(h, config_.bn_eps, config_.bn_momentum);
      drop_.emplace_back(config_.dropout, 0);
    }
    linear_.emplace_back(config_.depth == 0 ? d : h, T);
    act_ = nn::LeakyReLU<float>(static_cast<float>(config_.slope));
    mean_.setZero(1, d);
    scale_.setOnes(1, d);
    inv_scale_.setOnes(1, d);
  }

  void initialize(std::uint64_t seed) {
    for (std::size_t l = 0; l < linear_.size(); ++l) linear_[l].reset_parameters(random_key(seed, "router.layer", l));
    for (std::size_t l = 0; l < norm_.size(); ++l) {
      norm_[l].reset_parameters();
      drop_[l].key = random_key(seed, "router.dropout", l);
    }
    mean_.setZero();
    scale_.setOnes();
    inv_scale_.setOnes();
  }

  void require_built() const {
    if (linear_.empty()) throw argument_error("router has no architecture: construct it from a RouterConfig");
  }

  // Embeddings [N, d] or one [d] as an f32 matrix, refusing wrong widths,
  // non-float dtypes and non-finite values (which would poison every
  // BatchNorm statistic and Adam moment they touch).
  Matrix to_matrix(const ConstTensorView& v, const char* what) const {
    require_built();
    require_float(v.dtype(), what);
    require_host(v, what);
    const std::int64_t d = input_dim();
    if (v.rank() != 1 && v.rank() != 2)
      throw shape_error(std::string(what) + ": expected shape [N, " + std::to_string(d) + "] or [" + std::to_string(d) +
                        "], found " + v.shape_str());
    const std::int64_t width = v.dim(v.rank() - 1);
    const std::int64_t rows = v.rank() == 1 ? 1 : v.dim(0);
    if (width != d)
      throw shape_error(std::string(what) + ": embedding width " + std::to_string(width) +
                        " does not match the router's d = " + std::to_string(d) + " (shape " + v.shape_str() + ")");
    Matrix X(rows, d);
    if (rows > 0) read_f32(v, 0, rows * d, X.data());
    for (Eigen::Index r = 0; r < X.rows(); ++r)
      for (Eigen::Index c = 0; c < X.cols(); ++c)
        if (!std::isfinite(X(r, c)))
          throw numeric_error(std::string(what) + ": embedding " + std::to_string(r) + ", feature " +
                              std::to_string(c) + " is " + (std::isnan(X(r, c)) ? "NaN" : "infinite"));
    return X;
  }

  // Embeddings and labels must pair up one to one.
  static void check_rows(std::span<const std::int64_t> labels, Eigen::Index rows, const char* what) {
    if (static_cast<Eigen::Index>(labels.size()) != rows)
      throw shape_error(std::string(what) + " set: " + std::to_string(labels.size()) + " labels for " +
                        std::to_string(rows) + " embeddings");
  }

  static std::vector<std::int64_t> argmax_rows(const Matrix& z) {
    std::vector<std::int64_t> out(static_cast<std::size_t>(z.rows()));
    for (Eigen::Index r = 0; r < z.rows(); ++r) {
      Eigen::Index best = 0;
      for (Eigen::Index c = 1; c < z.cols(); ++c)
        if (z(r, c) > z(r, best)) best = c;
      out[static_cast<std::size_t>(r)] = best;
    }
    return out;
  }

  // (x − mean) / scale, row by row.
  void standardize(Matrix& X) const {
    const float* m = mean_.data();
    const float* is = inv_scale_.data();
    const Eigen::Index C = X.cols();
    backend::cpu::for_row_blocks(X.rows(), C, [&](Eigen::Index r0, Eigen::Index r1) {
      for (Eigen::Index r = r0; r < r1; ++r) {
        float* x = X.data() + r * C;
        for (Eigen::Index c = 0; c < C; ++c) x[c] = (x[c] - m[c]) * is[c];
      }
    });
  }

  // Evaluation-mode forward pass of standardized rows.
  void forward_eval(const nn::ConstRef<float>& x, Matrix& logits, Matrix& a, Matrix& b) const {
    if (config_.depth == 0) {
      linear_.back().forward(x, logits);
      return;
    }
    for (int l = 0; l < config_.depth; ++l) {
      const auto L = static_cast<std::size_t>(l);
      if (l == 0) linear_[L].forward(x, a);
      else linear_[L].forward(b, a);
      norm_[L].forward_eval(a, a);
      act_.forward(a, b);
    }
    linear_.back().forward(b, logits);
  }

  // Raw embeddings -> logits, in chunks of eval_chunk rows.
  void logits_into(const Matrix& raw, Matrix& out) const {
    Matrix X = raw;
    standardize(X);
    out.resize(X.rows(), num_tasks());
    Matrix a, b, z;
    for (Eigen::Index r0 = 0; r0 < X.rows(); r0 += eval_chunk) {
      const Eigen::Index n = std::min(eval_chunk, X.rows() - r0);
      forward_eval(X.middleRows(r0, n), z, a, b);
      out.middleRows(r0, n) = z;
    }
  }

  RouterConfig config_{};
  std::vector<nn::Linear<float>> linear_;
  std::vector<nn::BatchNorm1d<float>> norm_;
  std::vector<nn::Dropout<float>> drop_;
  nn::LeakyReLU<float> act_;
  Matrix mean_, scale_, inv_scale_;
};

}  // namespace twin
