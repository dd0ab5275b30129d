// A storage budget for the exclusive knowledge (docs/design.md §2, "Storage
// budget"): build_within_budget chooses, per tensor and task, the module kind
// and rank that remove the most error per byte, until the modules' bytes
// reach a fraction of the T experts' bytes.
//
// Each (tensor, task) offers candidate modules, each a point (bytes, error):
// nothing (0 bytes, ‖v‖²); SVD factors of rank r = 1..max_rank in every
// format asked for (f32, int8, int4 with f16 group scales), error
// Σ_{j>r} σ_j² plus, for quantized ones, Σ_{j≤r} ‖a_j b_jᵀ − â_j b̂_jᵀ‖² (each
// component's own quantization error, cross terms left out); sign bits of
// every entry with one α per row (error exact); for vectors, the dense
// values (error 0). The lower convex hull of these points is the path worth
// walking: its steps remove error at a falling rate per byte. All steps of
// all items are taken greedily, best rate first, while they fit the budget;
// an item whose next step does not fit stops there. The result is within the
// budget and short of it by less than one skipped step. The modules are
// then built exactly from the factors already computed (quantized codes are
// truncated, not recomputed: a column's codes do not depend on the rank) and
// their errors measured, not estimated.
//
// Memory: every tensor's factors at max_rank are held until the allocation
// (bound it with max_rank for large models).
#pragma once

#include <algorithm>
#include <mutex>
#include <queue>
#include <sstream>

#include "twin/compress/sign_compressor.hpp"
#include "twin/compress/svd_compressor.hpp"
#include "twin/model/twin_model.hpp"

namespace twin {

struct BudgetOptions {
  double fraction = 0.02;  // of the T experts' bytes (StorageReport::dense_experts_bytes)
  // Factor formats that compete (bits 0: f32 factors).
  std::vector<QuantSpec> formats = {QuantSpec{0, 64}, QuantSpec{8, 64}, QuantSpec{4, 64}};
  bool sign = true;           // sign modules (every entry kept, α per row) compete too
  std::int64_t max_rank = 0;  // 0: min(m, n)

  void validate() const {
    if (!(fraction > 0.0 && fraction <= 1.0))
      throw argument_error("budget fraction must be in (0, 1], found " + std::to_string(fraction));
    if (formats.empty() && !sign) throw argument_error("budget: no module format to choose from");
    for (const QuantSpec& q : formats)
      if (q.enabled()) q.validate("budget format");
    if (max_rank < 0) throw argument_error("budget max_rank must be >= 0");
  }

