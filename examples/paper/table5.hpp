// Table 5 of the paper: tasks whose experts were never merged and which the
// router never saw, scored on every method's body under two protocols: with
// the head of the task's own expert (trained on that expert's body), and with
// a head fit on the frozen pretrained body (as the paper's vision setting
// reads unseen tasks with heads aligned to the pretrained model). Both are
// normalized by the task's own expert; where the router sends their inputs.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "paper/context.hpp"
#include "paper/mlp.hpp"
#include "paper/table2.hpp"
#include "paper/twin_eval.hpp"

namespace paper {

struct Table5 {
  std::vector<MethodRow> rows;        // heads of the tasks' own experts
  std::vector<MethodRow> probe_rows;  // heads fit on the frozen pretrained body
  json routing = json::object();      // held-out task → merged task → mean router weight
};

inline Table5 table5(const Context& cx, const Table2& t2) {
  const SharedModels& m = cx.models;
  std::vector<TaskData> held_test;
  std::vector<Layer> held_heads;
  std::vector<double> held_acc;
  for (std::size_t h = 0; h < cx.held_sets.size(); ++h) {
    held_test.push_back(cx.held_sets[h].test);
    held_heads.push_back(head_of(cx.held_experts[h]));
    held_acc.push_back(
        head_accuracy(embed(body_of(cx.held_experts[h]), held_test[h].x), held_heads[h], held_test[h].y));
  }
  std::vector<Layer> probe_heads;
  for (std::size_t h = 0; h < cx.held_sets.size(); ++h)
    probe_heads.push_back(fit_head(cx.pre, cx.held_sets[h].train, cx.cfg.probe,
                                   twin::random_key(cx.cfg.seed, "probe", task_key(h, true))));
  Table5 t5;
  auto rows = [&](const std::vector<Layer>& heads, std::vector<MethodRow>& out) {
    const Eval hev{&held_test, &heads, &held_acc, &cx.held_names};
    MethodRow own{"Individual (its own expert)", {}, {}, NAN, {}};
    for (std::size_t h = 0; h < held_test.size(); ++h) {
      const double a = head_accuracy(embed(body_of(cx.held_experts[h]), held_test[h].x), heads[h], held_test[h].y);
      own.accuracy.push_back(a), own.normalized.push_back(100.0 * a / held_acc[h]);
    }
    out.push_back(own);
    out.push_back(hev.static_row("Pretrained", cx.pre, NAN));
    for (std::size_t k : {0u, 1u, 2u, 3u})
      out.push_back(hev.static_row(t2.static_rows[k].name, m.static_bodies[k], NAN));
    out.push_back(hev.twin_row(t2.twin_svd.name, *m.fuser_svd, m.router, m.shared_ta, NAN));
    out.push_back(hev.twin_row(t2.twin_sparse.name, *m.fuser_sparse, m.router, m.shared_ta, NAN));
  };
  rows(held_heads, t5.rows);
  rows(probe_heads, t5.probe_rows);
  for (std::size_t h = 0; h < held_test.size(); ++h) {
    const auto w = route(m.router, m.shared_ta, held_test[h].x);
    std::vector<double> mean(cx.T, 0.0);
    for (std::size_t i = 0; i < w.size(); ++i) mean[i % cx.T] += w[i];
    json r = json::object();
    for (std::size_t t = 0; t < cx.T; ++t) r[cx.names[t]] = mean[t] / static_cast<double>(held_test[h].size());
    t5.routing[cx.held_names[h]] = r;
  }
  progress("  Table 5 (held-out tasks) done [%.1fs]\n", cx.seconds());
  return t5;
}

}  // namespace paper
