// Router training, twin (Eigen, C++) against PyTorch on identical data: the
// official architecture on 8 tasks x 1000 synthetic embeddings of width 768,
// same settings on both sides. Prints time per epoch and held-out accuracy
// side by side, and their ratio (PyTorch is the floor measured in this run).
//
//   bench_router [--epochs N] [--batch-size B] [--threads T] [--seed S]
//                [--python /usr/bin/python3] [--script bench_router.py]
//                [--python-env 'VAR=value ...'] [--torch-epochs N]
//                [--data FILE] [--no-torch]
//
// Both sides run with OMP_WAIT_POLICY=passive unless it is set already: on a
// shared 2-core machine, OpenMP workers that spin between parallel regions
// take the cores from the threads doing the work (both libraries use libgomp).
// --torch-epochs shortens the PyTorch run to time a slow build (its
// accuracy is then not comparable).
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "twin/io/safetensors.hpp"
#include "twin/route/router.hpp"
#include "twin/route/router_training.hpp"

namespace {

using Clock = std::chrono::steady_clock;

struct Args {
  int epochs = 30;
  std::int64_t batch_size = 128;
  int threads = 2;
  std::uint64_t seed = 0;
  std::string python = "/usr/bin/python3";
  std::filesystem::path script = std::filesystem::path(__FILE__).parent_path() / "bench_router.py";
  std::filesystem::path data = std::filesystem::temp_directory_path() / "twin_bench_router.safetensors";
  std::string python_env;
  int torch_epochs = 0;  // 0: same as epochs
  bool torch = true;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "error: %s needs a value\n", k.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (k == "--epochs") a.epochs = std::stoi(next());
    else if (k == "--batch-size") a.batch_size = std::stoll(next());
    else if (k == "--threads") a.threads = std::stoi(next());
    else if (k == "--seed") a.seed = std::stoull(next());
    else if (k == "--python") a.python = next();
    else if (k == "--script") a.script = next();
    else if (k == "--data") a.data = next();
    else if (k == "--python-env") a.python_env = next();
    else if (k == "--torch-epochs") a.torch_epochs = std::stoi(next());
    else if (k == "--no-torch") a.torch = false;
    else {
      std::fprintf(stderr, "error: unknown option %s\n", k.c_str());
      std::exit(2);
    }
  }
  return a;
}

// Synthetic "mean-pooled hidden states": a large shared offset, per-feature
// scales, task centers, low-rank shared noise and isotropic noise, tuned so
// that the task is learnable but not trivially (held-out accuracy in the
// 90s), which makes a 1-point accuracy comparison meaningful.
struct Data {
  std::vector<float> x;
  std::vector<std::int64_t> y;
};

Data make_data(std::int64_t T, std::int64_t per_task, std::int64_t d, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  const std::int64_t rank = 32;
  const double sep = 6.0;
  std::vector<double> offset(d), scale(d), centers(T * d), factor(d * rank);
  for (std::int64_t j = 0; j < d; ++j) offset[j] = 3.0 * nd(rng), scale[j] = std::exp(0.5 * nd(rng));
  // Centers ~ N(0, sep² / 2d) per feature: two centers lie about `sep` apart.
  for (double& c : centers) c = sep / std::sqrt(2.0 * static_cast<double>(d)) * nd(rng);
  for (double& f : factor) f = 0.5 * nd(rng);
  Data out;
  out.x.reserve(static_cast<std::size_t>(T * per_task * d));
  std::vector<double> w(rank);
  for (std::int64_t i = 0; i < T * per_task; ++i) {
    const std::int64_t t = i % T;
    out.y.push_back(t);
    for (double& v : w) v = nd(rng);
    for (std::int64_t j = 0; j < d; ++j) {
      double low = 0;
      for (std::int64_t k = 0; k < rank; ++k) low += factor[j * rank + k] * w[k];
      out.x.push_back(static_cast<float>(offset[j] + scale[j] * (centers[t * d + j] + low + nd(rng))));
    }
  }
  return out;
}

twin::Tensor rows_of(const Data& data, const std::vector<std::int64_t>& idx, std::int64_t d) {
  std::vector<float> v;
  v.reserve(idx.size() * static_cast<std::size_t>(d));
  for (auto i : idx) v.insert(v.end(), data.x.begin() + i * d, data.x.begin() + (i + 1) * d);
  return twin::Tensor::from_f32(v, std::vector<std::int64_t>{static_cast<std::int64_t>(idx.size()), d});
}

twin::Tensor labels_of(const Data& data, const std::vector<std::int64_t>& idx) {
  twin::Tensor t(twin::dtype::i64, {static_cast<std::int64_t>(idx.size())});
  auto v = t.values<std::int64_t>();
  for (std::size_t i = 0; i < idx.size(); ++i) v[i] = data.y[static_cast<std::size_t>(idx[i])];
  return t;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// key=value pairs of the python script's RESULT line.
std::map<std::string, std::string> run_torch(const Args& a) {
  std::ostringstream cmd;
  cmd << a.python_env << " '" << a.python << "' '" << a.script.string() << "' --data '" << a.data.string()
      << "' --epochs " << (a.torch_epochs > 0 ? a.torch_epochs : a.epochs) << " --batch-size " << a.batch_size
      << " --threads " << a.threads << " --seed " << a.seed << " 2>&1";
  std::map<std::string, std::string> kv;
  FILE* p = popen(cmd.str().c_str(), "r");
  if (!p) return kv;
  std::array<char, 4096> buf{};
  std::string all;
  while (std::fgets(buf.data(), static_cast<int>(buf.size()), p)) all += buf.data();
  const int rc = pclose(p);
  const auto at = all.find("RESULT ");
  if (rc != 0 || at == std::string::npos) {
    std::fprintf(stderr, "PyTorch run failed (status %d):\n%s\n", rc, all.c_str());
    return kv;
  }
  std::istringstream line(all.substr(at + 7, all.find('\n', at) - at - 7));
  std::string tok;
  while (line >> tok)
    if (auto eq = tok.find('='); eq != std::string::npos) kv[tok.substr(0, eq)] = tok.substr(eq + 1);
  return kv;
}

}  // namespace

