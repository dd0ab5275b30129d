// twin-merge: merging, building Twin models, fusing and routing from the
// command line, on safetensors checkpoints (docs/design.md §6).
//
// Every failure prints one line `error: ...` naming the file and the problem
// on stderr, exits with status 1 (2 for a malformed command line), and leaves
// no output file behind (outputs are written atomically, after all checks).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/mergekit_yaml.hpp"
#include "common/progress.hpp"
#include "twin/compress/magnitude_sparsifier.hpp"
#include "twin/compress/sign_compressor.hpp"
#include "twin/compress/svd_compressor.hpp"
#include "twin/fuse/dynamic_fuser.hpp"
#include "twin/io/safetensors.hpp"
#include "twin/io/twin_model_file.hpp"
#include "twin/merge/merge_config.hpp"
#include "twin/model/budget.hpp"
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

// An --exclude pattern matches a whole tensor name; one that matches none
// of the inputs' is most likely a fragment ('classifier', which the official
// scripts' re.match would take as a prefix): said on stderr, not an error
// (a script may reuse patterns across models). `what` names the inputs.
void warn_unmatched_excludes(const std::vector<std::string>& patterns, std::span<const twin::StateDict* const> inputs,
                             const char* what) {
  for (const std::string& p : patterns) {
    const twin::NameFilter f(std::span<const std::string>(&p, 1));
    if (std::none_of(inputs.begin(), inputs.end(), [&](const twin::StateDict* sd) {
          return std::any_of(sd->begin(), sd->end(), [&](const auto& kv) { return f.matches(kv.first); });
        }))
      std::fprintf(stderr,
                   "warning: --exclude '%s' matches no tensor of %s (a pattern must match the whole name: "
                   "'.*%s.*' matches it anywhere)\n",
                   p.c_str(), what, p.c_str());
  }
}

