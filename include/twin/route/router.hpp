// Router (DESIGN.md §1 step 5): the MLP that maps an embedding of an input,
// computed by the host with the shared model, to logits over the T tasks.
// Trained in C++ on a small labelled set (cross-entropy, Adam, best held-out
// epoch kept), run per request, saved as safetensors with metadata.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "twin/error.hpp"
#include "twin/io/safetensors.hpp"
#include "twin/parallel.hpp"
#include "twin/random.hpp"
#include "twin/route/nn.hpp"
#include "twin/state_dict.hpp"
#include "twin/tensor.hpp"

namespace twin {

// Architecture: `depth` blocks Linear → BatchNorm → LeakyReLU → Dropout of
// width `hidden`, then Linear(hidden, T). The defaults are the official
// Twin-Merging router: depth 2, hidden = 2d, dropout 0.5.
struct RouterConfig {
  std::int64_t input_dim = 0;  // d, the embedding width
  std::int64_t num_tasks = 0;  // T
  std::int64_t hidden = 0;     // 0: 2 * input_dim
  int depth = 2;               // hidden blocks; 0 is a linear classifier
  double dropout = 0.5;
  double slope = 0.01;  // LeakyReLU's negative slope (PyTorch's default)
  double bn_eps = 1e-5;
  double bn_momentum = 0.1;

  std::int64_t hidden_width() const noexcept { return hidden > 0 ? hidden : 2 * input_dim; }

  void validate() const {
    auto bad = [](const std::string& m) { throw argument_error("RouterConfig: " + m); };
    if (input_dim <= 0) bad("input_dim must be positive, found " + std::to_string(input_dim));
    if (num_tasks <= 0) bad("num_tasks must be positive, found " + std::to_string(num_tasks));
    if (hidden < 0) bad("hidden must be >= 0 (0: 2 * input_dim), found " + std::to_string(hidden));
    if (depth < 0) bad("depth must be >= 0, found " + std::to_string(depth));
    if (!(dropout >= 0.0 && dropout < 1.0)) bad("dropout must be in [0, 1), found " + std::to_string(dropout));
    if (!std::isfinite(slope)) bad("slope must be finite");
    if (!(bn_eps > 0.0)) bad("bn_eps must be positive, found " + std::to_string(bn_eps));
    if (!(bn_momentum >= 0.0 && bn_momentum <= 1.0))
      bad("bn_momentum must be in [0, 1], found " + std::to_string(bn_momentum));
  }
};

struct RouterTrainOptions {
  int max_epochs = 100;
  // Stop after this many epochs without a better held-out result (0: never).
  int patience = 10;
  std::int64_t batch_size = 128;
  nn::AdamOptions adam{};  // lr 5e-4, betas (0.9, 0.999), eps 1e-8, no weight decay
  // Share of each task's items held out when fit() is given one set (0: none,
  // and the last epoch is kept).
  double holdout_fraction = 0.1;
  // Draw each epoch's items with probability ∝ 1 / (items of their task), as
  // torch's WeightedRandomSampler with replacement, instead of a shuffle.
  bool class_balanced = false;
  // Fit a per-feature mean and scale on the training items and apply them to
  // every input (stored with the router).
  bool standardize = true;
  std::uint64_t seed = 0;
  // After each epoch (1-based): mean training loss, held-out accuracy (NaN
  // without a held-out set).
  std::function<void(int epoch, double loss, double heldout_accuracy)> progress;
};

struct RouterTrainReport {
  int epochs_run = 0;
  // 1-based; the weights kept are this epoch's: the best held-out accuracy,
  // ties broken by the lower held-out loss (a saturated accuracy still
  // lets training go on while the held-out loss improves).
  int best_epoch = 0;
  double best_heldout_accuracy = std::numeric_limits<double>::quiet_NaN();
  bool stopped_early = false;
  std::int64_t train_size = 0, heldout_size = 0;
  std::vector<double> train_loss;        // per epoch
  std::vector<double> heldout_accuracy;  // per epoch
  std::vector<double> heldout_loss;      // per epoch: mean cross-entropy
};

// Accuracy by task and the confusion matrix on a labelled set.
struct RouterDiagnostics {
  std::int64_t num_tasks = 0;
  std::int64_t total = 0, correct = 0;
  double accuracy = 0.0;
  std::vector<std::int64_t> per_task_count;
  std::vector<double> per_task_accuracy;  // NaN for a task with no items
  std::vector<std::int64_t> confusion;    // row-major [true task, predicted task]

