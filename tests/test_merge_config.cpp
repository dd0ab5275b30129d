// mergekit merge configs without the YAML (twin/merge/merge_config.hpp):
// gradients interpolated as mergekit does (its worked example, by hand),
// filters, the precedence of parameter levels, the plan over slices and
// layer ranges, and each tensor merged as the same strategy called directly.
#include "test_support.hpp"
#include "twin/merge/merge_config.hpp"

using namespace twin;
using twin_test::random_tensor;
using twin_test::same_bits;

namespace {
// A model of `layers` layers of two tensors plus embeddings and final tensors.
std::vector<std::string> llama_names(int layers) {
  std::vector<std::string> n = {"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"};
  for (int l = 0; l < layers; ++l) {
    n.push_back("model.layers." + std::to_string(l) + ".mlp.up_proj.weight");
    n.push_back("model.layers." + std::to_string(l) + ".self_attn.q_proj.weight");
  }
  return n;
}
}  // namespace

TEST_CASE("gradients: mergekit's worked example [0, 1, 0.5] over 8 layers, endpoints exact, one value constant") {
  // docs/mergekit_methods.md §16: t = k/7, x = 2k/7, value = (1 − f)·g[i0] + f·g[i1].
  const Gradient g{{0.0, 1.0, 0.5}};
  const double want[8] = {0.0, 2.0 / 7, 4.0 / 7, 6.0 / 7, 6.0 / 7 + 1.0 / 14, 4.0 / 7 + 3.0 / 14, 2.0 / 7 + 5.0 / 14,
                          0.5};
  for (int k = 0; k < 8; ++k) {
    CAPTURE(k);
    CHECK(g.at(k / 7.0) == doctest::Approx(want[k]).epsilon(1e-12));
  }
  CHECK(g.at(0.0) == 0.0);
  CHECK(g.at(1.0) == 0.5);
  CHECK(Gradient{{0.3}}.at(0.77) == 0.3);
  CHECK_THROWS_AS(Gradient{}.at(0.5), argument_error);
}

TEST_CASE("filters: first match wins; no filter and '*' match all; a filter is a plain substring") {
  ParameterSetting s;
  s.entries.push_back({"self_attn", {{0.0, 1.0}}});
  s.entries.push_back({"mlp", {{0.7}}});
  s.entries.push_back({std::nullopt, {{0.5}}});
  CHECK(s.evaluate("model.layers.3.self_attn.q_proj.weight", 0.25) == doctest::Approx(0.25));
  CHECK(s.evaluate("model.layers.3.mlp.up_proj.weight", 0.25) == 0.7);
  CHECK(s.evaluate("model.norm.weight", 0.25) == 0.5);
  ParameterSetting only;
  only.entries.push_back({"mlp.", {{1.0}}});
  CHECK_FALSE(only.evaluate("model.layers.0.self_attn.q_proj.weight", 0).has_value());
  CHECK_FALSE(only.evaluate("model.layers.0.MLP.up", 0).has_value());  // case-sensitive, not a regex
  ParameterSetting star;
  star.entries.push_back({"*", {{2.0}}});
  CHECK(star.evaluate("anything", 0) == 2.0);
}

TEST_CASE("plan: models form covers every layer; pre tensors first, post last, layer t = k/(L − 1)") {
  MergeConfig c;
  c.merge_method = "linear";
  c.models = {{"a", std::nullopt, {}}, {"b", std::nullopt, {}}};
  const auto plan = plan_merge(c, [](const std::string&) { return llama_names(3); });
  REQUIRE(plan.size() == 3 + 6);
  CHECK(plan.front().name == "model.embed_tokens.weight");
  CHECK(plan.front().t == 0.0);
  CHECK(plan[1].name == "model.layers.0.mlp.up_proj.weight");
  CHECK(plan[3].name == "model.layers.1.mlp.up_proj.weight");
  CHECK(plan[3].t == 0.5);
  CHECK(plan[5].t == 1.0);
  CHECK(plan[7].name == "lm_head.weight");
  CHECK(plan[7].t == 0.0);
  CHECK(plan[8].name == "model.norm.weight");
  REQUIRE(plan[3].inputs.size() == 2);
  CHECK(plan[3].inputs[1].model == "b");
  // A base not listed is appended as the last input.
  c.base_model = "base";
  CHECK(plan_merge(c, [](const std::string&) { return llama_names(3); })[0].inputs.back().model == "base");
}

