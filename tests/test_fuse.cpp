// DynamicFuser, shards, mixed-batch apply and group-wise fusion against the
// dense double-precision reference θ* + Σ w_t v̂_t built from the stored parts.
#include "fuse_test_util.hpp"

#include <array>
#include <map>
#include <memory>
#include <set>
#include <thread>
#include <tuple>
#include <unordered_map>

#include "twin/compress/magnitude_sparsifier.hpp"
#include "twin/compress/sign_compressor.hpp"
#include "twin/compress/svd_compressor.hpp"
#include "twin/fuse/dynamic_fuser.hpp"
#include "twin/fuse/mixed_batch.hpp"
#include "twin/route/grouping.hpp"

using namespace twin;
using namespace twin_test;

namespace {

constexpr std::size_t kTasks = 4;

TwinModel build(const SmallModel& sm, const SvdCompressor& c, std::optional<dtype> shared = {}) {
  TwinBuildOptions o;
  o.exclude = {"head\\..*"};
  o.shared_dtype = shared;
  return TwinModel::build(sm.base, std::span<const StateDict>(sm.experts), TaskArithmetic{0.3, {}}, c, o);
}
template <class C>
TwinModel build_with(const SmallModel& sm, const C& c, std::optional<dtype> shared = {}) {
  TwinBuildOptions o;
  o.exclude = {"head\\..*"};
  o.shared_dtype = shared;
  return TwinModel::build(sm.base, std::span<const StateDict>(sm.experts), TaskArithmetic{0.3, {}}, c, o);
}

// One fresh output per tensor of the model, in dtype t.
std::map<std::string, Tensor> outputs(const TwinModel& m, dtype t) {
  std::map<std::string, Tensor> out;
  for (const auto& e : m.entries()) out.emplace(e.name, Tensor(t, e.shape.span()));
  return out;
}

std::vector<float> random_logits(std::mt19937_64& rng, std::size_t T, double scale = 2.0) {
  std::normal_distribution<float> nd(0.0f, static_cast<float>(scale));
  std::vector<float> l(T);
  for (float& x : l) x = nd(rng);
  return l;
}

// Fused values are θ* + Σ w v̂: f32 accumulation error scales with the
// magnitudes involved (|θ*| ~ 1), plus the output dtype's rounding.
void check_model_outputs(const TwinModel& m, const std::map<std::string, Tensor>& out, const std::vector<double>& w,
                         double rel, const std::string& what) {
  for (const auto& [name, t] : out) check_close(t.view(), reference_fusion(m, name, w), rel, 2e-6, what + " " + name);
}

}  // namespace

TEST_CASE("one-hot logits return the expert up to the compression error, and exactly at full rank") {
  const SmallModel sm = small_model(31, kTasks);
  const TwinModel full = build(sm, SvdCompressor::with_rank(1000));
  const TwinModel low = build(sm, SvdCompressor::with_rank(2));
  const DynamicFuser ffull(full), flow(low);
  for (std::size_t t = 0; t < kTasks; ++t) {
    std::vector<float> logits(kTasks, 0.0f);
    logits[t] = 1000.0f;  // exp(-1000) is exactly 0 in double: a one-hot mixture
    auto out = outputs(full, dtype::f32);
    ffull.fuse(out, logits);
    for (const auto& [name, o] : out)
      check_close(o.view(), to_f64_vector(sm.experts[t].at(name).view()), 1e-5, 1e-5, "full rank " + name);

    auto lo = outputs(low, dtype::f32);
    flow.fuse(lo, logits);
    for (const auto& [name, o] : lo) {
      const auto ex = to_f64_vector(sm.experts[t].at(name).view());
      const auto star = low.is_excluded(name) ? ex : to_f64_vector(low.shared().at(name).view());
      const auto got = to_f64_vector(o.view());
      double dist = 0.0, vnorm = 0.0;
      for (std::size_t i = 0; i < ex.size(); ++i) {
        dist += (got[i] - ex[i]) * (got[i] - ex[i]);
        vnorm += (ex[i] - star[i]) * (ex[i] - star[i]);
      }
      // ‖fused − θ_t‖ / ‖v_t‖ is the compression error of that module
      const double rel = low.is_excluded(name) ? 0.0 : low.relative_error(name, t);
      INFO(name << " task " << t);
      CHECK(std::sqrt(dist) <= rel * std::sqrt(vnorm) * (1 + 1e-3) + 1e-5);
    }
  }
}

TEST_CASE("fusion equals θ* + Σ w_t v̂_t for random logits, with top-k routing and with temperature") {
  const SmallModel sm = small_model(32, kTasks);
  const TwinModel model = build(sm, SvdCompressor::with_rank(3));
  std::mt19937_64 rng(1);
  struct Case {
    double temperature;
    int top_k;
  };
  for (const Case c : {Case{1.0, 0}, Case{1.0, 2}, Case{0.3, 0}, Case{2.5, 3}, Case{1.0, 1}}) {
    FuseOptions fo;
    fo.routing.temperature = c.temperature;
    fo.routing.top_k = c.top_k;
    const DynamicFuser f(model, fo);
    for (int rep = 0; rep < 3; ++rep) {
      const std::vector<float> logits = random_logits(rng, kTasks);
      const std::vector<double> w = reference_weights(logits, c.temperature, c.top_k);
      const std::vector<float> fw = f.weights(logits);
      for (std::size_t t = 0; t < kTasks; ++t) CHECK(fw[t] == doctest::Approx(w[t]).epsilon(1e-6));
      auto out = outputs(model, dtype::f32);
      f.fuse(out, logits);
      check_model_outputs(model, out, w, 1e-5, "T=" + std::to_string(c.temperature) + " top" + std::to_string(c.top_k));
    }
  }
}

TEST_CASE("fusion writes f16 and bf16 outputs rounded from f32 accumulation, from f32 or bf16 shared weights") {
  const SmallModel sm = small_model(33, kTasks);
  std::mt19937_64 rng(2);
  for (const auto shared : {std::optional<dtype>{}, std::optional<dtype>{dtype::bf16}}) {
    const TwinModel model = build(sm, SvdCompressor::with_rank(3, dtype::f16), shared);
    FuseOptions fo;
    fo.factors = FactorPrecision::f32;  // bf16 products: the test below
    const DynamicFuser f(model, fo);
    const std::vector<float> logits = random_logits(rng, kTasks);
    const std::vector<double> w = reference_weights(logits);
    for (const dtype t : {dtype::f32, dtype::f16, dtype::bf16}) {
      auto out = outputs(model, t);
      f.fuse(out, logits);
      check_model_outputs(model, out, w, unit_roundoff(t) + 1e-5, std::string(dtype_name(t)));
    }
  }
}

