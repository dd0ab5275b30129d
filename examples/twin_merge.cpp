// twin-merge: merging, building Twin models, fusing and routing from the
// command line, on safetensors checkpoints (docs/design.md §6).
//
// Every failure prints one line `error: ...` naming the file and the problem
// on stderr, exits with status 1 (2 for a malformed command line), and leaves
// no output file behind (outputs are written atomically, after all checks).
#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/progress.hpp"
#include "twin/compress/magnitude_sparsifier.hpp"
#include "twin/compress/svd_compressor.hpp"
#include "twin/fuse/dynamic_fuser.hpp"
#include "twin/io/safetensors.hpp"
#include "twin/io/twin_model_file.hpp"
#include "twin/route/router.hpp"
#include "twin/twin.hpp"

namespace fs = std::filesystem;

namespace {

// Refuses an output whose folder does not exist before any work is done.
void check_output_path(const fs::path& out) {
  const fs::path dir = out.has_parent_path() ? out.parent_path() : fs::path(".");
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw twin::io_error(out.string() + ": the output folder '" + dir.string() + "' does not exist");
  if (fs::is_directory(out, ec)) throw twin::io_error(out.string() + ": is a folder, expected a file path");
}

// NaN or Inf in a weight is reported with the tensor name and the count.
// For a mapped checkpoint the pages of each tensor are dropped once scanned,
// so the scan does not make whole inputs resident.
void check_finite(const twin::StateDict& sd, const std::string& file, const twin::LoadedCheckpoint* mapped = nullptr) {
  for (const auto& [name, t] : sd) {
    if (!twin::dtype_is_float(t.dtype())) continue;
    const twin::ConstTensorView v = t.view();
    const std::int64_t bad =
        twin::parallel_sum<std::int64_t>(v.numel(), 1 << 16, [&](std::int64_t lo, std::int64_t hi) {
          std::vector<float> buf(static_cast<std::size_t>(hi - lo));
          twin::read_f32(v, lo, hi - lo, buf.data());
          std::int64_t n = 0;
          for (float x : buf) n += !std::isfinite(x);
          return n;
        });
    if (bad)
      throw twin::numeric_error(file + ": tensor '" + name + "' has " + std::to_string(bad) + " NaN or Inf value" +
                                (bad > 1 ? "s" : "") + " (of " + std::to_string(t.numel()) + ")");
    if (mapped) twin::release_pages(*mapped, t);
  }
}

twin::LoadedCheckpoint load_checked(const std::string& path) {
  twin::LoadedCheckpoint c = twin::load_safetensors(path);
  check_finite(c.tensors, path, &c);
  return c;
}

// Method options shared by `merge` and `build`.
struct MethodOptions {
  std::string method = "task_arithmetic";
  std::optional<double> scaling, density, gamma;
  std::uint64_t seed = 0;
  std::string scope = "per-tensor", selection = "exact", zero_sign = "plus";
  std::optional<double> t;
  bool filter_wise = false;
  std::vector<double> weights;
  std::vector<std::string> exclude;

