// Reads a mergekit YAML merge config (docs/mergekit_methods.md §15) into a
// twin::MergeConfig, with Debian's yaml-cpp. Every key is checked: one twin
// does not support is an error naming it and where it is, never skipped.
// Accepted: merge_method, base_model, dtype, out_dtype, parameters, models
// (model, parameters), slices (sources (model, layer_range, parameters),
// base_model, parameters, residual_weight: parsed and, as in mergekit, never
// used). Model references are local paths (a .safetensors file, an index, or
// a folder); relative ones are resolved against the config's folder when
// they do not exist from the working directory. A `twin:` block carries the
// build options (read by twin-merge build): rank, energy, sparsify_density,
// sign_density, budget, quant_bits, quant_group, residual_density,
// factor_dtype, svd_seed, svd_engine, router, and exclude (a pattern or a
// list of them: tensors each task keeps, such as its classifier head).
#pragma once

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "twin/dtype.hpp"
#include "twin/error.hpp"
#include "twin/merge/merge_config.hpp"

namespace examples {

struct MergekitYaml {
  twin::MergeConfig config;
  std::map<std::string, std::string> twin_options;  // the `twin:` block, key → scalar text
  std::vector<std::string> twin_exclude;            // the block's exclude patterns
  bool twin_block = false;                          // whether the config has a `twin:` block
};

namespace detail {

inline std::string where(const YAML::Node& n, const std::string& file) {
  const YAML::Mark m = n.Mark();
  return m.line >= 0 ? file + ":" + std::to_string(m.line + 1) : file;
}

[[noreturn]] inline void fail(const YAML::Node& n, const std::string& file, const std::string& what) {
  throw twin::io_error(where(n, file) + ": " + what);
}

inline void only_keys(const YAML::Node& map, const std::string& file, const std::string& in,
                      std::initializer_list<std::string_view> allowed) {
  if (!map.IsMap()) fail(map, file, in + " must be a mapping");
  for (const auto& kv : map) {
    const std::string k = kv.first.as<std::string>();
    if (std::find(allowed.begin(), allowed.end(), k) != allowed.end()) continue;
    std::string list;
    for (auto a : allowed) twin::detail::append_listed(list, a, ", ");
    fail(kv.first, file, "key '" + k + "' in " + in + " is not supported by twin (supported: " + list + ")");
  }
}

// A YAML scalar as mergekit's pydantic reads it: a number, or a boolean as 1/0.
inline double number(const YAML::Node& n, const std::string& file, const std::string& what) {
  if (!n.IsScalar()) fail(n, file, what + " must be a number");
  std::string s = n.Scalar();
  std::string low = s;
  std::transform(low.begin(), low.end(), low.begin(), [](unsigned char c) { return std::tolower(c); });
  if (low == "true" || low == "yes" || low == "on") return 1.0;
  if (low == "false" || low == "no" || low == "off") return 0.0;
  try {
    std::size_t used = 0;
    const double v = std::stod(s, &used);
    if (used == s.size()) return v;
  } catch (const std::exception&) {
  }
  fail(n, file, what + ": '" + s + "' is not a number");
}

inline twin::Gradient gradient(const YAML::Node& n, const std::string& file, const std::string& what) {
  twin::Gradient g;
  if (n.IsSequence()) {
    if (n.size() == 0) fail(n, file, what + ": an empty list is not a value");
    for (const auto& x : n) g.values.push_back(number(x, file, what));
  } else {
    g.values.push_back(number(n, file, what));
  }
  return g;
}

// number | [numbers] | [{filter, value}...] | {filter, value} (taken as a one-entry list).
inline twin::ParameterSetting setting(const YAML::Node& n, const std::string& file, const std::string& what) {
  twin::ParameterSetting s;
  auto entry = [&](const YAML::Node& e) {
    only_keys(e, file, what, {"filter", "value"});
    if (!e["value"]) fail(e, file, what + ": a filter entry needs a value");
    twin::ParameterSetting::Entry x;
    if (e["filter"]) {
      if (!e["filter"].IsScalar()) fail(e["filter"], file, what + ": filter must be a string");
      x.filter = e["filter"].Scalar();
    }
    x.value = gradient(e["value"], file, what);
    s.entries.push_back(std::move(x));
  };
  if (n.IsMap()) {
    entry(n);
  } else if (n.IsSequence() && n.size() > 0 && n[0].IsMap()) {
    for (const auto& e : n) {
      if (!e.IsMap()) fail(e, file, what + ": a list mixes filter entries and numbers");
      entry(e);
    }
  } else {
    s.entries.push_back({std::nullopt, gradient(n, file, what)});
  }
  return s;
}

inline twin::ParameterMap parameters(const YAML::Node& n, const std::string& file, const std::string& in) {
  twin::ParameterMap out;
  if (!n || n.IsNull()) return out;
  if (!n.IsMap()) fail(n, file, in + " parameters must be a mapping");
  for (const auto& kv : n) {
    const std::string k = kv.first.as<std::string>();
    out[k] = setting(kv.second, file, in + " parameter '" + k + "'");
  }
  return out;
}

inline std::string model_ref(const YAML::Node& n, const std::string& file, const std::filesystem::path& dir) {
  if (!n || !n.IsScalar())
    fail(n, file,
         "a model must be given as a path (Hugging Face ids, LoRA '+' references and model mappings are not "
         "supported: twin reads local checkpoints only)");
  std::string s = n.Scalar();
  if (s.find('+') != std::string::npos && !std::filesystem::exists(s))
    fail(n, file, "model '" + s + "': LoRA references (model+lora) are not supported");
  std::error_code ec;
  if (!std::filesystem::exists(s, ec) && std::filesystem::path(s).is_relative() && std::filesystem::exists(dir / s, ec))
    return (dir / s).string();
  return s;
}

}  // namespace detail

// PyTorch's names of the float dtypes a config (or config.json) speaks of.
inline std::optional<twin::dtype> torch_dtype(std::string_view s) {
  if (s == "bfloat16") return twin::dtype::bf16;
  if (s == "float16") return twin::dtype::f16;
  if (s == "float32") return twin::dtype::f32;
  return std::nullopt;
}
inline const char* torch_dtype_name(twin::dtype t) {
  return t == twin::dtype::bf16 ? "bfloat16" : t == twin::dtype::f16 ? "float16" : "float32";
}

namespace detail {
inline twin::dtype dtype_of(const YAML::Node& n, const std::string& file, const std::string& key) {
  if (!n.IsScalar()) fail(n, file, key + " must be a dtype name");
  std::string_view s = n.Scalar();
  if (s.starts_with("torch.")) s.remove_prefix(6);
  if (const auto t = torch_dtype(s)) return *t;
  fail(n, file, key + " '" + n.Scalar() + "' is not supported: expected bfloat16, float16 or float32");
}
}  // namespace detail

inline MergekitYaml load_mergekit_yaml(const std::filesystem::path& path) {
  const std::string file = path.string();
  YAML::Node root;
  try {
    root = YAML::LoadFile(file);
  } catch (const YAML::BadFile&) {
    throw twin::io_error(file + ": cannot read the file");
  } catch (const YAML::Exception& e) {
    throw twin::io_error(file + ":" + std::to_string(e.mark.line + 1) + ": not valid YAML: " + e.msg);
  }
  const std::filesystem::path dir = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  try {
    detail::only_keys(root, file, "the config",
                      {"merge_method", "base_model", "dtype", "out_dtype", "parameters", "models", "slices", "twin"});
    MergekitYaml y;
    twin::MergeConfig& c = y.config;
    if (!root["merge_method"] || !root["merge_method"].IsScalar()) detail::fail(root, file, "merge_method is required");
    c.merge_method = root["merge_method"].Scalar();
    if (root["base_model"]) c.base_model = detail::model_ref(root["base_model"], file, dir);
    if (root["dtype"]) c.dtype = detail::dtype_of(root["dtype"], file, "dtype");
    if (root["out_dtype"]) c.out_dtype = detail::dtype_of(root["out_dtype"], file, "out_dtype");
    c.parameters = detail::parameters(root["parameters"], file, "top-level");
    if (root["models"] && root["slices"]) detail::fail(root, file, "give either models or slices, not both");
    if (!root["models"] && !root["slices"]) detail::fail(root, file, "models or slices is required");
    auto source = [&](const YAML::Node& m, bool in_slice) {
      if (in_slice) detail::only_keys(m, file, "a slice source", {"model", "layer_range", "parameters"});
      else detail::only_keys(m, file, "a models entry", {"model", "parameters"});
      twin::ConfigSource s;
      s.model = detail::model_ref(m["model"], file, dir);
      s.parameters = detail::parameters(m["parameters"], file, "model '" + s.model + "'");
      if (in_slice) {
        const YAML::Node r = m["layer_range"];
        if (!r || !r.IsSequence() || r.size() != 2) detail::fail(m, file, "a slice source needs layer_range: [a, b]");
        s.layer_range =
            std::pair<std::int64_t, std::int64_t>{static_cast<std::int64_t>(detail::number(r[0], file, "layer_range")),
                                                  static_cast<std::int64_t>(detail::number(r[1], file, "layer_range"))};
      }
      return s;
    };
    if (root["models"]) {
      if (!root["models"].IsSequence()) detail::fail(root["models"], file, "models must be a list");
      for (const auto& m : root["models"]) c.models.push_back(source(m, false));
    } else {
      if (!root["slices"].IsSequence()) detail::fail(root["slices"], file, "slices must be a list");
      for (const auto& sl : root["slices"]) {
        detail::only_keys(sl, file, "a slice", {"sources", "base_model", "parameters", "residual_weight"});
        twin::ConfigSlice s;
        if (!sl["sources"] || !sl["sources"].IsSequence()) detail::fail(sl, file, "a slice needs a list of sources");
        for (const auto& m : sl["sources"]) s.sources.push_back(source(m, true));
        if (sl["base_model"]) s.base_model = detail::model_ref(sl["base_model"], file, dir);
        s.parameters = detail::parameters(sl["parameters"], file, "slice");
        c.slices.push_back(std::move(s));
      }
    }
    if (const YAML::Node t = root["twin"]) {
      y.twin_block = true;
      detail::only_keys(t, file, "the twin block",
                        {"rank", "energy", "sparsify_density", "sign_density", "budget", "quant_bits", "quant_group",
                         "residual_density", "factor_dtype", "svd_seed", "svd_engine", "router", "exclude"});
      for (const auto& kv : t) {
        if (kv.first.as<std::string>() == "exclude") {
          const YAML::Node& e = kv.second;
          if (e.IsScalar()) y.twin_exclude.push_back(e.Scalar());
          else if (e.IsSequence())
            for (const auto& p : e) {
              if (!p.IsScalar()) detail::fail(p, file, "twin.exclude must be a pattern or a list of patterns");
              y.twin_exclude.push_back(p.Scalar());
            }
          else detail::fail(e, file, "twin.exclude must be a pattern or a list of patterns");
          continue;
        }
        if (!kv.second.IsScalar())
          detail::fail(kv.second, file, "twin." + kv.first.as<std::string>() + " must be a scalar");
        y.twin_options[kv.first.as<std::string>()] = kv.second.Scalar();
      }
    }
    twin::check_config_parameters(c);
    return y;
  } catch (const twin::argument_error& e) {
    throw twin::argument_error(file + ": " + e.what());
  } catch (const YAML::Exception& e) {
    throw twin::io_error(file + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
}

}  // namespace examples
