// What every table and figure of paper_tables works from: the run's Config,
// the task data, the experts (the reference of every normalized score), the
// shared models several tables reuse, and the timers of the expensive steps.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/fashion_mnist.hpp"
#include "paper/mlp.hpp"
#include "paper/options.hpp"
#include "paper/report.hpp"
#include "paper/tasks.hpp"
#include "paper/twin_eval.hpp"
#include "twin/twin.hpp"

namespace paper {

using json = nlohmann::json;

// Progress goes to stderr, flushed, so that stdout carries only the tables.
inline void progress(const char* fmt_, auto... args) {
  std::fprintf(stderr, fmt_, args...);
  std::fflush(stderr);
}

inline std::string hex(std::uint64_t v) {
  char b[20];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(v));
  return b;
}

// Held-out tasks get keys of their own, so adding one never reseeds a merged task.
inline std::uint64_t task_key(std::size_t k, bool held) { return static_cast<std::uint64_t>(held ? 100 + k : k); }
inline View task_view(std::size_t k, bool held) { return held ? kHeldOutTasks[k].view : kMainTasks[k].view; }

// Everything one merged (static) body scores on a list of tasks.
struct Eval {
  const std::vector<TaskData>* test;
  const std::vector<Layer>* heads;
  const std::vector<double>* expert_acc;
  const std::vector<std::string>* names;

  MethodRow static_row(const std::string& name, const Body& body, double bytes) const {
    MethodRow r{name, {}, {}, bytes, {}};
    for (std::size_t t = 0; t < test->size(); ++t) {
      const double a = head_accuracy(embed(body, (*test)[t].x), (*heads)[t], (*test)[t].y);
      r.accuracy.push_back(a);
      r.normalized.push_back(100.0 * a / (*expert_acc)[t]);
    }
    return r;
  }
  // Per-input Twin-Merging: router weights, fused body per row, own head.
  MethodRow twin_row(const std::string& name, const twin::DynamicFuser& f, const twin::Router& router,
                     const Body& shared, double bytes) const {
    const PerInputBody pib(f);
    MethodRow r{name, {}, {}, bytes, {}};
    for (std::size_t t = 0; t < test->size(); ++t) {
      const std::vector<float> w = route(router, shared, (*test)[t].x);
      const double a = head_accuracy(pib.hidden((*test)[t].x, w), (*heads)[t], (*test)[t].y);
      r.accuracy.push_back(a);
      r.normalized.push_back(100.0 * a / (*expert_acc)[t]);
    }
    return r;
  }
};

inline twin::MergeSettings settings(const std::string& method, std::optional<double> lambda,
                                    std::optional<double> density, std::uint64_t seed) {
  twin::MergeSettings s;
  s.method = method;
  s.scaling = lambda;
  s.density = density;
  s.seed = seed;
  return s;
}

inline std::string method_label(const twin::MergeSettings& s) {
  std::string l = s.method == "average"           ? "Weight Average"
                  : s.method == "task_arithmetic" ? "Task Arithmetic"
                  : s.method == "ties"            ? "TIES"
                  : s.method == "dare_linear"     ? "DARE (linear)"
                  : s.method == "dare_ties"       ? "DARE (TIES)"
                                                  : "Breadcrumbs";
  if (s.scaling) {
    std::ostringstream v;  // shortest form: 0.15, 0.2, 1
    v << *s.scaling;
    l += " λ=" + v.str();
  }
  return l;
}

struct TaskSets {
  TaskData train, val, test;
};

// A test input of the mixed stream: (task, row of that task's test split).
using StreamItem = std::pair<std::size_t, std::int64_t>;

// Seconds of the expensive steps, for the report only: no result depends on them.
struct Timers {
  Clock::time_point start;
  double pretrain = 0, finetune = 0, router = 0, build_svd = 0;
};

// The merged models that more than one table scores or builds on.
struct SharedModels {
  twin::StateDict base;  // the pretrained body with a zero head: the origin of every task vector
  twin::MergeOptions merge_options;
  twin::TwinBuildOptions build_options;
  RouterSettings router_settings;
  std::vector<const TaskData*> val;  // the router's training items, one set per task
  json lambda_search = json::object();
  std::vector<twin::MergeSettings> mergers;  // Weight Average, Task Arithmetic, TIES, DARE ×2, Breadcrumbs
  std::vector<Body> static_bodies;           // one per merger
  std::optional<twin::AnyMerger> ta_merger;  // Task Arithmetic with its tuned λ: Twin-Merging's shared model
  twin::TwinModel twin_svd, twin_sparse;
  Body shared_ta;
  twin::Router router;
  double router_heldout = 0;  // accuracy on the router's own held-out split
  double router_storage = 0;  // bytes, added to every Twin-Merging row's storage
  // Fusers point into twin_svd / twin_sparse, hence in place here.
  std::optional<twin::DynamicFuser> fuser_svd, fuser_sparse;
};

// Filled step by step (data, checkpoints, experts, shared models) and then
// read by the tables; it is never moved, since fusers and evaluators point
// into it.
struct Context {
  Context(Config c, Clock::time_point start) : cfg(std::move(c)), T(cfg.tasks.size()) {
    time.start = start;
    for (std::size_t t : cfg.tasks) names.push_back(kMainTasks[t].name);
    for (const auto& h : kHeldOutTasks) held_names.push_back(h.name);
  }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  Config cfg;
  std::size_t T;  // merged tasks
  std::vector<std::string> names, held_names;

  // data
  examples::ImageSet train_images, test_images;
  std::int64_t pool = 0;       // training images [0, pool) train; the tail is validation
  std::size_t test_items = 0;  // per task
  std::vector<TaskSets> sets, held_sets;
  std::vector<TaskData> test_sets;  // sets[t].test, as Eval takes them
  std::vector<StreamItem> stream;   // test inputs of all tasks, shuffled together

  // checkpoints
  Body pre;
  std::vector<twin::StateDict> experts, held_experts;
  Body mtl_body;
  std::vector<Layer> mtl_heads;
  bool all_cached = false;

  // the experts, the reference of every normalized score
  std::vector<Layer> heads;
  std::vector<Body> expert_bodies;
  std::vector<double> expert_acc, expert_val_acc;
  double head_bytes = 0, body_bytes = 0, experts_bytes = 0, merged_bytes = 0;

  SharedModels models;
  Timers time;

  Eval eval() const { return {&test_sets, &heads, &expert_acc, &names}; }
  double seconds() const { return seconds_since(time.start); }
};

}  // namespace paper
