// Twin model files: save -> load gives back a model whose fusion is
// bit-identical (low-rank, sparse and dense modules, excluded tensors, the
// router); malformed and newer-version files are refused with io_error.
#include "test_support.hpp"
#include "twin/compress/magnitude_sparsifier.hpp"
#include "twin/compress/sign_compressor.hpp"
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

TEST_CASE("excluded heads of different shapes per task come back from a file as written") {
  // Each task's head has its own label count (2, 3, 4 rows); the file keeps
  // each copy at its shape and the loaded model fuses them as the built one.
  Experts x = make_experts(63);
  std::mt19937_64 rng(63);
  for (std::size_t t = 0; t < x.experts.size(); ++t)
    x.experts[t].assign("head.weight",
                        twin_test::random_tensor(rng, dtype::f32, {static_cast<std::int64_t>(2 + t), 24}));
  TwinBuildOptions opts;
  opts.exclude = {"head\\..*"};
  const TwinModel m = TwinModel::build(x.base, std::span<const StateDict>(x.experts), TaskArithmetic{0.3, {}},
                                       SvdCompressor::with_rank(2), opts);
  const fs::path p = scratch("heads.safetensors");
  save_twin_model(p, m);
  // Version 3: a reader from before unequal copies refuses it as newer.
  CHECK(load_safetensors(p).metadata.at("twin.format_version") == "3");
  const TwinModelFile f = load_twin_model(p);
  const TwinModel::Entry& e = f.model.at("head.weight");
  CHECK_FALSE(e.uniform_shape());
  const DynamicFuser fuser(f.model);
  for (std::size_t t = 0; t < x.experts.size(); ++t) {
    CHECK(twin_test::same_bits(e.copies[t], x.experts[t].at("head.weight")));
    std::vector<float> w(x.experts.size(), 0.1f);
    w[t] = 0.8f;
    Tensor out(dtype::f32, fuser.output_shape("head.weight", w));
    CHECK(out.dim(0) == static_cast<std::int64_t>(2 + t));
    fuser.fuse_tensor("head.weight", out, w);
    CHECK(twin_test::same_bits(out, x.experts[t].at("head.weight")));
  }
  fs::remove(p);
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
  rewrite(none, [](Metadata& md) { md["twin.format_version"] = "4"; });
  CHECK_THROWS_WITH_AS(load_twin_model(q), doctest::Contains("newer twin (format version 4)"), io_error);
  // Without packed kinds a model is still written as version 1; files
  // written before the packed modules load unchanged.
  CHECK(ck.metadata.at("twin.format_version") == "1");
  rewrite(none, [](Metadata& md) { md["twin.format_version"] = "1"; });
  CHECK(load_twin_model(q).model.names() == m.names());
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

TEST_CASE("quantized, low-rank + sparse and sign modules round-trip bit-exactly through the model file") {
  const Experts x = make_experts(64);
  TwinBuildOptions opts;
  opts.exclude = {"head\\..*"};
  SvdCompressor q8 = SvdCompressor::with_rank(3), q4s = SvdCompressor::with_rank(2, dtype::bf16);
  q8.quant = QuantSpec{8, 16};
  q4s.quant = QuantSpec{4, 5};
  q4s.residual_density = 0.1;
  SvdCompressor lrs = SvdCompressor::with_rank(2);
  lrs.residual_density = 0.05;
  const auto ta = TaskArithmetic{0.3, {}};
  std::vector<TwinModel> models;
  models.push_back(TwinModel::build(x.base, std::span<const StateDict>(x.experts), ta, q8, opts));
  models.push_back(TwinModel::build(x.base, std::span<const StateDict>(x.experts), ta, q4s, opts));
  models.push_back(TwinModel::build(x.base, std::span<const StateDict>(x.experts), ta, lrs, opts));
  models.push_back(
      TwinModel::build(x.base, std::span<const StateDict>(x.experts), ta, SignCompressor{0.4, true}, opts));
  models.push_back(
      TwinModel::build(x.base, std::span<const StateDict>(x.experts), ta, SignCompressor{1.0, false}, opts));
  const fs::path p = scratch("packed.safetensors");
  for (const TwinModel& m : models) {
    const ModuleKind kind = m.at("layer.weight").modules[0].kind();
    CAPTURE(module_kind_name(kind));
    save_twin_model(p, m);
    // The packed kinds need format version 2.
    CHECK(load_safetensors(p).metadata.at("twin.format_version") == "2");
    const TwinModelFile f = load_twin_model(p);
    CHECK(f.model.at("layer.weight").modules[0].kind() == kind);
    CHECK(f.model.storage().exclusive_bytes == m.storage().exclusive_bytes);
    CHECK(f.model.metadata() == m.metadata());
    for (const auto& e : m.entries()) {
      if (e.excluded) continue;
      for (std::size_t t = 0; t < m.num_tasks(); ++t) {
        const auto pa = e.modules[t].parts(), pb = f.model.at(e.name).modules[t].parts();
        REQUIRE(pa.size() == pb.size());
        for (std::size_t i = 0; i < pa.size(); ++i) {
          CHECK(pa[i].first == pb[i].first);
          CHECK(twin_test::same_bits(*pa[i].second, *pb[i].second));
        }
      }
    }
    const float logits[] = {1.1f, 0.2f, -0.7f};
    const StateDict a = fuse_all(m, logits), b = fuse_all(f.model, logits);
    for (const auto& [name, t] : a) CHECK(twin_test::same_bits(t, b.at(name)));
  }
  fs::remove(p);
}

TEST_CASE("a corrupted packed module (bit count, scale count, group size, bit vector length) is refused naming it") {
  const Experts x = make_experts(65);
  SvdCompressor q4 = SvdCompressor::with_rank(2);
  q4.quant = QuantSpec{4, 8};
  const auto ta = TaskArithmetic{0.3, {}};
  const TwinModel mq = TwinModel::build(x.base, std::span<const StateDict>(x.experts), ta, q4);
  const TwinModel ms = TwinModel::build(x.base, std::span<const StateDict>(x.experts), ta, SignCompressor{0.5, true});
  const fs::path p = scratch("packed_ok.safetensors"), q = scratch("packed_bad.safetensors");
  auto corrupt = [&](const TwinModel& m, auto&& edit) {
    save_twin_model(p, m);
    const LoadedCheckpoint ck = load_safetensors(p);
    StateDict sd = ck.tensors.clone();
    edit(sd);
    save_safetensors(q, sd, ck.metadata);
  };
  auto quant = [](std::int32_t bits, std::int32_t group) {
    Tensor t(dtype::i32, {2});
    t.values<std::int32_t>()[0] = bits, t.values<std::int32_t>()[1] = group;
    return t;
  };
  const std::string w = "exclusive.task1.layer.weight.";
  // 8 bits claimed over 4-bit codes.
  corrupt(mq, [&](StateDict& sd) { sd.assign(w + "quant", quant(8, 8)); });
  CHECK_THROWS_WITH_AS(load_twin_model(q), doctest::Contains("tensor 'layer.weight'"), io_error);
  CHECK_THROWS_WITH_AS(load_twin_model(q), doctest::Contains("8-bit codes"), io_error);
  // 5 bits: no such format.
  corrupt(mq, [&](StateDict& sd) { sd.assign(w + "quant", quant(5, 8)); });
  CHECK_THROWS_WITH_AS(load_twin_model(q), doctest::Contains("bits must be 8 or 4"), io_error);
  // A group size the scales do not match, and a group size of 0.
  corrupt(mq, [&](StateDict& sd) { sd.assign(w + "quant", quant(4, 4)); });
  CHECK_THROWS_WITH_AS(load_twin_model(q), doctest::Contains("scales"), io_error);
  corrupt(mq, [&](StateDict& sd) { sd.assign(w + "quant", quant(4, 0)); });
  CHECK_THROWS_WITH_AS(load_twin_model(q), doctest::Contains("group size"), io_error);
  // One scale short.
  corrupt(mq, [&](StateDict& sd) {
    const Tensor& s = sd.at(w + "A.scales");
    sd.assign(w + "A.scales", Tensor(dtype::f16, {s.dim(0), s.dim(1) - 1}));
  });
  CHECK_THROWS_WITH_AS(load_twin_model(q), doctest::Contains("task 'task1'"), io_error);
  // A missing quant record.
  corrupt(mq, [&](StateDict& sd) { sd.erase(w + "quant"); });
  CHECK_THROWS_WITH_AS(load_twin_model(q), doctest::Contains("quant"), io_error);
  // Sign bits one byte short, a mask with padding bits set, α of the wrong length.
  corrupt(ms, [&](StateDict& sd) { sd.assign(w + "signs", Tensor(dtype::u8, {sd.at(w + "signs").numel() - 1})); });
  CHECK_THROWS_WITH_AS(load_twin_model(q), doctest::Contains("signs"), io_error);
  corrupt(ms, [&](StateDict& sd) { sd.assign(w + "alpha", Tensor(dtype::f32, {3})); });
  CHECK_THROWS_WITH_AS(load_twin_model(q), doctest::Contains("alpha"), io_error);
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
