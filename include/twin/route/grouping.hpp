// Group-wise fusion (Twin-Merging's answer to batching, docs/design.md §1 step 7):
// bin a batch's inputs by the argmax of their router logits, run k-means on
// the softmax weights inside each bin, and return the groups with their
// averaged weights, so the host fuses once per group instead of per input.
// Seeded and deterministic (k-means++ seeding drawn from Philox).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "twin/random.hpp"
#include "twin/route/routing.hpp"

namespace twin {

struct GroupingOptions {
  RoutingOptions routing;       // how logits become weights
  std::int64_t max_groups = 8;  // groups over the whole batch (at least one per non-empty bin)
  int iterations = 50;          // Lloyd iterations (stops earlier when assignments settle)
  std::uint64_t seed = 0;
};

struct InputGroup {
  std::size_t task = 0;               // the argmax bin the group came from
  std::vector<std::int64_t> members;  // input indices, increasing
  std::vector<float> weights;         // mean of the members' mixture weights (T values)
};

namespace detail {
inline double sq_dist(const float* a, const float* b, std::size_t T) {
  double s = 0.0;
  for (std::size_t t = 0; t < T; ++t) {
    const double d = static_cast<double>(a[t]) - b[t];
    s += d * d;
  }
  return s;
}

// Clusters the rows `ids` of w [N×T] into at most k groups (k-means++ then
// Lloyd). Empty clusters are dropped.
inline std::vector<std::vector<std::int64_t>> kmeans_rows(const std::vector<float>& w, std::size_t T,
                                                          const std::vector<std::int64_t>& ids, std::int64_t k,
                                                          int iterations, std::uint64_t key) {
  const auto n = static_cast<std::int64_t>(ids.size());
  if (k >= n) {
    std::vector<std::vector<std::int64_t>> out;
    out.reserve(ids.size());
    for (std::int64_t id : ids) out.push_back({id});
    return out;
  }
  const Philox rng(key);
  auto row = [&](std::int64_t i) { return w.data() + static_cast<std::size_t>(ids[static_cast<std::size_t>(i)]) * T; };
  std::vector<float> cent(static_cast<std::size_t>(k) * T);
  std::vector<double> d2(static_cast<std::size_t>(n), std::numeric_limits<double>::infinity());
  std::int64_t pick = static_cast<std::int64_t>(rng.uniform(0) * static_cast<float>(n)) % n;
  for (std::int64_t c = 0; c < k; ++c) {
    std::copy(row(pick), row(pick) + T, cent.begin() + static_cast<std::ptrdiff_t>(c * static_cast<std::int64_t>(T)));
    double total = 0.0;
    for (std::int64_t i = 0; i < n; ++i) {
      d2[static_cast<std::size_t>(i)] =
          std::min(d2[static_cast<std::size_t>(i)], sq_dist(row(i), cent.data() + c * static_cast<std::int64_t>(T), T));
      total += d2[static_cast<std::size_t>(i)];
    }
    if (c + 1 == k) break;
    if (total <= 0.0) {  // every point already coincides with a centre
      k = c + 1;
      break;
    }
    // Next centre with probability ∝ D², from a double-precision draw.
    const auto b = rng.block(static_cast<std::uint64_t>(c + 1), 1);
    const double u = (static_cast<double>(b[0]) * 0x1.0p-32 + static_cast<double>(b[1]) * 0x1.0p-64) * total;
    double acc = 0.0;
    pick = n - 1;
    for (std::int64_t i = 0; i < n; ++i) {
      acc += d2[static_cast<std::size_t>(i)];
      if (acc > u && d2[static_cast<std::size_t>(i)] > 0.0) {
        pick = i;
        break;
      }
    }
  }
  cent.resize(static_cast<std::size_t>(k) * T);
  std::vector<std::int64_t> assign(static_cast<std::size_t>(n), -1);
  for (int it = 0; it < std::max(iterations, 1); ++it) {
    bool changed = false;
    for (std::int64_t i = 0; i < n; ++i) {
      std::int64_t best = 0;
      double bd = std::numeric_limits<double>::infinity();
      for (std::int64_t c = 0; c < k; ++c) {
        const double d = sq_dist(row(i), cent.data() + c * static_cast<std::int64_t>(T), T);
        if (d < bd) bd = d, best = c;  // strict: ties go to the lower centre
      }
      changed = changed || assign[static_cast<std::size_t>(i)] != best;
      assign[static_cast<std::size_t>(i)] = best;
    }
    if (!changed) break;
    std::vector<double> sum(static_cast<std::size_t>(k) * T, 0.0);
    std::vector<std::int64_t> cnt(static_cast<std::size_t>(k), 0);
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t c = assign[static_cast<std::size_t>(i)];
      ++cnt[static_cast<std::size_t>(c)];
      for (std::size_t t = 0; t < T; ++t) sum[static_cast<std::size_t>(c) * T + t] += row(i)[t];
    }
    for (std::int64_t c = 0; c < k; ++c)
      if (cnt[static_cast<std::size_t>(c)] > 0)
        for (std::size_t t = 0; t < T; ++t)
          cent[static_cast<std::size_t>(c) * T + t] = static_cast<float>(
              sum[static_cast<std::size_t>(c) * T + t] / static_cast<double>(cnt[static_cast<std::size_t>(c)]));
  }
  std::vector<std::vector<std::int64_t>> out(static_cast<std::size_t>(k));
  for (std::int64_t i = 0; i < n; ++i)
    out[static_cast<std::size_t>(assign[static_cast<std::size_t>(i)])].push_back(ids[static_cast<std::size_t>(i)]);
  std::erase_if(out, [](const auto& g) { return g.empty(); });
  return out;
}
}  // namespace detail