TEST_CASE("plan: slices renumber output layers, read each source's own layer, restart t per slice") {
  MergeConfig c;
  c.merge_method = "passthrough";
  c.slices = {ConfigSlice{{{"a", std::pair<std::int64_t, std::int64_t>{0, 2}, {}}}, std::nullopt, {}},
              ConfigSlice{{{"b", std::pair<std::int64_t, std::int64_t>{3, 6}, {}}}, std::nullopt, {}}};
  const auto plan = plan_merge(c, [](const std::string& m) { return llama_names(m == "a" ? 4 : 6); });
  // 1 pre + 5 layers × 2 + 2 post.
  REQUIRE(plan.size() == 13);
  CHECK(plan[5].name == "model.layers.2.mlp.up_proj.weight");  // output layer 2 = b's layer 3
  CHECK(plan[5].inputs[0].model == "b");
  CHECK(plan[5].inputs[0].tensor == "model.layers.3.mlp.up_proj.weight");
  CHECK(plan[5].t == 0.0);
  CHECK(plan[9].name == "model.layers.4.mlp.up_proj.weight");  // b's layer 5, last of its slice
  CHECK(plan[9].t == 1.0);
  CHECK(plan[3].t == 1.0);                     // a's layer 1, last of a two-layer slice
  CHECK(plan.front().inputs[0].model == "a");  // embeddings from the first slice
  CHECK(plan.back().inputs[0].model == "b");   // final norm from the last
  // Unequal lengths in one slice, and a range past the model, are refused.
  c.slices = {ConfigSlice{
      {{"a", std::pair<std::int64_t, std::int64_t>{0, 2}, {}}, {"b", std::pair<std::int64_t, std::int64_t>{0, 3}, {}}},
      std::nullopt,
      {}}};
  CHECK_THROWS_AS(plan_merge(c, [](const std::string&) { return llama_names(6); }), argument_error);
  c.slices = {ConfigSlice{{{"a", std::pair<std::int64_t, std::int64_t>{2, 9}, {}}}, std::nullopt, {}}};
  CHECK_THROWS_AS(plan_merge(c, [](const std::string&) { return llama_names(6); }), argument_error);
  c.slices = {ConfigSlice{{{"a", std::pair<std::int64_t, std::int64_t>{2, 1}, {}}}, std::nullopt, {}}};
  CHECK_THROWS_WITH_AS(plan_merge(c, [](const std::string&) { return llama_names(6); }),
                       doctest::Contains("layer_range [2, 1) of 'a' ends before it starts"), argument_error);
  // In a models: config the same mismatch names the models, not a slice the user did not write.
  MergeConfig m;
  m.merge_method = "linear";
  m.models = {{"a", std::nullopt, {}}, {"b", std::nullopt, {}}};
  CHECK_THROWS_WITH_AS(plan_merge(m, [](const std::string& x) { return llama_names(x == "a" ? 4 : 5); }),
                       doctest::Contains("models 'a' and 'b' have 4 and 5 layers"), argument_error);
}

TEST_CASE("plan: a model with two layer stacks is refused where slices or gradients would mix them") {
  // A vision tower of 2 layers beside a language model of 4: slices would cut and renumber both, and a
  // gradient's t would run over 4 layers for the tower's 2.
  auto vl = [](const std::string&) {
    std::vector<std::string> n = llama_names(4);
    for (int l = 0; l < 2; ++l) n.push_back("vision_tower.encoder.layers." + std::to_string(l) + ".fc1.weight");
    return n;
  };
  MergeConfig c;
  c.merge_method = "linear";
  c.models = {{"a", std::nullopt, {}}, {"b", std::nullopt, {}}};
  c.models[0].parameters["weight"] = ParameterSetting::constant(1.0);
  c.models[1].parameters["weight"] = ParameterSetting::constant(1.0);
  CHECK(plan_merge(c, vl).size() == 3 + 4 * 2 + 2);  // constant parameters: t is never read
  c.models[1].parameters["weight"] = ParameterSetting::gradient({0.0, 1.0});
  CHECK_THROWS_WITH_AS(
      plan_merge(c, vl),
      doctest::Contains("model 'a' has 2 layer stacks (model.layers.N, vision_tower.encoder.layers.N)"),
      argument_error);
  MergeConfig s;
  s.merge_method = "passthrough";
  s.slices = {ConfigSlice{{{"a", std::pair<std::int64_t, std::int64_t>{0, 2}, {}}}, std::nullopt, {}}};
  CHECK_THROWS_WITH_AS(plan_merge(s, vl), doctest::Contains("slices would mix them"), argument_error);
  CHECK(plan_merge(s, [](const std::string&) { return llama_names(4); }).size() == 3 + 2 * 2);
}

