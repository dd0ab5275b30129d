// TwinModel: what Twin-Merging keeps after its offline stage — the shared
// weights θ* (a SharedMerger over base and experts), per task the compressed
// exclusive knowledge v̂_t ≈ θ_t − θ* of every merged tensor, per task the
// dense copies of excluded tensors (classifier heads), task names and the
// settings used. Everything is named tensors plus string metadata, so a model
// file can hold it as is.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "twin/backend/cpu/gemm.hpp"
#include "twin/compress/exclusive_module.hpp"
#include "twin/merge/merger.hpp"
#include "twin/parallel.hpp"
#include "twin/state_dict.hpp"

namespace twin {

struct BuildProgress {
  std::string_view stage;  // "merge" or "compress"
  std::size_t done = 0, total = 0;
  std::string_view tensor;
};

struct TwinBuildOptions {
  // One per expert; default "task0", "task1", ...
  std::vector<std::string> task_names;
  // Regular expressions (whole-name match): these tensors are not merged nor
  // fused; each task keeps its own copy (classifier heads, or biases as the
  // official discriminative runs do), of any shape (a head per label count;
  // an expert without the tensor is refused).
  std::vector<std::string> exclude;
  // dtype of θ* (default: the base tensor's dtype).
  std::optional<dtype> shared_dtype;
  // Measure ‖v − v̂‖_F per tensor and task (one reconstruction per module).
  bool measure_error = true;
  std::function<void(const BuildProgress&)> progress;
};

// Bytes held against bytes of T dense experts.
struct StorageReport {
  std::size_t shared_bytes = 0, exclusive_bytes = 0, excluded_bytes = 0;
  // T dense experts: θ*'s bytes T times for the merged tensors, each task's
  // own copy of the excluded ones.
  std::size_t dense_experts_bytes = 0;
  std::size_t total() const noexcept { return shared_bytes + exclusive_bytes + excluded_bytes; }
  double ratio() const noexcept {
    return dense_experts_bytes ? static_cast<double>(total()) / static_cast<double>(dense_experts_bytes) : 0.0;
  }
};

class TwinModel {
 public:
  struct Entry {
    std::string name;
    Extents shape;  // excluded tensors: task 0's copy (the copies' shapes may differ)
    bool excluded = false;
    std::vector<ExclusiveModule> modules;    // one per task (merged tensors)
    std::vector<Tensor> copies;              // one per task (excluded tensors)
    std::vector<double> delta_sq, error_sq;  // ‖v_t‖², ‖v_t − v̂_t‖² (NaN: not measured)

    // The shape task t's weights take: its own copy's for an excluded tensor.
    std::span<const std::int64_t> task_shape(std::size_t t) const {
      return excluded ? copies.at(t).shape() : shape.span();
    }
    // Whether every task's copy has one shape (always so for merged tensors).
    bool uniform_shape() const {
      return std::all_of(copies.begin(), copies.end(),
                         [&](const Tensor& c) { return std::ranges::equal(c.shape(), shape.span()); });
    }
  };

  TwinModel() = default;
  explicit TwinModel(std::vector<std::string> task_names) : tasks_(std::move(task_names)) {
    if (tasks_.empty()) throw argument_error("a twin model needs at least one task");
  }
  TwinModel(TwinModel&&) noexcept = default;
  TwinModel& operator=(TwinModel&&) noexcept = default;

