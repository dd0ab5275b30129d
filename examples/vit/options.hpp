// Command line of paper_vit: the run's sizes (set by --quick / --smoke) and
// where data, checkpoints and results live. Everything that changes a number
// of the tables is in Config, so one Config is one run.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/args.hpp"
#include "common/fashion_mnist.hpp"
#include "common/paths.hpp"
#include "paper/tasks.hpp"
#include "paper/twin_eval.hpp"
#include "twin/error.hpp"
#include "twin/parallel.hpp"
#include "vit/model.hpp"
#include "vit/train.hpp"

namespace vit {

namespace fs = std::filesystem;

struct Config {
  std::uint64_t seed = 0;
  std::string mode = "default";
  fs::path out = "results_vit", data = examples::default_fashion_mnist_dir(), cache;
  int threads = 0;
  Shape shape;
  std::int64_t rank = 8;  // SVD rank of the exclusive knowledge (a quarter of the width)
  // sizes (set by the mode)
  std::int64_t pretrain_images = 30000, train_per_task = 6000, router_per_task = 500, test_per_task = 1000,
               timing_inputs = 200;
  Recipe pretrain{2, 128, 1e-3}, recipe{3, 128, 1e-3}, probe{20, 128, 1e-2};
  paper::RouterSettings router{20, 4, 0, 0, 128};
  double sparse_density = 0.1;
  std::vector<double> lambdas{0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0};
};

inline void set_mode(Config& c, const std::string& m) {
  c.mode = m;
  if (m == "quick") {
    c.pretrain_images = 12000, c.train_per_task = 3000, c.router_per_task = 300, c.test_per_task = 400;
    c.timing_inputs = 100;
    c.recipe.epochs = 2;
    c.router = {12, 3, 0, 0, 128};
    c.lambdas = {0.3, 0.5, 1.0};
  } else if (m == "smoke") {
    c.shape = {32, 4, 1, 64};
    c.rank = 4;
    c.pretrain_images = 1000, c.train_per_task = 300, c.router_per_task = 60, c.test_per_task = 40;
    c.timing_inputs = 16;
    c.pretrain.epochs = 1, c.recipe.epochs = 1, c.probe.epochs = 3;
    c.router = {4, 2, 0, 0, 64};
    c.lambdas = {0.3, 1.0};
  }
}

inline void print_help() {
  std::printf(
      "usage: paper_vit [--quick|--smoke] [--seed S] [--rank R] [--out DIR] [--data DIR] [--cache DIR]\n"
      "                 [--threads N]\n"
      "Twin-Merging's tables (2, 4, 5, 7) on a small vision transformer trained, merged and fused\n"
      "inside libtorch: 8 experts fine-tuned on Fashion-MNIST views (those of paper_tables).\n"
      "  --quick        smaller data (a few minutes); --smoke: the smallest, for the ctest smoke test\n"
      "  --seed S       seed of data sampling, initialization, training order, router (default 0)\n"
      "  --rank R       SVD rank of Twin-Merging's exclusive knowledge (default 8)\n"
      "  --out DIR      where tables.md and summary.json go (default ./results_vit)\n"
      "  --data DIR     Fashion-MNIST directory (default /usr/share/datasets/fashion-mnist)\n"
      "  --cache DIR    checkpoint cache (default: paper_vit_cache next to this program)\n"
      "  --threads N    threads of libtorch and of twin (default: all cores)\n");
}

// The run's Config, or nothing after --help.
inline std::optional<Config> parse_options(int argc, char** argv) {
  Config cfg;
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
    if (a == "--help" || a == "-h") {
      print_help();
      return std::nullopt;
    } else {
      throw twin::argument_error("unknown option " + a + " (see --help)");
    }
  }
  // libtorch counts physical cores by default; both libraries get the same count.
  if (cfg.threads > 0) twin::set_num_threads(cfg.threads);
  torch::set_num_threads(twin::num_threads());
  if (cfg.cache.empty()) cfg.cache = examples::beside_program("paper_vit_cache");
  return cfg;
}

}  // namespace vit
