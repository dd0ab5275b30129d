// SvdCompressor (plain, quantized, with a sparse residual), SignCompressor,
// MagnitudeSparsifier, TwinModel::build and build_within_budget against
// dense double-precision references (Jacobi SVD, eigen-decompositions,
// sorting, codes decoded by hand).
#include "fuse_test_util.hpp"

#include <numeric>
#include <set>

#include "twin/compress/magnitude_sparsifier.hpp"
#include "twin/compress/sign_compressor.hpp"
#include "twin/compress/svd_compressor.hpp"
#include "twin/merge/any_merger.hpp"
#include "twin/model/budget.hpp"

using namespace twin;
using namespace twin_test;

namespace {

// Singular values in double by one-sided Jacobi (a different algorithm from
// the BDCSVD and randomized engines under test).
std::vector<double> jacobi_singular_values(const MatD& a) {
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(a);
  const auto& s = svd.singularValues();
  return {s.data(), s.data() + s.size()};
}

// ‖a − A·Bᵀ‖_F² with the module's stored factors, in double.
double truncation_error_sq(const MatD& a, const ExclusiveModule& m) {
  const std::vector<double> rec = module_dense(m);
  double e = 0.0;
  for (Eigen::Index i = 0; i < a.size(); ++i) e += std::pow(a.data()[i] - rec[static_cast<std::size_t>(i)], 2);
  return e;
}

double tail_sq(const std::vector<double>& s, std::size_t k) {
  double t = 0.0;
  for (std::size_t i = k; i < s.size(); ++i) t += s[i] * s[i];
  return t;
}

std::vector<double> decaying(std::size_t p, double rate, double floor = 0.0) {
  std::vector<double> s(p);
  for (std::size_t i = 0; i < p; ++i) s[i] = std::exp(-rate * static_cast<double>(i)) + floor;
  return s;
}

}  // namespace

TEST_CASE("the exact SVD engine reaches the optimal truncated error (Eckart-Young, Jacobi SVD in double)") {
  std::mt19937_64 rng(11);
  const MatD a = gaussian(rng, 70, 45);
  const std::vector<double> s = jacobi_singular_values(a);
  SvdCompressor c = SvdCompressor::with_rank(9);
  c.engine = SvdEngine::exact;
  const ExclusiveModule m = c.compress("w", to_tensor(a).view());
  REQUIRE(m.kind() == ModuleKind::low_rank);
  CHECK(m.rank() == 9);
  CHECK(m.a().shape()[0] == 70);
  CHECK(m.b().shape()[0] == 45);
  const double opt = tail_sq(s, 9), got = truncation_error_sq(a, m);
  CHECK(got == doctest::Approx(opt).epsilon(1e-4));
  // A = UΣ: the column norms of A are the singular values.
  const MatD A = to_mat(m.a().view(), 70, 9);
  for (int j = 0; j < 9; ++j) CHECK(A.col(j).norm() == doctest::Approx(s[static_cast<std::size_t>(j)]).epsilon(1e-5));
}

TEST_CASE("the randomized SVD engine is within 1% of the optimal truncated error on decaying spectra") {
  std::mt19937_64 rng(12);
  for (const double rate : {0.05, 0.15}) {
    const MatD a = with_spectrum(rng, 400, 260, decaying(260, rate, 1e-3));
    const std::vector<double> s = jacobi_singular_values(a);
    for (const std::uint64_t seed : {0ull, 7ull}) {
      SvdCompressor c = SvdCompressor::with_rank(16);
      c.engine = SvdEngine::randomized;
      c.seed = seed;
      const ExclusiveModule m = c.compress("layer.w", to_tensor(a).view());
      CHECK(m.rank() == 16);
      const double opt = std::sqrt(tail_sq(s, 16)), got = std::sqrt(truncation_error_sq(a, m));
      INFO("rate " << rate << " seed " << seed << ": error " << got << " vs optimal " << opt);
      CHECK(got <= 1.01 * opt);
      CHECK(got >= opt * (1 - 1e-6));
    }
  }
}

TEST_CASE("automatic engine choice: randomized for small ranks of large matrices, exact otherwise") {
  SvdCompressor c = SvdCompressor::with_rank(16);
  CHECK(c.engine_for(768, 768) == SvdEngine::randomized);
  CHECK(c.engine_for(3072, 768) == SvdEngine::randomized);
  CHECK(c.engine_for(64, 64) == SvdEngine::exact);
  CHECK(SvdCompressor::with_rank(200).engine_for(768, 768) == SvdEngine::exact);
  CHECK(SvdCompressor::with_energy(0.5).engine_for(768, 768) == SvdEngine::exact);
}