  // Assembly from parts (the builder and model-file readers use these).
  void add_merged(const std::string& name, Tensor shared, std::vector<ExclusiveModule> modules,
                  std::vector<double> delta_sq = {}, std::vector<double> error_sq = {}) {
    if (modules.size() != tasks_.size())
      throw argument_error("tensor '" + name + "': " + std::to_string(modules.size()) + " exclusive modules for " +
                           std::to_string(tasks_.size()) + " tasks");
    for (std::size_t t = 0; t < modules.size(); ++t)
      check_same_shape(name, shared.shape(), modules[t].shape(),
                       "exclusive module of task '" + tasks_[t] + "' for tensor");
    require_float(shared.dtype(), "shared tensor '" + name + "'");
    const double nan = std::numeric_limits<double>::quiet_NaN();
    if (delta_sq.empty()) delta_sq.assign(tasks_.size(), nan);
    if (error_sq.empty()) error_sq.assign(tasks_.size(), nan);
    Entry e{name, Extents(shared.shape()), false, std::move(modules), {}, std::move(delta_sq), std::move(error_sq)};
    shared_.insert(name, std::move(shared));
    push(std::move(e));
  }
  // An excluded tensor: one copy per task, each of its task's shape.
  void add_excluded(const std::string& name, std::vector<Tensor> copies) {
    if (copies.size() != tasks_.size())
      throw argument_error("excluded tensor '" + name + "': " + std::to_string(copies.size()) + " copies for " +
                           std::to_string(tasks_.size()) + " tasks");
    Entry e{name, Extents(copies[0].shape()), true, {}, std::move(copies), {}, {}};
    push(std::move(e));
  }
  // Replaces a merged tensor's modules (one per task, of its shape) and
  // their recorded errors ‖v_t − v̂_t‖² (empty: not measured).
  void set_modules(const std::string& name, std::vector<ExclusiveModule> modules, std::vector<double> error_sq = {}) {
    auto it = index_.find(name);
    if (it == index_.end()) throw name_error("the twin model has no tensor named '" + name + "'");
    Entry& e = entries_[it->second];
    if (e.excluded) throw argument_error("tensor '" + name + "' is excluded: it has no exclusive modules");
    if (modules.size() != tasks_.size())
      throw argument_error("tensor '" + name + "': " + std::to_string(modules.size()) + " exclusive modules for " +
                           std::to_string(tasks_.size()) + " tasks");
    for (std::size_t t = 0; t < modules.size(); ++t)
      check_same_shape(name, e.shape.span(), modules[t].shape(),
                       "exclusive module of task '" + tasks_[t] + "' for tensor");
    if (error_sq.empty()) error_sq.assign(tasks_.size(), std::numeric_limits<double>::quiet_NaN());
    if (error_sq.size() != tasks_.size()) throw argument_error("tensor '" + name + "': one error per task expected");
    e.modules = std::move(modules);
    e.error_sq = std::move(error_sq);
  }
  Metadata& metadata() noexcept { return metadata_; }
  const Metadata& metadata() const noexcept { return metadata_; }

  // Offline stage: θ* = merger(base, experts) over the tensors not excluded;
  // v_t = θ_t − θ* (θ* as stored, so θ* + v_t gives θ_t back), compressed by
  // `compressor`.
  template <SharedMerger M, ExclusiveCompressor C>
  static TwinModel build(const StateDict& base, std::span<const StateDict* const> experts, const M& merger,
                         const C& compressor, const TwinBuildOptions& opts = {});
  template <SharedMerger M, ExclusiveCompressor C>
  static TwinModel build(const StateDict& base, std::span<const StateDict> experts, const M& merger,
                         const C& compressor, const TwinBuildOptions& opts = {}) {
    std::vector<const StateDict*> ptrs;
    for (const StateDict& e : experts) ptrs.push_back(&e);
    return build(base, std::span<const StateDict* const>(ptrs), merger, compressor, opts);
  }

