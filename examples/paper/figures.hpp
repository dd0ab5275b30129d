// Figures 3 and 4 of the paper: score against the share of exclusive
// knowledge kept, against the number of merged tasks, and score and storage
// against the SVD rank, as SVG charts and their points for summary.json.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "paper/context.hpp"
#include "paper/report.hpp"
#include "paper/twin_eval.hpp"
#include "twin/twin.hpp"

namespace paper {

struct Figures {
  Chart share, tasks, rank;  // fig3_exclusive_share, fig4_num_tasks, fig4_rank
  json share_json = json::array(), tasks_json = json::array(), rank_json = json::array();
  std::int64_t sweep_items = 0;  // test items per task the sweeps score

  // The series the markdown and the claims quote, in the order the charts hold them.
  const Series& share_score() const { return share.series[0]; }
  const Series& tasks_ta() const { return tasks.series[0]; }
  const Series& tasks_twin() const { return tasks.series[1]; }
  const Series& rank_score() const { return rank.series[0]; }
  const Series& rank_storage() const { return rank.series[1]; }
};

// The sweeps build many models, so they score on the first
// sweep_test_per_task test items of each task, normalized by the experts on
// the same items.
struct SweepSet {
  std::vector<TaskData> test;
  std::vector<double> expert_acc;
  // Valid while the set lives.
  Eval eval(const Context& cx) const { return Eval{&test, &cx.heads, &expert_acc, &cx.names}; }
};
inline SweepSet sweep_set(const Context& cx) {
  SweepSet s;
  for (std::size_t t = 0; t < cx.T; ++t) {
    const Eigen::Index n = std::min<Eigen::Index>(cx.cfg.sweep_test_per_task, cx.test_sets[t].size());
    TaskData d;
    d.x = cx.test_sets[t].x.topRows(n);
    d.y.assign(cx.test_sets[t].y.begin(), cx.test_sets[t].y.begin() + n);
    s.expert_acc.push_back(head_accuracy(embed(cx.expert_bodies[t], d.x), cx.heads[t], d.y));
    s.test.push_back(std::move(d));
  }
  return s;
}

inline Figures figures(const Context& cx) {
  const Config& cfg = cx.cfg;
  const SharedModels& m = cx.models;
  const std::size_t T = cx.T;
  Figures fig;
  const SweepSet sweep = sweep_set(cx);
  const std::vector<TaskData>& sweep_test = sweep.test;
  const std::vector<double>& sweep_acc = sweep.expert_acc;
  fig.sweep_items = sweep_test.front().size();
  const Eval sev = sweep.eval(cx);

  // ---- Figure 3: score vs share of exclusive knowledge kept -----------------------------------
  fig.share = {"Figure 3 analog: score vs share of exclusive knowledge kept (sparsified)",
               "share of each exclusive task vector kept (magnitude top-k density)",
               "avg. normalized score",
               "storage / individual experts",
               false,
               {}};
  Series f3s{"Twin-Merging (sparsified)", {}, {}, false}, f3b{"storage (right axis)", {}, {}, true};
  for (double d : cfg.density_sweep) {
    twin::MagnitudeSparsifier sp;
    sp.density = d;
    const twin::TwinModel tm =
        twin::TwinModel::build(m.base, std::span<const twin::StateDict>(cx.experts), *m.ta_merger, sp, m.build_options);
    const twin::DynamicFuser f(tm);
    const MethodRow r =
        sev.twin_row("", f, m.router, m.shared_ta, static_cast<double>(tm.storage().total()) + m.router_storage);
    f3s.x.push_back(d), f3s.y.push_back(r.avg_normalized());
    f3b.x.push_back(d), f3b.y.push_back(r.storage_bytes / cx.experts_bytes);
    fig.share_json.push_back(
        {{"density", d}, {"avg_normalized", r.avg_normalized()}, {"storage_bytes", r.storage_bytes}});
  }
  fig.share.series = {f3s, f3b};
  progress("  Figure 3 sweep done [%.1fs]\n", cx.seconds());

  // ---- Figure 4: score & storage vs number of tasks, vs rank --------------------------------
  fig.tasks = {"Figure 4 analog (a): score vs number of merged tasks",
               "number of tasks",
               "avg. normalized score",
               "storage / individual experts",
               false,
               {}};
  Series s_ta_n{"Task Arithmetic", {}, {}, false}, s_tw_n{"Twin-Merging (SVD)", {}, {}, false},
      s_st_n{"Twin-Merging storage (right axis)", {}, {}, true};
  for (std::size_t k : cfg.count_sweep) {
    if (k > T) continue;
    std::vector<twin::StateDict> sub;
    std::vector<const TaskData*> vsub;
    std::vector<std::string> nsub(cx.names.begin(), cx.names.begin() + static_cast<std::ptrdiff_t>(k));
    for (std::size_t t = 0; t < k; ++t) sub.push_back(cx.experts[t].clone()), vsub.push_back(&cx.sets[t].val);
    std::vector<TaskData> tsub(sweep_test.begin(), sweep_test.begin() + static_cast<std::ptrdiff_t>(k));
    std::vector<Layer> hsub(cx.heads.begin(), cx.heads.begin() + static_cast<std::ptrdiff_t>(k));
    std::vector<double> asub(sweep_acc.begin(), sweep_acc.begin() + static_cast<std::ptrdiff_t>(k));
    const Eval e{&tsub, &hsub, &asub, &nsub};
    twin::TwinBuildOptions bk = m.build_options;
    bk.task_names = nsub;
    const twin::TwinModel tm = twin::TwinModel::build(m.base, std::span<const twin::StateDict>(sub), *m.ta_merger,
                                                      twin::SvdCompressor::with_rank(cfg.rank), bk);
    const Body sh = body_of(tm.shared());
    const MethodRow ta_r = e.static_row("", sh, cx.merged_bytes);
    const twin::Router rt = k == T ? m.router : train_router(sh, vsub, m.router_settings);
    const twin::DynamicFuser f(tm);
    const double bytes = static_cast<double>(tm.storage().total()) + static_cast<double>(router_bytes(rt));
    const MethodRow tw_r = e.twin_row("", f, rt, sh, bytes);
    const double ref = static_cast<double>(k) * (cx.body_bytes + cx.head_bytes);
    s_ta_n.x.push_back(static_cast<double>(k)), s_ta_n.y.push_back(ta_r.avg_normalized());
    s_tw_n.x.push_back(static_cast<double>(k)), s_tw_n.y.push_back(tw_r.avg_normalized());
    s_st_n.x.push_back(static_cast<double>(k)), s_st_n.y.push_back(bytes / ref);
    fig.tasks_json.push_back({{"tasks", k},
                              {"task_arithmetic_avg_normalized", ta_r.avg_normalized()},
                              {"twin_avg_normalized", tw_r.avg_normalized()},
                              {"twin_storage_bytes", bytes},
                              {"experts_storage_bytes", ref}});
  }
  fig.tasks.series = {s_ta_n, s_tw_n, s_st_n};
  fig.rank = {"Figure 4 analog (b): score and storage vs SVD rank",
              "rank r of each exclusive matrix (log scale)",
              "avg. normalized score",
              "storage / individual experts",
              true,
              {}};
  Series s_rank{"Twin-Merging (SVD)", {}, {}, false}, s_rank_b{"storage (right axis)", {}, {}, true};
  for (std::int64_t r : cfg.rank_sweep) {
    const twin::TwinModel tm = twin::TwinModel::build(m.base, std::span<const twin::StateDict>(cx.experts),
                                                      *m.ta_merger, twin::SvdCompressor::with_rank(r), m.build_options);
    const twin::DynamicFuser f(tm);
    const double bytes = static_cast<double>(tm.storage().total()) + m.router_storage;
    const MethodRow tr = sev.twin_row("", f, m.router, m.shared_ta, bytes);
    s_rank.x.push_back(static_cast<double>(r)), s_rank.y.push_back(tr.avg_normalized());
    s_rank_b.x.push_back(static_cast<double>(r)), s_rank_b.y.push_back(bytes / cx.experts_bytes);
    fig.rank_json.push_back({{"rank", r},
                             {"avg_normalized", tr.avg_normalized()},
                             {"storage_bytes", bytes},
                             {"relative_error", tm.relative_error()}});
  }
  fig.rank.series = {s_rank, s_rank_b};
  progress("  Figure 4 sweeps done [%.1fs]\n", cx.seconds());
  return fig;
}

}  // namespace paper
