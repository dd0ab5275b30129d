// Table 5 of the paper: tasks whose experts were never merged and which the
// router never saw, each scored with its own expert's head on every method's
// body, and where the router sends their inputs.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "paper/context.hpp"
#include "paper/table2.hpp"
#include "paper/twin_eval.hpp"

namespace paper {

struct Table5 {
  std::vector<MethodRow> rows;
  json routing = json::object();  // held-out task → merged task → mean router weight
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
  const Eval hev{&held_test, &held_heads, &held_acc, &cx.held_names};
  Table5 t5;
  t5.rows.push_back(
      {"Individual (its own expert, upper bound)", held_acc, std::vector<double>(held_acc.size(), 100.0), NAN, {}});
  t5.rows.push_back(hev.static_row("Pretrained", cx.pre, NAN));
  for (std::size_t k : {0u, 1u, 2u, 3u})
    t5.rows.push_back(hev.static_row(t2.static_rows[k].name, m.static_bodies[k], NAN));
  t5.rows.push_back(hev.twin_row(t2.twin_svd.name, *m.fuser_svd, m.router, m.shared_ta, NAN));
  t5.rows.push_back(hev.twin_row(t2.twin_sparse.name, *m.fuser_sparse, m.router, m.shared_ta, NAN));
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