TEST_CASE("the randomized engine is deterministic for a seed and tensor, and the seed matters") {
  std::mt19937_64 rng(13);
  const Tensor a = to_tensor(gaussian(rng, 300, 200));
  SvdCompressor c = SvdCompressor::with_rank(8);
  c.engine = SvdEngine::randomized;
  c.power_iters = 0;  // without power iterations the sketch shows through
  const ExclusiveModule m1 = c.compress("w", a.view(), 3), m2 = c.compress("w", a.view(), 3);
  CHECK(same_bits(m1.a(), m2.a()));
  CHECK(same_bits(m1.b(), m2.b()));
  const ExclusiveModule m3 = c.compress("w", a.view(), 4);
  CHECK_FALSE(same_bits(m1.a(), m3.a()));
}

TEST_CASE(
    "energy mode picks the smallest rank keeping the energy fraction (spectrum from an eigen-decomposition of vᵀv)") {
  std::mt19937_64 rng(14);
  const MatD a = with_spectrum(rng, 90, 60, decaying(60, 0.12));
  const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(a.transpose() * a);
  std::vector<double> lam(eig.eigenvalues().data(), eig.eigenvalues().data() + 60);
  std::sort(lam.rbegin(), lam.rend());
  const double total = std::accumulate(lam.begin(), lam.end(), 0.0);
  for (const double e : {0.3, 0.5, 0.9, 0.99}) {
    std::size_t k = 0;
    double kept = 0.0;
    while (kept < e * total) kept += lam[k++];
    // keep the threshold away from a spectrum point so rounding cannot flip it
    const double before = (kept - lam[k - 1]) / total, after = kept / total;
    REQUIRE((e - before > 1e-6 && after - e > 1e-6));
    const ExclusiveModule m = SvdCompressor::with_energy(e).compress("w", to_tensor(a).view());
    INFO("energy " << e);
    CHECK(m.rank() == static_cast<std::int64_t>(k));
    const double err = truncation_error_sq(a, m);
    CHECK(err <= (1 - e) * total * (1 + 1e-4));
  }
}

TEST_CASE("rank ratio mode takes ceil(ratio * min(m, n)) and ranks are clamped to min(m, n)") {
  std::mt19937_64 rng(15);
  const MatD a = gaussian(rng, 30, 20);
  CHECK(SvdCompressor::with_rank_ratio(0.25).compress("w", to_tensor(a).view()).rank() == 5);
  CHECK(SvdCompressor::with_rank_ratio(0.01).compress("w", to_tensor(a).view()).rank() == 1);
  const ExclusiveModule full = SvdCompressor::with_rank(1000).compress("w", to_tensor(a).view());
  CHECK(full.rank() == 20);
  // full rank reproduces the matrix up to f32 rounding
  CHECK(truncation_error_sq(a, full) <= 1e-10 * a.squaredNorm());
}

TEST_CASE("the exact engine retries in double when the kept spectrum reaches f32's noise floor") {
  std::mt19937_64 rng(16);
  std::vector<double> s(40);
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = std::pow(10.0, -7.0 * static_cast<double>(i) / 39.0);
  const MatD a = with_spectrum(rng, 50, 40, s);
  const Tensor t = to_tensor(a);
  const std::vector<float> v(static_cast<const float*>(t.data()), static_cast<const float*>(t.data()) + t.numel());
  SvdCompressor c = SvdCompressor::with_rank(30);
  c.engine = SvdEngine::exact;
  CHECK(c.factorize("w", v.data(), 50, 40).used_double);
  CHECK_FALSE(SvdCompressor::with_rank(3).factorize("w", v.data(), 50, 40).used_double);
  // the retry still reaches the optimum of the (f32-rounded) input
  const MatD af = to_mat(t.view(), 50, 40);
  const ExclusiveModule m = c.compress("w", t.view());
  CHECK(truncation_error_sq(af, m) <= tail_sq(jacobi_singular_values(af), 30) * 1.01 + 1e-16);
}

