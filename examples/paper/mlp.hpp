// The small model of the reproduction and its training, built from the
// library's nn pieces: a body Linear(784,H) → LeakyReLU → Linear(H,H) →
// LeakyReLU and one Linear(H,10) head per task. Pretraining is a denoising
// autoencoder (task-agnostic; the decoder is thrown away); experts and the
// multi-task model fine-tune body and heads with one recipe. Everything is
// seeded through Philox keys, so a run is reproducible bit for bit.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "paper/tasks.hpp"
#include "twin/route/nn.hpp"
#include "twin/state_dict.hpp"

#include "twin/backend/cpu/nn.hpp"

namespace paper {

namespace nn = twin::nn;
namespace cpu = twin::backend::cpu;

// Tensor names of a checkpoint: body.0.*, body.1.*, head.* (the head is
// what Twin-Merging excludes from merging).
inline const char* const kBodyNames[] = {"body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias"};
inline const char* const kHeadPattern = "head\\..*";

struct Layer {
  Matrix w;  // [out, in]
  Matrix b;  // [1, out]
};

struct Body {
  Layer l0, l1;
};

inline float leaky(float x) { return x > 0.0f ? x : 0.01f * x; }

// y = leaky(x Wᵀ + b) (or without the activation).
inline void dense(const Matrix& x, const Layer& l, Matrix& y, bool act) {
  y.resize(x.rows(), l.w.rows());
  cpu::gemm<float>(cpu::GemmMode::invariant, false, true, x.rows(), l.w.rows(), l.w.cols(), 1.0f, x.data(), x.cols(),
                   l.w.data(), l.w.cols(), false, y.data(), y.cols(), l.b.data());
  if (act)
    for (Eigen::Index i = 0; i < y.size(); ++i) y.data()[i] = leaky(y.data()[i]);
}

// Penultimate activations: the embedding the router reads and the heads take.
inline Matrix embed(const Body& body, const Matrix& x) {
  Matrix h0, h1;
  dense(x, body.l0, h0, true);
  dense(h0, body.l1, h1, true);
  return h1;
}

inline double head_accuracy(const Matrix& h, const Layer& head, std::span<const std::int64_t> y) {
  Matrix z;
  dense(h, head, z, false);
  std::int64_t ok = 0;
  for (Eigen::Index i = 0; i < z.rows(); ++i) {
    Eigen::Index best;
    z.row(i).maxCoeff(&best);
    ok += best == y[static_cast<std::size_t>(i)];
  }
  return z.rows() ? 100.0 * static_cast<double>(ok) / static_cast<double>(z.rows()) : 0.0;
}

// --- state dicts -------------------------------------------------------------

inline twin::Tensor to_tensor(const Matrix& m, bool vector) {
  std::vector<std::int64_t> shape = vector ? std::vector<std::int64_t>{m.size()}
                                           : std::vector<std::int64_t>{m.rows(), m.cols()};
  return twin::Tensor::from_f32(std::span<const float>(m.data(), static_cast<std::size_t>(m.size())), shape);
}
inline Matrix from_tensor(const twin::Tensor& t, Eigen::Index rows, Eigen::Index cols) {
  if (t.numel() != rows * cols)
    throw twin::shape_error("checkpoint tensor of shape " + t.shape_str() + " does not hold " + std::to_string(rows) +
                            "x" + std::to_string(cols) + " values");
  Matrix m(rows, cols);
  twin::read_f32(t.view(), 0, t.numel(), m.data());
  return m;
}
inline void put_layer(twin::StateDict& sd, const std::string& prefix, const Layer& l) {
  sd.assign(prefix + ".weight", to_tensor(l.w, false));
  sd.assign(prefix + ".bias", to_tensor(l.b, true));
}
inline Layer get_layer(const twin::StateDict& sd, const std::string& prefix) {
  const twin::Tensor& w = sd.at(prefix + ".weight");
  if (w.rank() != 2) throw twin::shape_error(prefix + ".weight: expected a matrix, found " + w.shape_str());
  Layer l;
  l.w = from_tensor(w, w.dim(0), w.dim(1));
  l.b = from_tensor(sd.at(prefix + ".bias"), 1, w.dim(0));
  return l;
}
inline twin::StateDict to_state(const Body& b, const Layer& head) {
  twin::StateDict sd;
  put_layer(sd, "body.0", b.l0);
  put_layer(sd, "body.1", b.l1);
  put_layer(sd, "head", head);
  return sd;
}
inline Body body_of(const twin::StateDict& sd) { return {get_layer(sd, "body.0"), get_layer(sd, "body.1")}; }
inline Layer head_of(const twin::StateDict& sd) { return get_layer(sd, "head"); }

// --- training ----------------------------------------------------------------

struct TrainRecipe {
  int epochs = 3;
  std::int64_t batch = 128;
  double lr = 1e-3;
};

struct Net {
  nn::Linear<float> l0, l1;
  std::vector<nn::Linear<float>> heads;
  nn::LeakyReLU<float> act{0.01f};

