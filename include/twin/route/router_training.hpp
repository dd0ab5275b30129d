// Router training (docs/design.md §1 step 5): cross-entropy on task ids,
// Adam, mini-batches in a seeded order, and the epoch with the best held-out
// accuracy kept (early stopping after `patience` epochs without one).
// Bit-identical for a seed on any thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "twin/adapter.hpp"
#include "twin/backend/cpu/nn.hpp"
#include "twin/error.hpp"
#include "twin/route/labels.hpp"
#include "twin/route/nn.hpp"
#include "twin/route/router.hpp"
#include "twin/route/router_config.hpp"
#include "twin/route/sampling.hpp"

namespace twin {

namespace detail {

// Updates in one epoch of n items in batches of b: every batch but a
// trailing one of a single row where the network has BatchNorm (depth > 0),
// which has no batch variance and is skipped.
inline std::int64_t updates_per_epoch(std::int64_t n, std::int64_t b, int depth) {
  const std::int64_t batches = (n + b - 1) / b;
  return depth > 0 && n % b == 1 ? batches - 1 : batches;
}

// The learning-rate factor of update k (0-based) of `total` under `s`:
// (total − k) / total for the linear schedule.
inline double lr_factor(LrSchedule s, std::int64_t k, std::int64_t total) {
  if (s == LrSchedule::constant || total <= 0) return 1.0;
  return static_cast<double>(total - k) / static_cast<double>(total);
}

// The training loop, given access to the network it trains.
struct RouterTraining {
  using Matrix = Router::Matrix;
  Router& net;

  RouterTrainReport fit(const ConstTensorView& embeddings, std::span<const std::int64_t> labels,
                        const RouterTrainOptions& opts) {
    Matrix X = net.to_matrix(embeddings, "training embeddings");
    Router::check_rows(labels, X.rows(), "training");
    check_labels(labels, net.num_tasks(), "training");
    if (X.rows() == 0) throw argument_error("training set is empty: no embeddings given");
    if (opts.holdout_fraction == 0.0) return train(X, labels, Matrix(0, net.input_dim()), {}, opts);
    const DataSplit split = stratified_split(labels, net.num_tasks(), opts.holdout_fraction, opts.seed);
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

  RouterTrainReport fit(const ConstTensorView& train_embeddings, std::span<const std::int64_t> train_labels,
                        const ConstTensorView& hv, std::span<const std::int64_t> heldout_labels,
                        const RouterTrainOptions& opts) {
    Matrix xt = net.to_matrix(train_embeddings, "training embeddings");
    Router::check_rows(train_labels, xt.rows(), "training");
    check_labels(train_labels, net.num_tasks(), "training");
    if (xt.rows() == 0) throw argument_error("training set is empty: no embeddings given");
    Matrix xh = hv.numel() == 0 ? Matrix(0, net.input_dim()) : net.to_matrix(hv, "held-out embeddings");
    Router::check_rows(heldout_labels, xh.rows(), "held-out");
    check_labels(heldout_labels, net.num_tasks(), "held-out");
    return train(xt, train_labels, xh, heldout_labels, opts);
  }

  struct Snapshot {
    std::vector<Matrix> tensors;
  };

  Snapshot snapshot() const {
    Snapshot s;
    for (const auto& l : net.linear_) s.tensors.push_back(l.weight.value), s.tensors.push_back(l.bias.value);
    for (const auto& n : net.norm_)
      s.tensors.push_back(n.weight.value), s.tensors.push_back(n.bias.value), s.tensors.push_back(n.running_mean),
          s.tensors.push_back(n.running_var);
    return s;
  }
  void restore(const Snapshot& s) {
    std::size_t i = 0;
    for (auto& l : net.linear_) l.weight.value = s.tensors[i++], l.bias.value = s.tensors[i++];
    for (auto& n : net.norm_)
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
        net.mean_(0, c0 + c) = static_cast<float>(mean[c]);
        net.scale_(0, c0 + c) = sd > 1e-12 * std::max(1.0, std::abs(mean[c])) ? static_cast<float>(sd) : 1.0f;
      }
    });
    net.inv_scale_ = net.scale_.cwiseInverse();
  }

  // Held-out accuracy and mean cross-entropy of standardized rows.
  std::pair<double, double> score(const Matrix& Xs, std::span<const std::int64_t> labels) const {
    std::int64_t correct = 0;
    double loss = 0;
    Matrix a, b, z;
    for (Eigen::Index r0 = 0; r0 < Xs.rows(); r0 += Router::eval_chunk) {
      const Eigen::Index n = std::min(Router::eval_chunk, Xs.rows() - r0);
      net.forward_eval(Xs.middleRows(r0, n), z, a, b);
      const auto yl = labels.subspan(static_cast<std::size_t>(r0), static_cast<std::size_t>(n));
      loss += static_cast<double>(nn::softmax_cross_entropy<float>(z, yl)) * static_cast<double>(n);
      const std::vector<std::int64_t> pred = Router::argmax_rows(z);
      for (Eigen::Index i = 0; i < n; ++i)
        correct += pred[static_cast<std::size_t>(i)] == yl[static_cast<std::size_t>(i)];
    }
    const auto N = static_cast<double>(Xs.rows());
    return {static_cast<double>(correct) / N, loss / N};
  }

