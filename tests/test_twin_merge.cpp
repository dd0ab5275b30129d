// twin-merge from the outside: `merge` gives what the library call gives, and
// every kind of bad input ends with status != 0, one `error:` line naming the
// file and the problem, and no output file.
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "test_support.hpp"
#include "twin/compress/sign_compressor.hpp"
#include "twin/compress/svd_compressor.hpp"
#include "twin/fuse/dynamic_fuser.hpp"
#include "twin/io/safetensors.hpp"
#include "twin/io/twin_model_file.hpp"
#include "twin/model/budget.hpp"
#include "twin/route/router_training.hpp"

namespace fs = std::filesystem;
using namespace twin;

namespace {

struct Run {
  int status;
  std::string err, out;
};

// Runs twin-merge with `args`, capturing stdout and stderr.
Run twin_merge(const std::string& args) {
  const fs::path dir = fs::temp_directory_path();
  const fs::path o = dir / "twin_cli_stdout.txt", e = dir / "twin_cli_stderr.txt";
  const std::string cmd = std::string(TWIN_MERGE_EXE) + " " + args + " >" + o.string() + " 2>" + e.string();
  const int rc = std::system(cmd.c_str());
  auto slurp = [](const fs::path& p) {
    std::ifstream f(p);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  };
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, slurp(e), slurp(o)};
}

// A scratch folder with a base and three experts of a small two-tensor model.
struct Workspace {
  fs::path dir;
  StateDict base;
  std::vector<StateDict> experts;
  Workspace() {
    dir = fs::temp_directory_path() / ("twin_cli_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::mt19937_64 rng(51);
    base.insert("enc.weight", twin_test::random_tensor(rng, dtype::f32, {24, 16}));
    base.insert("enc.bias", twin_test::random_tensor(rng, dtype::f32, {24}));
    base.insert("classifier.weight", twin_test::random_tensor(rng, dtype::f32, {3, 24}));
    save_safetensors(dir / "base.safetensors", base);
    for (int i = 0; i < 3; ++i) {
      StateDict e;
      // The last expert is stored in bf16: experts in another float dtype are converted.
      for (const auto& [name, t] : base)
        e.insert(name, twin_test::perturbed(rng, t, 0.1, i == 2 ? dtype::bf16 : dtype::f32));
      save_safetensors(dir / ("e" + std::to_string(i) + ".safetensors"), e);
      experts.push_back(std::move(e));
    }
  }
  ~Workspace() { fs::remove_all(dir); }
  std::string p(const std::string& f) const { return (dir / f).string(); }
  std::string inputs() const {
    return "--base " + p("base.safetensors") + " --expert " + p("e0.safetensors") + " --expert " + p("e1.safetensors") +
           " --expert " + p("e2.safetensors");
  }
};

}  // namespace

TEST_CASE("cli merge equals the library call with the same settings") {
  Workspace w;
  const Run r = twin_merge("merge --method ties --density 0.4 --scaling 0.8 --exclude 'classifier.*' " + w.inputs() +
                           " -o " + w.p("out.safetensors"));
  INFO(r.err);
  REQUIRE(r.status == 0);
  const LoadedCheckpoint got = load_safetensors(w.p("out.safetensors"));
  std::vector<const StateDict*> ex;
  for (const auto& e : w.experts) ex.push_back(&e);
  MergeOptions o;
  o.exclude = {"classifier.*"};
  const StateDict ref = merge_state(Ties{0.4, 0.8, TopKScope::per_tensor, {}}, w.base, ex, o);
  CHECK(got.tensors.names() == ref.names());
  for (const auto& [name, t] : ref) CHECK(twin_test::same_bits(got.tensors.at(name).clone(), t));
  CHECK(got.metadata.at("twin.merge.method") == "ties");
  CHECK(got.metadata.at("format") == "pt");  // transformers refuses metadata without it
  CHECK(r.err.find("warning") == std::string::npos);
  // A pattern matches whole names: 'classifier' matches none, which is said (the merge still runs).
  const Run frag =
      twin_merge("merge --method ties --exclude classifier " + w.inputs() + " -o " + w.p("frag.safetensors"));
  CHECK(frag.status == 0);
  CHECK(frag.err.find("warning: --exclude 'classifier' matches no tensor of the base") != std::string::npos);

  // The official code's rules, global scope.
  const Run g =
      twin_merge("merge --method ties --density 0.4 --scope global --selection kthvalue --zero-sign majority " +
                 w.inputs() + " -o " + w.p("official.safetensors"));
  INFO(g.err);
  REQUIRE(g.status == 0);
  Ties official{0.4, 1.0, TopKScope::global, {}};
  official.selection = TopKSelection::kthvalue;
  official.zero_sign = ZeroSign::majority;
  const StateDict oref = merge_state(official, w.base, ex, MergeOptions{});
  const LoadedCheckpoint og = load_safetensors(w.p("official.safetensors"));
  for (const auto& [name, t] : oref) CHECK(twin_test::same_bits(og.tensors.at(name).clone(), t));

  // mergekit's interpolating methods: model_stock (per row), slerp (the base and one expert).
  const Run ms = twin_merge("merge --method model_stock --filter-wise " + w.inputs() + " -o " + w.p("ms.safetensors"));
  INFO(ms.err);
  REQUIRE(ms.status == 0);
  const StateDict msref = merge_state(ModelStock{true}, w.base, ex, MergeOptions{});
  const LoadedCheckpoint msg = load_safetensors(w.p("ms.safetensors"));
  for (const auto& [name, t] : msref) CHECK(twin_test::same_bits(msg.tensors.at(name).clone(), t));
  CHECK(msg.metadata.at("twin.merge.filter_wise") == "true");
  const Run sl = twin_merge("merge --method slerp --t 0.3 --base " + w.p("base.safetensors") + " --expert " +
                            w.p("e2.safetensors") + " -o " + w.p("slerp.safetensors"));
  INFO(sl.err);
  REQUIRE(sl.status == 0);
  const StateDict* e2[] = {&w.experts[2]};
  const StateDict slref = merge_state(Slerp{0.3}, w.base, e2, MergeOptions{});
  const LoadedCheckpoint slg = load_safetensors(w.p("slerp.safetensors"));
  for (const auto& [name, t] : slref) CHECK(twin_test::same_bits(slg.tensors.at(name).clone(), t));
}