int main(int argc, char** argv) {
  if (!std::getenv("OMP_WAIT_POLICY")) {
    // libgomp reads it once at start-up: set it and start again.
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);
  }
  const Args a = parse(argc, argv);
  const std::int64_t T = 8, per_task = 1000, d = 768;

  const Data data = make_data(T, per_task, d, 2024 + a.seed);
  const twin::DataSplit split = twin::stratified_split(data.y, T, 0.1, a.seed);
  twin::StateDict sd;
  sd.insert("train_x", rows_of(data, split.train, d));
  sd.insert("train_y", labels_of(data, split.train));
  sd.insert("heldout_x", rows_of(data, split.heldout, d));
  sd.insert("heldout_y", labels_of(data, split.heldout));
  twin::save_safetensors(a.data, sd, {{"what", "bench_router data: 8 tasks x 1000 embeddings, width 768"}});

  twin::set_num_threads(a.threads);
  const twin::Tensor& xt = sd.at("train_x");
  const twin::Tensor& xh = sd.at("heldout_x");
  const auto yt = sd.at("train_y").values<std::int64_t>();
  const auto yh = sd.at("heldout_y").values<std::int64_t>();

  twin::Router router(twin::RouterConfig{.input_dim = d, .num_tasks = T});
  twin::RouterTrainOptions o;
  o.max_epochs = a.epochs;
  o.patience = 0;  // fixed epoch count: both sides do the same work
  o.batch_size = a.batch_size;
  o.seed = a.seed;
  std::vector<double> epoch_s;
  auto last = Clock::now();
  o.progress = [&](int, double, double) {
    const auto now = Clock::now();
    epoch_s.push_back(std::chrono::duration<double>(now - last).count());
    last = now;
  };
  last = Clock::now();
  const twin::RouterTrainReport rep = twin::train_router(router, xt, yt, xh, yh, o);

  // Forward + backward GEMM work of one epoch (training rows) plus the
  // held-out forward pass: 2 flops per multiply-add.
  const double h = 2.0 * d, n = static_cast<double>(xt.dim(0)), nh = static_cast<double>(xh.dim(0));
  const double fwd = 2.0 * (d * h + h * h + h * T);
  const double bwd = 2.0 * (d * h + 2 * h * h + 2 * h * T);  // no input gradient for layer 0
  const double gflop_epoch = (n * (fwd + bwd) + nh * fwd) * 1e-9;

  const double cpp_med = median(epoch_s);
  std::printf(
      "router training: 8 tasks x 1000 embeddings, d = %lld, hidden = %lld, %lld train / %lld held-out,\n"
      "batch %lld, Adam lr 5e-4, dropout 0.5, %d epochs, %d threads, OMP_WAIT_POLICY=%s\n"
      "(GEMM work %.1f GFLOP per epoch)\n\n",
      static_cast<long long>(d), static_cast<long long>(2 * d), static_cast<long long>(xt.dim(0)),
      static_cast<long long>(xh.dim(0)), static_cast<long long>(a.batch_size), a.epochs, a.threads,
      std::getenv("OMP_WAIT_POLICY"), gflop_epoch);
  std::printf("%-10s %14s %12s %16s %10s %14s\n", "", "s/epoch (med)", "GFLOP/s", "best held-out", "at epoch",
              "last held-out");
  std::printf("%-10s %14.4f %12.1f %15.2f%% %10d %13.2f%%\n", "twin", cpp_med, gflop_epoch / cpp_med,
              100 * rep.best_heldout_accuracy, rep.best_epoch, 100 * rep.heldout_accuracy.back());
  if (!a.torch) return 0;
  const auto kv = run_torch(a);
  if (kv.empty()) return 1;
  const double py_med = std::stod(kv.at("median_epoch_s"));
  const double py_best = std::stod(kv.at("best_acc"));
  std::printf("%-10s %14.4f %12.1f %15.2f%% %10s %13.2f%%\n", ("torch " + kv.at("torch")).c_str(), py_med,
              gflop_epoch / py_med, 100 * py_best, kv.at("best_epoch").c_str(), 100 * std::stod(kv.at("last_acc")));
  std::printf("\ntime per epoch, twin / torch: %.3f (< 1: twin faster)\n", cpp_med / py_med);
  if (a.torch_epochs > 0 && a.torch_epochs != a.epochs)
    std::printf("best held-out accuracy: not comparable (torch ran %d epochs)\n", a.torch_epochs);
  else std::printf("best held-out accuracy, twin - torch: %+.2f points\n", 100 * (rep.best_heldout_accuracy - py_best));
  std::filesystem::remove(a.data);
  return 0;
}
