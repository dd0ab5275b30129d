// The paper's tables on a transformer, inside a real engine (libtorch).
//
// paper_tables reproduces Twin-Merging with MLP experts; the paper's experts
// are transformers. This program trains a small vision transformer in
// libtorch (examples/vit/model.hpp: 7×7 tiles → 16 tokens + a class token,
// pre-LN blocks with 4-head attention), pretrains it by masked-tile
// reconstruction on a mix of paper_tables' Fashion-MNIST views, fine-tunes
// one expert per view (8 merged, 2 held out) and an MTL model, and then uses
// twin the way an engine would: merges and Twin models are built from the
// torch modules' parameters (views through the at::Tensor adapter), the
// router reads the shared model's mean token, and DynamicFuser writes each
// input's weights into the live torch::nn module before that input runs. Tables 2, 4, 5 (both unseen-task
// protocols) and 7 in markdown on stdout and in --out, with summary.json.
//
//   paper_vit [--quick|--smoke] [--seed S] [--rank R] [--out DIR] [--data DIR]
//             [--cache DIR] [--threads N]
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "paper/context.hpp"
#include "paper/report.hpp"
#include "twin/twin.hpp"
#include "vit/options.hpp"
#include "vit/score.hpp"
#include "vit/setup.hpp"

using json = nlohmann::json;
using paper::fmt;
using paper::fmt_bytes;
using paper::MethodRow;
using paper::progress;
using namespace vit;

namespace {

double nbytes(const twin::StateDict& sd) { return static_cast<double>(sd.nbytes()); }

struct Run {
  Context& cx;
  Scorer sc;
  std::vector<Scored> test, val, held_own, held_probe;
  double body_bytes = 0, head_bytes = 0, experts_bytes = 0, merged_bytes = 0;
  std::vector<const twin::StateDict*> expert_bodies;
  json lambda_search = json::object(), checks = json::object(), table7 = json::object(), routing = json::object();
  double router_heldout = 0;

  explicit Run(Context& c) : cx(c), sc(c.cfg) {}

  // The experts (own body, own head): the reference of every normalized score.
  void score_experts() {
    const Config& cfg = cx.cfg;
    for (std::size_t t = 0; t < cx.T(); ++t) {
      const Expert& e = cx.experts[t];
      expert_bodies.push_back(&e.body);
      const torch::nn::Linear h = e.head;
      const Scored one[2] = {{&cx.sets[t].test, h, 100.0}, {&cx.sets[t].val, h, 100.0}};
      const MethodRow r = sc.static_row("expert", e.body, one, NAN);
      test.push_back({&cx.sets[t].test, h, r.accuracy[0]});
      val.push_back({&cx.sets[t].val, h, r.accuracy[1]});
    }
    // Held-out tasks: their own expert's head, and a head fit on the frozen
    // pretrained body (the protocol of the paper's vision setting, where
    // unseen tasks are read by heads aligned to the pretrained model).
    for (std::size_t h = 0; h < cx.held_experts.size(); ++h) {
      const Expert& e = cx.held_experts[h];
      const torch::nn::Linear own = e.head;
      const Scored one[1] = {{&cx.held_sets[h].test, own, 100.0}};
      const double acc = sc.static_row("expert", e.body, one, NAN).accuracy[0];
      held_own.push_back({&cx.held_sets[h].test, own, acc});
      examples::load_parameters(*sc.live(), cx.pre);
      seed_torch(twin::random_key(cfg.seed, "vit.probe", h));
      torch::nn::Linear probe(cfg.shape.width, kClasses);
      fit_head(sc.live(), probe, cx.held_sets[h].train, cfg.probe, twin::random_key(cfg.seed, "vit.probe", h));
      held_probe.push_back({&cx.held_sets[h].test, probe, acc});
    }
    body_bytes = nbytes(cx.pre);
    head_bytes = nbytes(examples::borrow_parameters(*cx.experts[0].head));
    experts_bytes = static_cast<double>(cx.T()) * (body_bytes + head_bytes);
    merged_bytes = body_bytes + static_cast<double>(cx.T()) * head_bytes;
    progress("  experts scored, held-out probes fit [%.1fs]\n", cx.seconds());
  }