TEST_CASE("cli merge writes the requested dtype and --help documents every subcommand") {
  Workspace w;
  const Run r = twin_merge("merge --method task_arithmetic --scaling 0.3 --dtype bf16 " + w.inputs() + " -o " +
                           w.p("bf.safetensors"));
  REQUIRE(r.status == 0);
  CHECK(load_safetensors(w.p("bf.safetensors")).tensors.at("enc.weight").dtype() == dtype::bf16);
  // PyTorch's and mergekit's spellings name the same dtypes; an integer dtype is refused as not a float.
  REQUIRE(twin_merge("merge --method task_arithmetic --scaling 0.3 --dtype bfloat16 " + w.inputs() + " -o " +
                     w.p("bf2.safetensors"))
              .status == 0);
  CHECK(twin_test::same_bits(load_safetensors(w.p("bf2.safetensors")).tensors.at("enc.weight").clone(),
                             load_safetensors(w.p("bf.safetensors")).tensors.at("enc.weight").clone()));
  const Run i32 =
      twin_merge("merge --method task_arithmetic --dtype I32 " + w.inputs() + " -o " + w.p("i.safetensors"));
  CHECK(i32.status == 1);
  CHECK(i32.err.find("'I32' is not an output dtype") != std::string::npos);
  const Run h = twin_merge("--help");
  CHECK(h.status == 0);
  CHECK(h.out.find("merge") != std::string::npos);
  CHECK(h.out.find("inspect") != std::string::npos);
  const Run hm = twin_merge("merge --help");
  CHECK(hm.out.find("--density") != std::string::npos);
  const Run i = twin_merge("inspect " + w.p("bf.safetensors"));
  CHECK(i.status == 0);
  // A malformed command line exits 2 with the option named: a negative thread count is not "all cores".
  const Run nt = twin_merge("--threads -1 inspect " + w.p("bf.safetensors"));
  CHECK(nt.status == 2);
  CHECK(nt.err.find("--threads: Value -1 not in range 0 to 65536") != std::string::npos);
  CHECK(twin_merge("--threads 1 inspect " + w.p("bf.safetensors")).status == 0);
  CHECK(i.out.find("enc.weight") != std::string::npos);
  CHECK(i.out.find("BF16") != std::string::npos);
}