  std::int64_t confusion_at(std::int64_t truth, std::int64_t predicted) const {
    return confusion.at(static_cast<std::size_t>(truth * num_tasks + predicted));
  }

  std::string to_string() const {
    std::string s = "accuracy " + fmt_pct(accuracy) + " (" + std::to_string(correct) + "/" + std::to_string(total) +
                    ")\ntask  items  accuracy  predicted:";
    for (std::int64_t p = 0; p < num_tasks; ++p) s += " " + pad(std::to_string(p), 6);
    for (std::int64_t t = 0; t < num_tasks; ++t) {
      s += "\n" + pad(std::to_string(t), 4) + " " + pad(std::to_string(per_task_count[static_cast<std::size_t>(t)]), 6) +
           " " + pad(fmt_pct(per_task_accuracy[static_cast<std::size_t>(t)]), 9) + "           ";
      for (std::int64_t p = 0; p < num_tasks; ++p) s += " " + pad(std::to_string(confusion_at(t, p)), 6);
    }
    return s;
  }

 private:
  static std::string pad(std::string v, std::size_t w) { return v.size() < w ? std::string(w - v.size(), ' ') + v : v; }
  static std::string fmt_pct(double v) {
    if (std::isnan(v)) return "-";
    char b[32];
    std::snprintf(b, sizeof b, "%.2f%%", 100.0 * v);
    return b;
  }
};

// Indices of a held-out split and of the rest.
struct DataSplit {
  std::vector<std::int64_t> train;
  std::vector<std::int64_t> heldout;
};

// Holds out round(fraction · n_t) items of every task t (at most n_t − 1, so
// each task keeps one training item), chosen by a seeded permutation; both
// index lists ascend.
inline DataSplit stratified_split(std::span<const std::int64_t> labels, std::int64_t num_tasks, double fraction,
                                  std::uint64_t seed) {
  if (!(fraction >= 0.0 && fraction < 1.0))
    throw argument_error("held-out fraction must be in [0, 1), found " + std::to_string(fraction));
  std::vector<std::vector<std::int64_t>> by_task(static_cast<std::size_t>(std::max<std::int64_t>(num_tasks, 0)));
  for (std::size_t i = 0; i < labels.size(); ++i) {
    const std::int64_t y = labels[i];
    if (y < 0 || y >= num_tasks)
      throw argument_error("label " + std::to_string(y) + " at index " + std::to_string(i) + " is outside [0, " +
                           std::to_string(num_tasks) + ")");
    by_task[static_cast<std::size_t>(y)].push_back(static_cast<std::int64_t>(i));
  }
  DataSplit out;
  for (std::size_t t = 0; t < by_task.size(); ++t) {
    auto& items = by_task[t];
    const auto n = static_cast<std::int64_t>(items.size());
    std::int64_t k = std::llround(fraction * static_cast<double>(n));
    k = std::min(k, std::max<std::int64_t>(n - 1, 0));
    const Philox rng(random_key(seed, "router.split", t));
    // Partial Fisher–Yates: the first k slots become a uniform sample.
    for (std::int64_t i = 0; i < k; ++i) {
      const std::uint64_t r = rng.block(static_cast<std::uint64_t>(i))[0];
      const std::int64_t j = i + static_cast<std::int64_t>((r * static_cast<std::uint64_t>(n - i)) >> 32);
      std::swap(items[static_cast<std::size_t>(i)], items[static_cast<std::size_t>(j)]);
    }
    out.heldout.insert(out.heldout.end(), items.begin(), items.begin() + k);
    out.train.insert(out.train.end(), items.begin() + k, items.end());
  }
  std::sort(out.train.begin(), out.train.end());
  std::sort(out.heldout.begin(), out.heldout.end());
  return out;
}

// The order in which one epoch visits the training rows: a seeded shuffle
// (a permutation of [0, N)), or with class_balanced N draws with replacement
// where each task is equally likely and each item of a task too.
inline std::vector<std::int64_t> epoch_order(std::span<const std::int64_t> labels, std::int64_t num_tasks,
                                             std::uint64_t seed, int epoch, bool class_balanced) {
  const auto N = static_cast<std::int64_t>(labels.size());
  std::vector<std::int64_t> order(static_cast<std::size_t>(N));
  if (!class_balanced) {
    std::iota(order.begin(), order.end(), std::int64_t{0});
    const Philox rng(random_key(seed, "router.shuffle", static_cast<std::uint64_t>(epoch)));
    for (std::int64_t i = N - 1; i > 0; --i) {
      const std::uint64_t r = rng.block(static_cast<std::uint64_t>(i))[0];
      const auto j = static_cast<std::int64_t>((r * static_cast<std::uint64_t>(i + 1)) >> 32);
      std::swap(order[static_cast<std::size_t>(i)], order[static_cast<std::size_t>(j)]);
    }
    return order;
  }
  std::vector<std::vector<std::int64_t>> by_task(static_cast<std::size_t>(std::max<std::int64_t>(num_tasks, 0)));
  for (std::int64_t i = 0; i < N; ++i) {
    const std::int64_t y = labels[static_cast<std::size_t>(i)];
    if (y < 0 || y >= num_tasks)
      throw argument_error("label " + std::to_string(y) + " at index " + std::to_string(i) + " is outside [0, " +
                           std::to_string(num_tasks) + ")");
    by_task[static_cast<std::size_t>(y)].push_back(i);
  }
  std::vector<std::size_t> present;
  for (std::size_t t = 0; t < by_task.size(); ++t)
    if (!by_task[t].empty()) present.push_back(t);
  const Philox rng(random_key(seed, "router.balanced", static_cast<std::uint64_t>(epoch)));
  for (std::int64_t i = 0; i < N; ++i) {
    const auto b = rng.block(static_cast<std::uint64_t>(i));
    const auto& items = by_task[present[(static_cast<std::uint64_t>(b[0]) * present.size()) >> 32]];
    order[static_cast<std::size_t>(i)] = items[(static_cast<std::uint64_t>(b[1]) * items.size()) >> 32];
  }
  return order;
}

// Labels from an integer tensor of shape [N] (a file's `labels`).
inline std::vector<std::int64_t> labels_from(const ConstTensorView& v) {
  if (dtype_is_float(v.dtype()))
    throw dtype_error("labels: expected an integer dtype, found " + std::string(dtype_name(v.dtype())));
  if (v.rank() != 1) throw shape_error("labels: expected shape [N], found " + v.shape_str());
  std::vector<std::int64_t> out(static_cast<std::size_t>(v.numel()));
  for (std::int64_t i = 0; i < v.numel(); ++i) {
    const double x = element_f64(v, i);
    out[static_cast<std::size_t>(i)] = static_cast<std::int64_t>(x);
  }
  return out;
}

class Router {
 public:
  using Matrix = nn::Matrix<float>;

