// Steps of paper_vit before any table: the task data (paper_tables' views),
// the pretrained body, the experts (8 merged, 2 held out) and the MTL model,
// trained in libtorch once and cached as safetensors. Each is then held as an
// engine holds it, in torch::nn modules, and twin sees a body's parameters as
// a state dict of views of the module's tensors (no copy).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <numeric>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/fashion_mnist.hpp"
#include "common/torch_adapter.hpp"
#include "paper/context.hpp"
#include "paper/tasks.hpp"
#include "twin/io/safetensors.hpp"
#include "twin/twin.hpp"
#include "vit/model.hpp"
#include "vit/options.hpp"
#include "vit/train.hpp"

namespace vit {

using paper::progress;
using paper::TaskSets;

// An expert: its body's parameters (views of a torch module's tensors,
// which they keep alive) and its head.
struct Expert {
  twin::StateDict body;
  torch::nn::Linear head{nullptr};
};

struct Context {
  explicit Context(Config c) : cfg(std::move(c)), start(paper::Clock::now()) {
    for (const auto& t : paper::kMainTasks) names.push_back(t.name);
    for (const auto& t : paper::kHeldOutTasks) held_names.push_back(t.name);
  }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  Config cfg;
  paper::Clock::time_point start;
  std::vector<std::string> names, held_names;
  examples::ImageSet train_images, test_images;
  std::int64_t pool = 0;  // training images [0, pool) train; the tail is validation
  std::vector<TaskSets> sets, held_sets;

  twin::StateDict pre;  // the pretrained body (views, as Expert::body)
  std::vector<Expert> experts, held_experts;
  twin::StateDict mtl;                       // the MTL model's body (views)
  std::vector<torch::nn::Linear> mtl_heads;  // its head per merged task
  bool all_cached = true;
  double pretrain_s = 0, finetune_s = 0;