TEST_CASE("cli: every bad input fails with one error line naming the problem and leaves no output") {
  Workspace w;
  // Files with problems.
  {
    StateDict other = w.base.clone();
    other.erase("enc.bias");
    save_safetensors(w.dir / "missing.safetensors", other);
    StateDict wide;
    for (const auto& [name, t] : w.base)
      wide.insert(name, name == "enc.weight" ? Tensor(dtype::f32, {24, 17}) : t.clone());
    save_safetensors(w.dir / "wide.safetensors", wide);
    StateDict nan = w.base.clone();
    auto v = nan.at("enc.weight").values<float>();
    v[3] = std::nanf("");
    v[7] = INFINITY;
    save_safetensors(w.dir / "nan.safetensors", nan);
    std::ifstream in(w.dir / "e0.safetensors", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(w.dir / "truncated.safetensors", std::ios::binary)
        .write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
    std::ofstream(w.dir / "garbage.safetensors", std::ios::binary) << "this is not a safetensors file at all";
  }
  const std::string out = w.p("out.safetensors");
  const std::string two = "--base " + w.p("base.safetensors") + " --expert " + w.p("e0.safetensors") + " --expert ";
  struct Case {
    std::string args, expect;
  };
  const Case cases[] = {
      {"merge " + two + w.p("missing.safetensors") + " -o " + out, "enc.bias"},
      {"merge " + two + w.p("wide.safetensors") + " -o " + out, "[24, 17]"},
      {"merge " + two + w.p("nan.safetensors") + " -o " + out, "2 NaN or Inf values"},
      {"merge --method ties --density 0.7 --density 0.7 " + two + w.p("e1.safetensors") + " -o " + out,
       "ties takes one --density for every expert, found 2"},
      {"merge " + two + w.p("truncated.safetensors") + " -o " + out, "truncated.safetensors"},
      {"merge " + two + w.p("garbage.safetensors") + " -o " + out, "garbage.safetensors"},
      {"merge " + two + w.p("nope.safetensors") + " -o " + out, "nope.safetensors"},
      {"merge --method slerpy " + w.inputs() + " -o " + out, "unknown merge method 'slerpy'"},
      {"merge --method ties --density 1.5 " + w.inputs() + " -o " + out, "density must be in [0, 1]"},
      {"merge --method ties --scope sideways " + w.inputs() + " -o " + out, "unknown top-k scope"},
      {"merge --method ties --selection topk " + w.inputs() + " -o " + out, "unknown top-k selection 'topk'"},
      {"merge --method ties --zero-sign minority " + w.inputs() + " -o " + out, "unknown zero sign 'minority'"},
      {"merge --method task_arithmetic --zero-sign majority " + w.inputs() + " -o " + out,
       "task_arithmetic takes no --zero-sign"},
      {"merge --method slerp " + w.inputs() + " -o " + out, "slerp needs --t"},
      {"merge --method slerp --t 0.5 " + w.inputs() + " -o " + out, "exactly one expert"},
      {"merge --method ties --t 0.5 " + w.inputs() + " -o " + out, "ties takes no --t"},
      {"merge --method model_stock --density 0.5 " + w.inputs() + " -o " + out, "model_stock takes no --density"},
      {"merge --weight 1 --weight 2 " + w.inputs() + " -o " + out, "2 weights given for 3 experts"},
      {"merge --dtype q4 " + w.inputs() + " -o " + out, "q4"},
      {"merge " + w.inputs() + " -o " + w.p("no/such/folder/out.safetensors"), "does not exist"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.args);
    const Run r = twin_merge(c.args);
    CHECK(r.status != 0);
    CHECK(r.err.rfind("error: ", 0) == 0);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK(r.err.find(c.expect) != std::string::npos);
    CHECK_FALSE(fs::exists(out));
    CAPTURE(r.err);
  }
  // A malformed command line is status 2.
  CHECK(twin_merge("merge --base").status == 2);
  CHECK(twin_merge("frobnicate").status == 2);
  // No temporary files are left in the folder either.
  for (const auto& e : fs::directory_iterator(w.dir))
    CHECK(e.path().filename().string().find(".tmp") == std::string::npos);
}

namespace {
// Router data: 3 well-separated clusters of 12-wide embeddings.
void write_router_data(const fs::path& p, int per_task, std::int64_t width, bool bad_label = false) {
  std::mt19937_64 rng(71);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Tensor emb(dtype::f32, {3 * per_task, width});
  Tensor lab(dtype::i64, {3 * per_task});
  auto e = emb.values<float>();
  auto l = lab.values<std::int64_t>();
  for (int i = 0; i < 3 * per_task; ++i) {
    l[static_cast<std::size_t>(i)] = i / per_task + (bad_label && i == 0 ? 7 : 0);
    for (std::int64_t j = 0; j < width; ++j)
      e[static_cast<std::size_t>(i * width + j)] = nd(rng) + (j == i / per_task ? 4.0f : 0.0f);
  }
  StateDict sd;
  sd.insert("embeddings", std::move(emb));
  sd.insert("labels", std::move(lab));
  save_safetensors(p, sd);
}
}  // namespace

TEST_CASE("cli build + fuse equal TwinModel::build + DynamicFuser, and route equals Router::logits") {
  Workspace w;
  write_router_data(w.dir / "emb.safetensors", 60, 12);
  Run r = twin_merge("train-router --data " + w.p("emb.safetensors") + " --epochs 20 --seed 3 -o " +
                     w.p("router.safetensors"));
  INFO(r.err);
  REQUIRE(r.status == 0);
  r = twin_merge("build --base " + w.p("base.safetensors") + " --expert x=" + w.p("e0.safetensors") +
                 " --expert y=" + w.p("e1.safetensors") + " --expert z=" + w.p("e2.safetensors") +
                 " --method task_arithmetic --scaling 0.3 --rank 3 --exclude 'classifier.*' --router " +
                 w.p("router.safetensors") + " -o " + w.p("model.safetensors"));
  REQUIRE(r.status == 0);
  r = twin_merge("fuse " + w.p("model.safetensors") + " --logits 0.5,-1,2 --temperature 0.7 -o " +
                 w.p("fused.safetensors"));
  REQUIRE(r.status == 0);
  // The library, by hand.
  TwinBuildOptions o;
  o.task_names = {"x", "y", "z"};
  o.exclude = {"classifier.*"};
  const TwinModel m = TwinModel::build(w.base, std::span<const StateDict>(w.experts), TaskArithmetic{0.3, {}},
                                       SvdCompressor::with_rank(3), o);
  FuseOptions fo;
  fo.routing.temperature = 0.7;
  const DynamicFuser fuser(m, fo);
  const float logits[] = {0.5f, -1.0f, 2.0f};
  const LoadedCheckpoint fused = load_safetensors(w.p("fused.safetensors"));
  for (const auto& e : m.entries()) {
    // Merged tensors in θ*'s dtype (f32); the excluded head is the top
    // task's copy as it is: task z's, stored in bf16.
    const dtype want = e.excluded ? dtype::bf16 : dtype::f32;
    CAPTURE(e.name);
    CHECK(fused.tensors.at(e.name).dtype() == want);
    Tensor ref(want, e.shape.span());
    fuser.fuse_tensor(e.name, ref, fuser.weights(logits));
    CHECK(twin_test::same_bits(fused.tensors.at(e.name).clone(), ref));
  }
  CHECK(fused.metadata.at("format") == "pt");
  // --svd-engine randomized (the range finder, even on matrices this small) builds what the library builds
  // with that engine and seed, not the exact SVD's factors.
  r = twin_merge("build --base " + w.p("base.safetensors") + " --expert x=" + w.p("e0.safetensors") +
                 " --expert y=" + w.p("e1.safetensors") + " --expert z=" + w.p("e2.safetensors") +
                 " --method task_arithmetic --scaling 0.3 --rank 3 --svd-engine randomized --svd-seed 5 "
                 "--exclude 'classifier.*' -o " +
                 w.p("rnd.safetensors"));
  INFO(r.err);
  REQUIRE(r.status == 0);
  SvdCompressor rc = SvdCompressor::with_rank(3);
  rc.engine = SvdEngine::randomized;
  rc.seed = 5;
  const TwinModel mr = TwinModel::build(w.base, std::span<const StateDict>(w.experts), TaskArithmetic{0.3, {}}, rc, o);
  const TwinModelFile fr = load_twin_model(w.p("rnd.safetensors"));
  const DynamicFuser lib(mr, fo), cli(fr.model, fo);
  bool differs_from_exact = false;
  for (const auto& e : mr.entries()) {
    Tensor a(dtype::f32, e.shape.span()), b(dtype::f32, e.shape.span()), x(dtype::f32, e.shape.span());
    lib.fuse_tensor(e.name, a, lib.weights(logits));
    cli.fuse_tensor(e.name, b, cli.weights(logits));
    fuser.fuse_tensor(e.name, x, fuser.weights(logits));
    CAPTURE(e.name);
    CHECK(twin_test::same_bits(a, b));
    differs_from_exact = differs_from_exact || !twin_test::same_bits(a, x);
  }
  CHECK(differs_from_exact);
  // route -o equals the router's own logits.
  r = twin_merge("route --router " + w.p("model.safetensors") + " --data " + w.p("emb.safetensors") + " -o " +
                 w.p("logits.safetensors"));
  REQUIRE(r.status == 0);
  const Router router = load_router(w.p("router.safetensors"));
  const LoadedCheckpoint emb = load_safetensors(w.p("emb.safetensors"));
  const Tensor ref = router.logits(emb.tensors.at("embeddings"));
  CHECK(twin_test::same_bits(load_safetensors(w.p("logits.safetensors")).tensors.at("logits").clone(),
                             ref.clone_as(dtype::f32)));
  // Printed form: one line of 3 logits per input.
  r = twin_merge("route --router " + w.p("router.safetensors") + " --data " + w.p("emb.safetensors"));
  CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 180);
  const Run ins = twin_merge("inspect " + w.p("model.safetensors"));
  CHECK(ins.out.find("twin model: 3 tasks: x y z") != std::string::npos);
  CHECK(ins.out.find("r=3") != std::string::npos);
}

