// Table 7 of the paper: what Twin-Merging costs per input against a static
// merge, timed on one batch of the mixed test stream for per-input fusion,
// group-wise fusion and the library's mixed-batch apply.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "paper/context.hpp"
#include "paper/table2.hpp"
#include "paper/twin_eval.hpp"
#include "twin/twin.hpp"

namespace paper {

// The timings are wall-clock, so only these numbers of the run change from
// one run to the next; the fusion counts and differences do not.
inline json table7(const Context& cx, const Groupwise& gw) {
  const SharedModels& m = cx.models;
  const twin::DynamicFuser& fuser = *m.fuser_svd;
  const std::int64_t n = std::min<std::int64_t>(cx.cfg.timing_inputs, static_cast<std::int64_t>(cx.stream.size()));
  Matrix xb(n, kPixels);
  for (std::int64_t i = 0; i < n; ++i)
    xb.row(i) =
        cx.test_sets[cx.stream[static_cast<std::size_t>(i)].first].x.row(cx.stream[static_cast<std::size_t>(i)].second);
  auto head_of_row = [&](std::int64_t i) -> const Layer& {
    return cx.heads[cx.stream[static_cast<std::size_t>(i)].first];
  };
  const Body& sb = m.static_bodies[1];  // Task Arithmetic
  // static merge: one input at a time, and the whole batch at once
  auto t0 = Clock::now();
  for (std::int64_t i = 0; i < n; ++i) {
    Matrix z;
    dense(embed(sb, xb.middleRows(i, 1)), head_of_row(i), z, false);
  }
  const double static_one = seconds_since(t0) / static_cast<double>(n);
  t0 = Clock::now();
  const Matrix hs = embed(sb, xb);
  const double static_batch = seconds_since(t0) / static_cast<double>(n);
  // Twin-Merging per input: embed with θ*, route, fuse, infer.
  double t_route = 0, t_fuse = 0, t_infer = 0;
  std::vector<Matrix> per_input_h(static_cast<std::size_t>(n));
  std::vector<float> all_w;
  for (std::int64_t i = 0; i < n; ++i) {
    const Matrix xi = xb.middleRows(i, 1);
    auto a = Clock::now();
    const Matrix e = embed(m.shared_ta, xi);
    const std::vector<float> lg = m.router.logits(std::span<const float>(e.data(), static_cast<std::size_t>(e.size())));
    const std::vector<float> w = fuser.weights(lg);
    t_route += seconds_since(a);
    a = Clock::now();
    Body fb;
    fuse_body(fuser, w, fb);
    t_fuse += seconds_since(a);
    a = Clock::now();
    Matrix z;
    per_input_h[static_cast<std::size_t>(i)] = embed(fb, xi);
    dense(per_input_h[static_cast<std::size_t>(i)], head_of_row(i), z, false);
    t_infer += seconds_since(a);
    all_w.insert(all_w.end(), w.begin(), w.end());
  }
  // group-wise on the same batch
  t0 = Clock::now();
  std::vector<float> lgs;
  route(m.router, m.shared_ta, xb, &lgs);
  twin::GroupingOptions go;
  go.max_groups = gw.max_groups;
  go.seed = cx.cfg.seed;
  const auto groups = twin::group_inputs(lgs, cx.T, go);
  for (const auto& g : groups) {
    Body fb;
    fuse_body(fuser, g.weights, fb);
    Matrix xg(static_cast<Eigen::Index>(g.members.size()), kPixels);
    for (std::size_t k = 0; k < g.members.size(); ++k) xg.row(static_cast<Eigen::Index>(k)) = xb.row(g.members[k]);
    (void)embed(fb, xg);
  }
  const double group_time = seconds_since(t0) / static_cast<double>(n);
  // mixed-batch apply on the same batch: exact per-input mixtures, no weight materialized
  t0 = Clock::now();
  const std::vector<float> wb = route(m.router, m.shared_ta, xb);
  const PerInputBody pib(fuser);
  const Matrix hm = pib.mixed(xb, wb);
  const double mixed_time = seconds_since(t0) / static_cast<double>(n);
  double mixed_vs_fused = 0, wdiff = 0;
  for (std::int64_t i = 0; i < n; ++i)
    mixed_vs_fused = std::max(
        mixed_vs_fused,
        static_cast<double>((hm.row(i) - per_input_h[static_cast<std::size_t>(i)].row(0)).cwiseAbs().maxCoeff()));
  for (std::size_t i = 0; i < wb.size(); ++i) wdiff = std::max(wdiff, static_cast<double>(std::abs(wb[i] - all_w[i])));
  (void)hs;
  json cost = {
      {"inputs", n},
      {"static_merge_per_input_s", static_one},
      {"static_merge_batched_per_input_s", static_batch},
      {"twin_per_input",
       {{"route_s", t_route / static_cast<double>(n)},
        {"fuse_s", t_fuse / static_cast<double>(n)},
        {"infer_s", t_infer / static_cast<double>(n)},
        {"total_s", (t_route + t_fuse + t_infer) / static_cast<double>(n)}}},
      {"groupwise", {{"fusions", groups.size()}, {"per_input_s", group_time}}},
      {"mixed_batch",
       {{"per_input_s", mixed_time},
        {"max_abs_diff_vs_per_input_fusion", mixed_vs_fused},
        {"max_abs_diff_weights", wdiff}}},
      {"groupwise_full_test",
       {{"fusions", gw.fusions}, {"batches", gw.batches}, {"inputs", cx.stream.size()}, {"seconds", gw.seconds}}}};
  progress("  Table 7 (cost) measured [%.1fs]\n", cx.seconds());
  return cost;
}

}  // namespace paper