  Net(std::int64_t hidden, std::size_t num_heads, std::int64_t head_out = kClasses)
      : l0(kPixels, hidden), l1(hidden, hidden) {
    for (std::size_t t = 0; t < num_heads; ++t) heads.emplace_back(hidden, head_out);
  }
  void load_body(const Body& b) {
    l0.weight.value = b.l0.w, l0.bias.value = b.l0.b;
    l1.weight.value = b.l1.w, l1.bias.value = b.l1.b;
  }
  Body body() const { return {{l0.weight.value, l0.bias.value}, {l1.weight.value, l1.bias.value}}; }
  Layer head(std::size_t t) const { return {heads[t].weight.value, heads[t].bias.value}; }
};

// Order of one epoch's items: a Philox shuffle keyed by (key, epoch).
inline std::vector<std::int64_t> shuffled(std::int64_t n, std::uint64_t key, int epoch) {
  std::vector<std::int64_t> o(static_cast<std::size_t>(n));
  std::iota(o.begin(), o.end(), std::int64_t{0});
  const twin::Philox rng(twin::random_key(key, "epoch", static_cast<std::uint64_t>(epoch)));
  for (std::int64_t i = n - 1; i > 0; --i) {
    const std::uint64_t r = rng.block(static_cast<std::uint64_t>(i))[0];
    const auto j = static_cast<std::int64_t>((r * static_cast<std::uint64_t>(i + 1)) >> 32);
    std::swap(o[static_cast<std::size_t>(i)], o[static_cast<std::size_t>(j)]);
  }
  return o;
}

inline void gather_rows(const Matrix& src, const std::vector<std::int64_t>& order, std::int64_t b0, std::int64_t n,
                        Matrix& dst) {
  dst.resize(n, src.cols());
  for (std::int64_t i = 0; i < n; ++i) dst.row(i) = src.row(order[static_cast<std::size_t>(b0 + i)]);
}

// Pretraining: a denoising autoencoder. Inputs are the mixed views with 30%
// of the pixels zeroed (a Philox mask), the target is the clean view, the loss
// is the mean squared error through a linear decoder that is then discarded.
inline Body pretrain_dae(const Matrix& x, std::int64_t hidden, const TrainRecipe& r, std::uint64_t seed,
                         const std::function<void(int, double)>& progress = {}) {
  Net net(hidden, 0);
  net.l0.reset_parameters(twin::random_key(seed, "pretrain.body.0", 0));
  net.l1.reset_parameters(twin::random_key(seed, "pretrain.body.1", 0));
  nn::Linear<float> dec(hidden, kPixels);
  dec.reset_parameters(twin::random_key(seed, "pretrain.decoder", 0));
  std::vector<nn::Parameter<float>*> params;
  for (auto* l : {&net.l0, &net.l1, &dec})
    for (auto* p : l->parameters()) params.push_back(p);
  nn::AdamOptions ao;
  ao.lr = r.lr;
  nn::Adam<float> adam(params, ao);
  const twin::Philox mask_rng(twin::random_key(seed, "pretrain.mask", 0));
  Matrix xb, xn, z0, a0, z1, a1, y, dy, da, dz;
  const std::int64_t N = x.rows();
  std::uint64_t step = 0;
  for (int e = 0; e < r.epochs; ++e) {
    const auto order = shuffled(N, twin::random_key(seed, "pretrain.order", 0), e);
    double loss_sum = 0;
    std::int64_t batches = 0;
    for (std::int64_t b0 = 0; b0 + 1 < N; b0 += r.batch, ++step) {
      const std::int64_t B = std::min(r.batch, N - b0);
      gather_rows(x, order, b0, B, xb);
      xn = xb;
      for (Eigen::Index i = 0; i < xn.size(); ++i)
        if (mask_rng.uniform(static_cast<std::uint64_t>(i), step) < 0.3f) xn.data()[i] = 0.0f;
      net.l0.forward(xn, z0);
      net.act.forward(z0, a0);
      net.l1.forward(a0, z1);
      net.act.forward(z1, a1);
      dec.forward(a1, y);
      dy = y - xb;
      loss_sum += static_cast<double>(dy.squaredNorm()) / static_cast<double>(dy.size());
      ++batches;
      dy *= 2.0f / static_cast<float>(dy.size());
      dec.backward(a1, dy, &da);
      net.act.backward(z1, da, dz);
      net.l1.backward(a0, dz, &da);
      net.act.backward(z0, da, dz);
      net.l0.backward(xn, dz, nullptr);
      adam.step();
    }
    if (progress) progress(e + 1, loss_sum / static_cast<double>(std::max<std::int64_t>(batches, 1)));
  }
  return net.body();
}

// Fine-tuning of the whole body and one head per task from `start`. With
// several tasks (the MTL model) step k trains on a batch of task k mod T, so
// every task gets the same number of steps as its own expert does.
struct Trained {
  Body body;
  std::vector<Layer> heads;
};

inline Trained finetune(const Body& start, const std::vector<const TaskData*>& tasks, const TrainRecipe& r,
                        std::uint64_t key, const std::vector<std::uint64_t>& head_keys) {
  const std::size_t T = tasks.size();
  Net net(start.l0.w.rows(), T);
  net.load_body(start);
  for (std::size_t t = 0; t < T; ++t) net.heads[t].reset_parameters(head_keys[t]);
  nn::AdamOptions ao;
  ao.lr = r.lr;
  std::vector<nn::Parameter<float>*> bp;
  for (auto* l : {&net.l0, &net.l1})
    for (auto* p : l->parameters()) bp.push_back(p);
  nn::Adam<float> body_adam(bp, ao);
  std::vector<nn::Adam<float>> head_adam;
  for (auto& h : net.heads) head_adam.emplace_back(h.parameters(), ao);

  std::vector<std::vector<std::int64_t>> orders(T);
  std::vector<std::int64_t> pos(T, 0);
  std::vector<int> epoch(T, 0);
  std::int64_t steps_per_task = 0;
  for (const TaskData* d : tasks)
    steps_per_task = std::max(steps_per_task, (d->size() + r.batch - 1) / r.batch * r.epochs);
  for (std::size_t t = 0; t < T; ++t) orders[t] = shuffled(tasks[t]->size(), twin::random_key(key, "order", t), 0);
  Matrix xb, z0, a0, z1, a1, logits, dl, da, dz;
  std::vector<std::int64_t> yb;
  for (std::int64_t k = 0; k < steps_per_task * static_cast<std::int64_t>(T); ++k) {
    const std::size_t t = static_cast<std::size_t>(k % static_cast<std::int64_t>(T));
    const TaskData& d = *tasks[t];
    if (pos[t] >= d.size()) {
      pos[t] = 0;
      orders[t] = shuffled(d.size(), twin::random_key(key, "order", t), ++epoch[t]);
    }
    const std::int64_t B = std::min(r.batch, d.size() - pos[t]);
    if (B < 2) {
      pos[t] = d.size();
      continue;
    }
    gather_rows(d.x, orders[t], pos[t], B, xb);
    yb.resize(static_cast<std::size_t>(B));
    for (std::int64_t i = 0; i < B; ++i)
      yb[static_cast<std::size_t>(i)] = d.y[static_cast<std::size_t>(orders[t][static_cast<std::size_t>(pos[t] + i)])];
    pos[t] += B;
    net.l0.forward(xb, z0);
    net.act.forward(z0, a0);
    net.l1.forward(a0, z1);
    net.act.forward(z1, a1);
    net.heads[t].forward(a1, logits);
    nn::softmax_cross_entropy<float>(logits, yb, &dl);
    net.heads[t].backward(a1, dl, &da);
    net.act.backward(z1, da, dz);
    net.l1.backward(a0, dz, &da);
    net.act.backward(z0, da, dz);
    net.l0.backward(xb, dz, nullptr);
    body_adam.step();
    head_adam[t].step();
  }
  Trained out{net.body(), {}};
  for (std::size_t t = 0; t < T; ++t) out.heads.push_back(net.head(t));
  return out;
}

// A head fit on a frozen body (the unseen-task protocol of the paper's vision
// setting, where heads are aligned to the pretrained model): the body's
// embeddings of the task's training items are computed once, then only a
// Linear(H, 10) trains, with the recipe's epochs, batch and learning rate.
inline Layer fit_head(const Body& frozen, const TaskData& d, const TrainRecipe& r, std::uint64_t key) {
  const Matrix h = embed(frozen, d.x);
  nn::Linear<float> head(h.cols(), kClasses);
  head.reset_parameters(twin::random_key(key, "probe.init", 0));
  nn::AdamOptions ao;
  ao.lr = r.lr;
  nn::Adam<float> adam(head.parameters(), ao);
  Matrix hb, logits, dl;
  std::vector<std::int64_t> yb;
  for (int e = 0; e < r.epochs; ++e) {
    const auto order = shuffled(d.size(), twin::random_key(key, "probe.order", 0), e);
    for (std::int64_t b0 = 0; b0 + 1 < d.size(); b0 += r.batch) {
      const std::int64_t B = std::min(r.batch, d.size() - b0);
      gather_rows(h, order, b0, B, hb);
      yb.resize(static_cast<std::size_t>(B));
      for (std::int64_t i = 0; i < B; ++i)
        yb[static_cast<std::size_t>(i)] = d.y[static_cast<std::size_t>(order[static_cast<std::size_t>(b0 + i)])];
      head.forward(hb, logits);
      nn::softmax_cross_entropy<float>(logits, yb, &dl);
      head.backward(hb, dl, nullptr);
      adam.step();
    }
  }
  return {head.weight.value, head.bias.value};
}

}  // namespace paper