TEST_CASE("cli train-router --lr-schedule linear --max-grad-norm trains the router train_router gives") {
  // The official router's Trainer schedule, from the command line and from
  // the library with the same options: the same weights, so the same logits.
  Workspace w;
  write_router_data(w.dir / "emb.safetensors", 40, 6);
  Run r = twin_merge("train-router --data " + w.p("emb.safetensors") +
                     " --epochs 6 --seed 4 --lr 0.01 --lr-schedule linear --max-grad-norm 0.5 -o " +
                     w.p("linear.safetensors"));
  INFO(r.err);
  REQUIRE(r.status == 0);
  r = twin_merge("train-router --data " + w.p("emb.safetensors") + " --epochs 6 --seed 4 --lr 0.01 -o " +
                 w.p("constant.safetensors"));
  REQUIRE(r.status == 0);
  const LoadedCheckpoint data = load_safetensors(w.p("emb.safetensors"));
  const Tensor& emb = data.tensors.at("embeddings");
  const std::vector<std::int64_t> labels = labels_from(data.tensors.at("labels").view());
  Router lib(RouterConfig{.input_dim = 6, .num_tasks = 3}, 4);
  RouterTrainOptions o;
  o.max_epochs = 6;
  o.seed = 4;
  o.adam.lr = 0.01;
  o.lr_schedule = LrSchedule::linear;
  o.max_grad_norm = 0.5;
  train_router(lib, emb, labels, o);
  const Tensor want = lib.logits(emb);
  CHECK(twin_test::same_bits(load_router(w.p("linear.safetensors")).logits(emb), want));
  CHECK_FALSE(twin_test::same_bits(load_router(w.p("constant.safetensors")).logits(emb), want));
  // --max-grad-norm alone is applied too: it matches the library with the
  // clipping only, and differs from the run without it.
  r = twin_merge("train-router --data " + w.p("emb.safetensors") +
                 " --epochs 6 --seed 4 --lr 0.01 --max-grad-norm 0.05 -o " + w.p("clipped.safetensors"));
  REQUIRE(r.status == 0);
  Router clipped(RouterConfig{.input_dim = 6, .num_tasks = 3}, 4);
  o.lr_schedule = LrSchedule::constant;
  o.max_grad_norm = 0.05;
  train_router(clipped, emb, labels, o);
  const Tensor got = load_router(w.p("clipped.safetensors")).logits(emb);
  CHECK(twin_test::same_bits(got, clipped.logits(emb)));
  CHECK_FALSE(twin_test::same_bits(got, load_router(w.p("constant.safetensors")).logits(emb)));
  r = twin_merge("train-router --data " + w.p("emb.safetensors") + " --lr-schedule cosine -o " + w.p("x.safetensors"));
  CHECK(r.status == 2);
  CHECK(r.err.find("--lr-schedule") != std::string::npos);
  r = twin_merge("train-router --data " + w.p("emb.safetensors") + " --max-grad-norm -1 -o " + w.p("x.safetensors"));
  CHECK(r.status == 2);
  CHECK_FALSE(fs::exists(w.p("x.safetensors")));
}

TEST_CASE("cli build keeps each task's excluded head at its own label count; fuse writes the top task's") {
  // GLUE-style experts: heads of 2, 3 and 1 labels beside a shared encoder.
  Workspace w;
  std::mt19937_64 rng(52);
  std::string experts;
  for (std::size_t i = 0; i < 3; ++i) {
    const std::int64_t labels[] = {2, 3, 1};
    w.experts[i].assign("classifier.weight", twin_test::random_tensor(rng, dtype::f32, {labels[i], 24}));
    save_safetensors(w.dir / ("h" + std::to_string(i) + ".safetensors"), w.experts[i]);
    experts += " --expert t" + std::to_string(i) + "=" + w.p("h" + std::to_string(i) + ".safetensors");
  }
  Run r = twin_merge("build --base " + w.p("base.safetensors") + experts +
                     " --method task_arithmetic --scaling 0.3 --rank 3 --exclude 'classifier.*' -o " +
                     w.p("heads.safetensors"));
  INFO(r.err);
  REQUIRE(r.status == 0);
  r = twin_merge("inspect " + w.p("heads.safetensors"));
  REQUIRE(r.status == 0);
  CHECK(r.out.find("[2, 24]") != std::string::npos);
  CHECK(r.out.find("[3, 24]") != std::string::npos);
  CHECK(r.out.find("[1, 24]") != std::string::npos);
  r = twin_merge("fuse " + w.p("heads.safetensors") + " --weights 0.2,0.7,0.1 -o " + w.p("fused.safetensors"));
  REQUIRE(r.status == 0);
  const LoadedCheckpoint fused = load_safetensors(w.p("fused.safetensors"));
  CHECK(twin_test::same_bits(fused.tensors.at("classifier.weight").clone(), w.experts[1].at("classifier.weight")));
  // A pretrained base without a head: each expert's is kept all the same.
  StateDict headless = w.base.clone();
  headless.erase("classifier.weight");
  save_safetensors(w.dir / "headless.safetensors", headless);
  r = twin_merge("build --base " + w.p("headless.safetensors") + experts +
                 " --method task_arithmetic --scaling 0.3 --rank 3 --exclude 'classifier.*' -o " +
                 w.p("hl.safetensors"));
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK(r.err.find("warning") == std::string::npos);
  r = twin_merge("fuse " + w.p("hl.safetensors") + " --weights 0.1,0.2,0.7 -o " + w.p("hl_fused.safetensors"));
  REQUIRE(r.status == 0);
  CHECK(twin_test::same_bits(load_safetensors(w.p("hl_fused.safetensors")).tensors.at("classifier.weight").clone(),
                             w.experts[2].at("classifier.weight")));
  // Without the exclusion the heads cannot be merged: refused, naming the tensor.
  r = twin_merge("build --base " + w.p("base.safetensors") + experts +
                 " --method task_arithmetic --scaling 0.3 --rank 3 -o " + w.p("bad.safetensors"));
  CHECK(r.status != 0);
  CHECK(r.err.find("classifier.weight") != std::string::npos);
  CHECK_FALSE(fs::exists(w.p("bad.safetensors")));
}

TEST_CASE("cli build with quantized factors + residual, sign modules, a budget: equal to the library's build") {
  Workspace w;
  const std::string experts = " --expert x=" + w.p("e0.safetensors") + " --expert y=" + w.p("e1.safetensors");
  TwinBuildOptions o;
  o.task_names = {"x", "y"};
  o.exclude = {"classifier.*"};
  const std::vector<StateDict> ex = [&] {
    std::vector<StateDict> v;
    for (int i = 0; i < 2; ++i) v.push_back(w.experts[static_cast<std::size_t>(i)].clone());
    return v;
  }();
  SvdCompressor q = SvdCompressor::with_rank(2);
  q.quant = QuantSpec{4, 8};
  q.residual_density = 0.05;
  BudgetOptions budget;
  budget.fraction = 0.05;
  for (QuantSpec& f : budget.formats)
    if (f.enabled()) f.group = 32;
  struct Variant {
    std::string flags;
    TwinModel model;
    std::string summary;
  };
  Variant vs[] = {
      {" --rank 2 --quant-bits 4 --quant-group 8 --residual-density 0.05",
       TwinModel::build(w.base, std::span<const StateDict>(ex), TaskArithmetic{0.3, {}}, q, o), "r=2 q4/8 nnz="},
      {" --sign-density 0.5 --sign-alpha tensor",
       TwinModel::build(w.base, std::span<const StateDict>(ex), TaskArithmetic{0.3, {}}, SignCompressor{0.5, false}, o),
       "signs="},
      {" --budget 0.05 --quant-group 32",
       build_within_budget(w.base, std::span<const StateDict>(ex), TaskArithmetic{0.3, {}}, budget, o), "r="}};
  for (Variant& v : vs) {
    CAPTURE(v.flags);
    const Run r = twin_merge("build --base " + w.p("base.safetensors") + experts +
                             " --method task_arithmetic --scaling 0.3 --exclude 'classifier.*'" + v.flags + " -o " +
                             w.p("packed.safetensors"));
    INFO(r.err);
    REQUIRE(r.status == 0);
    const TwinModelFile f = load_twin_model(w.p("packed.safetensors"));
    CHECK(f.model.metadata() == v.model.metadata());
    for (const auto& e : v.model.entries()) {
      if (e.excluded) continue;
      for (std::size_t t = 0; t < 2; ++t) {
        const auto pa = e.modules[t].parts(), pb = f.model.at(e.name).modules[t].parts();
        REQUIRE(pa.size() == pb.size());
        for (std::size_t i = 0; i < pa.size(); ++i) CHECK(twin_test::same_bits(*pa[i].second, *pb[i].second));
      }
    }
    const Run ins = twin_merge("inspect " + w.p("packed.safetensors"));
    CHECK(ins.out.find(v.summary) != std::string::npos);
  }
}

