// Twin model files (docs/design.md §5): one safetensors file holding everything the
// online stage needs — θ*, every task's exclusive modules, every task's copy of
// the excluded tensors, the build settings, and optionally the router.
//
//   tensors   shared.<tensor>                        θ* of a merged tensor
//             exclusive.<task>.<tensor>.<part>        the module's parts
//                 (exclusive_module.hpp): .A/.B; .A.codes/.A.scales/
//                 .B.codes/.B.scales/.quant; either of those + .indices/
//                 .values; .indices/.values; .dense; .signs/[.mask]/.alpha
//             excluded.<task>.<tensor>                a task's own copy
//             stats.<tensor>                          F64 [2, T]: ‖v_t‖², ‖v_t − v̂_t‖²
//             router.*                                the router (optional)
//   metadata  format = "twin", twin.format_version, twin.tasks (JSON list),
//             twin.build.<key> (merge method, compressor, rank, exclude, ...),
//             router.* (the router's settings)
//
// Loading maps the file: every tensor of the model is a zero-copy view into
// the mapping, so the fusion of a loaded model is bit-identical to the saved one.
#pragma once

#include <algorithm>
#include <filesystem>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "twin/io/file_metadata.hpp"
#include "twin/io/json.hpp"
#include "twin/io/router_file.hpp"
#include "twin/io/safetensors.hpp"
#include "twin/model/twin_model.hpp"
#include "twin/route/router.hpp"

