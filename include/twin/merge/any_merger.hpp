// A strategy chosen at run time by name (the CLI, TwinModel::build), with the
// options of docs/design.md §6. Dispatches once per tensor to the static strategy.
#pragma once

#include <variant>

#include "twin/merge/breadcrumbs.hpp"
#include "twin/merge/dare.hpp"
#include "twin/merge/model_stock.hpp"
#include "twin/merge/nearswap.hpp"
#include "twin/merge/slerp.hpp"
#include "twin/merge/task_arithmetic.hpp"
#include "twin/merge/ties.hpp"
#include "twin/merge/weight_average.hpp"

namespace twin {

struct MergeSettings {
  std::string method = "task_arithmetic";
  std::optional<double> scaling;                   // λ (default per strategy)
  std::optional<double> density;                   // fraction kept (default per strategy)
  std::optional<double> gamma;                     // breadcrumbs' outlier share
  std::uint64_t seed = 0;                          // dare
  TopKScope scope = TopKScope::per_tensor;         // ties
  std::vector<double> weights;                     // per expert
  TopKSelection selection = TopKSelection::exact;  // ties: exact or the official code's kthvalue
  ZeroSign zero_sign = ZeroSign::plus;             // ties: plus or the official code's majority
  std::optional<double> t;                         // slerp, nearswap (required there)
  bool filter_wise = false;                        // model_stock: one t per row
};

inline constexpr std::string_view merge_method_names[] = {"average",     "task_arithmetic", "ties",
                                                          "dare_linear", "dare_ties",       "breadcrumbs",
                                                          "slerp",       "model_stock",     "nearswap"};

class AnyMerger {
 public:
  using Variant =
      std::variant<WeightAverage, TaskArithmetic, Ties, DareLinear, DareTies, Breadcrumbs, Slerp, ModelStock, Nearswap>;
  using Plan = std::variant<std::monostate, Ties::Plan>;

  template <SharedMerger M>
  AnyMerger(M m) : v_(std::move(m)) {}

  static AnyMerger from_settings(const MergeSettings& s) {
    auto density = [&](double def) {
      const double d = s.density.value_or(def);
      check_unit_interval(d, s.method + " density");
      return d;
    };
    const double lambda = s.scaling.value_or(1.0);
    if (s.method != "ties" && (s.selection != TopKSelection::exact || s.zero_sign != ZeroSign::plus))
      throw argument_error(s.method + " takes no --selection or --zero-sign (they are ties options)");
    const bool interpolating = s.method == "slerp" || s.method == "model_stock" || s.method == "nearswap";
    if (s.t && s.method != "slerp" && s.method != "nearswap")
      throw argument_error(s.method + " takes no --t (a slerp and nearswap option)");
    if (s.filter_wise && s.method != "model_stock")
      throw argument_error(s.method + " takes no --filter-wise (a model_stock option)");
    if (interpolating && (s.density || s.scaling || s.gamma || !s.weights.empty()))
      throw argument_error(s.method + " takes no --density, --scaling, --gamma or --weight");
    if (s.method == "slerp" || s.method == "nearswap") {
      if (!s.t) throw argument_error(s.method + " needs --t");
      if (s.method == "slerp") return Slerp{*s.t};
      return Nearswap{*s.t};
    }
    if (s.method == "model_stock") return ModelStock{s.filter_wise};
    if (s.method == "average") {
      if (s.density || s.scaling) throw argument_error("average takes no --density or --scaling");
      return WeightAverage{s.weights};
    }
    if (s.method == "task_arithmetic") {
      if (s.density) throw argument_error("task_arithmetic takes no --density");
      return TaskArithmetic{lambda, s.weights};
    }
    if (s.method == "ties") return Ties{density(0.2), lambda, s.scope, s.weights, s.selection, s.zero_sign};
    if (s.method == "dare_linear") return AnyMerger(DareLinear{{density(0.5), lambda, s.seed, s.weights}});
    if (s.method == "dare_ties") return AnyMerger(DareTies{{density(0.5), lambda, s.seed, s.weights}});
    if (s.method == "breadcrumbs") {
      const double g = s.gamma.value_or(0.01);
      check_unit_interval(g, "breadcrumbs gamma");
      return Breadcrumbs{density(0.9), g, lambda, s.weights};
    }
    std::string known;
    for (auto n : merge_method_names) known += (known.empty() ? "" : ", ") + std::string(n);
    throw argument_error("unknown merge method '" + s.method + "': expected one of " + known);
  }

  std::string_view name() const {
    return std::visit([](const auto& m) { return m.name(); }, v_);
  }

  Plan plan(const MergeCatalog& c) const {
    if (const Ties* t = std::get_if<Ties>(&v_)) return t->plan(c);
    return std::monostate{};
  }

  void merge_tensor(const TensorMergeArgs& a, const Plan& p) const {
    std::visit(
        [&](const auto& m) {
          using M = std::decay_t<decltype(m)>;
          if constexpr (std::is_same_v<M, Ties>) {
            m.merge_tensor(a, std::holds_alternative<Ties::Plan>(p) ? std::get<Ties::Plan>(p) : Ties::Plan{});
          } else {
            m.merge_tensor(a);
          }
        },
        v_);
  }
  void merge_tensor(const TensorMergeArgs& a) const { merge_tensor(a, Plan{}); }

  const Variant& variant() const noexcept { return v_; }

 private:
  Variant v_;
};

}  // namespace twin