// A parameter filter of a config that matches no tensor it could apply to
// (a typo: `mpl` for `mlp`) leaves the parameter at its fallback: said on
// stderr, as for --exclude.
void warn_unmatched_filters(const twin::MergeConfig& c, const std::vector<twin::PlannedTensor>& plan) {
  std::set<std::pair<std::string, std::string>> warned;  // (parameter, filter)
  twin::for_each_parameter_map(c, [&](const twin::ParameterMap& m, bool, const std::string&) {
    for (const auto& [param, setting] : m)
      for (const auto& e : setting.entries) {
        if (!e.filter || *e.filter == "*" || warned.contains({param, *e.filter})) continue;
        const std::string& f = *e.filter;
        const bool hit = std::any_of(plan.begin(), plan.end(), [&](const twin::PlannedTensor& p) {
          return p.name.find(f) != std::string::npos ||
                 std::any_of(p.inputs.begin(), p.inputs.end(),
                             [&](const auto& in) { return in.tensor.find(f) != std::string::npos; });
        });
        if (!hit) {
          warned.insert({param, f});
          std::fprintf(stderr, "warning: filter '%s' of parameter '%s' matches no tensor name\n", f.c_str(),
                       param.c_str());
        }
      }
  });
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

// Method options shared by `merge` and `build` (names after mergekit's
// parameters; docs/design.md §6 lists which method takes which).
struct MethodOptions {
  std::string method = "task_arithmetic";
  std::optional<double> scaling, t, base_weight, eps, select_topk, tol, r, alpha, scale;
  std::vector<double> density, gamma, epsilon, weights;
  std::optional<bool> normalize, rescale, nuslerp_flatten, nuslerp_row_wise;
  std::optional<int> max_iter;
  std::uint64_t seed = 0;
  std::string scope = "per-tensor", selection = "exact", zero_sign = "plus", rng = "philox";
  bool filter_wise = false, no_base = false;
  std::vector<std::string> exclude;

  void add_to(CLI::App& app) {
    std::string methods;
    for (auto m : twin::merge_method_names) twin::detail::append_listed(methods, m, ", ");
    app.add_option("--method", method, "merge strategy: " + methods)->capture_default_str();
    app.add_option("--scaling", scaling, "lambda, the factor on the merged task vector (default 1)");
    app.add_option("--density", density,
                   "fraction of each task vector kept (ties 0.2, dare and della 0.5, breadcrumbs 0.9); once, or once "
                   "per --expert for breadcrumbs and della");
    app.add_option("--gamma", gamma, "breadcrumbs: fraction of largest-magnitude entries dropped (default 0.01)");
    app.add_option("--epsilon", epsilon,
                   "della: half-width of the keep-probability band (0.15); ram: contribution threshold (1e-5)");
    app.add_option("--seed", seed, "dare, della, arcee_fusion: random seed")->capture_default_str();
    app.add_option("--rng", rng,
                   "dare, della, arcee_fusion: philox (ours) or torch (mergekit's draws when seeded per tensor)")
        ->capture_default_str();
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
    app.add_option("--normalize", normalize,
                   "true|false: linear (true), breadcrumbs (false), della (true), della_linear (false), "
                   "multislerp (true): divide by the weight sum");
    app.add_option("--rescale", rescale, "true|false: della: rescale survivors to the task vector's L1 norm (true)");
    app.add_option("--base-weight", base_weight, "linear: average the base in too, with this weight");
    app.add_flag("--no-base", no_base,
                 "nuslerp, multislerp: interpolate the experts themselves, not their task vectors; karcher: leave "
                 "the base out of the mean");
    app.add_option("--nuslerp-flatten", nuslerp_flatten, "true|false: nuslerp: the whole tensor as one vector (true)");
    app.add_option("--nuslerp-row-wise", nuslerp_row_wise,
                   "true|false: nuslerp without flatten: vectors along axis 0 instead of the last axis (false)");
    app.add_option("--eps", eps, "multislerp: numerical floor (1e-8)");
    app.add_option("--select-topk", select_topk, "sce: fraction of positions kept by variance across experts (1)");
    app.add_option("--max-iter", max_iter, "karcher: iterations at most (10)");
    app.add_option("--tol", tol, "karcher: convergence tolerance (1e-5)");
    app.add_option("--r", r, "ramplus_tl: gain on an expert's unique entries (0.1)");
    app.add_option("--alpha", alpha, "ramplus_tl: cap of the shared/unique ratio (0.2)");
    app.add_option("--scale", scale, "passthrough: factor on the tensor");
    app.add_option("--weight", weights, "per-expert weight, once per --expert in order (default 1)");
    app.add_option("--exclude", exclude,
                   "regular expression (ECMAScript) matching whole tensor names not merged, e.g. '.*classifier.*' "
                   "(repeatable)");
  }

  // A value given once for all experts or once per expert.
  static void per_expert(const std::vector<double>& v, std::optional<double>& all, std::vector<double>& per,
                         std::size_t experts, const std::string& flag) {
    if (v.size() == 1) all = v[0];
    else if (v.size() == experts) per = v;
    else if (!v.empty())
      throw twin::argument_error(flag + " given " + std::to_string(v.size()) + " times: give it once, or once per " +
                                 "--expert (" + std::to_string(experts) + ")");
  }

  twin::MergeSettings settings(std::size_t experts) const {
    twin::MergeSettings s;
    s.method = method;
    s.scaling = scaling;
    per_expert(density, s.density, s.densities, experts, "--density");
    per_expert(gamma, s.gamma, s.gammas, experts, "--gamma");
    per_expert(epsilon, s.epsilon, s.epsilons, experts, "--epsilon");
    s.seed = seed;
    s.rng = twin::parse_rng(rng);
    s.scope = twin::parse_scope(scope);
    s.selection = twin::parse_selection(selection);
    s.zero_sign = twin::parse_zero_sign(zero_sign);
    s.weights = weights;
    s.t = t;
    s.filter_wise = filter_wise;
    s.normalize = normalize;
    s.rescale = rescale;
    s.base_weight = base_weight;
    s.use_base = !no_base;
    s.nuslerp_flatten = nuslerp_flatten;
    s.nuslerp_row_wise = nuslerp_row_wise;
    s.eps = eps;
    s.select_topk = select_topk;
    s.max_iter = max_iter;
    s.tol = tol;
    s.r = r;
    s.alpha = alpha;
    s.scale = scale;
    return s;
  }

  // The options given, as metadata of the output (twin.merge.<name>).
  void describe(twin::Metadata& meta, const std::string& prefix) const {
    auto num = [&](const std::string& k, const std::optional<double>& v) {
      if (v) meta[prefix + k] = std::to_string(*v);
    };
    auto list = [&](const std::string& k, const std::vector<double>& v) {
      std::string out;
      for (double x : v) twin::detail::append_listed(out, std::to_string(x), ",");
      if (!v.empty()) meta[prefix + k] = out;
    };
    auto flag = [&](const std::string& k, const std::optional<bool>& v) {
      if (v) meta[prefix + k] = *v ? "true" : "false";
    };
    num("scaling", scaling);
    list("density", density);
    list("gamma", gamma);
    list("epsilon", epsilon);
    list("weight", weights);
    num("t", t);
    num("base_weight", base_weight);
    num("eps", eps);
    num("select_topk", select_topk);
    num("tol", tol);
    num("r", r);
    num("alpha", alpha);
    num("scale", scale);
    flag("normalize", normalize);
    flag("rescale", rescale);
    flag("nuslerp_flatten", nuslerp_flatten);
    flag("nuslerp_row_wise", nuslerp_row_wise);
    if (max_iter) meta[prefix + "max_iter"] = std::to_string(*max_iter);
    if (filter_wise) meta[prefix + "filter_wise"] = "true";
    if (no_base) meta[prefix + "no_base"] = "true";
    if (rng != "philox") meta[prefix + "rng"] = rng;
  }
};

// A float dtype as twin spells it (f32, F16, bf16) or as PyTorch and
// mergekit configs do (float32, float16, bfloat16, fp16).
std::optional<twin::dtype> parse_out_dtype(const std::string& s) {
  if (s.empty()) return std::nullopt;
  if (const auto t = examples::torch_dtype(s)) return t;
  if (s == "fp32") return twin::dtype::f32;
  if (s == "fp16" || s == "half") return twin::dtype::f16;
  std::optional<twin::dtype> t;
  try {
    t = twin::parse_dtype(s);
  } catch (const twin::dtype_error&) {
  }
  if (!t || (*t != twin::dtype::f32 && *t != twin::dtype::f16 && *t != twin::dtype::bf16))
    throw twin::argument_error("'" + s +
                               "' is not an output dtype: expected f32, f16 or bf16 (or float32, float16, "
                               "bfloat16)");
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
    const twin::AnyMerger merger = twin::AnyMerger::from_settings(m.settings(experts.size()));
    const auto out_dtype = parse_out_dtype(dtype);
    const twin::LoadedCheckpoint b = load_checked(base);
    const twin::StateDict* base_only[1] = {&b.tensors};
    warn_unmatched_excludes(m.exclude, base_only, "the base");
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
    // "format": "pt", which transformers and huggingface_hub require of a
    // checkpoint that has metadata.
    twin::Metadata meta = {{"format", "pt"},
                           {"twin.merge.method", std::string(merger.name())},
                           {"twin.merge.experts", std::to_string(experts.size())}};
    m.describe(meta, "twin.merge.");
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
  std::optional<double> energy, sparsify, sign_density, budget;
  std::int64_t max_rank = 0;
  std::optional<int> quant_bits;
  std::int64_t quant_group = 64;
  double residual_density = 0.0;
  std::string sign_alpha = "row";
  std::optional<std::uint64_t> svd_seed;
  std::string svd_engine = "auto";
  std::string config;
  std::uint64_t config_seed = 0;
  CLI::App* app = nullptr;

  void add(CLI::App& root) {
    CLI::App* c = app =
        root.add_subcommand("build", "build a Twin model: shared merge + compressed exclusive knowledge per task");
    m.add_to(*c);
    c->add_option("--config", config,
                  "a mergekit YAML merge config (models: form) instead of --base/--expert and the method options; its "
                  "optional `twin:` block may set rank, energy, sparsify_density, sign_density, budget, quant_bits, "
                  "quant_group, residual_density, factor_dtype, svd_seed, svd_engine, router, exclude (a pattern or a "
                  "list; --exclude wins)");
    c->add_option("--base", base, "the pretrained checkpoint");
    c->add_option("--expert", experts, "NAME=PATH of a fine-tuned checkpoint (repeat per task)");
    c->add_option("--random-seed", config_seed, "with --config: seed of the randomized methods")->capture_default_str();
    auto* r = c->add_option("--rank", rank, "SVD rank of each task's exclusive knowledge (clamped to the matrix)");
    auto* e = c->add_option("--energy", energy, "smallest SVD rank keeping this fraction of ||v||^2, in (0, 1]");
    auto* d =
        c->add_option("--sparsify-density", sparsify, "keep this fraction of entries by magnitude instead of SVD");
    auto* sg = c->add_option("--sign-density", sign_density,
                             "keep sign bits of this fraction of entries (largest |v|) with one scale per row "
                             "(BitDelta at 1) instead of SVD");
    auto* bu = c->add_option("--budget", budget,
                             "choose each tensor's and task's module kind and rank for the least error within "
                             "this fraction of the experts' bytes (f32, int8 and int4 factors, sign bits)");
    r->excludes(e)->excludes(d)->excludes(sg)->excludes(bu);
    e->excludes(d)->excludes(sg)->excludes(bu);
    d->excludes(sg)->excludes(bu);
    sg->excludes(bu);
    c->add_option("--max-rank", max_rank, "with --budget: the largest rank considered (0: min(m, n))")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    c->add_option("--sign-alpha", sign_alpha, "with --sign-density: one scale per row or per tensor (row|tensor)")
        ->check(CLI::IsMember({"row", "tensor"}))
        ->capture_default_str();
    c->add_option("--quant-bits", quant_bits, "quantize the SVD factors to 8 or 4 bits (f16 scale per group)")
        ->check(CLI::IsMember({8, 4}));
    c->add_option("--quant-group", quant_group, "with --quant-bits or --budget: rows of a factor column per f16 scale")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    c->add_option("--residual-density", residual_density,
                  "with --rank/--energy: also keep this fraction of v - A*B^T's entries (largest |.|)")
        ->check(CLI::Range(0.0, 1.0))
        ->capture_default_str();
    c->add_option("--factor-dtype", factor_dtype, "dtype of stored factors f32|f16|bf16")->capture_default_str();
    c->add_option("--svd-seed", svd_seed, "seed of the randomized SVD (default 0)");
    c->add_option("--svd-engine", svd_engine,
                  "with --rank: auto (a randomized range finder where the rank is a small part of the matrix), "
                  "exact (the official code's full SVD) or randomized")
        ->check(CLI::IsMember({"auto", "exact", "randomized"}))
        ->capture_default_str();
    c->add_option("--router", router, "a router (from train-router) to store in the model file");
    c->add_option("-o,--output", out, "output Twin model file")->required();
    c->callback([this] { run(); });
  }

  // A task name from a model path: its folder's or file's name, with every
  // character a task name cannot hold (letters, digits, '_', '-'; at most 64)
  // made '_': Qwen2.5-7B-math → Qwen2_5-7B-math.
  static std::string task_name_of(const std::string& path) {
    fs::path p(path);
    if (p.filename() == twin::safetensors_index_name) p = p.parent_path();
    std::string n = fs::is_directory(p) ? p.filename().string() : p.stem().string();
    if (n.empty()) n = p.parent_path().filename().string();
    for (char& ch : n)
      if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '_' && ch != '-') ch = '_';
    if (n.size() > 64) n.resize(64);
    return n;
  }

  void run() const {
    check_output_path(out);
    std::optional<twin::AnyMerger> merger;
    std::optional<twin::ConfigMerger> config_merger;
    std::vector<std::string> names;
    std::vector<twin::LoadedCheckpoint> ex;
    std::optional<twin::LoadedCheckpoint> b;
    // Compressor options: the command line, else a config's twin block.
    std::optional<std::int64_t> rank_ = rank;
    std::optional<double> energy_ = energy, sparsify_ = sparsify, sign_ = sign_density, budget_ = budget;
    std::optional<int> quant_bits_ = quant_bits;
    std::int64_t quant_group_ = quant_group;
    double residual_ = residual_density;
    std::string factor_dtype_ = factor_dtype, router_ = router;
    std::uint64_t svd_seed_ = svd_seed.value_or(0);
    std::string svd_engine_ = svd_engine;
    std::vector<std::string> exclude_ = m.exclude;  // else the config's twin.exclude
    if (!config.empty()) {
      for (const char* o : {"--base", "--expert", "--method", "--scaling", "--density", "--gamma", "--epsilon", "--t",
                            "--weight", "--normalize", "--rescale"})
        if (app->count(o) > 0)
          throw twin::argument_error(std::string("--config replaces --base, --expert and the method options; ") + o +
                                     " was given too");
      const examples::MergekitYaml y = examples::load_mergekit_yaml(config);
      const twin::MergeConfig& c = y.config;
      if (!c.slices.empty())
        throw twin::argument_error(config +
                                   ": build takes a `models:` config (a Twin model keeps the base's tensor "
                                   "names); slices are for `twin-merge run`");
      if (!c.base_model) throw twin::argument_error(config + ": build needs base_model (the pretrained checkpoint)");
      if (c.dtype || c.out_dtype)
        std::fprintf(stderr,
                     "note: %s: dtype and out_dtype apply to `run`; build merges from the stored inputs and "
                     "keeps the base's dtype for the shared weights\n",
                     config.c_str());
      auto opt = [&](const char* k) -> const std::string* {
        const auto it = y.twin_options.find(k);
        return it == y.twin_options.end() ? nullptr : &it->second;
      };
      auto num = [&](const char* k) {
        try {
          return std::stod(*opt(k));
        } catch (const std::exception&) {
          throw twin::argument_error(config + ": twin." + k + " '" + *opt(k) + "' is not a number");
        }
      };
      if (!rank_ && !energy_ && !sparsify_ && !sign_ && !budget_) {
        if (opt("rank")) rank_ = static_cast<std::int64_t>(num("rank"));
        if (opt("energy")) energy_ = num("energy");
        if (opt("sparsify_density")) sparsify_ = num("sparsify_density");
        if (opt("sign_density")) sign_ = num("sign_density");
        if (opt("budget")) budget_ = num("budget");
        if ((rank_ ? 1 : 0) + (energy_ ? 1 : 0) + (sparsify_ ? 1 : 0) + (sign_ ? 1 : 0) + (budget_ ? 1 : 0) > 1)
          throw twin::argument_error(config +
                                     ": the twin block sets more than one of rank, energy, sparsify_density, "
                                     "sign_density, budget");
      }
      // The block's SVD-factor options apply where the compressor is the
      // SVD's (the command line may have chosen another: it wins).
      const bool svd = rank_ || energy_;
      if (svd && !quant_bits_ && opt("quant_bits")) quant_bits_ = static_cast<int>(num("quant_bits"));
      if (app->count("--quant-group") == 0 && opt("quant_group"))
        quant_group_ = static_cast<std::int64_t>(num("quant_group"));
      if (svd && app->count("--residual-density") == 0 && opt("residual_density")) residual_ = num("residual_density");
      if (app->count("--factor-dtype") == 0 && opt("factor_dtype")) factor_dtype_ = *opt("factor_dtype");
      if (!svd_seed && opt("svd_seed")) svd_seed_ = static_cast<std::uint64_t>(num("svd_seed"));
      if (app->count("--svd-engine") == 0 && opt("svd_engine")) {
        svd_engine_ = *opt("svd_engine");
        if (svd_engine_ != "auto" && svd_engine_ != "exact" && svd_engine_ != "randomized")
          throw twin::argument_error(config + ": twin.svd_engine '" + svd_engine_ +
                                     "' is not one of auto, exact, randomized");
      }
      if (router_.empty() && opt("router")) router_ = *opt("router");
      if (exclude_.empty()) exclude_ = y.twin_exclude;
      b = load_checked(*c.base_model);
      for (const twin::ConfigSource& src : c.models) {
        if (src.model == *c.base_model) continue;
        const std::string n = task_name_of(src.model);
        if (std::find(names.begin(), names.end(), n) != names.end())
          throw twin::argument_error(config + ": two experts would both be named '" + n +
                                     "' (task names come from the models' folder or file names): give them "
                                     "distinct names");
        names.push_back(n);
        ex.push_back(load_checked(src.model));
      }
      if (ex.empty()) throw twin::argument_error(config + ": no models besides the base");
      std::map<std::string, const twin::StateDict*> by_model{{*c.base_model, &b->tensors}};
      std::size_t k = 0;
      for (const twin::ConfigSource& src : c.models)
        if (src.model != *c.base_model) by_model[src.model] = &ex[k++].tensors;
      std::vector<twin::PlannedTensor> plan = twin::plan_merge(c, [&](const std::string& model) {
        std::vector<std::string> n;
        for (const auto& [name, t] : *by_model.at(model)) n.push_back(name);
        return n;
      });
      warn_unmatched_filters(c, plan);
      config_merger.emplace(c, std::move(plan), twin::ConfigRunOptions{config_seed, twin::parse_rng(m.rng)});
    } else {
      if (base.empty() || experts.empty()) throw twin::argument_error("build needs --base and --expert, or --config");
      merger.emplace(twin::AnyMerger::from_settings(m.settings(experts.size())));
      b = load_checked(base);
      for (const auto& spec : experts) {
        const auto eq = spec.find('=');
        if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
          throw twin::argument_error("--expert '" + spec + "': expected NAME=PATH");
        names.push_back(spec.substr(0, eq));
        ex.push_back(load_checked(spec.substr(eq + 1)));
      }
    }
    {
      // An expert's head the base lacks is excluded too: its names count.
      std::vector<const twin::StateDict*> inputs = {&b->tensors};
      for (const auto& e : ex) inputs.push_back(&e.tensors);
      warn_unmatched_excludes(exclude_, inputs, "the base or the experts");
    }
    if (!rank_ && !energy_ && !sparsify_ && !sign_ && !budget_)
      throw twin::argument_error("build needs one of --rank, --energy, --sparsify-density, --sign-density or --budget");
    if ((sparsify_ || sign_ || budget_) && (quant_bits_ || residual_ > 0.0))
      throw twin::argument_error(
          "--quant-bits and --residual-density apply to SVD factors (--rank or --energy), not to "
          "--sparsify-density, --sign-density or --budget");
    const twin::dtype fd = *parse_out_dtype(factor_dtype_);
    std::optional<twin::Router> r;
    if (!router_.empty()) r = twin::load_router(router_);
    std::vector<const twin::StateDict*> ptrs;
    for (const auto& e : ex) ptrs.push_back(&e.tensors);
    twin::TwinBuildOptions o;
    o.task_names = names;
    o.exclude = exclude_;
    examples::Progress bar("build");
    // Streaming: once a tensor is merged (and again once compressed) the
    // mapped pages of its inputs are dropped, so resident memory stays near
    // one model plus the outputs however many experts there are.
    o.progress = [&](const twin::BuildProgress& p) {
      bar.update(p.done + (p.stage == "compress" ? p.total : 0), 2 * p.total, p.tensor);
      const std::string name(p.tensor);
      if (const twin::Tensor* t = b->tensors.find(name)) twin::release_pages(*b, *t);
      for (const auto& e : ex)
        if (const twin::Tensor* t = e.tensors.find(name)) twin::release_pages(e, *t);
    };
    auto build_with = [&](const auto& compressor) {
      if (config_merger) return twin::TwinModel::build(b->tensors, ptrs, *config_merger, compressor, o);
      return twin::TwinModel::build(b->tensors, ptrs, *merger, compressor, o);
    };
    twin::TwinModel model;
    twin::BudgetReport budget_report;
    if (budget_) {
      twin::BudgetOptions bo;
      bo.fraction = *budget_;
      bo.max_rank = max_rank;
      for (twin::QuantSpec& q : bo.formats)
        if (q.enabled()) q.group = quant_group_;
      bo.validate();
      model = config_merger ? twin::build_within_budget(b->tensors, ptrs, *config_merger, bo, o, &budget_report)
                            : twin::build_within_budget(b->tensors, ptrs, *merger, bo, o, &budget_report);
    } else if (sparsify_) {
      twin::check_unit_interval(*sparsify_, "--sparsify-density");
      model = build_with(twin::MagnitudeSparsifier{*sparsify_, fd});
    } else if (sign_) {
      const twin::SignCompressor c{*sign_, sign_alpha == "row"};
      c.validate();
      model = build_with(c);
    } else {
      twin::SvdCompressor c = rank_ ? twin::SvdCompressor::with_rank(*rank_, fd)
                                    : twin::SvdCompressor::with_energy(*energy_, fd);
      c.seed = svd_seed_;
      c.engine = svd_engine_ == "exact"        ? twin::SvdEngine::exact
                 : svd_engine_ == "randomized" ? twin::SvdEngine::randomized
                                               : twin::SvdEngine::automatic;
      if (quant_bits_) c.quant = twin::QuantSpec{*quant_bits_, quant_group_};
      c.residual_density = residual_;
      c.validate();
      model = build_with(c);
    }
    bar.finish();
    if (budget_)
      std::fprintf(stderr, "budget: %.0f of %.0f bytes for the exclusive modules\n", budget_report.used,
                   budget_report.limit);
    twin::save_twin_model(out, model, r ? &*r : nullptr);
    const twin::StorageReport st = model.storage();
    std::fprintf(stderr,
                 "built %s: %zu tasks, %zu tensors, %.2f MB (%.1f%% of %zu dense experts), relative error %.4f\n",
                 out.c_str(), model.num_tasks(), model.entries().size(), static_cast<double>(st.total()) / 1e6,
                 100.0 * st.ratio(), model.num_tasks(), model.relative_error());
    if (st.ratio() > 1.0)
      std::fprintf(stderr,
                   "warning: the model is larger than the %zu dense experts it compresses: a lower --rank, an "
                   "--energy below 1, or --budget keeps it smaller\n",
                   model.num_tasks());
  }
};