TEST_CASE("fusion into strided host views (padded rows, transposed layout) equals the reference") {
  const SmallModel sm = small_model(34, kTasks);
  const TwinModel model = build(sm, SvdCompressor::with_rank(3));
  const DynamicFuser f(model);
  std::mt19937_64 rng(3);
  const std::vector<float> logits = random_logits(rng, kTasks);
  const std::vector<double> w = reference_weights(logits);
  const std::vector<float> fw = f.weights(logits);
  const std::string name = "layer.0.attn.w";  // [48, 32]
  const auto ref = reference_fusion(model, name, w);
  for (const dtype t : {dtype::f32, dtype::bf16}) {
    const double tol = unit_roundoff(t) + 1e-5;
    // rows padded to 40 elements: an in-place f32 write with a leading dimension
    Tensor padded(t, {48, 40});
    const std::int64_t shape[2] = {48, 32}, st_pad[2] = {40, 1};
    f.fuse_tensor(name, TensorView(padded.mutable_data(), t, shape, st_pad), fw);
    check_close(ConstTensorView(padded.data(), t, shape, st_pad), ref, tol, 2e-6, "padded");
    // column-major storage: unit stride along rows
    Tensor colmajor(t, {32, 48});
    const std::int64_t st_t[2] = {1, 48};
    const TensorView tv(colmajor.mutable_data(), t, shape, st_t);
    f.fuse_tensor(name, tv, fw);
    check_close(ConstTensorView(colmajor.data(), t, shape, st_t), ref, tol, 2e-6, "transposed");
    // padding must be untouched
    for (std::int64_t i = 0; i < 48; ++i)
      for (std::int64_t j = 32; j < 40; ++j) CHECK(element_f64(padded.view(), i * 40 + j) == 0.0);
  }
}

TEST_CASE(
    "bf16 factor products (bf16 dot products by the AVX-512 BF16 kernel and by oneDNN, and widened to f32) equal "
    "θ* + Σ_t bf16(a_t) · bf16(w_t b_t)ᵀ summed in f32 and rounded once; automatic precision picks them for bf16 θ* "
    "only") {
  const SmallModel sm = small_model(35, kTasks);
  std::mt19937_64 rng(4);
  const TwinModel model16 = build(sm, SvdCompressor::with_rank(3), dtype::bf16);
  const TwinModel model32 = build(sm, SvdCompressor::with_rank(3));
  const TwinModel with_sparse = build_with(sm, MagnitudeSparsifier{0.2}, dtype::bf16);
  const bool native = backend::cpu::bf16_dot_products();
  const DynamicFuser auto16(model16), auto32(model32);
  for (const auto& p : auto16.plans()) CHECK(p.bf16_product() == (native && !p.entry->excluded && p.K > 0));
  for (const auto& p : auto32.plans()) CHECK(!p.bf16_product());
  FuseOptions forced;
  forced.factors = FactorPrecision::bf16;
  // Bf16 products into an output of θ*'s dtype (bf16 into bf16, f32 into
  // f32) take the AVX-512 BF16 kernel where the CPU has it (pairs), else
  // oneDNN's product; both are run where they can be.
  for (const auto& [dots, pairs] : {std::pair{true, true}, std::pair{true, false}, std::pair{false, false}}) {
    if (dots && !native) {
      MESSAGE("SKIPPED: the bf16 dot-product path (no oneDNN bf16 kernel on this machine)");
      continue;
    }
    if (pairs && !backend::cpu::bf16_pairs_cpu()) {
      MESSAGE("SKIPPED: the AVX-512 BF16 kernel (this CPU has no AVX-512 BF16)");
      continue;
    }
    backend::cpu::set_bf16_dot_products(dots);
    backend::cpu::set_bf16_pairs(pairs);
    for (const TwinModel* model : {&model16, &model32}) {
      const DynamicFuser f(*model, forced);
      const std::vector<float> logits = random_logits(rng, kTasks);
      const std::vector<float> fw = f.weights(logits);
      for (const dtype t : {dtype::f32, dtype::bf16}) {
        auto out = outputs(*model, t);
        f.fuse_with_weights(out, fw);
        for (const auto& e : model->entries()) {
          if (e.excluded) continue;
          CAPTURE(dots);
          CAPTURE(pairs);
          CAPTURE(e.name);
          CAPTURE(dtype_name(t));
          const MatrixShape ms = matrix_shape(e.shape.span());
          std::vector<double> ref = to_f64_vector(model->shared().at(e.name).view());
          std::vector<float> a, b;
          for (std::size_t task = 0; task < kTasks; ++task) {
            const std::int64_t r = e.modules[task].rank();
            if (e.modules[task].has_rest()) {  // vectors stay dense, added in f32
              const std::vector<double> v = module_dense(e.modules[task]);
              for (std::size_t i = 0; i < ref.size(); ++i) ref[i] += static_cast<double>(fw[task]) * v[i];
            }
            if (r == 0) continue;
            e.modules[task].factors_f32(a, b);
            for (std::int64_t i = 0; i < ms.rows; ++i)
              for (std::int64_t j = 0; j < ms.cols; ++j)
                for (std::int64_t q = 0; q < r; ++q)
                  ref[static_cast<std::size_t>(i * ms.cols + j)] +=
                      static_cast<double>(bf16_to_f32(f32_to_bf16(a[static_cast<std::size_t>(i * r + q)]))) *
                      static_cast<double>(bf16_to_f32(f32_to_bf16(fw[task] * b[static_cast<std::size_t>(j * r + q)])));
          }
          // bf16 products are exact in f32: only the f32 sums and the output's rounding remain.
          check_close(out.at(e.name).view(), ref, unit_roundoff(t) + 1e-6, 1e-6, "bf16 product");
        }
      }
    }
    // With sparse parts the product is staged in f32, the parts added there.
    const DynamicFuser fs(with_sparse, forced);
    const std::vector<float> logits = random_logits(rng, kTasks);
    auto out = outputs(with_sparse, dtype::bf16);
    fs.fuse(out, logits);
    check_model_outputs(with_sparse, out, reference_weights(logits), unit_roundoff(dtype::bf16) + 1e-5, "sparse");
  }
  backend::cpu::set_bf16_dot_products(true);
  backend::cpu::set_bf16_pairs(true);
}

// SVD factors quantized to `bits` in groups of `group` rows, optionally
// with a sparse residual.
SvdCompressor packed_svd(std::int64_t rank, int bits, std::int64_t group, double residual = 0.0) {
  SvdCompressor c = SvdCompressor::with_rank(rank);
  c.quant = QuantSpec{bits, group};
  c.residual_density = residual;
  return c;
}

