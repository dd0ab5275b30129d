// Scoring of paper_vit's methods inside libtorch: a static body is loaded into
// a live torch::nn module and run in batches; Twin-Merging routes each input
// on the shared body's mean token, then DynamicFuser writes θ* + Σ w_t v̂_t
// into the live module's parameters and that one input runs (per-input
// fusion, as the paper evaluates it).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/torch_adapter.hpp"
#include "paper/report.hpp"
#include "paper/twin_eval.hpp"
#include "twin/twin.hpp"
#include "vit/setup.hpp"
#include "vit/train.hpp"

namespace vit {

using paper::MethodRow;

// A task's test items with the heads that score them and the accuracy that
// normalizes the score (its own expert's).
struct Scored {
  const paper::TaskData* data;
  torch::nn::Linear head;
  double reference;
};

inline MethodRow row_from_features(const std::string& name, const std::vector<torch::Tensor>& feats,
                                   std::span<const Scored> tasks, double bytes) {
  MethodRow r{name, {}, {}, bytes, {}};
  for (std::size_t t = 0; t < tasks.size(); ++t) {
    torch::nn::Linear head = tasks[t].head;
    const double a = accuracy(feats[t], head, *tasks[t].data);
    r.accuracy.push_back(a);
    r.normalized.push_back(100.0 * a / tasks[t].reference);
  }
  return r;
}

class Scorer {
 public:
  explicit Scorer(const Config& cfg) : live_(cfg.shape), shared_(cfg.shape) {}

  Body& live() { return live_; }

  // Class-token features of each task's items under a static body.
  std::vector<torch::Tensor> static_features(const twin::StateDict& body, std::span<const Scored> tasks) {
    examples::load_parameters(*live_, body);
    std::vector<torch::Tensor> f;
    for (const Scored& s : tasks) f.push_back(features(live_, inputs(*s.data)));
    return f;
  }
  MethodRow static_row(const std::string& name, const twin::StateDict& body, std::span<const Scored> tasks,
                       double bytes) {
    return row_from_features(name, static_features(body, tasks), tasks, bytes);
  }

  // Router logits [n, T] for the items: the router reads the mean token of
  // the shared body θ*.
  void set_shared(const twin::StateDict& theta) { examples::load_parameters(*shared_, theta); }
  torch::Tensor embeddings(const torch::Tensor& x) { return features(shared_, x, true); }
  torch::Tensor embeddings(const paper::TaskData& d) { return embeddings(inputs(d)); }
  torch::Tensor logits(const twin::Router& router, const paper::TaskData& d) {
    const twin::Tensor lg = router.logits(embeddings(d).contiguous());
    const auto v = lg.values<float>();
    return torch::tensor(std::vector<float>(v.begin(), v.end()), torch::kFloat).view({d.size(), router.num_tasks()});
  }

  // Per-input fusion: row i of x runs through θ* + Σ_t w_t(logits_i) v̂_t
  // written into the live module. Class-token features [n, D].
  torch::Tensor fused_features(const twin::DynamicFuser& fuser, const torch::Tensor& logits, const torch::Tensor& x) {
    torch::NoGradGuard no_grad;
    auto params = live_->named_parameters();
    const std::int64_t n = x.size(0), T = logits.size(1);
    torch::Tensor out = torch::empty({n, live_->shape.width});
    const float* lg = logits.data_ptr<float>();
    for (std::int64_t i = 0; i < n; ++i) {
      fuser.fuse(params, std::span<const float>(lg + i * T, static_cast<std::size_t>(T)));
      out[i] = class_token(live_->forward(x.slice(0, i, i + 1)))[0];
    }
    return out;
  }

  // Twin-Merging scored per input on each task's items (routed by `router`
  // on the shared body that `set_shared` loaded).
  std::vector<torch::Tensor> twin_features(const twin::DynamicFuser& fuser, const twin::Router& router,
                                           std::span<const Scored> tasks) {
    std::vector<torch::Tensor> f;
    for (const Scored& s : tasks) f.push_back(fused_features(fuser, logits(router, *s.data), inputs(*s.data)));
    return f;
  }

 private:
  Body live_, shared_;
};

// A router trained on the shared body's mean tokens of each task's
// validation items (labelled with their task).
inline twin::Router train_vit_router(Scorer& sc, const std::vector<paper::TaskSets>& sets,
                                     const paper::RouterSettings& rs, double* heldout) {
  std::vector<torch::Tensor> emb;
  std::vector<std::int64_t> labels;
  for (std::size_t t = 0; t < sets.size(); ++t) {
    emb.push_back(sc.embeddings(sets[t].val));
    labels.insert(labels.end(), static_cast<std::size_t>(sets[t].val.size()), static_cast<std::int64_t>(t));
  }
  const torch::Tensor all = torch::cat(emb, 0).contiguous();
  return paper::train_router_on(twin::adapt(all), labels, static_cast<std::int64_t>(sets.size()), rs, heldout);
}

}  // namespace vit
