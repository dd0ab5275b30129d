// The tasks of the paper-table reproduction: views of Fashion-MNIST images.
// Each task is one fixed transformation of the 28x28 image (rotation,
// inversion, a seeded pixel permutation, ...) with the dataset's 10 labels and
// its own classifier head. The views are far enough apart that a router can
// tell them apart from the shared model's features, and different enough that
// experts fine-tuned on them pull the shared body in conflicting directions.
#pragma once

#include <array>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "common/fashion_mnist.hpp"
#include "twin/error.hpp"
#include "twin/random.hpp"
#include "twin/route/nn.hpp"

namespace paper {

using Matrix = twin::nn::Matrix<float>;
inline constexpr int kSide = 28, kPixels = kSide * kSide, kClasses = 10;

enum class View {
  plain,
  rot90,
  rot180,
  inverted,
  permuted,
  patches,
  inverted_rot90,
  shifted,
  // held out from merging (Table 5)
  blurred,
  transposed,
};

struct TaskSpec {
  const char* name;
  View view;
  const char* what;
};

// The merged tasks (in this order) and the held-out ones.
inline const std::array<TaskSpec, 8> kMainTasks = {{
    {"plain", View::plain, "the images as they are"},
    {"rot90", View::rot90, "rotated 90 degrees clockwise"},
    {"rot180", View::rot180, "rotated 180 degrees (upside down)"},
    {"inverted", View::inverted, "negative image (1 - x)"},
    {"permuted", View::permuted, "pixels shuffled by a fixed permutation (seed 7)"},
    {"patches", View::patches, "the 16 tiles of 7x7 pixels shuffled by a fixed permutation (seed 11)"},
    {"inv-rot90", View::inverted_rot90, "negative image rotated 90 degrees counter-clockwise"},
    {"shifted", View::shifted, "translated 6 pixels right and 6 down (zero fill)"},
}};
inline const std::array<TaskSpec, 2> kHeldOutTasks = {{
    {"blurred", View::blurred, "3x3 box blur of the plain image (held out)"},
    {"transposed", View::transposed, "transposed image, rows and columns swapped (held out)"},
}};

// Seeded permutations fixed once for all runs (they define the tasks, so
// they do not follow --seed).
inline std::vector<int> fixed_permutation(int n, std::uint64_t key) {
  std::vector<int> p(static_cast<std::size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  const twin::Philox rng(key);
  for (int i = n - 1; i > 0; --i) {
    const std::uint64_t r = rng.block(static_cast<std::uint64_t>(i))[0];
    const auto j = static_cast<int>((r * static_cast<std::uint64_t>(i + 1)) >> 32);
    std::swap(p[static_cast<std::size_t>(i)], p[static_cast<std::size_t>(j)]);
  }
  return p;
}

// out[p] = the view's value at pixel p, in [0, 1].
inline void render(const std::uint8_t* img, View v, float* out) {
  static const std::vector<int> pixel_perm = fixed_permutation(kPixels, 7);
  static const std::vector<int> tile_perm = fixed_permutation(16, 11);
  auto px = [&](int r, int c) -> float {
    if (r < 0 || r >= kSide || c < 0 || c >= kSide) return 0.0f;
    return static_cast<float>(img[r * kSide + c]) / 255.0f;
  };
  for (int r = 0; r < kSide; ++r)
    for (int c = 0; c < kSide; ++c) {
      float x = 0.0f;
      switch (v) {
        case View::plain: x = px(r, c); break;
        case View::rot90: x = px(kSide - 1 - c, r); break;
        case View::rot180: x = px(kSide - 1 - r, kSide - 1 - c); break;
        case View::inverted: x = 1.0f - px(r, c); break;
        case View::permuted: {
          const int s = pixel_perm[static_cast<std::size_t>(r * kSide + c)];
          x = px(s / kSide, s % kSide);
          break;
        }
        case View::patches: {
          const int tile = tile_perm[static_cast<std::size_t>((r / 7) * 4 + c / 7)];
          x = px((tile / 4) * 7 + r % 7, (tile % 4) * 7 + c % 7);
          break;
        }
        case View::inverted_rot90: x = 1.0f - px(c, kSide - 1 - r); break;
        case View::shifted: x = px(r - 6, c - 6); break;
        case View::blurred: {
          float s = 0.0f;
          for (int dr = -1; dr <= 1; ++dr)
            for (int dc = -1; dc <= 1; ++dc) s += px(r + dr, c + dc);
          x = s / 9.0f;
          break;
        }
        case View::transposed: x = px(c, r); break;
      }
      out[r * kSide + c] = x;
    }
}

// One task's items: inputs [n, 784] and labels.
struct TaskData {
  Matrix x;
  std::vector<std::int64_t> y;
  std::int64_t size() const { return x.rows(); }
};

inline TaskData make_task_data(const examples::ImageSet& set, const std::vector<std::int64_t>& idx, View v) {
  TaskData d;
  d.x.resize(static_cast<Eigen::Index>(idx.size()), kPixels);
  d.y.resize(idx.size());
  for (std::size_t i = 0; i < idx.size(); ++i) {
    const auto k = static_cast<std::size_t>(idx[i]);
    render(set.pixels.data() + k * kPixels, v, d.x.data() + static_cast<Eigen::Index>(i) * kPixels);
    d.y[i] = set.labels[k];
  }
  return d;
}

// A seeded sample of `n` distinct indices from [lo, hi), in increasing order.
inline std::vector<std::int64_t> sample_indices(std::int64_t lo, std::int64_t hi, std::int64_t n, std::uint64_t key) {
  std::vector<std::int64_t> all(static_cast<std::size_t>(hi - lo));
  std::iota(all.begin(), all.end(), lo);
  n = std::min<std::int64_t>(n, hi - lo);
  const twin::Philox rng(key);
  for (std::int64_t i = 0; i < n; ++i) {
    const std::uint64_t r = rng.block(static_cast<std::uint64_t>(i))[0];
    const std::int64_t j = i + static_cast<std::int64_t>((r * static_cast<std::uint64_t>(hi - lo - i)) >> 32);
    std::swap(all[static_cast<std::size_t>(i)], all[static_cast<std::size_t>(j)]);
  }
  all.resize(static_cast<std::size_t>(n));
  std::sort(all.begin(), all.end());
  return all;
}

}  // namespace paper
