// mergekit's strategies (linear, breadcrumbs_ties, della, della_linear, sce,
// ram, ramplus_tl, nuslerp, multislerp, karcher, arcee_fusion, passthrough)
// against double-precision references written here from
// docs/mergekit_methods.md, literally (full vectors, plain loops, sorts),
// hand-worked cases, masks recorded from PyTorch, and the distributions of
// the randomized methods.
#include <algorithm>
#include <bit>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <type_traits>

#include "test_support.hpp"

using namespace twin;
using twin_test::check_close;
using twin_test::perturbed;
using twin_test::random_tensor;
using twin_test::same_bits;

namespace {

using Vec = std::vector<double>;

Tensor f32_tensor(std::vector<float> v, std::vector<std::int64_t> shape) {
  return Tensor::from_f32(std::span<const float>(v), std::span<const std::int64_t>(shape));
}

Tensor merged(const AnyMerger& m, const Tensor& base, const std::vector<const Tensor*>& experts,
              std::string_view name = "w") {
  std::vector<ConstTensorView> ev;
  for (const Tensor* e : experts) ev.push_back(e->view());
  return twin::merge_tensor(m, name, base.view(), ev);
}

Vec vec(const Tensor& t) { return to_f64_vector(t.view()); }

// τ = expert − base, rounded to f32 as the strategies form it.
Vec tau_of(const Tensor& e, const Tensor& b) {
  const Vec ev = vec(e), bv = vec(b);
  Vec t(ev.size());
  for (std::size_t i = 0; i < t.size(); ++i)
    t[i] = static_cast<float>(static_cast<float>(ev[i]) - static_cast<float>(bv[i]));
  return t;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (std::size_t j = 0; j < a.size(); ++j) s += a[j] * b[j];
  return s;
}
double norm(const Vec& a) { return std::sqrt(dot(a, a)); }

// Ranks of |v| in decreasing order, the lower index first among equals.
std::vector<std::size_t> by_magnitude(const Vec& v) {
  std::vector<std::size_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](std::size_t a, std::size_t b) { return std::abs(v[a]) > std::abs(v[b]); });
  return idx;
}

// Over rows of C entries of τ: how many entries j disagree between kept(j)
// and DELLA's documented draw, draws.uniform(j) < p(r), r the entry's
// ascending-magnitude rank in its row and p(r) = (d − ε) + 2ε·r/(C − 1)
// formed in f32 as mergekit forms it.
template <class Kept>
std::size_t della_draw_mismatches(const Vec& t, std::int64_t C, double d, double eps, const twin::Philox& draws,
                                  Kept&& kept) {
  std::size_t mismatched = 0;
  for (std::int64_t r = 0; r < static_cast<std::int64_t>(t.size()) / C; ++r) {
    Vec row(t.begin() + r * C, t.begin() + (r + 1) * C);
    auto order = by_magnitude(row);
    std::reverse(order.begin(), order.end());  // ascending
    for (std::int64_t k = 0; k < C; ++k) {
      const std::size_t j = static_cast<std::size_t>(r * C) + order[static_cast<std::size_t>(k)];
      const float rn = std::clamp(static_cast<float>(k) / static_cast<float>(C - 1), 0.0f, 1.0f);
      const float p = static_cast<float>(d - eps) + rn * 2.0f * static_cast<float>(eps);
      mismatched += (draws.uniform(j) < p) != kept(j);
    }
  }
  return mismatched;
}

// mergekit's counts: Python's int(f * n) truncates the double product.
std::int64_t python_int_count(double f, std::size_t n) { return static_cast<std::int64_t>(f * static_cast<double>(n)); }
// sce's: int(count_nonzero(var) * f), a 0-d int64 tensor times a Python float,
// which torch promotes to float32 (both factors and the product rounded).
std::int64_t torch_f32_count(double f, std::size_t n) {
  return static_cast<std::int64_t>(static_cast<float>(static_cast<float>(n) * static_cast<float>(f)));
}

// mergekit's GTA combination (§8) of sparsified task vectors.
Vec ref_gta(const Vec& base, const std::vector<Vec>& d, const Vec& w, bool consensus, bool normalize, double lambda) {
  Vec out(base.size());
  for (std::size_t j = 0; j < base.size(); ++j) {
    double s = 0, m = 0, div = 0;
    for (std::size_t i = 0; i < d.size(); ++i) s += w[i] * d[i][j];
    for (std::size_t i = 0; i < d.size(); ++i) {
      const double D = w[i] * d[i][j];
      const bool keep = !consensus || (s >= 0 ? D > 0 : D < 0);
      if (keep) m += D, div += w[i];
    }
    if (!consensus) {
      div = std::accumulate(w.begin(), w.end(), 0.0);
      if (std::abs(div) < 1e-8) div = 1;
    }
    if (div == 0) div = 1;
    if (normalize) m /= div;
    out[j] = base[j] + lambda * m;
  }
  return out;
}

AnyMerger by_settings(const std::string& method, const std::function<void(MergeSettings&)>& set = {}) {
  MergeSettings s;
  s.method = method;
  if (set) set(s);
  return AnyMerger::from_settings(s);
}

struct Fixture {
  Tensor base;
  std::vector<Tensor> experts;
  std::vector<const Tensor*> ptrs() const {
    std::vector<const Tensor*> p;
    for (const Tensor& e : experts) p.push_back(&e);
    return p;
  }
};

Fixture fixture(std::uint64_t seed, std::vector<std::int64_t> shape, int T, double spread = 0.05) {
  std::mt19937_64 rng(seed);
  Fixture f{random_tensor(rng, dtype::f32, shape, 0.0, 1.0), {}};
  for (int i = 0; i < T; ++i) f.experts.push_back(perturbed(rng, f.base, spread));
  return f;
}

}  // namespace

TEST_CASE("linear: weighted sum, divided by the weight sum when normalize, the base averaged in by base_weight") {
  const Tensor b = f32_tensor({1, 2}, {2}), e1 = f32_tensor({3, 4}, {2}), e2 = f32_tensor({5, -2}, {2});
  // 0.25·[3,4] + 0.75·[5,−2] = [4.5, −0.5]; unnormalized with weights 1, 2: [13, 0].
  check_close(merged(by_settings("linear",
                                 [](auto& s) {
                                   s.weights = {0.25, 0.75};
                                 }),
                     b, {&e1, &e2})
                  .view(),
              {4.5, -0.5}, 1e-7, 0);
  check_close(merged(by_settings("linear",
                                 [](auto& s) {
                                   s.weights = {1, 2};
                                   s.normalize = false;
                                 }),
                     b, {&e1, &e2})
                  .view(),
              {13, 0}, 1e-7, 0);
  // The base with weight 2: (1·[3,4] + 1·[5,−2] + 2·[1,2]) / 4 = [2.5, 1.5].
  check_close(merged(by_settings("linear", [](auto& s) { s.base_weight = 2.0; }), b, {&e1, &e2}).view(), {2.5, 1.5},
              1e-7, 0);
  CHECK_THROWS_AS(merged(by_settings("linear", [](auto& s) { s.weights = {1, -1}; }), b, {&e1, &e2}), argument_error);
  CHECK(by_settings("linear").name() == "linear");
}

TEST_CASE("passthrough: the one model's tensor, times scale when set; two models are refused") {
  const Tensor b = f32_tensor({1, 2}, {2}), e = f32_tensor({3, -4}, {2});
  CHECK(same_bits(merged(by_settings("passthrough"), b, {&e}), e));
  check_close(merged(by_settings("passthrough", [](auto& s) { s.scale = 0.5; }), b, {&e}).view(), {1.5, -2}, 0, 0);
  CHECK_THROWS_AS(merged(by_settings("passthrough"), b, {&e, &e}), argument_error);
}

namespace {

// Each expert's δ with breadcrumbs' band applied, by a full sort: ranks
// [top, top + keep) by decreasing |δ| (lower index first among equals) are
// kept, keep = int(d·n), top = min(int(γ·n), n − keep); γ = 0 is
// mergekit's magnitude sparsifier.
std::vector<Vec> banded_taus(const Fixture& f, const Vec& dens, double gamma) {
  std::vector<Vec> d;
  for (std::size_t i = 0; i < f.experts.size(); ++i) {
    const Vec t = tau_of(f.experts[i], f.base);
    const std::size_t n = t.size();
    const std::int64_t keep = python_int_count(dens[i], n);
    const std::int64_t top = std::min<std::int64_t>(python_int_count(gamma, n), static_cast<std::int64_t>(n) - keep);
    const auto order = by_magnitude(t);
    Vec s(n, 0.0);
    for (std::int64_t r = top; r < top + keep; ++r)
      s[order[static_cast<std::size_t>(r)]] = t[order[static_cast<std::size_t>(r)]];
    d.push_back(s);
  }
  return d;
}

}  // namespace

TEST_CASE("breadcrumbs and breadcrumbs_ties equal mergekit's magnitude_outliers + GTA, per-expert densities") {
  const Fixture f = fixture(21, {40, 50}, 3);
  const Vec base = vec(f.base);
  const Vec dens = {0.5, 0.7, 0.9}, w = {1.0, 0.5, -0.25};
  const double gamma = 0.05;
  const std::vector<Vec> d = banded_taus(f, dens, gamma);
  for (bool consensus : {false, true})
    for (bool normalize : {false, true}) {
      CAPTURE(consensus);
      CAPTURE(normalize);
      const AnyMerger m = by_settings(consensus ? "breadcrumbs_ties" : "breadcrumbs", [&](MergeSettings& s) {
        s.densities = dens;
        s.gamma = gamma;
        s.weights = w;
        s.scaling = 0.8;
        s.normalize = normalize;
      });
      check_close(merged(m, f.base, f.ptrs()).view(), ref_gta(base, d, w, consensus, normalize, 0.8), 1e-5, 1e-6);
    }
}