  static constexpr int format_version = 1;
  static constexpr std::string_view architecture = "mlp:linear-batchnorm-leakyrelu-dropout";

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

  // --- training ------------------------------------------------------------

  // Trains on embeddings [N, d] with task ids in [0, T), holding out
  // opts.holdout_fraction of each task. Weights are re-initialized from
  // opts.seed, so the result depends only on the data and the options.
  template <tensor_like E>
  RouterTrainReport fit(const E& embeddings, std::span<const std::int64_t> labels,
                        const RouterTrainOptions& opts = {}) {
    Matrix X = to_matrix(adapt(embeddings), "training embeddings");
    check_labels(labels, X.rows(), "training");
    if (X.rows() == 0) throw argument_error("training set is empty: no embeddings given");
    if (opts.holdout_fraction == 0.0) return train(X, labels, Matrix(0, input_dim()), {}, opts);
    const DataSplit split = stratified_split(labels, num_tasks(), opts.holdout_fraction, opts.seed);
    if (split.heldout.empty())
      throw argument_error("held-out split of " + std::to_string(X.rows()) + " items with fraction " +
                           std::to_string(opts.holdout_fraction) +
                           " is empty: give more items or set holdout_fraction = 0");
    auto take = [&](const std::vector<std::int64_t>& idx, Matrix& x, std::vector<std::int64_t>& y) {
      x.resize(static_cast<Eigen::Index>(idx.size()), X.cols());
      y.resize(idx.size());
      for (std::size_t i = 0; i < idx.size(); ++i) {
        x.row(static_cast<Eigen::Index>(i)) = X.row(idx[i]);
        y[i] = labels[static_cast<std::size_t>(idx[i])];
      }
    };
    Matrix xt, xh;
    std::vector<std::int64_t> yt, yh;
    take(split.train, xt, yt);
    take(split.heldout, xh, yh);
    return train(xt, yt, xh, yh, opts);
  }

