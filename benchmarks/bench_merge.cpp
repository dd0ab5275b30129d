// Merging 8 experts of a RoBERTa-base-shaped model (85M parameters per model)
// with TaskArithmetic and Ties (per-tensor and global scope, the row
// ties_global) in f32 and bf16, DARE (dare_linear, dare_ties: density as
// Ties', Philox masks; dare_linear_mk, dare_ties_mk: mergekit's rule with
// its L1 rescale) and mergekit's other methods: linear, breadcrumbs,
// breadcrumbs_ties, della_linear, della, sce, ram, ramplus_tl, model_stock,
// multislerp, karcher (8 experts), nuslerp (2), slerp, nearswap, arcee_fusion,
// passthrough (the base and one expert), into preallocated outputs. Prints,
// per run:
// time, bytes moved (read base + experts, write output), the time a parallel
// memcpy of the same bytes takes in this run, their ratio, and PyTorch's time
// on the identical tensors (benchmarks/bench_merge.py; TaskArithmetic and
// Ties only) with our speed-up over it.
//
//   bench_merge [--experts 8] [--layers 12] [--reps 3] [--only NAME[,NAME...]] [--dtype f32|bf16]
//               [--no-torch] [--python /usr/bin/python3]
#include <cmath>
#include <cstdio>
#include <sstream>
#include <string>

#include "bench_common.hpp"

#ifndef TWIN_BENCH_DIR
#  define TWIN_BENCH_DIR "benchmarks"
#endif

