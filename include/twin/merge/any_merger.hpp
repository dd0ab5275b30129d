// A strategy chosen at run time by name (the CLI, TwinModel::build), with the
// options of docs/design.md §6. Dispatches once per tensor to the static
// strategy. An option the chosen method does not take is refused by name.
#pragma once

#include <variant>

#include "twin/merge/arcee_fusion.hpp"
#include "twin/merge/breadcrumbs.hpp"
#include "twin/merge/dare.hpp"
#include "twin/merge/della.hpp"
#include "twin/merge/karcher.hpp"
#include "twin/merge/model_stock.hpp"
#include "twin/merge/multislerp.hpp"
#include "twin/merge/nearswap.hpp"
#include "twin/merge/nuslerp.hpp"
#include "twin/merge/passthrough.hpp"
#include "twin/merge/ram.hpp"
#include "twin/merge/sce.hpp"
#include "twin/merge/slerp.hpp"
#include "twin/merge/task_arithmetic.hpp"
#include "twin/merge/ties.hpp"
#include "twin/merge/weight_average.hpp"

namespace twin {

// Every option of every strategy; unset (nullopt / empty) means the method's
// default. The CLI flag of each is named in the comment.
struct MergeSettings {
  std::string method = "task_arithmetic";
  std::optional<double> scaling;                   // --scaling: λ (default per strategy)
  std::optional<double> density;                   // --density: fraction kept (default per strategy)
  std::vector<double> densities;                   // --density, once per expert (GTA family)
  std::optional<double> gamma;                     // --gamma: breadcrumbs' outlier share
  std::vector<double> gammas;                      // per expert
  std::optional<double> epsilon;                   // --epsilon: della's band (0.15); ram's threshold (1e-5)
  std::vector<double> epsilons;                    // per expert (della)
  std::uint64_t seed = 0;                          // --seed: dare, della, arcee_fusion
  RngKind rng = RngKind::philox;                   // --rng: dare, della, arcee_fusion
  TopKScope scope = TopKScope::per_tensor;         // --scope: ties
  std::vector<double> weights;                     // --weight: per expert
  TopKSelection selection = TopKSelection::exact;  // --selection: ties
  ZeroSign zero_sign = ZeroSign::plus;             // --zero-sign: ties
  std::optional<double> t;                         // --t: slerp, nearswap (required there)
  bool filter_wise = false;                        // --filter-wise: model_stock
  std::optional<bool> normalize;                   // --normalize: linear, breadcrumbs*, della*, multislerp
  std::optional<bool> rescale;                     // --rescale: della*
  std::optional<double> base_weight;               // --base-weight: linear
  bool use_base = true;                            // --no-base: nuslerp, multislerp, karcher
  std::optional<bool> nuslerp_flatten;             // --nuslerp-flatten: nuslerp
  std::optional<bool> nuslerp_row_wise;            // --nuslerp-row-wise: nuslerp
  std::optional<double> eps;                       // --eps: multislerp
  std::optional<double> select_topk;               // --select-topk: sce
  std::optional<int> max_iter;                     // --max-iter: karcher
  std::optional<double> tol;                       // --tol: karcher
  std::optional<double> r, alpha;                  // --r, --alpha: ramplus_tl
  std::optional<double> scale;                     // --scale: passthrough
};

inline constexpr std::string_view merge_method_names[] = {
    "average",     "linear",           "task_arithmetic", "ties",         "dare_linear", "dare_ties",
    "breadcrumbs", "breadcrumbs_ties", "della",           "della_linear", "slerp",       "nuslerp",
    "multislerp",  "karcher",          "model_stock",     "nearswap",     "sce",         "ram",
    "ramplus_tl",  "arcee_fusion",     "passthrough"};

namespace detail {
// The options set in s (by CLI flag name) and those each method takes.
inline std::vector<std::string_view> options_set(const MergeSettings& s) {
  std::vector<std::string_view> o;
  auto add = [&](bool set, std::string_view flag) {
    if (set) o.push_back(flag);
  };
  add(s.scaling.has_value(), "--scaling");
  add(s.density.has_value() || !s.densities.empty(), "--density");
  add(s.gamma.has_value() || !s.gammas.empty(), "--gamma");
  add(s.epsilon.has_value() || !s.epsilons.empty(), "--epsilon");
  add(s.rng != RngKind::philox, "--rng");
  add(s.scope != TopKScope::per_tensor, "--scope");
  add(!s.weights.empty(), "--weight");
  add(s.selection != TopKSelection::exact, "--selection");
  add(s.zero_sign != ZeroSign::plus, "--zero-sign");
  add(s.t.has_value(), "--t");
  add(s.filter_wise, "--filter-wise");
  add(s.normalize.has_value(), "--normalize");
  add(s.rescale.has_value(), "--rescale");
  add(s.base_weight.has_value(), "--base-weight");
  add(!s.use_base, "--no-base");
  add(s.nuslerp_flatten.has_value(), "--nuslerp-flatten");
  add(s.nuslerp_row_wise.has_value(), "--nuslerp-row-wise");
  add(s.eps.has_value(), "--eps");
  add(s.select_topk.has_value(), "--select-topk");
  add(s.max_iter.has_value(), "--max-iter");
  add(s.tol.has_value(), "--tol");
  add(s.r.has_value(), "--r");
  add(s.alpha.has_value(), "--alpha");
  add(s.scale.has_value(), "--scale");
  return o;
}

inline std::vector<std::string_view> options_taken(std::string_view m) {
  if (m == "average") return {"--weight"};
  if (m == "linear") return {"--weight", "--normalize", "--base-weight"};
  if (m == "task_arithmetic") return {"--scaling", "--weight"};
  if (m == "ties") return {"--density", "--scaling", "--weight", "--scope", "--selection", "--zero-sign"};
  if (m == "dare_linear" || m == "dare_ties") return {"--density", "--scaling", "--weight", "--rng"};
  if (m == "breadcrumbs" || m == "breadcrumbs_ties")
    return {"--density", "--gamma", "--scaling", "--weight", "--normalize"};
  if (m == "della" || m == "della_linear")
    return {"--density", "--epsilon", "--scaling", "--weight", "--rng", "--normalize", "--rescale"};
  if (m == "slerp" || m == "nearswap") return {"--t"};
  if (m == "nuslerp") return {"--weight", "--nuslerp-flatten", "--nuslerp-row-wise", "--no-base"};
  if (m == "multislerp") return {"--weight", "--normalize", "--eps", "--no-base"};
  if (m == "karcher") return {"--max-iter", "--tol", "--no-base"};
  if (m == "model_stock") return {"--filter-wise"};
  if (m == "sce") return {"--select-topk"};
  if (m == "ram") return {"--epsilon"};
  if (m == "ramplus_tl") return {"--epsilon", "--r", "--alpha"};
  if (m == "arcee_fusion") return {"--rng"};
  if (m == "passthrough") return {"--scale"};
  std::string known;
  for (auto n : merge_method_names) detail::append_listed(known, n, ", ");
  throw argument_error("unknown merge method '" + std::string(m) + "': expected one of " + known);
}
}  // namespace detail

class AnyMerger {
 public:
  using Variant = std::variant<WeightAverage, Linear, TaskArithmetic, Ties, DareLinear, DareTies, Breadcrumbs,
                               BreadcrumbsTies, Della, DellaLinear, Slerp, NuSlerp, MultiSlerp, Karcher, ModelStock,
                               Nearswap, Sce, Ram, RamPlusTl, ArceeFusion, Passthrough, GeneralizedTaskArithmetic>;
  using Plan = std::variant<std::monostate, Ties::Plan>;

