// Shared pieces of twin's benchmarks: a RoBERTa-base-shaped state dict filled
// by a hash that benchmarks/bench_common.py reproduces bit for bit (so PyTorch
// runs on identical tensors without files), floors measured in the same run,
// and a runner for the PyTorch side.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "twin/merge/any_merger.hpp"
#include "twin/parallel.hpp"
#include "twin/state_dict.hpp"

namespace bench {

using clock = std::chrono::steady_clock;

inline double seconds_since(clock::time_point t0) { return std::chrono::duration<double>(clock::now() - t0).count(); }

// Best of `reps` runs of f, in seconds.
template <class F>
double best_of(int reps, F&& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = clock::now();
    f();
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

// lowbias32 (Wellons): a cheap integer hash with good avalanche.
inline std::uint32_t mix32(std::uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// Uniform value in [-1, 1) for (seed, i); bench_common.py computes the same.
inline float hashed_uniform(std::uint32_t seed, std::uint32_t i) {
  const std::uint32_t u = mix32(i * 2654435761u + seed * 0x9E3779B9u);
  return static_cast<float>(u >> 8) * 0x1.0p-23f - 1.0f;
}

struct TensorSpec {
  std::string name;
  std::vector<std::int64_t> shape;
};

// 12 layers of q, k, v, o [768, 768], intermediate [3072, 768], output
// [768, 3072], their biases and two LayerNorms: RoBERTa-base's encoder.
inline std::vector<TensorSpec> roberta_base_specs(int layers = 12) {
  std::vector<TensorSpec> s;
  for (int l = 0; l < layers; ++l) {
    const std::string p = "encoder.layer." + std::to_string(l) + ".";
    for (const char* m :
         {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"}) {
      s.push_back({p + m + ".weight", {768, 768}});
      s.push_back({p + m + ".bias", {768}});
    }
    s.push_back({p + "attention.output.LayerNorm.weight", {768}});
    s.push_back({p + "attention.output.LayerNorm.bias", {768}});
    s.push_back({p + "intermediate.dense.weight", {3072, 768}});
    s.push_back({p + "intermediate.dense.bias", {3072}});
    s.push_back({p + "output.dense.weight", {768, 3072}});
    s.push_back({p + "output.dense.bias", {768}});
    s.push_back({p + "output.LayerNorm.weight", {768}});
    s.push_back({p + "output.LayerNorm.bias", {768}});
  }
  return s;
}

// Model m (0 = base): base = 0.05 * u(seed(t, 0)); expert m = base + 0.01 * u(seed(t, m)).
inline twin::StateDict make_model(const std::vector<TensorSpec>& specs, int m, twin::dtype t) {
  twin::StateDict sd;
  for (std::size_t k = 0; k < specs.size(); ++k) {
    twin::Tensor x(twin::dtype::f32, specs[k].shape);
    float* v = x.values<float>().data();
    const auto n = x.numel();
    const auto s0 = static_cast<std::uint32_t>(k * 131 + 1), sm = static_cast<std::uint32_t>(k * 131 + 1 + m * 7919);
    twin::parallel_blocks(n, 1 << 16, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t i = lo; i < hi; ++i) {
        const auto ii = static_cast<std::uint32_t>(i);
        float b = 0.05f * hashed_uniform(s0, ii);
        if (m > 0) b = b + 0.01f * hashed_uniform(sm, ii);
        v[i] = b;
      }
    });
    sd.insert(specs[k].name, t == twin::dtype::f32 ? std::move(x) : x.clone_as(t));
  }
  return sd;
}

// Seconds for a parallel memcpy of `bytes` bytes (best of reps): the
// bandwidth floor of any pass that reads and writes memory.
inline double copy_seconds(std::size_t bytes, int reps = 5) {
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  return best_of(reps, [&] {
    twin::parallel_blocks(static_cast<std::int64_t>(bytes), 1 << 22, [&](std::int64_t lo, std::int64_t hi) {
      std::memcpy(dst.data() + lo, src.data() + lo, static_cast<std::size_t>(hi - lo));
    });
  });
}

// Sum of |x| over all elements in double: a checksum to compare with PyTorch's.
inline double checksum(const twin::StateDict& sd) {
  double s = 0;
  for (const auto& [name, t] : sd) {
    const std::vector<double> v = twin::to_f64_vector(t.view());
    for (double x : v) s += std::abs(x);
  }
  return s;
}

// Runs a command and returns its stdout ("" and a note on stderr on failure).
inline std::string run_capture(const std::string& cmd) {
  std::string out;
  std::unique_ptr<FILE, int (*)(FILE*)> p(popen(cmd.c_str(), "r"), pclose);
  if (!p) return out;
  std::array<char, 4096> buf;
  while (std::fgets(buf.data(), static_cast<int>(buf.size()), p.get())) out += buf.data();
  return out;
}

}  // namespace bench
