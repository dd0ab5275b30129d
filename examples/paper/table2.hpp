// Table 2 of the paper: every method's normalized score and storage on the
// merged tasks, with the router's accuracy, group-wise fusion over the mixed
// test stream, and the check that one-hot fusion gives each expert back.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "paper/context.hpp"
#include "paper/mlp.hpp"
#include "paper/report.hpp"
#include "paper/twin_eval.hpp"
#include "twin/twin.hpp"

namespace paper {

struct Groupwise {
  std::int64_t fusions = 0, batches = 0, max_groups = 0;
  double seconds = 0;
};

struct Table2 {
  MethodRow individual, pretrained, mtl;
  std::vector<MethodRow> static_rows;  // one per SharedModels::mergers
  MethodRow twin_svd, twin_sparse, twin_group;
  std::vector<double> router_test_acc;  // % of each task's test inputs routed to it
  Groupwise groupwise;
  json onehot;

  // The paper's order; Breadcrumbs only appears in Table 4.
  std::vector<MethodRow> rows() const {
    std::vector<MethodRow> r{pretrained, individual, mtl};
    for (std::size_t k : {0u, 1u, 2u, 3u, 4u}) r.push_back(static_rows[k]);
    r.push_back(twin_svd), r.push_back(twin_sparse), r.push_back(twin_group);
    return r;
  }
};

// The numbers the claims, the markdown and summary.json all quote.
struct Headline {
  double ta_avg, ties_avg, tw_avg, tws_avg, twg_avg, storage_ratio, best_static;
  bool experts_beat_pre;
};

inline Headline headline(const Context& cx, const Table2& t2) {
  Headline h{};
  h.ta_avg = t2.static_rows[1].avg_normalized(), h.ties_avg = t2.static_rows[2].avg_normalized();
  h.tw_avg = t2.twin_svd.avg_normalized(), h.tws_avg = t2.twin_sparse.avg_normalized();
  h.twg_avg = t2.twin_group.avg_normalized();
  h.storage_ratio = t2.twin_svd.storage_bytes / cx.experts_bytes;
  h.experts_beat_pre = true;
  for (std::size_t t = 0; t < cx.T; ++t)
    h.experts_beat_pre = h.experts_beat_pre && cx.expert_acc[t] > t2.pretrained.accuracy[t];
  h.best_static = 0;
  for (const auto& r : t2.static_rows) h.best_static = std::max(h.best_static, r.avg_normalized());
  return h;
}

// Test inputs of all tasks arrive mixed in batches; each batch is grouped
// (argmax bin, k-means on the weights) and fused once per group, so the
// accuracy shows what sharing one fused body per group costs.
inline MethodRow groupwise_row(const Context& cx, const MethodRow& per_input, Groupwise& gw) {
  const Config& cfg = cx.cfg;
  const SharedModels& m = cx.models;
  const std::size_t T = cx.T;
  std::vector<std::int64_t> gw_ok(T, 0), gw_n(T, 0);
  const auto t0 = Clock::now();
  gw.max_groups = static_cast<std::int64_t>(T);
  for (std::size_t b0 = 0; b0 < cx.stream.size(); b0 += static_cast<std::size_t>(cfg.group_batch)) {
    const std::size_t B = std::min<std::size_t>(static_cast<std::size_t>(cfg.group_batch), cx.stream.size() - b0);
    Matrix xb(static_cast<Eigen::Index>(B), kPixels);
    for (std::size_t i = 0; i < B; ++i)
      xb.row(static_cast<Eigen::Index>(i)) = cx.test_sets[cx.stream[b0 + i].first].x.row(cx.stream[b0 + i].second);
    std::vector<float> logits;
    route(m.router, m.shared_ta, xb, &logits);
    twin::GroupingOptions go;
    go.max_groups = gw.max_groups;
    go.seed = cfg.seed;
    const auto groups = twin::group_inputs(logits, T, go);
    ++gw.batches;
    for (const auto& g : groups) {
      Body fb;
      fuse_body(*m.fuser_svd, g.weights, fb);
      ++gw.fusions;
      Matrix xg(static_cast<Eigen::Index>(g.members.size()), kPixels);
      for (std::size_t k = 0; k < g.members.size(); ++k) xg.row(static_cast<Eigen::Index>(k)) = xb.row(g.members[k]);
      const Matrix h = embed(fb, xg);
      for (std::size_t k = 0; k < g.members.size(); ++k) {
        const auto [task, row] = cx.stream[b0 + static_cast<std::size_t>(g.members[k])];
        Matrix z;
        dense(h.middleRows(static_cast<Eigen::Index>(k), 1), cx.heads[task], z, false);
        Eigen::Index best;
        z.row(0).maxCoeff(&best);
        gw_ok[task] += best == cx.test_sets[task].y[static_cast<std::size_t>(row)];
        ++gw_n[task];
      }
    }
  }
  gw.seconds = seconds_since(t0);
  MethodRow r{"Twin-Merging group-wise (SVD, batch " + std::to_string(cfg.group_batch) + ", ≤" +
                  std::to_string(gw.max_groups) + " groups)",
              {},
              {},
              per_input.storage_bytes,
              {}};
  for (std::size_t t = 0; t < T; ++t) {
    const double a = 100.0 * static_cast<double>(gw_ok[t]) / static_cast<double>(gw_n[t]);
    r.accuracy.push_back(a), r.normalized.push_back(100.0 * a / cx.expert_acc[t]);
  }
  return r;
}

// One-hot weights must give each expert back: exactly with dense exclusive
// knowledge, and with SVD up to the compression error the library records.
inline json onehot_check(const Context& cx) {
  const SharedModels& m = cx.models;
  const std::size_t T = cx.T;
  const twin::TwinModel twin_dense = twin::TwinModel::build(m.base, std::span<const twin::StateDict>(cx.experts),
                                                            *m.ta_merger, twin::DenseCompressor{}, m.build_options);
  const twin::DynamicFuser fd(twin_dense);
  double dense_max = 0, svd_worst_gap = 0;
  bool acc_equal = true;
  json per = json::array();
  for (std::size_t t = 0; t < T; ++t) {
    std::vector<float> w(T, 0.0f);
    w[t] = 1.0f;
    Body bd, bs;
    fuse_body(fd, w, bd);
    fuse_body(*m.fuser_svd, w, bs);
    const Body& e = cx.expert_bodies[t];
    auto maxdiff = [](const Body& a, const Body& b) {
      return std::max({(a.l0.w - b.l0.w).cwiseAbs().maxCoeff(), (a.l0.b - b.l0.b).cwiseAbs().maxCoeff(),
                       (a.l1.w - b.l1.w).cwiseAbs().maxCoeff(), (a.l1.b - b.l1.b).cwiseAbs().maxCoeff()});
    };
    dense_max = std::max(dense_max, static_cast<double>(maxdiff(bd, e)));
    const double acc_dense = head_accuracy(embed(bd, cx.test_sets[t].x), cx.heads[t], cx.test_sets[t].y);
    acc_equal = acc_equal && std::abs(acc_dense - cx.expert_acc[t]) < 1e-9;
    // ‖fused − θ_t‖ / ‖θ_t − θ*‖ over the body against the library's own
    // record of the compression error.
    double num = 0, den = 0, lib_err = 0, lib_den = 0;
    auto acc = [&](const Matrix& f, const Matrix& ex, const Matrix& sh) {
      num += static_cast<double>((f - ex).squaredNorm());
      den += static_cast<double>((ex - sh).squaredNorm());
    };
    const Body& sh = m.shared_ta;
    acc(bs.l0.w, e.l0.w, sh.l0.w), acc(bs.l0.b, e.l0.b, sh.l0.b);
    acc(bs.l1.w, e.l1.w, sh.l1.w), acc(bs.l1.b, e.l1.b, sh.l1.b);
    for (const char* n : kBodyNames) {
      const auto& en = m.twin_svd.at(n);
      lib_err += en.error_sq[t], lib_den += en.delta_sq[t];
    }
    const double rel = std::sqrt(num / den), lib = std::sqrt(lib_err / lib_den);
    svd_worst_gap = std::max(svd_worst_gap, std::abs(rel - lib));
    const double acc_svd = head_accuracy(embed(bs, cx.test_sets[t].x), cx.heads[t], cx.test_sets[t].y);
    per.push_back({{"task", cx.names[t]},
                   {"svd_relative_error", rel},
                   {"svd_relative_error_reported", lib},
                   {"accuracy_expert", cx.expert_acc[t]},
                   {"accuracy_onehot_dense", acc_dense},
                   {"accuracy_onehot_svd", acc_svd}});
  }
  return {{"dense_max_abs_diff", dense_max},
          {"dense_accuracy_equals_expert", acc_equal},
          {"svd_error_matches_reported", svd_worst_gap < 1e-3},
          {"svd_worst_gap", svd_worst_gap},
          {"per_task", per},
          {"ok", dense_max <= 1e-5 && acc_equal && svd_worst_gap < 1e-3}};
}

inline Table2 table2(const Context& cx) {
  const std::size_t T = cx.T;
  const SharedModels& m = cx.models;
  const Eval ev = cx.eval();
  Table2 t2;
  t2.individual = {"Individual", cx.expert_acc, std::vector<double>(T, 100.0), cx.experts_bytes, {}};
  t2.pretrained = ev.static_row("Pretrained", cx.pre, cx.merged_bytes);
  t2.pretrained.note = "pretrained body with each task's expert head (λ = 0)";
  t2.mtl = {"Multi-Task Learning", {}, {}, cx.merged_bytes, {}};
  for (std::size_t t = 0; t < T; ++t) {
    const double a = head_accuracy(embed(cx.mtl_body, cx.test_sets[t].x), cx.mtl_heads[t], cx.test_sets[t].y);
    t2.mtl.accuracy.push_back(a), t2.mtl.normalized.push_back(100.0 * a / cx.expert_acc[t]);
  }
  progress("  experts, pretrained and MTL evaluated [%.1fs]\n", cx.seconds());

  for (std::size_t k = 0; k < m.mergers.size(); ++k)
    t2.static_rows.push_back(ev.static_row(method_label(m.mergers[k]), m.static_bodies[k], cx.merged_bytes));
  progress("  static merges evaluated (λ tuned on validation) [%.1fs]\n", cx.seconds());

  // Router accuracy on the test splits (the task of each test input).
  t2.router_test_acc.resize(T);
  for (std::size_t t = 0; t < T; ++t) {
    const auto pred = m.router.predict(cview(embed(m.shared_ta, cx.test_sets[t].x)));
    t2.router_test_acc[t] = 100.0 *
                            static_cast<double>(std::count(pred.begin(), pred.end(), static_cast<std::int64_t>(t))) /
                            static_cast<double>(pred.size());
  }
  t2.twin_svd = ev.twin_row("Twin-Merging (SVD rank " + std::to_string(cx.cfg.rank) + ")", *m.fuser_svd, m.router,
                            m.shared_ta, static_cast<double>(m.twin_svd.storage().total()) + m.router_storage);
  t2.twin_sparse = ev.twin_row("Twin-Merging (sparsified, density " + fmt(cx.cfg.sparse_density, 2) + ")",
                               *m.fuser_sparse, m.router, m.shared_ta,
                               static_cast<double>(m.twin_sparse.storage().total()) + m.router_storage);
  progress("  Twin-Merging (SVD, sparsified) evaluated [%.1fs]\n", cx.seconds());

  t2.twin_group = groupwise_row(cx, t2.twin_svd, t2.groupwise);
  progress("  group-wise fusion evaluated (%lld fusions over %lld batches) [%.1fs]\n",
           static_cast<long long>(t2.groupwise.fusions), static_cast<long long>(t2.groupwise.batches), cx.seconds());

  t2.onehot = onehot_check(cx);
  return t2;
}

}  // namespace paper
