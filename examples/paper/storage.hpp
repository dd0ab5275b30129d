// Storage against accuracy: Twin-Merging's exclusive knowledge in fewer bytes
// (quantized SVD factors, a sparse residual, sign bits, a storage budget),
// as Table 2 rows on the full test and as one curve per compressor (average
// normalized score against the total bytes held, over the sweep items), with
// the experts and the static merges as points.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "paper/context.hpp"
#include "paper/figures.hpp"
#include "paper/report.hpp"
#include "paper/table2.hpp"
#include "paper/twin_eval.hpp"
#include "twin/twin.hpp"

namespace paper {

struct StorageStudy {
  std::vector<MethodRow> rows;  // Table 2 rows of the packed kinds
  Chart chart;                  // fig_storage_accuracy.svg
  json points = json::array();  // summary.json "storage_accuracy"
  json rows_json = json::array();
  // Per row: its exclusive share and f32 SVD factors in the same bytes.
  std::vector<std::string> equal_bytes;
  // The goal's numbers: the budget row's score and its exclusive bytes
  // against the experts' bytes.
  double budget_avg = 0, budget_exclusive_ratio = 0;
};

namespace detail {
inline twin::SvdCompressor packed_svd(std::int64_t rank, int bits, double residual = 0.0) {
  twin::SvdCompressor c = twin::SvdCompressor::with_rank(rank);
  if (bits) c.quant = twin::QuantSpec{bits, 64};
  c.residual_density = residual;
  return c;
}
}  // namespace detail

inline StorageStudy storage_study(const Context& cx, const Table2& t2) {
  const Config& cfg = cx.cfg;
  const SharedModels& m = cx.models;
  const std::size_t T = cx.T;
  const std::span<const twin::StateDict> experts(cx.experts);
  StorageStudy st;
  // Models by their settings: the rows, the equal-bytes comparisons and the
  // sweep share the ones they have in common (the smoke run's sweep builds
  // nothing new).
  std::map<std::string, twin::TwinModel> built;
  auto memo = [&](const std::string& key, auto&& make) -> const twin::TwinModel& {
    auto it = built.find(key);
    if (it == built.end()) it = built.emplace(key, make()).first;
    return it->second;
  };
  auto svd = [&](std::int64_t k, int bits, double residual = 0.0) -> const twin::TwinModel& {
    return memo("svd " + std::to_string(k) + " " + std::to_string(bits) + " " + fmt(residual, 6), [&] {
      return twin::TwinModel::build(m.base, experts, *m.ta_merger, detail::packed_svd(k, bits, residual),
                                    m.build_options);
    });
  };
  auto sign = [&](double d) -> const twin::TwinModel& {
    return memo("sign " + fmt(d, 6), [&] {
      return twin::TwinModel::build(m.base, experts, *m.ta_merger, twin::SignCompressor{d, true}, m.build_options);
    });
  };
  auto build_budget = [&](double fraction) -> const twin::TwinModel& {
    return memo("budget " + fmt(fraction, 6), [&] {
      twin::BudgetOptions b;
      b.fraction = fraction;
      return twin::build_within_budget(m.base, experts, *m.ta_merger, b, m.build_options);
    });
  };
  auto exclusive_ratio = [&](const twin::TwinModel& tm) {
    const twin::StorageReport s = tm.storage();
    return static_cast<double>(s.exclusive_bytes) / static_cast<double>(s.dense_experts_bytes);
  };
  auto total_bytes = [&](const twin::TwinModel& tm) {
    return static_cast<double>(tm.storage().total()) + m.router_storage;
  };

  // ---- Table 2 rows (full test) ----------------------------------------------------------
  const Eval ev = cx.eval();
  // f32 SVD factors in the same bytes: the largest rank whose modules fit
  // (vectors stay dense, 4 bytes a value; a rank costs 4 (m + n) bytes a matrix).
  double fixed = 0, per_rank = 0;
  for (const auto& e : m.twin_svd.entries()) {
    if (e.excluded) continue;
    const auto ms = twin::matrix_shape(e.shape.span());
    if (e.shape.size() < 2) fixed += 4.0 * static_cast<double>(ms.cols) * static_cast<double>(T);
    else per_rank += 4.0 * static_cast<double>(ms.rows + ms.cols) * static_cast<double>(T);
  }
  std::map<std::int64_t, double> f32_score;  // rank → avg normalized (full test)
  auto f32_at = [&](double bytes) {
    const std::int64_t k = std::max<std::int64_t>(0, static_cast<std::int64_t>((bytes - fixed) / per_rank));
    if (!f32_score.contains(k)) {
      const twin::TwinModel& tm = svd(std::max<std::int64_t>(k, 1), 0);
      const twin::DynamicFuser f(tm);
      f32_score[k] = k == 0 ? NAN : ev.twin_row("", f, m.router, m.shared_ta, 0).avg_normalized();
    }
    return std::pair{k, f32_score[k]};
  };
  auto row = [&](const std::string& name, const twin::TwinModel& tm) {
    const twin::DynamicFuser f(tm);
    MethodRow r = ev.twin_row(name, f, m.router, m.shared_ta, total_bytes(tm));
    const double xb = static_cast<double>(tm.storage().exclusive_bytes);
    const auto [k, score] = f32_at(xb);
    r.note = "exclusive knowledge " + fmt(100 * exclusive_ratio(tm), 2) + "% of the experts' bytes";
    st.equal_bytes.push_back(name + ": " + fmt(r.avg_normalized()) + " with exclusive knowledge " +
                             fmt(100 * exclusive_ratio(tm), 2) + "% of the experts' bytes; f32 SVD factors in " +
                             "the same bytes: rank " + std::to_string(k) + ", " +
                             (k == 0 ? std::string("nothing") : fmt(score)));
    st.rows_json.push_back({{"method", name},
                            {"avg_normalized", r.avg_normalized()},
                            {"storage_bytes", r.storage_bytes},
                            {"exclusive_bytes", tm.storage().exclusive_bytes},
                            {"exclusive_ratio", exclusive_ratio(tm)},
                            {"relative_error", tm.relative_error()},
                            {"f32_svd_same_bytes_rank", k},
                            {"f32_svd_same_bytes_avg_normalized", k == 0 ? json(nullptr) : json(score)}});
    st.rows.push_back(std::move(r));
  };
  const std::string r = std::to_string(cfg.rank);
  row("Twin-Merging (SVD rank " + r + ", int8 factors)", svd(cfg.rank, 8));
  row("Twin-Merging (SVD rank " + r + ", int4 factors)", svd(cfg.rank, 4));
  row("Twin-Merging (SVD rank " + r + ", int4 + " + fmt(100 * cfg.residual_density, 1) + "% sparse residual)",
      svd(cfg.rank, 4, cfg.residual_density));
  row("Twin-Merging (sign bits, α per row)", sign(1.0));
  const twin::TwinModel& budget = build_budget(cfg.budget);
  row("Twin-Merging (budget " + fmt(100 * cfg.budget, 1) + "% of the experts' bytes)", budget);
  st.budget_avg = st.rows.back().avg_normalized();
  st.budget_exclusive_ratio = exclusive_ratio(budget);
  progress("  packed exclusive knowledge evaluated (Table 2 rows) [%.1fs]\n", cx.seconds());

  // ---- storage-accuracy curves (sweep items) ---------------------------------------------
  const SweepSet sweep = sweep_set(cx);
  const Eval sev = sweep.eval(cx);
  st.chart = {"Storage vs score: exclusive knowledge in fewer bytes",
              "total bytes held / the individual experts' bytes (log scale)",
              "avg. normalized score",
              "",
              true,
              {}};
  auto point = [&](Series& s, const std::string& curve, double setting, const twin::TwinModel& tm) {
    const twin::DynamicFuser f(tm);
    const MethodRow pr = sev.twin_row("", f, m.router, m.shared_ta, total_bytes(tm));
    s.x.push_back(pr.storage_bytes / cx.experts_bytes), s.y.push_back(pr.avg_normalized());
    st.points.push_back({{"curve", curve},
                         {"setting", setting},
                         {"avg_normalized", pr.avg_normalized()},
                         {"storage_bytes", pr.storage_bytes},
                         {"storage_ratio", pr.storage_bytes / cx.experts_bytes},
                         {"exclusive_ratio", exclusive_ratio(tm)}});
  };
  const std::pair<const char*, int> formats[] = {
      {"SVD, f32 factors", 0}, {"SVD, int8 factors", 8}, {"SVD, int4 factors", 4}};
  for (const auto& [label, bits] : formats) {
    Series s{label, {}, {}, false};
    for (std::int64_t k : cfg.storage_ranks) point(s, label, static_cast<double>(k), svd(k, bits));
    st.chart.series.push_back(std::move(s));
  }
  {
    Series s{"sign bits (density)", {}, {}, false};
    for (double d : cfg.sign_sweep) point(s, s.label, d, sign(d));
    st.chart.series.push_back(std::move(s));
  }
  {
    Series s{"budget (fraction of the experts' bytes)", {}, {}, false};
    for (double b : cfg.budget_sweep) point(s, s.label, b, build_budget(b));
    st.chart.series.push_back(std::move(s));
  }
  // The experts and the static merges as single points.
  Series individual{"individual experts", {1.0}, {100.0}, false};
  st.points.push_back({{"curve", "individual experts"}, {"avg_normalized", 100.0}, {"storage_ratio", 1.0}});
  st.chart.series.push_back(std::move(individual));
  for (std::size_t k = 0; k < m.mergers.size(); ++k) {
    const MethodRow sr = sev.static_row(t2.static_rows[k].name, m.static_bodies[k], cx.merged_bytes);
    st.chart.series.push_back({sr.name, {cx.merged_bytes / cx.experts_bytes}, {sr.avg_normalized()}, false});
    st.points.push_back({{"curve", sr.name},
                         {"avg_normalized", sr.avg_normalized()},
                         {"storage_ratio", cx.merged_bytes / cx.experts_bytes}});
  }
  progress("  storage-accuracy sweep done [%.1fs]\n", cx.seconds());
  return st;
}

}  // namespace paper
