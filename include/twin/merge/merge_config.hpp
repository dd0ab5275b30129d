// mergekit merge configurations, without the YAML (docs/mergekit_methods.md
// §15; the reader is examples/common/mergekit_yaml.hpp): parameter settings
// (numbers, gradients over layers, filters by tensor name), the precedence of
// their levels, the plan of output tensors over slices and layer ranges, and
// the per-tensor merger that a config asks for.
//
// Layers are found by name, not by architecture: a tensor's layer is its
// first dotted component made of digits ("model.layers.12.mlp.up_proj.weight"
// is layer 12); tensors without one are embeddings ("pre": a name containing
// "embed", "wte" or "wpe") or final ones ("post": the rest: norm, lm_head).
// Pre tensors come from the first slice's sources, post tensors from the
// last slice's, both at gradient position t = 0, as mergekit plans them.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "twin/merge/any_merger.hpp"

namespace twin {

// A number, or a gradient: values spread evenly over a slice's layers.
struct Gradient {
  std::vector<double> values;

  // mergekit's interpolation at t in [0, 1], in this order of operations:
  // x = t·(n − 1), i0 = floor(x), i1 = min(n − 1, i0 + 1), f = x − i0,
  // (1 − f)·g[i0] + f·g[i1].
  double at(double t) const {
    if (values.empty()) throw argument_error("an empty list is not a parameter value");
    const std::size_t n = values.size();
    if (n == 1) return values[0];
    const double x = t * static_cast<double>(n - 1);
    const auto i0 = static_cast<std::size_t>(std::clamp(std::floor(x), 0.0, static_cast<double>(n - 1)));
    const std::size_t i1 = std::min(n - 1, i0 + 1);
    const double f = x - static_cast<double>(i0);
    return (1.0 - f) * values[i0] + f * values[i1];
  }
};

// One level's setting of a parameter: entries scanned in order, the first
// whose filter matches gives the value (at the tensor's t). A filter matches
// when absent, "*", or a plain case-sensitive substring of the tensor name.
struct ParameterSetting {
  struct Entry {
    std::optional<std::string> filter;
    Gradient value;
  };
  std::vector<Entry> entries;

  static ParameterSetting constant(double v) { return {{{std::nullopt, {{v}}}}}; }
  static ParameterSetting gradient(std::vector<double> v) { return {{{std::nullopt, {std::move(v)}}}}; }