TEST_CASE("sparse, dense, quantized low-rank, low-rank + sparse and sign modules fuse to θ* + Σ w_t v̂_t") {
  const SmallModel sm = small_model(35, kTasks);
  std::mt19937_64 rng(4);
  const TwinModel sparse = build_with(sm, MagnitudeSparsifier{0.2}, dtype::bf16);
  const TwinModel dense = build_with(sm, DenseCompressor{dtype::f16});
  const TwinModel q8 = build_with(sm, packed_svd(3, 8, 16));
  const TwinModel q4 = build_with(sm, packed_svd(3, 4, 7), dtype::bf16);  // odd group: ragged last group
  SvdCompressor lrs = SvdCompressor::with_rank(2, dtype::bf16);
  lrs.residual_density = 0.05;
  const TwinModel lr_sparse = build_with(sm, lrs);
  const TwinModel q4_sparse = build_with(sm, packed_svd(2, 4, 32, 0.1));
  const TwinModel sign_row = build_with(sm, SignCompressor{0.3, true});
  const TwinModel sign_all = build_with(sm, SignCompressor{1.0, false});
  const auto kind = [](const TwinModel& m) { return m.at("layer.0.attn.w").modules[0].kind(); };
  CHECK(kind(q8) == ModuleKind::low_rank_q);
  CHECK(kind(q4) == ModuleKind::low_rank_q);
  CHECK(kind(lr_sparse) == ModuleKind::low_rank_sparse);
  CHECK(kind(q4_sparse) == ModuleKind::low_rank_sparse);
  CHECK(q4_sparse.at("layer.0.attn.w").modules[0].quantized());
  CHECK(kind(sign_row) == ModuleKind::sign);
  CHECK(sign_all.at("layer.0.attn.w").modules[0].mask().numel() == 0);
  for (const TwinModel* m : {&sparse, &dense, &q8, &q4, &lr_sparse, &q4_sparse, &sign_row, &sign_all}) {
    FuseOptions fo;
    fo.routing.top_k = 2;
    fo.factors = FactorPrecision::f32;  // f32 sums of the decoded parts; bf16 products: the test above
    const DynamicFuser f(*m, fo);
    const std::vector<float> logits = random_logits(rng, kTasks);
    const std::vector<double> w = reference_weights(logits, 1.0, 2);
    for (const dtype t : {dtype::f32, dtype::bf16}) {
      auto out = outputs(*m, t);
      f.fuse(out, logits);
      check_model_outputs(*m, out, w, unit_roundoff(t) + 1e-5,
                          "compressor " + m->metadata().at("compressor") + " " +
                              std::string(module_kind_name(m->at("layer.0.attn.w").modules[0].kind())));
    }
  }
}

TEST_CASE("tasks of different ranks (energy mode) fuse through one concatenated GEMM") {
  const SmallModel sm = small_model(36, kTasks);
  const TwinModel model = build(sm, SvdCompressor::with_energy(0.95));
  const DynamicFuser f(model);
  const FusePlan& p = f.plan("layer.0.attn.w");
  CHECK(p.K == p.offset.back());
  CHECK(p.K > 0);

  std::mt19937_64 rng(5);
  const std::vector<float> logits = random_logits(rng, kTasks);
  auto out = outputs(model, dtype::f32);
  f.fuse(out, logits);
  check_model_outputs(model, out, reference_weights(logits), 1e-5, "energy");
}

TEST_CASE("a tensor whose tasks mix ranks 1..3, an empty rank and a sparse module fuses to θ* + Σ w_t v̂_t") {
  std::mt19937_64 rng(12);
  TwinModel model({"a", "b", "c", "d", "e"});
  const std::int64_t shape[2] = {20, 13};
  std::vector<ExclusiveModule> mods;
  for (const std::int64_t r : {1, 3, 0, 2})
    mods.push_back(ExclusiveModule::low_rank(random_tensor(rng, dtype::f32, {20, r}),
                                             random_tensor(rng, dtype::bf16, {13, r}), shape));
  const std::vector<float> vals{0.5f, -1.0f, 2.0f};
  const std::vector<std::int64_t> idx{3, 27, 259};
  Tensor it(dtype::i64, {3});
  std::copy(idx.begin(), idx.end(), it.values<std::int64_t>().begin());
  mods.push_back(ExclusiveModule::sparse(std::move(it), Tensor::from_f32(vals, std::vector<std::int64_t>{3}), shape));
  model.add_merged("w", random_tensor(rng, dtype::f32, {20, 13}), std::move(mods));
  const DynamicFuser f(model);
  CHECK(f.plan("w").K == 6);
  for (int rep = 0; rep < 4; ++rep) {
    std::vector<float> w = f.weights(random_logits(rng, 5));
    if (rep == 1) w[1] = 0.0f;  // a skipped task in the middle of A_cat
    if (rep == 2) w[4] = 0.0f;
    std::vector<double> wd(w.begin(), w.end());
    Tensor out(dtype::f32, {20, 13});
    f.fuse_tensor("w", out, w);
    check_close(out.view(), reference_fusion(model, "w", wd), 1e-5, 1e-6, "mixed kinds");
  }
}

TEST_CASE("excluded tensors take the copy of the task with the largest weight") {
  const SmallModel sm = small_model(37, kTasks);
  const TwinModel model = build(sm, SvdCompressor::with_rank(2));
  const DynamicFuser f(model);
  for (std::size_t t = 0; t < kTasks; ++t) {
    std::vector<float> logits(kTasks, 0.0f);
    logits[t] = 0.5f;
    Tensor head(dtype::f32, {5, 32});
    f.fuse_tensor("head.w", head, f.weights(logits));
    CHECK(same_bits(head, sm.experts[t].at("head.w")));
  }
}

TEST_CASE("excluded heads of different label counts: each task keeps its own, fused at the top task's shape") {
  // A classifier head per task (2 + t labels here): the build keeps every
  // task's copy, the fuser writes the top task's at its own shape, and the
  // merged tensors are fused as in a model of equal heads.
  SmallModel sm = small_model(41, kTasks);
  std::mt19937_64 rng(41);
  for (std::size_t t = 0; t < kTasks; ++t) {
    sm.experts[t].assign("head.w", random_tensor(rng, dtype::f32, {static_cast<std::int64_t>(2 + t), 32}));
    sm.experts[t].assign("head.b", random_tensor(rng, dtype::f32, {static_cast<std::int64_t>(2 + t)}));  // base: none
  }
  const TwinModel model = build(sm, SvdCompressor::with_rank(2));
  const TwinModel::Entry& head = model.at("head.w");
  CHECK_FALSE(head.uniform_shape());
  CHECK(model.at("layer.0.attn.w").uniform_shape());
  const DynamicFuser f(model);
  for (std::size_t t = 0; t < kTasks; ++t) {
    const std::vector<std::int64_t> shape = {static_cast<std::int64_t>(2 + t), 32};
    CHECK(std::ranges::equal(head.task_shape(t), shape));
    std::vector<float> logits(kTasks, 0.0f);
    logits[t] = 0.5f;
    const std::vector<float> w = f.weights(logits);
    CHECK(std::ranges::equal(f.output_shape("head.w", w), shape));
    Tensor out(dtype::f32, shape);
    f.fuse_tensor("head.w", out, w);
    CHECK(same_bits(out, sm.experts[t].at("head.w")));
    // A row shard of that copy: its row 1.
    Tensor row(dtype::f32, {1, 32});
    f.fuse_shard("head.w", row, w, 0, 1);
    const auto all = to_f64_vector(sm.experts[t].at("head.w").view());
    check_close(row.view(), std::vector<double>(all.begin() + 32, all.begin() + 64), 0.0, 0.0, "row shard");
    // Another task's shape is refused, naming the tensor.
    Tensor wrong(dtype::f32, {static_cast<std::int64_t>(2 + (t + 1) % kTasks), 32});
    CHECK_THROWS_AS(f.fuse_tensor("head.w", wrong, w), shape_error);
    // The merged tensors are unaffected by the heads.
    Tensor attn(dtype::f32, {48, 32});
    f.fuse_tensor("layer.0.attn.w", attn, w);
    check_close(attn.view(), reference_fusion(model, "layer.0.attn.w", std::vector<double>(w.begin(), w.end())), 1e-5,
                2e-6, "merged tensor beside unequal heads");
  }
  // Dense experts: each task with its own head.
  std::size_t dense = 0;
  for (const StateDict& e : sm.experts)
    for (const auto& [name, x] : e) dense += x.nbytes();
  CHECK(model.storage().dense_experts_bytes == dense);
  // A mixed batch: rows whose top tasks' heads differ share no output
  // (refused); rows all routed to task 1 take its head, Y = X H1ᵀ.
  const Tensor x = random_tensor(rng, dtype::f32, {2, 32});
  std::vector<float> rw(2 * kTasks, 0.1f);
  rw[0] = 1.0f, rw[kTasks + 1] = 1.0f;
  Tensor y2(dtype::f32, {2, 2});
  CHECK_THROWS_AS(apply_mixed(f, "head.w", x, rw, y2), shape_error);
  rw[0] = 0.1f, rw[1] = 1.0f;
  Tensor y3(dtype::f32, {2, 3});
  MixedApplyOptions with_bias;
  with_bias.bias = "head.b";
  apply_mixed(f, "head.w", x, rw, y3, with_bias);
  {
    const auto xv = to_f64_vector(x.view()), hv = to_f64_vector(sm.experts[1].at("head.w").view());
    const auto bv = to_f64_vector(sm.experts[1].at("head.b").view());
    std::vector<double> ref;
    for (int i = 0; i < 2; ++i)
      for (int r = 0; r < 3; ++r) {
        double acc = bv[static_cast<std::size_t>(r)];
        for (int c = 0; c < 32; ++c)
          acc += xv[static_cast<std::size_t>(i * 32 + c)] * hv[static_cast<std::size_t>(r * 32 + c)];
        ref.push_back(acc);
      }
    check_close(y3.view(), ref, 1e-5, 1e-5, "mixed batch on task 1's head");
  }
  // fuse() checks every output before writing any: routed to task 1, a host
  // holding task 0's head shape gets shape_error and its weights untouched.
  {
    std::map<std::string, Tensor> host = outputs(model, dtype::f32);
    for (auto& [name, t] : host)
      for (float& v : t.values<float>()) v = 7.0f;
    std::vector<float> to1(kTasks, 0.0f);
    to1[1] = 3.0f;
    CHECK_THROWS_AS(f.fuse(host, to1), shape_error);
    std::size_t changed = 0;
    for (const auto& [name, t] : host)
      for (float v : t.values<float>()) changed += v != 7.0f;
    CHECK(changed == 0);
  }
  // An expert without the excluded tensor: refused, naming the task.
  sm.experts[1].erase("head.w");
  const std::string msg = error_of<name_error>([&] { (void)build(sm, SvdCompressor::with_rank(2)); });
  CHECK(msg.find("'task1'") != std::string::npos);
  CHECK(msg.find("head.w") != std::string::npos);
}

