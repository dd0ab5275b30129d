// Steps before any table of paper_tables: the task data, the pretrained body,
// experts and MTL model (trained once, then read from the safetensors cache),
// the experts' own scores, and the merged models that several tables share.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "common/fashion_mnist.hpp"
#include "paper/context.hpp"
#include "paper/mlp.hpp"
#include "paper/tasks.hpp"
#include "paper/twin_eval.hpp"
#include "twin/io/safetensors.hpp"
#include "twin/twin.hpp"

namespace paper {

inline void prepare_data(Context& cx) {
  const Config& cfg = cx.cfg;
  fs::create_directories(cfg.cache);
  fs::create_directories(cfg.out);
  progress("paper_tables: mode %s, seed %llu, %zu tasks, rank %lld, cache %s\n", cfg.mode.c_str(),
           static_cast<unsigned long long>(cfg.seed), cx.T, static_cast<long long>(cfg.rank), cfg.cache.c_str());
  cx.train_images = examples::load_fashion_mnist(cfg.data, "train");
  cx.test_images = examples::load_fashion_mnist(cfg.data, "t10k");
  const std::int64_t n_train = static_cast<std::int64_t>(cx.train_images.size());
  const std::int64_t n_val = std::min<std::int64_t>(5000, n_train / 10);  // validation: the tail
  cx.pool = n_train - n_val;
  std::vector<std::int64_t> test_idx(
      static_cast<std::size_t>(std::min<std::int64_t>(cfg.test_per_task, cx.test_images.size())));
  std::iota(test_idx.begin(), test_idx.end(), std::int64_t{0});
  cx.test_items = test_idx.size();
  auto make_sets = [&](std::size_t k, bool held) {
    const View v = task_view(k, held);
    const std::uint64_t id = task_key(k, held);
    TaskSets s;
    s.train = make_task_data(
        cx.train_images, sample_indices(0, cx.pool, cfg.train_per_task, twin::random_key(cfg.seed, "train", id)), v);
    s.val = make_task_data(cx.train_images,
                           sample_indices(cx.pool, n_train, cfg.router_per_task, twin::random_key(cfg.seed, "val", id)),
                           v);
    s.test = make_task_data(cx.test_images, test_idx, v);
    return s;
  };
  for (std::size_t t : cfg.tasks) cx.sets.push_back(make_sets(t, false));
  for (std::size_t h = 0; h < kHeldOutTasks.size(); ++h) cx.held_sets.push_back(make_sets(h, true));
  for (auto& s : cx.sets) cx.test_sets.push_back(s.test);
  // Group-wise fusion and the cost table see the tasks mixed, as a served
  // model would.
  for (std::size_t t = 0; t < cx.T; ++t)
    for (std::int64_t i = 0; i < cx.test_sets[t].size(); ++i) cx.stream.emplace_back(t, i);
  {
    const auto order =
        shuffled(static_cast<std::int64_t>(cx.stream.size()), twin::random_key(cfg.seed, "stream", 0), 0);
    std::vector<StreamItem> s2;
    for (auto o : order) s2.push_back(cx.stream[static_cast<std::size_t>(o)]);
    cx.stream.swap(s2);
  }
  progress(
      "  data: %lld training images per task, %lld validation (router) items per task, %zu test items per task [%.1fs]\n",
      static_cast<long long>(cfg.train_per_task), static_cast<long long>(cfg.router_per_task), cx.test_items,
      cx.seconds());
}

// The cache key holds every size the checkpoint depends on, so a changed
// mode or seed never reads a stale checkpoint.
inline std::string pretrain_key(const Config& cfg) {
  return std::to_string(cfg.hidden) + "/" + std::to_string(cfg.pretrain_images) + "/" +
         std::to_string(cfg.pretrain_epochs) + "/" + std::to_string(cfg.seed);
}

inline void prepare_checkpoints(Context& cx) {
  const Config& cfg = cx.cfg;
  // ---- pretraining -------------------------------------------------------------------
  const std::string size_key = pretrain_key(cfg);
  const fs::path pre_path =
      cfg.cache / ("pretrained-" + hex(twin::random_key(cfg.seed, "pre:" + size_key, 0)) + ".safetensors");
  const bool pre_cached = fs::exists(pre_path);
  if (pre_cached) {
    cx.pre = body_of(twin::load_safetensors(pre_path).tensors);
  } else {
    const auto t0 = Clock::now();
    // Task-agnostic data: training-pool images in a mix of the 8 merged views.
    const auto idx = sample_indices(0, cx.pool, cfg.pretrain_images, twin::random_key(cfg.seed, "pretrain", 0));
    Matrix x(static_cast<Eigen::Index>(idx.size()), kPixels);
    for (std::size_t i = 0; i < idx.size(); ++i)
      render(cx.train_images.pixels.data() + static_cast<std::size_t>(idx[i]) * kPixels,
             kMainTasks[i % kMainTasks.size()].view, x.data() + static_cast<Eigen::Index>(i) * kPixels);
    TrainRecipe r = cfg.recipe;
    r.epochs = cfg.pretrain_epochs;
    cx.pre = pretrain_dae(x, cfg.hidden, r, cfg.seed, [&](int e, double loss) {
      progress("  pretrain (denoising autoencoder) epoch %d: reconstruction MSE %.4f [%.1fs]\n", e, loss, cx.seconds());
    });
    Layer nohead{Matrix::Zero(kClasses, cfg.hidden), Matrix::Zero(1, kClasses)};
    twin::StateDict sd = to_state(cx.pre, nohead);
    sd.erase("head.weight"), sd.erase("head.bias");
    twin::save_safetensors(pre_path, sd, {{"what", "pretrained body (denoising autoencoder)"}, {"key", size_key}});
    cx.time.pretrain = seconds_since(t0);
  }

  // ---- experts -----------------------------------------------------------------------
  const std::string ft_key = size_key + "/" + std::to_string(cfg.train_per_task) + "/" +
                             std::to_string(cfg.recipe.epochs) + "/" + std::to_string(cfg.recipe.batch) + "/" +
                             fmt(cfg.recipe.lr, 6);
  int trained = 0;
  auto expert_for = [&](std::size_t k, bool held, const TaskData& data) {
    const std::string name = held ? kHeldOutTasks[k].name : kMainTasks[k].name;
    const fs::path p =
        cfg.cache /
        ("expert-" + name + "-" + hex(twin::random_key(cfg.seed, "ft:" + ft_key, task_key(k, held))) + ".safetensors");
    if (fs::exists(p)) return twin::load_safetensors(p).tensors;
    const Trained tr = finetune(cx.pre, {&data}, cfg.recipe, twin::random_key(cfg.seed, "expert", task_key(k, held)),
                                {twin::random_key(cfg.seed, "head", task_key(k, held))});
    twin::StateDict sd = to_state(tr.body, tr.heads[0]);
    twin::save_safetensors(p, sd, {{"task", name}, {"key", ft_key}});
    ++trained;
    progress("  expert %-10s fine-tuned [%.1fs]\n", name.c_str(), cx.seconds());
    return sd;
  };
  const auto t_ft0 = Clock::now();
  for (std::size_t i = 0; i < cx.T; ++i) cx.experts.push_back(expert_for(cfg.tasks[i], false, cx.sets[i].train));
  for (std::size_t h = 0; h < kHeldOutTasks.size(); ++h)
    cx.held_experts.push_back(expert_for(h, true, cx.held_sets[h].train));

  // ---- MTL: one body, T heads, trained jointly with the same recipe -------------------
  std::string task_list;
  for (const auto& n : cx.names) task_list += n + ",";
  const fs::path mtl_path =
      cfg.cache / ("mtl-" + hex(twin::random_key(cfg.seed, "mtl:" + ft_key + task_list, 0)) + ".safetensors");
  if (fs::exists(mtl_path)) {
    const auto sd = twin::load_safetensors(mtl_path).tensors;
    cx.mtl_body = body_of(sd);
    for (const auto& n : cx.names) cx.mtl_heads.push_back(get_layer(sd, "head." + n));
  } else {
    std::vector<const TaskData*> d;
    std::vector<std::uint64_t> hk;
    for (std::size_t i = 0; i < cx.T; ++i)
      d.push_back(&cx.sets[i].train), hk.push_back(twin::random_key(cfg.seed, "head", task_key(cfg.tasks[i], false)));
    const Trained tr = finetune(cx.pre, d, cfg.recipe, twin::random_key(cfg.seed, "mtl", 0), hk);
    cx.mtl_body = tr.body, cx.mtl_heads = tr.heads;
    twin::StateDict sd;
    put_layer(sd, "body.0", cx.mtl_body.l0);
    put_layer(sd, "body.1", cx.mtl_body.l1);
    for (std::size_t i = 0; i < cx.T; ++i) put_layer(sd, "head." + cx.names[i], cx.mtl_heads[i]);
    twin::save_safetensors(mtl_path, sd, {{"tasks", task_list}, {"key", ft_key}});
    ++trained;
    progress("  MTL model trained [%.1fs]\n", cx.seconds());
  }
  cx.time.finetune = seconds_since(t_ft0);
  cx.all_cached = pre_cached && trained == 0;
}

// Every normalized score divides by these accuracies; storage is compared
// with the T experts, and a merged model keeps one body and T heads.
inline void evaluate_experts(Context& cx) {
  for (const auto& e : cx.experts) cx.heads.push_back(head_of(e)), cx.expert_bodies.push_back(body_of(e));
  cx.expert_acc.resize(cx.T), cx.expert_val_acc.resize(cx.T);
  for (std::size_t t = 0; t < cx.T; ++t) {
    cx.expert_acc[t] = head_accuracy(embed(cx.expert_bodies[t], cx.test_sets[t].x), cx.heads[t], cx.test_sets[t].y);
    cx.expert_val_acc[t] = head_accuracy(embed(cx.expert_bodies[t], cx.sets[t].val.x), cx.heads[t], cx.sets[t].val.y);
  }
  const std::int64_t h = cx.cfg.hidden;
  cx.head_bytes = static_cast<double>((h + 1) * kClasses * 4);
  cx.body_bytes = static_cast<double>((kPixels * h + h + h * h + h) * 4);
  cx.experts_bytes = static_cast<double>(cx.T) * (cx.body_bytes + cx.head_bytes);
  cx.merged_bytes = cx.body_bytes + static_cast<double>(cx.T) * cx.head_bytes;
}

// The static merges (λ chosen on the validation items) and Twin-Merging on
// Task Arithmetic with its router: Table 2 scores them, and Tables 4, 5, 7
// and the figures start from them.
inline void build_shared_models(Context& cx) {
  const Config& cfg = cx.cfg;
  SharedModels& m = cx.models;
  m.base = to_state(cx.pre, Layer{Matrix::Zero(kClasses, cfg.hidden), Matrix::Zero(1, kClasses)});
  const std::vector<std::string> exclude{kHeadPattern};
  m.merge_options.exclude = exclude;
  auto merged_body = [&](const twin::MergeSettings& s) {
    return body_of(twin::merge_state(twin::AnyMerger::from_settings(s), m.base,
                                     std::span<const twin::StateDict>(cx.experts), m.merge_options));
  };
  auto val_score = [&](const Body& b) {
    double s = 0;
    for (std::size_t t = 0; t < cx.T; ++t)
      s += head_accuracy(embed(b, cx.sets[t].val.x), cx.heads[t], cx.sets[t].val.y) / cx.expert_val_acc[t];
    return 100.0 * s / static_cast<double>(cx.T);
  };
  auto tuned = [&](const std::string& method, std::optional<double> density) {
    twin::MergeSettings best;
    double best_score = -1;
    for (double l : cfg.lambdas) {
      const twin::MergeSettings s = settings(method, l, density, cfg.seed);
      const double sc = val_score(merged_body(s));
      m.lambda_search[method][fmt(l, 2)] = sc;
      if (sc > best_score) best_score = sc, best = s;
    }
    return best;
  };
  const twin::MergeSettings s_avg = settings("average", {}, {}, cfg.seed);
  const twin::MergeSettings s_ta = tuned("task_arithmetic", {});
  const twin::MergeSettings s_ties = tuned("ties", 0.2);
  const twin::MergeSettings s_dare = tuned("dare_linear", 0.5);
  const twin::MergeSettings s_dare_ties = tuned("dare_ties", 0.5);
  const twin::MergeSettings s_bc = tuned("breadcrumbs", 0.9);
  m.mergers = {s_avg, s_ta, s_ties, s_dare, s_dare_ties, s_bc};
  for (const auto& s : m.mergers) m.static_bodies.push_back(merged_body(s));

  m.build_options.task_names = cx.names;
  m.build_options.exclude = exclude;
  m.ta_merger.emplace(twin::AnyMerger::from_settings(s_ta));
  const auto t_build0 = Clock::now();
  m.twin_svd = twin::TwinModel::build(m.base, std::span<const twin::StateDict>(cx.experts), *m.ta_merger,
                                      twin::SvdCompressor::with_rank(cfg.rank), m.build_options);
  cx.time.build_svd = seconds_since(t_build0);
  twin::MagnitudeSparsifier sparsifier;
  sparsifier.density = cfg.sparse_density;
  m.twin_sparse = twin::TwinModel::build(m.base, std::span<const twin::StateDict>(cx.experts), *m.ta_merger, sparsifier,
                                         m.build_options);
  m.shared_ta = body_of(m.twin_svd.shared());
  for (auto& s : cx.sets) m.val.push_back(&s.val);
  m.router_settings = cfg.router;
  m.router_settings.seed = cfg.seed;
  const auto t_router0 = Clock::now();
  m.router = train_router(m.shared_ta, m.val, m.router_settings, &m.router_heldout);
  cx.time.router = seconds_since(t_router0);
  m.router_storage = static_cast<double>(router_bytes(m.router));
  m.fuser_svd.emplace(m.twin_svd);
  m.fuser_sparse.emplace(m.twin_sparse);
}

}  // namespace paper
