// Evaluation of merged and Twin-Merging models on the reproduction's tasks:
// static bodies, per-input dynamic fusion (exact, through the library's
// mixed-batch apply or a dense reference), group-wise fusion, and the router
// built on the shared model's penultimate activations.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "paper/mlp.hpp"
#include "twin/compress/magnitude_sparsifier.hpp"
#include "twin/compress/svd_compressor.hpp"
#include "twin/fuse/dynamic_fuser.hpp"
#include "twin/fuse/mixed_batch.hpp"
#include "twin/model/twin_model.hpp"
#include "twin/route/grouping.hpp"
#include "twin/route/router.hpp"
#include "twin/twin.hpp"

namespace paper {

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

inline twin::ConstTensorView cview(const Matrix& m) {
  const std::int64_t shape[2] = {m.rows(), m.cols()};
  return twin::ConstTensorView(m.data(), twin::dtype::f32, shape);
}
inline twin::TensorView wview(Matrix& m) {
  const std::int64_t shape[2] = {m.rows(), m.cols()};
  return twin::TensorView(m.data(), twin::dtype::f32, shape);
}

// Writes the fused body for mixture weights `w` (θ* + Σ w_t v̂_t) straight
// into Eigen matrices through the fuser's per-tensor form.
inline void fuse_body(const twin::DynamicFuser& f, std::span<const float> w, Body& out) {
  auto layer = [&](const char* wname, const char* bname, Layer& l) {
    const auto& shape = f.model().at(wname).shape;
    l.w.resize(shape[0], shape[1]);
    l.b.resize(1, shape[0]);
    const std::int64_t ws[2] = {shape[0], shape[1]}, bs[1] = {shape[0]};
    f.fuse_view(wname, twin::TensorView(l.w.data(), twin::dtype::f32, ws), w);
    f.fuse_view(bname, twin::TensorView(l.b.data(), twin::dtype::f32, bs), w);
  };
  layer("body.0.weight", "body.0.bias", out.l0);
  layer("body.1.weight", "body.1.bias", out.l1);
}

// Per-input fusion of the body, exact: each row of X runs through
// θ* + Σ_t W[row, t] v̂_t. Low-rank models go through the library's
// mixed-batch apply (no weight is materialized); others through a dense
// reference, y = x W*ᵀ + Σ_t w_t (x v̂_tᵀ), one product per task.
class PerInputBody {
 public:
  explicit PerInputBody(const twin::DynamicFuser& f) : f_(&f) {
    low_rank_ = true;
    for (const char* n : {"body.0.weight", "body.1.weight"})
      for (const auto& m : f.model().at(n).modules) low_rank_ = low_rank_ && m.kind() == twin::ModuleKind::low_rank;
    if (!low_rank_) {
      shared_ = body_of(f.model().shared());
      for (std::size_t t = 0; t < f.num_tasks(); ++t) {
        Body d;
        auto get = [&](const char* n, Eigen::Index r, Eigen::Index c) {
          return from_tensor(f.model().module(n, t).to_dense(), r, c);
        };
        d.l0 = {get("body.0.weight", shared_.l0.w.rows(), shared_.l0.w.cols()),
                get("body.0.bias", 1, shared_.l0.w.rows())};
        d.l1 = {get("body.1.weight", shared_.l1.w.rows(), shared_.l1.w.cols()),
                get("body.1.bias", 1, shared_.l1.w.rows())};
        deltas_.push_back(std::move(d));
      }
    }
  }

  bool uses_mixed_apply() const { return low_rank_; }

  // Penultimate activations of the rows of X under their own fused body.
  Matrix hidden(const Matrix& X, std::span<const float> W) const { return low_rank_ ? mixed(X, W) : reference(X, W); }

  Matrix mixed(const Matrix& X, std::span<const float> W) const {
    Matrix h0(X.rows(), f_->model().at("body.0.weight").shape[0]), h1;
    twin::MixedApplyOptions o0, o1;
    o0.bias = "body.0.bias";
    o1.bias = "body.1.bias";
    twin::apply_mixed_view(*f_, "body.0.weight", cview(X), W, wview(h0), o0);
    for (Eigen::Index i = 0; i < h0.size(); ++i) h0.data()[i] = leaky(h0.data()[i]);
    h1.resize(X.rows(), f_->model().at("body.1.weight").shape[0]);
    twin::apply_mixed_view(*f_, "body.1.weight", cview(h0), W, wview(h1), o1);
    for (Eigen::Index i = 0; i < h1.size(); ++i) h1.data()[i] = leaky(h1.data()[i]);
    return h1;
  }