// A single-pass range of (name, view) items: begin() resumes where the last
// walk stopped, as a generator's would.
struct OnePass {
  using Item = std::pair<std::string, TensorView>;
  std::vector<Item>* items;
  std::size_t pos = 0;
  struct End {};
  struct It {
    using value_type = Item;
    using difference_type = std::ptrdiff_t;
    OnePass* r;
    const Item& operator*() const { return (*r->items)[r->pos]; }
    It& operator++() {
      ++r->pos;
      return *this;
    }
    void operator++(int) { ++r->pos; }
    bool operator==(End) const { return r->pos == r->items->size(); }
  };
  It begin() { return {this}; }
  End end() { return {}; }
};

TEST_CASE("fuse over a single-pass range writes every tensor (checked item by item, not walked twice)") {
  static_assert(!std::ranges::forward_range<OnePass>);
  const SmallModel sm = small_model(43, kTasks);
  const TwinModel model = build(sm, SvdCompressor::with_rank(2));
  const DynamicFuser f(model);
  const std::vector<float> w = f.weights(std::vector<float>{0.3f, -0.2f, 1.0f, 0.1f});
  std::map<std::string, Tensor> want = outputs(model, dtype::f32), got = outputs(model, dtype::f32);
  f.fuse_with_weights(want, w);
  std::vector<OnePass::Item> items;
  for (auto& [name, t] : got) items.emplace_back(name, t.view());
  f.fuse_with_weights(OnePass{&items}, w);
  for (const auto& [name, t] : want) CHECK(same_bits(t, got.at(name)));
}

TEST_CASE("an excluded head the base lacks (a pretrained base has none) is kept from each expert") {
  SmallModel sm = small_model(42, kTasks);
  sm.base.erase("head.w");
  const TwinModel model = build(sm, SvdCompressor::with_rank(2));
  REQUIRE(model.find("head.w") != nullptr);
  CHECK(model.is_excluded("head.w"));
  CHECK(model.names().back() == "head.w");  // after the base's tensors
  const DynamicFuser f(model);
  for (std::size_t t = 0; t < kTasks; ++t) {
    std::vector<float> w(kTasks, 0.1f);
    w[t] = 0.7f;
    Tensor head(dtype::f32, {5, 32});
    f.fuse_tensor("head.w", head, w);
    CHECK(same_bits(head, sm.experts[t].at("head.w")));
  }
  sm.experts[2].erase("head.w");
  const std::string msg = error_of<name_error>([&] { (void)build(sm, SvdCompressor::with_rank(2)); });
  CHECK(msg.find("'task2'") != std::string::npos);
}

TEST_CASE("fuse takes any range of (name, host tensor) pairs and never modifies the shared weights") {
  const SmallModel sm = small_model(38, kTasks);
  const TwinModel model = build(sm, SvdCompressor::with_rank(3));
  const StateDict before = model.shared().clone();
  const DynamicFuser f(model);
  std::mt19937_64 rng(6);
  const std::vector<float> logits = random_logits(rng, kTasks);
  const auto w = reference_weights(logits);
  const std::string name = "layer.0.mlp.w";
  const auto ref = reference_fusion(model, name, w);

  std::unordered_map<std::string, ShapedVector<float>> um;
  um.emplace(name, ShapedVector<float>{std::vector<float>(32 * 48), {32, 48}});
  f.fuse(um, logits);
  check_close(adapt(std::as_const(um.at(name))), ref, 1e-5, 2e-6, "unordered_map of ShapedVector");

  Tensor t(dtype::f32, {32, 48});
  std::vector<std::pair<std::string, TensorView>> views{{name, t.view()}};
  f.fuse(std::as_const(views), logits);  // a const range of writable views
  check_close(t.view(), ref, 1e-5, 2e-6, "vector of TensorView");

  for (const auto& [n, s] : before) CHECK(same_bits(s, model.shared().at(n)));
}

TEST_CASE("concurrent fuse calls into different outputs give the single-threaded results") {
  const SmallModel sm = small_model(39, kTasks);
  const TwinModel model = build(sm, SvdCompressor::with_rank(3));
  const DynamicFuser f(model);
  std::mt19937_64 rng(7);
  std::vector<std::vector<float>> logits;
  for (int i = 0; i < 4; ++i) logits.push_back(random_logits(rng, kTasks));
  std::vector<std::map<std::string, Tensor>> serial, parallel;
  for (int i = 0; i < 4; ++i) {
    serial.push_back(outputs(model, dtype::f32));
    f.fuse(serial.back(), logits[static_cast<std::size_t>(i)]);
    parallel.push_back(outputs(model, dtype::f32));
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&, i] {
      for (int rep = 0; rep < 3; ++rep)
        f.fuse(parallel[static_cast<std::size_t>(i)], logits[static_cast<std::size_t>(i)]);
    });
  for (auto& th : threads) th.join();
  for (int i = 0; i < 4; ++i)
    for (const auto& [name, t] : serial[static_cast<std::size_t>(i)])
      CHECK(same_bits(t, parallel[static_cast<std::size_t>(i)].at(name)));
}