int main(int argc, char** argv) {
  int T = 8, layers = 12, reps = 3;
  bool torch = true;
  std::string python = "/usr/bin/python3";
  std::string only;  // comma-separated method names; empty: all
  std::vector<twin::dtype> dtypes = {twin::dtype::f32, twin::dtype::bf16};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--experts" && i + 1 < argc) T = std::atoi(argv[++i]);
    else if (a == "--layers" && i + 1 < argc) layers = std::atoi(argv[++i]);
    else if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (a == "--only" && i + 1 < argc) only = "," + std::string(argv[++i]) + ",";
    else if (a == "--dtype" && i + 1 < argc) dtypes = {twin::parse_dtype(argv[++i])};
    else if (a == "--no-torch") torch = false;
    else if (a == "--python" && i + 1 < argc) python = argv[++i];
    else {
      std::fprintf(stderr,
                   "usage: bench_merge [--experts N] [--layers L] [--reps R] [--only NAME[,NAME...]] [--dtype f32|bf16]"
                   " [--no-torch] [--python PATH]\n");
      return a == "--help" ? 0 : 2;
    }
  }
  const double scaling = 0.3, density = 0.2;
  const auto specs = bench::roberta_base_specs(layers);
  std::printf("bench_merge: %d experts, %d layers, %d threads, TaskArithmetic(λ=%.1f), Ties(density=%.1f, λ=%.1f)\n", T,
              layers, twin::num_threads(), scaling, density, scaling);
  std::printf("%-16s %-5s %9s %9s %11s %9s %10s %9s %9s\n", "method", "dtype", "time_ms", "GB_moved", "copy_ms",
              "vs_copy", "torch_ms", "speedup", "cs_rel");
  for (twin::dtype dt : dtypes) {
    const twin::StateDict base = bench::make_model(specs, 0, dt);
    std::vector<twin::StateDict> experts;
    for (int m = 1; m <= T; ++m) experts.push_back(bench::make_model(specs, m, dt));
    const std::size_t model_bytes = base.nbytes();

    std::vector<std::string> torch_lines;
    if (torch) {
      std::ostringstream cmd;
      cmd << python << " " << TWIN_BENCH_DIR << "/bench_merge.py --experts " << T << " --layers " << layers
          << " --dtype " << (dt == twin::dtype::f32 ? "f32" : "bf16") << " --scaling " << scaling << " --density "
          << density << " --reps " << reps;
      std::istringstream in(bench::run_capture(cmd.str()));
      for (std::string line; std::getline(in, line);) torch_lines.push_back(line);
    }

    struct Method {
      twin::AnyMerger merger;
      int experts;        // how many of the experts it merges
      std::string label;  // the row's name when not the merger's (a variant)
    };
    // mergekit's own rule for a GTA method (a YAML config's merge_method), each expert at `density`.
    auto mergekit_gta = [&](const char* m) {
      twin::GeneralizedTaskArithmetic g = *twin::GeneralizedTaskArithmetic::mergekit(m);
      g.densities.assign(static_cast<std::size_t>(T), density);
      g.scaling = scaling;
      return g;
    };
    const Method methods[] = {
        {twin::TaskArithmetic{scaling, {}}, T},
        {twin::Ties{density, scaling, twin::TopKScope::per_tensor, {}}, T},
        {twin::Ties{density, scaling, twin::TopKScope::global, {}}, T, "ties_global"},
        {twin::Linear{}, T},
        {twin::Breadcrumbs{{0.9, 0.01, scaling, {}, {}, {}, false}}, T},
        {twin::BreadcrumbsTies{{0.9, 0.01, scaling, {}, {}, {}, false}}, T},
        {twin::DareLinear{{density, scaling, 0, {}, twin::RngKind::philox}}, T},
        {twin::DareTies{{density, scaling, 0, {}, twin::RngKind::philox}}, T},
        {mergekit_gta("dare_linear"), T, "dare_linear_mk"},
        {mergekit_gta("dare_ties"), T, "dare_ties_mk"},
        {twin::DellaLinear{{0.5, 0.15, scaling, 0, {}, {}, {}, false, true, twin::RngKind::philox}}, T},
        {twin::Della{{0.5, 0.15, scaling, 0, {}, {}, {}, true, true, twin::RngKind::philox}}, T},
        {twin::Sce{0.5}, T},
        {twin::Ram{}, T},
        {twin::RamPlusTl{}, T},
        {twin::ModelStock{}, T},
        {twin::MultiSlerp{}, T},
        {twin::Karcher{}, T},
        {twin::NuSlerp{}, 2},
        {twin::Slerp{0.4}, 1},
        {twin::Nearswap{0.001}, 1},
        {twin::ArceeFusion{}, 1},
        {twin::Passthrough{0.5}, 1}};
    for (const auto& [m, E, variant] : methods) {
      const std::string label = variant.empty() ? std::string(m.name()) : variant;
      if (!only.empty() && only.find("," + label + ",") == std::string::npos) continue;
      const std::size_t moved = model_bytes * static_cast<std::size_t>(E + 2);  // read E+1, write 1
      // A memcpy of moved/2 bytes reads and writes `moved` bytes in total.
      const double copy = bench::copy_seconds(moved / 2);
      const std::span<const twin::StateDict> used(experts.data(), static_cast<std::size_t>(E));
      std::vector<const twin::StateDict*> ptrs;
      for (const twin::StateDict& e : used) ptrs.push_back(&e);
      // Into outputs allocated (and touched) once, as an engine merges into
      // its weights: the copy floor does not allocate either.
      twin::StateDict out = twin::merge_state(m, base, used);
      const double t = bench::best_of(
          reps, [&] { twin::merge_state_into(m, base, std::span<const twin::StateDict* const>(ptrs), out); });
      const double cs = bench::checksum(out);
      double torch_s = NAN, torch_cs = NAN;
      for (const auto& line : torch_lines) {
        std::istringstream ls(line);
        std::string name;
        double s, c;
        if (ls >> name >> s >> c && name == label) torch_s = s, torch_cs = c;
      }
      std::printf("%-16s %-5s %9.1f %9.2f %11.1f %8.2fx %10.1f %8.2fx %9.1e\n", label.c_str(),
                  std::string(twin::dtype_name(dt)).c_str(), t * 1e3, static_cast<double>(moved) / 1e9, copy * 1e3,
                  t / copy, torch_s * 1e3, torch_s / t, std::abs(cs - torch_cs) / std::max(1e-12, std::abs(torch_cs)));
      std::fflush(stdout);
    }
  }
  std::printf(
      "vs_copy: our time / memcpy of the same bytes (goal <= 1.5; mergekit's deterministic methods <= 2);\n"
      "speedup: PyTorch time / ours (goal >= 2);\n"
      "cs_rel: relative difference of the outputs' sums, ours vs PyTorch's (same tensors, same merge).\n");
  return 0;
}