// --- run (a mergekit YAML config) ----------------------------------------------
struct RunCommand {
  std::string config, out, rng = "philox";
  std::uint64_t seed = 0;
  std::uint64_t max_shard_bytes = 5'000'000'000;
  bool copy_tokenizer = true;

  void add(CLI::App& root) {
    CLI::App* c = root.add_subcommand(
        "run",
        "merge as a mergekit YAML config says: merge_method, base_model, models or slices with layer_range, "
        "parameters with gradients and filters, dtype, out_dtype");
    c->add_option("CONFIG", config, "the mergekit YAML config")->required();
    c->add_option("-o,--output", out,
                  "output folder (created if missing): sharded safetensors, model.safetensors.index.json, "
                  "mergekit_config.yml, the base's config.json and tokenizer files")
        ->required();
    c->add_option("--random-seed", seed, "seed of the randomized methods (mergekit's --random-seed)")
        ->capture_default_str();
    c->add_option("--rng", rng, "philox (ours) or torch (mergekit's draws for each tensor seeded alone)")
        ->capture_default_str();
    c->add_option("--max-shard-size", max_shard_bytes, "bytes of tensor data per output shard")->capture_default_str();
    c->add_flag("--copy-tokenizer,!--no-copy-tokenizer", copy_tokenizer,
                "copy the tokenizer files of the base_model (of the first model in a config without one) into the "
                "output, as mergekit does (default: on)");
    c->callback([this] { run(); });
  }