TEST_CASE("a shard (row range or column range) equals that slice of the full fusion") {
  const SmallModel sm = small_model(40, kTasks);
  std::mt19937_64 rng(8);
  const TwinModel lowrank = build(sm, SvdCompressor::with_rank(3));
  const TwinModel sparse = build_with(sm, MagnitudeSparsifier{0.3});
  for (const TwinModel* m : {&lowrank, &sparse}) {
    FuseOptions fo;
    fo.routing.top_k = 3;
    const DynamicFuser f(*m, fo);
    const std::vector<float> w = f.weights(random_logits(rng, kTasks));
    for (const auto& e : m->entries()) {
      Tensor full(dtype::f32, e.shape.span());
      f.fuse_tensor(e.name, full, w);
      const auto fullv = to_f64_vector(full.view());
      const int axes = std::min<int>(static_cast<int>(e.shape.size()), 2);
      for (int axis = 0; axis < axes; ++axis) {
        const std::int64_t len = e.shape[axis];
        for (const auto& [start, n] :
             {std::pair<std::int64_t, std::int64_t>{0, len / 2}, {len / 3, len - len / 3}, {len - 1, 1}}) {
          Extents sh = e.shape;
          sh[axis] = n;
          for (const dtype t : {dtype::f32, dtype::bf16}) {
            Tensor shard(t, sh.span());
            f.fuse_shard(e.name, shard, w, axis, start);
            // the slice of the full fusion, by index arithmetic on the full tensor
            std::vector<double> ref;
            const std::int64_t outer = axis == 0 ? 1 : e.shape[0];
            const std::int64_t inner = checked_numel(e.shape.span()) / (outer * len);
            for (std::int64_t o = 0; o < outer; ++o)
              for (std::int64_t k = start; k < start + n; ++k)
                for (std::int64_t i = 0; i < inner; ++i) {
                  const double x = fullv[static_cast<std::size_t>((o * len + k) * inner + i)];
                  ref.push_back(x);
                }
            // equal up to f32 summation order (the GEMM may block a slice
            // differently) and the output's rounding
            check_close(shard.view(), ref, t == dtype::f32 ? 1e-6 : unit_roundoff(t), 1e-7,
                        e.name + " axis " + std::to_string(axis));
          }
        }
      }
    }
    Tensor bad(dtype::f32, {10, 32});
    CHECK_THROWS_AS(f.fuse_shard("layer.0.attn.w", bad, w, 0, 40), shape_error);
    CHECK_THROWS_AS(f.fuse_shard("layer.0.attn.w", bad, w, 2, 0), argument_error);
  }
}

namespace {
// Mixed-batch reference: each row's fused weight (and bias) materialized in
// double, times that row of x (its stored values).
std::vector<double> mixed_reference(const TwinModel& m, const std::string& name, const std::string& bias,
                                    const Tensor& x, const std::vector<float>& rw) {
  const std::int64_t tokens = x.view().dim(0), n = x.view().dim(1);
  const std::size_t T = m.num_tasks();
  std::vector<double> ref;
  const auto xv = to_f64_vector(x.view());
  for (std::int64_t i = 0; i < tokens; ++i) {
    const std::vector<double> wi(rw.begin() + i * static_cast<std::int64_t>(T),
                                 rw.begin() + (i + 1) * static_cast<std::int64_t>(T));
    const auto W = reference_fusion(m, name, wi);
    const auto rows = static_cast<std::int64_t>(W.size()) / n;
    std::vector<double> b(static_cast<std::size_t>(rows), 0.0);
    if (!bias.empty()) b = reference_fusion(m, bias, wi);
    for (std::int64_t r = 0; r < rows; ++r) {
      double s = b[static_cast<std::size_t>(r)];
      for (std::int64_t c = 0; c < n; ++c)
        s += W[static_cast<std::size_t>(r * n + c)] * xv[static_cast<std::size_t>(i * n + c)];
      ref.push_back(s);
    }
  }
  return ref;
}
}  // namespace

TEST_CASE("mixed-batch apply equals per-row materialized fusion (Y = X W*ᵀ + ((X B_cat) ⊙ Ŵ) A_catᵀ)") {
  const SmallModel sm = small_model(41, kTasks);
  std::mt19937_64 rng(9);
  const TwinModel lowrank = build(sm, SvdCompressor::with_rank(3), dtype::bf16);
  const TwinModel sparse = build_with(sm, MagnitudeSparsifier{0.3});
  const TwinModel dense = build_with(sm, DenseCompressor{});
  const TwinModel q4_sparse = build_with(sm, packed_svd(2, 4, 16, 0.1));
  const TwinModel sign = build_with(sm, SignCompressor{0.5, true});
  for (const TwinModel* m : {&lowrank, &sparse, &dense, &q4_sparse, &sign}) {
    FuseOptions fo;
    fo.routing.top_k = 2;  // rows skip different tasks
    const DynamicFuser f(*m, fo);
    for (const std::string name : {"layer.0.attn.w", "head.w"}) {
      const std::int64_t tokens = 9, n = 32, rows = name == "head.w" ? 5 : 48;
      const Tensor x = random_tensor(rng, dtype::f32, {tokens, n});
      std::vector<float> rw;
      for (std::int64_t i = 0; i < tokens; ++i) {
        const auto wi = f.weights(random_logits(rng, kTasks));
        rw.insert(rw.end(), wi.begin(), wi.end());
      }
      MixedApplyOptions mo;
      if (name != "head.w") mo.bias = "layer.0.attn.b";
      for (const dtype t : {dtype::f32, dtype::bf16}) {
        Tensor y(t, {tokens, rows});
        apply_mixed(f, name, x, rw, y, mo);
        check_close(y.view(), mixed_reference(*m, name, mo.bias, x, rw), unit_roundoff(t) + 1e-5, 2e-5,
                    name + " " + m->metadata().at("compressor"));
      }
    }
  }
}