  // Trains on an explicit split (opts.holdout_fraction is not used). An empty
  // held-out set keeps the last epoch.
  template <tensor_like E, tensor_like H>
  RouterTrainReport fit(const E& train_embeddings, std::span<const std::int64_t> train_labels,
                        const H& heldout_embeddings, std::span<const std::int64_t> heldout_labels,
                        const RouterTrainOptions& opts = {}) {
    Matrix xt = to_matrix(adapt(train_embeddings), "training embeddings");
    check_labels(train_labels, xt.rows(), "training");
    if (xt.rows() == 0) throw argument_error("training set is empty: no embeddings given");
    const ConstTensorView hv = adapt(heldout_embeddings);
    Matrix xh = hv.numel() == 0 ? Matrix(0, input_dim()) : to_matrix(hv, "held-out embeddings");
    check_labels(heldout_labels, xh.rows(), "held-out");
    return train(xt, train_labels, xh, heldout_labels, opts);
  }

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
    check_labels(labels, X.rows(), "evaluation");
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

  // --- persistence ---------------------------------------------------------

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
      sd.insert(p + name, Tensor::from_f32(std::span<const float>(m.data(), static_cast<std::size_t>(m.size())), shape));
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

  // The settings that, with the tensors, rebuild the router; keys carry the
  // same prefix so a model file can hold them beside its own.
  Metadata metadata(std::string_view prefix = "router.") const {
    require_built();
    const std::string p(prefix);
    return {{p + "format", "twin-router"},
            {p + "format_version", std::to_string(format_version)},
            {p + "architecture", std::string(architecture)},
            {p + "input_dim", std::to_string(config_.input_dim)},
            {p + "num_tasks", std::to_string(config_.num_tasks)},
            {p + "hidden", std::to_string(config_.hidden_width())},
            {p + "depth", std::to_string(config_.depth)},
            {p + "dropout", fmt_double(config_.dropout)},
            {p + "slope", fmt_double(config_.slope)},
            {p + "bn_eps", fmt_double(config_.bn_eps)},
            {p + "bn_momentum", fmt_double(config_.bn_momentum)}};
  }