  std::optional<double> evaluate(std::string_view tensor, double t) const {
    for (const Entry& e : entries)
      if (!e.filter || *e.filter == "*" || tensor.find(*e.filter) != std::string_view::npos) return e.value.at(t);
    return std::nullopt;
  }
};

using ParameterMap = std::map<std::string, ParameterSetting, std::less<>>;

struct ConfigSource {
  std::string model;
  std::optional<std::pair<std::int64_t, std::int64_t>> layer_range;  // [a, b); unset: every layer
  ParameterMap parameters;
};

struct ConfigSlice {
  std::vector<ConfigSource> sources;
  std::optional<std::string> base_model;  // overrides the config's for this slice
  ParameterMap parameters;
};

struct MergeConfig {
  std::string merge_method;
  std::optional<std::string> base_model;
  std::optional<twin::dtype> dtype, out_dtype;
  ParameterMap parameters;
  std::vector<ConfigSource> models;  // `models:` ...
  std::vector<ConfigSlice> slices;   // ... or `slices:`, not both
};

// --- tensor names and layers -------------------------------------------------

struct LayerRef {
  std::int64_t index = 0;
  std::size_t pos = 0, len = 0;  // where the digits are in the name
};

inline std::optional<LayerRef> layer_of(std::string_view name) {
  std::size_t start = 0;
  while (start <= name.size()) {
    const std::size_t dot = name.find('.', start);
    const std::size_t end = dot == std::string_view::npos ? name.size() : dot;
    const std::string_view part = name.substr(start, end - start);
    if (!part.empty() && part.size() <= 9 &&
        std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return LayerRef{std::stoll(std::string(part)), start, end - start};
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return std::nullopt;
}

inline std::string with_layer(std::string_view name, const LayerRef& r, std::int64_t index) {
  return std::string(name.substr(0, r.pos)) + std::to_string(index) + std::string(name.substr(r.pos + r.len));
}

// Embeddings come before the layers; GPT-NeoX's output head `embed_out`
// comes after them, as mergekit's architecture lists it.
inline bool is_pre_tensor(std::string_view name) {
  if (name.find("embed_out") != std::string_view::npos) return false;
  return name.find("embed") != std::string_view::npos || name.find("wte") != std::string_view::npos ||
         name.find("wpe") != std::string_view::npos;
}

// Calls f(map, per_model, where) for every parameter map of `c`, top level
// first, then each model, each slice and its sources; `where` names the
// level for messages ("parameters", "model 'x'", "slice 1 source 'y'").
template <class F>
void for_each_parameter_map(const MergeConfig& c, F&& f) {
  f(c.parameters, false, std::string("parameters"));
  for (const ConfigSource& s : c.models) f(s.parameters, true, "model '" + s.model + "'");
  for (std::size_t i = 0; i < c.slices.size(); ++i) {
    f(c.slices[i].parameters, false, "slice " + std::to_string(i));
    for (const ConfigSource& s : c.slices[i].sources)
      f(s.parameters, true, "slice " + std::to_string(i) + " source '" + s.model + "'");
  }
}

// Whether any level of `c` sets a parameter to a gradient (a list of more
// than one value).
inline bool has_gradient(const MergeConfig& c) {
  bool found = false;
  for_each_parameter_map(c, [&](const ParameterMap& m, bool, const std::string&) {
    for (const auto& [name, setting] : m)
      for (const auto& e : setting.entries) found = found || e.value.values.size() > 1;
  });
  return found;
}

// --- the plan ------------------------------------------------------------------

// One output tensor: where its inputs come from and which parameters apply.
struct PlannedTensor {
  struct Input {
    std::string model, tensor;                   // the model and its tensor's name
    std::shared_ptr<const ParameterMap> params;  // the source's parameters
  };
  std::string name;  // output tensor name
  double t = 0.0;    // gradient position
  std::shared_ptr<const ParameterMap> slice_params;
  std::optional<std::string> base_model;  // of its slice
  std::vector<Input> inputs;              // the slice's sources, in order
};

// The output tensors of `c`, in output order (pre, layers, post).
// tensor_names(model) lists a model's tensors.
inline std::vector<PlannedTensor> plan_merge(
    const MergeConfig& c, const std::function<std::vector<std::string>(const std::string&)>& tensor_names) {
  if (c.models.empty() == c.slices.empty())
    throw argument_error("a merge config needs exactly one of `models` and `slices`");
  std::map<std::string, std::vector<std::string>> names;
  auto names_of = [&](const std::string& m) -> const std::vector<std::string>& {
    auto it = names.find(m);
    if (it == names.end()) it = names.emplace(m, tensor_names(m)).first;
    return it->second;
  };
  auto num_layers = [&](const std::string& m) {
    std::int64_t n = 0;
    for (const std::string& s : names_of(m))
      if (const auto l = layer_of(s)) n = std::max(n, l->index + 1);
    return n;
  };
  // Layers are found by name, one stack per model: a model with several
  // (a vision tower beside the language model, an encoder and a decoder)
  // would have them cut and renumbered together by slices, and a gradient's
  // t taken over the longest. mergekit needs its `modules:` syntax there.
  const bool gradient = has_gradient(c);
  auto one_stack = [&](const std::string& m) {
    std::set<std::string_view> prefixes;
    for (const std::string& s : names_of(m))
      if (const auto l = layer_of(s)) prefixes.insert(std::string_view(s).substr(0, l->pos));
    if (prefixes.size() < 2 || (c.slices.empty() && !gradient)) return;
    std::string list;
    for (std::string_view p : prefixes) detail::append_listed(list, std::string(p) + "N", ", ");
    throw argument_error("model '" + m + "' has " + std::to_string(prefixes.size()) + " layer stacks (" + list +
                         "): " + (c.slices.empty() ? "a gradient parameter" : "slices") +
                         " would mix them (mergekit's `modules:` syntax is needed there, and not supported)");
  };
  for (const ConfigSource& s : c.models) one_stack(s.model);
  if (c.base_model && !c.models.empty()) one_stack(*c.base_model);
  for (const ConfigSlice& sl : c.slices)
    for (const ConfigSource& s : sl.sources) one_stack(s.model);
  // `models:` is one slice over every layer, the base appended when not listed.
  std::vector<ConfigSlice> slices = c.slices;
  if (!c.models.empty()) {
    ConfigSlice s;
    s.sources = c.models;
    if (c.base_model &&
        std::none_of(c.models.begin(), c.models.end(), [&](const ConfigSource& m) { return m.model == *c.base_model; }))
      s.sources.push_back({*c.base_model, std::nullopt, {}});
    for (ConfigSource& src : s.sources)
      src.layer_range = std::pair<std::int64_t, std::int64_t>{0, num_layers(src.model)};
    slices = {s};
  }
  // Each level's parameters shared by the tensors that read them.
  std::vector<std::shared_ptr<const ParameterMap>> slice_params;
  std::vector<std::vector<std::shared_ptr<const ParameterMap>>> source_params;
  for (const ConfigSlice& s : slices) {
    if (s.sources.empty()) throw argument_error("a slice has no sources");
    slice_params.push_back(std::make_shared<const ParameterMap>(s.parameters));
    source_params.emplace_back();
    for (const ConfigSource& src : s.sources)
      source_params.back().push_back(std::make_shared<const ParameterMap>(src.parameters));
  }
  std::vector<PlannedTensor> plan;
  auto add_unlayered = [&](std::size_t si, bool pre) {
    const ConfigSlice& s = slices[si];
    for (const std::string& n : names_of(s.sources.front().model)) {
      if (layer_of(n) || is_pre_tensor(n) != pre) continue;
      PlannedTensor p{n, 0.0, slice_params[si], s.base_model ? s.base_model : c.base_model, {}};
      for (std::size_t k = 0; k < s.sources.size(); ++k)
        p.inputs.push_back({s.sources[k].model, n, source_params[si][k]});
      plan.push_back(std::move(p));
    }
  };
  add_unlayered(0, true);
  std::int64_t out_layer = 0;
  for (std::size_t si = 0; si < slices.size(); ++si) {
    const ConfigSlice& s = slices[si];
    std::int64_t len = -1;
    for (const ConfigSource& src : s.sources) {
      const auto [a, b] = src.layer_range.value_or(std::pair<std::int64_t, std::int64_t>{0, num_layers(src.model)});
      if (b < a)
        throw argument_error("slice " + std::to_string(si) + ": layer_range [" + std::to_string(a) + ", " +
                             std::to_string(b) + ") of '" + src.model + "' ends before it starts");
      if (a < 0 || b > num_layers(src.model))
        throw argument_error("slice " + std::to_string(si) + ": layer_range [" + std::to_string(a) + ", " +
                             std::to_string(b) + ") of '" + src.model + "' is outside its " +
                             std::to_string(num_layers(src.model)) + " layers");
      if (len >= 0 && b - a != len)
        throw argument_error(c.models.empty() ? "slice " + std::to_string(si) +
                                                    ": every source must cover the same number of layers (" +
                                                    std::to_string(len) + " and " + std::to_string(b - a) + ")"
                                              : "models '" + s.sources.front().model + "' and '" + src.model +
                                                    "' have " + std::to_string(len) + " and " + std::to_string(b - a) +
                                                    " layers: a models: merge needs the same layer count");
      len = b - a;
    }
    for (std::int64_t k = 0; k < len; ++k) {
      const double t = len > 1 ? static_cast<double>(k) / static_cast<double>(len - 1) : 1.0;
      const ConfigSource& first = s.sources.front();
      const std::int64_t first_layer =
          first.layer_range.value_or(std::pair<std::int64_t, std::int64_t>{0, 0}).first + k;
      for (const std::string& n : names_of(first.model)) {
        const auto l = layer_of(n);
        if (!l || l->index != first_layer) continue;
        PlannedTensor p{
            with_layer(n, *l, out_layer), t, slice_params[si], s.base_model ? s.base_model : c.base_model, {}};
        for (std::size_t q = 0; q < s.sources.size(); ++q) {
          const ConfigSource& src = s.sources[q];
          const std::int64_t layer = src.layer_range.value_or(std::pair<std::int64_t, std::int64_t>{0, 0}).first + k;
          p.inputs.push_back({src.model, with_layer(n, *l, layer), source_params[si][q]});
        }
        plan.push_back(std::move(p));
      }
      ++out_layer;
    }
  }
  add_unlayered(slices.size() - 1, false);
  return plan;
}

// --- parameters and the merger of one tensor --------------------------------------

namespace detail {
struct MethodParameters {
  std::vector<std::string_view> global, per_model;
};

// mergekit's parameters per method (docs/mergekit_methods.md §2–14).
inline MethodParameters mergekit_parameters(std::string_view m) {
  if (GeneralizedTaskArithmetic::mergekit(m)) {
    MethodParameters p{{"normalize", "rescale", "lambda", "int8_mask"}, {"weight", "density"}};
    if (m.starts_with("breadcrumbs")) p.per_model.push_back("gamma");
    if (m.starts_with("della")) p.per_model.push_back("epsilon");
    return p;
  }
  if (m == "linear") return {{"normalize"}, {"weight"}};
  if (m == "slerp" || m == "nearswap") return {{"t"}, {}};
  if (m == "nuslerp") return {{"nuslerp_flatten", "nuslerp_row_wise"}, {"weight"}};
  if (m == "multislerp") return {{"normalize_weights", "eps"}, {"weight"}};
  if (m == "karcher") return {{"max_iter", "tol"}, {}};
  if (m == "model_stock") return {{"filter_wise"}, {}};
  if (m == "sce") return {{"select_topk", "int8_mask"}, {}};
  if (m == "ram") return {{"epsilon"}, {}};
  if (m == "ramplus_tl") return {{"epsilon", "r", "alpha"}, {}};
  if (m == "arcee_fusion") return {{}, {}};
  if (m == "passthrough") return {{}, {"scale"}};
  std::string known;
  for (auto n : merge_method_names)
    if (n != "average") detail::append_listed(known, n, ", ");
  throw argument_error("merge_method '" + std::string(m) + "' is not supported: expected one of " + known);
}

inline bool contains(const std::vector<std::string_view>& v, std::string_view s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}
}  // namespace detail

// Refuses a parameter the method does not take, a global parameter given
// per model (where mergekit would silently ignore it), and a model listed
// twice in `models` or in one slice's sources (mergekit keys a slice's
// tensors by model: the last would silently win). Returns the method's
// parameters.
inline detail::MethodParameters check_config_parameters(const MergeConfig& c) {
  const detail::MethodParameters p = detail::mergekit_parameters(c.merge_method);
  auto once_each = [](const std::vector<ConfigSource>& sources, const std::string& where) {
    std::set<std::string_view> seen;
    for (const ConfigSource& s : sources)
      if (!seen.insert(s.model).second)
        throw argument_error(where + ": model '" + s.model +
                             "' is listed twice (mergekit would keep only the last): list each model once");
  };
  once_each(c.models, "models");
  for (std::size_t i = 0; i < c.slices.size(); ++i) once_each(c.slices[i].sources, "slice " + std::to_string(i));
  auto check = [&](const ParameterMap& m, bool per_model, const std::string& where) {
    for (const auto& [name, v] : m) {
      if (detail::contains(p.per_model, name) || (!per_model && detail::contains(p.global, name))) continue;
      if (per_model && detail::contains(p.global, name))
        throw argument_error(where + ": '" + name + "' is a global parameter of " + c.merge_method +
                             " (mergekit ignores it under a model): move it to the slice or top-level parameters");
      std::string list;
      for (auto n : p.global) detail::append_listed(list, n, ", ");
      for (auto n : p.per_model) detail::append_listed(list, n, ", ");
      throw argument_error(where + ": " + c.merge_method + " takes no parameter '" + name +
                           "' (its parameters: " + (list.empty() ? "none" : list) + ")");
    }
  };
  for_each_parameter_map(c, check);
  return p;
}

// Options of a run that are not in the config (mergekit's command line).
struct ConfigRunOptions {
  std::uint64_t seed = 0;  // --random-seed
  RngKind rng = RngKind::philox;
};

// How a planned tensor is merged: the merger, and which inputs it takes as
// base and experts (indices into PlannedTensor::inputs; base < 0: the config
// has no base model and the merger does not read the base view, so the
// first input stands in for it).
struct TensorMergePlan {
  AnyMerger merger;
  int base = -1;
  std::vector<std::size_t> experts;
};

// The value of parameter `name` for input `model` (per-model: the source's
// parameters, matched against its input tensor name) or for the tensor
// (model < 0: global, matched against the output name), by precedence:
// source, slice, config; nullopt when no level sets it.
inline std::optional<double> config_parameter(const MergeConfig& c, const PlannedTensor& p, std::string_view name,
                                              int model = -1) {
  const std::string_view tensor = model >= 0 ? std::string_view(p.inputs[static_cast<std::size_t>(model)].tensor)
                                             : std::string_view(p.name);
  auto look = [&](const std::shared_ptr<const ParameterMap>& m) -> std::optional<double> {
    if (!m) return std::nullopt;
    const auto it = m->find(name);
    if (it == m->end()) return std::nullopt;
    return it->second.evaluate(tensor, p.t);
  };
  if (model >= 0)
    if (auto v = look(p.inputs[static_cast<std::size_t>(model)].params)) return v;
  if (auto v = look(p.slice_params)) return v;
  const auto it = c.parameters.find(name);
  return it == c.parameters.end() ? std::nullopt : it->second.evaluate(tensor, p.t);
}

inline TensorMergePlan tensor_merge_plan(const MergeConfig& c, const PlannedTensor& p, const ConfigRunOptions& o = {}) {
  const std::string& m = c.merge_method;
  TensorMergePlan out{AnyMerger(Passthrough{}), -1, {}};
  for (std::size_t i = 0; i < p.inputs.size(); ++i) {
    if (p.base_model && p.inputs[i].model == *p.base_model) {
      if (out.base < 0) out.base = static_cast<int>(i);
    } else {
      out.experts.push_back(i);
    }
  }
  const bool has_base = out.base >= 0;
  const std::string where = "tensor '" + p.name + "'";
  // A base_model missing from a slice's sources: the methods that read the
  // base refuse it; linear, multislerp, karcher and passthrough merge the
  // slice's sources without it, as mergekit does (a layer-stacking
  // passthrough naming a base for its config.json).
  auto base_absent = [&] {
    if (p.base_model && !has_base)
      throw argument_error(where + ": the base model '" + *p.base_model + "' is not among the slice's sources");
  };
  auto global = [&](std::string_view n) { return config_parameter(c, p, n); };
  auto flag = [&](std::string_view n, bool def) {
    const auto v = global(n);
    return v ? *v != 0.0 : def;
  };
  auto per_model = [&](std::string_view n, bool required, double def, const std::vector<std::size_t>& who) {
    std::vector<double> v;
    for (std::size_t i : who) {
      const auto x = config_parameter(c, p, n, static_cast<int>(i));
      if (!x && required)
        throw argument_error(where + ": parameter '" + std::string(n) + "' is required for model '" +
                             p.inputs[i].model + "'");
      v.push_back(x.value_or(def));
    }
    return v;
  };
  auto need_base = [&] {
    base_absent();
    if (!has_base) throw argument_error(m + " needs a base_model");
  };
  auto count = [&](std::size_t n, const std::string& what) {
    if (out.experts.size() != n)
      throw argument_error(where + ": " + m + " takes " + what + "; found " + std::to_string(out.experts.size()));
  };
  // Without a base, the merger reads the experts only; the first stands in as the base view.
  auto all_inputs_as_experts = [&] {
    if (!has_base) {
      out.experts.clear();
      for (std::size_t i = 0; i < p.inputs.size(); ++i) out.experts.push_back(i);
    }
  };
  if (auto g = GeneralizedTaskArithmetic::mergekit(m)) {
    need_base();
    g->weights = per_model("weight", true, 1.0, out.experts);
    g->densities = per_model("density", false, 1.0, out.experts);
    if (m.starts_with("breadcrumbs")) g->gammas = per_model("gamma", false, 0.01, out.experts);
    if (m.starts_with("della")) g->epsilons = per_model("epsilon", false, 0.15, out.experts);
    g->normalize = flag("normalize", g->normalize);
    g->rescale = flag("rescale", g->rescale);
    g->scaling = global("lambda").value_or(1.0);
    g->seed = o.seed;
    g->rng = o.rng;
    out.merger = AnyMerger(*g);
  } else if (m == "linear") {
    all_inputs_as_experts();
    Linear l;
    l.weights = per_model("weight", true, 1.0, out.experts);
    l.normalize = flag("normalize", true);
    if (has_base) {
      const auto w = config_parameter(c, p, "weight", out.base);
      if (!w)
        throw argument_error(where + ": linear averages the base model '" + *p.base_model +
                             "' in too and it has no weight (mergekit fails here as well): give it a weight");
      l.base_weight = *w;
    }
    out.merger = AnyMerger(l);
  } else if (m == "slerp" || m == "nearswap") {
    need_base();
    count(1, "the base and one other model");
    const auto t = global("t");
    if (!t) throw argument_error(where + ": " + m + " needs parameter 't'");
    out.merger = m == "slerp" ? AnyMerger(Slerp{*t}) : AnyMerger(Nearswap{*t});
  } else if (m == "nuslerp") {
    base_absent();  // mergekit takes the base's tensor from the slice and fails without it
    all_inputs_as_experts();
    count(2, "exactly two models besides the base");
    out.merger = AnyMerger(NuSlerp{per_model("weight", true, 1.0, out.experts), flag("nuslerp_flatten", true),
                                   flag("nuslerp_row_wise", false), has_base});
  } else if (m == "multislerp") {
    all_inputs_as_experts();
    out.merger = AnyMerger(MultiSlerp{per_model("weight", true, 1.0, out.experts), flag("normalize_weights", true),
                                      global("eps").value_or(1e-8), has_base});
  } else if (m == "karcher") {
    all_inputs_as_experts();
    out.merger =
        AnyMerger(Karcher{static_cast<int>(global("max_iter").value_or(10)), global("tol").value_or(1e-5), has_base});
  } else if (m == "model_stock") {
    need_base();
    out.merger = AnyMerger(ModelStock{flag("filter_wise", false)});
  } else if (m == "sce") {
    need_base();
    out.merger = AnyMerger(Sce{global("select_topk").value_or(1.0)});
  } else if (m == "ram" || m == "ramplus_tl") {
    need_base();
    const double eps = global("epsilon").value_or(1e-5);
    if (m == "ram") out.merger = AnyMerger(Ram{{eps}});
    else out.merger = AnyMerger(RamPlusTl{{eps, global("r").value_or(0.1), global("alpha").value_or(0.2)}});
  } else if (m == "arcee_fusion") {
    need_base();
    count(1, "the base and one other model");
    out.merger = AnyMerger(ArceeFusion{o.seed, o.rng});
  } else if (m == "passthrough") {
    if (p.inputs.size() != 1)
      throw argument_error(where + ": passthrough takes exactly one model; found " + std::to_string(p.inputs.size()) +
                           (has_base ? " (a base_model not listed among the models counts as one)" : ""));
    out.experts = {0};
    out.base = -1;
    out.merger = AnyMerger(Passthrough{config_parameter(c, p, "scale", 0)});
  } else {
    detail::mergekit_parameters(m);  // throws the unsupported-method error
  }
  return out;
}

// A SharedMerger that merges each tensor as config `c` asks (its `models:`
// form: output names = input names), for merge_state and TwinModel::build:
// the base is the config's base_model and the experts are its other models,
// in the config's order.
class ConfigMerger {
 public:
  ConfigMerger(MergeConfig c, std::vector<PlannedTensor> plan, ConfigRunOptions o = {})
      : c_(std::make_shared<const MergeConfig>(std::move(c))), o_(o) {
    for (PlannedTensor& p : plan) plan_.emplace(p.name, std::move(p));
  }

  std::string_view name() const noexcept { return c_->merge_method; }

  void merge_tensor(const TensorMergeArgs& a) const {
    const auto it = plan_.find(std::string(a.name));
    if (it == plan_.end()) throw name_error("tensor '" + std::string(a.name) + "' is not in the merge config's plan");
    const TensorMergePlan tp = tensor_merge_plan(*c_, it->second, o_);
    // The experts in `a` are the config's non-base models in order; the
    // plan's expert indices count the base's position among the inputs.
    std::vector<ConstTensorView> inputs;
    std::size_t k = 0;
    for (std::size_t i = 0; i < it->second.inputs.size(); ++i) {
      if (tp.base >= 0 && static_cast<std::size_t>(tp.base) == i) {
        inputs.push_back(a.base);
      } else {
        if (k >= a.experts.size())
          throw argument_error("tensor '" + std::string(a.name) + "': the merge config has more models than the " +
                               std::to_string(a.experts.size()) + " experts given");
        inputs.push_back(a.experts[k++]);
      }
    }
    std::vector<ConstTensorView> ev;
    for (std::size_t i : tp.experts) ev.push_back(inputs[i]);
    tp.merger.merge_tensor(TensorMergeArgs{a.name, a.base, ev, a.out});
  }

 private:
  std::shared_ptr<const MergeConfig> c_;  // PlannedTensor points into it
  std::map<std::string, PlannedTensor, std::less<>> plan_;
  ConfigRunOptions o_;
};

}  // namespace twin
