// Training and scoring of the libtorch reproduction's transformer: masked-tile
// pretraining (task-agnostic), fine-tuning of body + heads (experts, MTL),
// heads fit on a frozen body (the unseen-task protocol), and accuracy. Init is
// seeded through torch::manual_seed and the data order through Philox keys
// (paper::shuffled), so a run with a fixed thread count repeats itself.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "paper/mlp.hpp"
#include "paper/tasks.hpp"
#include "twin/random.hpp"
#include "vit/model.hpp"

namespace vit {

using paper::TaskData;

struct Recipe {
  int epochs = 3;
  std::int64_t batch = 128;
  double lr = 1e-3;
};

// The task's inputs [n, 784] and labels [n] as torch tensors viewing the
// TaskData's memory (which must outlive them).
inline torch::Tensor inputs(const TaskData& d) {
  return torch::from_blob(const_cast<float*>(d.x.data()), {d.size(), paper::kPixels}, torch::kFloat);
}
inline torch::Tensor labels(const TaskData& d) {
  return torch::from_blob(const_cast<std::int64_t*>(d.y.data()), {d.size()}, torch::kLong);
}

// torch's global generator, seeded from a 64-bit key (it takes 63 bits).
inline void seed_torch(std::uint64_t key) { torch::manual_seed(key >> 1); }

inline torch::Tensor order_tensor(std::int64_t n, std::uint64_t key, int epoch) {
  const std::vector<std::int64_t> o = paper::shuffled(n, key, epoch);
  return torch::tensor(o, torch::kLong);
}

// Pretraining: 40% of the tiles of each image are blanked and the body must
// give every tile's pixels back through a linear decoder (thrown away after):
// a masked autoencoder without the encoder/decoder split, on a mix of views.
inline void pretrain(Body& body, const torch::Tensor& x, const Recipe& r, std::uint64_t key,
                     const std::function<void(int, double)>& progress = {}) {
  seed_torch(twin::random_key(key, "decoder", 0));
  torch::nn::Linear decoder(body->shape.width, kPatchDim);
  std::vector<torch::Tensor> params = body->parameters();
  for (const auto& p : decoder->parameters()) params.push_back(p);
  torch::optim::Adam opt(params, torch::optim::AdamOptions(r.lr));
  const std::int64_t N = x.size(0);
  for (int e = 0; e < r.epochs; ++e) {
    const torch::Tensor order = order_tensor(N, twin::random_key(key, "order", 0), e);
    double loss_sum = 0;
    std::int64_t batches = 0;
    for (std::int64_t b0 = 0; b0 + 1 < N; b0 += r.batch) {
      const torch::Tensor xb = x.index_select(0, order.slice(0, b0, std::min(N, b0 + r.batch)));
      const std::int64_t B = xb.size(0);
      const torch::Tensor t = tiles(xb);
      const torch::Tensor keep = (torch::rand({B, kTiles, 1}) >= 0.4).to(torch::kFloat);
      const torch::Tensor blanked =
          (t * keep).view({B, kGrid, kGrid, kPatch, kPatch}).permute({0, 1, 3, 2, 4}).reshape({B, paper::kPixels});
      const torch::Tensor rec = decoder(body->forward(blanked).slice(1, 1));
      const torch::Tensor loss = torch::mse_loss(rec, t);
      opt.zero_grad();
      loss.backward();
      opt.step();
      loss_sum += loss.item<double>();
      ++batches;
    }
    if (progress) progress(e + 1, loss_sum / static_cast<double>(std::max<std::int64_t>(batches, 1)));
  }
}

// Fine-tuning of body and one head per task from the body's current weights.
// With several tasks (the MTL model) step k trains on a batch of task k mod T,
// so every task gets as many steps as its own expert does. Each head has its
// own optimizer, stepped only on its task's batches (one Adam over all heads
// would keep moving a head by its momentum on the other tasks' steps).
inline void finetune(Body& body, std::vector<torch::nn::Linear>& heads, std::span<const TaskData* const> tasks,
                     const Recipe& r, std::uint64_t key) {
  const std::size_t T = tasks.size();
  torch::optim::Adam body_opt(body->parameters(), torch::optim::AdamOptions(r.lr));
  std::vector<std::unique_ptr<torch::optim::Adam>> head_opt;
  for (auto& h : heads)
    head_opt.push_back(std::make_unique<torch::optim::Adam>(h->parameters(), torch::optim::AdamOptions(r.lr)));
  std::vector<torch::Tensor> x, y, order;
  std::vector<std::int64_t> pos(T, 0);
  std::vector<int> epoch(T, 0);
  std::int64_t steps = 0;
  for (std::size_t t = 0; t < T; ++t) {
    x.push_back(inputs(*tasks[t])), y.push_back(labels(*tasks[t]));
    order.push_back(order_tensor(tasks[t]->size(), twin::random_key(key, "order", t), 0));
    steps = std::max(steps, (tasks[t]->size() + r.batch - 1) / r.batch * r.epochs);
  }
  for (std::int64_t k = 0; k < steps * static_cast<std::int64_t>(T); ++k) {
    const std::size_t t = static_cast<std::size_t>(k % static_cast<std::int64_t>(T));
    const std::int64_t n = tasks[t]->size();
    if (pos[t] >= n) {
      pos[t] = 0;
      order[t] = order_tensor(n, twin::random_key(key, "order", t), ++epoch[t]);
    }
    const std::int64_t B = std::min(r.batch, n - pos[t]);
    const torch::Tensor idx = order[t].slice(0, pos[t], pos[t] + B);
    pos[t] += B;
    if (B < 2) continue;
    const torch::Tensor logits = heads[t]->forward(class_token(body->forward(x[t].index_select(0, idx))));
    const torch::Tensor loss = torch::nn::functional::cross_entropy(logits, y[t].index_select(0, idx));
    body_opt.zero_grad();
    head_opt[t]->zero_grad();
    loss.backward();
    body_opt.step();
    head_opt[t]->step();
  }
}

// Class-token features of a frozen body, in chunks (no autograd).
inline torch::Tensor features(Body& body, const torch::Tensor& x, bool mean_of_tokens = false) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> parts;
  for (std::int64_t b0 = 0; b0 < x.size(0); b0 += 1000) {
    const torch::Tensor tok = body->forward(x.slice(0, b0, std::min(x.size(0), b0 + 1000)));
    parts.push_back(mean_of_tokens ? mean_token(tok) : class_token(tok));
  }
  return parts.empty() ? torch::empty({0, body->shape.width}) : torch::cat(parts, 0);
}