  Metadata metadata() const {
    std::ostringstream f, fr;
    for (std::size_t i = 0; i < formats.size(); ++i)
      f << (i ? "," : "")
        << (formats[i].enabled() ? "int" + std::to_string(formats[i].bits) + "/" + std::to_string(formats[i].group)
                                 : std::string("f32"));
    fr << fraction;
    return {{"compressor", "budget"},
            {"budget", fr.str()},
            {"formats", f.str()},
            {"sign", sign ? "1" : "0"},
            {"max_rank", std::to_string(max_rank)}};
  }
};

// What the allocation did: the limit in bytes, the bytes taken, and the
// smallest step an item could not take (0 when every item reached the end of
// its hull): limit − used < smallest_skipped.
struct BudgetReport {
  double limit = 0, used = 0, smallest_skipped = 0;
};

namespace detail {

struct BudgetPoint {
  double bytes = 0, err = 0;
  int option = -1;  // index into BudgetItem::options; -1: nothing
  std::int64_t rank = 0;
};

// One (tensor, task): its candidate modules at full rank and the hull of
// (bytes, error) points through them.
struct BudgetItem {
  std::vector<std::int64_t> shape;
  std::vector<ExclusiveModule> options;
  std::vector<BudgetPoint> hull;  // hull[0] is "nothing"
  std::size_t taken = 0;
};

// Lower convex hull of the points, from (0, err0), keeping only points that
// lower the error.
inline std::vector<BudgetPoint> budget_hull(std::vector<BudgetPoint> pts, double err0) {
  std::sort(pts.begin(), pts.end(), [](const BudgetPoint& a, const BudgetPoint& b) {
    return a.bytes != b.bytes ? a.bytes < b.bytes : a.err < b.err;
  });
  std::vector<BudgetPoint> h{BudgetPoint{0, err0, -1, 0}};
  for (const BudgetPoint& p : pts) {
    if (!(p.err < h.back().err) || p.bytes <= h.back().bytes) continue;
    // Pop while the last point is not strictly below the segment from the one before to p.
    while (h.size() >= 2) {
      const BudgetPoint &a = h[h.size() - 2], &b = h.back();
      const double cross = (b.bytes - a.bytes) * (p.err - a.err) - (b.err - a.err) * (p.bytes - a.bytes);
      if (cross > 0) break;  // b is below the chord a→p: keep it
      h.pop_back();
    }
    h.push_back(p);
  }
  return h;
}

// Sum of squared column norms a_j b_jᵀ − â_j b̂_jᵀ, j < k, of M [n×k] pairs.
inline std::vector<double> component_quant_errors(const std::vector<float>& a, const std::vector<float>& aq,
                                                  const std::vector<float>& b, const std::vector<float>& bq,
                                                  std::int64_t m, std::int64_t n, std::int64_t k) {
  std::vector<double> e(static_cast<std::size_t>(k));
  for (std::int64_t j = 0; j < k; ++j) {
    double aa = 0, aaq = 0, aqaq = 0, bb = 0, bbq = 0, bqbq = 0;
    for (std::int64_t i = 0; i < m; ++i) {
      const double x = a[static_cast<std::size_t>(i * k + j)], y = aq[static_cast<std::size_t>(i * k + j)];
      aa += x * x, aaq += x * y, aqaq += y * y;
    }
    for (std::int64_t i = 0; i < n; ++i) {
      const double x = b[static_cast<std::size_t>(i * k + j)], y = bq[static_cast<std::size_t>(i * k + j)];
      bb += x * x, bbq += x * y, bqbq += y * y;
    }
    e[static_cast<std::size_t>(j)] = std::max(0.0, aa * bb - 2 * aaq * bbq + aqaq * bqbq);
  }
  return e;
}

// The first r columns of a row-major [n×k] factor.
inline Tensor leading_columns(const Tensor& f, std::int64_t r) {
  const std::int64_t n = f.dim(0), k = f.dim(1);
  const std::int64_t shape[2] = {n, r};
  Tensor out(dtype::f32, shape);
  const float* src = static_cast<const float*>(f.data());
  float* dst = static_cast<float*>(out.mutable_data());
  for (std::int64_t i = 0; i < n; ++i) std::copy(src + i * k, src + i * k + r, dst + i * r);
  return out;
}
// The first r rows of a [k × w] tensor (quantized codes or scales: rows are columns of the factor).
inline Tensor leading_rows(const Tensor& t, std::int64_t r) {
  const std::int64_t shape[2] = {r, t.dim(1)};
  Tensor out(t.dtype(), shape);
  std::memcpy(out.mutable_data(), t.data(), out.nbytes());
  return out;
}

// v̂ = 0 in no bytes: rank-0 factors.
inline ExclusiveModule nothing_module(std::span<const std::int64_t> shape) {
  const MatrixShape ms = matrix_shape(shape);
  const std::int64_t za[2] = {ms.rows, 0}, zb[2] = {ms.cols, 0};
  return ExclusiveModule::low_rank(Tensor(dtype::f32, za), Tensor(dtype::f32, zb), shape);
}

// The compressor TwinModel::build runs in the first pass: it records each
// (tensor, task)'s candidates and returns an empty module.
struct BudgetRecorder {
  const BudgetOptions* opts;
  std::map<std::pair<std::string, std::uint64_t>, BudgetItem>* items;
  std::mutex* mu;

  std::string_view name() const noexcept { return "budget"; }
  Metadata metadata() const { return opts->metadata(); }