 private:
  Matrix reference(const Matrix& X, std::span<const float> W) const {
    const std::size_t T = f_->num_tasks();
    auto layer = [&](const Matrix& x, const Layer& s, auto pick) {
      Matrix y, z;
      dense(x, s, y, false);
      for (std::size_t t = 0; t < T; ++t) {
        dense(x, pick(deltas_[t]), z, false);
        for (Eigen::Index i = 0; i < y.rows(); ++i) {
          const float w = W[static_cast<std::size_t>(i) * T + t];
          if (w != 0.0f) y.row(i) += w * z.row(i);
        }
      }
      for (Eigen::Index i = 0; i < y.size(); ++i) y.data()[i] = leaky(y.data()[i]);
      return y;
    };
    const Matrix h0 = layer(X, shared_.l0, [](const Body& b) -> const Layer& { return b.l0; });
    return layer(h0, shared_.l1, [](const Body& b) -> const Layer& { return b.l1; });
  }

  const twin::DynamicFuser* f_;
  bool low_rank_ = true;
  Body shared_;
  std::vector<Body> deltas_;
};

// Router over the shared model's penultimate activations.
// The official router is Linear(d,2d)-BN-LeakyReLU-Dropout x2; `hidden` 0
// keeps that width (2d), a positive value narrows it to save training time.
struct RouterSettings {
  int max_epochs = 30;
  int patience = 6;
  std::uint64_t seed = 0;
  std::int64_t hidden = 0;
  std::int64_t batch = 128;
};

// A router trained on embeddings [n × d] (row-major, f32) labelled with
// their task, as both reproductions train theirs.
inline twin::Router train_router_on(twin::ConstTensorView embeddings, const std::vector<std::int64_t>& labels,
                                    std::int64_t num_tasks, const RouterSettings& s,
                                    double* heldout_accuracy = nullptr) {
  twin::RouterConfig cfg;
  cfg.input_dim = embeddings.dim(1);
  cfg.num_tasks = num_tasks;
  cfg.hidden = s.hidden;
  twin::Router r(cfg, s.seed);
  twin::RouterTrainOptions o;
  o.max_epochs = s.max_epochs;
  o.patience = s.patience;
  o.seed = s.seed;
  o.batch_size = s.batch;
  const twin::RouterTrainReport rep = twin::train_router(r, embeddings, labels, o);
  if (heldout_accuracy) *heldout_accuracy = rep.best_heldout_accuracy;
  return r;
}

inline twin::Router train_router(const Body& shared, const std::vector<const TaskData*>& val, const RouterSettings& s,
                                 double* heldout_accuracy = nullptr) {
  std::int64_t n = 0;
  for (const TaskData* d : val) n += d->size();
  Matrix emb(n, shared.l1.w.rows());
  std::vector<std::int64_t> labels;
  std::int64_t row = 0;
  for (std::size_t t = 0; t < val.size(); ++t) {
    const Matrix h = embed(shared, val[t]->x);
    emb.middleRows(row, h.rows()) = h;
    row += h.rows();
    labels.insert(labels.end(), static_cast<std::size_t>(h.rows()), static_cast<std::int64_t>(t));
  }
  return train_router_on(cview(emb), labels, static_cast<std::int64_t>(val.size()), s, heldout_accuracy);
}

// Mixture weights [N×T] (row-major) for inputs X: router logits on the
// shared body's embedding, softmax (temperature 1).
inline std::vector<float> route(const twin::Router& r, const Body& shared, const Matrix& X,
                                std::vector<float>* logits_out = nullptr) {
  const Matrix h = embed(shared, X);
  const twin::Tensor lg = r.logits(cview(h));
  const auto lv = lg.values<float>();
  const std::size_t T = static_cast<std::size_t>(r.num_tasks());
  std::vector<float> w(lv.size());
  for (std::size_t i = 0; i < lv.size() / T; ++i) {
    const std::vector<float> wi = twin::routing_weights(lv.subspan(i * T, T));
    std::copy(wi.begin(), wi.end(), w.begin() + static_cast<std::ptrdiff_t>(i * T));
  }
  if (logits_out) logits_out->assign(lv.begin(), lv.end());
  return w;
}

inline std::size_t router_bytes(const twin::Router& r) { return r.to_state_dict().nbytes(); }

}  // namespace paper