  template <SharedMerger M>
  AnyMerger(M m) : v_(std::move(m)) {}

  static AnyMerger from_settings(const MergeSettings& s) {
    const std::vector<std::string_view> taken = detail::options_taken(s.method);
    for (std::string_view o : detail::options_set(s))
      if (std::find(taken.begin(), taken.end(), o) == taken.end()) {
        std::string list;
        for (std::string_view t : taken) detail::append_listed(list, t, ", ");
        throw argument_error(s.method + " takes no " + std::string(o) +
                             " (its options: " + (list.empty() ? "none" : list) + ")");
      }
    // Lists of one value per expert: breadcrumbs* and della* take them; the
    // others take one value for every expert, and a list is refused rather
    // than dropped (mergekit's ties and dare, per-model densities included,
    // are a config's: twin-merge run).
    const bool banded = s.method.starts_with("breadcrumbs"), della = s.method.starts_with("della");
    if (!s.densities.empty() && !banded && !della)
      throw argument_error(s.method + " takes one --density for every expert, found " +
                           std::to_string(s.densities.size()) +
                           " (per-expert densities: breadcrumbs, della, or mergekit's " + s.method +
                           " in a config through twin-merge run)");
    if (!s.epsilons.empty() && !della)
      throw argument_error(s.method + " takes one --epsilon, found " + std::to_string(s.epsilons.size()));
    if (!s.gammas.empty() && !banded)
      throw argument_error(s.method + " takes one --gamma, found " + std::to_string(s.gammas.size()));
    auto density = [&](double def) {
      const double d = s.density.value_or(def);
      check_unit_interval(d, s.method + " density");
      return d;
    };
    const double lambda = s.scaling.value_or(1.0);
    const std::string& m = s.method;
    if (m == "slerp" || m == "nearswap") {
      if (!s.t) throw argument_error(m + " needs --t");
      if (m == "slerp") return Slerp{*s.t};
      return Nearswap{*s.t};
    }
    if (m == "model_stock") return ModelStock{s.filter_wise};
    if (m == "average") return WeightAverage{{s.weights, true, std::nullopt}};
    if (m == "linear") return Linear{{s.weights, s.normalize.value_or(true), s.base_weight}};
    if (m == "task_arithmetic") return TaskArithmetic{lambda, s.weights};
    if (m == "ties") return Ties{density(0.2), lambda, s.scope, s.weights, s.selection, s.zero_sign};
    if (m == "dare_linear") return AnyMerger(DareLinear{{density(0.5), lambda, s.seed, s.weights, s.rng}});
    if (m == "dare_ties") return AnyMerger(DareTies{{density(0.5), lambda, s.seed, s.weights, s.rng}});
    if (m == "breadcrumbs" || m == "breadcrumbs_ties") {
      const double g = s.gamma.value_or(0.01);
      check_unit_interval(g, m + " gamma");
      detail::BreadcrumbsBase<false> b{
          density(0.9), g, lambda, s.weights, s.densities, s.gammas, s.normalize.value_or(false)};
      if (m == "breadcrumbs") return Breadcrumbs{b};
      return BreadcrumbsTies{{b.density, b.gamma, b.scaling, b.weights, b.densities, b.gammas, b.normalize}};
    }
    if (m == "della" || m == "della_linear") {
      const bool consensus = m == "della";
      const detail::DellaBase<true> d{density(0.5),
                                      s.epsilon.value_or(0.15),
                                      lambda,
                                      s.seed,
                                      s.weights,
                                      s.densities,
                                      s.epsilons,
                                      s.normalize.value_or(consensus),
                                      s.rescale.value_or(true),
                                      s.rng};
      if (consensus) return Della{d};
      return DellaLinear{
          {d.density, d.epsilon, d.scaling, d.seed, d.weights, d.densities, d.epsilons, d.normalize, d.rescale, d.rng}};
    }
    if (m == "nuslerp")
      return NuSlerp{s.weights, s.nuslerp_flatten.value_or(true), s.nuslerp_row_wise.value_or(false), s.use_base};
    if (m == "multislerp") return MultiSlerp{s.weights, s.normalize.value_or(true), s.eps.value_or(1e-8), s.use_base};
    if (m == "karcher") return Karcher{s.max_iter.value_or(10), s.tol.value_or(1e-5), s.use_base};
    if (m == "sce") return Sce{s.select_topk.value_or(1.0)};
    if (m == "ram") return Ram{{s.epsilon.value_or(1e-5)}};
    if (m == "ramplus_tl") return RamPlusTl{{s.epsilon.value_or(1e-5), s.r.value_or(0.1), s.alpha.value_or(0.2)}};
    if (m == "arcee_fusion") return ArceeFusion{s.seed, s.rng};
    return Passthrough{s.scale};  // options_taken refused every other name
  }

  std::string_view name() const {
    return std::visit([](const auto& m) { return m.name(); }, v_);
  }

  // Defined below (config.hpp: TWIN_COMPILED_ONCE).
  Plan plan(const MergeCatalog& c) const;
  void merge_tensor(const TensorMergeArgs& a, const Plan& p) const;
  void merge_tensor(const TensorMergeArgs& a) const { merge_tensor(a, Plan{}); }

  const Variant& variant() const noexcept { return v_; }

 private:
  Variant v_;
};

#if TWIN_DEFINE_COMPILED_ONCE
TWIN_COMPILED_ONCE AnyMerger::Plan AnyMerger::plan(const MergeCatalog& c) const {
  if (const Ties* t = std::get_if<Ties>(&v_)) return t->plan(c);
  return std::monostate{};
}

TWIN_COMPILED_ONCE void AnyMerger::merge_tensor(const TensorMergeArgs& a, const Plan& p) const {
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
#endif

}  // namespace twin
