// The merges' AVX-512 copies (backend/cpu/avx512_copies.hpp) against the
// build's own code: every strategy, the same inputs, merged with the copies
// on and off, must give the same bits (GCC compiles the copies without
// contracting multiplies and adds, so they perform the build's operations
// in its order), and the copies must actually run. The own code is what the
// rest of the suite checks against its references (the test build compiles
// no copies elsewhere: TWIN_NO_AVX512_COPIES). Built without -march, so the
// copies exist; a CPU without AVX-512 (or a build that targets it, where
// there is nothing to copy) makes the test report SKIPPED.
#define DOCTEST_CONFIG_IMPLEMENT
#define TWIN_COUNT_AVX512_COPIES 1
#include <doctest/doctest.h>

#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "test_support.hpp"
#include "twin/twin.hpp"

using namespace twin;
using twin_test::same_bits;

namespace {

struct Inputs {
  StateDict base;
  std::vector<StateDict> experts;
};

// Tensors that take the kernels' different paths: past one merge block and
// past sce's and TIES's small-size cutoffs (f32), bf16 experts over an f32
// base and all-bf16 tensors (experts read in place), rank 1 and rank 3,
// vector tails (lengths not multiples of 16), one shorter than a vector,
// one longer than a merge block.
Inputs make_inputs(std::size_t experts) {
  std::mt19937_64 rng(20261207);
  struct Spec {
    const char* name;
    std::vector<std::int64_t> shape;
    dtype base, expert;
  };
  const Spec specs[] = {
      {"big.weight", {160, 513}, dtype::f32, dtype::f32},   {"mixed.weight", {96, 257}, dtype::f32, dtype::bf16},
      {"bf16.weight", {64, 130}, dtype::bf16, dtype::bf16}, {"vec.bias", {1000}, dtype::f32, dtype::f32},
      {"cube.weight", {3, 5, 67}, dtype::f32, dtype::f32},  {"tiny.bias", {7}, dtype::f32, dtype::f32},
      {"long.bias", {70001}, dtype::f32, dtype::f32}};  // DELLA rows past a merge block: its held masks
  Inputs in;
  in.experts.resize(experts);
  for (const Spec& s : specs) {
    const Tensor b = twin_test::random_tensor(rng, s.base, s.shape, 0.0, 0.05);
    for (std::size_t i = 0; i < experts; ++i)
      in.experts[i].insert(s.name, twin_test::perturbed(rng, b, 0.01 * static_cast<double>(i + 1), s.expert));
    in.base.insert(s.name, b.clone());
  }
  return in;
}

// Merges with the copies on, then off; checks the bits and that the copies
// ran (on) or did not (off).
template <class M>
void check_copy_matches(const std::string& what, const M& merger, const Inputs& in) {
  INFO(what);
  backend::cpu::set_avx512_copies(true);
  const std::int64_t before = backend::cpu::detail::avx512_copy_runs.load();
  const StateDict on = merge_state(merger, in.base, std::span<const StateDict>(in.experts));
  const std::int64_t runs = backend::cpu::detail::avx512_copy_runs.load() - before;
  backend::cpu::set_avx512_copies(false);
  const StateDict off = merge_state(merger, in.base, std::span<const StateDict>(in.experts));
  const std::int64_t runs_off = backend::cpu::detail::avx512_copy_runs.load() - before - runs;
  backend::cpu::set_avx512_copies(true);
  CHECK(runs > 0);
  CHECK(runs_off == 0);
  REQUIRE(on.size() == off.size());
  for (const auto& item : off) {
    const std::string& name = item.first;  // not a binding: INFO captures it (clang < 16)
    INFO(name);
    CHECK(same_bits(on.at(name), item.second));
  }
}

// How many experts each strategy merges here.
std::size_t experts_for(std::string_view method) {
  if (method == "slerp" || method == "nearswap" || method == "arcee_fusion" || method == "passthrough") return 1;
  if (method == "nuslerp") return 2;
  return 4;
}

}  // namespace

TEST_CASE("every strategy: the AVX-512 copies give the build's own bits, and run") {
  for (std::string_view method : merge_method_names) {
    MergeSettings s;
    s.method = std::string(method);
    if (method == "slerp" || method == "nearswap") s.t = 0.3;
    if (method == "ties" || method.starts_with("dare") || method.starts_with("breadcrumbs") ||
        method.starts_with("della"))
      s.density = 0.3;
    if (method == "sce") s.select_topk = 0.4;
    if (method == "passthrough") s.scale = 0.5;
    s.seed = 7;
    const std::size_t experts = experts_for(method);
    const Inputs in = make_inputs(experts);
    check_copy_matches(std::string(method), AnyMerger::from_settings(s), in);
  }
}

TEST_CASE(
    "TIES over the whole model, mergekit's GTA rules, sce without selection, the Gram passes by rows and "
    "columns: copies give the same bits") {
  const Inputs in = make_inputs(3);
  check_copy_matches("ties global", Ties{0.25, 1.0, TopKScope::global, {}}, in);
  for (const char* m : {"dare_linear", "dare_ties", "della", "della_linear", "breadcrumbs_ties", "ties"}) {
    std::optional<GeneralizedTaskArithmetic> g = GeneralizedTaskArithmetic::mergekit(m);
    REQUIRE(g.has_value());
    g->densities = {0.4, 0.3, 0.5};
    g->seed = 11;
    check_copy_matches(std::string("mergekit ") + m, *g, in);
  }
  check_copy_matches("sce select_topk 1", Sce{1.0}, in);
  // The Gram passes over rows and columns.
  MergeSettings stock;
  stock.method = "model_stock";
  stock.filter_wise = true;
  check_copy_matches("model_stock filter_wise", AnyMerger::from_settings(stock), in);
  const Inputs two = make_inputs(2);
  for (const bool row_wise : {false, true}) {
    MergeSettings nu;
    nu.method = "nuslerp";
    nu.nuslerp_flatten = false;
    nu.nuslerp_row_wise = row_wise;
    check_copy_matches(row_wise ? "nuslerp row-wise" : "nuslerp column-wise", AnyMerger::from_settings(nu), two);
  }
}

int main(int argc, char** argv) {
  if (!backend::cpu::avx512_copies_cpu() || !TWIN_HAS_AVX512_COPIES) {
    std::printf("SKIPPED: %s\n", TWIN_HAS_AVX512_COPIES ? "this CPU has no AVX-512 (x86-64-v4)"
                                                        : "this build compiles no AVX-512 copies");
    return 77;
  }
  doctest::Context context(argc, argv);
  return context.run();
}