  twin::StateDict merged(const twin::MergeSettings& s) {
    return twin::merge_state(twin::AnyMerger::from_settings(s), cx.pre,
                             std::span<const twin::StateDict* const>(expert_bodies));
  }
  // λ of a static merge: the best average normalized score on the validation items.
  twin::MergeSettings tuned(const std::string& method, std::optional<double> density) {
    twin::MergeSettings best;
    double best_score = -1;
    for (double l : cx.cfg.lambdas) {
      const twin::MergeSettings s = paper::settings(method, l, density, cx.cfg.seed);
      const double sc_l = sc.static_row("", merged(s), val, NAN).avg_normalized();
      lambda_search[method][fmt(l, 2)] = sc_l;
      if (sc_l > best_score) best_score = sc_l, best = s;
    }
    return best;
  }

  struct TwinBuilt {
    twin::TwinModel model;
    twin::Router router;
    double router_heldout = 0, bytes = 0;
  };
  // Twin-Merging on `merger`: its θ* routes, its own router (trained on the
  // validation items' mean tokens under that θ*).
  TwinBuilt build_twin(const twin::MergeSettings& s, bool sparse) {
    twin::TwinModel m = sparse ? twin::TwinModel::build(cx.pre, std::span<const twin::StateDict* const>(expert_bodies),
                                                        twin::AnyMerger::from_settings(s),
                                                        twin::MagnitudeSparsifier{cx.cfg.sparse_density}, {})
                               : twin::TwinModel::build(cx.pre, std::span<const twin::StateDict* const>(expert_bodies),
                                                        twin::AnyMerger::from_settings(s),
                                                        twin::SvdCompressor::with_rank(cx.cfg.rank), {});
    sc.set_shared(m.shared());
    paper::RouterSettings rs = cx.cfg.router;
    rs.seed = cx.cfg.seed;
    double ha = 0;
    twin::Router r = train_vit_router(sc, cx.sets, rs, &ha);
    const double bytes = static_cast<double>(m.storage().total()) + static_cast<double>(r.to_state_dict().nbytes()) +
                         static_cast<double>(cx.T()) * head_bytes;
    return {std::move(m), std::move(r), ha, bytes};
  }
};

std::string method_name(const twin::MergeSettings& s) { return paper::method_label(s); }

}  // namespace