TEST_CASE("cli build, fuse, train-router and route refuse bad input with one error line and no output") {
  Workspace w;
  write_router_data(w.dir / "emb.safetensors", 20, 12);
  write_router_data(w.dir / "badlabel.safetensors", 20, 12, true);
  write_router_data(w.dir / "wide.safetensors", 5, 13);
  REQUIRE(twin_merge("train-router --data " + w.p("emb.safetensors") + " --epochs 2 -o " + w.p("router.safetensors"))
              .status == 0);
  const std::string experts = " --expert a=" + w.p("e0.safetensors") + " --expert b=" + w.p("e1.safetensors");
  REQUIRE(twin_merge("build --base " + w.p("base.safetensors") + experts + " --rank 2 -o " + w.p("model.safetensors"))
              .status == 0);
  const std::string out = w.p("out.safetensors");
  struct Case {
    std::string args, expect;
  };
  const Case cases[] = {
      {"build --base " + w.p("base.safetensors") + experts + " -o " + out,
       "one of --rank, --energy, --sparsify-density, --sign-density or --budget"},
      {"build --base " + w.p("base.safetensors") + experts + " --budget 0 -o " + out, "budget fraction"},
      {"build --base " + w.p("base.safetensors") + experts + " --sign-density 0.5 --quant-bits 4 -o " + out,
       "apply to SVD factors"},
      {"build --base " + w.p("base.safetensors") + experts + " --rank 2 --quant-bits 3 -o " + out, "--quant-bits"},
      {"build --base " + w.p("base.safetensors") + experts + " --sign-density 0 -o " + out, "must be in (0, 1]"},
      {"build --base " + w.p("base.safetensors") + " --expert " + w.p("e0.safetensors") + " --rank 2 -o " + out,
       "expected NAME=PATH"},
      {"build --base " + w.p("base.safetensors") + experts + " --rank 0 -o " + out, "rank must be at least 1"},
      {"build --base " + w.p("base.safetensors") + experts + " --sparsify-density 2 -o " + out, "must be in [0, 1]"},
      {"build --base " + w.p("base.safetensors") + " --expert a=" + w.p("e0.safetensors") +
           " --expert a=" + w.p("e1.safetensors") + " --rank 2 -o " + out,
       "task name 'a' is given twice"},
      {"fuse " + w.p("model.safetensors") + " --logits 1,2,3 -o " + out, "3 values for 2 tasks"},
      {"fuse " + w.p("model.safetensors") + " --weights 1,x -o " + out, "'x' is not a number"},
      {"fuse " + w.p("model.safetensors") + " -o " + out, "exactly one of --logits or --weights"},
      {"fuse " + w.p("base.safetensors") + " --logits 1,2 -o " + out, "not a twin model file"},
      {"train-router --data " + w.p("badlabel.safetensors") + " -o " + out, "label"},
      {"train-router --data " + w.p("base.safetensors") + " -o " + out, "no tensor 'embeddings'"},
      {"route --router " + w.p("router.safetensors") + " --data " + w.p("wide.safetensors") + " -o " + out,
       "width 13, the router expects 12"},
      {"route --router " + w.p("model.safetensors") + " --data " + w.p("emb.safetensors") + " -o " + out,
       "holds no router"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.args);
    const Run r = twin_merge(c.args);
    CAPTURE(r.err);
    CHECK(r.status != 0);
    CHECK(r.err.rfind("error: ", 0) == 0);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK(r.err.find(c.expect) != std::string::npos);
    CHECK_FALSE(fs::exists(out));
  }
}