TEST_CASE("plan: GPT-NeoX's output head embed_out comes after the layers, from the last slice") {
  auto neox = [](const std::string&) {
    return std::vector<std::string>{"embed_out.weight", "gpt_neox.embed_in.weight", "gpt_neox.final_layer_norm.weight",
                                    "gpt_neox.layers.0.mlp.dense_h_to_4h.weight",
                                    "gpt_neox.layers.1.mlp.dense_h_to_4h.weight"};
  };
  MergeConfig c;
  c.merge_method = "passthrough";
  c.slices = {ConfigSlice{{{"a", std::pair<std::int64_t, std::int64_t>{0, 1}, {}}}, std::nullopt, {}},
              ConfigSlice{{{"b", std::pair<std::int64_t, std::int64_t>{1, 2}, {}}}, std::nullopt, {}}};
  const auto plan = plan_merge(c, neox);
  REQUIRE(plan.size() == 5);
  CHECK(plan.front().name == "gpt_neox.embed_in.weight");
  CHECK(plan.front().inputs[0].model == "a");
  CHECK(plan[3].name == "embed_out.weight");
  CHECK(plan[3].inputs[0].model == "b");
  CHECK(plan[4].name == "gpt_neox.final_layer_norm.weight");
}

TEST_CASE("precedence: source, then slice, then top level; per-model filters see the input tensor name") {
  MergeConfig c;
  c.merge_method = "ties";
  c.base_model = "base";
  c.parameters["weight"] = ParameterSetting::constant(0.1);
  c.parameters["density"] = ParameterSetting::gradient({0.2, 0.8});
  ConfigSlice s;
  s.parameters["weight"] = ParameterSetting::constant(0.3);
  ConfigSource a{"a", std::pair<std::int64_t, std::int64_t>{2, 4}, {}};
  ParameterSetting by_input;
  by_input.entries.push_back({"layers.3.", {{0.9}}});  // a's input layer 3 = output layer 1
  a.parameters["weight"] = by_input;
  s.sources = {a,
               {"b", std::pair<std::int64_t, std::int64_t>{0, 2}, {}},
               {"base", std::pair<std::int64_t, std::int64_t>{0, 2}, {}}};
  c.slices = {s};
  const auto plan = plan_merge(c, [](const std::string&) { return llama_names(4); });
  const PlannedTensor& l1 = plan[3];  // output layer 1
  REQUIRE(l1.name == "model.layers.1.mlp.up_proj.weight");
  CHECK(config_parameter(c, l1, "weight", 0) == 0.9);       // a's own, matched on its input name
  CHECK(config_parameter(c, plan[1], "weight", 0) == 0.3);  // output layer 0: a's filter misses, the slice's
  CHECK(config_parameter(c, l1, "weight", 1) == 0.3);       // b: the slice's
  CHECK(config_parameter(c, l1, "density", 1) == doctest::Approx(0.8));  // top level, gradient at t = 1
  CHECK(config_parameter(c, plan[1], "density", 1) == doctest::Approx(0.2));
  CHECK_FALSE(config_parameter(c, l1, "gamma", 1).has_value());
}

TEST_CASE("check_config_parameters: unknown parameters and global ones under a model are refused by name") {
  MergeConfig c;
  c.merge_method = "slerp";
  c.base_model = "base";
  c.parameters["t"] = ParameterSetting::constant(0.5);
  c.models = {{"a", std::nullopt, {}}};
  CHECK_NOTHROW(check_config_parameters(c));
  c.models[0].parameters["t"] = ParameterSetting::constant(0.3);
  CHECK_THROWS_WITH_AS(check_config_parameters(c), doctest::Contains("'t' is a global parameter of slerp"),
                       argument_error);
  c.models[0].parameters.clear();
  c.parameters["density"] = ParameterSetting::constant(0.3);
  CHECK_THROWS_WITH_AS(check_config_parameters(c), doctest::Contains("slerp takes no parameter 'density'"),
                       argument_error);
  c.merge_method = "frankenstein";
  CHECK_THROWS_WITH_AS(check_config_parameters(c), doctest::Contains("merge_method 'frankenstein' is not supported"),
                       argument_error);
  // A model twice in one slice (mergekit keeps the last silently) is refused; in two slices it is not.
  MergeConfig d;
  d.merge_method = "passthrough";
  d.slices = {{{{"a", std::pair<std::int64_t, std::int64_t>{0, 2}, {}}}, std::nullopt, {}},
              {{{"a", std::pair<std::int64_t, std::int64_t>{2, 4}, {}}}, std::nullopt, {}}};
  CHECK_NOTHROW(check_config_parameters(d));
  d.slices[1].sources.push_back(d.slices[1].sources[0]);
  CHECK_THROWS_WITH_AS(check_config_parameters(d), doctest::Contains("slice 1: model 'a' is listed twice"),
                       argument_error);
}