int main(int argc, char** argv) try {
  const std::optional<Config> parsed = parse_options(argc, argv);
  if (!parsed) return 0;  // --help
  Context cx(*parsed);
  const Config& cfg = cx.cfg;
  prepare_data(cx);
  prepare_checkpoints(cx);
  Run run(cx);
  run.score_experts();
  const std::size_t T = cx.T();

  // ---- Table 2: every method on the merged tasks -------------------------------------------
  std::vector<MethodRow> t2;
  MethodRow individual{"Individual", {}, {}, run.experts_bytes, {}};
  for (const Scored& s : run.test) individual.accuracy.push_back(s.reference), individual.normalized.push_back(100.0);
  t2.push_back(run.sc.static_row("Pretrained", cx.pre, run.test, run.merged_bytes));
  t2.back().note = "pretrained body with each task's expert head";
  t2.push_back(individual);
  {
    std::vector<Scored> own;
    for (std::size_t t = 0; t < T; ++t) own.push_back({run.test[t].data, cx.mtl_heads[t], run.test[t].reference});
    t2.push_back(run.sc.static_row("Multi-Task Learning", cx.mtl, own, run.merged_bytes));
  }
  const std::vector<twin::MergeSettings> mergers = {paper::settings("average", {}, {}, cfg.seed),
                                                    run.tuned("task_arithmetic", {}), run.tuned("ties", 0.2),
                                                    run.tuned("dare_linear", 0.5)};
  std::vector<MethodRow> static_rows;
  for (const auto& s : mergers)
    static_rows.push_back(run.sc.static_row(method_name(s), run.merged(s), run.test, run.merged_bytes));
  for (const auto& r : static_rows) t2.push_back(r);
  progress("  static merges scored (λ tuned on validation) [%.1fs]\n", cx.seconds());

  const twin::MergeSettings& ta = mergers[1];
  Run::TwinBuilt tw = run.build_twin(ta, false);
  run.router_heldout = tw.router_heldout;
  const twin::DynamicFuser fuser(tw.model);
  const std::vector<torch::Tensor> tw_feats = run.sc.twin_features(fuser, tw.router, run.test);
  MethodRow tw_row =
      row_from_features("Twin-Merging (SVD rank " + std::to_string(cfg.rank) + ")", tw_feats, run.test, tw.bytes);
  t2.push_back(tw_row);
  progress("  Twin-Merging (SVD) scored per input [%.1fs]\n", cx.seconds());
  // Router accuracy per task (argmax of the logits is the input's own task).
  std::vector<double> router_test_acc;
  for (std::size_t t = 0; t < T; ++t) {
    const torch::Tensor pred = run.sc.logits(tw.router, *run.test[t].data).argmax(1);
    router_test_acc.push_back(100.0 * pred.eq(static_cast<std::int64_t>(t)).sum().item<double>() /
                              static_cast<double>(pred.size(0)));
  }
  Run::TwinBuilt tws = run.build_twin(ta, true);
  const twin::DynamicFuser fuser_sparse(tws.model);
  const MethodRow tws_row = row_from_features("Twin-Merging (sparsified, density " + fmt(cfg.sparse_density, 2) + ")",
                                              run.sc.twin_features(fuser_sparse, tws.router, run.test), run.test,
                                              tws.bytes);
  t2.push_back(tws_row);
  progress("  Twin-Merging (sparsified) scored per input [%.1fs]\n", cx.seconds());

  // One-hot weights must give each expert back: exactly with dense exclusive
  // knowledge (the fuser writes the live module; compared parameter by parameter).
  {
    const twin::TwinModel dense =
        twin::TwinModel::build(cx.pre, std::span<const twin::StateDict* const>(run.expert_bodies),
                               twin::AnyMerger::from_settings(ta), twin::DenseCompressor{}, {});
    const twin::DynamicFuser fd(dense);
    double max_diff = 0;
    for (std::size_t t = 0; t < T; ++t) {
      std::vector<float> w(T, 0.0f);
      w[t] = 1.0f;
      fd.fuse_with_weights(run.sc.live()->named_parameters(), w);
      for (const auto& item : run.sc.live()->named_parameters()) {
        const twin::Tensor& e = cx.experts[t].body.at(item.key());
        const torch::Tensor ref = torch::from_blob(const_cast<void*>(e.data()), item.value().sizes(), torch::kFloat);
        max_diff = std::max(max_diff, (item.value() - ref).abs().max().item<double>());
      }
    }
    run.checks["onehot_dense_max_abs_diff"] = max_diff;
    run.checks["onehot_dense_ok"] = max_diff <= 1e-5;
    progress("  one-hot dense fusion gives each expert back: max |Δ| = %.3g [%.1fs]\n", max_diff, cx.seconds());
  }
  // Per-input fusion against a reference computed another way: for a few
  // routed inputs, θ* + Σ_t w_t v̂_t formed densely in double precision in
  // torch (from the model's modules), loaded into a second module and run.
  {
    torch::NoGradGuard no_grad;
    run.sc.set_shared(tw.model.shared());
    const auto& d = *run.test[0].data;
    const std::int64_t n = std::min<std::int64_t>(4, d.size());
    const torch::Tensor x = inputs(d).slice(0, 0, n), lg = run.sc.logits(tw.router, d).slice(0, 0, n).contiguous();
    const torch::Tensor fused = run.sc.fused_features(fuser, lg, x);
    Body ref(cfg.shape);
    double worst = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      const torch::Tensor w = torch::softmax(lg[i].to(torch::kDouble), 0);
      for (auto& item : ref->named_parameters()) {
        auto as_torch = [&](const twin::Tensor& t) {
          return torch::from_blob(const_cast<void*>(t.data()), item.value().sizes(), torch::kFloat).to(torch::kDouble);
        };
        torch::Tensor acc = as_torch(tw.model.shared().at(item.key()));
        for (std::size_t t = 0; t < T; ++t)
          acc += w[static_cast<std::int64_t>(t)] * as_torch(tw.model.module(item.key(), t).to_dense());
        item.value().copy_(acc.to(torch::kFloat));
      }
      const torch::Tensor r = class_token(ref->forward(x.slice(0, i, i + 1)))[0];
      worst = std::max(worst, (fused[i] - r).abs().max().item<double>() / (r.abs().max().item<double>() + 1e-12));
    }
    run.checks["mixture_vs_dense_reference_rel_diff"] = worst;
    run.checks["mixture_ok"] = worst <= 1e-4;
    progress("  per-input fusion vs a dense double-precision reference: max relative |Δ| = %.3g [%.1fs]\n", worst,
             cx.seconds());
  }

  // ---- Table 4: Twin-Merging on each shared merger -----------------------------------------
  std::vector<MethodRow> t4;
  json t4_routers = json::object();
  for (std::size_t k = 1; k < mergers.size(); ++k) {
    t4.push_back(static_rows[k]);
    if (k == 1) {
      MethodRow r = tw_row;
      r.name = "Twin-Merging on " + method_name(mergers[k]);
      t4.push_back(r);
      t4_routers[mergers[k].method] = tw.router_heldout;
      continue;
    }
    Run::TwinBuilt b = run.build_twin(mergers[k], false);
    const twin::DynamicFuser f(b.model);
    t4.push_back(row_from_features("Twin-Merging on " + method_name(mergers[k]),
                                   run.sc.twin_features(f, b.router, run.test), run.test, b.bytes));
    t4_routers[mergers[k].method] = b.router_heldout;
  }
  progress("  Table 4 (Twin-Merging on each shared merger) done [%.1fs]\n", cx.seconds());

  // ---- Table 5: held-out tasks, both protocols -------------------------------------------
  std::vector<MethodRow> t5_own, t5_probe;
  {
    auto both = [&](const std::string& name, const std::vector<torch::Tensor>& f) {
      t5_own.push_back(row_from_features(name, f, run.held_own, NAN));
      t5_probe.push_back(row_from_features(name, f, run.held_probe, NAN));
    };
    std::vector<torch::Tensor> own_f;
    for (std::size_t h = 0; h < cx.held_experts.size(); ++h) {
      const Scored one[1] = {run.held_own[h]};
      own_f.push_back(run.sc.static_features(cx.held_experts[h].body, one)[0]);
    }
    both("Individual (its own expert)", own_f);
    both("Pretrained", run.sc.static_features(cx.pre, run.held_own));
    for (std::size_t k = 0; k < mergers.size(); ++k)
      both(static_rows[k].name, run.sc.static_features(run.merged(mergers[k]), run.held_own));
    run.sc.set_shared(tw.model.shared());
    both(tw_row.name, run.sc.twin_features(fuser, tw.router, run.held_own));
    run.sc.set_shared(tws.model.shared());
    both(tws_row.name, run.sc.twin_features(fuser_sparse, tws.router, run.held_own));
    run.sc.set_shared(tw.model.shared());
    for (std::size_t h = 0; h < cx.held_sets.size(); ++h) {
      const torch::Tensor w = torch::softmax(run.sc.logits(tw.router, cx.held_sets[h].test), 1).mean(0);
      json r = json::object();
      for (std::size_t t = 0; t < T; ++t) r[cx.names[t]] = w[static_cast<std::int64_t>(t)].item<double>();
      run.routing[cx.held_names[h]] = r;
    }
  }
  progress("  Table 5 (held-out tasks, two protocols) done [%.1fs]\n", cx.seconds());

  // ---- Table 7: cost per input -----------------------------------------------------------
  {
    torch::NoGradGuard no_grad;
    const std::int64_t n = cfg.timing_inputs;
    std::vector<std::pair<std::size_t, std::int64_t>> items;  // (task, row), the tasks in turn
    for (std::int64_t i = 0; i < n; ++i)
      items.emplace_back(static_cast<std::size_t>(i) % T,
                         (i / static_cast<std::int64_t>(T)) % run.test[0].data->size());
    auto input = [&](std::size_t k) {
      return inputs(*run.test[items[k].first].data).slice(0, items[k].second, items[k].second + 1);
    };
    examples::load_parameters(*run.sc.live(), run.merged(ta));
    auto t0 = paper::Clock::now();
    for (std::size_t k = 0; k < items.size(); ++k)
      (void)run.test[items[k].first].head->forward(class_token(run.sc.live()->forward(input(k))));
    const double static_one = paper::seconds_since(t0) / static_cast<double>(n);
    std::vector<torch::Tensor> xs;
    for (std::size_t k = 0; k < items.size(); ++k) xs.push_back(input(k));
    const torch::Tensor xb = torch::cat(xs, 0);
    // Rows of each task, for the heads of the batched run (items come in task order k mod T).
    std::vector<torch::Tensor> rows_of(T);
    for (std::size_t t = 0; t < T; ++t)
      rows_of[t] = torch::arange(static_cast<std::int64_t>(t), n, static_cast<std::int64_t>(T));
    t0 = paper::Clock::now();
    {
      const torch::Tensor f = class_token(run.sc.live()->forward(xb));
      for (std::size_t t = 0; t < T; ++t) (void)run.test[t].head->forward(f.index_select(0, rows_of[t]));
    }
    const double static_batch = paper::seconds_since(t0) / static_cast<double>(n);
    double t_route = 0, t_fuse = 0, t_infer = 0;
    auto params = run.sc.live()->named_parameters();
    for (std::size_t k = 0; k < items.size(); ++k) {
      auto a = paper::Clock::now();
      const twin::Tensor lg = tw.router.logits(run.sc.embeddings(input(k)).contiguous());
      t_route += paper::seconds_since(a);
      a = paper::Clock::now();
      fuser.fuse(params, lg.values<float>());
      t_fuse += paper::seconds_since(a);
      a = paper::Clock::now();
      (void)run.test[items[k].first].head->forward(class_token(run.sc.live()->forward(input(k))));
      t_infer += paper::seconds_since(a);
    }
    const double N = static_cast<double>(n);
    run.table7 = {{"inputs", n},
                  {"threads", torch::get_num_threads()},
                  {"static_merge_per_input_s", static_one},
                  {"static_merge_batched_per_input_s", static_batch},
                  {"twin_per_input",
                   {{"route_s", t_route / N},
                    {"fuse_s", t_fuse / N},
                    {"infer_s", t_infer / N},
                    {"total_s", (t_route + t_fuse + t_infer) / N}}}};
  }
  progress("  Table 7 (cost per input) done [%.1fs]\n", cx.seconds());

  // ---- paper vs ours, markdown, summary.json -----------------------------------------------
  const double ta_avg = static_rows[1].avg_normalized(), tw_avg = tw_row.avg_normalized();
  double best_static = 0;
  for (const auto& r : static_rows) best_static = std::max(best_static, r.avg_normalized());
  std::vector<paper::Claim> claims;
  claims.push_back(
      {"Twin-Merging closes most of the gap to the individual experts (+28.34 normalized points over Task "
       "Arithmetic on RoBERTa/GLUE, Table 2)",
       "Twin-Merging (SVD) " + fmt(tw_avg) + " vs Task Arithmetic " + fmt(ta_avg) + " (" +
           (tw_avg >= ta_avg ? "+" : "") + fmt(tw_avg - ta_avg) + " points)",
       tw_avg - ta_avg >= 10.0});
  claims.push_back({"Twin-Merging beats every static merge",
                    "best static merge " + fmt(best_static) + ", Twin-Merging " +
                        fmt(std::max(tw_avg, tws_row.avg_normalized())) + ", MTL " + fmt(t2[2].avg_normalized()),
                    std::max(tw_avg, tws_row.avg_normalized()) > best_static});
  claims.push_back(paper::table4_claim(t4));
  claims.push_back(paper::held_out_claim(t5_own, static_rows.size(), "heads of the tasks' own experts"));
  claims.push_back(paper::held_out_claim(t5_probe, static_rows.size(), "heads fit on the frozen pretrained body"));
  const double storage_ratio = tw.bytes / run.experts_bytes;
  claims.push_back({"Twin-Merging stores far less than the individual experts it approaches",
                    "storage " + fmt(storage_ratio, 3) + "x of the " + std::to_string(T) + " experts (" +
                        fmt_bytes(tw.bytes) + " vs " + fmt_bytes(run.experts_bytes) + ")",
                    storage_ratio < 0.5});

  std::ostringstream md;
  const Shape& sh = cfg.shape;
  md << "# Twin-Merging on a vision transformer, inside libtorch\n\n"
     << "Mode `" << cfg.mode << "`, seed " << cfg.seed << ", " << T << " merged tasks (paper_tables' Fashion-MNIST "
     << "views). ViT: 16 tokens of 7×7 tiles + a class token, width " << sh.width << ", " << sh.depth
     << " pre-LN blocks (" << sh.heads << " heads, MLP " << sh.mlp << ", GELU), final LayerNorm; a 10-way head per "
     << "task on the class token. Pretrained once by masked-tile reconstruction (40% of the tiles blanked) on "
     << cfg.pretrain_images << " training images in a mix of the 8 views (" << cfg.pretrain.epochs
     << " epochs); every expert and the MTL model fine-tune body + head(s) (Adam lr " << fmt(cfg.recipe.lr, 4)
     << ", batch " << cfg.recipe.batch << ", " << cfg.recipe.epochs << " epochs over " << cfg.train_per_task
     << " images per task). Merges and Twin models are built by twin from the torch modules' parameters, seen as views "
     << "(heads are not merged); λ of each static merge is chosen on the ≤" << cfg.router_per_task
     << " validation items per task the router trains on; the router reads the shared body's mean token; "
     << "DynamicFuser writes each test input's weights into the live torch::nn module before that input runs. "
     << "Test: the first " << run.test[0].data->size() << " Fashion-MNIST test images in each task's view; "
     << "normalized = accuracy / the task's expert accuracy × 100 (accuracy in parentheses).\n\n";
  md << "## Table 2 analog: performance and storage\n\n"
     << paper::markdown_table(cx.names, t2, run.experts_bytes) << "\nRouter held-out accuracy "
     << fmt(100 * run.router_heldout, 1) << "%; on the test inputs, share routed to "
     << "their own task:";
  for (std::size_t t = 0; t < T; ++t)
    md << " " << cx.names[t] << " " << fmt(router_test_acc[t], 1) << "%" << (t + 1 < T ? "," : ".");
  md << " One-hot fusion with dense exclusive knowledge writes each expert's parameters back into the module with "
     << "max |Δ| = " << run.checks["onehot_dense_max_abs_diff"].get<double>() << ".\n\n";
  md << "## Table 4 analog: Twin-Merging on top of each shared merger (SVD rank " << cfg.rank << ")\n\n"
     << paper::markdown_table(cx.names, t4, run.experts_bytes) << "\n";
  md << "## Table 5 analog: held-out tasks\n\nNo expert of these tasks is merged and the router never saw them; "
        "normalized by the task's own expert. **Own head**: the head of the task's own expert on each method's "
        "body.\n\n"
     << paper::markdown_table(cx.held_names, t5_own, 0)
     << "\n**Head fit on the pretrained body** (the paper's vision protocol reads unseen tasks with heads aligned to "
        "the pretrained model): a linear head per task trained on the frozen pretrained body's class token ("
     << cfg.probe.epochs << " epochs, Adam lr " << fmt(cfg.probe.lr, 3) << "), read on each method's body.\n\n"
     << paper::markdown_table(cx.held_names, t5_probe, 0) << "\nWhere the router sends them (mean weight):";
  md << paper::routing_markdown(run.routing, cx.held_names) << "\n\n";
  const json& tp = run.table7["twin_per_input"];
  auto us = [](double sec) { return fmt(sec * 1e6, 1) + " µs"; };
  const double sone = run.table7["static_merge_per_input_s"].get<double>();
  md << "## Table 7 analog: cost per input (" << cfg.timing_inputs << " test inputs of mixed tasks, "
     << torch::get_num_threads() << " threads, libtorch forward)\n\n"
     << "| Setting | Time per input | vs static merge |\n|---|---:|---:|\n"
     << "| Static merge (Task Arithmetic), one input at a time | " << us(sone) << " | 1.00x |\n"
     << "| Static merge, whole batch | " << us(run.table7["static_merge_batched_per_input_s"].get<double>()) << " | "
     << fmt(run.table7["static_merge_batched_per_input_s"].get<double>() / sone, 2) << "x |\n"
     << "| Twin-Merging per input: route (θ* forward + router) + fuse + infer | " << us(tp["total_s"].get<double>())
     << " | " << fmt(tp["total_s"].get<double>() / sone, 2) << "x |\n"
     << "| … of which fuse (DynamicFuser into the module's parameters) | " << us(tp["fuse_s"].get<double>()) << " | "
     << fmt(tp["fuse_s"].get<double>() / sone, 2) << "x |\n\n";
  md << "## Paper vs ours\n\n| Claim of the paper | Our analog | Reproduced? |\n|---|---|---|\n";
  for (const auto& c : claims)
    md << "| " << c.paper << " | " << c.ours << " | " << (c.holds ? "yes" : "**no**") << " |\n";
  md << "\nRun time: " << fmt(cx.seconds(), 1) << " s ("
     << (cx.all_cached ? "all checkpoints from the cache"
                       : "checkpoints trained and cached: pretraining " + fmt(cx.pretrain_s, 1) + " s, fine-tuning " +
                             fmt(cx.finetune_s, 1) + " s")
     << ").\n";
  const std::string text = md.str();
  std::cout << text << std::flush;

  std::vector<double> individual_acc;
  for (const Scored& s : run.test) individual_acc.push_back(s.reference);
  json summary = {
      {"config",
       {{"mode", cfg.mode},
        {"seed", cfg.seed},
        {"tasks", cx.names},
        {"held_out_tasks", cx.held_names},
        {"rank", cfg.rank},
        {"width", sh.width},
        {"depth", sh.depth},
        {"heads", sh.heads},
        {"mlp", sh.mlp},
        {"train_per_task", cfg.train_per_task},
        {"router_per_task", cfg.router_per_task},
        {"test_per_task", run.test[0].data->size()},
        {"epochs", cfg.recipe.epochs},
        {"pretrain_images", cfg.pretrain_images},
        {"pretrain_epochs", cfg.pretrain.epochs},
        {"sparsify_density", cfg.sparse_density},
        {"probe_epochs", cfg.probe.epochs},
        {"probe_lr", cfg.probe.lr},
        {"threads", torch::get_num_threads()}}},
      {"lambda_search", run.lambda_search},
      {"individual_accuracy", individual_acc},
      {"table7", run.table7},
      {"router",
       {{"heldout_accuracy", run.router_heldout},
        {"test_accuracy_per_task", router_test_acc},
        {"table4_heldout", t4_routers},
        {"held_out_task_routing", run.routing}}},
      {"checks", run.checks},
      {"headline",
       {{"task_arithmetic_avg_normalized", ta_avg},
        {"twin_svd_avg_normalized", tw_avg},
        {"twin_sparse_avg_normalized", tws_row.avg_normalized()},
        {"best_static_avg_normalized", best_static},
        {"twin_storage_ratio", storage_ratio}}},
      {"paper_vs_ours", paper::claims_json(claims)},
      {"timing",
       {{"total_s", cx.seconds()},
        {"pretrain_s", cx.pretrain_s},
        {"finetune_s", cx.finetune_s},
        {"checkpoints_cached", cx.all_cached}}},
  };
  paper::put_tables(summary, cx.names, cx.held_names, t2, t4, t5_own, t5_probe);
  // Through temporary files, so a reader never sees half of one.
  auto write = [&](const std::string& name, const std::string& body) {
    const fs::path tmp = cfg.out / (name + ".tmp");
    {
      std::ofstream f(tmp);
      f << body;
      if (!f.flush()) throw twin::io_error(tmp.string() + ": cannot write");
    }
    fs::rename(tmp, cfg.out / name);
  };
  write("tables.md", text);
  write("summary.json", summary.dump(2) + "\n");
  progress("paper_vit: wrote %s/{tables.md,summary.json} in %.1fs\n", cfg.out.c_str(), cx.seconds());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