  static Router from_state_dict(const StateDict& sd, const Metadata& meta, std::string_view prefix = "router.") {
    const std::string p(prefix);
    auto get = [&](const std::string& key) -> const std::string& {
      auto it = meta.find(p + key);
      if (it == meta.end()) throw name_error("router metadata has no '" + p + key + "'");
      return it->second;
    };
    if (get("format") != "twin-router")
      throw argument_error("metadata '" + p + "format' is '" + get("format") + "', expected 'twin-router'");
    if (parse_int(get("format_version"), p + "format_version") != format_version)
      throw argument_error("router format version " + get("format_version") + " is not supported (this build reads " +
                           std::to_string(format_version) + ")");
    if (get("architecture") != architecture)
      throw argument_error("router architecture '" + get("architecture") + "' is not supported (expected '" +
                           std::string(architecture) + "')");
    RouterConfig c;
    c.input_dim = parse_int(get("input_dim"), p + "input_dim");
    c.num_tasks = parse_int(get("num_tasks"), p + "num_tasks");
    c.hidden = parse_int(get("hidden"), p + "hidden");
    c.depth = static_cast<int>(parse_int(get("depth"), p + "depth"));
    c.dropout = parse_double(get("dropout"), p + "dropout");
    c.slope = parse_double(get("slope"), p + "slope");
    c.bn_eps = parse_double(get("bn_eps"), p + "bn_eps");
    c.bn_momentum = parse_double(get("bn_momentum"), p + "bn_momentum");
    Router r(c);
    auto load = [&](const std::string& name, Matrix& m) {
      const Tensor& t = sd.at(p + name);
      const bool vector = m.rows() == 1;
      const std::vector<std::int64_t> want =
          vector ? std::vector<std::int64_t>{m.size()} : std::vector<std::int64_t>{m.rows(), m.cols()};
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

  void save(const std::filesystem::path& path) const { save_safetensors(path, to_state_dict(), metadata()); }

  static Router load(const std::filesystem::path& path) {
    const LoadedCheckpoint ck = load_safetensors(path);
    return from_state_dict(ck.tensors, ck.metadata);
  }

  // Direct access to the layers (tests, hosts that inspect weights).
  const std::vector<nn::Linear<float>>& linear_layers() const noexcept { return linear_; }
  const std::vector<nn::BatchNorm1d<float>>& norm_layers() const noexcept { return norm_; }
  const Matrix& input_mean() const noexcept { return mean_; }
  const Matrix& input_scale() const noexcept { return scale_; }

 private:
  // Inference rows per pass: bounds the hidden activations' memory.
  static constexpr Eigen::Index eval_chunk = 1024;

  struct Snapshot {
    std::vector<Matrix> tensors;
  };

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
    for (std::size_t l = 0; l < linear_.size(); ++l)
      linear_[l].reset_parameters(random_key(seed, "router.layer", l));
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

  static std::string fmt_double(double v) {
    char b[40];
    std::snprintf(b, sizeof b, "%.17g", v);
    return b;
  }
  static std::int64_t parse_int(const std::string& s, const std::string& key) {
    try {
      std::size_t pos = 0;
      const long long v = std::stoll(s, &pos);
      if (pos == s.size()) return v;
    } catch (const std::exception&) {
    }
    throw argument_error("router metadata '" + key + "' = '" + s + "' is not an integer");
  }
  static double parse_double(const std::string& s, const std::string& key) {
    try {
      std::size_t pos = 0;
      const double v = std::stod(s, &pos);
      if (pos == s.size()) return v;
    } catch (const std::exception&) {
    }
    throw argument_error("router metadata '" + key + "' = '" + s + "' is not a number");
  }

  // Embeddings [N, d] or one [d] as an f32 matrix, refusing wrong widths,
  // non-float dtypes and non-finite values (which would poison every
  // BatchNorm statistic and Adam moment they touch).
  Matrix to_matrix(const ConstTensorView& v, const char* what) const {
    require_built();
    require_float(v.dtype(), what);
    const std::int64_t d = input_dim();
    if (v.rank() != 1 && v.rank() != 2)
      throw shape_error(std::string(what) + ": expected shape [N, " + std::to_string(d) + "] or [" +
                        std::to_string(d) + "], found " + v.shape_str());
    const std::int64_t width = v.dim(v.rank() - 1);
    const std::int64_t rows = v.rank() == 1 ? 1 : v.dim(0);
    if (width != d)
      throw shape_error(std::string(what) + ": embedding width " + std::to_string(width) + " does not match the router's d = " +
                        std::to_string(d) + " (shape " + v.shape_str() + ")");
    Matrix X(rows, d);
    if (rows > 0) read_f32(v, 0, rows * d, X.data());
    for (Eigen::Index r = 0; r < X.rows(); ++r)
      for (Eigen::Index c = 0; c < X.cols(); ++c)
        if (!std::isfinite(X(r, c)))
          throw numeric_error(std::string(what) + ": embedding " + std::to_string(r) + ", feature " + std::to_string(c) +
                              " is " + (std::isnan(X(r, c)) ? "NaN" : "infinite"));
    return X;
  }

  void check_labels(std::span<const std::int64_t> labels, Eigen::Index rows, const char* what) const {
    if (static_cast<Eigen::Index>(labels.size()) != rows)
      throw shape_error(std::string(what) + " set: " + std::to_string(labels.size()) + " labels for " +
                        std::to_string(rows) + " embeddings");
    for (std::size_t i = 0; i < labels.size(); ++i)
      if (labels[i] < 0 || labels[i] >= num_tasks())
        throw argument_error(std::string(what) + " label " + std::to_string(labels[i]) + " at index " +
                             std::to_string(i) + " is outside [0, " + std::to_string(num_tasks()) + ")");
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
      if (l == 0)
        linear_[L].forward(x, a);
      else
        linear_[L].forward(b, a);
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

  Snapshot snapshot() const {
    Snapshot s;
    for (const auto& l : linear_) s.tensors.push_back(l.weight.value), s.tensors.push_back(l.bias.value);
    for (const auto& n : norm_)
      s.tensors.push_back(n.weight.value), s.tensors.push_back(n.bias.value), s.tensors.push_back(n.running_mean),
          s.tensors.push_back(n.running_var);
    return s;
  }
  void restore(const Snapshot& s) {
    std::size_t i = 0;
    for (auto& l : linear_) l.weight.value = s.tensors[i++], l.bias.value = s.tensors[i++];
    for (auto& n : norm_)
      n.weight.value = s.tensors[i++], n.bias.value = s.tensors[i++], n.running_mean = s.tensors[i++],
      n.running_var = s.tensors[i++];
  }

  // Per-feature mean and standard deviation of the training rows, summed in
  // double in row order; a constant feature keeps scale 1.
  void fit_standardization(const Matrix& X) {
    const Eigen::Index N = X.rows(), C = X.cols();
    backend::cpu::for_column_blocks(N, C, [&](Eigen::Index c0, Eigen::Index c1) {
      const Eigen::Index w = c1 - c0;
      double mean[backend::cpu::column_block] = {}, var[backend::cpu::column_block] = {};
      for (Eigen::Index r = 0; r < N; ++r)
        for (Eigen::Index c = 0; c < w; ++c) mean[c] += X(r, c0 + c);
      for (Eigen::Index c = 0; c < w; ++c) mean[c] /= static_cast<double>(N);
      for (Eigen::Index r = 0; r < N; ++r)
        for (Eigen::Index c = 0; c < w; ++c) {
          const double dlt = X(r, c0 + c) - mean[c];
          var[c] += dlt * dlt;
        }
      for (Eigen::Index c = 0; c < w; ++c) {
        const double sd = std::sqrt(var[c] / static_cast<double>(N));
        mean_(0, c0 + c) = static_cast<float>(mean[c]);
        scale_(0, c0 + c) = sd > 1e-12 * std::max(1.0, std::abs(mean[c])) ? static_cast<float>(sd) : 1.0f;
      }
    });
    inv_scale_ = scale_.cwiseInverse();
  }

  // Held-out accuracy and mean cross-entropy of standardized rows.
  std::pair<double, double> score(const Matrix& Xs, std::span<const std::int64_t> labels) const {
    std::int64_t correct = 0;
    double loss = 0;
    Matrix a, b, z;
    for (Eigen::Index r0 = 0; r0 < Xs.rows(); r0 += eval_chunk) {
      const Eigen::Index n = std::min(eval_chunk, Xs.rows() - r0);
      forward_eval(Xs.middleRows(r0, n), z, a, b);
      const auto yl = labels.subspan(static_cast<std::size_t>(r0), static_cast<std::size_t>(n));
      loss += static_cast<double>(nn::softmax_cross_entropy<float>(z, yl)) * static_cast<double>(n);
      const std::vector<std::int64_t> pred = argmax_rows(z);
      for (Eigen::Index i = 0; i < n; ++i) correct += pred[static_cast<std::size_t>(i)] == yl[static_cast<std::size_t>(i)];
    }
    const auto N = static_cast<double>(Xs.rows());
    return {static_cast<double>(correct) / N, loss / N};
  }

  RouterTrainReport train(const Matrix& train_x, std::span<const std::int64_t> train_y, const Matrix& heldout_x,
                          std::span<const std::int64_t> heldout_y, const RouterTrainOptions& o) {
    if (o.max_epochs <= 0) throw argument_error("max_epochs must be positive, found " + std::to_string(o.max_epochs));
    if (o.patience < 0) throw argument_error("patience must be >= 0 (0: no early stopping), found " + std::to_string(o.patience));
    if (o.batch_size < 2)
      throw argument_error("batch_size must be at least 2 (BatchNorm needs two rows), found " + std::to_string(o.batch_size));
    if (train_x.rows() < 2 && config_.depth > 0)
      throw argument_error("training set has " + std::to_string(train_x.rows()) +
                           " item(s); BatchNorm needs at least 2");
    initialize(o.seed);
    nn::Adam<float> adam;
    {
      std::vector<nn::Parameter<float>*> params;
      for (auto& l : linear_)
        for (auto* p : l.parameters()) params.push_back(p);
      for (auto& n : norm_)
        for (auto* p : n.parameters()) params.push_back(p);
      adam = nn::Adam<float>(std::move(params), o.adam);
    }

    if (o.standardize) fit_standardization(train_x);
    Matrix Xs = train_x, Hs = heldout_x;
    standardize(Xs);
    standardize(Hs);

    const int depth = config_.depth;
    const auto D = static_cast<std::size_t>(depth);
    const Eigen::Index N = Xs.rows(), d = Xs.cols();
    std::vector<Matrix> a(D + 1), z(D), n(D), r(D);
    Matrix logits, dlogits, da, g1, g2;
    std::vector<std::int64_t> yb;

    RouterTrainReport rep;
    rep.train_size = N;
    rep.heldout_size = Hs.rows();
    const bool has_heldout = Hs.rows() > 0;
    double best = -1.0, best_loss = std::numeric_limits<double>::infinity();
    Snapshot best_state;
    std::uint64_t step = 0;
    int since_best = 0;

    for (int epoch = 1; epoch <= o.max_epochs; ++epoch) {
      const std::vector<std::int64_t> order = epoch_order(train_y, num_tasks(), o.seed, epoch, o.class_balanced);
      double loss_sum = 0;
      std::int64_t loss_items = 0;
      for (Eigen::Index b0 = 0; b0 < N; b0 += o.batch_size) {
        const Eigen::Index B = std::min<Eigen::Index>(o.batch_size, N - b0);
        // A trailing batch of one row has no batch variance (PyTorch raises).
        if (B < 2 && depth > 0) continue;
        Matrix& xb = a[0];
        xb.resize(B, d);
        yb.resize(static_cast<std::size_t>(B));
        backend::cpu::for_row_blocks(B, d, [&](Eigen::Index i0, Eigen::Index i1) {
          for (Eigen::Index i = i0; i < i1; ++i) xb.row(i) = Xs.row(order[static_cast<std::size_t>(b0 + i)]);
        });
        for (Eigen::Index i = 0; i < B; ++i)
          yb[static_cast<std::size_t>(i)] = train_y[static_cast<std::size_t>(order[static_cast<std::size_t>(b0 + i)])];

        for (std::size_t l = 0; l < D; ++l) {
          linear_[l].forward(a[l], z[l]);
          norm_[l].forward_train(z[l], n[l]);
          act_.forward(n[l], r[l]);
          drop_[l].forward_train(r[l], a[l + 1], step);
        }
        linear_[D].forward(a[D], logits);
        const float loss = nn::softmax_cross_entropy<float>(logits, yb, &dlogits);
        if (!std::isfinite(loss))
          throw numeric_error("router training diverged: loss is " + std::to_string(loss) + " at epoch " +
                              std::to_string(epoch) + "; try a smaller learning rate");
        loss_sum += static_cast<double>(loss) * static_cast<double>(B);
        loss_items += B;

        linear_[D].backward(a[D], dlogits, D > 0 ? &da : nullptr);
        for (std::size_t l = D; l-- > 0;) {
          drop_[l].backward(da, g1);
          act_.backward(n[l], g1, g2);
          norm_[l].backward(g2, g1);
          linear_[l].backward(a[l], g1, l > 0 ? &da : nullptr);
        }
        adam.step();
        ++step;
      }

      const double loss = loss_items ? loss_sum / static_cast<double>(loss_items) : 0.0;
      constexpr double nan = std::numeric_limits<double>::quiet_NaN();
      const auto [acc, hloss] = has_heldout ? score(Hs, heldout_y) : std::pair<double, double>{nan, nan};
      rep.train_loss.push_back(loss);
      rep.heldout_accuracy.push_back(acc);
      rep.heldout_loss.push_back(hloss);
      rep.epochs_run = epoch;
      if (o.progress) o.progress(epoch, loss, acc);
      if (has_heldout) {
        if (acc > best || (acc == best && hloss < best_loss)) {
          best = acc;
          best_loss = hloss;
          rep.best_epoch = epoch;
          best_state = snapshot();
          since_best = 0;
        } else if (o.patience > 0 && ++since_best >= o.patience) {
          rep.stopped_early = true;
          break;
        }
      } else {
        rep.best_epoch = epoch;
      }
    }
    if (has_heldout) {
      restore(best_state);
      rep.best_heldout_accuracy = best;
    }
    return rep;
  }

  RouterConfig config_{};
  std::vector<nn::Linear<float>> linear_;
  std::vector<nn::BatchNorm1d<float>> norm_;
  std::vector<nn::Dropout<float>> drop_;
  nn::LeakyReLU<float> act_;
  Matrix mean_, scale_, inv_scale_;
};

}  // namespace twin