namespace {
// A small llama-shaped model (4 layers) written as a folder with config.json,
// as mergekit reads them; experts are the base plus noise.
struct LayeredWorkspace {
  fs::path dir;
  StateDict base;
  std::vector<StateDict> experts;
  static std::vector<std::string> names() {
    std::vector<std::string> n = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"};
    for (int l = 0; l < 4; ++l) {
      n.push_back("model.layers." + std::to_string(l) + ".mlp.up_proj.weight");
      n.push_back("model.layers." + std::to_string(l) + ".self_attn.q_proj.weight");
    }
    return n;
  }
  LayeredWorkspace() {
    dir = fs::temp_directory_path() / ("twin_cli_yaml_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    std::mt19937_64 rng(77);
    for (const std::string& n : names()) base.insert(n, twin_test::random_tensor(rng, dtype::f32, {6, 10}));
    write("base", base);
    for (int i = 0; i < 2; ++i) {
      StateDict e;
      for (const auto& [name, t] : base) e.insert(name, twin_test::perturbed(rng, t, 0.05));
      write("e" + std::to_string(i), e);
      experts.push_back(std::move(e));
    }
  }
  void write(const std::string& model, const StateDict& sd) const {
    fs::create_directories(dir / model);
    save_safetensors(dir / model / "model.safetensors", sd);
    std::ofstream(dir / model / "config.json") << "{\"model_type\": \"llama\", \"num_hidden_layers\": 4}\n";
  }
  ~LayeredWorkspace() { fs::remove_all(dir); }
  std::string p(const std::string& f) const { return (dir / f).string(); }
  std::string config(const std::string& name, const std::string& text) const {
    std::ofstream(dir / name) << text;
    return p(name);
  }
};
}  // namespace

TEST_CASE(
    "cli run: a mergekit ties config with gradients and filters equals the library merge, sharded like mergekit") {
  LayeredWorkspace w;
  // In the style of mergekit's examples/ties.yml (written here), relative model paths.
  const std::string cfg = w.config("ties.yml", R"(merge_method: ties
base_model: base
models:
  - model: e0
    parameters:
      density: [1, 0.7, 0.1]
      weight: 1.0
  - model: e1
    parameters:
      density: 0.5
      weight:
        - filter: mlp
          value: [0, 0.3, 0.7, 1]
        - value: 0.4
parameters:
  normalize: true
  lambda: 0.9
dtype: float32
)");
  const Run r = twin_merge("run " + cfg + " -o " + w.p("out") + " --max-shard-size 2000");
  INFO(r.err);
  REQUIRE(r.status == 0);
  const LoadedCheckpoint got = load_safetensors(w.p("out/model.safetensors.index.json"));
  CHECK(fs::exists(w.p("out/mergekit_config.yml")));
  CHECK(fs::exists(w.p("out/model-00002-of-00002.safetensors")));  // 11 tensors of 240 bytes, 2000 per shard
  CHECK(got.tensors.size() == w.base.size());
  // The same merge through the API: per layer t = k/3, so layer 2 (t = 2/3) has e0 density
  // 0.7 + (1/3)(0.1 − 0.7) = 0.5 (x = 4/3 → i0 = 1, f = 1/3), e1's mlp weight 0.7 (x = 2 exactly).
  for (const std::string& n :
       {std::string("model.layers.2.mlp.up_proj.weight"), std::string("model.layers.2.self_attn.q_proj.weight"),
        std::string("model.embed_tokens.weight")}) {
    CAPTURE(n);
    const bool layer2 = n.find("layers.2") != std::string::npos, mlp = n.find("mlp") != std::string::npos;
    GeneralizedTaskArithmetic ties = *GeneralizedTaskArithmetic::mergekit("ties");
    ties.scaling = 0.9;
    const double d0 = layer2 ? 0.7 + (1.0 / 3.0) * (0.1 - 0.7) : 1.0;
    ties.densities = {d0, 0.5};
    ties.weights = {1.0, mlp ? 0.7 : 0.4};
    const std::vector<ConstTensorView> ev = {w.experts[0].at(n).view(), w.experts[1].at(n).view()};
    CHECK(twin_test::same_bits(got.tensors.at(n).clone(), twin::merge_tensor(ties, n, w.base.at(n).view(), ev)));
  }
}

TEST_CASE("cli run: slices stack layers (passthrough) and the output config.json counts them") {
  LayeredWorkspace w;
  const std::string cfg = w.config("stack.yml", R"(merge_method: passthrough
slices:
  - sources:
      - model: e0
        layer_range: [0, 3]
  - sources:
      - model: e1
        layer_range: [1, 4]
        parameters:
          scale:
            - filter: q_proj
              value: 0.5
            - value: 1.0
)");
  const Run r = twin_merge("run " + cfg + " -o " + w.p("stack"));
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK(r.err.find("warning") == std::string::npos);  // the q_proj filter matches
  const LoadedCheckpoint got = load_safetensors(w.p("stack/model.safetensors.index.json"));
  CHECK(got.tensors.size() == 3 + 6 * 2);
  // A filter with a typo matches nothing and leaves the fallback value: said on stderr, the merge still runs.
  const std::string typo = w.config("typo.yml", R"(merge_method: linear
models:
  - model: e0
    parameters:
      weight:
        - filter: mpl
          value: 2
        - value: 1
  - model: e1
    parameters: {weight: 1}
)");
  const Run ty = twin_merge("run " + typo + " -o " + w.p("typo"));
  CHECK(ty.status == 0);
  CHECK(ty.err.find("warning: filter 'mpl' of parameter 'weight' matches no tensor name") != std::string::npos);
  // Output layer 4 = e1's layer 2, q_proj halved; layer 1 = e0's layer 1 as is.
  CHECK(twin_test::same_bits(got.tensors.at("model.layers.1.mlp.up_proj.weight").clone(),
                             w.experts[0].at("model.layers.1.mlp.up_proj.weight")));
  const std::vector<double> q = to_f64_vector(w.experts[1].at("model.layers.2.self_attn.q_proj.weight").view());
  std::vector<double> half(q.size());
  for (std::size_t j = 0; j < q.size(); ++j) half[j] = static_cast<float>(q[j]) * 0.5f;
  twin_test::check_close(got.tensors.at("model.layers.4.self_attn.q_proj.weight").view(), half, 0, 0);
  CHECK(twin_test::same_bits(got.tensors.at("model.norm.weight").clone(), w.experts[1].at("model.norm.weight")));
  std::ifstream cj(w.p("stack/config.json"));
  std::stringstream ss;
  ss << cj.rdbuf();
  CHECK(ss.str().find("\"num_hidden_layers\": 6") != std::string::npos);

  // A base_model that no slice lists (named for its config.json): passthrough and linear merge the slices'
  // sources without it, as mergekit does; the written config.json takes the base's and mergekit's torch_dtype
  // (out_dtype, else dtype). A method that reads the base refuses the slice.
  const std::string named = w.config("named.yml", R"(merge_method: passthrough
base_model: base
dtype: bfloat16
slices:
  - sources:
      - model: e0
        layer_range: [0, 2]
  - sources:
      - model: e1
        layer_range: [2, 4]
)");
  // The base's tokenizer files are copied as mergekit copies them (its list; other files stay).
  std::ofstream(w.p("base/tokenizer_config.json")) << "{\"model_max_length\": 64}\n";
  std::ofstream(w.p("base/tokenizer.json")) << "{\"version\": \"1.0\", \"model\": {\"type\": \"BPE\"}}\n";
  std::ofstream(w.p("base/notes.txt")) << "not a tokenizer file\n";
  const Run n = twin_merge("run " + named + " -o " + w.p("named") + "/");  // a trailing '/' names the same folder
  INFO(n.err);
  REQUIRE(n.status == 0);
  auto text = [](const std::string& f) {
    std::ifstream in(f, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  CHECK(text(w.p("named/tokenizer.json")) == text(w.p("base/tokenizer.json")));
  CHECK(text(w.p("named/tokenizer_config.json")) == text(w.p("base/tokenizer_config.json")));
  CHECK_FALSE(fs::exists(w.p("named/notes.txt")));
  const Run nt = twin_merge("run " + named + " --no-copy-tokenizer -o " + w.p("named_bare"));
  REQUIRE(nt.status == 0);
  CHECK(fs::exists(w.p("named_bare/config.json")));
  CHECK_FALSE(fs::exists(w.p("named_bare/tokenizer.json")));
  const LoadedCheckpoint ng = load_safetensors(w.p("named/model.safetensors.index.json"));
  const std::string l3 = "model.layers.3.self_attn.q_proj.weight";
  CHECK(ng.tensors.at(l3).dtype() == dtype::bf16);
  CHECK(twin_test::same_bits(ng.tensors.at(l3).clone(), w.experts[1].at(l3).clone_as(dtype::bf16)));
  std::ifstream nj(w.p("named/config.json"));
  std::stringstream ns;
  ns << nj.rdbuf();
  CHECK(ns.str().find("\"torch_dtype\": \"bfloat16\"") != std::string::npos);
  CHECK(ns.str().find("\"num_hidden_layers\": 4") != std::string::npos);
  // A second run into the folder removes what a loader could take for the checkpoint instead (a
  // model.safetensors, an earlier run's shards), as huggingface_hub does before it saves; other files stay.
  fs::copy_file(w.p("named/model-00001-of-00001.safetensors"), w.p("named/model.safetensors"));
  fs::copy_file(w.p("named/model-00001-of-00001.safetensors"), w.p("named/model-00002-of-00002.safetensors"));
  fs::copy_file(w.p("named/model-00001-of-00001.safetensors"), w.p("named/model-of-experts.safetensors"));
  std::ofstream(w.p("named/README.md")) << "notes\n";
  REQUIRE(twin_merge("run " + named + " -o " + w.p("named")).status == 0);
  CHECK_FALSE(fs::exists(w.p("named/model.safetensors")));
  CHECK_FALSE(fs::exists(w.p("named/model-00002-of-00002.safetensors")));
  CHECK(fs::exists(w.p("named/model-of-experts.safetensors")));  // not a shard name: a user's file
  CHECK(fs::exists(w.p("named/README.md")));
  // An input's own folder is refused as the output (its checkpoint would be replaced), before any work.
  const Run into = twin_merge("run " + named + " -o " + w.p("e1"));
  CHECK(into.status == 1);
  CHECK(into.err.find("is the folder of input model") != std::string::npos);
  CHECK(fs::exists(w.p("e1/model.safetensors")));
  CHECK(load_safetensors(w.p("named")).tensors.size() == ng.tensors.size());
  const std::string ties = w.config("ties_slices.yml", R"(merge_method: ties
base_model: base
slices:
  - sources:
      - model: e0
        layer_range: [0, 2]
        parameters: {weight: 1, density: 0.5}
)");
  const Run t = twin_merge("run " + ties + " -o " + w.p("ties_slices"));
  CHECK(t.status == 1);
  CHECK(t.err.find("the base model") != std::string::npos);
  CHECK(t.err.find("is not among the slice's sources") != std::string::npos);
  CHECK_FALSE(fs::exists(w.p("ties_slices")));
}

TEST_CASE("cli run refuses unsupported keys, parameters and methods by name, and writes nothing") {
  LayeredWorkspace w;
  struct Bad {
    std::string yaml, says;
  };
  const std::vector<Bad> bad = {
      {"merge_method: ties\nbase_model: base\ntokenizer_source: union\nmodels:\n  - model: e0\n    parameters: {weight: 1}\n",
       "key 'tokenizer_source'"},
      {"merge_method: slerp\nbase_model: base\nmodels:\n  - model: e0\n    parameters: {t: 0.5}\n",
       "'t' is a global parameter of slerp"},
      {"merge_method: ties\nbase_model: base\nmodels:\n  - model: e0\n    parameters: {weight: 1, gama: 0.1}\n",
       "ties takes no parameter 'gama'"},
      {"merge_method: dare_magic\nmodels:\n  - model: e0\n", "merge_method 'dare_magic' is not supported"},
      {"merge_method: ties\nbase_model: base\nmodels:\n  - model: e0\n    parameters: {density: 0.5}\n",
       "parameter 'weight' is required for model"},
      {"merge_method: linear\nmodels:\n  - model: e0\n    parameters: {weight: [0.5, }\n", "not valid YAML"},
      {"merge_method: linear\nmodels:\n  - model: e0\n    parameters: {weight: high}\n", "'high' is not a number"},
      {"merge_method: linear\nmodels:\n  - model: e0\n    parameters: {weight: 1}\n  - model: e1\n    parameters: "
       "{weight: 1}\n  - model: e0\n    parameters: {weight: 2}\n",
       "models: model '"},
      {"merge_method: linear\nslices:\n  - sources:\n      - model: e0\n        layer_range: [0, 2]\n"
       "      - model: e0\n        layer_range: [2, 4]\n",
       "is listed twice"},
  };
  for (const Bad& b : bad) {
    CAPTURE(b.yaml);
    const std::string cfg = w.config("bad.yml", b.yaml);
    const Run r = twin_merge("run " + cfg + " -o " + w.p("nothing"));
    CHECK(r.status == 1);
    CHECK(r.err.rfind("error: ", 0) == 0);
    CHECK(r.err.find(b.says) != std::string::npos);
    CHECK_FALSE(fs::exists(w.p("nothing")));
  }
}

TEST_CASE("cli: task names from dotted folder names, a warning when the model outgrows dense, run names a file") {
  LayeredWorkspace w;
  w.write("Qwen2.5-math", w.experts[0]);  // a folder name a task name cannot hold as is
  const std::string cfg = w.config("dots.yml",
                                   "merge_method: task_arithmetic\nbase_model: base\nmodels:\n"
                                   "  - model: Qwen2.5-math\n    parameters: {weight: 0.3}\n"
                                   "  - model: e1\n    parameters: {weight: 0.3}\n");
  // Rank 6 of 6 × 10 matrices stores 6·(6 + 10) values against 60 dense: larger than the experts.
  const Run r = twin_merge("build --config " + cfg + " --rank 6 -o " + w.p("dots.safetensors"));
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK(load_twin_model(w.p("dots.safetensors")).model.task_names() == std::vector<std::string>{"Qwen2_5-math", "e1"});
  CHECK(r.err.find("warning: the model is larger than the 2 dense experts") != std::string::npos);
  const Run small = twin_merge("build --config " + cfg + " --rank 1 -o " + w.p("small.safetensors"));
  REQUIRE(small.status == 0);
  CHECK(small.err.find("warning") == std::string::npos);

  // An input of another shape: the error names its file, not "expert 1".
  StateDict wide = w.experts[1].clone();
  wide.erase("model.layers.2.mlp.up_proj.weight");
  wide.insert("model.layers.2.mlp.up_proj.weight", Tensor(dtype::f32, {7, 10}));
  w.write("wide", wide);
  const std::string bad = w.config("wide.yml",
                                   "merge_method: linear\nmodels:\n  - model: e0\n"
                                   "    parameters: {weight: 1}\n  - model: wide\n"
                                   "    parameters: {weight: 1}\n");
  const Run b = twin_merge("run " + bad + " -o " + w.p("wide_out"));
  CHECK(b.status == 1);
  CHECK(b.err.find(w.p("wide") + ": tensor 'model.layers.2.mlp.up_proj.weight' has shape [7, 10]") !=
        std::string::npos);
  CHECK_FALSE(fs::exists(w.p("wide_out")));
}

TEST_CASE("cli build --config: twin.exclude keeps each task's own tensors, as --exclude does, at their own shapes") {
  // Two experts whose output heads differ in rows (a resized vocabulary):
  // excluded, each task keeps its own; not excluded, they cannot be merged.
  LayeredWorkspace w;
  std::mt19937_64 rng(78);
  for (int i = 0; i < 2; ++i) {
    StateDict h = w.experts[static_cast<std::size_t>(i)].clone();
    h.assign("lm_head.weight", twin_test::random_tensor(rng, dtype::f32, {6 + 3 * i, 10}));
    w.write("h" + std::to_string(i), h);
    w.experts[static_cast<std::size_t>(i)] = std::move(h);
  }
  const std::string models =
      "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: h0\n    parameters: {weight: 0.3}\n"
      "  - model: h1\n    parameters: {weight: 0.3}\n";
  const std::string listed =
      w.config("list.yml", models + "twin:\n  rank: 2\n  exclude: [lm_head.weight, model.norm.weight]\n");
  Run r = twin_merge("build --config " + listed + " -o " + w.p("list.safetensors"));
  INFO(r.err);
  REQUIRE(r.status == 0);
  r = twin_merge("build --config " + w.config("plain.yml", models) +
                 " --rank 2 --exclude lm_head.weight --exclude model.norm.weight -o " + w.p("flags.safetensors"));
  REQUIRE(r.status == 0);
  auto bytes = [](const std::string& f) {
    std::ifstream in(f, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  CHECK(bytes(w.p("list.safetensors")) == bytes(w.p("flags.safetensors")));
  const TwinModelFile f = load_twin_model(w.p("list.safetensors"));
  CHECK(f.model.is_excluded("model.norm.weight"));
  const TwinModel::Entry& head = f.model.at("lm_head.weight");
  REQUIRE(head.excluded);
  for (std::size_t t = 0; t < 2; ++t) CHECK(twin_test::same_bits(head.copies[t], w.experts[t].at("lm_head.weight")));
  // One pattern as a scalar.
  r = twin_merge("build --config " + w.config("one.yml", models + "twin:\n  rank: 2\n  exclude: lm_head\\..*\n") +
                 " -o " + w.p("one.safetensors"));
  CHECK(r.status == 0);
  CHECK(load_twin_model(w.p("one.safetensors")).model.is_excluded("lm_head.weight"));
  // Not excluded: refused, naming the tensor; a malformed exclude: refused.
  r = twin_merge("build --config " + w.config("plain.yml", models) + " --rank 2 -o " + w.p("bad.safetensors"));
  CHECK(r.status == 1);
  CHECK(r.err.find("lm_head.weight") != std::string::npos);
  r = twin_merge("build --config " + w.config("map.yml", models + "twin:\n  rank: 2\n  exclude: {a: b}\n") + " -o " +
                 w.p("bad.safetensors"));
  CHECK(r.status == 1);
  CHECK(r.err.find("twin.exclude must be a pattern or a list of patterns") != std::string::npos);
  // `run` has no use for a twin block, exclude alone included: refused, not ignored.
  r = twin_merge("run " + w.config("run.yml", models + "twin:\n  exclude: lm_head.weight\n") + " -o " + w.p("run_out"));
  CHECK(r.status == 1);
  CHECK(r.err.find("the twin block is for `twin-merge build`") != std::string::npos);
  CHECK_FALSE(fs::exists(w.p("run_out")));
  CHECK_FALSE(fs::exists(w.p("bad.safetensors")));
}

TEST_CASE("cli build --config: a mergekit config plus a twin block builds what the API builds") {
  LayeredWorkspace w;
  const std::string models = R"(merge_method: task_arithmetic
base_model: base
models:
  - model: e0
    parameters: {weight: 0.3}
  - model: e1
    parameters: {weight: 0.3}
)";
  const std::string cfg = w.config("twin.yml", models + "twin:\n  rank: 2\n  factor_dtype: f32\n");
  const Run r = twin_merge("build --config " + cfg + " -o " + w.p("twin.safetensors"));
  INFO(r.err);
  REQUIRE(r.status == 0);
  const TwinModelFile f = load_twin_model(w.p("twin.safetensors"));
  const std::vector<const StateDict*> ex = {&w.experts[0], &w.experts[1]};
  TwinBuildOptions o;
  o.task_names = {"e0", "e1"};
  const TwinModel ref =
      TwinModel::build(w.base, ex, TaskArithmetic{1.0, {0.3, 0.3}}, SvdCompressor::with_rank(2, dtype::f32), o);
  CHECK(f.model.task_names() == ref.task_names());
  for (const auto& [name, t] : ref.shared()) CHECK(twin_test::same_bits(f.model.shared().at(name).clone(), t));
  // Every compressor key --help lists for the block is taken, and builds the file those options give on the
  // command line.
  const std::string plain = w.config("plain.yml", models);
  auto bytes = [](const std::string& f) {
    std::ifstream in(f, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const std::pair<std::string, std::string> blocks[] = {
      {"twin:\n  budget: 0.3\n  quant_group: 16\n", "--budget 0.3 --quant-group 16"},
      {"twin:\n  rank: 2\n  quant_bits: 4\n  residual_density: 0.02\n",
       "--rank 2 --quant-bits 4 --residual-density 0.02"},
      {"twin:\n  sign_density: 0.2\n", "--sign-density 0.2"},
      {"twin:\n  rank: 2\n  svd_engine: randomized\n  svd_seed: 3\n", "--rank 2 --svd-engine randomized --svd-seed 3"},
  };
  for (const auto& [yaml, flags] : blocks) {
    CAPTURE(yaml);
    const Run viab =
        twin_merge("build --config " + w.config("block.yml", models + yaml) + " -o " + w.p("block.safetensors"));
    INFO(viab.err);
    REQUIRE(viab.status == 0);
    const Run viaf = twin_merge("build --config " + plain + " " + flags + " -o " + w.p("flags.safetensors"));
    INFO(viaf.err);
    REQUIRE(viaf.status == 0);
    CHECK(bytes(w.p("block.safetensors")) == bytes(w.p("flags.safetensors")));
  }
  // The command line's compressor wins over the block's, the block's SVD-factor options included.
  const Run wins = twin_merge("build --config " +
                              w.config("block.yml", models + "twin:\n  rank: 2\n  quant_bits: 4\n  residual_density: "
                                                             "0.02\n") +
                              " --sparsify-density 0.1 -o " + w.p("block.safetensors"));
  INFO(wins.err);
  REQUIRE(wins.status == 0);
  REQUIRE(twin_merge("build --config " + plain + " --sparsify-density 0.1 -o " + w.p("flags.safetensors")).status == 0);
  CHECK(bytes(w.p("block.safetensors")) == bytes(w.p("flags.safetensors")));
  const Run mixed = twin_merge("build --config " + cfg + " --method ties -o " + w.p("x.safetensors"));
  CHECK(mixed.status == 1);
  CHECK(mixed.err.find("--config replaces") != std::string::npos);
}