// A head fit on a frozen body: the body's class-token features of the task's
// training items are computed once, then only the head trains (a linear
// probe, the recipe's epochs, batch and learning rate).
inline void fit_head(Body& body, torch::nn::Linear& head, const TaskData& d, const Recipe& r, std::uint64_t key) {
  const torch::Tensor f = features(body, inputs(d)), y = labels(d);
  torch::optim::Adam opt(head->parameters(), torch::optim::AdamOptions(r.lr));
  for (int e = 0; e < r.epochs; ++e) {
    const torch::Tensor order = order_tensor(d.size(), twin::random_key(key, "order", 0), e);
    for (std::int64_t b0 = 0; b0 + 1 < d.size(); b0 += r.batch) {
      const torch::Tensor idx = order.slice(0, b0, std::min(d.size(), b0 + r.batch));
      const torch::Tensor loss =
          torch::nn::functional::cross_entropy(head->forward(f.index_select(0, idx)), y.index_select(0, idx));
      opt.zero_grad();
      loss.backward();
      opt.step();
    }
  }
}

// Accuracy (%) of `head` on `body`'s class-token features.
inline double accuracy(const torch::Tensor& features, torch::nn::Linear& head, const TaskData& d) {
  torch::NoGradGuard no_grad;
  if (d.size() == 0) return 0.0;
  const torch::Tensor pred = head->forward(features).argmax(1);
  return 100.0 * pred.eq(labels(d)).sum().item<double>() / static_cast<double>(d.size());
}

}  // namespace vit
