// Twin model files: save -> load gives back a model whose fusion is
// bit-identical (low-rank, sparse and dense modules, excluded tensors, the
// router); malformed and newer-version files are refused with io_error.
#include "test_support.hpp"
#include "twin/compress/magnitude_sparsifier.hpp"
#include "twin/compress/svd_compressor.hpp"
#include "twin/fuse/dynamic_fuser.hpp"
#include "twin/io/twin_model_file.hpp"

namespace fs = std::filesystem;
using namespace twin;

namespace {

struct Experts {
  StateDict base;
  std::vector<StateDict> experts;
};

Experts make_experts(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  Experts x;
  x.base.insert("layer.weight", twin_test::random_tensor(rng, dtype::f32, {24, 20}));
  x.base.insert("layer.bias", twin_test::random_tensor(rng, dtype::f32, {24}));
  x.base.insert("conv.weight", twin_test::random_tensor(rng, dtype::bf16, {6, 2, 3, 3}));
  x.base.insert("head.weight", twin_test::random_tensor(rng, dtype::f32, {4, 24}));
  for (int t = 0; t < 3; ++t) {
    StateDict e;
    for (const auto& [name, ten] : x.base) e.insert(name, twin_test::perturbed(rng, ten, 0.2, ten.dtype()));
    x.experts.push_back(std::move(e));
  }
  return x;
}

// Fuses every tensor of the model for `logits` into fresh f32 tensors.
StateDict fuse_all(const TwinModel& m, std::span<const float> logits) {
  const DynamicFuser fuser(m);
  StateDict out;
  for (const auto& e : m.entries()) out.insert(e.name, Tensor(dtype::f32, e.shape.span()));
  std::vector<std::pair<std::string, Tensor*>> targets;
  for (auto& [name, t] : out) targets.emplace_back(name, &t);
  for (auto& [name, t] : targets) fuser.fuse_tensor(name, *t, fuser.weights(logits));
  return out;
}

// Task arithmetic + rank-2 SVD over make_experts(seed), heads excluded.
TwinModel rank2_model(std::uint64_t seed) {
  const Experts x = make_experts(seed);
  TwinBuildOptions opts;
  opts.exclude = {"head\\..*"};
  return TwinModel::build(x.base, std::span<const StateDict>(x.experts), TaskArithmetic{0.3, {}},
                          SvdCompressor::with_rank(2), opts);
}

fs::path scratch(const std::string& name) {
  return fs::temp_directory_path() / ("twin_model_file_" + std::to_string(::getpid()) + "_" + name);
}

}  // namespace

TEST_CASE("save -> load gives a model whose fusion is bit-identical, for svd and sparse modules") {
  const Experts x = make_experts(61);
  TwinBuildOptions opts;
  opts.task_names = {"nli", "qa", "sentiment"};
  opts.exclude = {"head\\..*"};
  for (int variant = 0; variant < 2; ++variant) {
    CAPTURE(variant);
    const TwinModel m = variant == 0
                            ? TwinModel::build(x.base, std::span<const StateDict>(x.experts), TaskArithmetic{0.3, {}},
                                               SvdCompressor::with_rank(4, dtype::bf16), opts)
                            : TwinModel::build(x.base, std::span<const StateDict>(x.experts),
                                               Ties{0.5, 1.0, TopKScope::per_tensor, {}},
                                               MagnitudeSparsifier{0.2, dtype::f16}, opts);
    RouterConfig rc;
    rc.input_dim = 5;
    rc.num_tasks = 3;
    const Router router(rc, 7);
    const fs::path p = scratch("rt.safetensors");
    save_twin_model(p, m, &router);
    const TwinModelFile f = load_twin_model(p);
    CHECK(f.model.task_names() == m.task_names());
    CHECK(f.model.names() == m.names());
    CHECK(f.model.is_excluded("head.weight"));
    CHECK(f.model.storage().total() == m.storage().total());
    CHECK(f.model.relative_error() == m.relative_error());
    CHECK(f.model.metadata() == m.metadata());
    const float logits[] = {0.3f, -1.2f, 2.0f};
    const StateDict a = fuse_all(m, logits), b = fuse_all(f.model, logits);
    for (const auto& [name, t] : a) CHECK(twin_test::same_bits(t, b.at(name)));
    // The router comes back with identical logits.
    REQUIRE(f.router.has_value());
    const std::vector<float> emb = {0.1f, -0.4f, 2.0f, 0.0f, 1.5f};
    CHECK(f.router->logits(std::span<const float>(emb)) == router.logits(std::span<const float>(emb)));
    fs::remove(p);
  }
}