namespace twin {

// Version 2 added the quantized, low-rank + sparse and sign modules, version
// 3 excluded tensors whose tasks' copies differ in shape (a head per label
// count). Files of earlier versions load unchanged, and a model is written
// at the lowest version that holds it, so older readers keep reading it.
inline constexpr int twin_format_version = 3;

struct TwinModelFile {
  TwinModel model;
  std::optional<Router> router;
};

namespace detail {
// Task names become parts of tensor names, so they are kept to a safe alphabet.
inline void check_task_name(const std::string& t, const std::string& source) {
  const bool ok = !t.empty() && t.size() <= 64 && std::all_of(t.begin(), t.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
  if (!ok) throw io_error(source + ": task name '" + t + "' must be 1 to 64 letters, digits, '_' or '-'");
}

// The module of one task for one tensor from its parts, named by `prefix`
// ("exclusive.<task>.<tensor>."); marks the names it takes in `used`. The
// caller turns its errors into io_errors naming the file, task and tensor.
inline ExclusiveModule module_from_parts(StateDict& tensors, const std::string& prefix,
                                         std::span<const std::int64_t> shape, std::set<std::string>& used) {
  auto has = [&](const char* s) { return tensors.contains(prefix + s); };
  auto take = [&](const char* s) -> Tensor {
    Tensor* t = tensors.find(prefix + s);
    if (!t) throw shape_error("tensor '" + prefix + s + "' is missing");
    used.insert(prefix + s);
    return std::move(*t);
  };
  std::optional<ExclusiveModule> lr;
  if (has("A.codes") || has("quant")) {
    const Tensor info = take("quant");
    if (info.dtype() != dtype::i32 || info.rank() != 1 || info.numel() != 2)
      throw shape_error("tensor '" + prefix + "quant' must be I32 [2] (bits, group size), found " +
                        std::string(dtype_name(info.dtype())) + " " + info.shape_str());
    const auto* q = static_cast<const std::int32_t*>(info.data());
    const QuantSpec spec{q[0], q[1]};
    QuantizedFactor a{take("A.codes"), take("A.scales")};
    QuantizedFactor b{take("B.codes"), take("B.scales")};
    lr = ExclusiveModule::low_rank_quantized(std::move(a), std::move(b), spec, shape);
  } else if (has("A")) {
    Tensor a = take("A");
    lr = ExclusiveModule::low_rank(std::move(a), take("B"), shape);
  }
  if (lr) {
    if (!has("indices")) return std::move(*lr);
    Tensor idx = take("indices");
    return ExclusiveModule::with_residual(std::move(*lr), std::move(idx), take("values"));
  }
  if (has("indices")) {
    Tensor idx = take("indices");
    return ExclusiveModule::sparse(std::move(idx), take("values"), shape);
  }
  if (has("signs")) {
    Tensor signs = take("signs");
    Tensor mask = has("mask") ? take("mask") : Tensor();
    return ExclusiveModule::sign(std::move(signs), std::move(mask), take("alpha"), shape);
  }
  return ExclusiveModule::dense(take("dense"));
}
}  // namespace detail

// Writes the model (and router, if given) atomically.
inline void save_twin_model(const std::filesystem::path& path, const TwinModel& model, const Router* router = nullptr) {
  const std::string src = path.string();
  for (const auto& t : model.task_names()) detail::check_task_name(t, src);
  if (router && router->num_tasks() != static_cast<std::int64_t>(model.num_tasks()))
    throw argument_error(src + ": the router has " + std::to_string(router->num_tasks()) + " outputs but the model " +
                         std::to_string(model.num_tasks()) + " tasks");
  std::vector<NamedTensorView> views;
  std::vector<Tensor> owned;  // stats tensors live here until written
  owned.reserve(model.entries().size());
  const auto& tasks = model.task_names();
  for (const TwinModel::Entry& e : model.entries()) {
    if (e.excluded) {
      for (std::size_t t = 0; t < tasks.size(); ++t)
        views.emplace_back("excluded." + tasks[t] + "." + e.name, e.copies[t].view());
      continue;
    }
    views.emplace_back("shared." + e.name, model.shared().at(e.name).view());
    for (std::size_t t = 0; t < tasks.size(); ++t)
      for (const auto& [suffix, part] : e.modules[t].parts())
        views.emplace_back("exclusive." + tasks[t] + "." + e.name + "." + suffix, part->view());
    Tensor stats(dtype::f64, {2, static_cast<std::int64_t>(tasks.size())});
    auto s = stats.values<double>();
    for (std::size_t t = 0; t < tasks.size(); ++t) s[t] = e.delta_sq[t], s[tasks.size() + t] = e.error_sq[t];
    owned.push_back(std::move(stats));
    views.emplace_back("stats." + e.name, owned.back().view());
  }
  StateDict router_state;
  int version = 1;
  for (const TwinModel::Entry& e : model.entries()) {
    for (const ExclusiveModule& m : e.modules)
      if (m.kind() == ModuleKind::low_rank_q || m.kind() == ModuleKind::low_rank_sparse || m.kind() == ModuleKind::sign)
        version = std::max(version, 2);
    if (!e.uniform_shape()) version = 3;
  }
  Metadata meta = {{"format", "twin"},
                   {"twin.format_version", std::to_string(version)},
                   {"twin.tasks", detail::json_value(tasks).dump()}};
  for (const auto& [k, v] : model.metadata()) meta["twin.build." + k] = v;
  if (router) {
    router_state = router->to_state_dict();
    for (const auto& [name, t] : router_state) views.emplace_back(name, t.view());
    for (const auto& [k, v] : router_metadata(*router)) meta[k] = v;
  }
  save_safetensors(path, views, meta);
}

// Assembles a model from a loaded (untrusted) checkpoint; `src` names it in
// errors. Refuses newer format versions and tensors that do not add up to a
// model. The tensors are moved out of `ck`.
inline TwinModelFile twin_model_from_checkpoint(LoadedCheckpoint&& ck, const std::string& src) {
  constexpr std::string_view what = "twin model file";
  detail::check_format(ck.metadata, "format", "twin", "twin.format_version", twin_format_version, src, what);
  const std::string& task_list = detail::metadata_field(ck.metadata, "twin.tasks", src, what);
  std::vector<std::string> tasks;
  try {
    tasks = detail::json_value::parse(task_list).get<std::vector<std::string>>();
  } catch (const std::exception&) {
    throw io_error(src + ": twin.tasks is not a JSON list of names");
  }
  if (tasks.empty()) throw io_error(src + ": the model has no tasks");
  for (const auto& t : tasks) detail::check_task_name(t, src);
  const std::size_t T = tasks.size();

  auto take = [&](const std::string& name) -> Tensor {
    Tensor* t = ck.tensors.find(name);
    if (!t) throw io_error(src + ": tensor '" + name + "' is missing");
    return std::move(*t);
  };
  TwinModel model(tasks);
  std::set<std::string> used;
  // Tensor order in the file is the model's order: walk shared./excluded.<task0>.
  const std::string excl0 = "excluded." + tasks[0] + ".";
  for (const auto& name : ck.tensors.names()) {
    if (name.rfind("shared.", 0) == 0) {
      const std::string tn = name.substr(7);
      Tensor shared = take(name);
      used.insert(name);
      std::vector<ExclusiveModule> modules;
      for (const auto& task : tasks) {
        const std::string p = "exclusive." + task + "." + tn + ".";
        try {
          modules.push_back(detail::module_from_parts(ck.tensors, p, shared.shape(), used));
        } catch (const io_error&) {
          throw;
        } catch (const error& e) {
          throw io_error(src + ": exclusive module of task '" + task + "' for tensor '" + tn + "': " + e.what());
        }
      }
      std::vector<double> d(T, std::numeric_limits<double>::quiet_NaN()), err = d;
      if (ck.tensors.contains("stats." + tn)) {
        const Tensor st = take("stats." + tn);
        used.insert("stats." + tn);
        if (st.dtype() != dtype::f64 || st.numel() != static_cast<std::int64_t>(2 * T))
          throw io_error(src + ": stats." + tn + " must be F64 [2, " + std::to_string(T) + "]");
        for (std::size_t t = 0; t < T; ++t) d[t] = st.values<double>()[t], err[t] = st.values<double>()[T + t];
      }
      try {
        model.add_merged(tn, std::move(shared), std::move(modules), d, err);
      } catch (const error& e) {
        throw io_error(src + ": " + e.what());
      }
    } else if (name.rfind(excl0, 0) == 0) {
      const std::string tn = name.substr(excl0.size());
      std::vector<Tensor> copies;
      for (const auto& task : tasks) {
        copies.push_back(take("excluded." + task + "." + tn));
        used.insert("excluded." + task + "." + tn);
      }
      try {
        model.add_excluded(tn, std::move(copies));
      } catch (const error& e) {
        throw io_error(src + ": " + e.what());
      }
    }
  }
  for (const auto& [k, v] : ck.metadata)
    if (k.rfind("twin.build.", 0) == 0) model.metadata()[k.substr(11)] = v;

  TwinModelFile out{std::move(model), std::nullopt};
  bool has_router = false;
  for (const auto& name : ck.tensors.names())
    if (name.rfind("router.", 0) == 0) has_router = true;
  if (has_router) {
    out.router = router_from_checkpoint(ck.tensors, ck.metadata, src);
    if (out.router->num_tasks() != static_cast<std::int64_t>(T))
      throw io_error(src + ": the router has " + std::to_string(out.router->num_tasks()) + " outputs for " +
                     std::to_string(T) + " tasks");
  }
  for (const auto& name : ck.tensors.names())
    if (!used.contains(name) && name.rfind("router.", 0) != 0)
      throw io_error(src + ": tensor '" + name + "' belongs to no part of a twin model");
  return out;
}

// Reads a file written by save_twin_model (mapped: the model's tensors view
// the file).
inline TwinModelFile load_twin_model(const std::filesystem::path& path) {
  return twin_model_from_checkpoint(load_safetensors(path), path.string());
}

}  // namespace twin