  ExclusiveModule compress(std::string_view name, ConstTensorView v, std::uint64_t stream) const {
    require_float(v.dtype(), "exclusive delta of tensor '" + std::string(name) + "'");
    std::vector<float> d = delta_f32(v);
    check_finite_delta(name, d);
    double dsq = 0;
    for (float x : d) dsq += static_cast<double>(x) * x;
    BudgetItem it;
    it.shape.assign(v.shape().begin(), v.shape().end());
    std::vector<BudgetPoint> pts;
    auto add_whole = [&](ExclusiveModule m) {
      pts.push_back({static_cast<double>(m.nbytes()), module_error_sq(m, d), static_cast<int>(it.options.size()), 0});
      it.options.push_back(std::move(m));
    };
    if (opts->sign) add_whole(SignCompressor{1.0, true}.compress(name, v, stream));
    if (v.rank() < 2) {
      add_whole(ExclusiveModule::dense(Tensor::from_f32(d, v.shape(), dtype::f32)));
    } else if (const MatrixShape ms = matrix_shape(v.shape());
               !opts->formats.empty() && std::min(ms.rows, ms.cols) > 0) {
      SvdCompressor svd;
      svd.engine = SvdEngine::exact;
      const std::int64_t p = std::min(ms.rows, ms.cols);
      svd.rank = std::max<std::int64_t>(1, opts->max_rank > 0 ? std::min(opts->max_rank, p) : p);
      const backend::cpu::SvdFactors f = svd.factorize(name, d.data(), ms.rows, ms.cols, stream);
      const std::int64_t k = f.k, m = f.m, n = f.n;
      const std::vector<float> a = f.u_times_s();
      std::vector<double> kept(static_cast<std::size_t>(k + 1), 0.0);  // Σ_{j<r} σ_j²
      for (std::int64_t j = 0; j < k; ++j)
        kept[static_cast<std::size_t>(j + 1)] =
            kept[static_cast<std::size_t>(j)] + f.s[static_cast<std::size_t>(j)] * f.s[static_cast<std::size_t>(j)];
      const std::int64_t sa[2] = {m, k}, sb[2] = {n, k};
      for (const QuantSpec& q : opts->formats) {
        const int opt = static_cast<int>(it.options.size());
        std::vector<double> qerr(static_cast<std::size_t>(k), 0.0);
        double per_rank, fixed = 0;
        if (q.enabled()) {
          // Factors too large for f16 scales leave this format out for this item.
          QuantizedFactor qa, qb;
          try {
            qa = quantize_factor(a.data(), m, k, q, "factor A of tensor '" + std::string(name) + "'");
            qb = quantize_factor(f.v.data(), n, k, q, "factor B of tensor '" + std::string(name) + "'");
          } catch (const numeric_error&) {
            continue;
          }
          std::vector<float> aq(a.size()), bq(f.v.size());
          dequantize_factor(qa, m, k, q, aq.data());
          dequantize_factor(qb, n, k, q, bq.data());
          qerr = component_quant_errors(a, aq, f.v, bq, m, n, k);
          per_rank = static_cast<double>(q.code_bytes(m) + q.code_bytes(n) + 2 * (q.groups(m) + q.groups(n)));
          fixed = 2 * sizeof(std::int32_t);
          it.options.push_back(ExclusiveModule::low_rank_quantized(std::move(qa), std::move(qb), q, v.shape()));
        } else {
          per_rank = static_cast<double>(4 * (m + n));
          it.options.push_back(ExclusiveModule::low_rank(Tensor::from_f32(a, sa, dtype::f32),
                                                         Tensor::from_f32(f.v, sb, dtype::f32), v.shape()));
        }
        double qsum = 0;
        for (std::int64_t r = 1; r <= k; ++r) {
          qsum += qerr[static_cast<std::size_t>(r - 1)];
          pts.push_back({fixed + per_rank * static_cast<double>(r),
                         std::max(0.0, dsq - kept[static_cast<std::size_t>(r)]) + qsum, opt, r});
        }
      }
    }
    it.hull = budget_hull(std::move(pts), dsq);
    {
      std::lock_guard<std::mutex> lock(*mu);
      (*items)[{std::string(name), stream}] = std::move(it);
    }
    return nothing_module(v.shape());
  }
};

// The module of hull point `p` of an item (options are consumed).
inline ExclusiveModule budget_module(BudgetItem& it, const BudgetPoint& p) {
  if (p.option < 0) return nothing_module(it.shape);
  ExclusiveModule& m = it.options[static_cast<std::size_t>(p.option)];
  if (m.kind() == ModuleKind::low_rank)
    return ExclusiveModule::low_rank(leading_columns(m.a(), p.rank), leading_columns(m.b(), p.rank), it.shape);
  if (m.kind() == ModuleKind::low_rank_q) {
    QuantizedFactor a{leading_rows(m.quantized_a().codes, p.rank), leading_rows(m.quantized_a().scales, p.rank)};
    QuantizedFactor b{leading_rows(m.quantized_b().codes, p.rank), leading_rows(m.quantized_b().scales, p.rank)};
    return ExclusiveModule::low_rank_quantized(std::move(a), std::move(b), m.quant(), it.shape);
  }
  return std::move(m);
}

}  // namespace detail

// TwinModel::build with the exclusive modules chosen under a byte budget
// (see the top of this header). The model's metadata records the budget;
// each module's kind and rank say what was chosen where.
template <SharedMerger M>
TwinModel build_within_budget(const StateDict& base, std::span<const StateDict* const> experts, const M& merger,
                              const BudgetOptions& budget, TwinBuildOptions opts = {}, BudgetReport* report = nullptr) {
  budget.validate();
  std::map<std::pair<std::string, std::uint64_t>, detail::BudgetItem> items;
  std::mutex mu;
  const bool measure = opts.measure_error;
  opts.measure_error = false;
  TwinModel model = TwinModel::build(base, experts, merger, detail::BudgetRecorder{&budget, &items, &mu}, opts);

  // Allocation: hull steps, best error removed per byte first.
  const double limit = budget.fraction * static_cast<double>(model.storage().dense_experts_bytes);
  struct Step {
    double rate;
    detail::BudgetItem* item;
    bool operator<(const Step& o) const { return rate < o.rate; }
  };
  std::priority_queue<Step> queue;
  auto push_next = [&](detail::BudgetItem& it) {
    if (it.taken + 1 >= it.hull.size()) return;
    const detail::BudgetPoint &a = it.hull[it.taken], &b = it.hull[it.taken + 1];
    queue.push({(a.err - b.err) / (b.bytes - a.bytes), &it});
  };
  for (auto& [key, it] : items) push_next(it);
  double used = 0, skipped = 0;
  while (!queue.empty()) {
    const Step s = queue.top();
    queue.pop();
    detail::BudgetItem& it = *s.item;
    const double step = it.hull[it.taken + 1].bytes - it.hull[it.taken].bytes;
    if (used + step > limit) {  // this item stops here
      skipped = skipped == 0 ? step : std::min(skipped, step);
      continue;
    }
    used += step;
    ++it.taken;
    push_next(it);
  }
  if (report) *report = BudgetReport{limit, used, skipped};

  // The chosen modules, their errors measured against v = θ_t − θ*.
  const std::size_t T = model.num_tasks();
  for (const TwinModel::Entry& e : model.entries()) {
    if (e.excluded) continue;
    const Tensor& shared = model.shared().at(e.name);
    const std::int64_t n = shared.numel();
    std::vector<float> star(static_cast<std::size_t>(n)), v(static_cast<std::size_t>(n));
    read_f32(shared.view(), 0, n, star.data());
    std::vector<ExclusiveModule> mods(T);
    std::vector<double> err(T, std::numeric_limits<double>::quiet_NaN());
    for (std::size_t t = 0; t < T; ++t) {
      detail::BudgetItem& it = items.at({e.name, static_cast<std::uint64_t>(t)});
      mods[t] = detail::budget_module(it, it.hull[it.taken]);
      if (measure) {
        read_f32(experts[t]->at(e.name).view(), 0, n, v.data());
        for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] -= star[static_cast<std::size_t>(i)];
        err[t] = detail::module_error_sq(mods[t], v);
      }
      it.options.clear();
    }
    model.set_modules(e.name, std::move(mods), std::move(err));
  }
  return model;
}

template <SharedMerger M>
TwinModel build_within_budget(const StateDict& base, std::span<const StateDict> experts, const M& merger,
                              const BudgetOptions& budget, const TwinBuildOptions& opts = {},
                              BudgetReport* report = nullptr) {
  std::vector<const StateDict*> ptrs;
  for (const StateDict& e : experts) ptrs.push_back(&e);
  return build_within_budget(base, std::span<const StateDict* const>(ptrs), merger, budget, opts, report);
}

}  // namespace twin