TEST_CASE("a config tensor merges as the strategy called directly: ties with gradients, linear with the base") {
  std::mt19937_64 rng(3);
  StateDict base, a, b;
  for (const std::string& n : llama_names(3)) {
    base.insert(n, random_tensor(rng, dtype::f32, {8, 12}));
    a.insert(n, twin_test::perturbed(rng, base.at(n), 0.1));
    b.insert(n, twin_test::perturbed(rng, base.at(n), 0.1));
  }
  MergeConfig c;
  c.merge_method = "ties";
  c.base_model = "base";
  c.parameters["lambda"] = ParameterSetting::constant(0.9);
  ConfigSource sa{"a", std::nullopt, {}}, sb{"b", std::nullopt, {}};
  sa.parameters["weight"] = ParameterSetting::gradient({1.0, 0.0});
  sa.parameters["density"] = ParameterSetting::constant(0.5);
  sb.parameters["weight"] = ParameterSetting::constant(0.5);
  sb.parameters["density"] = ParameterSetting::gradient({0.2, 0.6});
  c.models = {sa, sb};
  auto names = [](const std::string&) { return llama_names(3); };
  const std::vector<const StateDict*> ex = {&a, &b};
  const StateDict got = merge_state(ConfigMerger(c, plan_merge(c, names)), base, ex);
  // Layer 1 (t = 0.5): weights 0.5 and 0.5, densities 0.5 and 0.4.
  const std::string n = "model.layers.1.mlp.up_proj.weight";
  GeneralizedTaskArithmetic ties = *GeneralizedTaskArithmetic::mergekit("ties");
  ties.weights = {0.5, 0.5};
  ties.densities = {0.5, 0.4};
  ties.scaling = 0.9;
  const std::vector<ConstTensorView> ev = {a.at(n).view(), b.at(n).view()};
  CHECK(same_bits(got.at(n), twin::merge_tensor(ties, n, base.at(n).view(), ev)));
  // Embeddings at t = 0: weights 1 and 0.5, densities 0.5 and 0.2.
  const std::string e = "model.embed_tokens.weight";
  ties.weights = {1.0, 0.5};
  ties.densities = {0.5, 0.2};
  const std::vector<ConstTensorView> eev = {a.at(e).view(), b.at(e).view()};
  CHECK(same_bits(got.at(e), twin::merge_tensor(ties, e, base.at(e).view(), eev)));

  // linear with the base listed and weighted: (1·a + 3·b + 2·base)/6.
  MergeConfig l;
  l.merge_method = "linear";
  l.base_model = "base";
  ConfigSource la{"a", std::nullopt, {}}, lb{"b", std::nullopt, {}}, lbase{"base", std::nullopt, {}};
  la.parameters["weight"] = ParameterSetting::constant(1);
  lb.parameters["weight"] = ParameterSetting::constant(3);
  lbase.parameters["weight"] = ParameterSetting::constant(2);
  l.models = {la, lbase, lb};
  const StateDict lin = merge_state(ConfigMerger(l, plan_merge(l, names)), base, ex);
  const std::vector<double> av = to_f64_vector(a.at(n).view()), bv = to_f64_vector(b.at(n).view()),
                            basev = to_f64_vector(base.at(n).view());
  std::vector<double> ref(av.size());
  for (std::size_t j = 0; j < ref.size(); ++j) ref[j] = (av[j] + 3 * bv[j] + 2 * basev[j]) / 6;
  twin_test::check_close(lin.at(n).view(), ref, 1e-6, 1e-6);
  // Without a weight for the base, linear fails as mergekit does, with a message saying so.
  l.models = {la, lb};
  CHECK_THROWS_WITH_AS(merge_state(ConfigMerger(l, plan_merge(l, names)), base, ex), doctest::Contains("has no weight"),
                       argument_error);
  // A weight missing for a model is refused (mergekit: required).
  c.models[1].parameters.erase("weight");
  CHECK_THROWS_WITH_AS(merge_state(ConfigMerger(c, plan_merge(c, names)), base, ex),
                       doctest::Contains("parameter 'weight' is required for model 'b'"), argument_error);
}
