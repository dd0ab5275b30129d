// TaskVector: τ = θ_t − θ0 for every tensor, held in f32, with the arithmetic
// the strategies are written in (sum, scale, apply to a base) and diagnostics
// (norms, pairwise cosine similarity between experts' task vectors).
#pragma once

#include <cmath>

#include "twin/merge/merger.hpp"

namespace twin {

class TaskVector {
 public:
  TaskVector() = default;

  // τ = expert − base for every tensor of base not matched by `exclude`.
  static TaskVector from(const StateDict& base, const StateDict& expert, std::span<const std::string> exclude = {}) {
    const StateDict* e[1] = {&expert};
    const NameFilter skip(exclude);
    detail::check_compatible(base, e, MergeOptions{}, skip);
    TaskVector tv;
    for (const auto& [name, b] : base) {
      if (skip.matches(name)) continue;
      Tensor d(dtype::f32, b.shape());
      const ConstTensorView bv = b.view(), ev = expert.at(name).view();
      float* out = d.values<float>().data();
      parallel_blocks(b.numel(), detail::merge_block, [&](std::int64_t lo, std::int64_t hi) {
        std::vector<float> bb(static_cast<std::size_t>(hi - lo)), eb(bb.size());
        read_f32(bv, lo, hi - lo, bb.data());
        read_f32(ev, lo, hi - lo, eb.data());
        for (std::int64_t j = 0; j < hi - lo; ++j)
          out[lo + j] = eb[static_cast<std::size_t>(j)] - bb[static_cast<std::size_t>(j)];
      });
      tv.deltas_.insert(name, std::move(d));
    }
    return tv;
  }

  const StateDict& deltas() const noexcept { return deltas_; }
  std::size_t size() const noexcept { return deltas_.size(); }

  TaskVector clone() const {
    TaskVector t;
    t.deltas_ = deltas_.clone();
    return t;
  }

  TaskVector& operator+=(const TaskVector& o) {
    zip(o, [](float& a, float b) { a += b; });
    return *this;
  }
  TaskVector& operator-=(const TaskVector& o) {
    zip(o, [](float& a, float b) { a -= b; });
    return *this;
  }
  TaskVector& operator*=(float s) {
    for (auto& [name, t] : deltas_)
      for (float& x : t.values<float>()) x *= s;
    return *this;
  }
  friend TaskVector operator+(const TaskVector& a, const TaskVector& b) { return std::move(a.clone() += b); }
  friend TaskVector operator-(const TaskVector& a, const TaskVector& b) { return std::move(a.clone() -= b); }
  friend TaskVector operator*(float s, const TaskVector& a) { return std::move(a.clone() *= s); }

  // base + scaling · τ for every tensor of base (tensors τ lacks are copied).
  StateDict apply_to(const StateDict& base, double scaling = 1.0, std::optional<twin::dtype> out_dtype = {}) const {
    StateDict out;
    const float s = static_cast<float>(scaling);
    for (const auto& [name, b] : base) {
      const twin::dtype od = out_dtype.value_or(b.dtype());
      const Tensor* d = deltas_.find(name);
      if (!d) {
        out.insert(name, b.clone_as(od));
        continue;
      }
      check_same_shape(name, b.shape(), d->shape(), "task vector tensor");
      Tensor o(od, b.shape());
      const float* dv = d->values<float>().data();
      const ConstTensorView bv = b.view();
      const TensorView ov = o.view();
      parallel_blocks(b.numel(), detail::merge_block, [&](std::int64_t lo, std::int64_t hi) {
        std::vector<float> buf(static_cast<std::size_t>(hi - lo));
        read_f32(bv, lo, hi - lo, buf.data());
        for (std::int64_t j = 0; j < hi - lo; ++j) buf[static_cast<std::size_t>(j)] += s * dv[lo + j];
        write_f32(buf.data(), lo, hi - lo, ov);
      });
      out.insert(name, std::move(o));
    }
    return out;
  }

  // Σ τ² over every entry (double, deterministic).
  double squared_norm() const { return dot(*this, *this); }
  double norm() const { return std::sqrt(squared_norm()); }

  friend double dot(const TaskVector& a, const TaskVector& b) {
    double total = 0.0;
    for (const auto& [name, t] : a.deltas_) {
      const Tensor* u = b.deltas_.find(name);
      if (!u) throw name_error("task vectors differ: '" + name + "' is missing from the second");
      check_same_shape(name, t.shape(), u->shape(), "task vector tensor");
      const float* x = t.values<float>().data();
      const float* y = u->values<float>().data();
      total += parallel_sum<double>(t.numel(), detail::merge_block, [&](std::int64_t lo, std::int64_t hi) {
        double s = 0.0;
        for (std::int64_t j = lo; j < hi; ++j) s += static_cast<double>(x[j]) * y[j];
        return s;
      });
    }
    return total;
  }

  friend double cosine_similarity(const TaskVector& a, const TaskVector& b) {
    const double na = a.norm(), nb = b.norm();
    return (na == 0.0 || nb == 0.0) ? 0.0 : dot(a, b) / (na * nb);
  }

 private:
  template <class F>
  void zip(const TaskVector& o, F f) {
    for (auto& item : deltas_) {
      Tensor& t = item.second;
      const Tensor& u = o.deltas_.at(item.first);
      check_same_shape(item.first, t.shape(), u.shape(), "task vector tensor");
      std::span<float> x = t.values<float>();
      std::span<const float> y = u.values<float>();
      for (std::size_t j = 0; j < x.size(); ++j) f(x[j], y[j]);
    }
  }

  StateDict deltas_;
};

// T×T matrix of cosine similarities between task vectors (a diagnostic of how
// much experts interfere).
inline std::vector<std::vector<double>> cosine_similarity_matrix(std::span<const TaskVector> tvs) {
  const std::size_t T = tvs.size();
  std::vector<double> norms(T);
  for (std::size_t i = 0; i < T; ++i) norms[i] = tvs[i].norm();
  std::vector<std::vector<double>> m(T, std::vector<double>(T, 0.0));
  for (std::size_t i = 0; i < T; ++i)
    for (std::size_t j = i; j < T; ++j) {
      const double d = (norms[i] == 0.0 || norms[j] == 0.0) ? 0.0 : dot(tvs[i], tvs[j]) / (norms[i] * norms[j]);
      m[i][j] = m[j][i] = d;
    }
  return m;
}

}  // namespace twin