TEST_CASE("mixed-batch apply with bf16 activations and bf16 θ*: bf16 dot products and widened both equal the fusion") {
  // With bf16 X and θ*, the plain layer X θ*ᵀ runs on bf16 operands (no widened copy) where the CPU has bf16 dot
  // products: each product is exact in f32 and the sums are f32, so with f32 factors it equals the per-row fusion
  // of the stored values within f32 summation error, as the widened path does. With bf16 factor products (the
  // fuser's FactorPrecision::bf16, automatic's choice for a bf16 θ* where the CPU has dot products), B, A and
  // Z = (X B) ⊙ Ŵ are each rounded to bf16 once: within 3·2^-8 of Σ_t,q |w_t z_q a_rq| of it.
  const SmallModel sm = small_model(47, kTasks);
  std::mt19937_64 rng(12);
  const TwinModel m = build(sm, SvdCompressor::with_rank(3), dtype::bf16);
  REQUIRE(m.shared().at("layer.0.attn.w").dtype() == dtype::bf16);
  const std::int64_t tokens = 37, n = 32, rows = 48;
  const Tensor x = random_tensor(rng, dtype::bf16, {tokens, n});
  const DynamicFuser router(m);  // only its routing weights are used
  std::vector<float> rw;
  for (std::int64_t i = 0; i < tokens; ++i) {
    const auto wi = router.weights(random_logits(rng, kTasks));
    rw.insert(rw.end(), wi.begin(), wi.end());
  }
  MixedApplyOptions mo;
  mo.bias = "layer.0.attn.b";
  const std::string name = "layer.0.attn.w";
  const std::vector<double> ref = mixed_reference(m, name, mo.bias, x, rw);
  // S[i·rows + r] = Σ_t,q |w_it z_itq a_rq|, z_itq = Σ_c x_ic b_cq (the low-rank terms' magnitudes).
  std::vector<double> S(static_cast<std::size_t>(tokens * rows), 0.0);
  const auto xv = to_f64_vector(x.view());
  for (std::size_t t = 0; t < kTasks; ++t) {
    const ExclusiveModule& mod = m.at(name).modules[t];
    const std::int64_t r = mod.rank();
    std::vector<float> a, b;
    mod.factors_f32(a, b);
    for (std::int64_t i = 0; i < tokens; ++i)
      for (std::int64_t q = 0; q < r; ++q) {
        double z = 0;
        for (std::int64_t c = 0; c < n; ++c)
          z += xv[static_cast<std::size_t>(i * n + c)] * b[static_cast<std::size_t>(c * r + q)];
        const double wz = std::abs(rw[static_cast<std::size_t>(i) * kTasks + t] * z);
        for (std::int64_t o = 0; o < rows; ++o)
          S[static_cast<std::size_t>(i * rows + o)] += wz * std::abs(a[static_cast<std::size_t>(o * r + q)]);
      }
  }
  const bool dots = backend::cpu::bf16_dot_products();
  MESSAGE("bf16 dot products on this machine: " << std::string(dots ? "yes" : "no (that half runs widened)"));
  for (const FactorPrecision fp : {FactorPrecision::f32, FactorPrecision::bf16})
    for (const bool allow : {true, false}) {
      CAPTURE(allow);
      CAPTURE(fp == FactorPrecision::bf16);
      backend::cpu::set_bf16_dot_products(allow);
      FuseOptions fo;
      fo.factors = fp;
      const DynamicFuser f(m, fo);
      for (const dtype t : {dtype::f32, dtype::bf16}) {
        Tensor y(t, {tokens, rows});
        apply_mixed(f, name, x, rw, y, mo);
        if (fp == FactorPrecision::f32) {
          check_close(y.view(), ref, unit_roundoff(t) + 1e-5, 2e-5, "bf16 x, f32 factors");
          continue;
        }
        std::int64_t bad = 0;
        for (std::size_t k = 0; k < ref.size(); ++k) {
          const double tol = 3.0 * std::ldexp(S[k], -8) + (unit_roundoff(t) + 1e-5) * std::abs(ref[k]) + 2e-5;
          bad += !(std::abs(element_f64(y.view(), static_cast<std::int64_t>(k)) - ref[k]) <= tol);
        }
        CHECK(bad == 0);
      }
    }
  backend::cpu::set_bf16_dot_products(true);
  if (!dots) MESSAGE("SKIPPED: the bf16 dot-product half (no bf16 kernel in oneDNN here, or oneDNN not built in)");
}

TEST_CASE("mixed-batch apply skips a sign or dense task no row weighs and still equals the per-row fusion") {
  const SmallModel sm = small_model(43, kTasks);
  std::mt19937_64 rng(10);
  const TwinModel sign = build_with(sm, SignCompressor{0.5, true});
  const TwinModel dense = build_with(sm, DenseCompressor{});
  for (const TwinModel* m : {&sign, &dense}) {
    const DynamicFuser f(*m);
    const std::int64_t tokens = 6, n = 32, rows = 48;
    const Tensor x = random_tensor(rng, dtype::f32, {tokens, n});
    std::vector<float> rw;
    for (std::int64_t i = 0; i < tokens; ++i) {
      auto wi = f.weights(random_logits(rng, kTasks));
      wi[2] = 0.0f;  // no row weighs task 2
      rw.insert(rw.end(), wi.begin(), wi.end());
    }
    Tensor y(dtype::f32, {tokens, rows});
    apply_mixed(f, "layer.0.attn.w", x, rw, y);
    std::vector<double> ref;
    const auto xv = to_f64_vector(x.view());
    for (std::int64_t i = 0; i < tokens; ++i) {
      const std::vector<double> wi(rw.begin() + i * static_cast<std::int64_t>(kTasks),
                                   rw.begin() + (i + 1) * static_cast<std::int64_t>(kTasks));
      const auto W = reference_fusion(*m, "layer.0.attn.w", wi);
      for (std::int64_t r = 0; r < rows; ++r) {
        double acc = 0;
        for (std::int64_t c = 0; c < n; ++c)
          acc += W[static_cast<std::size_t>(r * n + c)] * xv[static_cast<std::size_t>(i * n + c)];
        ref.push_back(acc);
      }
    }
    check_close(y.view(), ref, 1e-5, 2e-5, m->metadata().at("compressor"));
  }
}

TEST_CASE("wrong logits length, unknown names, shape and dtype mismatches throw typed errors naming the tensor") {
  const SmallModel sm = small_model(42, kTasks);
  const TwinModel model = build(sm, SvdCompressor::with_rank(2));
  const DynamicFuser f(model);
  const std::vector<float> logits(kTasks, 0.0f), short_logits(kTasks - 1, 0.0f);
  auto out = outputs(model, dtype::f32);
  CHECK_THROWS_AS(f.fuse(out, short_logits), shape_error);
  CHECK_THROWS_AS(f.fuse_tensor("layer.0.attn.w", out.at("layer.0.attn.w"), short_logits), shape_error);
  auto message = [&](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const error& e) {
      return e.what();
    }
    return "";
  };
  std::map<std::string, Tensor> unknown;
  unknown.emplace("layer.9.w", Tensor(dtype::f32, {4, 4}));
  CHECK_THROWS_AS(f.fuse(unknown, logits), name_error);
  CHECK(message([&] { f.fuse(unknown, logits); }).find("layer.9.w") != std::string::npos);

  Tensor wrong(dtype::f32, {32, 48});
  CHECK_THROWS_AS(f.fuse_tensor("layer.0.attn.w", wrong, f.weights(logits)), shape_error);
  const std::string msg = message([&] { f.fuse_tensor("layer.0.attn.w", wrong, f.weights(logits)); });
  CHECK(msg.find("layer.0.attn.w") != std::string::npos);
  CHECK(msg.find("[48, 32]") != std::string::npos);
  CHECK(msg.find("[32, 48]") != std::string::npos);

  Tensor ints(dtype::i32, {48, 32});
  CHECK_THROWS_AS(f.fuse_tensor("layer.0.attn.w", ints, f.weights(logits)), dtype_error);
  CHECK(message([&] { f.fuse_tensor("layer.0.attn.w", ints, f.weights(logits)); }).find("layer.0.attn.w") !=
        std::string::npos);

  const Tensor x(dtype::f32, {3, 31});
  Tensor y(dtype::f32, {3, 48});
  const std::vector<float> rw(3 * kTasks, 0.25f);
  CHECK_THROWS_AS(apply_mixed(f, "layer.0.attn.w", x, rw, y), shape_error);
  CHECK_THROWS_AS(apply_mixed(f, "layer.0.attn.b", x, rw, y), shape_error);
  CHECK_THROWS_AS(DynamicFuser(model, FuseOptions{RoutingOptions{0.0, 0, 0.0}, 0}), argument_error);
}