  void add_to(CLI::App& app) {
    std::string methods;
    for (auto m : twin::merge_method_names) methods += (methods.empty() ? "" : ", ") + std::string(m);
    app.add_option("--method", method, "merge strategy: " + methods)->capture_default_str();
    app.add_option("--scaling", scaling, "lambda, the factor on the merged task vector (default 1)");
    app.add_option("--density", density, "fraction of each task vector kept (ties 0.2, dare 0.5, breadcrumbs 0.9)");
    app.add_option("--gamma", gamma, "breadcrumbs: fraction of largest-magnitude entries dropped (default 0.01)");
    app.add_option("--seed", seed, "dare: random seed")->capture_default_str();
    app.add_option("--scope", scope, "ties: top-k per-tensor or global")->capture_default_str();
    app.add_option("--selection", selection,
                   "ties: exact (keep floor(density*n)) or kthvalue (the official TIES/Twin-Merging code's rule)")
        ->capture_default_str();
    app.add_option("--zero-sign", zero_sign,
                   "ties: sign elected by a zero sum, plus (+1) or majority (the official code's rule)")
        ->capture_default_str();
    app.add_option("--t", t,
                   "slerp: interpolation factor (0 = base, 1 = the expert); nearswap: distance under which the "
                   "expert's value is taken");
    app.add_flag("--filter-wise", filter_wise, "model_stock: one ratio per row instead of per tensor");
    app.add_option("--weight", weights, "per-expert weight, once per --expert in order (default 1)");
    app.add_option("--exclude", exclude, "regular expression of tensor names not merged (repeatable)");
  }
  twin::MergeSettings settings() const {
    twin::MergeSettings s;
    s.method = method;
    s.scaling = scaling;
    s.density = density;
    s.gamma = gamma;
    s.seed = seed;
    s.scope = twin::parse_scope(scope);
    s.selection = twin::parse_selection(selection);
    s.zero_sign = twin::parse_zero_sign(zero_sign);
    s.weights = weights;
    s.t = t;
    s.filter_wise = filter_wise;
    return s;
  }
};

std::optional<twin::dtype> parse_out_dtype(const std::string& s) {
  if (s.empty()) return std::nullopt;
  const twin::dtype t = twin::parse_dtype(s);
  if (t != twin::dtype::f32 && t != twin::dtype::f16 && t != twin::dtype::bf16)
    throw twin::argument_error("--dtype must be f32, f16 or bf16, found '" + s + "'");
  return t;
}

// --- merge -------------------------------------------------------------------
struct MergeCommand {
  MethodOptions m;
  std::string base, out, dtype;
  std::vector<std::string> experts;

  void add(CLI::App& root) {
    CLI::App* c = root.add_subcommand("merge", "merge experts into one checkpoint with a SharedMerger strategy");
    m.add_to(*c);
    c->add_option("--base", base, "the pretrained checkpoint (.safetensors or model.safetensors.index.json)")
        ->required();
    c->add_option("--expert", experts, "a fine-tuned checkpoint (repeat for each expert)")->required();
    c->add_option("--dtype", dtype, "output dtype f32|f16|bf16 (default: the base's)");
    c->add_option("-o,--output", out, "output .safetensors file")->required();
    c->callback([this] { run(); });
  }

