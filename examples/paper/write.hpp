// The outputs of paper_tables: tables.md (also printed on stdout), the SVG
// figures and results/summary.json, all from the finished tables, so that
// the markdown and the JSON can never disagree.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "paper/claims.hpp"
#include "paper/context.hpp"
#include "paper/figures.hpp"
#include "paper/report.hpp"
#include "paper/storage.hpp"
#include "paper/table2.hpp"
#include "paper/table4.hpp"
#include "paper/table5.hpp"

namespace paper {

struct Results {
  Table2 table2;
  Table4 table4;
  Table5 table5;
  json table7;  // cost per input
  Figures figures;
  StorageStudy storage;
  std::vector<Claim> claims;
};

inline std::string tables_markdown(const Context& cx, const Results& res) {
  const Config& cfg = cx.cfg;
  const std::size_t T = cx.T;
  const std::vector<std::string>& names = cx.names;
  const Table2& t2 = res.table2;
  const Headline h = headline(cx, t2);
  std::ostringstream md;
  md << "# Twin-Merging, reproduced at small scale on Fashion-MNIST\n\n"
     << "Mode `" << cfg.mode << "`, seed " << cfg.seed << ", " << T << " merged tasks, MLP body 784→" << cfg.hidden
     << "→" << cfg.hidden << " (LeakyReLU) + one 10-way head per task. Pretrained once as a denoising autoencoder on "
     << cfg.pretrain_images << " training images in a mix of the 8 views (" << cfg.pretrain_epochs
     << " epochs); every expert and the MTL model fine-tune body + head(s) with one recipe (Adam lr "
     << fmt(cfg.recipe.lr, 4) << ", batch " << cfg.recipe.batch << ", " << cfg.recipe.epochs << " epochs over "
     << cfg.train_per_task
     << " images per task). Heads are excluded from merging. λ of each static merge is chosen on the "
     << "validation items (the same ≤" << cfg.router_per_task
     << " per task the router trains on); Twin-Merging's shared "
     << "model is Task Arithmetic with that λ. Test: the first " << cx.test_items
     << " Fashion-MNIST test images in each "
     << "task's view. Scores are **normalized**: accuracy / the task's individual expert accuracy × 100 (accuracy in "
     << "parentheses).\n\n";
  md << "Tasks: ";
  for (std::size_t t = 0; t < T; ++t)
    md << "`" << names[t] << "` (" << kMainTasks[cfg.tasks[t]].what << ")" << (t + 1 < T ? "; " : ".\n\n");

  // ---- Table 2 -------------------------------------------------------------------------
  md << "## Table 2 analog: performance and storage\n\n" << markdown_table(names, t2.rows(), cx.experts_bytes) << "\n";
  const std::int64_t rh = cfg.router.hidden > 0 ? cfg.router.hidden : 2 * cfg.hidden;
  md << "Router (MLP " << cfg.hidden << "→" << rh << "→" << rh << "→" << T
     << " on the shared model's penultimate activations, trained on the validation items): held-out accuracy "
     << fmt(100 * cx.models.router_heldout, 1) << "%"
     << (rh != 2 * cfg.hidden
             ? " (hidden width " + std::to_string(rh) + " instead of the official 2d, to keep training short)"
             : std::string())
     << "; test accuracy per task:";
  for (std::size_t t = 0; t < T; ++t)
    md << " " << names[t] << " " << fmt(t2.router_test_acc[t], 1) << "%" << (t + 1 < T ? "," : ".\n\n");
  const json& onehot = t2.onehot;
  md << "Fusion with one-hot weights (the library's DynamicFuser): dense exclusive knowledge gives each expert back with max |Δ| = "
     << onehot["dense_max_abs_diff"].get<double>() << " and "
     << (onehot["dense_accuracy_equals_expert"].get<bool>() ? "the same" : "NOT the same")
     << " test accuracy; with SVD rank " << cfg.rank
     << " the body differs from the expert by exactly the compression error the "
     << "library recorded (worst gap " << fmt(onehot["svd_worst_gap"].get<double>(), 6) << ").\n\n";

  md << "### Table 2 (cont.): exclusive knowledge in fewer bytes\n\nThe same shared model and router; each task's "
        "exclusive knowledge stored as int8 / int4 SVD factors (f16 scale per 64 rows of a factor column), int4 "
        "factors plus the largest entries of what they leave, sign bits with one scale per row (BitDelta), or "
        "chosen per tensor and task under a byte budget (kind and rank by error removed per byte).\n\n"
     << markdown_table(names, res.storage.rows, cx.experts_bytes)
     << "\nAt equal bytes (full test, avg. normalized):\n\n";
  for (const std::string& l : res.storage.equal_bytes) md << "- " << l << "\n";
  md << "\n";

  // ---- Tables 4 and 5 --------------------------------------------------------------------
  md << "## Table 4 analog: Twin-Merging on top of each shared merger (SVD rank " << cfg.rank << ")\n\n"
     << markdown_table(names, res.table4.rows, cx.experts_bytes) << "\n";
  md << "## Table 5 analog: held-out tasks\n\nNo expert of these tasks is merged and the router never saw them. Two "
        "protocols, both normalized by the task's own expert (its body and head). **Own head**: each task is scored "
        "with its own expert's head (fine-tuned with that expert's body) on top of each method's body; Twin-Merging "
        "moves the body toward the experts the router picks (e.g. `plain` for `blurred`), which can be further from "
        "that expert's body than a static merge is.\n\n"
     << markdown_table(cx.held_names, res.table5.rows, 0)
     << "\n**Head fit on the pretrained body** (as the paper's vision setting reads unseen tasks with heads aligned to "
        "the pretrained model, CLIP's zero-shot heads): a linear head per task is trained on the frozen pretrained "
        "body's embeddings of the task's training items ("
     << cfg.probe.epochs << " epochs, Adam lr " << fmt(cfg.probe.lr, 3) << "), then read on each method's body.\n\n"
     << markdown_table(cx.held_names, res.table5.probe_rows, 0) << "\n"
     << "Where the router sends them (mean weight):" << routing_markdown(res.table5.routing, cx.held_names) << "\n\n";

  // ---- Table 7 ---------------------------------------------------------------------------
  const json& cost = res.table7;
  const auto& tp = cost["twin_per_input"];
  md << "## Table 7 analog: cost per input (" << cost["inputs"].get<std::int64_t>() << " test inputs of mixed tasks, "
     << twin::num_threads() << " threads)\n\n"
     << "| Setting | Time per input | vs static merge | Fusions | Note |\n|---|---:|---:|---:|---|\n";
  const double sone = cost["static_merge_per_input_s"].get<double>();
  auto us = [](double s) { return fmt(s * 1e6, 1) + " µs"; };
  md << "| Static merge (Task Arithmetic), one input at a time | " << us(sone) << " | 1.00x | 0 | |\n";
  md << "| Static merge, whole batch | " << us(cost["static_merge_batched_per_input_s"].get<double>()) << " | "
     << fmt(cost["static_merge_batched_per_input_s"].get<double>() / sone, 2) << "x | 0 | |\n";
  md << "| Twin-Merging per input: route + fuse + infer | " << us(tp["total_s"].get<double>()) << " | "
     << fmt(tp["total_s"].get<double>() / sone, 2) << "x | " << cost["inputs"].get<std::int64_t>() << " | route "
     << us(tp["route_s"].get<double>()) << ", fuse " << us(tp["fuse_s"].get<double>()) << ", infer "
     << us(tp["infer_s"].get<double>()) << " |\n";
  md << "| Twin-Merging group-wise, same batch | " << us(cost["groupwise"]["per_input_s"].get<double>()) << " | "
     << fmt(cost["groupwise"]["per_input_s"].get<double>() / sone, 2) << "x | "
     << cost["groupwise"]["fusions"].get<std::size_t>() << " | avg. normalized on the full test " << fmt(h.twg_avg)
     << " vs per-input " << fmt(h.tw_avg) << " |\n";
  md << "| Twin-Merging mixed-batch apply, same batch | " << us(cost["mixed_batch"]["per_input_s"].get<double>())
     << " | " << fmt(cost["mixed_batch"]["per_input_s"].get<double>() / sone, 2)
     << "x | 0 | exact per-input mixtures; max |Δ| vs per-input fusion "
     << cost["mixed_batch"]["max_abs_diff_vs_per_input_fusion"].get<double>() << " |\n\n";
  md << "On the full test stream, group-wise fusion needed " << t2.groupwise.fusions << " fusions for "
     << cx.stream.size() << " inputs (" << t2.groupwise.batches << " batches of " << cfg.group_batch << ").\n\n";

  // ---- figures ---------------------------------------------------------------------------
  const Figures& fig = res.figures;
  const Series &f3s = fig.share_score(), &s_ta_n = fig.tasks_ta(), &s_tw_n = fig.tasks_twin();
  const Series &s_rank = fig.rank_score(), &s_rank_b = fig.rank_storage();
  md << "## Figures\n\nThe sweeps score the first " << fig.sweep_items
     << " test items of each task.\n\n- `fig3_exclusive_share.svg`: score vs the share of exclusive knowledge kept:";
  for (std::size_t i = 0; i < f3s.x.size(); ++i) md << " " << fmt(f3s.x[i], 2) << "→" << fmt(f3s.y[i], 1);
  md << "\n- `fig4_num_tasks.svg`: score vs number of tasks (Task Arithmetic / Twin-Merging):";
  for (std::size_t i = 0; i < s_ta_n.x.size(); ++i)
    md << " " << s_ta_n.x[i] << ": " << fmt(s_ta_n.y[i], 1) << " / " << fmt(s_tw_n.y[i], 1);
  md << "\n- `fig4_rank.svg`: score and storage vs SVD rank:";
  for (std::size_t i = 0; i < s_rank.x.size(); ++i)
    md << " r=" << s_rank.x[i] << ": " << fmt(s_rank.y[i], 1) << " (" << fmt(s_rank_b.y[i], 3) << "x)";
  md << "\n- `fig_storage_accuracy.svg`: score vs total bytes, one curve per way of storing the exclusive "
        "knowledge (SVD f32 / int8 / int4 over ranks";
  for (std::int64_t k : cfg.storage_ranks) md << " " << k;
  md << "; sign bits over densities; the budget over fractions), the experts and static merges as points.";
  md << "\n\n";

  // ---- paper vs ours ---------------------------------------------------------------------
  md << "## Paper vs ours\n\n| Claim of the paper | Our analog | Reproduced? |\n|---|---|---|\n";
  for (const auto& c : res.claims)
    md << "| " << c.paper << " | " << c.ours << " | " << (c.holds ? "yes" : "**no**") << " |\n";
  md << "\nThe paper's absolute numbers come from RoBERTa, Qwen and ViT experts; this analog only tests whether the same "
        "relations hold for small MLP experts on image views. Run time: "
     << fmt(cx.seconds(), 1) << " s (pretraining " << fmt(cx.time.pretrain, 1) << " s, fine-tuning "
     << fmt(cx.time.finetune, 1) << " s, "
     << (cx.all_cached ? "all checkpoints from the cache" : "checkpoints trained and cached") << ").\n";
  return md.str();
}

inline json summary_json(const Context& cx, const Results& res) {
  const Config& cfg = cx.cfg;
  const Table2& t2 = res.table2;
  const Figures& fig = res.figures;
  const Headline h = headline(cx, t2);
  json summary = {
      {"config",
       {{"mode", cfg.mode},
        {"seed", cfg.seed},
        {"tasks", cx.names},
        {"held_out_tasks", cx.held_names},
        {"rank", cfg.rank},
        {"hidden", cfg.hidden},
        {"train_per_task", cfg.train_per_task},
        {"router_per_task", cfg.router_per_task},
        {"test_per_task", cx.test_items},
        {"sweep_test_per_task", fig.sweep_items},
        {"epochs", cfg.recipe.epochs},
        {"pretrain_epochs", cfg.pretrain_epochs},
        {"sparsify_density", cfg.sparse_density},
        {"budget", cfg.budget},
        {"residual_density", cfg.residual_density},
        {"probe_epochs", cfg.probe.epochs},
        {"probe_lr", cfg.probe.lr},
        {"threads", twin::num_threads()}}},
      {"lambda_search", cx.models.lambda_search},
      {"individual_accuracy", cx.expert_acc},
      {"table7", res.table7},
      {"figure3", fig.share_json},
      {"figure4_tasks", fig.tasks_json},
      {"figure4_rank", fig.rank_json},
      {"storage_accuracy", res.storage.points},
      {"table2_packed", res.storage.rows_json},
      {"router",
       {{"heldout_accuracy", cx.models.router_heldout},
        {"test_accuracy_per_task", t2.router_test_acc},
        {"table4_heldout", res.table4.routers},
        {"held_out_task_routing", res.table5.routing}}},
      {"checks",
       {{"experts_beat_pretrained", h.experts_beat_pre},
        {"onehot_fusion", t2.onehot},
        {"twin_beats_task_arithmetic", h.tw_avg > h.ta_avg}}},
      {"headline",
       {{"task_arithmetic_avg_normalized", h.ta_avg},
        {"ties_avg_normalized", h.ties_avg},
        {"twin_svd_avg_normalized", h.tw_avg},
        {"twin_sparse_avg_normalized", h.tws_avg},
        {"twin_groupwise_avg_normalized", h.twg_avg},
        {"twin_storage_ratio", h.storage_ratio},
        {"twin_budget_avg_normalized", res.storage.budget_avg},
        {"twin_budget_exclusive_ratio", res.storage.budget_exclusive_ratio}}},
      {"paper_vs_ours", claims_json(res.claims)},
      {"timing",
       {{"total_s", cx.seconds()},
        {"pretrain_s", cx.time.pretrain},
        {"finetune_s", cx.time.finetune},
        {"router_s", cx.time.router},
        {"build_svd_s", cx.time.build_svd},
        {"checkpoints_cached", cx.all_cached}}},
  };
  std::vector<MethodRow> t2_rows = t2.rows();
  t2_rows.insert(t2_rows.end(), res.storage.rows.begin(), res.storage.rows.end());
  put_tables(summary, cx.names, cx.held_names, t2_rows, res.table4.rows, res.table5.rows, res.table5.probe_rows);
  return summary;
}

// summary.json goes through a temporary file, so a reader never sees half of it.
inline void write_outputs(const Context& cx, const Results& res) {
  const fs::path& out = cx.cfg.out;
  const std::string text = tables_markdown(cx, res);
  std::cout << text << std::flush;
  {
    std::ofstream(out / "tables.md") << text;
    std::ofstream(out / "fig3_exclusive_share.svg") << render_svg(res.figures.share);
    std::ofstream(out / "fig4_num_tasks.svg") << render_svg(res.figures.tasks);
    std::ofstream(out / "fig4_rank.svg") << render_svg(res.figures.rank);
    std::ofstream(out / "fig_storage_accuracy.svg") << render_svg(res.storage.chart);
  }
  const json summary = summary_json(cx, res);
  {
    const fs::path tmp = out / "summary.json.tmp";
    std::ofstream(tmp) << summary.dump(2) << "\n";
    fs::rename(tmp, out / "summary.json");
  }
  progress("paper_tables: wrote %s/{tables.md,summary.json,*.svg} in %.1fs\n", out.c_str(), cx.seconds());
}

}  // namespace paper