TEST_CASE("vectors stay dense and conv kernels are factored as [out, in*kh*kw]") {
  std::mt19937_64 rng(17);
  const Tensor bias = random_tensor(rng, dtype::f32, {24});
  const ExclusiveModule mb = SvdCompressor::with_rank(4).compress("b", bias.view());
  CHECK(mb.kind() == ModuleKind::dense);
  CHECK(same_bits(mb.values(), bias));
  const ExclusiveModule ms = MagnitudeSparsifier{0.1}.compress("b", bias.view());
  CHECK(ms.kind() == ModuleKind::dense);

  const Tensor conv = random_tensor(rng, dtype::f32, {8, 3, 3, 3});
  const ExclusiveModule mc = SvdCompressor::with_rank(100).compress("conv", conv.view());
  CHECK(mc.rank() == 8);
  CHECK(mc.b().dim(0) == 27);
  check_close(conv.view(), module_dense(mc), 1e-4, 1e-5, "full-rank conv");
}

TEST_CASE("an empty matrix ([0, n], [m, 0]) compresses to rank 0 in every SVD mode, without reaching an engine") {
  for (const auto& shape : {std::vector<std::int64_t>{0, 8}, {8, 0}, {0, 0}}) {
    const Tensor empty(dtype::f32, shape);
    SvdCompressor quantized = SvdCompressor::with_rank(2);
    quantized.quant = QuantSpec{8, 32};
    for (const SvdCompressor& c : {SvdCompressor::with_rank(2), SvdCompressor::with_energy(0.5), quantized}) {
      const ExclusiveModule m = c.compress("e", empty.view());
      CHECK(m.rank() == 0);
      CHECK(std::vector<std::int64_t>(m.shape().begin(), m.shape().end()) == shape);
      CHECK(module_dense(m).empty());
    }
  }
}

TEST_CASE("f16 and bf16 factor storage round A = UΣ and B = V to nearest") {
  std::mt19937_64 rng(18);
  const MatD a = gaussian(rng, 40, 30);
  const ExclusiveModule m32 = SvdCompressor::with_rank(6).compress("w", to_tensor(a).view());
  for (const dtype t : {dtype::f16, dtype::bf16}) {
    const ExclusiveModule m = SvdCompressor::with_rank(6, t).compress("w", to_tensor(a).view());
    CHECK(m.a().dtype() == t);
    CHECK(m.b().dtype() == t);
    CHECK(m.nbytes() * 2 == m32.nbytes());
    CHECK(same_bits(m.a(), m32.a().clone_as(t)));
    CHECK(same_bits(m.b(), m32.b().clone_as(t)));
  }
}