TEST_CASE("a model file from a newer format version, or one missing parts, is refused with io_error") {
  const TwinModel m = rank2_model(62);
  const fs::path p = scratch("ok.safetensors"), q = scratch("bad.safetensors");
  save_twin_model(p, m);
  const LoadedCheckpoint ck = load_safetensors(p);
  auto rewrite = [&](auto&& edit_tensors, auto&& edit_meta) {
    StateDict sd = ck.tensors.clone();
    Metadata meta = ck.metadata;
    edit_tensors(sd);
    edit_meta(meta);
    save_safetensors(q, sd, meta);
  };
  auto none = [](auto&) {};
  rewrite(none, [](Metadata& md) { md["twin.format_version"] = "2"; });
  CHECK_THROWS_WITH_AS(load_twin_model(q), doctest::Contains("newer twin (format version 2)"), io_error);
  rewrite([](StateDict& sd) { sd.erase("exclusive.task1.layer.weight.B"); }, none);
  CHECK_THROWS_WITH_AS(load_twin_model(q), doctest::Contains("exclusive.task1.layer.weight.B"), io_error);
  rewrite([](StateDict& sd) { sd.insert("stray.tensor", Tensor(dtype::f32, {2})); }, none);
  CHECK_THROWS_WITH_AS(load_twin_model(q), doctest::Contains("stray.tensor"), io_error);
  rewrite([](StateDict& sd) { sd.assign("exclusive.task0.layer.weight.A", Tensor(dtype::f32, {24, 3})); }, none);
  CHECK_THROWS_AS(load_twin_model(q), io_error);
  rewrite(none, [](Metadata& md) { md.erase("format"); });
  CHECK_THROWS_WITH_AS(load_twin_model(q), doctest::Contains("not a twin model file"), io_error);
  rewrite(none, [](Metadata& md) { md["twin.tasks"] = "[\"a.b\", \"c\", \"d\"]"; });
  CHECK_THROWS_WITH_AS(load_twin_model(q), doctest::Contains("task name 'a.b'"), io_error);
  fs::remove(p);
  fs::remove(q);
}

TEST_CASE("a corrupt router raises the same io_error from a router file and from a model file") {
  const TwinModel m = rank2_model(63);
  const Router router(RouterConfig{.input_dim = 5, .num_tasks = static_cast<std::int64_t>(m.num_tasks())}, 3);
  const fs::path model_path = scratch("with_router.safetensors"), router_path = scratch("router.safetensors");
  save_twin_model(model_path, m, &router);
  save_router(router_path, router);
  // The same edit to the router's metadata in either file.
  for (const fs::path& p : {model_path, router_path}) {
    const LoadedCheckpoint ck = load_safetensors(p);
    Metadata meta = ck.metadata;
    meta["router.format_version"] = "2";
    const fs::path q = scratch("edited.safetensors");
    save_safetensors(q, ck.tensors, meta);
    const std::string expect = q.string() + ": twin router written by a newer twin (format version 2)";
    if (p == model_path) CHECK_THROWS_WITH_AS(load_twin_model(q), doctest::Contains(expect.c_str()), io_error);
    else CHECK_THROWS_WITH_AS(load_router(q), doctest::Contains(expect.c_str()), io_error);
    fs::remove(q);
  }
  fs::remove(model_path);
  fs::remove(router_path);
}