TEST_CASE("threshold routing drops small weights, renormalizes, and keeps the top task") {
  RoutingOptions o;
  o.threshold = 0.2;
  const std::vector<float> logits{2.0f, 1.9f, -1.0f, 0.0f};
  const auto w = routing_weights(logits, o);
  const auto full = reference_weights(logits);
  CHECK(w[2] == 0.0f);
  CHECK(w[3] == 0.0f);
  CHECK(w[0] == doctest::Approx(full[0] / (full[0] + full[1])));
  o.threshold = 1.0;
  const auto one = routing_weights(logits, o);
  CHECK(one == std::vector<float>{1.0f, 0.0f, 0.0f, 0.0f});
}

TEST_CASE("group-wise fusion with as many groups as inputs equals per-input fusion") {
  const SmallModel sm = small_model(43, kTasks);
  const TwinModel model = build(sm, SvdCompressor::with_rank(3));
  const DynamicFuser f(model);
  std::mt19937_64 rng(10);
  const std::size_t N = 12;
  std::vector<float> logits;
  for (std::size_t i = 0; i < N; ++i) {
    const auto l = random_logits(rng, kTasks);
    logits.insert(logits.end(), l.begin(), l.end());
  }
  GroupingOptions go;
  go.max_groups = static_cast<std::int64_t>(N);
  const auto groups = group_inputs(logits, kTasks, go);
  REQUIRE(groups.size() == N);
  for (const InputGroup& g : groups) {
    REQUIRE(g.members.size() == 1);
    const std::size_t i = static_cast<std::size_t>(g.members[0]);
    const std::span<const float> li(logits.data() + i * kTasks, kTasks);
    CHECK(g.task == static_cast<std::size_t>(std::max_element(li.begin(), li.end()) - li.begin()));
    auto per_input = outputs(model, dtype::f32), grouped = outputs(model, dtype::f32);
    f.fuse(per_input, li);
    f.fuse_with_weights(grouped, g.weights);
    for (const auto& [name, t] : per_input) CHECK(same_bits(t, grouped.at(name)));
  }
}

TEST_CASE("group-wise fusion partitions the batch within argmax bins, deterministically, and averages weights") {
  std::mt19937_64 rng(11);
  const std::size_t T = 3, N = 300;
  // three tight clusters inside bin 0 and two in bin 2
  const std::vector<std::vector<float>> centers{{3, 0, 0}, {3, 2, 0}, {3, 0, 2.5f}, {0, 0, 3}, {1.5f, 0, 3}};
  std::normal_distribution<float> nd(0.0f, 0.05f);
  std::vector<float> logits;
  for (std::size_t i = 0; i < N; ++i) {
    const auto& c = centers[i % centers.size()];
    for (std::size_t t = 0; t < T; ++t) logits.push_back(c[t] + nd(rng));
  }
  GroupingOptions go;
  go.max_groups = 5;
  go.seed = 3;
  const auto groups = group_inputs(logits, T, go);
  const auto again = group_inputs(logits, T, go);
  REQUIRE(groups.size() == 5);
  std::vector<int> seen(N, 0);
  for (std::size_t g = 0; g < groups.size(); ++g) {
    CHECK(groups[g].members == again[g].members);
    CHECK(groups[g].weights == again[g].weights);
    // the clusters are recovered: every member comes from one centre
    const std::size_t c0 = static_cast<std::size_t>(groups[g].members[0]) % centers.size();
    std::vector<double> mean(T, 0.0);
    for (const std::int64_t i : groups[g].members) {
      ++seen[static_cast<std::size_t>(i)];
      CHECK(static_cast<std::size_t>(i) % centers.size() == c0);
      const std::span<const float> li(logits.data() + static_cast<std::size_t>(i) * T, T);
      CHECK(groups[g].task == static_cast<std::size_t>(std::max_element(li.begin(), li.end()) - li.begin()));
      const auto w = reference_weights(std::vector<float>(li.begin(), li.end()));
      for (std::size_t t = 0; t < T; ++t) mean[t] += w[t] / static_cast<double>(groups[g].members.size());
    }
    for (std::size_t t = 0; t < T; ++t) CHECK(groups[g].weights[t] == doctest::Approx(mean[t]).epsilon(1e-5));
  }
  for (const int s : seen) CHECK(s == 1);
  go.max_groups = 1;  // still one group per non-empty bin
  CHECK(group_inputs(logits, T, go).size() == 2);
  CHECK_THROWS_AS(group_inputs(std::span<const float>(logits).first(7), T, go), shape_error);
}

// ---------------------------------------------------------------------------
// The host seam as engines use it.

namespace {
// libtorch's OrderedDict<std::string, at::Tensor> items: key() and value(),
// and a value that is a shared handle (written through const).
using TorchLikeTensor = SharedHandle;
struct TorchLikeItem {
  std::string k;
  TorchLikeTensor v;
  const std::string& key() const { return k; }
  const TorchLikeTensor& value() const { return v; }
};
}  // namespace

TEST_CASE(
    "fuse takes engine containers: key()/value() items of handles, maps, tuples, and fuse_tensor on a const handle") {
  const SmallModel sm = small_model(44, kTasks);
  const TwinModel model = build(sm, SvdCompressor::with_rank(3));
  const DynamicFuser f(model);
  std::mt19937_64 rng(7);
  const std::vector<float> logits = random_logits(rng, kTasks);
  const auto w = reference_weights(logits);
  const std::string a = "layer.0.mlp.w", b = "layer.0.norm";
  auto handle = [&](const std::string& n) {
    const auto shape = model.at(n).shape.span();
    return TorchLikeTensor{std::make_shared<std::vector<float>>(static_cast<std::size_t>(checked_numel(shape))),
                           {shape.begin(), shape.end()}};
  };
  // named_parameters() returns the dict by value: a temporary range.
  auto named_parameters = [&] { return std::vector<TorchLikeItem>{{a, handle(a)}, {b, handle(b)}}; };
  const std::vector<TorchLikeItem> params = named_parameters();
  f.fuse(params, logits);
  for (const auto& item : params)
    check_close(adapt(item.value()), reference_fusion(model, item.key(), w), 1e-5, 2e-6, item.key());
  f.fuse(named_parameters(), logits);  // compiles and runs on an rvalue range too

  // One tensor through a const reference to a handle.
  const TorchLikeTensor one = handle(a);
  f.fuse_tensor(a, one, f.weights(logits));
  check_close(adapt(one), reference_fusion(model, a, w), 1e-5, 2e-6, "fuse_tensor on const handle");

  // Tuples and std::map of Tensors.
  std::map<std::string, Tensor> m;
  m.emplace(a, Tensor(dtype::f32, model.at(a).shape.span()));
  f.fuse(m, logits);
  check_close(m.at(a).view(), reference_fusion(model, a, w), 1e-5, 2e-6, "std::map");
  Tensor tt(dtype::f32, model.at(b).shape.span());
  std::vector<std::tuple<std::string, TensorView>> tuples{{b, tt.view()}};
  f.fuse(tuples, logits);
  check_close(tt.view(), reference_fusion(model, b, w), 1e-5, 2e-6, "tuple");
}

