// From router logits to the mixture weights of dynamic fusion (docs/design.md §1
// step 6): w = softmax(logits / temperature), optionally restricted to the
// top-k tasks or to tasks whose weight reaches a threshold. Skipped tasks get
// a weight of exactly 0, which the fuser treats as "costs nothing".
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "twin/error.hpp"

namespace twin {

struct RoutingOptions {
  double temperature = 1.0;
  // Keep the k largest logits (0: all). Equivalent to a softmax over those k.
  int top_k = 0;
  // Then drop tasks whose weight is below this and renormalize the rest (the
  // task with the largest weight is always kept).
  double threshold = 0.0;

  void validate() const {
    if (!(temperature > 0.0) || !std::isfinite(temperature))
      throw argument_error("routing temperature must be positive and finite, found " + std::to_string(temperature));
    if (top_k < 0) throw argument_error("routing top_k must be >= 0, found " + std::to_string(top_k));
    if (!(threshold >= 0.0 && threshold <= 1.0))
      throw argument_error("routing threshold must be in [0, 1], found " + std::to_string(threshold));
  }
};

// Mixture weights (summing to 1) for one input's logits. Computed in double
// with the max subtracted, so large logits do not overflow.
inline std::vector<float> routing_weights(std::span<const float> logits, const RoutingOptions& o = {}) {
  o.validate();
  const std::size_t T = logits.size();
  if (T == 0) throw shape_error("logits: expected at least one value");
  for (std::size_t t = 0; t < T; ++t)
    if (!std::isfinite(logits[t])) throw argument_error("logits: value " + std::to_string(t) + " is not finite");
  std::vector<char> keep(T, 1);
  if (o.top_k > 0 && static_cast<std::size_t>(o.top_k) < T) {
    // Stable order: equal logits keep the lower task index.
    std::vector<std::size_t> order(T);
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return logits[a] > logits[b]; });
    std::fill(keep.begin(), keep.end(), 0);
    for (int i = 0; i < o.top_k; ++i) keep[order[static_cast<std::size_t>(i)]] = 1;
  }
  double mx = -INFINITY;
  for (std::size_t t = 0; t < T; ++t)
    if (keep[t]) mx = std::max(mx, static_cast<double>(logits[t]));
  std::vector<double> e(T, 0.0);
  double sum = 0.0;
  for (std::size_t t = 0; t < T; ++t)
    if (keep[t]) sum += e[t] = std::exp((static_cast<double>(logits[t]) - mx) / o.temperature);
  if (o.threshold > 0.0) {
    const std::size_t best = static_cast<std::size_t>(std::max_element(e.begin(), e.end()) - e.begin());
    double kept = 0.0;
    for (std::size_t t = 0; t < T; ++t) {
      if (t != best && e[t] / sum < o.threshold) e[t] = 0.0;
      kept += e[t];
    }
    sum = kept;
  }
  std::vector<float> w(T);
  for (std::size_t t = 0; t < T; ++t) w[t] = static_cast<float>(e[t] / sum);
  return w;
}

}  // namespace twin