TEST_CASE("the magnitude sparsifier keeps exactly the floor(density*n) largest |v| (sort-based reference)") {
  std::mt19937_64 rng(19);
  const Tensor v = random_tensor(rng, dtype::f32, {37, 29});
  const auto vals = to_f64_vector(v.view());
  for (const double d : {0.0, 0.1, 0.37, 1.0}) {
    const ExclusiveModule m = MagnitudeSparsifier{d}.compress("w", v.view());
    REQUIRE(m.kind() == ModuleKind::sparse);
    const std::size_t k = static_cast<std::size_t>(std::floor(d * static_cast<double>(vals.size()) + 1e-9));
    std::vector<std::size_t> order(vals.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::sort(order.begin(), order.end(), [&](auto a, auto b) { return std::abs(vals[a]) > std::abs(vals[b]); });
    std::vector<double> ref(vals.size(), 0.0);
    for (std::size_t i = 0; i < k; ++i) ref[order[i]] = vals[order[i]];
    CHECK(m.nnz() == static_cast<std::int64_t>(k));
    CHECK(m.indices().dtype() == dtype::i32);
    CHECK(module_dense(m) == ref);
  }
}

TEST_CASE("quantized factors: each value within half its group's scale, scales the smallest f16 >= max|x|/qmax") {
  std::mt19937_64 rng(23);
  const MatD a = with_spectrum(rng, 53, 37, decaying(12, 0.3));
  const ExclusiveModule plain = SvdCompressor::with_rank(5).compress("w", to_tensor(a).view());
  const std::int64_t dims[2] = {53, 37};
  for (const int bits : {8, 4})
    for (const std::int64_t group : {1, 16, 64}) {
      CAPTURE(bits);
      CAPTURE(group);
      SvdCompressor c = SvdCompressor::with_rank(5);
      c.quant = QuantSpec{bits, group};
      const ExclusiveModule m = c.compress("w", to_tensor(a).view());
      REQUIRE(m.kind() == ModuleKind::low_rank_q);
      CHECK(m.rank() == 5);
      const double qmax = bits == 8 ? 127 : 7;
      for (int side = 0; side < 2; ++side) {
        const std::int64_t n = dims[side];
        const MatD ref = to_mat((side == 0 ? plain.a() : plain.b()).view(), n, 5);
        const QuantizedFactor& qf = side == 0 ? m.quantized_a() : m.quantized_b();
        const MatD got = dequantized_ref(qf, n, 5, m.quant());
        const std::int64_t ng = (n + group - 1) / group;
        REQUIRE(qf.scales.numel() == 5 * ng);
        CHECK(qf.codes.numel() == 5 * (bits == 8 ? n : (n + 1) / 2));
        const auto* sc = static_cast<const std::uint16_t*>(qf.scales.data());
        bool within = true, tight = true;
        for (std::int64_t j = 0; j < 5; ++j)
          for (std::int64_t g = 0; g < ng; ++g) {
            double amax = 0;
            for (std::int64_t i = g * group; i < std::min(n, (g + 1) * group); ++i)
              amax = std::max(amax, std::abs(ref(i, j)));
            const double s = f16_to_f32(sc[j * ng + g]);
            // s ≥ amax/qmax, and the f16 just below it is not.
            tight = tight && s * qmax >= amax && (sc[j * ng + g] == 0 || f16_to_f32(sc[j * ng + g] - 1) * qmax < amax);
            for (std::int64_t i = g * group; i < std::min(n, (g + 1) * group); ++i)
              within = within && std::abs(got(i, j) - ref(i, j)) <= s / 2 * (1 + 1e-6);
          }
        CHECK(within);
        CHECK(tight);
      }
      // 4-bit codes take half the bytes of 8-bit ones, f16 scales 2 bytes per group.
      const std::size_t want = static_cast<std::size_t>(
          5 * ((bits == 8 ? 53 + 37 : 27 + 19) + 2 * ((53 + group - 1) / group + (37 + group - 1) / group)) + 8);
      CHECK(m.nbytes() == want);
    }
}

TEST_CASE("TwinModel::build records the quantization error in ‖v − v̂‖² (double reference from the stored codes)") {
  const SmallModel sm = small_model(29, 3);
  SvdCompressor c = SvdCompressor::with_rank(3);
  c.quant = QuantSpec{4, 8};
  const TwinModel m = TwinModel::build(sm.base, std::span<const StateDict>(sm.experts), TaskArithmetic{0.3, {}}, c);
  const TwinModel plain = TwinModel::build(sm.base, std::span<const StateDict>(sm.experts), TaskArithmetic{0.3, {}},
                                           SvdCompressor::with_rank(3));
  const auto& e = m.at("layer.0.attn.w");
  const auto star = to_f64_vector(m.shared().at("layer.0.attn.w").view());
  for (std::size_t t = 0; t < 3; ++t) {
    const auto theta = to_f64_vector(sm.experts[t].at("layer.0.attn.w").view());
    const auto rec = module_dense(e.modules[t]);
    double err = 0;
    for (std::size_t i = 0; i < rec.size(); ++i) err += std::pow(theta[i] - star[i] - rec[i], 2);
    CHECK(e.error_sq[t] == doctest::Approx(err).epsilon(1e-4));
    // 4 bits cost accuracy: more error than the f32 factors of the same rank.
    CHECK(e.error_sq[t] > plain.at("layer.0.attn.w").error_sq[t]);
  }
}

TEST_CASE("low-rank + sparse keeps the top-k of the factors' residual (sort reference) and lowers the error") {
  std::mt19937_64 rng(24);
  const MatD a = with_spectrum(rng, 41, 33, decaying(20, 0.15));
  const ExclusiveModule plain = SvdCompressor::with_rank(4).compress("w", to_tensor(a).view());
  for (const bool quantized : {false, true}) {
    CAPTURE(quantized);
    SvdCompressor c = SvdCompressor::with_rank(4);
    c.residual_density = 0.07;
    if (quantized) c.quant = QuantSpec{8, 32};
    const ExclusiveModule m = c.compress("w", to_tensor(a).view());
    REQUIRE(m.kind() == ModuleKind::low_rank_sparse);
    CHECK(m.quantized() == quantized);
    // Residual of the stored factors, in double.
    ExclusiveModule factors_only = quantized ? [&] {
      SvdCompressor q = SvdCompressor::with_rank(4);
      q.quant = c.quant;
      return q.compress("w", to_tensor(a).view());
    }()
                                             : SvdCompressor::with_rank(4).compress("w", to_tensor(a).view());
    const auto fac = module_dense(factors_only);
    std::vector<double> res(fac.size());
    const std::vector<float> af = [&] {
      std::vector<float> v(static_cast<std::size_t>(a.size()));
      for (Eigen::Index i = 0; i < a.size(); ++i) v[static_cast<std::size_t>(i)] = static_cast<float>(a.data()[i]);
      return v;
    }();
    for (std::size_t i = 0; i < res.size(); ++i) res[i] = af[i] - fac[i];
    const std::size_t k = static_cast<std::size_t>(std::floor(0.07 * static_cast<double>(res.size()) + 1e-9));
    // The kept entries are the k largest |residual| (up to the f32 rounding
    // of the library's residual against this double one), in index order.
    const auto idx = to_f64_vector(m.indices().view()), val = to_f64_vector(m.values().view());
    REQUIRE(idx.size() == k);
    std::vector<bool> kept(res.size(), false);
    double min_kept = INFINITY, max_other = 0, big = 0;
    for (std::size_t i = 0; i < k; ++i) {
      const auto j = static_cast<std::size_t>(idx[i]);
      if (i > 0) CHECK(idx[i] > idx[i - 1]);
      kept[j] = true;
      CHECK(val[i] == doctest::Approx(res[j]).epsilon(1e-4).scale(1e-6));
      min_kept = std::min(min_kept, std::abs(res[j]));
    }
    for (std::size_t j = 0; j < res.size(); ++j) {
      big = std::max(big, std::abs(res[j]));
      if (!kept[j]) max_other = std::max(max_other, std::abs(res[j]));
    }
    CHECK(min_kept >= max_other - 1e-5 * big);
    CHECK(min_kept > 0);
    CHECK(truncation_error_sq(a, m) < truncation_error_sq(a, factors_only));
    if (!quantized) CHECK(truncation_error_sq(a, m) < truncation_error_sq(a, plain));
  }
}

TEST_CASE("sign modules: the mask keeps the top-k |v| (sort reference) and α is the mean kept |v| per row") {
  std::mt19937_64 rng(25);
  const Tensor v = random_tensor(rng, dtype::f32, {13, 29});
  const auto vals = to_f64_vector(v.view());
  for (const double d : {1.0, 0.25})
    for (const bool per_row : {true, false}) {
      CAPTURE(d);
      CAPTURE(per_row);
      const ExclusiveModule m = SignCompressor{d, per_row}.compress("w", v.view());
      REQUIRE(m.kind() == ModuleKind::sign);
      const std::size_t n = vals.size(), k = static_cast<std::size_t>(std::floor(d * static_cast<double>(n) + 1e-9));
      std::vector<std::size_t> order(n);
      std::iota(order.begin(), order.end(), std::size_t{0});
      std::stable_sort(order.begin(), order.end(),
                       [&](auto x, auto y) { return std::abs(vals[x]) > std::abs(vals[y]); });
      std::vector<bool> kept(n, false);
      for (std::size_t i = 0; i < k; ++i) kept[order[i]] = true;
      // α in closed form: the mean |v| over each row's (or the tensor's) kept entries.
      const std::size_t rows = per_row ? 13 : 1, per = n / rows;
      std::vector<double> alpha(rows);
      for (std::size_t r = 0; r < rows; ++r) {
        double sum = 0;
        std::size_t c = 0;
        for (std::size_t i = r * per; i < (r + 1) * per; ++i)
          if (kept[i]) sum += std::abs(vals[i]), ++c;
        alpha[r] = c ? sum / static_cast<double>(c) : 0.0;
      }
      const auto got_alpha = to_f64_vector(m.alpha().view());
      REQUIRE(got_alpha.size() == rows);
      for (std::size_t r = 0; r < rows; ++r) CHECK(got_alpha[r] == doctest::Approx(alpha[r]).epsilon(1e-6));
      const auto rec = module_dense(m);
      bool ok = true;
      for (std::size_t i = 0; i < n; ++i) {
        const double want = kept[i] ? std::copysign(alpha[per_row ? i / per : 0], vals[i]) : 0.0;
        ok = ok && std::abs(rec[i] - want) <= 1e-6 * std::abs(want);
      }
      CHECK(ok);
      // The closed form is the minimizer: nudging α either way raises the error.
      auto err = [&](double scale) {
        double e = 0;
        for (std::size_t i = 0; i < n; ++i) e += std::pow(vals[i] - scale * rec[i], 2);
        return e;
      };
      CHECK(err(1.0) < err(1.01));
      CHECK(err(1.0) < err(0.99));
      CHECK(m.nbytes() == (d < 1.0 ? 2u : 1u) * ((n + 7) / 8) + 4 * rows);
    }
}

TEST_CASE("a storage budget: bytes within the budget, kinds and ranks chosen per tensor and task, errors measured") {
  const SmallModel sm = small_model(31, 3);
  TwinBuildOptions o;
  o.exclude = {"head\\..*"};
  const auto ta = TaskArithmetic{0.3, {}};
  const std::span<const StateDict> ex(sm.experts);
  double prev_err = INFINITY;
  for (const double fraction : {0.01, 0.03, 0.1, 0.3}) {
    CAPTURE(fraction);
    BudgetOptions b;
    b.fraction = fraction;
    BudgetReport rep;
    const TwinModel m = build_within_budget(sm.base, ex, ta, b, o, &rep);
    const StorageReport st = m.storage();
    const double limit = fraction * static_cast<double>(st.dense_experts_bytes);
    CHECK(rep.limit == doctest::Approx(limit));
    // The file's bytes are the allocation's, within the budget, and short of
    // it by less than the smallest step left untaken.
    CHECK(static_cast<double>(st.exclusive_bytes) == rep.used);
    CHECK(rep.used <= limit);
    if (rep.smallest_skipped > 0) CHECK(limit - rep.used < rep.smallest_skipped);
    CHECK(m.metadata().at("compressor") == "budget");
    // Recorded errors are the modules' own, against v = θ_t − θ* in double.
    double err = 0;
    for (const auto& e : m.entries()) {
      if (e.excluded) continue;
      const auto star = to_f64_vector(m.shared().at(e.name).view());
      for (std::size_t t = 0; t < 3; ++t) {
        const auto theta = to_f64_vector(sm.experts[t].at(e.name).view());
        const auto rec = module_dense(e.modules[t]);
        double ref = 0;
        for (std::size_t i = 0; i < rec.size(); ++i) ref += std::pow(theta[i] - star[i] - rec[i], 2);
        CHECK(e.error_sq[t] == doctest::Approx(ref).epsilon(1e-3).scale(1e-9));
        // The library's own reconstruction (rank-0 "nothing" modules included).
        check_close(e.modules[t].to_dense().view(), rec, 1e-5, 1e-6, e.name);
        err += e.error_sq[t];
      }
    }
    // A larger budget never leaves more error.
    CHECK(err <= prev_err * (1 + 1e-9));
    prev_err = err;
    // Against the best uniform choice that fits the same bytes (every matrix
    // at one f32 rank, vectors dense): the budget does at least as well.
    double best_uniform = INFINITY;
    for (std::int64_t r = 1; r <= 32; ++r) {
      const TwinModel u = TwinModel::build(sm.base, ex, ta, SvdCompressor::with_rank(r), o);
      if (static_cast<double>(u.storage().exclusive_bytes) > limit) break;
      double eu = 0;
      for (const auto& e : u.entries())
        for (double x : e.error_sq) eu += x;
      best_uniform = std::min(best_uniform, eu);
    }
    if (std::isfinite(best_uniform)) CHECK(err <= best_uniform);
  }
  // A tight budget picks int4 factors for the matrices (≈ 8× cheaper per
  // rank than f32), and the choice survives the model file.
  BudgetOptions tight;
  tight.fraction = 0.02;
  const TwinModel m = build_within_budget(sm.base, ex, ta, tight, o);
  bool any_q4 = false;
  for (const auto& e : m.entries())
    for (const auto& mod : e.modules) any_q4 = any_q4 || (mod.quantized() && mod.quant().bits == 4);
  CHECK(any_q4);
  // Only f32 factors offered: only low_rank (or nothing) for matrices.
  BudgetOptions f32only;
  f32only.formats = {QuantSpec{0, 64}};
  f32only.sign = false;
  const TwinModel mf = build_within_budget(sm.base, ex, ta, f32only, o);
  for (const auto& e : mf.entries())
    for (const auto& mod : e.modules) CHECK((mod.kind() == ModuleKind::low_rank || mod.kind() == ModuleKind::dense));
  BudgetOptions bad;
  bad.fraction = 0;
  CHECK_THROWS_AS(build_within_budget(sm.base, ex, ta, bad, o), argument_error);
}

TEST_CASE("non-finite deltas and bad settings throw typed errors naming the tensor") {
  std::vector<float> v(12, 1.0f);
  v[5] = NAN;
  const ConstTensorView bad(v.data(), dtype::f32, {3, 4});
  CHECK_THROWS_AS(SvdCompressor::with_rank(2).compress("enc.w", bad), numeric_error);
  // A delta in device memory is refused by every compressor before it is read.
  const std::int64_t sh[2] = {3, 4};
  const ConstTensorView gpu(v.data(), dtype::f32, sh, {}, device{device::cuda, 0});
  CHECK_THROWS_WITH_AS(SvdCompressor::with_rank(2).compress("enc.w", gpu), doctest::Contains("on CUDA device 0"),
                       argument_error);
  CHECK_THROWS_AS(MagnitudeSparsifier{0.5}.compress("enc.w", gpu), argument_error);
  CHECK_THROWS_AS((SignCompressor{0.5, true}.compress("enc.w", gpu)), argument_error);
  try {
    MagnitudeSparsifier{0.5}.compress("enc.w", bad);
    FAIL("expected numeric_error");
  } catch (const numeric_error& e) {
    CHECK(std::string(e.what()).find("enc.w") != std::string::npos);
  }
  v[5] = 0.0f;
  CHECK_THROWS_AS(SvdCompressor::with_rank(0).compress("w", bad), argument_error);
  CHECK_THROWS_AS(SvdCompressor::with_energy(1.5).compress("w", bad), argument_error);
  CHECK_THROWS_AS(MagnitudeSparsifier{-0.1}.compress("w", bad), argument_error);
  SvdCompressor q = SvdCompressor::with_rank(2);
  q.quant = QuantSpec{3, 64};
  CHECK_THROWS_AS(q.compress("w", bad), argument_error);
  q.quant = QuantSpec{4, 0};
  CHECK_THROWS_AS(q.compress("w", bad), argument_error);
  q.quant = QuantSpec{8, std::int64_t{1} << 40};  // the file stores the group size as I32
  CHECK_THROWS_AS(q.compress("w", bad), argument_error);
  // A NaN among finite values of a column is caught, not rounded to a code.
  std::vector<float> f(8, 0.5f);
  f[3] = NAN;
  CHECK_THROWS_AS(quantize_factor(f.data(), 8, 1, QuantSpec{4, 4}, "A"), numeric_error);
  // A rank above both dimensions is refused (on an empty tensor it would take no bytes).
  const std::int64_t empty_rows[2] = {0, 5};  // its matrix view is [0 x 0]
  const std::int64_t huge = std::int64_t{1} << 40;
  CHECK_THROWS_AS(ExclusiveModule::low_rank(Tensor(dtype::f32, {0, huge}), Tensor(dtype::f32, {0, huge}), empty_rows),
                  shape_error);
  CHECK(ExclusiveModule::low_rank(Tensor(dtype::f32, {0, 1}), Tensor(dtype::f32, {0, 1}), empty_rows).rank() == 1);
  const std::int64_t w[2] = {3, 5};
  CHECK_THROWS_AS(ExclusiveModule::low_rank(Tensor(dtype::f32, {3, 6}), Tensor(dtype::f32, {5, 6}), w), shape_error);
  CHECK(ExclusiveModule::low_rank(Tensor(dtype::f32, {3, 5}), Tensor(dtype::f32, {5, 5}), w).rank() == 5);
  q.quant = {};
  q.residual_density = 1.5;
  CHECK_THROWS_AS(q.compress("w", bad), argument_error);
  CHECK_THROWS_AS((SignCompressor{0.0, true}.compress("w", bad)), argument_error);
}

TEST_CASE("TwinModel::build keeps θ* from the merger and v_t = θ_t − θ* relative to θ*, not θ0") {
  const SmallModel sm = small_model(21, 3);
  const TaskArithmetic ta{0.3, {}};
  TwinBuildOptions o;
  o.task_names = {"sst2", "cola", "rte"};
  o.exclude = {"head\\..*"};
  std::vector<std::string> seen;
  o.progress = [&](const BuildProgress& p) {
    if (p.stage == "compress") seen.emplace_back(p.tensor);
  };
  const TwinModel model = TwinModel::build(sm.base, std::span<const StateDict>(sm.experts), ta, DenseCompressor{}, o);
  CHECK(model.task_names() == o.task_names);
  CHECK(seen == sm.base.names());
  CHECK(model.metadata().at("merge_method") == "task_arithmetic");
  CHECK(model.metadata().at("compressor") == "dense");
  CHECK_FALSE(model.shared().contains("head.w"));
  CHECK(model.is_excluded("head.w"));
  for (const auto& [name, b] : sm.base) {
    const auto bv = to_f64_vector(b.view());
    if (name == "head.w") {
      for (std::size_t t = 0; t < 3; ++t) CHECK(same_bits(model.at(name).copies[t], sm.experts[t].at(name)));
      continue;
    }
    // θ* = θ0 + 0.3 Σ τ_t, in double
    std::vector<double> star(bv);
    for (const auto& ex : sm.experts) {
      const auto ev = to_f64_vector(ex.at(name).view());
      for (std::size_t i = 0; i < star.size(); ++i) star[i] += 0.3 * (ev[i] - bv[i]);
    }
    check_close(model.shared().at(name).view(), star, 1e-5, 1e-6, name + " θ*");
    const auto stored = to_f64_vector(model.shared().at(name).view());
    for (std::size_t t = 0; t < 3; ++t) {
      const auto ev = to_f64_vector(sm.experts[t].at(name).view());
      std::vector<double> v(ev.size());
      for (std::size_t i = 0; i < v.size(); ++i) v[i] = ev[i] - stored[i];
      check_close(model.module(name, t).to_dense().view(), v, 1e-6, 1e-7, name + " v_t");
      CHECK(model.relative_error(name, t) < 1e-6);
    }
  }
}

TEST_CASE("TwinModel reports storage against T dense experts and the relative compression error") {
  const SmallModel sm = small_model(22, 4);
  TwinBuildOptions o;
  o.exclude = {"head\\..*"};
  const SvdCompressor svd = SvdCompressor::with_rank(2, dtype::bf16);
  const TwinModel model =
      TwinModel::build(sm.base, std::span<const StateDict>(sm.experts), AnyMerger::from_settings({}), svd, o);
  CHECK(model.task_names() == std::vector<std::string>{"task0", "task1", "task2", "task3"});
  const StorageReport r = model.storage();
  CHECK(r.dense_experts_bytes == 4 * sm.base.nbytes());
  CHECK(r.excluded_bytes == 4 * 5 * 32 * 4);
  CHECK(r.shared_bytes == sm.base.nbytes() - 5 * 32 * 4);
  // per task, all in bf16: A,B of rank 2 for the three matrices, dense vectors
  const std::size_t per_task = 2 * 2 * ((48 + 32) + (32 + 48) + (8 + 27)) + 2 * (48 + 32);
  CHECK(r.exclusive_bytes == 4 * per_task);
  CHECK(r.total() == r.shared_bytes + r.exclusive_bytes + r.excluded_bytes);
  CHECK(r.ratio() < 0.5);

  // errors against a reference computed from the stored parts
  double num = 0.0, den = 0.0;
  for (const auto& e : model.entries()) {
    if (e.excluded) continue;
    const auto stored = to_f64_vector(model.shared().at(e.name).view());
    for (std::size_t t = 0; t < 4; ++t) {
      const auto ev = to_f64_vector(sm.experts[t].at(e.name).view());
      const auto rec = module_dense(e.modules[t]);
      double d2 = 0.0, e2 = 0.0;
      for (std::size_t i = 0; i < ev.size(); ++i) {
        const double v = ev[i] - stored[i];
        d2 += v * v;
        e2 += (v - rec[i]) * (v - rec[i]);
      }
      CHECK(model.relative_error(e.name, t) == doctest::Approx(std::sqrt(e2 / d2)).epsilon(1e-3));
      num += e2, den += d2;
    }
  }
  CHECK(model.relative_error() == doctest::Approx(std::sqrt(num / den)).epsilon(1e-3));
  CHECK(model.relative_error("layer.0.attn.w", 0) > 0.01);               // rank 2 of a rank-3 delta
  CHECK(model.relative_error("layer.0.norm", 0) < std::ldexp(1.0, -8));  // vectors: dense, bf16 rounding only
}

TEST_CASE("TwinModel::build rejects mismatched task names and reports unknown tensors by name") {
  const SmallModel sm = small_model(23, 2);
  TwinBuildOptions o;
  o.task_names = {"a"};
  CHECK_THROWS_AS(
      TwinModel::build(sm.base, std::span<const StateDict>(sm.experts), TaskArithmetic{}, DenseCompressor{}, o),
      argument_error);
  o.task_names = {"a", "a"};
  CHECK_THROWS_AS(
      TwinModel::build(sm.base, std::span<const StateDict>(sm.experts), TaskArithmetic{}, DenseCompressor{}, o),
      argument_error);
  const TwinModel m =
      TwinModel::build(sm.base, std::span<const StateDict>(sm.experts), TaskArithmetic{}, DenseCompressor{});
  try {
    (void)m.at("nope.w");
    FAIL("expected name_error");
  } catch (const name_error& e) {
    CHECK(std::string(e.what()).find("nope.w") != std::string::npos);
  }
}