  // A model's folder (the model itself, or the folder of its file).
  static fs::path folder_of(const std::string& model) {
    fs::path p(model);
    return fs::is_directory(p) ? p : p.parent_path();
  }
  // The folder holding a model's config.json, if it has one.
  static std::optional<fs::path> hf_config_of(const std::string& model) {
    const fs::path p = folder_of(model);
    std::error_code ec;
    if (fs::is_regular_file(p / "config.json", ec)) return p / "config.json";
    return std::nullopt;
  }

  void run() const {
    // "merged/" names the folder "merged" (a trailing separator leaves an
    // empty file name, whose parent would be the folder itself).
    fs::path dir = fs::path(out).lexically_normal();
    if (dir.filename().empty() && dir.has_parent_path()) dir = dir.parent_path();
    const fs::path parent = dir.has_parent_path() ? dir.parent_path() : fs::path(".");
    std::error_code ec;
    if (!fs::is_directory(parent, ec))
      throw twin::io_error(out + ": the parent folder '" + parent.string() + "' does not exist");
    if (fs::exists(dir, ec) && !fs::is_directory(dir, ec)) throw twin::io_error(out + ": is a file, expected a folder");
    const examples::MergekitYaml y = examples::load_mergekit_yaml(config);
    const twin::MergeConfig& c = y.config;
    if (y.twin_block) throw twin::argument_error(config + ": the twin block is for `twin-merge build`");
    // The output folder must not be an input's: its checkpoint files are
    // replaced at the end.
    {
      std::vector<std::string> inputs;
      if (c.base_model) inputs.push_back(*c.base_model);
      for (const twin::ConfigSource& m : c.models) inputs.push_back(m.model);
      for (const twin::ConfigSlice& sl : c.slices) {
        if (sl.base_model) inputs.push_back(*sl.base_model);
        for (const twin::ConfigSource& m : sl.sources) inputs.push_back(m.model);
      }
      for (const std::string& m : inputs)
        if (fs::exists(dir, ec) && fs::equivalent(folder_of(m), dir, ec))
          throw twin::io_error(out + ": is the folder of input model '" + m + "'; write the merge to another folder");
    }
    const twin::ConfigRunOptions ro{seed, twin::parse_rng(rng)};
    // Every model once, mapped.
    std::map<std::string, twin::LoadedCheckpoint> models;
    auto load = [&](const std::string& m) -> const twin::LoadedCheckpoint& {
      auto it = models.find(m);
      if (it == models.end()) it = models.emplace(m, load_checked(m)).first;
      return it->second;
    };
    const std::vector<twin::PlannedTensor> plan = twin::plan_merge(c, [&](const std::string& m) {
      std::vector<std::string> n;
      for (const auto& [name, t] : load(m).tensors) n.push_back(name);
      return n;
    });
    if (plan.empty()) throw twin::argument_error(config + ": the config selects no tensors");
    warn_unmatched_filters(c, plan);
    twin::StateDict merged;
    examples::Progress bar("run");
    std::size_t done = 0;
    std::int64_t layers = 0;
    for (const twin::PlannedTensor& p : plan) {
      if (const auto l = twin::layer_of(p.name)) layers = std::max(layers, l->index + 1);
      const twin::TensorMergePlan tp = twin::tensor_merge_plan(c, p, ro);
      // The inputs, cast to the config's dtype first as mergekit loads them.
      std::vector<twin::Tensor> cast;
      cast.reserve(p.inputs.size());
      std::vector<twin::ConstTensorView> in;
      for (const auto& i : p.inputs) {
        const twin::Tensor* t = load(i.model).tensors.find(i.tensor);
        if (!t)
          throw twin::name_error(i.model + ": has no tensor '" + i.tensor + "' (an input of output tensor '" + p.name +
                                 "')");
        if (c.dtype && t->dtype() != *c.dtype) {
          cast.push_back(t->clone_as(*c.dtype));
          in.push_back(cast.back().view());
        } else {
          in.push_back(t->view());
        }
      }
      const auto bi = static_cast<std::size_t>(std::max(tp.base, 0));
      const twin::ConstTensorView base = in[bi];
      // Shapes differ: said with the files, which the merger's own error
      // (expert k of its inputs) cannot name.
      for (std::size_t k = 0; k < in.size(); ++k)
        if (!std::ranges::equal(in[k].shape(), base.shape()))
          throw twin::shape_error(p.inputs[k].model + ": tensor '" + p.inputs[k].tensor + "' has shape " +
                                  in[k].shape_str() + ", " + p.inputs[bi].model + "'s " + base.shape_str() +
                                  " (inputs of output tensor '" + p.name + "')");
      std::vector<twin::ConstTensorView> ev;
      for (std::size_t i : tp.experts) ev.push_back(in[i]);
      const twin::dtype od = c.out_dtype.value_or(c.dtype.value_or(base.dtype()));
      twin::Tensor& o = merged.insert(p.name, twin::Tensor::empty(od, base.shape()));
      tp.merger.merge_tensor(twin::TensorMergeArgs{p.name, base, ev, o.view()});
      for (const auto& i : p.inputs) {
        const twin::LoadedCheckpoint& m = load(i.model);
        if (const twin::Tensor* t = m.tensors.find(i.tensor)) twin::release_pages(m, *t);
      }
      bar.update(++done, plan.size(), p.name);
    }
    bar.finish();
    fs::create_directories(dir, ec);
    if (ec) throw twin::io_error(out + ": cannot create the folder: " + ec.message());
    // As huggingface_hub does when it saves: an earlier run's shards and a
    // model.safetensors go, so that no loader reads a stale checkpoint beside
    // the new one (transformers tries model.safetensors first) — once the new
    // shards and index are written, so a failed save loses nothing.
    auto checkpoint_file = [](const std::string& f) {
      auto digits = [&](std::size_t at) {
        return std::all_of(f.begin() + static_cast<std::ptrdiff_t>(at), f.begin() + static_cast<std::ptrdiff_t>(at + 5),
                           [](char ch) { return ch >= '0' && ch <= '9'; });
      };
      return f == "model.safetensors" || (f.size() == 32 && f.starts_with("model-") && f.compare(11, 4, "-of-") == 0 &&
                                          f.ends_with(".safetensors") && digits(6) && digits(15));
    };
    std::vector<fs::path> earlier;
    for (const fs::directory_entry& e : fs::directory_iterator(dir))
      if (checkpoint_file(e.path().filename().string())) earlier.push_back(e.path());
    const fs::path index = twin::save_safetensors_sharded(
        dir, merged, {{"format", "pt"}, {"twin.merge.method", c.merge_method}}, max_shard_bytes);
    const twin::SafetensorsIndex written = twin::parse_safetensors_index(
        twin::detail::read_small_file(index, twin::safetensors_max_header_bytes), index.string());
    for (const fs::path& f : earlier)
      if (std::find(written.shards.begin(), written.shards.end(), f.filename().string()) == written.shards.end())
        fs::remove(f);
    // The config as given, and the base's (or first model's) config.json with
    // the layer count of the output.
    auto write_text = [&](const fs::path& path, const std::string& text) {
      twin::AtomicFile f(path);
      f.write(text.data(), text.size());
      f.commit();
    };
    write_text(dir / "mergekit_config.yml", twin::detail::read_small_file(config, 1 << 20));
    const std::string hf_from = c.base_model        ? *c.base_model
                                : !c.models.empty() ? c.models.front().model
                                                    : c.slices.front().sources.front().model;
    if (const auto hf = hf_config_of(hf_from)) {
      twin::detail::json_value j =
          twin::detail::parse_untrusted_json(twin::detail::read_small_file(*hf, 1 << 24), hf->string(), "config.json");
      if (j.is_object() && j.contains("num_hidden_layers") && layers > 0) j["num_hidden_layers"] = layers;
      // mergekit sets torch_dtype to out_dtype, else dtype (newer transformers
      // spell it `dtype`: set too where the file has it).
      if (const auto od = c.out_dtype ? c.out_dtype : c.dtype; od && j.is_object()) {
        const char* name = examples::torch_dtype_name(*od);
        j["torch_dtype"] = name;
        if (j.contains("dtype")) j["dtype"] = name;
      }
      write_text(dir / "config.json", twin::detail::json_dump(j, hf->string(), 2) + "\n");
    }
    // mergekit's tokenizer copy: where the donor folder has tokenizer_config.json and tokenizer.json or
    // tokenizer.model, these files as they are (mergekit re-serializes any other tokenizer through
    // transformers; vocab.json and vocab.txt are copied here instead).
    if (copy_tokenizer) {
      const fs::path from = folder_of(hf_from);
      if (fs::is_regular_file(from / "tokenizer_config.json", ec) &&
          (fs::is_regular_file(from / "tokenizer.json", ec) || fs::is_regular_file(from / "tokenizer.model", ec) ||
           fs::is_regular_file(from / "vocab.json", ec) || fs::is_regular_file(from / "vocab.txt", ec)))
        for (const char* f : {"tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
                              "added_tokens.json", "merges.txt", "vocab.json", "vocab.txt", "chat_template.jinja",
                              "generation_config.json", "chat_template.json", "video_preprocessor_config.json"})
          if (fs::is_regular_file(from / f, ec)) write_text(dir / f, twin::detail::read_small_file(from / f, 1u << 30));
    }
    std::fprintf(stderr, "merged %zu tensors (%lld layers) with %s into %s\n", merged.size(),
                 static_cast<long long>(layers), c.merge_method.c_str(), out.c_str());
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
    c->add_option("--threshold", threshold,
                  "drop tasks whose weight is below this (the top task always stays) and renormalize the rest")
        ->capture_default_str();
    c->add_option("--dtype", dtype,
                  "output dtype f32|f16|bf16 (default: the shared weights'; an excluded tensor keeps its copy's)");
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
      // An excluded tensor comes from the top task, at its copy's own shape
      // (a classifier head of that task's label count).
      const twin::dtype t = od.value_or(e.excluded ? e.copies[twin::DynamicFuser::top_task(w)].dtype()
                                                   : f.model.shared().at(e.name).dtype());
      twin::Tensor& o = fused.insert(e.name, twin::Tensor::empty(t, fuser.output_shape(e.name, w)));
      fuser.fuse_tensor(e.name, o, w);
      bar.update(++done, f.model.entries().size(), e.name);
    }
    bar.finish();
    std::string ws;
    for (float x : w) twin::detail::append_listed(ws, std::to_string(x), ",");
    twin::save_safetensors(out, fused, {{"format", "pt"}, {"twin.fuse.weights", ws}, {"twin.fuse.model", model}});
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
  double lr = 5e-4, weight_decay = 0.0, holdout = 0.1, dropout = 0.5, max_grad_norm = 0.0;
  std::uint64_t seed = 0;
  bool balanced = false;
  std::string lr_schedule = "constant";

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
    c->add_option("--lr-schedule", lr_schedule,
                  "constant, or linear: decayed to 0 over --epochs' updates (the official router's Trainer)")
        ->check(CLI::IsMember({"constant", "linear"}))
        ->capture_default_str();
    c->add_option("--max-grad-norm", max_grad_norm,
                  "clip the gradients' global L2 norm to this before each update (0: no clipping; the official "
                  "router's Trainer: 1)")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
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
    o.lr_schedule = lr_schedule == "linear" ? twin::LrSchedule::linear : twin::LrSchedule::constant;
    o.max_grad_norm = max_grad_norm;
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