  std::size_t T() const { return names.size(); }
  double seconds() const { return paper::seconds_since(start); }
};

inline void prepare_data(Context& cx) {
  const Config& cfg = cx.cfg;
  fs::create_directories(cfg.cache);
  fs::create_directories(cfg.out);
  progress("paper_vit: mode %s, seed %llu, width %lld, depth %lld, rank %lld, %d threads, cache %s\n", cfg.mode.c_str(),
           static_cast<unsigned long long>(cfg.seed), static_cast<long long>(cfg.shape.width),
           static_cast<long long>(cfg.shape.depth), static_cast<long long>(cfg.rank), torch::get_num_threads(),
           cfg.cache.c_str());
  cx.train_images = examples::load_fashion_mnist(cfg.data, "train");
  cx.test_images = examples::load_fashion_mnist(cfg.data, "t10k");
  const auto n_train = static_cast<std::int64_t>(cx.train_images.size());
  const std::int64_t n_val = std::min<std::int64_t>(5000, n_train / 10);
  cx.pool = n_train - n_val;
  std::vector<std::int64_t> test_idx(
      static_cast<std::size_t>(std::min<std::int64_t>(cfg.test_per_task, cx.test_images.size())));
  std::iota(test_idx.begin(), test_idx.end(), std::int64_t{0});
  auto make_sets = [&](std::size_t k, bool held) {
    const paper::View v = paper::task_view(k, held);
    const std::uint64_t id = paper::task_key(k, held);
    TaskSets s;
    s.train = paper::make_task_data(
        cx.train_images,
        paper::sample_indices(0, cx.pool, cfg.train_per_task, twin::random_key(cfg.seed, "vit.train", id)), v);
    s.val = paper::make_task_data(
        cx.train_images,
        paper::sample_indices(cx.pool, n_train, cfg.router_per_task, twin::random_key(cfg.seed, "vit.val", id)), v);
    s.test = paper::make_task_data(cx.test_images, test_idx, v);
    return s;
  };
  for (std::size_t t = 0; t < paper::kMainTasks.size(); ++t) cx.sets.push_back(make_sets(t, false));
  for (std::size_t h = 0; h < paper::kHeldOutTasks.size(); ++h) cx.held_sets.push_back(make_sets(h, true));
  progress("  data: %lld training, %lld validation (router) and %zu test items per task [%.1fs]\n",
           static_cast<long long>(cfg.train_per_task), static_cast<long long>(cfg.router_per_task), test_idx.size(),
           cx.seconds());
}

// Every setting a mode or option can change is in the cache key, so a changed
// mode or seed never reads a stale checkpoint. (The MTL key says "mtl2" since
// its heads got optimizers of their own.)
inline std::string shape_key(const Config& c) {
  return std::to_string(c.shape.width) + "x" + std::to_string(c.shape.depth) + "x" + std::to_string(c.shape.heads) +
         "x" + std::to_string(c.shape.mlp) + "/" + std::to_string(c.pretrain_images) + "/" +
         std::to_string(c.pretrain.epochs) + "/" + paper::fmt(c.pretrain.lr, 6) + "/" + std::to_string(c.seed);
}

inline twin::StateDict with_heads(const Body& body, const std::vector<torch::nn::Linear>& heads,
                                  const std::vector<std::string>& head_names) {
  twin::StateDict sd = examples::borrow_parameters(*body);
  for (std::size_t i = 0; i < heads.size(); ++i)
    for (auto& [n, t] : examples::borrow_parameters(*heads[i])) sd.insert(head_names[i] + "." + n, std::move(t));
  return sd;
}

// A cached checkpoint loaded into torch modules: the body, returned as views
// of its parameters, and one head per name (tensors <name>.weight / .bias).
inline twin::StateDict load_model(const Config& cfg, const fs::path& path, const std::vector<std::string>& head_names,
                                  std::vector<torch::nn::Linear>* heads) {
  const twin::StateDict file = twin::load_safetensors(path).tensors;
  Body body(cfg.shape);
  examples::load_parameters(*body, file);
  for (const auto& h : head_names) {
    torch::nn::Linear l(cfg.shape.width, kClasses);
    examples::load_parameters(*l, file, h + ".");
    heads->push_back(l);
  }
  return examples::borrow_parameters(*body);
}

inline void prepare_checkpoints(Context& cx) {
  const Config& cfg = cx.cfg;
  const std::string pkey = shape_key(cfg);
  const fs::path pre_path =
      cfg.cache / ("vit-pretrained-" + paper::hex(twin::random_key(cfg.seed, "vit.pre:" + pkey, 0)) + ".safetensors");
  if (!fs::exists(pre_path)) {
    cx.all_cached = false;
    const auto t0 = paper::Clock::now();
    // Task-agnostic data: training-pool images in a mix of the 8 merged views.
    const auto idx = paper::sample_indices(0, cx.pool, cfg.pretrain_images, twin::random_key(cfg.seed, "vit.pre", 0));
    paper::Matrix x(static_cast<Eigen::Index>(idx.size()), paper::kPixels);
    for (std::size_t i = 0; i < idx.size(); ++i)
      paper::render(cx.train_images.pixels.data() + static_cast<std::size_t>(idx[i]) * paper::kPixels,
                    paper::kMainTasks[i % paper::kMainTasks.size()].view,
                    x.data() + static_cast<Eigen::Index>(i) * paper::kPixels);
    seed_torch(twin::random_key(cfg.seed, "vit.init", 0));
    Body body(cfg.shape);
    pretrain(body, torch::from_blob(x.data(), {x.rows(), x.cols()}, torch::kFloat), cfg.pretrain,
             twin::random_key(cfg.seed, "vit.pretrain", 0), [&](int e, double loss) {
               progress("  pretrain (masked tiles) epoch %d: reconstruction MSE %.4f [%.1fs]\n", e, loss, cx.seconds());
             });
    twin::save_safetensors(pre_path, examples::borrow_parameters(*body),
                           {{"what", "pretrained ViT body (masked-tile reconstruction)"}, {"key", pkey}});
    cx.pretrain_s = paper::seconds_since(t0);
  }
  cx.pre = load_model(cfg, pre_path, {}, nullptr);

  const std::string fkey = pkey + "/" + std::to_string(cfg.train_per_task) + "/" + std::to_string(cfg.recipe.epochs) +
                           "/" + std::to_string(cfg.recipe.batch) + "/" + paper::fmt(cfg.recipe.lr, 6);
  const auto t_ft0 = paper::Clock::now();
  // Body and heads fine-tuned from the pretrained body on `tasks`; cached.
  auto trained = [&](const fs::path& path, const std::vector<const paper::TaskData*>& tasks,
                     const std::vector<std::string>& head_names, std::uint64_t key, const std::string& label) {
    if (!fs::exists(path)) {
      cx.all_cached = false;
      seed_torch(twin::random_key(key, "heads", 0));
      Body body(cfg.shape);
      examples::load_parameters(*body, cx.pre);
      std::vector<torch::nn::Linear> heads;
      for (std::size_t i = 0; i < tasks.size(); ++i) heads.emplace_back(cfg.shape.width, kClasses);
      finetune(body, heads, tasks, cfg.recipe, key);
      twin::save_safetensors(path, with_heads(body, heads, head_names), {{"what", label}, {"key", fkey}});
      progress("  %s trained [%.1fs]\n", label.c_str(), cx.seconds());
    }
    std::vector<torch::nn::Linear> loaded;
    twin::StateDict body = load_model(cfg, path, head_names, &loaded);
    return std::make_pair(std::move(body), std::move(loaded));
  };
  auto expert = [&](std::size_t k, bool held) {
    const std::string name = held ? paper::kHeldOutTasks[k].name : paper::kMainTasks[k].name;
    const std::uint64_t id = paper::task_key(k, held);
    const fs::path p = cfg.cache / ("vit-expert-" + name + "-" +
                                    paper::hex(twin::random_key(cfg.seed, "vit.ft:" + fkey, id)) + ".safetensors");
    const auto& data = held ? cx.held_sets[k].train : cx.sets[k].train;
    auto [body, heads] = trained(p, {&data}, {"head"}, twin::random_key(cfg.seed, "vit.expert", id), "expert " + name);
    return Expert{std::move(body), heads[0]};
  };
  for (std::size_t t = 0; t < cx.T(); ++t) cx.experts.push_back(expert(t, false));
  for (std::size_t h = 0; h < paper::kHeldOutTasks.size(); ++h) cx.held_experts.push_back(expert(h, true));
  std::vector<const paper::TaskData*> all;
  std::vector<std::string> heads;
  for (std::size_t t = 0; t < cx.T(); ++t) all.push_back(&cx.sets[t].train), heads.push_back("head." + cx.names[t]);
  std::tie(cx.mtl, cx.mtl_heads) =
      trained(cfg.cache / ("vit-mtl-" + paper::hex(twin::random_key(cfg.seed, "vit.mtl2:" + fkey, 0)) + ".safetensors"),
              all, heads, twin::random_key(cfg.seed, "vit.mtl", 0), "MTL model");
  cx.finetune_s = paper::seconds_since(t_ft0);
}

}  // namespace vit