// logits: [N×T] row-major. Groups come out ordered by bin, then by their
// first member; every input is in exactly one group.
inline std::vector<InputGroup> group_inputs(std::span<const float> logits, std::size_t num_tasks,
                                            const GroupingOptions& o = {}) {
  const std::size_t T = num_tasks;
  if (T == 0) throw argument_error("group_inputs: the model has no tasks");
  if (logits.size() % T != 0)
    throw shape_error("group_inputs: " + std::to_string(logits.size()) + " logits are not a whole number of rows of " +
                      std::to_string(T) + " tasks");
  if (o.max_groups < 1) throw argument_error("group_inputs: max_groups must be at least 1");
  const auto N = static_cast<std::int64_t>(logits.size() / T);
  std::vector<float> w(logits.size());
  std::vector<std::vector<std::int64_t>> bins(T);
  for (std::int64_t i = 0; i < N; ++i) {
    const auto li = logits.subspan(static_cast<std::size_t>(i) * T, T);
    const std::vector<float> wi = routing_weights(li, o.routing);
    std::copy(wi.begin(), wi.end(), w.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(i) * T));
    bins[static_cast<std::size_t>(std::max_element(li.begin(), li.end()) - li.begin())].push_back(i);
  }
  // Every non-empty bin gets one group; the rest go one at a time to the bin
  // with the most inputs per group (D'Hondt), never more than it holds.
  std::vector<std::int64_t> k(T, 0);
  std::int64_t used = 0;
  for (std::size_t b = 0; b < T; ++b)
    if (!bins[b].empty()) k[b] = 1, ++used;
  std::int64_t left = std::max<std::int64_t>(o.max_groups - used, 0);
  while (left > 0) {
    std::size_t best = T;
    double gain = -1.0;
    for (std::size_t b = 0; b < T; ++b) {
      const auto sz = static_cast<std::int64_t>(bins[b].size());
      if (k[b] >= sz) continue;
      const double g = static_cast<double>(sz) / static_cast<double>(k[b] + 1);  // D'Hondt: size per group
      if (g > gain) gain = g, best = b;
    }
    if (best == T) break;
    ++k[best], --left;
  }

  std::vector<InputGroup> out;
  for (std::size_t b = 0; b < T; ++b) {
    if (bins[b].empty()) continue;
    auto groups = detail::kmeans_rows(w, T, bins[b], k[b], o.iterations, random_key(o.seed, "group", b));
    std::sort(groups.begin(), groups.end(), [](const auto& x, const auto& y) { return x.front() < y.front(); });
    for (auto& g : groups) {
      InputGroup ig{b, std::move(g), std::vector<float>(T, 0.0f)};
      std::vector<double> acc(T, 0.0);
      for (std::int64_t i : ig.members)
        for (std::size_t t = 0; t < T; ++t) acc[t] += w[static_cast<std::size_t>(i) * T + t];
      for (std::size_t t = 0; t < T; ++t)
        ig.weights[t] = static_cast<float>(acc[t] / static_cast<double>(ig.members.size()));
      out.push_back(std::move(ig));
    }
  }
  return out;
}

}  // namespace twin
