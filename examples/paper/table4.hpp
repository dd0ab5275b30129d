// Table 4 of the paper: Twin-Merging on top of each static merger, to show
// that the gain does not depend on which merge builds the shared model.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "paper/context.hpp"
#include "paper/table2.hpp"
#include "paper/twin_eval.hpp"
#include "twin/twin.hpp"

namespace paper {

struct Table4 {
  std::vector<MethodRow> rows;    // per merger: the static merge, then Twin-Merging on it
  json routers = json::object();  // held-out accuracy of each merger's own router
};

inline Table4 table4(const Context& cx, const Table2& t2) {
  const SharedModels& m = cx.models;
  const Eval ev = cx.eval();
  Table4 t4;
  for (std::size_t k = 0; k < m.mergers.size(); ++k) {
    const auto& s = m.mergers[k];
    t4.rows.push_back(t2.static_rows[k]);
    // Table 2 already built Twin-Merging on Task Arithmetic.
    if (s.method == "task_arithmetic") {
      MethodRow r = t2.twin_svd;
      r.name = "Twin-Merging on " + method_label(s);
      t4.rows.push_back(r);
      continue;
    }
    const twin::TwinModel tm = twin::TwinModel::build(m.base, std::span<const twin::StateDict>(cx.experts),
                                                      twin::AnyMerger::from_settings(s),
                                                      twin::SvdCompressor::with_rank(cx.cfg.rank), m.build_options);
    const Body sh = body_of(tm.shared());
    double ha = 0;
    const twin::Router rt = train_router(sh, m.val, m.router_settings, &ha);
    t4.routers[s.method] = ha;
    const twin::DynamicFuser f(tm);
    t4.rows.push_back(ev.twin_row("Twin-Merging on " + method_label(s), f, rt, sh,
                                  static_cast<double>(tm.storage().total()) + static_cast<double>(router_bytes(rt))));
  }
  progress("  Table 4 (Twin-Merging on each shared merger) done [%.1fs]\n", cx.seconds());
  return t4;
}

}  // namespace paper