TEST_CASE("logits come from any contiguous float range or a host tensor of T values in any float dtype") {
  const SmallModel sm = small_model(45, kTasks);
  const TwinModel model = build(sm, SvdCompressor::with_rank(2));
  const DynamicFuser f(model);
  const std::vector<float> v{0.5f, -1.0f, 2.0f, 0.25f};
  const std::vector<float> ref = f.weights(std::span<const float>(v));
  const std::array<float, 4> arr{0.5f, -1.0f, 2.0f, 0.25f};
  CHECK(f.weights(arr) == ref);
  CHECK(f.weights({0.5f, -1.0f, 2.0f, 0.25f}) == ref);
  const Tensor t = Tensor::from_f32(v, std::vector<std::int64_t>{4});
  CHECK(f.weights(t) == ref);
  const Tensor row = Tensor::from_f32(v, std::vector<std::int64_t>{1, 4});
  CHECK(f.weights(row) == ref);
  // The values above are exact in bf16, so bf16 logits give the same weights.
  const Tensor b16 = Tensor::from_f32(v, std::vector<std::int64_t>{4}, dtype::bf16);
  CHECK(f.weights(b16.view()) == ref);
  const std::string name = "layer.0.attn.w";
  Tensor o1(dtype::f32, model.at(name).shape.span()), o2(dtype::f32, model.at(name).shape.span());
  std::vector<std::pair<std::string, Tensor&>> m1{{name, o1}}, m2{{name, o2}};
  f.fuse(m1, {0.5f, -1.0f, 2.0f, 0.25f});
  f.fuse(m2, b16);
  CHECK(same_bits(o1, o2));
  // Wrong sizes and shapes name the problem.
  const Tensor five = Tensor::from_f32(std::vector<float>(5, 0.0f), std::vector<std::int64_t>{5});
  CHECK(error_of<shape_error>([&] { (void)f.weights(five); }).find("expected 4 values") != std::string::npos);
  const Tensor grid = Tensor::from_f32(std::vector<float>(8, 0.0f), std::vector<std::int64_t>{2, 4});
  CHECK(error_of<shape_error>([&] { (void)f.weights(grid); }).find("[2, 4]") != std::string::npos);
  const Tensor ints(dtype::i32, {4});
  CHECK_THROWS_AS((void)f.weights(ints), dtype_error);
}

TEST_CASE("fusing into an output whose elements share memory (an expanded view) is refused") {
  const SmallModel sm = small_model(46, kTasks);
  const TwinModel model = build(sm, SvdCompressor::with_rank(2));
  const DynamicFuser f(model);
  const std::string name = "layer.0.mlp.w";  // [32, 48]
  std::vector<float> row(48, 0.0f);
  const std::int64_t shape[2] = {32, 48}, strides[2] = {0, 1};
  const TensorView expanded(row.data(), dtype::f32, shape, strides);
  const std::vector<float> logits(kTasks, 0.0f);
  const std::string e = error_of<shape_error>([&] { f.fuse_tensor(name, expanded, f.weights(logits)); });
  CHECK(e.find("'layer.0.mlp.w'") != std::string::npos);
  CHECK(e.find("share memory") != std::string::npos);
}

TEST_CASE("mixed-batch apply refuses an output that shares memory with itself or with the input") {
  // layer.0.attn.w is [48, 32]: x [tokens, 32], y [tokens, 48]. A square layer would let y be x itself; here y
  // overlaps x's memory through a view of one buffer, which the f32 path would read while writing.
  const SmallModel sm = small_model(47, kTasks);
  const TwinModel model = build(sm, SvdCompressor::with_rank(2));
  const DynamicFuser f(model);
  const std::string name = "layer.0.attn.w";
  const std::vector<float> rw(3 * kTasks, 1.0f / kTasks);
  std::vector<float> buf(3 * 48, 0.5f);
  const std::int64_t xs[2] = {3, 32}, ys[2] = {3, 48}, expanded[2] = {0, 1};
  const ConstTensorView x(buf.data(), dtype::f32, xs);
  const std::string shared =
      error_of<argument_error>([&] { apply_mixed(f, name, x, rw, TensorView(buf.data(), dtype::f32, ys)); });
  CHECK(shared.find("shares memory with the input") != std::string::npos);
  std::vector<float> xo(3 * 32, 0.5f), row(48, 0.0f);
  const std::string exp = error_of<shape_error>([&] {
    apply_mixed(f, name, ConstTensorView(xo.data(), dtype::f32, xs), rw,
                TensorView(row.data(), dtype::f32, ys, expanded));
  });
  CHECK(exp.find("share memory") != std::string::npos);
  // Apart, the same buffers are fine.
  std::vector<float> yo(3 * 48);
  apply_mixed(f, name, ConstTensorView(xo.data(), dtype::f32, xs), rw, TensorView(yo.data(), dtype::f32, ys));
}

TEST_CASE("views of device memory are refused by name where the CPU code would read them: merge, router, mixed batch") {
  // Host memory labelled as CUDA device 0 (as a DLPack kDLCUDA tensor arrives): refused before any read.
  std::vector<float> a(12, 1.0f), b(12, 2.0f), o(12, 0.0f);
  const std::int64_t sh[2] = {3, 4};
  const device gpu{device::cuda, 0};
  const ConstTensorView host(a.data(), dtype::f32, sh), on_gpu(b.data(), dtype::f32, sh, {}, gpu);
  const std::vector<ConstTensorView> ex = {on_gpu};
  const std::string m = error_of<argument_error>([&] {
    TaskArithmetic{1.0, {}}.merge_tensor(TensorMergeArgs{"w", host, ex, TensorView(o.data(), dtype::f32, sh)});
  });
  CHECK(m.find("expert 0 tensor 'w' is on CUDA device 0") != std::string::npos);
  CHECK(o == std::vector<float>(12, 0.0f));

  Router r(RouterConfig{4, 3, 8, 2, 0.0, 0.01});
  const std::string e = error_of<argument_error>([&] { (void)r.logits(on_gpu); });
  CHECK(e.find("embeddings is on CUDA device 0") != std::string::npos);
  CHECK(r.logits(host).numel() == 3 * 3);  // the same values from host memory

  const SmallModel sm = small_model(48, kTasks);
  const TwinModel model = build(sm, SvdCompressor::with_rank(2));
  const DynamicFuser f(model);
  std::vector<float> xv(2 * 32, 0.1f), yv(2 * 48);
  const std::int64_t xs[2] = {2, 32}, ys[2] = {2, 48};
  const std::vector<float> rw(2 * kTasks, 1.0f / kTasks);
  const std::string mx = error_of<argument_error>([&] {
    apply_mixed(f, "layer.0.attn.w", ConstTensorView(xv.data(), dtype::f32, xs, {}, gpu), rw,
                TensorView(yv.data(), dtype::f32, ys));
  });
  CHECK(mx.find("mixed-batch input for tensor 'layer.0.attn.w' is on CUDA device 0") != std::string::npos);
}