  std::size_t num_tasks() const noexcept { return tasks_.size(); }
  const std::vector<std::string>& task_names() const noexcept { return tasks_; }
  // θ* of every merged tensor (what the host runs the router's embedding with).
  const StateDict& shared() const noexcept { return shared_; }
  const std::vector<Entry>& entries() const noexcept { return entries_; }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const Entry& e : entries_) out.push_back(e.name);
    return out;
  }
  const Entry* find(std::string_view name) const {
    auto it = index_.find(std::string(name));
    return it == index_.end() ? nullptr : &entries_[it->second];
  }
  const Entry& at(std::string_view name) const {
    if (const Entry* e = find(name)) return *e;
    throw name_error("the twin model has no tensor named '" + std::string(name) + "'");
  }
  bool is_excluded(std::string_view name) const { return at(name).excluded; }
  const ExclusiveModule& module(std::string_view name, std::size_t task) const {
    const Entry& e = at(name);
    if (e.excluded) throw name_error("tensor '" + std::string(name) + "' is excluded: it has no exclusive module");
    return e.modules.at(task);
  }

  StorageReport storage() const {
    StorageReport r;
    for (const Entry& e : entries_) {
      if (e.excluded) {
        // Each task's dense expert holds its own copy.
        for (const Tensor& c : e.copies) r.excluded_bytes += c.nbytes(), r.dense_experts_bytes += c.nbytes();
      } else {
        const Tensor& s = shared_.at(e.name);
        r.shared_bytes += s.nbytes();
        for (const ExclusiveModule& m : e.modules) r.exclusive_bytes += m.nbytes();
        r.dense_experts_bytes += s.nbytes() * tasks_.size();
      }
    }
    return r;
  }

  // ‖v_t − v̂_t‖_F / ‖v_t‖_F for one tensor and task (0 when v_t = 0; NaN
  // when the build did not measure it).
  double relative_error(std::string_view name, std::size_t task) const {
    const Entry& e = at(name);
    if (e.excluded) return 0.0;
    const double d = e.delta_sq.at(task), err = e.error_sq.at(task);
    return d > 0.0 ? std::sqrt(err / d) : (err > 0.0 ? std::numeric_limits<double>::infinity() : err * 0.0);
  }
  // sqrt(Σ ‖v − v̂‖² / Σ ‖v‖²) over every merged tensor and task.
  double relative_error() const {
    double d = 0.0, err = 0.0;
    for (const Entry& e : entries_)
      for (std::size_t t = 0; t < e.delta_sq.size(); ++t) d += e.delta_sq[t], err += e.error_sq[t];
    return d > 0.0 ? std::sqrt(err / d) : err * 0.0;
  }

 private:
  void push(Entry e) {
    if (index_.contains(e.name)) throw name_error("tensor '" + e.name + "' is already in the twin model");
    index_.emplace(e.name, entries_.size());
    entries_.push_back(std::move(e));
  }

  std::vector<std::string> tasks_;
  StateDict shared_;
  std::vector<Entry> entries_;
  std::unordered_map<std::string, std::size_t> index_;
  Metadata metadata_;
};

namespace detail {
// ‖v − v̂‖² for a module against its f32 delta, by dense reconstruction.
inline double module_error_sq(const ExclusiveModule& m, const std::vector<float>& v) {
  std::vector<float> rec(v.size(), 0.0f);
  const MatrixShape ms = m.matrix();
  if (m.has_factors() && m.rank() > 0) {
    const std::int64_t r = m.rank();
    std::vector<float> a, b;
    m.factors_f32(a, b);
    backend::cpu::gemm(backend::cpu::GemmMode::fastest, false, true, ms.rows, ms.cols, r, 1.0f, a.data(), r, b.data(),
                       r, false, rec.data(), ms.cols);
  }
  m.add_rest_to(rec.data(), ms.cols, 1.0f, 0, ms.rows, 0, ms.cols);
  double e = 0.0;
  for (std::size_t i = 0; i < v.size(); ++i) {
    const double d = static_cast<double>(v[i]) - rec[i];
    e += d * d;
  }
  return e;
}
}  // namespace detail