TEST_CASE("breadcrumbs: density 1 keeps the task vector; density + gamma > 1 drops fewer outliers to keep density") {
  const Tensor b = f32_tensor({0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, {10});
  const Tensor e = f32_tensor({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, {10});
  const auto bc = [](double d, double g) {
    return by_settings("breadcrumbs", [=](MergeSettings& s) {
      s.density = d;
      s.gamma = g;
    });
  };
  CHECK(same_bits(merged(bc(1.0, 0.3), b, {&e}), e));
  // keep 8, top 3 → only 2 outliers dropped: [1..8] survive.
  check_close(merged(bc(0.8, 0.3), b, {&e}).view(), {1, 2, 3, 4, 5, 6, 7, 8, 0, 0}, 0, 0);
  // keep 5, top 2: ranks 3..7 by decreasing magnitude → 4..8.
  check_close(merged(bc(0.5, 0.2), b, {&e}).view(), {0, 0, 0, 4, 5, 6, 7, 8, 0, 0}, 0, 0);
}

TEST_CASE("streamed magnitude bands: past one merge block, ties split across blocks, f32 and bf16 storage") {
  // Tensors of 75 000 entries take the sampled-window path (past 16 384) over two merge blocks (65 536). On the
  // 1/64 grid every |δ| is one of 9 values, so each band's edges fall among thousands of equal magnitudes and the
  // kept ones must be the lowest-indexed, block after block; the random fixture keeps or drops whole blocks' ties.
  std::mt19937_64 rng(57);
  std::uniform_int_distribution<int> pick(-64, 64), step(-8, 8);
  std::vector<float> b(75000);
  for (float& x : b) x = static_cast<float>(pick(rng)) / 64.0f;
  Fixture grid{f32_tensor(b, {300, 250}), {}};
  for (int i = 0; i < 3; ++i) {
    std::vector<float> e = b;
    for (float& x : e) x += static_cast<float>(step(rng)) / 64.0f;
    grid.experts.push_back(f32_tensor(e, {300, 250}));
  }
  const Fixture smooth = fixture(58, {300, 250}, 3);
  const Vec dens = {0.35, 0.6, 0.9}, w = {1.0, 0.5, -0.25};
  for (dtype t : {dtype::f32, dtype::bf16})
    for (const Fixture* f0 : std::initializer_list<const Fixture*>{&grid, &smooth}) {
      CAPTURE(std::string(dtype_name(t)));
      CAPTURE(f0 == &grid);
      Fixture f{f0->base.clone_as(t), {}};  // bf16 is exact on the grid; on the random fixture it makes more ties
      for (const Tensor& e : f0->experts) f.experts.push_back(e.clone_as(t));
      const double rel = twin_test::unit_roundoff(t) + 1e-6;  // the output is stored in the inputs' dtype
      const Vec base = vec(f.base);
      for (double gamma : {0.0, 0.03})
        for (bool consensus : {false, true}) {
          CAPTURE(gamma);
          CAPTURE(consensus);
          const std::vector<Vec> d = banded_taus(f, dens, gamma);
          GeneralizedTaskArithmetic g =
              *GeneralizedTaskArithmetic::mergekit(consensus ? "breadcrumbs_ties" : "breadcrumbs");
          if (gamma == 0.0) g.sparsifier = GtaSparsifier::magnitude;
          g.densities = dens, g.gammas = {gamma, gamma, gamma}, g.weights = w, g.scaling = 0.8;
          const Vec ref = ref_gta(base, d, w, consensus, false, 0.8);
          // f32 sums of three terms, then the output's rounding.
          check_close(merged(AnyMerger(g), f.base, f.ptrs()).view(), ref, rel, 1e-6);
          if (gamma > 0.0) {
            const AnyMerger bc = by_settings(consensus ? "breadcrumbs_ties" : "breadcrumbs", [&](MergeSettings& s) {
              s.densities = dens;
              s.gamma = gamma;
              s.weights = w;
              s.scaling = 0.8;
            });
            check_close(merged(bc, f.base, f.ptrs()).view(), ref, rel, 1e-6);
          }
        }
    }
}

TEST_CASE("della --rng torch draws torch.bernoulli's masks (recorded from PyTorch 1.13) expert after expert") {
  // torch.manual_seed(11); della_magprune probabilities of t (density 0.5, ε 0.3) as mergekit forms them;
  // torch.bernoulli(p) for expert 0 (t), then for expert 1 (−2t, the same ranks):
  const std::vector<float> t = {0.5f,  -0.1f, 0.3f,  0.9f, -0.7f, 0.2f,  0.4f, -0.6f,
                                0.05f, 1.0f,  -0.3f, 0.8f, 0.1f,  -0.2f, 0.6f};
  const std::vector<int> m0 = {1, 0, 0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0, 0, 0};
  const std::vector<int> m1 = {0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 1};
  std::vector<float> t2;
  for (float x : t) t2.push_back(-2.0f * x);
  const Tensor b = f32_tensor(std::vector<float>(15, 0.0f), {3, 5}), e0 = f32_tensor(t, {3, 5}),
               e1 = f32_tensor(t2, {3, 5});
  const AnyMerger m = by_settings("della_linear", [](MergeSettings& s) {
    s.density = 0.5;
    s.epsilon = 0.3;
    s.seed = 11;
    s.rng = RngKind::torch;
    s.rescale = false;
  });
  Vec ref(15);
  for (std::size_t j = 0; j < 15; ++j) ref[j] = m0[j] * static_cast<double>(t[j]) + m1[j] * static_cast<double>(t2[j]);
  check_close(merged(m, b, {&e0, &e1}).view(), ref, 1e-7, 0);
  // torch.manual_seed(7); torch.bernoulli(torch.full((12,), 0.5)): dare's mask, survivors × 1/density.
  const std::vector<int> dm = {0, 1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 0};
  const Tensor zb = f32_tensor(std::vector<float>(12, 0.0f), {12}),
               ones = f32_tensor(std::vector<float>(12, 1.0f), {12});
  Vec dref(12);
  for (std::size_t j = 0; j < 12; ++j) dref[j] = 2.0 * dm[j];
  check_close(merged(by_settings("dare_linear",
                                 [](MergeSettings& s) {
                                   s.density = 0.5;
                                   s.seed = 7;
                                   s.rng = RngKind::torch;
                                 }),
                     zb, {&ones})
                  .view(),
              dref, 0, 0);
}

TEST_CASE("torch.randperm's prefix (recorded from PyTorch 1.13) and the generator left where randperm leaves it") {
  // torch.manual_seed(3); torch.randperm(20)
  const std::vector<std::uint32_t> perm = {6, 12, 3, 7, 1, 5, 8, 9, 2, 17, 14, 11, 13, 19, 10, 4, 15, 0, 18, 16};
  TorchCpuGenerator g(3);
  CHECK(detail::torch_randperm_prefix(g, 20, 20) == perm);
  TorchCpuGenerator h(3);
  const auto prefix = detail::torch_randperm_prefix(h, 20, 5);
  CHECK(std::vector<std::uint32_t>(perm.begin(), perm.begin() + 5) == prefix);
  CHECK(g.randperm_step(1000003) == h.randperm_step(1000003));
}

TEST_CASE("della's rank sort (stable LSD radix) orders like std::stable_sort, ties by index") {
  // Keys differing only in their low byte, keys from a handful of values
  // (long runs of ties, where the order must stay the index order), keys
  // sharing every byte but one, and random keys; lengths 2 to 3072.
  std::mt19937_64 rng(76);
  for (const std::size_t n : {std::size_t{2}, std::size_t{50}, std::size_t{768}, std::size_t{3072}})
    for (int kind = 0; kind < 4; ++kind) {
      CAPTURE(n);
      CAPTURE(kind);
      std::vector<std::uint32_t> key(n), val(n), k2(n), v2(n);
      for (std::size_t i = 0; i < n; ++i) {
        const auto r = static_cast<std::uint32_t>(rng());
        key[i] = kind == 0   ? 0x3c000000u | (r & 0xffu)
                 : kind == 1 ? (r % 5u) << 20
                 : kind == 2 ? 0x3c00u | (r & 0xff0000u)
                             : r;
        val[i] = static_cast<std::uint32_t>(i);
      }
      std::vector<std::pair<std::uint32_t, std::uint32_t>> want(n);
      for (std::size_t i = 0; i < n; ++i) want[i] = {key[i], val[i]};
      std::stable_sort(want.begin(), want.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
      twin::detail::stable_radix_sort(key, val, k2, v2);
      std::size_t wrong = 0;
      for (std::size_t i = 0; i < n; ++i) wrong += key[i] != want[i].first || val[i] != want[i].second;
      CHECK(wrong == 0);
    }
}

TEST_CASE("della's Philox mask without a sort per vector equals the mask from exact ranks (std::stable_sort)") {
  // Rows of random magnitudes (an entry whose draw falls inside its bucket's
  // p range is ranked by counting), of a handful of values (long runs of
  // ties: the row is sorted), with 20% exact zeros, all of one magnitude, and
  // bf16 differences (ties ranked by counting);
  // lengths 2 to 5000 (more entries than buckets). The reference ranks each
  // row with std::stable_sort on |x| (ties by index), forms p(rank) in f32 as
  // mergekit does and keeps entry j iff Philox uniform(j) < p.
  std::mt19937_64 rng(91);
  const double d = 0.5, eps = 0.15;
  const twin::Philox draws(twin::random_key(3, "t", 1));
  for (const std::int64_t len : {2, 3, 50, 768, 3072, 5000})
    for (int kind = 0; kind < 5; ++kind) {
      CAPTURE(len);
      CAPTURE(kind);
      const std::int64_t rows = std::max<std::int64_t>(2, 60000 / len);
      std::normal_distribution<float> nd(0.0f, 0.02f);
      std::vector<float> x(static_cast<std::size_t>(rows * len));
      const float few[] = {0.5f, -0.25f, 0.125f, -0.5f, 1.0f};
      // kind 4: differences of bf16 values (a bf16 expert less its base): a few dozen magnitudes, each
      // tied many times, most rows ranked by counting with ties by index.
      auto bf16_diff = [&] {
        const float b = nd(rng) * 50.0f;
        return twin::bf16_to_f32(twin::f32_to_bf16(b + nd(rng))) - twin::bf16_to_f32(twin::f32_to_bf16(b));
      };
      for (float& v : x)
        v = kind == 0   ? nd(rng)
            : kind == 1 ? few[rng() % 5]
            : kind == 2 ? (rng() % 5 == 0 ? 0.0f : nd(rng))
            : kind == 3 ? (rng() % 2 ? 0.3f : -0.3f)
                        : bf16_diff();
      std::vector<float> got = x;
      twin::detail::della_mask_philox(got, len, d, eps, draws);
      std::size_t mismatched = 0, kept = 0;
      std::vector<std::size_t> order(static_cast<std::size_t>(len));
      for (std::int64_t r = 0; r < rows; ++r) {
        const float* row = x.data() + r * len;
        std::iota(order.begin(), order.end(), std::size_t{0});
        std::stable_sort(order.begin(), order.end(),
                         [&](std::size_t a, std::size_t c) { return std::abs(row[a]) < std::abs(row[c]); });
        for (std::int64_t k = 0; k < len; ++k) {
          const std::size_t j = static_cast<std::size_t>(r * len) + order[static_cast<std::size_t>(k)];
          const float rn = std::clamp(static_cast<float>(k) / static_cast<float>(len - 1), 0.0f, 1.0f);
          const float p = static_cast<float>(d - eps) + rn * 2.0f * static_cast<float>(eps);
          const float want = draws.uniform(j) < p ? x[j] : 0.0f;
          mismatched += std::bit_cast<std::uint32_t>(want) != std::bit_cast<std::uint32_t>(got[j]);
          kept += want != 0.0f;
        }
      }
      CHECK(mismatched == 0);
      CHECK(kept > 0);  // some entries kept, some dropped: the draws decide
      CHECK(kept < x.size());
    }
}

TEST_CASE("della keeps each entry with its rank's probability (Philox draws), and merges as GTA on those masks") {
  // One expert moved, the others equal to the base: della_linear without rescale returns τ·mask, so the
  // mask of expert i is read off the output. 400 rows of 50: per rank, 400 draws.
  const std::int64_t R = 400, C = 50;
  std::mt19937_64 rng(5);
  const Tensor b = random_tensor(rng, dtype::f32, {R, C});
  std::vector<Tensor> ex;
  for (int i = 0; i < 3; ++i) ex.push_back(perturbed(rng, b, 0.1));
  const double d = 0.4, eps = 0.2;
  auto settings = [&](MergeSettings& s) {
    s.density = d;
    s.epsilon = eps;
    s.seed = 9;
    s.rescale = false;
  };
  std::vector<Vec> masks;
  for (std::size_t i = 0; i < 3; ++i) {
    std::vector<const Tensor*> p = {&b, &b, &b};
    p[i] = &ex[i];
    const Vec got = vec(merged(by_settings("della_linear", settings), b, p)), bv = vec(b);
    Vec mask(got.size());
    for (std::size_t j = 0; j < got.size(); ++j) mask[j] = got[j] != bv[j] ? 1.0 : 0.0;
    masks.push_back(mask);
  }
  // Per magnitude rank r within a row: kept with p = (d − ε) + 2ε·r/(C − 1); the count over 3·R draws
  // within 5 standard deviations of its mean.
  std::vector<double> kept(static_cast<std::size_t>(C), 0.0);
  for (std::size_t i = 0; i < 3; ++i) {
    const Vec t = tau_of(ex[i], b);
    for (std::int64_t r = 0; r < R; ++r) {
      Vec row(t.begin() + r * C, t.begin() + (r + 1) * C);
      auto order = by_magnitude(row);
      std::reverse(order.begin(), order.end());  // ascending
      for (std::int64_t k = 0; k < C; ++k)
        kept[static_cast<std::size_t>(k)] +=
            masks[i][static_cast<std::size_t>(r * C) + order[static_cast<std::size_t>(k)]];
    }
  }
  for (std::int64_t k = 0; k < C; ++k) {
    const double p = (d - eps) + 2 * eps * static_cast<double>(k) / static_cast<double>(C - 1);
    const double n = 3.0 * R, sd = std::sqrt(n * p * (1 - p));
    CAPTURE(k);
    CHECK(std::abs(kept[static_cast<std::size_t>(k)] - n * p) < 5 * sd);
  }
  // And they are the documented draws: entry j of expert i kept iff
  // Philox(random_key(seed, tensor name, i)).uniform(j) < p_j, p_j formed in
  // f32 from its rank as mergekit forms it.
  std::size_t mismatched = 0;
  for (std::size_t i = 0; i < 3; ++i)
    mismatched += della_draw_mismatches(tau_of(ex[i], b), C, d, eps, twin::Philox(twin::random_key(9, "w", i)),
                                        [&](std::size_t j) { return masks[i][j] == 1.0; });
  CHECK(mismatched == 0);
  // The full della (consensus, normalize, L1 rescale) on all three experts equals GTA on those masks.
  const Vec w = {1.0, 2.0, 0.5};
  std::vector<Vec> sp;
  for (std::size_t i = 0; i < 3; ++i) {
    const Vec t = tau_of(ex[i], b);
    Vec m(t.size());
    double before = 0, after = 0;
    for (std::size_t j = 0; j < t.size(); ++j)
      m[j] = t[j] * masks[i][j], before += std::abs(t[j]), after += std::abs(m[j]);
    for (double& x : m) x *= before / after;
    sp.push_back(m);
  }
  const AnyMerger della = by_settings("della", [&](MergeSettings& s) {
    s.density = d;
    s.epsilon = eps;
    s.seed = 9;
    s.weights = w;
  });
  check_close(merged(della, b, {&ex[0], &ex[1], &ex[2]}).view(), ref_gta(vec(b), sp, w, true, true, 1.0), 1e-5, 1e-6);
  // density ± epsilon outside (0, 1) is refused.
  CHECK_THROWS_AS(merged(by_settings("della",
                                     [](MergeSettings& s) {
                                       s.density = 0.1;
                                       s.epsilon = 0.15;
                                     }),
                         b, {&ex[0]}),
                  argument_error);
}

namespace {

// The held path of a GTA merge with drawn masks (the one rng = torch, della's rank ≥ 3 tensors and rows longer
// than a merge block still take): every δ_i formed, masked in
// place (della_magprune / bernoulli_mask with Philox draws), rescaled by rescale_l1, combined by gta_merge.
Tensor held_masked_merge(const GeneralizedTaskArithmetic& g, const Tensor& b, const std::vector<Tensor>& ex) {
  std::vector<ConstTensorView> ev;
  for (const Tensor& e : ex) ev.push_back(e.view());
  Tensor out(dtype::f32, b.shape());
  const TensorMergeArgs a{"w", b.view(), ev, out.view()};
  std::vector<float> p;
  const bool della = g.sparsifier == GtaSparsifier::della_magprune;
  detail::gta_merge(a, detail::GtaRule{g.method, g.consensus, g.normalize, g.scaling, &g.weights},
                    [&](std::size_t i, std::span<float> row) {
                      const double d = g.densities[i], e = g.epsilons.empty() ? 0.15 : g.epsilons[i];
                      if (d >= 1.0) return;
                      if (della && d <= 0.0) {
                        std::fill(row.begin(), row.end(), 0.0f);
                        return;
                      }
                      const double before = g.rescale ? detail::l1_norm(row) : 0.0;
                      const Philox draws(random_key(g.seed, "w", i));
                      if (della) {
                        detail::della_magprune(row, b.shape(), d, e, RngKind::philox, draws, nullptr, p);
                      } else {
                        p.assign(row.size(), static_cast<float>(d));
                        detail::bernoulli_mask(row, p, RngKind::philox, draws, nullptr);
                      }
                      if (g.rescale) detail::rescale_l1(row, before);
                    });
  return out;
}

}  // namespace

TEST_CASE("della, della_linear and mergekit's dare streamed (δ never held) give the held path's bits") {
  // Property: the streamed merge (masks as bits, L1 sums per merge block in l1_norm's lanes) is the same
  // computation as the held one, bit for bit, for 1 and 2 threads. Shapes: rows inside one merge block
  // (50 × 768), rows across block boundaries (200 × 768, 40 × 2999: 3 and 2 blocks, a row split by each
  // boundary), rank 1 (one vector), vectors of one entry (300 × 1), and shapes where della stays held (a row
  // longer than a block: 2 × 70000; rank 3, vectors not consecutive: 6 × 50 × 4; dare streams them); f32 and
  // bf16 experts; 3 and 10
  // experts with densities ≥ 1, ≤ 0 (della) and between; per-expert weights; with and without the rescale.
  std::mt19937_64 rng(77);
  const std::vector<std::vector<std::int64_t>> shapes = {{50, 768}, {200, 768}, {40, 2999}, {5000},
                                                         {300, 1},  {2, 70000}, {6, 50, 4}};
  for (const std::string method : {"della", "della_linear", "dare_ties", "dare_linear"})
    for (const auto& shape : shapes)
      for (const std::size_t T : {std::size_t{3}, std::size_t{10}}) {
        CAPTURE(method);
        CAPTURE(shape.size());
        CAPTURE(shape[0]);
        CAPTURE(T);
        const dtype et = T == 3 ? dtype::bf16 : dtype::f32;
        const Tensor b = random_tensor(rng, et, shape);
        std::vector<Tensor> ex;
        for (std::size_t i = 0; i < T; ++i) ex.push_back(perturbed(rng, b, 0.02, et));
        GeneralizedTaskArithmetic g = *GeneralizedTaskArithmetic::mergekit(method);
        g.seed = 5 + T;
        g.scaling = 0.7;
        for (std::size_t i = 0; i < T; ++i) {
          const bool della = method.starts_with("della");
          g.densities.push_back(i == 1 ? 1.0 : i == 2 && della ? 0.0 : 0.3 + 0.05 * static_cast<double>(i % 4));
          g.epsilons.push_back(0.1 + 0.02 * static_cast<double>(i % 3));
          g.weights.push_back(0.5 + 0.25 * static_cast<double>(i % 3));
        }
        for (const bool rescale : {true, false}) {
          g.rescale = rescale;
          const Tensor want = held_masked_merge(g, b, ex);
          std::vector<ConstTensorView> ev;
          for (const Tensor& e : ex) ev.push_back(e.view());
          for (const int threads : {1, 2}) {
            set_num_threads(threads);
            Tensor got(dtype::f32, shape);
            g.merge_tensor(TensorMergeArgs{"w", b.view(), ev, got.view()});
            CHECK(same_bits(got, want));
          }
          set_num_threads(0);
        }
        // The Della strategies (AnyMerger's della / della_linear) stream the same way.
        if (method.starts_with("della")) {
          g.rescale = true;
          const Tensor want = held_masked_merge(g, b, ex);
          const AnyMerger m = by_settings(method, [&](MergeSettings& s) {
            s.densities = g.densities;
            s.epsilons = g.epsilons;
            s.weights = g.weights;
            s.seed = g.seed;
            s.scaling = g.scaling;
          });
          std::vector<ConstTensorView> ev;
          for (const Tensor& e : ex) ev.push_back(e.view());
          Tensor got(dtype::f32, shape);
          m.merge_tensor(TensorMergeArgs{"w", b.view(), ev, got.view()});
          CHECK(same_bits(got, want));
        }
      }
}

TEST_CASE("streamed masks keep the held path's bits where the L1 rescale is NaN or infinite") {
  // Property: a NaN or infinite δ entry, or a finite one so large that Σ|δ|/Σ|kept δ| overflows f32 once it is
  // dropped, makes the rescale factor NaN or ∞; the held path multiplies the masked row by it, so its dropped
  // entries become +0·factor = NaN (as mergekit's res·(before/after)). The streamed path must give the same bits.
  std::mt19937_64 rng(19);
  const std::int64_t R = 8, C = 768;
  for (const std::string method : {"della", "della_linear", "dare_ties", "dare_linear"})
    for (const float odd : {std::nanf(""), std::numeric_limits<float>::infinity(), 3e38f}) {
      CAPTURE(method);
      CAPTURE(odd);
      // The huge value over a zero base and experts within 1e-6 of it, the others over random ones.
      const Tensor b = odd == 3e38f ? f32_tensor(std::vector<float>(R * C, 0.0f), {R, C})
                                    : random_tensor(rng, dtype::f32, {R, C});
      std::vector<Tensor> ex;
      for (int i = 0; i < 3; ++i) ex.push_back(perturbed(rng, b, odd == 3e38f ? 1e-6 : 0.02));
      // At an entry that expert 0's draw drops under either rule (u ≥ 0.6, della's p for its largest
      // magnitude): a dropped huge entry is what makes Σ|δ|/Σ|kept δ| overflow.
      const twin::Philox draws(twin::random_key(3, "w", 0));
      std::size_t at = 100;
      while (draws.uniform(at) < 0.6f) ++at;
      static_cast<float*>(ex[0].mutable_data())[at] = odd;
      GeneralizedTaskArithmetic g = *GeneralizedTaskArithmetic::mergekit(method);
      g.densities = {0.5, 0.4, 0.6};
      g.epsilons = {0.1, 0.1, 0.1};
      g.seed = 3;
      g.rescale = true;
      const Tensor want = held_masked_merge(g, b, ex);
      std::vector<ConstTensorView> ev;
      for (const Tensor& e : ex) ev.push_back(e.view());
      Tensor got(dtype::f32, {R, C});
      g.merge_tensor(TensorMergeArgs{"w", b.view(), ev, got.view()});
      CHECK(same_bits(got, want));
      // The case is the one meant: expert 0's factor poisons its dropped entries, which a plain sum keeps
      // (the sign election of della / dare_ties leaves NaNs out).
      std::size_t nans = 0;
      for (const float v : got.values<float>()) nans += std::isnan(v);
      if (!g.consensus) CHECK(nans > 0);
    }
}

TEST_CASE("della with a negative epsilon keeps the larger magnitudes less often, as its formula says") {
  // mergekit takes ε < 0: p(r) = (d − ε) + 2ε·r/(len − 1) then falls with the magnitude rank r. The mask (one
  // expert moved, no rescale: the output's changed entries) must be exactly the draws u_j < p(rank of j), p
  // formed in f32 as mergekit forms it; a mask that assumed p rising (the bucket bounds) would differ.
  std::mt19937_64 rng(23);
  const std::int64_t R = 40, C = 50;
  const Tensor b = random_tensor(rng, dtype::f32, {R, C});
  const Tensor e = perturbed(rng, b, 0.1);
  const double d = 0.5, eps = -0.2;
  const Vec got = vec(merged(by_settings("della_linear",
                                         [&](MergeSettings& s) {
                                           s.density = d;
                                           s.epsilon = eps;
                                           s.seed = 4;
                                           s.rescale = false;
                                         }),
                             b, {&e, &b}));
  const Vec bv = vec(b), t = tau_of(e, b);
  CHECK(della_draw_mismatches(t, C, d, eps, twin::Philox(twin::random_key(4, "w", 0)),
                              [&](std::size_t j) { return got[j] != bv[j]; }) == 0);
}

TEST_CASE("della merges tensors with no entries (an axis of length 0) to empty outputs") {
  // Property: shapes [5, 0], [0, 768] and [5, 0, 3] merge without reading anything, for both draws.
  for (const auto& shape : {std::vector<std::int64_t>{5, 0}, {0, 768}, {5, 0, 3}})
    for (const RngKind kind : {RngKind::philox, RngKind::torch}) {
      CAPTURE(shape.size());
      const Tensor b(dtype::f32, std::span<const std::int64_t>(shape)),
          e(dtype::f32, std::span<const std::int64_t>(shape));
      const Tensor out = merged(by_settings("della",
                                            [&](MergeSettings& s) {
                                              s.density = 0.5;
                                              s.rng = kind;
                                            }),
                                b, {&e, &e});
      CHECK(out.numel() == 0);
      CHECK(std::equal(out.shape().begin(), out.shape().end(), shape.begin(), shape.end()));
    }
}

TEST_CASE("kept counts as mergekit computes them: int() of the double product; sce's product in float32") {
  // A ramp of distinct magnitudes (j + 1)/1024 over a zero base: a magnitude cut keeps the last k entries,
  // so the count of nonzero outputs is k. Lengths 100 (held, sorted) and 25 000 / 30 000 (past 16 384: the
  // streamed cuts) take both paths.
  auto ramp = [](std::size_t n) {
    std::vector<float> v(n);
    for (std::size_t j = 0; j < n; ++j) v[j] = static_cast<float>(j + 1) / 1024.0f;
    return f32_tensor(v, {static_cast<std::int64_t>(n)});
  };
  auto nonzeros = [](const Tensor& t) {
    const Vec v = vec(t);
    return std::count_if(v.begin(), v.end(), [](double x) { return x != 0.0; });
  };
  auto zeros = [](std::size_t n) { return f32_tensor(std::vector<float>(n, 0.0f), {static_cast<std::int64_t>(n)}); };
  // 0.29 · 100 = 28.999999999999996 and 0.29 · 25000 = 7249.999999999999 in double: 28 and 7249 kept (twin's
  // own Ties keeps 29 and 7250 there: its floor is nudged).
  for (const auto& [n, k] : {std::pair<std::size_t, std::int64_t>{100, 28}, {25000, 7249}}) {
    CAPTURE(n);
    const Tensor b = zeros(n), e = ramp(n);
    GeneralizedTaskArithmetic ties = *GeneralizedTaskArithmetic::mergekit("ties");
    ties.densities = {0.29};
    CHECK(nonzeros(merged(AnyMerger(ties), b, {&e})) == k);
    // breadcrumbs at γ 0.01 drops int(0.01 · n) = 1 and 250 outliers (exact products) and keeps the same count.
    CHECK(nonzeros(merged(by_settings("breadcrumbs",
                                      [](MergeSettings& s) {
                                        s.density = 0.29;
                                        s.gamma = 0.01;
                                      }),
                          b, {&e})) == k);
    CHECK(nonzeros(merged(AnyMerger(Ties{0.29, 1.0, TopKScope::per_tensor, {}}), b, {&e})) == k + 1);
  }
  // sce: two experts, the ramp and zero, so every position has a distinct nonzero variance (x/2)² and the
  // kept positions are exactly the nonzero outputs. 0.13 is 0.12999999523162842 in float; 900 · that is
  // 116.99999237060547 in float (116 kept; 117.00000000000001 in double), 30 000 · that 3899.999755859375
  // (3899 kept; 3900 in double).
  for (const auto& [n, k] : {std::pair<std::size_t, std::int64_t>{900, 116}, {30000, 3899}}) {
    CAPTURE(n);
    const Tensor b = zeros(n), e = ramp(n), z = zeros(n);
    CHECK(nonzeros(merged(by_settings("sce", [](MergeSettings& s) { s.select_topk = 0.13; }), b, {&e, &z})) == k);
  }
}

TEST_CASE("sce: variance top-k, sign erase, mean-square weights, as a literal double-precision reference") {
  // 1200 entries: whole vectors of 8 and 16 positions; 1189: the last chunk
  // (165 entries) ends in a partial vector (the kernels' scalar tails). The
  // third case has 4 experts whose values are multiples of 1/8 around a
  // base of multiples of 1/8: every variance is exact and takes few values,
  // so the top-k cut falls among many equal variances and keeps the
  // lowest-indexed of them (the cut applied in index order). The last three
  // are past the selection's small size, where the first pass also scans
  // the variances against a sampled window and sums the kept τ²: 3 experts
  // (kernels for a fixed count), 9 (the general ones), and the equal
  // variances again (the quota of ties at the cut taken in index order by
  // those sums).
  struct Case {
    std::uint64_t seed;
    std::vector<std::int64_t> shape;
    int experts;
    bool quantized;
  };
  for (const Case& cs : {Case{31, {30, 40}, 3, false}, Case{32, {29, 41}, 3, false}, Case{33, {29, 41}, 4, true},
                         Case{34, {150, 200}, 3, false}, Case{35, {150, 201}, 9, false}, Case{36, {150, 200}, 4, true}})
    for (double topk : {1.0, 0.3}) {
      Fixture f = fixture(cs.seed, cs.shape, cs.experts);
      if (cs.quantized) {
        const Vec b = vec(f.base);
        std::vector<float> bq(b.size());
        for (std::size_t j = 0; j < b.size(); ++j) bq[j] = static_cast<float>(std::round(b[j] * 8.0) / 8.0);
        for (Tensor& e : f.experts) {
          const Vec x = vec(e);
          std::vector<float> xq(b.size());
          for (std::size_t j = 0; j < b.size(); ++j)
            xq[j] = bq[j] + static_cast<float>(std::round((x[j] - b[j]) / 0.05) / 8.0);
          e = f32_tensor(xq, cs.shape);
        }
        f.base = f32_tensor(bq, cs.shape);
      }
      const Vec base = vec(f.base);
      const std::size_t n = base.size(), N = static_cast<std::size_t>(cs.experts);
      CAPTURE(n);
      CAPTURE(topk);
      std::vector<Vec> T;
      for (std::size_t i = 0; i < N; ++i) T.push_back(tau_of(f.experts[i], f.base));
      if (topk < 1) {
        Vec var(n);
        std::size_t nz = 0;
        for (std::size_t j = 0; j < n; ++j) {
          double m = 0, v = 0;
          for (std::size_t i = 0; i < N; ++i) m += T[i][j] / N;
          for (std::size_t i = 0; i < N; ++i) v += (T[i][j] - m) * (T[i][j] - m) / N;
          var[j] = static_cast<float>(v);
          nz += var[j] != 0;
        }
        const auto order = by_magnitude(var);
        std::vector<char> keep(n, 0);
        const std::int64_t k = torch_f32_count(topk, nz);
        for (std::int64_t r = 0; r < k; ++r) keep[order[static_cast<std::size_t>(r)]] = 1;
        if (cs.quantized)  // the case is what it says: the cut splits a run of equal variances
          CHECK(var[order[static_cast<std::size_t>(k)]] == var[order[static_cast<std::size_t>(k - 1)]]);
        for (auto& t : T)
          for (std::size_t j = 0; j < n; ++j)
            if (!keep[j]) t[j] = 0;
      }
      Vec s(N);
      for (std::size_t i = 0; i < N; ++i) s[i] = dot(T[i], T[i]) / static_cast<double>(n);
      const double ss = std::accumulate(s.begin(), s.end(), 0.0);
      for (double& x : s) x = std::abs(ss) < 1e-6 ? 1.0 / N : x / ss;
      Vec ref(n);
      for (std::size_t j = 0; j < n; ++j) {
        double sum = 0, m = 0, den = 0;
        for (std::size_t i = 0; i < N; ++i) sum += T[i][j];
        for (std::size_t i = 0; i < N; ++i)
          if (sum >= 0 ? T[i][j] > 0 : T[i][j] < 0) m += s[i] * T[i][j], den += s[i];
        ref[j] = base[j] + m / std::max(den, 1e-6);
      }
      check_close(
          merged(by_settings("sce", [&](MergeSettings& st) { st.select_topk = topk; }), f.base, f.ptrs()).view(), ref,
          1e-5, 1e-6);
    }
}

TEST_CASE("ram and ramplus_tl: hand-worked counts, unique values kept (scaled by λ), shared values averaged") {
  // base 0; τ0 = [1, 0, 2, 1e-6], τ1 = [3, 0, 0, 0.5]: contributors c = [2, 0, 1, 1].
  const Tensor b = f32_tensor({0, 0, 0, 0}, {4});
  const Tensor e0 = f32_tensor({1, 0, 2, 1e-6f}, {4}), e1 = f32_tensor({3, 0, 0, 0.5f}, {4});
  // ram: [mean(1, 3), 0, 2, 0.5].
  check_close(merged(by_settings("ram"), b, {&e0, &e1}).view(), {2, 0, 2, 0.5}, 1e-7, 0);
  // ramplus_tl: expert 0 shared 1, unique 1 → ρ 1 → λ0 = 1 + 0.1·min(1, 0.2) = 1.02; expert 1 the same.
  check_close(merged(by_settings("ramplus_tl"), b, {&e0, &e1}).view(), {2, 0, 2.04, 0.51}, 1e-6, 0);
  // With epsilon 1.5 only 2 and 3 contribute: [3, 0, 2, 0]; expert 1 has no shared entry → λ1 = 1.
  check_close(merged(by_settings("ram", [](MergeSettings& s) { s.epsilon = 1.5; }), b, {&e0, &e1}).view(), {3, 0, 2, 0},
              0, 0);
}

TEST_CASE("ram and ramplus_tl equal a literal reference on random tensors with sparse task vectors, f32 and bf16") {
  // bf16 storage runs the experts' in-place reads (merge_chunks_by_expert)
  // and, for ramplus_tl, an output stored from f32 scratch; the reference
  // takes the stored values, and the output is rounded once. The second
  // shape spans two merge blocks and moves every entry of its first 40000
  // in all experts: chunks where no expert moves an entry alone, which
  // ramplus_tl's second pass skips (f32) or only stores (bf16).
  for (const auto& [N, dense] : {std::pair<std::size_t, std::size_t>{2000, 0}, {66000, 40000}}) {
    CAPTURE(N);
    std::mt19937_64 rng(4);
    const Tensor b32 = random_tensor(rng, dtype::f32, {static_cast<std::int64_t>(N)});
    std::vector<Tensor> ex32;
    std::bernoulli_distribution moved(0.4);
    std::normal_distribution<float> nd(0.0f, 0.01f);
    for (int i = 0; i < 3; ++i) {
      std::vector<float> v;
      for (double x : vec(b32))
        v.push_back(static_cast<float>(x) + (v.size() < dense ? 0.01f + std::abs(nd(rng))
                                             : moved(rng)     ? nd(rng)
                                                              : 0.0f));
      ex32.push_back(f32_tensor(v, {static_cast<std::int64_t>(N)}));
    }
    for (dtype dt : {dtype::f32, dtype::bf16}) {
      CAPTURE(std::string(dtype_name(dt)));
      const Tensor b = b32.clone_as(dt);
      std::vector<Tensor> ex;
      for (const Tensor& e : ex32) ex.push_back(e.clone_as(dt));
      const Vec bv = vec(b);
      const double eps = 1e-3, r = 0.3, alpha = 0.5;
      std::vector<Vec> T;
      for (const Tensor& e : ex) T.push_back(tau_of(e, b));
      std::vector<int> c(N, 0);
      for (const Vec& t : T)
        for (std::size_t j = 0; j < N; ++j) c[j] += std::abs(t[j]) > eps;
      Vec lambda(3);
      for (std::size_t i = 0; i < 3; ++i) {
        double sh = 0, un = 0;
        for (std::size_t j = 0; j < N; ++j)
          if (std::abs(T[i][j]) > eps) (c[j] > 1 ? sh : un) += 1;
        lambda[i] = 1 + r * std::clamp(sh / std::max(un, eps), 0.0, alpha);
      }
      for (bool plus : {false, true}) {
        Vec ref(N);
        for (std::size_t j = 0; j < N; ++j) {
          double m = 0;
          for (std::size_t i = 0; i < 3; ++i)
            if (std::abs(T[i][j]) > eps) m += c[j] == 1 ? T[i][j] * (plus ? lambda[i] : 1.0) : T[i][j] / c[j];
          ref[j] = bv[j] + m;
        }
        const AnyMerger m = by_settings(plus ? "ramplus_tl" : "ram", [&](MergeSettings& s) {
          s.epsilon = eps;
          if (plus) s.r = r, s.alpha = alpha;
        });
        const Tensor out = merged(m, b, {&ex[0], &ex[1], &ex[2]});
        CHECK(out.dtype() == dt);
        check_close(out.view(), ref, dt == dtype::bf16 ? 0x1.0p-8 : 1e-6, 1e-6);
      }
    }
  }
}

namespace {
// nuslerp's f on one pair of vectors, literally.
Vec ref_nuslerp_pair(const Vec& x0, const Vec& x1, double t) {
  const double n0 = std::max(norm(x0), 1e-7), n1 = std::max(norm(x1), 1e-7);
  const double th = std::acos(std::clamp(dot(x0, x1) / (n0 * n1), -1.0, 1.0)), s = std::sin(th);
  Vec o(x0.size());
  for (std::size_t j = 0; j < o.size(); ++j)
    o[j] = std::abs(s) < 1e-8 ? (1 - t) * x0[j] + t * x1[j]
                              : (std::sin((1 - t) * th) * x0[j] + std::sin(t * th) * x1[j]) / s;
  return o;
}
}  // namespace

TEST_CASE("nuslerp: whole tensor, per row and per column, on task vectors or the experts, t from the weights") {
  const Fixture f = fixture(41, {6, 8}, 2, 0.3);
  const Vec base = vec(f.base), a = vec(f.experts[0]), c = vec(f.experts[1]);
  const double t = 3.0 / (1.0 + 3.0);
  for (bool use_base : {true, false})
    for (int mode = 0; mode < 3; ++mode) {  // flatten, last axis, axis 0
      CAPTURE(use_base);
      CAPTURE(mode);
      Vec x0(48), x1(48), ref(48);
      for (std::size_t j = 0; j < 48; ++j) {
        x0[j] = use_base ? static_cast<float>(static_cast<float>(a[j]) - static_cast<float>(base[j])) : a[j];
        x1[j] = use_base ? static_cast<float>(static_cast<float>(c[j]) - static_cast<float>(base[j])) : c[j];
      }
      // Vector v's elements: indices of[v][k].
      std::vector<std::vector<std::size_t>> of;
      if (mode == 0) of.push_back({}), of[0].resize(48), std::iota(of[0].begin(), of[0].end(), 0);
      if (mode == 1)
        for (std::size_t r = 0; r < 6; ++r) {
          of.push_back({});
          for (std::size_t k = 0; k < 8; ++k) of.back().push_back(r * 8 + k);
        }
      if (mode == 2)
        for (std::size_t col = 0; col < 8; ++col) {
          of.push_back({});
          for (std::size_t k = 0; k < 6; ++k) of.back().push_back(k * 8 + col);
        }
      for (const auto& idx : of) {
        Vec p0, p1;
        for (std::size_t j : idx) p0.push_back(x0[j]), p1.push_back(x1[j]);
        const Vec o = ref_nuslerp_pair(p0, p1, t);
        for (std::size_t k = 0; k < idx.size(); ++k) ref[idx[k]] = (use_base ? base[idx[k]] : 0.0) + o[k];
      }
      const AnyMerger m = by_settings("nuslerp", [&](MergeSettings& s) {
        s.weights = {1.0, 3.0};
        s.use_base = use_base;
        if (mode > 0) s.nuslerp_flatten = false;
        if (mode == 2) s.nuslerp_row_wise = true;
      });
      check_close(merged(m, f.base, f.ptrs()).view(), ref, 1e-5, 1e-5);
    }
}

TEST_CASE("nuslerp: colinear and antipodal pairs take the lerp branch; t = 0 is the first expert") {
  const Tensor b = f32_tensor({0, 0, 0}, {3}), e0 = f32_tensor({1, 2, 3}, {3}), e1 = f32_tensor({2, 4, 6}, {3}),
               opp = f32_tensor({-1, -2, -3}, {3});
  const AnyMerger half = by_settings("nuslerp");
  check_close(merged(half, b, {&e0, &e1}).view(), {1.5, 3, 4.5}, 1e-6, 0);
  check_close(merged(half, b, {&e0, &opp}).view(), {0, 0, 0}, 0, 1e-6);
  check_close(merged(by_settings("nuslerp",
                                 [](MergeSettings& s) {
                                   s.weights = {1, 0};
                                 }),
                     b, {&e0, &opp})
                  .view(),
              {1, 2, 3}, 1e-6, 0);
}

TEST_CASE("multislerp equals its literal definition on full vectors; two unit vectors at 90° by hand") {
  // 35 elements: one short chunk; 4181: 17 chunks of 256 in spans of four
  // (the Gram sums' prefetch spans) and 5 elements past the last 16.
  for (const std::vector<std::int64_t>& shape : {std::vector<std::int64_t>{5, 7}, {37, 113}})
    for (bool use_base : {true, false}) {
      const Fixture f = fixture(51, shape, 3, 0.2);
      const Vec base = vec(f.base);
      const Vec w = {0.5, 1.0, 1.5};
      const std::size_t n = base.size();
      CAPTURE(n);
      CAPTURE(use_base);
      std::vector<Vec> y;
      for (const Tensor& e : f.experts) y.push_back(use_base ? tau_of(e, f.base) : vec(e));
      Vec wn = w;
      for (double& x : wn) x /= 3.0;
      const double eps = 1e-8;
      std::vector<Vec> u;
      Vec nrm;
      for (const Vec& v : y) {
        nrm.push_back(norm(v));
        Vec q(v.size());
        for (std::size_t j = 0; j < v.size(); ++j) q[j] = v[j] / (nrm.back() + eps);
        u.push_back(q);
      }
      Vec m(n, 0.0);
      for (std::size_t i = 0; i < 3; ++i)
        for (std::size_t j = 0; j < n; ++j) m[j] += wn[i] * u[i][j];
      const double mn = norm(m);
      for (double& x : m) x /= mn;
      Vec tau(n, 0.0);
      for (std::size_t i = 0; i < 3; ++i) {
        const double di = dot(u[i], m);
        for (std::size_t j = 0; j < n; ++j) tau[j] += wn[i] * (u[i][j] - di * m[j]);
      }
      const double nu = norm(tau) + eps;
      double avg = 0;
      for (std::size_t i = 0; i < 3; ++i) avg += nrm[i] * wn[i];
      Vec ref(n);
      for (std::size_t j = 0; j < n; ++j)
        ref[j] = (m[j] * std::cos(nu) + tau[j] * std::sin(nu) / nu) * avg + (use_base ? base[j] : 0.0);
      const AnyMerger ms = by_settings("multislerp", [&](MergeSettings& s) {
        s.weights = w;
        s.use_base = use_base;
      });
      check_close(merged(ms, f.base, f.ptrs()).view(), ref, 1e-5, 1e-5);
    }
  // [1,0] and [0,1], equal weights: m̂ = [1,1]/√2, τ = 0, so r = m̂ · 1 = [0.7071, 0.7071].
  const Tensor z = f32_tensor({0, 0}, {2}), x = f32_tensor({1, 0}, {2}), yv = f32_tensor({0, 1}, {2});
  check_close(merged(by_settings("multislerp"), z, {&x, &yv}).view(), {std::sqrt(0.5), std::sqrt(0.5)}, 1e-6, 0);
  // Antipodal with equal weights: two inputs fall back to Σ w y (= 0); three are refused.
  const Tensor nx = f32_tensor({-1, 0}, {2});
  check_close(merged(by_settings("multislerp"), z, {&x, &nx}).view(), {0, 0}, 0, 1e-7);
  CHECK_THROWS_AS(merged(by_settings("multislerp",
                                     [](MergeSettings& s) {
                                       s.weights = {2, 1, 1};
                                     }),
                         z, {&x, &nx, &nx}),
                  numeric_error);
}

namespace {
// mergekit's karcher_merge_tensors on full vectors, in double.
Vec ref_karcher(const std::vector<Vec>& xs, int max_iter, double tol) {
  const std::size_t K = xs.size(), n = xs[0].size();
  if (K == 1) return xs[0];
  Vec norms;
  std::vector<Vec> units;
  for (const Vec& x : xs) {
    const double nx = norm(x);
    norms.push_back(nx);
    Vec u(n, 0.0);
    if (nx != 0)
      for (std::size_t j = 0; j < n; ++j) u[j] = x[j] / nx;
    units.push_back(u);
  }
  std::vector<std::size_t> valid;
  for (std::size_t k = 0; k < K; ++k)
    if (norms[k] > tol) valid.push_back(k);
  if (valid.empty()) return Vec(n, 0.0);
  const double a = 1.0 / static_cast<double>(valid.size());
  Vec u(n, 0.0);
  for (std::size_t k : valid)
    for (std::size_t j = 0; j < n; ++j) u[j] += a * units[k][j];
  const double nu = norm(u);
  if (nu < tol) u = units[valid[0]];
  else
    for (double& x : u) x /= nu;
  for (int it = 0; it < max_iter; ++it) {
    Vec T(n, 0.0);
    for (std::size_t k : valid) {
      const double d = std::clamp(dot(u, units[k]), -1.0, 1.0), th = std::acos(d);
      if (th < tol) continue;
      for (std::size_t j = 0; j < n; ++j) T[j] += a * (th / std::sin(th)) * (units[k][j] - d * u[j]);
    }
    const double nt = norm(T);
    if (nt < tol) break;
    for (std::size_t j = 0; j < n; ++j) u[j] = std::cos(nt) * u[j] + std::sin(nt) * T[j] / nt;
    const double n2 = norm(u);
    if (n2 > tol)
      for (double& x : u) x /= n2;
  }
  double s = 0;
  for (double nx : norms) s += nx / static_cast<double>(K);
  for (double& x : u) x *= s;
  return u;
}
}  // namespace

TEST_CASE("karcher equals mergekit's iteration on full vectors, with and without the base among the inputs") {
  // 99 elements: one short chunk; 4181: 17 chunks in spans of four and a tail.
  for (const std::vector<std::int64_t>& shape : {std::vector<std::int64_t>{9, 11}, {37, 113}})
    for (bool use_base : {true, false})
      for (int iters : {1, 3, 10}) {
        const Fixture f = fixture(61, shape, 3, 0.5);
        CAPTURE(shape[0]);
        CAPTURE(use_base);
        CAPTURE(iters);
        std::vector<Vec> xs;
        for (const Tensor& e : f.experts) xs.push_back(vec(e));
        if (use_base) xs.push_back(vec(f.base));
        const AnyMerger k = by_settings("karcher", [&](MergeSettings& s) {
          s.max_iter = iters;
          s.use_base = use_base;
        });
        check_close(merged(k, f.base, f.ptrs()).view(), ref_karcher(xs, iters, 1e-5), 1e-5, 1e-5);
      }
  // Inputs along one direction: the direction times the mean norm ([1,1]·(1 + 3 + 0)/3 with a zero base).
  const Tensor z = f32_tensor({0, 0}, {2}), a = f32_tensor({1, 1}, {2}), c = f32_tensor({3, 3}, {2});
  check_close(merged(by_settings("karcher"), z, {&a, &c}).view(), {4.0 / 3.0, 4.0 / 3.0}, 1e-6, 0);
}

namespace {
// arcee_fusion literally: softmax / KL per row, importances, sorted quantiles, the mask.
Vec ref_arcee(const Vec& b, const Vec& x, std::size_t cols) {
  const std::size_t n = b.size(), rows = n / cols;
  std::vector<float> imp(n);
  for (std::size_t r = 0; r < rows; ++r) {
    double zx = 0, zb = 0;
    for (std::size_t k = 0; k < cols; ++k) zx += std::exp(x[r * cols + k]), zb += std::exp(b[r * cols + k]);
    double kl = 0;
    for (std::size_t k = 0; k < cols; ++k) {
      const double p = std::exp(x[r * cols + k]) / zx + 1e-8, q = std::exp(b[r * cols + k]) / zb + 1e-8;
      kl += p * std::log(p / q);
    }
    for (std::size_t k = 0; k < cols; ++k)
      imp[r * cols + k] =
          static_cast<float>(std::abs(static_cast<float>(x[r * cols + k]) - static_cast<float>(b[r * cols + k]))) *
          static_cast<float>(kl);
  }
  std::vector<float> s = imp;
  std::sort(s.begin(), s.end());
  auto at = [&](float q) { return s[static_cast<std::size_t>(q * static_cast<float>(n - 1))]; };
  const float thr = at(0.5f) + 1.5f * (at(0.75f) - at(0.25f));
  Vec o(n);
  for (std::size_t j = 0; j < n; ++j) o[j] = imp[j] >= thr ? x[j] : b[j];
  return o;
}
}  // namespace

TEST_CASE("gram_lane_sums: every pair k <= l, the same bits for tiles of 1, 2 and 4 vectors, near the dot products") {
  // Property: the tiled Gram kernel adds x_k[j]·x_l[j] into lane j mod 16 of
  // pair (k, l) for every k <= l and leaves k > l alone, where x_k = v_k, or
  // v_k − sub formed in f32 when a `sub` vector is given; a tile of 1 (each
  // pair alone) is the reference for the order of the sums, so tiles of 2
  // and 4 give the same bits, and all are within float rounding of the
  // lane sums in double (each run of 256 elements, 16 terms per lane, is
  // summed in f32, the runs in double). n = 1056 spans five runs, the last
  // of 32 elements; the lines asked for meanwhile (here the inputs' own)
  // change nothing, and the kernel asks for its budget of them, no more.
  constexpr std::int64_t L = detail::gram_lanes;
  constexpr std::int64_t n = 66 * L;
  std::mt19937 gen(5);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (bool with_sub : {false, true})
    for (std::size_t K = 1; K <= 9; ++K) {
      CAPTURE(with_sub);
      CAPTURE(K);
      std::vector<std::vector<float>> v(K, std::vector<float>(n));
      for (auto& x : v)
        for (float& e : x) e = dist(gen);
      std::vector<float> sub(n);
      for (float& e : sub) e = dist(gen);
      const float* sp = with_sub ? sub.data() : nullptr;
      std::vector<const float*> vp;
      for (const auto& x : v) vp.push_back(x.data());
      const float start = 0.25f;  // the kernel adds to the lanes
      backend::cpu::LinesAhead ahead;
      for (const auto& x : v) ahead.add(x.data(), x.size() * sizeof(float));
      const std::int64_t budget = ahead.lines() - 5;  // all but 5 of the lines, asked for along the way
      auto run = [&](auto tile, backend::cpu::LinesAhead* pf) {
        std::vector<double> lanes(K * K * L, start);
        detail::gram_lane_sums<decltype(tile)::value>(vp.data(), K, n, lanes.data(), sp, pf, budget);
        return lanes;
      };
      const std::vector<double> one = run(std::integral_constant<std::size_t, 1>{}, nullptr);
      CHECK(run(std::integral_constant<std::size_t, 2>{}, &ahead) == one);
      CHECK(ahead.left() == 5);  // exactly the budget
      ahead.ask(5);
      CHECK(run(std::integral_constant<std::size_t, 4>{}, &ahead) == one);
      CHECK(ahead.left() == 0);  // nothing past the plan's end
      auto x = [&](std::size_t k, std::int64_t j) {
        const auto u = static_cast<std::size_t>(j);
        return static_cast<double>(with_sub ? v[k][u] - sub[u] : v[k][u]);
      };
      std::size_t bad = 0;
      for (std::size_t k = 0; k < K; ++k)
        for (std::size_t l = 0; l < K; ++l)
          for (std::int64_t q = 0; q < L; ++q) {
            const double got = one[(k * K + l) * L + static_cast<std::size_t>(q)];
            if (k > l) {
              bad += got != start;
              continue;
            }
            double ref = start, mag = start;
            for (std::int64_t j = q; j < n; j += L) {
              const double p = x(k, j) * x(l, j);
              ref += p;
              mag += std::abs(p);
            }
            // At most 16 float additions per run, each within half an ulp
            // of its partial sum; the double additions are exact enough.
            bad += std::abs(got - ref) > 17 * 0x1.0p-24 * mag;
          }
      CHECK(bad == 0);
    }
}

TEST_CASE("arcee_fusion keeps the expert where importance ≥ median + 1.5·IQR, as a literal reference") {
  // Short tensors (importances held, quantiles by partial sorts) and ones
  // past the selection's small size (importances not held: a sample of
  // them from the KLs of the rows it touches brackets each quantile, one
  // pass computes the other rows' KLs and scans; 80000 entries, so the
  // sample skips rows), the latter also with many equal importances: the
  // expert equals the base on every third row (importance 0) and differs by
  // multiples of 1/64 elsewhere, so each quantile falls among hundreds of
  // equal values. `wide` scales every other row by 12: those rows' smallest
  // softmax values are far below 1e-5, so their KL takes log(p/q) entry by
  // entry, the other rows' from the logits (row_kl's two ways).
  const Fixture small = fixture(71, {20, 30}, 1, 0.3), large = fixture(72, {200, 400}, 1, 0.3);
  Fixture tied = fixture(73, {200, 400}, 1, 0.3), wide = fixture(74, {200, 400}, 1, 0.3);
  {
    const Vec b = vec(wide.base), x = vec(wide.experts[0]);
    std::vector<float> bw(b.size()), xw(b.size());
    for (std::size_t j = 0; j < b.size(); ++j) {
      const double scale = (j / 400) % 2 ? 12.0 : 1.0;
      bw[j] = static_cast<float>(b[j] * scale), xw[j] = static_cast<float>(x[j] * scale);
    }
    wide.base = f32_tensor(bw, {200, 400});
    wide.experts[0] = f32_tensor(xw, {200, 400});
  }
  {
    const Vec b = vec(tied.base), x = vec(tied.experts[0]);
    std::vector<float> bq(b.size()), xq(b.size());
    for (std::size_t j = 0; j < b.size(); ++j) {
      bq[j] = static_cast<float>(std::round(b[j] * 64.0) / 64.0);
      xq[j] = (j / 400) % 3 == 0 ? bq[j] : bq[j] + static_cast<float>(std::round((x[j] - b[j]) * 64.0) / 64.0);
    }
    tied.base = f32_tensor(bq, {200, 400});
    tied.experts[0] = f32_tensor(xq, {200, 400});
  }
  for (const Fixture* f : {&small, &large, static_cast<const Fixture*>(&tied), static_cast<const Fixture*>(&wide)}) {
    const std::int64_t cols = f->base.view().dim(1), n = f->base.view().numel();
    CAPTURE(n);
    const Vec got = vec(merged(by_settings("arcee_fusion"), f->base, f->ptrs()));
    check_close(twin::Tensor::from_f32(std::vector<float>(got.begin(), got.end()), std::vector<std::int64_t>{n}).view(),
                ref_arcee(vec(f->base), vec(f->experts[0]), static_cast<std::size_t>(cols)), 1e-6, 1e-6);
    // Some but not all entries are taken.
    const Vec bv = vec(f->base);
    std::size_t taken = 0;
    for (std::size_t j = 0; j < bv.size(); ++j) taken += got[j] != bv[j];
    CHECK(taken > 0);
    CHECK(taken < bv.size());
  }
  const Fixture& f = small;
  CHECK_THROWS_AS(merged(by_settings("arcee_fusion"), f.base, {&f.experts[0], &f.experts[0]}), argument_error);
}

TEST_CASE("cpu::exp_nonpositive and log_positive are within 1 and 2 ulp of libm's exp and log") {
  // Property: the vectorizable kernels arcee_fusion's softmax and KL use
  // agree with the C library's (correctly rounded in practice) to within
  // 1 ulp (exp, x in [−708, 0]; exactly 0 below) and 2 ulp (log, y from
  // 1e−300 to 1e300 and within 1e−6 of 1, where log y is tiny).
  auto ulps = [](double got, double want) {
    if (got == want) return 0.0;
    return std::abs(got - want) / std::abs(std::nextafter(want, INFINITY) - want);
  };
  std::mt19937_64 rng(75);
  std::uniform_real_distribution<double> ux(-750.0, 0.0), small(-1.0, 0.0), ue(-690.0, 690.0), near(-1e-6, 1e-6);
  double worst_exp = 0.0, worst_log = 0.0;
  bool below_zero = true;
  for (int i = 0; i < 300000; ++i) {
    const double x = i % 2 ? ux(rng) : small(rng);
    if (x < -708.0) below_zero &= twin::cpu::exp_nonpositive(x) == 0.0;
    else worst_exp = std::max(worst_exp, ulps(twin::cpu::exp_nonpositive(x), std::exp(x)));
    const double y = i % 2 ? std::exp(ue(rng)) : 1.0 + near(rng);
    worst_log = std::max(worst_log, ulps(twin::cpu::log_positive(y), std::log(y)));
  }
  CAPTURE(worst_exp);
  CAPTURE(worst_log);
  CHECK(worst_exp <= 1.0);
  CHECK(worst_log <= 2.0);
  CHECK(below_zero);
  CHECK(twin::cpu::exp_nonpositive(0.0) == 1.0);
  CHECK(twin::cpu::log_positive(1.0) == 0.0);
  CHECK(std::isnan(twin::cpu::exp_nonpositive(std::nan(""))));
  CHECK(std::isnan(twin::cpu::log_positive(std::nan(""))));
  CHECK(std::isnan(twin::cpu::log_positive(-1.0)));
  CHECK(twin::cpu::log_positive(INFINITY) == INFINITY);
}

TEST_CASE("arcee_fusion's row KL is within 3 float ulps of a long-double KL, from the logits and entry by entry") {
  // Property: row_kl(x, b) = Σ p·log(p/q), p = softmax(x) + 1e-8, q =
  // softmax(b) + 1e-8, rounded to float, is within 3 float ulps (relative)
  // of the same sum in long double with std::exp / std::log, on rows where
  // every softmax value is at least 1.1e-5 (row_kl takes log(p/q) from the
  // logits there) and on rows where some are far below 1e-5 (entry by
  // entry); the reference also says which kind each row is. Rows of 768
  // (vectors of 8 and 16) and 131 (tails), weights-like (spread 0.02,
  // change 0.002), unit-scale, and wide (spread 12).
  struct Rows {
    double spread, delta;
    bool analytic;
  };
  std::mt19937_64 rng(77);
  std::normal_distribution<double> g(0.0, 1.0);
  for (const Rows& rs : {Rows{0.02, 0.002, true}, Rows{1.0, 0.3, true}, Rows{12.0, 0.3, false}})
    for (std::int64_t n : {std::int64_t{768}, std::int64_t{131}}) {
      CAPTURE(rs.spread);
      CAPTURE(n);
      std::vector<double> ex(static_cast<std::size_t>(n)), eb(static_cast<std::size_t>(n));
      double worst = 0.0;
      int bad = 0;  // rows off by more than 3 ulps, or NaN
      for (int r = 0; r < 50; ++r) {
        std::vector<float> x(static_cast<std::size_t>(n)), b(static_cast<std::size_t>(n));
        for (std::size_t j = 0; j < b.size(); ++j) {
          b[j] = static_cast<float>(rs.spread * g(rng));
          x[j] = static_cast<float>(b[j] + rs.delta * g(rng));
        }
        long double mx = x[0], mb = b[0], zx = 0, zb = 0, kl = 0, smallest = 1;
        for (std::size_t j = 0; j < b.size(); ++j)
          mx = std::max<long double>(mx, x[j]), mb = std::max<long double>(mb, b[j]);
        for (std::size_t j = 0; j < b.size(); ++j) zx += std::exp(x[j] - mx), zb += std::exp(b[j] - mb);
        for (std::size_t j = 0; j < b.size(); ++j) {
          const long double p0 = std::exp(x[j] - mx) / zx, q0 = std::exp(b[j] - mb) / zb;
          smallest = std::min({smallest, p0, q0});
          kl += (p0 + 1e-8L) * std::log((p0 + 1e-8L) / (q0 + 1e-8L));
        }
        if (rs.analytic) CHECK(smallest > 1.1e-5L);
        else CHECK(smallest < 1e-6L);
        const float got = twin::ArceeFusion::row_kl(x.data(), b.data(), n, ex.data(), eb.data());
        const auto err = static_cast<double>(std::abs((static_cast<long double>(got) - kl) / kl));
        worst = std::max(worst, err);
        bad += !(err <= 3 * 0x1p-24);
      }
      CAPTURE(worst);
      CHECK(bad == 0);
    }
}

TEST_CASE("arcee_fusion's threshold from k-th largest magnitudes equals median + 1.5·IQR of the sorted importances") {
  // Non-negative importances (the fast path's condition), random or drawn
  // from 300 values (each quantile among hundreds of equal ones), with a
  // fifth of them 0; lengths past the selection's small size, sampled
  // windows included.
  std::mt19937_64 rng(74);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (std::size_t n : {std::size_t{20000}, std::size_t{200001}})
    for (bool repeated : {false, true}) {
      CAPTURE(n);
      CAPTURE(repeated);
      std::vector<float> imp(n);
      for (float& v : imp) {
        const float x = u(rng);
        v = u(rng) < 0.2f ? 0.0f : repeated ? std::floor(x * 300.0f) / 300.0f : x * x;
      }
      std::vector<float> s = imp;
      std::sort(s.begin(), s.end());
      auto at = [&](float q) { return s[static_cast<std::size_t>(q * static_cast<float>(n - 1))]; };
      const float want = at(0.5f) + 1.5f * (at(0.75f) - at(0.25f));
      CHECK(twin::ArceeFusion{}.threshold(imp, true) == want);
      CHECK(twin::ArceeFusion{}.threshold(imp, false) == want);
    }
}

TEST_CASE("every mergekit strategy: bit-identical for 1 and 2 threads, and strided views merge like copies") {
  const Fixture f = fixture(81, {70, 1100}, 3, 0.05);  // more than one merge block
  const std::vector<std::pair<std::string, std::function<void(MergeSettings&)>>> methods = {
      {"linear", {}},
      {"breadcrumbs_ties", [](MergeSettings& s) { s.density = 0.6; }},
      {"della", [](MergeSettings& s) { s.density = 0.5; }},
      {"della_linear", [](MergeSettings& s) { s.density = 0.5; }},
      {"sce", [](MergeSettings& s) { s.select_topk = 0.4; }},
      {"ram", {}},
      {"ramplus_tl", {}},
      {"multislerp", {}},
      {"karcher", {}},
  };
  for (const auto& [name, set] : methods) {
    CAPTURE(name);
    const AnyMerger m = by_settings(name, set);
    set_num_threads(1);
    const Tensor one = merged(m, f.base, f.ptrs());
    set_num_threads(2);
    const Tensor two = merged(m, f.base, f.ptrs());
    CHECK(same_bits(one, two));
  }
  const Fixture g = fixture(82, {300, 200}, 2, 0.3);
  for (const char* name : {"nuslerp", "arcee_fusion"}) {
    CAPTURE(name);
    const AnyMerger m = name == std::string("arcee_fusion") ? by_settings(name) : by_settings(name);
    const std::vector<const Tensor*> ex =
        name == std::string("arcee_fusion") ? std::vector<const Tensor*>{&g.experts[0]} : g.ptrs();
    set_num_threads(1);
    const Tensor one = merged(m, g.base, ex);
    set_num_threads(2);
    CHECK(same_bits(one, merged(m, g.base, ex)));
  }
}

TEST_CASE("GeneralizedTaskArithmetic with mergekit's rules: ties per-model densities, dare with L1 rescale") {
  const Fixture f = fixture(91, {30, 40}, 3);
  const Vec base = vec(f.base);
  const Vec dens = {0.2, 0.5, 0.8}, w = {1.0, 0.7, 0.4};
  // ties: the floor(d·n) largest |δ| per expert, sign consensus, normalized; λ 0.9.
  const std::vector<Vec> d = banded_taus(f, dens, 0.0);
  GeneralizedTaskArithmetic ties = *GeneralizedTaskArithmetic::mergekit("ties");
  ties.densities = dens;
  ties.weights = w;
  ties.scaling = 0.9;
  check_close(merged(AnyMerger(ties), f.base, f.ptrs()).view(), ref_gta(base, d, w, true, true, 0.9), 1e-5, 1e-6);
  // With equal densities and positive weights it equals twin's own Ties (the papers' rule agrees there).
  ties.densities = {0.3, 0.3, 0.3};
  const Tensor own = merged(AnyMerger(Ties{0.3, 0.9, TopKScope::per_tensor, w}), f.base, f.ptrs());
  check_close(merged(AnyMerger(ties), f.base, f.ptrs()).view(), vec(own), 1e-6, 1e-6);
  // task_arithmetic: θ0 + λ Σ w δ, as TaskArithmetic.
  GeneralizedTaskArithmetic ta = *GeneralizedTaskArithmetic::mergekit("task_arithmetic");
  ta.weights = w;
  ta.scaling = 0.5;
  check_close(merged(AnyMerger(ta), f.base, f.ptrs()).view(),
              vec(merged(AnyMerger(TaskArithmetic{0.5, w}), f.base, f.ptrs())), 1e-6, 1e-6);
  // dare_linear with torch's stream: torch.manual_seed(7) bernoulli(0.5) mask on 12 ones, survivors scaled
  // to the L1 norm: 12 / 5 kept.
  const std::vector<int> dm = {0, 1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 0};
  GeneralizedTaskArithmetic dare = *GeneralizedTaskArithmetic::mergekit("dare_linear");
  dare.densities = {0.5};
  dare.seed = 7;
  dare.rng = RngKind::torch;
  const Tensor zb = f32_tensor(std::vector<float>(12, 0.0f), {12}),
               ones = f32_tensor(std::vector<float>(12, 1.0f), {12});
  Vec ref(12);
  for (std::size_t j = 0; j < 12; ++j) ref[j] = dm[j] * 12.0 / 5.0;
  check_close(merged(AnyMerger(dare), zb, {&ones}).view(), ref, 1e-6, 0);
  CHECK(AnyMerger(dare).name() == "dare_linear");
  CHECK_FALSE(GeneralizedTaskArithmetic::mergekit("slerp").has_value());
}

TEST_CASE("AnyMerger: every method name builds; a foreign option is refused naming the flag") {
  for (std::string_view m : merge_method_names) {
    CAPTURE(m);
    MergeSettings s;
    s.method = std::string(m);
    if (m == "slerp" || m == "nearswap") s.t = 0.5;
    CHECK(AnyMerger::from_settings(s).name() == m);
  }
  MergeSettings s;
  s.method = "sce";
  s.epsilon = 0.1;
  CHECK_THROWS_WITH_AS(AnyMerger::from_settings(s), doctest::Contains("sce takes no --epsilon"), argument_error);
  s.method = "karcher";
  s.epsilon.reset();
  s.weights = {1, 2};
  CHECK_THROWS_WITH_AS(AnyMerger::from_settings(s), doctest::Contains("karcher takes no --weight"), argument_error);
  s.method = "nope";
  CHECK_THROWS_WITH_AS(AnyMerger::from_settings(s), doctest::Contains("unknown merge method 'nope'"), argument_error);
}
