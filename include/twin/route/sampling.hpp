// How router training visits its data: a stratified held-out split and the
// order of each epoch (a seeded shuffle, or class-balanced draws). Seeded
// with Philox, so the same seed gives the same order on any machine.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "twin/error.hpp"
#include "twin/random.hpp"
#include "twin/route/labels.hpp"

namespace twin {

// Indices of a held-out split and of the rest.
struct DataSplit {
  std::vector<std::int64_t> train;
  std::vector<std::int64_t> heldout;
};

// Holds out round(fraction · n_t) items of every task t (at most n_t − 1, so
// each task keeps one training item), chosen by a seeded permutation; both
// index lists ascend.
inline DataSplit stratified_split(std::span<const std::int64_t> labels, std::int64_t num_tasks, double fraction,
                                  std::uint64_t seed) {
  if (!(fraction >= 0.0 && fraction < 1.0))
    throw argument_error("held-out fraction must be in [0, 1), found " + std::to_string(fraction));
  std::vector<std::vector<std::int64_t>> by_task(static_cast<std::size_t>(std::max<std::int64_t>(num_tasks, 0)));
  check_labels(labels, num_tasks, "held-out split");
  for (std::size_t i = 0; i < labels.size(); ++i)
    by_task[static_cast<std::size_t>(labels[i])].push_back(static_cast<std::int64_t>(i));
  DataSplit out;
  for (std::size_t t = 0; t < by_task.size(); ++t) {
    auto& items = by_task[t];
    const auto n = static_cast<std::int64_t>(items.size());
    std::int64_t k = std::llround(fraction * static_cast<double>(n));
    k = std::min(k, std::max<std::int64_t>(n - 1, 0));
    const Philox rng(random_key(seed, "router.split", t));
    // Partial Fisher–Yates: the first k slots become a uniform sample.
    for (std::int64_t i = 0; i < k; ++i) {
      const std::uint64_t r = rng.block(static_cast<std::uint64_t>(i))[0];
      const std::int64_t j = i + static_cast<std::int64_t>((r * static_cast<std::uint64_t>(n - i)) >> 32);
      std::swap(items[static_cast<std::size_t>(i)], items[static_cast<std::size_t>(j)]);
    }
    out.heldout.insert(out.heldout.end(), items.begin(), items.begin() + k);
    out.train.insert(out.train.end(), items.begin() + k, items.end());
  }
  std::sort(out.train.begin(), out.train.end());
  std::sort(out.heldout.begin(), out.heldout.end());
  return out;
}

// The order in which one epoch visits the training rows: a seeded shuffle
// (a permutation of [0, N)), or with class_balanced N draws with replacement
// where each task is equally likely and each item of a task too.
inline std::vector<std::int64_t> epoch_order(std::span<const std::int64_t> labels, std::int64_t num_tasks,
                                             std::uint64_t seed, int epoch, bool class_balanced) {
  const auto N = static_cast<std::int64_t>(labels.size());
  std::vector<std::int64_t> order(static_cast<std::size_t>(N));
  if (!class_balanced) {
    std::iota(order.begin(), order.end(), std::int64_t{0});
    const Philox rng(random_key(seed, "router.shuffle", static_cast<std::uint64_t>(epoch)));
    for (std::int64_t i = N - 1; i > 0; --i) {
      const std::uint64_t r = rng.block(static_cast<std::uint64_t>(i))[0];
      const auto j = static_cast<std::int64_t>((r * static_cast<std::uint64_t>(i + 1)) >> 32);
      std::swap(order[static_cast<std::size_t>(i)], order[static_cast<std::size_t>(j)]);
    }
    return order;
  }
  std::vector<std::vector<std::int64_t>> by_task(static_cast<std::size_t>(std::max<std::int64_t>(num_tasks, 0)));
  check_labels(labels, num_tasks, "class-balanced sampling");
  for (std::int64_t i = 0; i < N; ++i)
    by_task[static_cast<std::size_t>(labels[static_cast<std::size_t>(i)])].push_back(i);
  std::vector<std::size_t> present;
  for (std::size_t t = 0; t < by_task.size(); ++t)
    if (!by_task[t].empty()) present.push_back(t);
  const Philox rng(random_key(seed, "router.balanced", static_cast<std::uint64_t>(epoch)));
  for (std::int64_t i = 0; i < N; ++i) {
    const auto b = rng.block(static_cast<std::uint64_t>(i));
    const auto& items = by_task[present[(static_cast<std::uint64_t>(b[0]) * present.size()) >> 32]];
    order[static_cast<std::size_t>(i)] = items[(static_cast<std::uint64_t>(b[1]) * items.size()) >> 32];
  }
  return order;
}

}  // namespace twin