template <SharedMerger M, ExclusiveCompressor C>
TwinModel TwinModel::build(const StateDict& base, std::span<const StateDict* const> experts, const M& merger,
                           const C& compressor, const TwinBuildOptions& opts) {
  const std::size_t T = experts.size();
  std::vector<std::string> names = opts.task_names;
  if (names.empty())
    for (std::size_t t = 0; t < T; ++t) names.push_back("task" + std::to_string(t));
  if (names.size() != T)
    throw argument_error(std::to_string(names.size()) + " task names given for " + std::to_string(T) + " experts");
  for (std::size_t i = 0; i < T; ++i)
    for (std::size_t j = i + 1; j < T; ++j)
      if (names[i] == names[j]) throw argument_error("task name '" + names[i] + "' is given twice");

  const NameFilter excluded(opts.exclude);
  // Excluded tensors the experts have and the base lacks (a pretrained base
  // has no classifier head) come after the base's, in the experts' order.
  std::vector<std::string> experts_only;
  for (const StateDict* e : experts)
    for (const auto& item : *e)
      if (!base.contains(item.first) && excluded.matches(item.first) &&
          std::find(experts_only.begin(), experts_only.end(), item.first) == experts_only.end())
        experts_only.push_back(item.first);
  // Both stages count every tensor of the model (the merge never sees the
  // experts' own).
  const std::size_t total = base.size() + experts_only.size();

  MergeOptions mo;
  mo.exclude = opts.exclude;
  mo.out_dtype = opts.shared_dtype;
  mo.expert_labels = names;
  if (opts.progress)
    mo.progress = [&](std::size_t done, std::size_t, std::string_view name) {
      opts.progress(BuildProgress{"merge", done, total, name});
    };
  StateDict merged = merge_state(merger, base, experts, mo);  // validates names, shapes, dtypes

  TwinModel model(names);
  model.metadata_ = compressor.metadata();
  model.metadata_["merge_method"] = std::string(merger.name());
  model.metadata_["tasks"] = std::to_string(T);
  std::string patterns;
  for (const std::string& p : opts.exclude) detail::append_listed(patterns, p, "\n");
  model.metadata_["exclude"] = patterns;

  // Every task's own copy of an excluded tensor.
  auto copies_of = [&](const std::string& name) {
    std::vector<Tensor> copies;
    for (std::size_t t = 0; t < T; ++t) {
      const Tensor* c = experts[t]->find(name);
      if (!c)
        throw name_error("expert " + std::to_string(t) + " ('" + names[t] + "') has no tensor '" + name +
                         "', which is excluded: each task keeps its own copy of an excluded tensor");
      copies.push_back(c->clone());
    }
    return copies;
  };
  std::size_t done = 0;
  // A plain reference, not a structured binding: clang before 16 cannot
  // capture bindings in the lambdas below.
  for (const auto& item : base) {
    const std::string& name = item.first;
    if (excluded.matches(name)) {
      model.add_excluded(name, copies_of(name));
    } else {
      Tensor shared = std::move(merged.at(name));
      const std::int64_t n = shared.numel();
      std::vector<float> star(static_cast<std::size_t>(n));
      read_f32(shared.view(), 0, n, star.data());
      std::vector<ExclusiveModule> modules(T);
      std::vector<double> dsq(T), esq(T, std::numeric_limits<double>::quiet_NaN());
      // Tasks compress independently; the compressor's own parallel loops
      // run serially inside this one.
      parallel_blocks(static_cast<std::int64_t>(T), 1, [&](std::int64_t t0, std::int64_t t1) {
        std::vector<float> v(static_cast<std::size_t>(n));
        for (std::int64_t t = t0; t < t1; ++t) {
          read_f32(experts[static_cast<std::size_t>(t)]->at(name).view(), 0, n, v.data());
          double sq = 0.0;
          for (std::int64_t i = 0; i < n; ++i) {
            v[static_cast<std::size_t>(i)] -= star[static_cast<std::size_t>(i)];
            sq += static_cast<double>(v[static_cast<std::size_t>(i)]) * v[static_cast<std::size_t>(i)];
          }
          const ConstTensorView vv(v.data(), dtype::f32, shared.shape());
          modules[static_cast<std::size_t>(t)] = compressor.compress(name, vv, static_cast<std::uint64_t>(t));
          dsq[static_cast<std::size_t>(t)] = sq;
          if (opts.measure_error)
            esq[static_cast<std::size_t>(t)] = detail::module_error_sq(modules[static_cast<std::size_t>(t)], v);
        }
      });
      model.add_merged(name, std::move(shared), std::move(modules), std::move(dsq), std::move(esq));
    }
    if (opts.progress) opts.progress(BuildProgress{"compress", ++done, total, name});
  }
  for (const std::string& name : experts_only) {
    model.add_excluded(name, copies_of(name));
    if (opts.progress) opts.progress(BuildProgress{"compress", ++done, total, name});
  }
  return model;
}

}  // namespace twin