  RouterTrainReport train(const Matrix& train_x, std::span<const std::int64_t> train_y, const Matrix& heldout_x,
                          std::span<const std::int64_t> heldout_y, const RouterTrainOptions& o) {
    if (o.max_epochs <= 0) throw argument_error("max_epochs must be positive, found " + std::to_string(o.max_epochs));
    if (o.patience < 0)
      throw argument_error("patience must be >= 0 (0: no early stopping), found " + std::to_string(o.patience));
    if (o.batch_size < 2)
      throw argument_error("batch_size must be at least 2 (BatchNorm needs two rows), found " +
                           std::to_string(o.batch_size));
    if (!(o.max_grad_norm >= 0.0) || !std::isfinite(o.max_grad_norm))
      throw argument_error("max_grad_norm must be >= 0 (0: no clipping), found " + std::to_string(o.max_grad_norm));
    if (train_x.rows() < 2 && net.config_.depth > 0)
      throw argument_error("training set has " + std::to_string(train_x.rows()) +
                           " item(s); BatchNorm needs at least 2");
    net.initialize(o.seed);
    nn::Adam<float> adam;
    {
      std::vector<nn::Parameter<float>*> params;
      for (auto& l : net.linear_)
        for (auto* p : l.parameters()) params.push_back(p);
      for (auto& n : net.norm_)
        for (auto* p : n.parameters()) params.push_back(p);
      adam = nn::Adam<float>(std::move(params), o.adam);
    }

    if (o.standardize) fit_standardization(train_x);
    Matrix Xs = train_x, Hs = heldout_x;
    net.standardize(Xs);
    net.standardize(Hs);

    const int depth = net.config_.depth;
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
    // Updates in the whole run, for the linear schedule.
    const std::int64_t total_steps = updates_per_epoch(N, o.batch_size, depth) * o.max_epochs;

    for (int epoch = 1; epoch <= o.max_epochs; ++epoch) {
      const std::vector<std::int64_t> order = epoch_order(train_y, net.num_tasks(), o.seed, epoch, o.class_balanced);
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
          net.linear_[l].forward(a[l], z[l]);
          net.norm_[l].forward_train(z[l], n[l]);
          net.act_.forward(n[l], r[l]);
          net.drop_[l].forward_train(r[l], a[l + 1], step);
        }
        net.linear_[D].forward(a[D], logits);
        const float loss = nn::softmax_cross_entropy<float>(logits, yb, &dlogits);
        if (!std::isfinite(loss))
          throw numeric_error("router training diverged: loss is " + std::to_string(loss) + " at epoch " +
                              std::to_string(epoch) + "; try a smaller learning rate");
        loss_sum += static_cast<double>(loss) * static_cast<double>(B);
        loss_items += B;

        net.linear_[D].backward(a[D], dlogits, D > 0 ? &da : nullptr);
        for (std::size_t l = D; l-- > 0;) {
          net.drop_[l].backward(da, g1);
          net.act_.backward(n[l], g1, g2);
          net.norm_[l].backward(g2, g1);
          net.linear_[l].backward(a[l], g1, l > 0 ? &da : nullptr);
        }
        if (o.max_grad_norm > 0.0)
          nn::clip_grad_norm(std::span<nn::Parameter<float>* const>(adam.parameters()), o.max_grad_norm);
        adam.step(lr_factor(o.lr_schedule, static_cast<std::int64_t>(step), total_steps));
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
};

}  // namespace detail

// Trains `router` on embeddings [N, d] with task ids in [0, T), holding out
// opts.holdout_fraction of each task to pick the epoch kept. Weights are
// re-initialized from opts.seed, so the result depends only on the data and
// the options.
template <tensor_like E>
RouterTrainReport train_router(Router& router, const E& embeddings, std::span<const std::int64_t> labels,
                               const RouterTrainOptions& opts = {}) {
  return detail::RouterTraining{router}.fit(adapt(embeddings), labels, opts);
}

// Trains on an explicit split (opts.holdout_fraction is not used). An empty
// held-out set keeps the last epoch.
template <tensor_like E, tensor_like H>
RouterTrainReport train_router(Router& router, const E& train_embeddings, std::span<const std::int64_t> train_labels,
                               const H& heldout_embeddings, std::span<const std::int64_t> heldout_labels,
                               const RouterTrainOptions& opts = {}) {
  return detail::RouterTraining{router}.fit(adapt(train_embeddings), train_labels, adapt(heldout_embeddings),
                                            heldout_labels, opts);
}

}  // namespace twin