  void run() const {
    check_output_path(out);
    const twin::AnyMerger merger = twin::AnyMerger::from_settings(m.settings());
    const auto out_dtype = parse_out_dtype(dtype);
    const twin::LoadedCheckpoint b = load_checked(base);
    std::vector<twin::LoadedCheckpoint> ex;
    std::vector<const twin::StateDict*> ptrs;
    for (const auto& e : experts) ex.push_back(load_checked(e));
    for (const auto& e : ex) ptrs.push_back(&e.tensors);
    twin::MergeOptions o;
    o.exclude = m.exclude;
    o.out_dtype = out_dtype;
    o.expert_labels = experts;
    examples::Progress bar("merge");
    o.progress = [&](std::size_t d, std::size_t n, std::string_view name) { bar.update(d, n, name); };
    const twin::StateDict merged = twin::merge_state(merger, b.tensors, ptrs, o);
    bar.finish();
    twin::Metadata meta = {{"twin.merge.method", std::string(merger.name())},
                           {"twin.merge.experts", std::to_string(experts.size())}};
    if (m.scaling) meta["twin.merge.scaling"] = std::to_string(*m.scaling);
    if (m.density) meta["twin.merge.density"] = std::to_string(*m.density);
    if (m.t) meta["twin.merge.t"] = std::to_string(*m.t);
    if (m.filter_wise) meta["twin.merge.filter_wise"] = "true";
    twin::save_safetensors(out, merged, meta);
    std::fprintf(stderr, "merged %zu tensors of %zu experts with %s into %s\n", merged.size(), experts.size(),
                 std::string(merger.name()).c_str(), out.c_str());
  }
};

// Comma-separated numbers ("0.1,-2,3e-1").
std::vector<float> parse_list(const std::string& s, const std::string& what) {
  std::vector<float> out;
  std::size_t pos = 0;
  while (pos <= s.size()) {
    const std::size_t comma = s.find(',', pos);
    const std::string item = s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    try {
      std::size_t used = 0;
      out.push_back(std::stof(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw twin::argument_error(what + ": '" + item + "' is not a number");
    }
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

// --- build -------------------------------------------------------------------
struct BuildCommand {
  MethodOptions m;
  std::string base, out, router, factor_dtype = "f32";
  std::vector<std::string> experts;
  std::optional<std::int64_t> rank;
  std::optional<double> energy, sparsify;
  std::uint64_t svd_seed = 0;

  void add(CLI::App& root) {
    CLI::App* c =
        root.add_subcommand("build", "build a Twin model: shared merge + compressed exclusive knowledge per task");
    m.add_to(*c);
    c->add_option("--base", base, "the pretrained checkpoint")->required();
    c->add_option("--expert", experts, "NAME=PATH of a fine-tuned checkpoint (repeat per task)")->required();
    auto* r = c->add_option("--rank", rank, "SVD rank of each task's exclusive knowledge (clamped to the matrix)");
    auto* e = c->add_option("--energy", energy, "smallest SVD rank keeping this fraction of ||v||^2, in (0, 1]");
    auto* d =
        c->add_option("--sparsify-density", sparsify, "keep this fraction of entries by magnitude instead of SVD");
    r->excludes(e)->excludes(d);
    e->excludes(d);
    c->add_option("--factor-dtype", factor_dtype, "dtype of stored factors f32|f16|bf16")->capture_default_str();
    c->add_option("--svd-seed", svd_seed, "seed of the randomized SVD")->capture_default_str();
    c->add_option("--router", router, "a router (from train-router) to store in the model file");
    c->add_option("-o,--output", out, "output Twin model file")->required();
    c->callback([this] { run(); });
  }

  void run() const {
    check_output_path(out);
    if (!rank && !energy && !sparsify)
      throw twin::argument_error("build needs one of --rank, --energy or --sparsify-density");
    const twin::AnyMerger merger = twin::AnyMerger::from_settings(m.settings());
    const twin::dtype fd = *parse_out_dtype(factor_dtype);
    std::vector<std::string> names;
    std::vector<twin::LoadedCheckpoint> ex;
    const twin::LoadedCheckpoint b = load_checked(base);
    for (const auto& spec : experts) {
      const auto eq = spec.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
        throw twin::argument_error("--expert '" + spec + "': expected NAME=PATH");
      names.push_back(spec.substr(0, eq));
      ex.push_back(load_checked(spec.substr(eq + 1)));
    }
    std::optional<twin::Router> r;
    if (!router.empty()) r = twin::load_router(router);
    std::vector<const twin::StateDict*> ptrs;
    for (const auto& e : ex) ptrs.push_back(&e.tensors);
    twin::TwinBuildOptions o;
    o.task_names = names;
    o.exclude = m.exclude;
    examples::Progress bar("build");
    // Streaming: once a tensor is merged (and again once compressed) the
    // mapped pages of its inputs are dropped, so resident memory stays near
    // one model plus the outputs however many experts there are.
    o.progress = [&](const twin::BuildProgress& p) {
      bar.update(p.done + (p.stage == "compress" ? p.total : 0), 2 * p.total, p.tensor);
      const std::string name(p.tensor);
      if (const twin::Tensor* t = b.tensors.find(name)) twin::release_pages(b, *t);
      for (const auto& e : ex)
        if (const twin::Tensor* t = e.tensors.find(name)) twin::release_pages(e, *t);
    };
    twin::TwinModel model;
    if (sparsify) {
      twin::check_unit_interval(*sparsify, "--sparsify-density");
      model = twin::TwinModel::build(b.tensors, ptrs, merger, twin::MagnitudeSparsifier{*sparsify, fd}, o);
    } else {
      twin::SvdCompressor c = rank ? twin::SvdCompressor::with_rank(*rank, fd)
                                   : twin::SvdCompressor::with_energy(*energy, fd);
      c.seed = svd_seed;
      model = twin::TwinModel::build(b.tensors, ptrs, merger, c, o);
    }
    bar.finish();
    twin::save_twin_model(out, model, r ? &*r : nullptr);
    const twin::StorageReport st = model.storage();
    std::fprintf(stderr,
                 "built %s: %zu tasks, %zu tensors, %.2f MB (%.1f%% of %zu dense experts), relative error %.4f\n",
                 out.c_str(), model.num_tasks(), model.entries().size(), static_cast<double>(st.total()) / 1e6,
                 100.0 * st.ratio(), model.num_tasks(), model.relative_error());
  }
};

// --- fuse --------------------------------------------------------------------
struct FuseCommand {
  std::string model, out, logits, weights, dtype;
  double temperature = 1.0, threshold = 0.0;
  int top_k = 0;

  void add(CLI::App& root) {
    CLI::App* c =
        root.add_subcommand("fuse", "write the fused weights of a Twin model for given router logits or weights");
    c->add_option("MODEL", model, "a Twin model file (from build)")->required();
    auto* l = c->add_option("--logits", logits, "router logits, one per task: a,b,...");
    auto* w = c->add_option("--weights", weights, "mixture weights, one per task: a,b,... (used as given)");
    l->excludes(w);
    c->add_option("--temperature", temperature, "softmax temperature for --logits")->capture_default_str();
    c->add_option("--top-k", top_k, "keep only the k largest logits (0: all)")->capture_default_str();
    c->add_option("--threshold", threshold, "drop tasks whose weight is below this")->capture_default_str();
    c->add_option("--dtype", dtype, "output dtype f32|f16|bf16 (default: the shared weights')");
    c->add_option("-o,--output", out, "output .safetensors file")->required();
    c->callback([this] { run(); });
  }

  void run() const {
    check_output_path(out);
    if (logits.empty() == weights.empty())
      throw twin::argument_error("fuse needs exactly one of --logits or --weights");
    const auto od = parse_out_dtype(dtype);
    const twin::TwinModelFile f = twin::load_twin_model(model);
    twin::FuseOptions fo;
    fo.routing.temperature = temperature;
    fo.routing.top_k = top_k;
    fo.routing.threshold = threshold;
    const twin::DynamicFuser fuser(f.model, fo);
    const std::size_t T = f.model.num_tasks();
    const std::string flag = logits.empty() ? "--weights" : "--logits";
    const std::vector<float> given = parse_list(logits.empty() ? weights : logits, flag);
    if (given.size() != T)
      throw twin::argument_error(model + ": " + flag + " has " + std::to_string(given.size()) + " values for " +
                                 std::to_string(T) + " tasks");
    // Logits go through the fuser's routing; weights are used as given.
    const std::vector<float> w = logits.empty() ? given : fuser.weights(given);
    twin::StateDict fused;
    examples::Progress bar("fuse");
    std::size_t done = 0;
    for (const auto& e : f.model.entries()) {
      const twin::dtype t = od.value_or(e.excluded ? e.copies[0].dtype() : f.model.shared().at(e.name).dtype());
      twin::Tensor& o = fused.insert(e.name, twin::Tensor::empty(t, e.shape.span()));
      fuser.fuse_tensor(e.name, o, w);
      bar.update(++done, f.model.entries().size(), e.name);
    }
    bar.finish();
    std::string ws;
    for (float x : w) ws += (ws.empty() ? "" : ",") + std::to_string(x);
    twin::save_safetensors(out, fused, {{"twin.fuse.weights", ws}, {"twin.fuse.model", model}});
    std::fprintf(stderr, "fused %zu tensors with weights %s into %s\n", fused.size(), ws.c_str(), out.c_str());
  }
};

// Router data: `embeddings` [N, d] (float) and `labels` [N] (integer).
struct RouterData {
  twin::LoadedCheckpoint file;
  std::vector<std::int64_t> labels;
};

RouterData load_router_data(const std::string& path, bool need_labels) {
  RouterData d{twin::load_safetensors(path), {}};
  const twin::Tensor* e = d.file.tensors.find("embeddings");
  if (!e) throw twin::io_error(path + ": no tensor 'embeddings' [N, d]");
  if (e->rank() != 2 || !twin::dtype_is_float(e->dtype()))
    throw twin::io_error(path + ": 'embeddings' must be a float matrix [N, d], found " +
                         std::string(twin::dtype_name(e->dtype())) + " " + e->shape_str());
  check_finite(d.file.tensors, path);
  const twin::Tensor* l = d.file.tensors.find("labels");
  if (need_labels) {
    if (!l) throw twin::io_error(path + ": no tensor 'labels' [N]");
    if (twin::dtype_is_float(l->dtype()) || l->rank() != 1 || l->dim(0) != e->dim(0))
      throw twin::io_error(path + ": 'labels' must be integers [" + std::to_string(e->dim(0)) + "], found " +
                           std::string(twin::dtype_name(l->dtype())) + " " + l->shape_str());
    for (std::int64_t i = 0; i < l->numel(); ++i)
      d.labels.push_back(static_cast<std::int64_t>(twin::load_as_f64(l->data(), l->dtype(), i)));
  }
  return d;
}

// --- train-router ------------------------------------------------------------
struct TrainRouterCommand {
  std::string data, out;
  int epochs = 100, patience = 10, depth = 2;
  std::int64_t batch = 128, hidden = 0, tasks = 0;
  double lr = 5e-4, weight_decay = 0.0, holdout = 0.1, dropout = 0.5;
  std::uint64_t seed = 0;
  bool balanced = false;

  void add(CLI::App& root) {
    CLI::App* c = root.add_subcommand("train-router", "train the router MLP on labelled embeddings");
    c->add_option("--data", data, "safetensors with 'embeddings' [N, d] and integer 'labels' [N]")->required();
    c->add_option("--tasks", tasks, "number of tasks T (default: largest label + 1)");
    c->add_option("--epochs", epochs, "maximum epochs")->capture_default_str();
    c->add_option("--patience", patience, "stop after this many epochs without improvement (0: never)")
        ->capture_default_str();
    c->add_option("--batch", batch, "mini-batch size")->capture_default_str();
    c->add_option("--lr", lr, "Adam learning rate")->capture_default_str();
    c->add_option("--weight-decay", weight_decay, "Adam weight decay")->capture_default_str();
    c->add_option("--hidden", hidden, "hidden width (0: 2 d)")->capture_default_str();
    c->add_option("--depth", depth, "hidden blocks")->capture_default_str();
    c->add_option("--dropout", dropout, "dropout probability")->capture_default_str();
    c->add_option("--holdout", holdout, "share of each task held out to pick the best epoch")->capture_default_str();
    c->add_flag("--balanced", balanced, "class-balanced sampling");
    c->add_option("--seed", seed, "random seed")->capture_default_str();
    c->add_option("-o,--output", out, "output router .safetensors")->required();
    c->callback([this] { run(); });
  }

  void run() const {
    check_output_path(out);
    const RouterData d = load_router_data(data, true);
    const twin::Tensor& emb = d.file.tensors.at("embeddings");
    std::int64_t T = tasks;
    if (T == 0) {
      // Inferred T: every id in [0, T) must have items, or a stray label
      // would silently add empty tasks.
      for (auto l : d.labels) T = std::max(T, l + 1);
      std::vector<std::int64_t> count(static_cast<std::size_t>(std::max<std::int64_t>(T, 0)), 0);
      for (auto l : d.labels)
        if (l >= 0) ++count[static_cast<std::size_t>(l)];
      for (std::int64_t t = 0; t < T; ++t)
        if (count[static_cast<std::size_t>(t)] == 0)
          throw twin::argument_error(data + ": no item has label " + std::to_string(t) + " but labels go up to " +
                                     std::to_string(T - 1) +
                                     ": labels must be task ids 0..T-1 (pass --tasks T to allow empty tasks)");
    }
    twin::RouterConfig rc;
    rc.input_dim = emb.dim(1);
    rc.num_tasks = T;
    rc.hidden = hidden;
    rc.depth = depth;
    rc.dropout = dropout;
    twin::Router router(rc, seed);
    twin::RouterTrainOptions o;
    o.max_epochs = epochs;
    o.patience = patience;
    o.batch_size = batch;
    o.adam.lr = lr;
    o.adam.weight_decay = weight_decay;
    o.holdout_fraction = holdout;
    o.class_balanced = balanced;
    o.seed = seed;
    examples::Progress bar("train");
    o.progress = [&](int epoch, double loss, double acc) {
      bar.update(static_cast<std::size_t>(epoch), static_cast<std::size_t>(epochs),
                 "loss " + std::to_string(loss) + " held-out acc " + std::to_string(acc));
    };
    const twin::RouterTrainReport rep = twin::train_router(router, emb, d.labels, o);
    bar.finish();
    twin::save_router(out, router);
    std::fprintf(stderr, "trained %lld -> %lld router: best epoch %d of %d, held-out accuracy %.4f; wrote %s\n",
                 static_cast<long long>(rc.input_dim), static_cast<long long>(T), rep.best_epoch, rep.epochs_run,
                 rep.best_heldout_accuracy, out.c_str());
  }
};

// --- route -------------------------------------------------------------------
struct RouteCommand {
  std::string router, data, out;
  void add(CLI::App& root) {
    CLI::App* c = root.add_subcommand("route", "router logits for embeddings (printed, or written with -o)");
    c->add_option("--router", router, "router .safetensors (from train-router), or a Twin model file holding one")
        ->required();
    c->add_option("--data", data, "safetensors with 'embeddings' [N, d]")->required();
    c->add_option("-o,--output", out, "write 'logits' [N, T] (F32) here instead of printing");
    c->callback([this] { run(); });
  }
  void run() const {
    if (!out.empty()) check_output_path(out);
    const twin::LoadedCheckpoint rf = twin::load_safetensors(router);
    const bool is_model = rf.metadata.count("format") && rf.metadata.at("format") == "twin";
    std::optional<twin::Router> r;
    if (is_model) {
      r = twin::load_twin_model(router).router;
      if (!r) throw twin::io_error(router + ": the Twin model file holds no router");
    } else {
      r = twin::load_router(router);
    }
    const RouterData d = load_router_data(data, false);
    const twin::Tensor& emb = d.file.tensors.at("embeddings");
    if (emb.dim(1) != r->input_dim())
      throw twin::shape_error(data + ": embeddings have width " + std::to_string(emb.dim(1)) + ", the router expects " +
                              std::to_string(r->input_dim()));
    const twin::Tensor logits = r->logits(emb);
    if (!out.empty()) {
      twin::StateDict sd;
      sd.insert("logits", logits.clone_as(twin::dtype::f32));
      twin::save_safetensors(out, sd);
      return;
    }
    const twin::ConstTensorView v = logits.view();
    for (std::int64_t i = 0; i < v.dim(0); ++i) {
      for (std::int64_t t = 0; t < v.dim(1); ++t)
        std::printf("%s%.6g", t ? " " : "", twin::element_f64(v, i * v.dim(1) + t));
      std::printf("\n");
    }
  }
};

// --- inspect -----------------------------------------------------------------
struct InspectCommand {
  std::string file;
  void add(CLI::App& root) {
    CLI::App* c = root.add_subcommand("inspect", "list a checkpoint's tensors, dtypes, shapes and metadata");
    c->add_option("FILE", file, "a .safetensors file or model.safetensors.index.json")->required();
    c->callback([this] { run(); });
  }
  void run() const {
    const twin::LoadedCheckpoint c = twin::load_safetensors(file);
    std::printf("%s: %zu tensors, %lld elements, %.2f MB\n", file.c_str(), c.tensors.size(),
                static_cast<long long>(c.tensors.numel()), static_cast<double>(c.tensors.nbytes()) / 1e6);
    if (!c.metadata.empty()) {
      std::printf("metadata:\n");
      for (const auto& [k, v] : c.metadata) std::printf("  %s = %s\n", k.c_str(), v.c_str());
    }
    std::printf("tensors:\n");
    for (const auto& [name, t] : c.tensors)
      std::printf("  %-60s %-5s %s\n", name.c_str(), std::string(twin::dtype_name(t.dtype())).c_str(),
                  t.shape_str().c_str());
    if (c.metadata.count("format") && c.metadata.at("format") == "twin") describe_model();
  }

  // Tasks, ranks, storage and compression error of a Twin model file.
  void describe_model() const {
    const twin::TwinModelFile f = twin::load_twin_model(file);
    const twin::TwinModel& m = f.model;
    const twin::StorageReport st = m.storage();
    std::printf("twin model: %zu tasks:", m.num_tasks());
    for (const auto& t : m.task_names()) std::printf(" %s", t.c_str());
    std::printf(
        "\nstorage: shared %.2f MB + exclusive %.2f MB + excluded %.2f MB = %.2f MB, %.1f%% of %zu dense experts (%.2f MB)\n",
        static_cast<double>(st.shared_bytes) / 1e6, static_cast<double>(st.exclusive_bytes) / 1e6,
        static_cast<double>(st.excluded_bytes) / 1e6, static_cast<double>(st.total()) / 1e6, 100.0 * st.ratio(),
        m.num_tasks(), static_cast<double>(st.dense_experts_bytes) / 1e6);
    std::printf("relative compression error (all tensors and tasks): %.5f\n", m.relative_error());
    std::printf("router: %s\n", f.router ? ("d=" + std::to_string(f.router->input_dim())).c_str() : "none");
    std::printf("%-50s %-9s", "tensor", "kind");
    for (const auto& t : m.task_names()) std::printf(" %14s", t.c_str());
    std::printf("\n");
    for (const auto& e : m.entries()) {
      std::printf("%-50s %-9s", e.name.c_str(),
                  e.excluded ? "excluded" : std::string(twin::module_kind_name(e.modules[0].kind())).c_str());
      for (std::size_t t = 0; t < m.num_tasks(); ++t) {
        if (e.excluded) {
          std::printf(" %14s", "-");
          continue;
        }
        const auto& mod = e.modules[t];
        const std::string what = mod.kind() == twin::ModuleKind::low_rank ? "r=" + std::to_string(mod.rank())
                                                                          : "nnz=" + std::to_string(mod.nnz());
        char buf[64];
        std::snprintf(buf, sizeof buf, "%s err=%.3f", what.c_str(), m.relative_error(e.name, t));
        std::printf(" %14s", buf);
      }
      std::printf("\n");
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"twin-merge: Twin-Merging on safetensors checkpoints"};
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "worker threads (default: all cores)");
  MergeCommand merge;
  BuildCommand build;
  FuseCommand fuse;
  TrainRouterCommand train_router;
  RouteCommand route;
  InspectCommand inspect;
  merge.add(app);
  build.add(app);
  fuse.add(app);
  train_router.add(app);
  route.add(app);
  inspect.add(app);
  try {
    app.parse_complete_callback([&] { twin::set_num_threads(threads); });
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "error: %s (see --help)\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
