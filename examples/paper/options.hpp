// Command line of paper_tables: the run's sizes (set by --quick / --smoke),
// the merged tasks, and where data, checkpoints and results live. Everything
// that changes a number of the tables is in Config, so one Config is one run.
#pragma once

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "common/args.hpp"
#include "common/fashion_mnist.hpp"
#include "common/paths.hpp"
#include "paper/mlp.hpp"
#include "paper/tasks.hpp"
#include "paper/twin_eval.hpp"
#include "twin/twin.hpp"

namespace paper {

namespace fs = std::filesystem;

struct Config {
  std::uint64_t seed = 0;
  std::vector<std::size_t> tasks;  // indices into kMainTasks
  std::int64_t rank = 16;
  std::string mode = "default";
  fs::path out = "results", data = examples::default_fashion_mnist_dir(), cache;
  int threads = 0;
  // sizes (set by the mode)
  std::int64_t hidden = 256, pretrain_images = 55000, train_per_task = 10000, router_per_task = 1000,
               test_per_task = 10000, sweep_test_per_task = 2000, group_batch = 512;
  int pretrain_epochs = 2;
  TrainRecipe recipe{3, 128, 1e-3};
  TrainRecipe probe{20, 128, 1e-2};  // heads fit on the frozen pretrained body (Table 5)
  RouterSettings router{20, 4, 0, 256, 256};
  double sparse_density = 0.1;
  std::vector<double> lambdas{0.1, 0.2, 0.3, 0.5, 0.7, 1.0};
  std::vector<std::int64_t> rank_sweep{1, 2, 4, 8, 16, 32, 64};
  std::vector<double> density_sweep{0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0};
  std::vector<std::size_t> count_sweep{2, 4, 6, 8};
  // Exclusive knowledge in fewer bytes (storage.hpp): the budget and residual
  // of the Table 2 rows, and the sweeps of the storage-accuracy figure.
  double budget = 0.02, residual_density = 0.005;
  std::vector<std::int64_t> storage_ranks{1, 2, 4, 8, 16, 32, 64};
  std::vector<double> sign_sweep{0.1, 0.25, 0.5, 1.0};
  std::vector<double> budget_sweep{0.005, 0.01, 0.02, 0.05, 0.1};
  std::int64_t timing_inputs = 256;
};

inline void set_mode(Config& c, const std::string& m) {
  c.mode = m;
  if (m == "quick") {
    c.pretrain_images = 20000, c.pretrain_epochs = 1, c.train_per_task = 4000, c.router_per_task = 500,
    c.test_per_task = 2000, c.sweep_test_per_task = 2000;
    c.recipe.epochs = 2;
    c.router = {12, 3, 0, 256, 256};
    c.lambdas = {0.1, 0.3, 0.5, 1.0};
    c.rank_sweep = {1, 4, 16, 64};
    c.density_sweep = {0.0, 0.05, 0.2, 1.0};
    c.count_sweep = {2, 4, 8};
    c.storage_ranks = {2, 8, 32};
    c.sign_sweep = {0.25, 1.0};
    c.budget_sweep = {0.01, 0.02, 0.05};
    c.timing_inputs = 128;
  } else if (m == "smoke") {
    c.hidden = 128, c.pretrain_images = 6000, c.pretrain_epochs = 1, c.train_per_task = 1500, c.router_per_task = 200,
    c.test_per_task = 200, c.sweep_test_per_task = 200, c.group_batch = 256;
    c.recipe.epochs = 2;
    c.probe.epochs = 5;
    c.router = {8, 2, 0, 128, 256};
    c.lambdas = {0.3, 1.0};
    c.rank_sweep = {2, 16};
    c.density_sweep = {0.0, 0.1, 1.0};
    c.count_sweep = {2, 8};
    c.storage_ranks = {16};
    c.sign_sweep = {1.0};
    c.budget_sweep = {0.02};
    c.timing_inputs = 32;
  }
}

inline void print_help() {
  std::printf(
      "usage: paper_tables [--quick|--smoke] [--seed S] [--tasks LIST|N] [--rank R] [--out DIR]\n"
      "                    [--data DIR] [--cache DIR] [--threads N]\n"
      "Reproduces Twin-Merging's tables (2, 4, 5, 7) and figures (3, 4) on Fashion-MNIST views.\n"
      "  --quick        smaller data and sweeps (< 3 min); --smoke: smallest, for the ctest smoke test\n"
      "  --seed S       seed of data sampling, initialization, training order, router (default 0)\n"
      "  --tasks LIST   comma-separated task names, or a count N (the first N); default all 8:\n");
  for (const auto& t : kMainTasks) std::printf("                   %-10s %s\n", t.name, t.what);
  std::printf("                 held out for Table 5: ");
  for (const auto& t : kHeldOutTasks) std::printf("%s ", t.name);
  std::printf(
      "\n  --rank R       SVD rank of Twin-Merging's exclusive knowledge (default 16)\n"
      "  --out DIR      where tables.md, summary.json and the SVG figures go (default ./results)\n"
      "  --data DIR     Fashion-MNIST directory (default /usr/share/datasets/fashion-mnist)\n"
      "  --cache DIR    checkpoint cache (default: paper_cache next to this program)\n"
      "  --threads N    threads of the parallel loops (default: all cores; results do not depend on it)\n");
}

// --tasks: a count takes the first N views, so that runs with fewer tasks
// stay comparable to the full one.
inline std::vector<std::size_t> parse_tasks(const std::string& arg) {
  std::vector<std::size_t> tasks;
  if (arg.empty()) {
    for (std::size_t t = 0; t < kMainTasks.size(); ++t) tasks.push_back(t);
  } else if (std::all_of(arg.begin(), arg.end(), ::isdigit)) {
    const auto n = std::stoul(arg);
    if (n < 2 || n > kMainTasks.size()) throw twin::argument_error("--tasks N: N must be in 2..8");
    for (std::size_t t = 0; t < n; ++t) tasks.push_back(t);
  } else {
    std::stringstream ss(arg);
    std::string name;
    while (std::getline(ss, name, ',')) {
      auto it = std::find_if(kMainTasks.begin(), kMainTasks.end(), [&](const TaskSpec& s) { return name == s.name; });
      if (it == kMainTasks.end()) throw twin::argument_error("--tasks: unknown task '" + name + "' (see --help)");
      tasks.push_back(static_cast<std::size_t>(it - kMainTasks.begin()));
    }
    if (tasks.size() < 2) throw twin::argument_error("--tasks: give at least 2 tasks");
  }
  return tasks;
}

// The run's Config, or nothing after --help. Sets the thread count right
// away, since it holds for every parallel loop that follows.
inline std::optional<Config> parse_options(int argc, char** argv) {
  Config cfg;
  std::string tasks_arg;
  // The mode sets sizes first; the options after override them in any order.
  if (const std::string m = examples::find_mode(argc, argv, {"--quick", "--smoke"}); !m.empty())
    set_mode(cfg, m.substr(2));
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw twin::argument_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--quick" || a == "--smoke" || examples::parse_run_option(a, next, cfg)) continue;  // modes: above
    if (a == "--tasks") tasks_arg = next();
    else if (a == "--help" || a == "-h") {
      print_help();
      return std::nullopt;
    } else {
      throw twin::argument_error("unknown option " + a + " (see --help)");
    }
  }
  if (cfg.threads > 0) twin::set_num_threads(cfg.threads);
  cfg.tasks = parse_tasks(tasks_arg);
  if (cfg.cache.empty()) cfg.cache = examples::beside_program("paper_cache");
  return cfg;
}

}  // namespace paper