  // What a module keeps, in a few characters: rank and bits, kept entries.
  static std::string module_summary(const twin::ExclusiveModule& mod) {
    std::string s;
    if (mod.has_factors()) {
      s = "r=" + std::to_string(mod.rank());
      if (mod.quantized()) s += " q" + std::to_string(mod.quant().bits) + "/" + std::to_string(mod.quant().group);
    }
    if (mod.kind() == twin::ModuleKind::sign) {
      std::int64_t kept = twin::checked_numel(mod.shape());
      if (mod.mask().numel() > 0) {
        kept = 0;
        const auto* mk = static_cast<const std::uint8_t*>(mod.mask().data());
        for (std::int64_t i = 0; i < mod.mask().numel(); ++i) kept += std::popcount(mk[i]);
      }
      s = "signs=" + std::to_string(kept);
    }
    if (mod.nnz() > 0) s += (s.empty() ? "nnz=" : " nnz=") + std::to_string(mod.nnz());
    return s;
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
    std::printf("%-50s %-15s", "tensor", "kind");
    for (const auto& t : m.task_names()) std::printf(" %24s", t.c_str());
    std::printf("\n");
    for (const auto& e : m.entries()) {
      std::string kind = e.excluded ? "excluded" : std::string(twin::module_kind_name(e.modules[0].kind()));
      for (const auto& mod : e.modules)
        if (mod.kind() != e.modules[0].kind()) kind = "mixed";
      std::printf("%-50s %-15s", e.name.c_str(), kind.c_str());
      for (std::size_t t = 0; t < m.num_tasks(); ++t) {
        if (e.excluded) {
          // A copy's shape where the tasks' differ (a head per label count).
          std::printf(" %24s", e.uniform_shape() ? "-" : e.copies[t].shape_str().c_str());
          continue;
        }
        char buf[96];
        std::snprintf(buf, sizeof buf, "%s err=%.3f", module_summary(e.modules[t]).c_str(),
                      m.relative_error(e.name, t));
        std::printf(" %24s", buf);
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
  app.add_option("--threads", threads, "worker threads (default 0: all cores)")->check(CLI::Range(0, 1 << 16));
  MergeCommand merge;
  RunCommand run;
  BuildCommand build;
  FuseCommand fuse;
  TrainRouterCommand train_router;
  RouteCommand route;
  InspectCommand inspect;
  merge.add(app);
  run.add(app);
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
