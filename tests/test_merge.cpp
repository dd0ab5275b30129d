// SharedMerger strategies against dense double-precision references written
// here independently (sort-based top-k, plain loops), on f32, f16 and bf16.
#include <algorithm>
#include <numeric>

#include "test_support.hpp"

using namespace twin;
using twin_test::check_close;
using twin_test::perturbed;
using twin_test::random_tensor;
using twin_test::same_bits;
using twin_test::unit_roundoff;

namespace {

using Vec = std::vector<double>;

// τ = expert − base; the spec computes it in f32, the rest of the reference in double.
Vec tau_of(const Tensor& e, const Tensor& b) {
  const Vec ev = to_f64_vector(e.view()), bv = to_f64_vector(b.view());
  Vec t(ev.size());
  for (std::size_t i = 0; i < t.size(); ++i)
    t[i] = static_cast<float>(static_cast<float>(ev[i]) - static_cast<float>(bv[i]));
  return t;
}

// Keeps the k largest |v|, the lower index first among equal magnitudes.
std::vector<char> ref_top_k(const Vec& v, std::int64_t k) {
  std::vector<std::size_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](std::size_t a, std::size_t b) { return std::abs(v[a]) > std::abs(v[b]); });
  std::vector<char> keep(v.size(), 0);
  for (std::int64_t r = 0; r < std::min<std::int64_t>(k, static_cast<std::int64_t>(v.size())); ++r)
    keep[idx[static_cast<std::size_t>(r)]] = 1;
  return keep;
}

std::int64_t floor_count(double density, std::size_t n) {
  return static_cast<std::int64_t>(std::floor(density * static_cast<double>(n) + 1e-9));
}

// zero_elect: the sign a sum of exactly 0 elects (+1, or −1).
Vec ref_disjoint(const std::vector<Vec>& taus, const Vec& w, double zero_elect = 1.0) {
  Vec out(taus[0].size(), 0.0);
  for (std::size_t j = 0; j < out.size(); ++j) {
    double s = 0;
    for (std::size_t i = 0; i < taus.size(); ++i) s += w[i] * taus[i][j];
    const double sign = s > 0 ? 1.0 : s < 0 ? -1.0 : zero_elect;
    double num = 0, den = 0;
    for (std::size_t i = 0; i < taus.size(); ++i)
      if (taus[i][j] * sign > 0) num += w[i] * taus[i][j], den += w[i];
    out[j] = den != 0 ? num / den : 0.0;
  }
  return out;
}

Vec plus_scaled(const Vec& base, const Vec& d, double lambda) {
  Vec o(base.size());
  for (std::size_t j = 0; j < o.size(); ++j) o[j] = base[j] + lambda * d[j];
  return o;
}

struct Fixture {
  Tensor base;
  std::vector<Tensor> experts;
  std::vector<ConstTensorView> views() const {
    std::vector<ConstTensorView> v;
    for (const auto& e : experts) v.push_back(e.view());
    return v;
  }
  std::vector<Vec> taus() const {
    std::vector<Vec> t;
    for (const auto& e : experts) t.push_back(tau_of(e, base));
    return t;
  }
  Vec basev() const { return to_f64_vector(base.view()); }
};

Fixture make_fixture(std::uint64_t seed, dtype t, std::vector<std::int64_t> shape, int T) {
  std::mt19937_64 rng(seed);
  Fixture f{random_tensor(rng, t, shape, 0.0, 1.0), {}};
  for (int i = 0; i < T; ++i) f.experts.push_back(perturbed(rng, f.base, 0.1, t));
  return f;
}

// The reference of every strategy, by name, with the settings used below.
Vec reference(std::string_view method, const Fixture& f, const Vec& w, double lambda, double density, double gamma,
              std::uint64_t seed, std::string_view name) {
  const Vec base = f.basev();
  std::vector<Vec> taus = f.taus();
  const std::size_t n = base.size();
  if (method == "average") {
    Vec o(n, 0.0);
    const double ws = std::accumulate(w.begin(), w.end(), 0.0);
    for (std::size_t i = 0; i < taus.size(); ++i) {
      const Vec e = to_f64_vector(f.experts[i].view());
      for (std::size_t j = 0; j < n; ++j) o[j] += w[i] * e[j] / ws;
    }
    return o;
  }
  if (method == "task_arithmetic") {
    Vec s(n, 0.0);
    for (std::size_t i = 0; i < taus.size(); ++i)
      for (std::size_t j = 0; j < n; ++j) s[j] += w[i] * taus[i][j];
    return plus_scaled(base, s, lambda);
  }
  if (method == "ties") {
    for (auto& t : taus) {
      const auto keep = ref_top_k(t, floor_count(density, n));
      for (std::size_t j = 0; j < n; ++j) t[j] = keep[j] ? t[j] : 0.0;
    }
    return plus_scaled(base, ref_disjoint(taus, w), lambda);
  }
  if (method == "dare_linear" || method == "dare_ties") {
    for (std::size_t i = 0; i < taus.size(); ++i) {
      const Philox rng(random_key(seed, name, i));
      for (std::size_t j = 0; j < n; ++j)
        taus[i][j] = rng.uniform(j) < static_cast<float>(density) ? taus[i][j] / static_cast<float>(density) : 0.0;
    }
    if (method == "dare_ties") return plus_scaled(base, ref_disjoint(taus, w), lambda);
    Vec s(n, 0.0);
    for (std::size_t i = 0; i < taus.size(); ++i)
      for (std::size_t j = 0; j < n; ++j) s[j] += w[i] * taus[i][j];
    return plus_scaled(base, s, lambda);
  }
  if (method == "slerp" || method == "nearswap") {  // the base and expert 0; t is `lambda`
    const Vec x = to_f64_vector(f.experts[0].view());
    Vec o(n);
    if (method == "nearswap") {
      for (std::size_t j = 0; j < n; ++j) {
        const double wj = std::clamp(lambda / std::max(std::abs(base[j] - x[j]), 1e-6), 0.0, 1.0);
        o[j] = wj * x[j] + (1 - wj) * base[j];
      }
      return o;
    }
    double n0 = 0, n1 = 0, d = 0;
    for (std::size_t j = 0; j < n; ++j) n0 += base[j] * base[j], n1 += x[j] * x[j], d += base[j] * x[j];
    n0 = std::sqrt(n0), n1 = std::sqrt(n1);
    const double dot = d / ((n0 > 1e-8 ? n0 : 1) * (n1 > 1e-8 ? n1 : 1)), th = std::acos(dot);
    const double s0 = std::abs(dot) > 0.9995 ? 1 - lambda : std::sin((1 - lambda) * th) / std::sin(th);
    const double s1 = std::abs(dot) > 0.9995 ? lambda : std::sin(lambda * th) / std::sin(th);
    for (std::size_t j = 0; j < n; ++j) o[j] = s0 * base[j] + s1 * x[j];
    return o;
  }
  if (method == "model_stock") {  // whole tensor, the mean pairwise cosine of the task vectors
    const std::size_t N = taus.size();
    double cos = 0;
    for (std::size_t i = 0; i < N; ++i)
      for (std::size_t k = i + 1; k < N; ++k) {
        double dik = 0, nii = 0, nkk = 0;
        for (std::size_t j = 0; j < n; ++j)
          dik += taus[i][j] * taus[k][j], nii += taus[i][j] * taus[i][j], nkk += taus[k][j] * taus[k][j];
        cos += std::clamp(dik / std::max(std::sqrt(nii * nkk), 1e-6), -1.0, 1.0);
      }
    cos /= static_cast<double>(N * (N - 1) / 2);
    const double t = static_cast<double>(N) * cos / (1 + static_cast<double>(N - 1) * cos);
    Vec o(n, 0.0);
    for (std::size_t i = 0; i < N; ++i) {
      const Vec e = to_f64_vector(f.experts[i].view());
      for (std::size_t j = 0; j < n; ++j) o[j] += e[j] / static_cast<double>(N);
    }
    for (std::size_t j = 0; j < n; ++j) o[j] = t * o[j] + (1 - t) * base[j];
    return o;
  }
  if (method == "breadcrumbs") {
    // mergekit's counts: keep int(density·n) (Python truncates the double product); fewer outliers where
    // they would not leave that many.
    const auto int_count = [&](double f) { return static_cast<std::int64_t>(f * static_cast<double>(n)); };
    const std::int64_t kept = int_count(density);
    const std::int64_t top = std::min<std::int64_t>(int_count(gamma), static_cast<std::int64_t>(n) - kept);
    const std::int64_t keep = density >= 1 ? static_cast<std::int64_t>(n) : top + kept;
    Vec s(n, 0.0);
    for (std::size_t i = 0; i < taus.size(); ++i) {
      const auto in_keep = ref_top_k(taus[i], keep), in_top = ref_top_k(taus[i], top);
      for (std::size_t j = 0; j < n; ++j) s[j] += (in_keep[j] && !in_top[j]) ? w[i] * taus[i][j] : 0.0;
    }
    return plus_scaled(base, s, lambda);
  }
  FAIL("no reference for " << method);
  return {};
}

}  // namespace

TEST_CASE("philox4x32-10 matches the Random123 known-answer vectors") {
  CHECK(Philox(0).block(0, 0) == std::array<std::uint32_t, 4>{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u});
  CHECK(Philox(~0ull).block(~0ull, ~0ull) ==
        std::array<std::uint32_t, 4>{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu});
  CHECK(Philox(0x299f31d0a4093822ull).block(0x85a308d3243f6a88ull, 0x0370734413198a2eull) ==
        std::array<std::uint32_t, 4>{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u});
}

TEST_CASE("top-k selection keeps exactly the k largest magnitudes, lower index first among equals") {
  std::mt19937_64 rng(7);
  // Values drawn from a handful of magnitudes so ties are everywhere, over
  // more than one selection block.
  std::uniform_int_distribution<int> pick(-4, 4);
  std::vector<float> v(150001);
  for (float& x : v) x = static_cast<float>(pick(rng)) * 0.25f;
  const Vec vd(v.begin(), v.end());
  for (std::int64_t k : {std::int64_t{0}, std::int64_t{1}, std::int64_t{17}, std::int64_t{40000}, std::int64_t{75000},
                         std::int64_t{149999}, std::int64_t{150001}}) {
    CAPTURE(k);
    std::vector<float> w = v;
    apply_cut(w, select_top_k(std::span<const float>(v), k));
    const auto keep = ref_top_k(vd, k);
    std::int64_t mismatches = 0, kept = 0;
    for (std::size_t j = 0; j < v.size(); ++j) {
      const bool kept_here = keep[j] != 0;
      kept += kept_here;
      mismatches += (kept_here ? v[j] : 0.0f) != w[j];
    }
    CHECK(kept == k);
    CHECK(mismatches == 0);
  }
}

TEST_CASE("a global cut over several segments equals the top-k of their concatenation") {
  std::mt19937_64 rng(8);
  std::uniform_int_distribution<int> pick(-3, 3);
  std::vector<std::vector<float>> segs = {std::vector<float>(70000), std::vector<float>(5), std::vector<float>(30000)};
  Vec all;
  for (auto& s : segs)
    for (float& x : s) all.push_back(x = static_cast<float>(pick(rng)));
  const std::int64_t k = 41234;
  auto visit = [&](auto&& sink) {
    for (const auto& s : segs) sink(std::span<const float>(s));
  };
  const MagnitudeCut cut = select_top_k(visit, static_cast<std::int64_t>(all.size()), k);
  std::vector<std::int64_t> ties;
  for (const auto& s : segs) ties.push_back(ties_before_blocks(s, cut.threshold, 1 << 16).back());
  const auto per = split_cut(cut, ties);
  const auto keep = ref_top_k(all, k);
  std::size_t off = 0;
  std::int64_t mismatches = 0;
  for (std::size_t s = 0; s < segs.size(); ++s) {
    std::vector<float> w = segs[s];
    apply_cut(w, per[s]);
    for (std::size_t j = 0; j < w.size(); ++j) mismatches += (keep[off + j] ? segs[s][j] : 0.0f) != w[j];
    off += w.size();
  }
  CHECK(mismatches == 0);
}

TEST_CASE("the radix select of the rank-th largest key counts the keys above and equal, as a sort does") {
  // Property: kth_largest's key, count above and count equal are those of a descending std::sort, over keys
  // spread across the whole range (heavy ties, some, almost none), keys in a narrow window that share their
  // top digit (as a sample window's keys do: that round is skipped) or their top two, and keys all equal.
  std::mt19937_64 rng(21);
  struct Keys {
    std::uint32_t offset, spread, scale;
  };
  for (const Keys& kind :
       {Keys{0u, 7u, 0x7fffffffu / 7u}, Keys{0u, 1000u, 0x7fffffffu / 1000u}, Keys{0u, 0x7fffffffu, 1u},
        Keys{0x3c23d70au, 5000u, 1u}, Keys{0x3c23d70au, 300u, 1u}, Keys{0x3c23d70au, 0u, 1u}}) {
    const std::uint32_t spread = kind.spread;
    std::uniform_int_distribution<std::uint32_t> pick(0, spread);
    std::vector<std::uint32_t> keys(20000);
    for (auto& k : keys) k = kind.offset + pick(rng) * kind.scale;
    std::vector<std::uint32_t> sorted = keys;
    std::sort(sorted.begin(), sorted.end(), std::greater<>());
    for (std::int64_t rank : {std::int64_t{0}, std::int64_t{1}, std::int64_t{4999}, std::int64_t{19999}}) {
      CAPTURE(kind.offset);
      CAPTURE(spread);
      CAPTURE(rank);
      std::vector<std::uint32_t> work = keys;
      const detail::KthKey r = detail::kth_largest(work, rank);
      const std::uint32_t want = sorted[static_cast<std::size_t>(rank)];
      CHECK(r.key == want);
      CHECK(r.above == std::count_if(keys.begin(), keys.end(), [&](std::uint32_t k) { return k > want; }));
      CHECK(r.ties == std::count(keys.begin(), keys.end(), want));
    }
  }
}

TEST_CASE("keys_at_ranks gives the keys a descending sort puts at both ranks, in one digit or several") {
  // Property: keys_at_ranks(keys, r0, r1) = (sorted[r0], sorted[r1]) for the keys sorted in descending order
  // (std::sort), whether both ranks fall in one top-11-bit digit or digits far apart, for equal ranks, the
  // first and the last, over heavy ties, spread keys, and keys near the top bit.
  std::mt19937_64 rng(22);
  for (std::uint32_t spread : {7u, 1000u, 0xffffffffu}) {
    std::uniform_int_distribution<std::uint32_t> pick(0, spread);
    std::vector<std::uint32_t> keys(20000);
    for (auto& k : keys) k = spread == 0xffffffffu ? pick(rng) : pick(rng) * (0x7fffffffu / spread);
    std::vector<std::uint32_t> sorted = keys;
    std::sort(sorted.begin(), sorted.end(), std::greater<>());
    const std::vector<std::uint32_t> before = keys;
    for (const auto& [r0, r1] : {std::pair<std::int64_t, std::int64_t>{0, 0},
                                 {0, 19999},
                                 {19999, 19999},
                                 {4000, 4100},
                                 {4000, 4000},
                                 {1, 15000},
                                 {9999, 10000}}) {
      CAPTURE(spread);
      CAPTURE(r0);
      CAPTURE(r1);
      const auto [k0, k1] = detail::keys_at_ranks(keys, r0, r1);
      CHECK(k0 == sorted[static_cast<std::size_t>(r0)]);
      CHECK(k1 == sorted[static_cast<std::size_t>(r1)]);
    }
    CHECK(keys == before);  // read, not reordered
  }
}

TEST_CASE("sample windows: the sample sorted as std::sort does; runs of rows of different scales widen the window") {
  // Property 1: sorted_descending (an LSD radix sort) orders keys as
  // std::sort with std::greater does, heavy ties and the top bit included.
  std::mt19937_64 rng(23);
  for (std::uint32_t spread : {3u, 0xffffffffu}) {
    std::uniform_int_distribution<std::uint32_t> pick(0, spread);
    std::vector<std::uint32_t> keys(5000);
    for (auto& k : keys) k = spread == 3u ? pick(rng) << 30 : pick(rng);
    std::vector<std::uint32_t> want = keys;
    std::sort(want.begin(), want.end(), std::greater<>());
    CHECK(detail::sorted_descending(keys) == want);
  }
  // Property 2: 4000 rows of 256 magnitudes, each row's scale drawn apart
  // (as arcee_fusion's importances share their row's KL), sampled in 512
  // runs of 64: the runs are 512 of the rows, not 32K independent keys, so
  // the binomial window misses some quantile; with batch means (batch =
  // the run) every window holds the k-th largest of all the keys (the
  // reference: std::nth_element over all of them).
  const std::int64_t cols = 256, rows = 4000, n = rows * cols, run = 64, stride = n / 512;
  rng.seed(0);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<std::uint32_t> all(static_cast<std::size_t>(n));
  for (std::int64_t r = 0; r < rows; ++r) {
    const float scale = std::exp(1.5f * g(rng));
    for (std::int64_t c = 0; c < cols; ++c) all[static_cast<std::size_t>(r * cols + c)] = magnitude_key(scale * g(rng));
  }
  std::vector<std::uint32_t> sample;
  for (std::int64_t lo = 0; lo + run <= n; lo += stride)
    sample.insert(sample.end(), all.begin() + lo, all.begin() + lo + run);
  const std::vector<std::uint32_t> desc = detail::sorted_descending(sample);
  int binomial_misses = 0;
  for (double q : {0.25, 0.5, 0.75}) {
    CAPTURE(q);
    const auto k = static_cast<std::int64_t>(q * static_cast<double>(n));
    std::vector<std::uint32_t> work = all;
    std::nth_element(work.begin(), work.begin() + (k - 1), work.end(), std::greater<>());
    const std::uint32_t kth = work[static_cast<std::size_t>(k - 1)];
    const auto in = [&](std::pair<std::uint32_t, std::uint32_t> w) { return w.first <= kth && kth <= w.second; };
    CHECK(in(detail::sample_window(sample, desc, q, static_cast<std::size_t>(run))));
    binomial_misses += !in(detail::sample_window(sample, desc, q));
  }
  CHECK(binomial_misses > 0);  // the case needs the batch means
}

TEST_CASE("sampled top-k: a sample that misses the k-th magnitude falls back, exact either way") {
  // The sample reads runs of detail::sample_run entries every
  // detail::sample_stride(n) (selection.hpp). Here those runs hold tiny
  // magnitudes and the rest large ones, so every window the sample suggests
  // misses; a second case has ties everywhere (9 magnitudes) and a third
  // plain random values.
  const std::int64_t n = 200003, stride = detail::sample_stride(n), run = detail::sample_run;
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::uniform_int_distribution<int> pick(-4, 4);
  for (int layout = 0; layout < 3; ++layout) {
    std::vector<float> v(static_cast<std::size_t>(n));
    for (std::int64_t j = 0; j < n; ++j) {
      const float x = u(rng);
      v[static_cast<std::size_t>(j)] = layout == 0   ? (j % stride < run ? 1e-6f * x : 1.0f + x)
                                       : layout == 1 ? static_cast<float>(pick(rng)) * 0.25f
                                                     : x;
    }
    const Vec vd(v.begin(), v.end());
    const std::span<const float> cv(v);
    auto visit = [&](auto&& sink) {  // two segments, the seam inside a sampled run
      sink(cv.first(50001));
      sink(cv.subspan(50001));
    };
    const std::vector<std::int64_t> ks = {1, 9000, 100000, n - 1};
    const std::vector<MagnitudeCut> fast = select_top_ks(visit, n, ks);
    const std::vector<MagnitudeCut> radix = detail::select_top_ks_radix(visit, n, ks);
    for (std::size_t s = 0; s < ks.size(); ++s) {
      CAPTURE(layout);
      CAPTURE(ks[s]);
      CHECK(fast[s].threshold == radix[s].threshold);
      CHECK(fast[s].quota == radix[s].quota);
      std::vector<float> w = v;
      apply_cut(w, fast[s]);
      const auto keep = ref_top_k(vd, ks[s]);
      std::int64_t mismatches = 0;
      for (std::size_t j = 0; j < v.size(); ++j) mismatches += (keep[j] ? v[j] : 0.0f) != w[j];
      CHECK(mismatches == 0);
    }
  }
}

TEST_CASE("a cut's least selected key decides every magnitude key as selects() does, at the edges") {
  // The combination kernels compare each key once against least(); selects()
  // is the definition (above the threshold, or equal to it where ties are
  // kept). Thresholds at 0, in the middle, at the largest key, and above every
  // key (keep_none's), each keeping or dropping its ties.
  const std::uint32_t max_key = 0x7fffffffu;
  for (std::uint32_t thr : {0u, 1u, 0x3f800000u, max_key - 1, max_key, 0x80000000u, 0xffffffffu}) {
    for (bool keep_ties : {false, true}) {
      CAPTURE(thr);
      CAPTURE(keep_ties);
      BlockCut b;
      b.threshold = thr, b.keep_ties = keep_ties;
      std::vector<std::uint32_t> keys = {0u, 1u, 2u, 0x3f7fffffu, 0x3f800000u, 0x3f800001u, max_key - 1, max_key};
      if (thr <= max_key) {
        keys.push_back(thr);
        if (thr > 0) keys.push_back(thr - 1);
        if (thr < max_key) keys.push_back(thr + 1);
      }
      for (std::uint32_t k : keys) {
        CAPTURE(k);
        CHECK((k >= b.least()) == b.selects(k));
      }
    }
  }
}

TEST_CASE("ties trims exactly on tensors large enough for the sampled selection, adversarial layouts included") {
  // Per-tensor TIES recomputes τ in each pass and selects through a sampled
  // window (ties.hpp); a layout whose sampled runs hold tiny task values
  // makes every window miss (the held-τ fallback), bf16 storage makes ties
  // at the threshold (kept in index order across merge blocks).
  const std::vector<double> w = {1.0, 0.5, 2.0};
  for (dtype t : {dtype::f32, dtype::bf16}) {
    for (bool adversarial : {false, true}) {
      CAPTURE(std::string(dtype_name(t)));
      CAPTURE(adversarial);
      Fixture f = make_fixture(31, t, {300, 700}, 3);
      const std::int64_t n = f.base.numel(), stride = detail::sample_stride(n), run = detail::sample_run;
      if (adversarial) {
        // The sampled runs move by a thousandth of the rest: values from f32.
        const Vec b = f.basev();
        for (Tensor& e : f.experts) {
          const Vec ev = to_f64_vector(e.view());
          std::vector<float> v(ev.size());
          for (std::int64_t j = 0; j < n; ++j) {
            const auto q = static_cast<std::size_t>(j);
            v[q] = static_cast<float>(j % stride < run ? b[q] + 1e-3 * (ev[q] - b[q]) : ev[q]);
          }
          e = Tensor::from_f32(v, e.shape(), t);
        }
      }
      const Ties ties{0.3, 0.7, TopKScope::per_tensor, w};
      const Tensor out = twin::merge_tensor(ties, "layer.weight", f.base.view(), f.views());
      check_close(out.view(), reference("ties", f, w, 0.7, 0.3, 0, 0, "layer.weight"), unit_roundoff(t) + 1e-6, 1e-5,
                  "ties");
    }
  }
}

TEST_CASE("every strategy equals its double-precision reference on f32, f16 and bf16 storage") {
  const std::vector<double> w = {1.0, 0.5, 2.0};
  for (dtype t : {dtype::f32, dtype::f16, dtype::bf16}) {
    // 129 x 521 spans two 65536-element blocks, so block seams are covered.
    const Fixture f = make_fixture(11, t, {129, 521}, 3);
    const auto views = f.views();
    // (The mergekit strategies have their references in test_merge_mergekit.)
    for (std::string_view m : {"average", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "slerp",
                               "model_stock", "nearswap"}) {
      CAPTURE(std::string(dtype_name(t)));
      CAPTURE(std::string(m));
      MergeSettings s;
      s.method = std::string(m);
      s.seed = 99;
      const bool pairwise = m == "slerp" || m == "nearswap";  // the base and expert 0, t = 0.7
      if (pairwise) s.t = 0.7;
      else if (m != "model_stock") s.weights = w;
      if (m != "average" && m != "model_stock" && !pairwise) s.scaling = 0.7;
      if (m == "ties") s.density = 0.3;
      if (m == "dare_linear" || m == "dare_ties") s.density = 0.4;
      if (m == "breadcrumbs") s.density = 0.6, s.gamma = 0.05;
      const AnyMerger merger = AnyMerger::from_settings(s);
      const Tensor out = twin::merge_tensor(merger, "layer.weight", f.base.view(),
                                            pairwise ? std::span<const ConstTensorView>(views).first(1) : views);
      const Vec ref = reference(m, f, w, s.t.value_or(s.scaling.value_or(1.0)), s.density.value_or(0),
                                s.gamma.value_or(0), 99, "layer.weight");
      // Storage rounding of the output plus f32 accumulation over 3 experts.
      check_close(out.view(), ref, unit_roundoff(t) + 1e-6, 1e-5, std::string(m));
    }
  }
}

TEST_CASE("the output dtype may differ from the inputs' and is rounded to nearest") {
  const Fixture f = make_fixture(12, dtype::f32, {64, 33}, 2);
  const auto views = f.views();
  const Tensor out = twin::merge_tensor(TaskArithmetic{0.3, {}}, "w", f.base.view(), views, dtype::bf16);
  CHECK(out.dtype() == dtype::bf16);
  check_close(out.view(), reference("task_arithmetic", f, {1, 1}, 0.3, 0, 0, 0, "w"), unit_roundoff(dtype::bf16), 1e-6);
}

TEST_CASE("ties: a sign sum of exactly zero elects +1") {
  // τ1 = +0.5, τ2 = -0.5 with equal weights: Σ = 0, so +1 wins and the
  // disjoint mean is the positive entry alone.
  const std::int64_t shape[] = {1};
  Tensor base = Tensor::from_f32(std::vector<float>{1.0f}, shape);
  Tensor e1 = Tensor::from_f32(std::vector<float>{1.5f}, shape);
  Tensor e2 = Tensor::from_f32(std::vector<float>{0.5f}, shape);
  const ConstTensorView ev[] = {e1.view(), e2.view()};
  const Tensor out = twin::merge_tensor(Ties{1.0, 1.0, TopKScope::per_tensor, {}}, "b", base.view(), ev);
  CHECK(out.values<float>()[0] == 1.5f);
  const Tensor dt = twin::merge_tensor(DareTies{{1.0, 1.0, 0, {}}}, "b", base.view(), ev);
  CHECK(dt.values<float>()[0] == 1.5f);
}

TEST_CASE("ties: where no expert moves an entry the output keeps the base value") {
  std::mt19937_64 rng(13);
  Tensor base = random_tensor(rng, dtype::f32, {16, 8});
  std::vector<Tensor> experts;
  for (int i = 0; i < 3; ++i) {
    Tensor e = perturbed(rng, base, 0.2);
    auto v = e.values<float>();
    auto b = base.values<float>();
    for (int r = 0; r < 16; ++r)
      v[static_cast<std::size_t>(r * 8 + 3)] = b[static_cast<std::size_t>(r * 8 + 3)];  // column 3 unchanged
    experts.push_back(std::move(e));
  }
  std::vector<ConstTensorView> ev;
  for (auto& e : experts) ev.push_back(e.view());
  for (double d : {0.2, 1.0}) {
    const Tensor out = twin::merge_tensor(Ties{d, 1.0, TopKScope::per_tensor, {}}, "w", base.view(), ev);
    for (int r = 0; r < 16; ++r)
      CHECK(out.values<float>()[static_cast<std::size_t>(r * 8 + 3)] ==
            base.values<float>()[static_cast<std::size_t>(r * 8 + 3)]);
  }
}

TEST_CASE("density 0 leaves the base and density 1 trims nothing") {
  const Fixture f = make_fixture(14, dtype::f32, {40, 30}, 3);
  const auto ev = f.views();
  const Vec base = f.basev();
  for (const AnyMerger& m :
       {AnyMerger(Ties{0.0, 1.0, TopKScope::per_tensor, {}}), AnyMerger(DareLinear{{0.0, 1.0, 5, {}}}),
        AnyMerger(DareTies{{0.0, 1.0, 5, {}}}), AnyMerger(Breadcrumbs{{0.0, 0.0, 1.0, {}, {}, {}, false}})}) {
    CAPTURE(std::string(m.name()));
    check_close(twin::merge_tensor(m, "w", f.base.view(), ev).view(), base, 0, 0);
  }
  // Density 1: Ties is elect + disjoint mean of the untrimmed vectors, and
  // DARE keeps every entry unscaled (DareLinear == TaskArithmetic).
  const Vec untrimmed = plus_scaled(base, ref_disjoint(f.taus(), {1, 1, 1}), 1.0);
  check_close(twin::merge_tensor(Ties{1.0, 1.0, TopKScope::per_tensor, {}}, "w", f.base.view(), ev).view(), untrimmed,
              1e-6, 1e-6);
  check_close(twin::merge_tensor(DareLinear{{1.0, 0.5, 5, {}}}, "w", f.base.view(), ev).view(),
              reference("task_arithmetic", f, {1, 1, 1}, 0.5, 0, 0, 0, "w"), 1e-6, 1e-6);
}

TEST_CASE("one expert: ties at density 1 and task arithmetic both give base + λτ") {
  const Fixture f = make_fixture(15, dtype::f32, {33}, 1);
  const auto ev = f.views();
  const Vec ref = plus_scaled(f.basev(), f.taus()[0], 0.4);
  check_close(twin::merge_tensor(Ties{1.0, 0.4, TopKScope::per_tensor, {}}, "b", f.base.view(), ev).view(), ref, 1e-6,
              1e-6);
  check_close(twin::merge_tensor(TaskArithmetic{0.4, {}}, "b", f.base.view(), ev).view(), ref, 1e-6, 1e-6);
}

TEST_CASE("breadcrumbs on a tensor smaller than 1/gamma drops no outliers and still keeps density") {
  // 5 entries, γ = 0.1: floor(0.5) = 0 outliers; density 0.6 keeps the 3
  // largest. (mergekit would zero the whole tensor.)
  const std::int64_t shape[] = {5};
  Tensor base = Tensor::from_f32(std::vector<float>{0, 0, 0, 0, 0}, shape);
  Tensor e = Tensor::from_f32(std::vector<float>{0.1f, -0.5f, 0.3f, 0.05f, -0.2f}, shape);
  const ConstTensorView ev[] = {e.view()};
  const Tensor out = twin::merge_tensor(Breadcrumbs{{0.6, 0.1, 1.0, {}, {}, {}, false}}, "tiny", base.view(), ev);
  const std::vector<float> expect = {0.0f, -0.5f, 0.3f, 0.0f, -0.2f};
  for (std::size_t j = 0; j < 5; ++j) CHECK(out.values<float>()[j] == expect[j]);
  // With 20 entries γ = 0.1 drops the 2 largest.
  std::vector<float> big(20);
  for (int j = 0; j < 20; ++j) big[static_cast<std::size_t>(j)] = static_cast<float>(j + 1);
  const std::int64_t s20[] = {20};
  Tensor b20 = Tensor::from_f32(std::vector<float>(20, 0.0f), s20), e20 = Tensor::from_f32(big, s20);
  const ConstTensorView ev20[] = {e20.view()};
  const Tensor o20 = twin::merge_tensor(Breadcrumbs{{0.5, 0.1, 1.0, {}, {}, {}, false}}, "t", b20.view(), ev20);
  for (int j = 0; j < 20; ++j)
    CHECK(o20.values<float>()[static_cast<std::size_t>(j)] == ((j >= 8 && j < 18) ? j + 1.0f : 0.0f));
}

TEST_CASE("a strided (non-contiguous) view merges like its contiguous copy") {
  const Fixture f = make_fixture(16, dtype::f16, {48, 20}, 3);
  // Transposed views of the same storage: shape [20, 48], strides {1, 20}.
  const std::int64_t tshape[] = {20, 48}, tstrides[] = {1, 20};
  auto transposed = [&](const Tensor& t) { return ConstTensorView(t.data(), t.dtype(), tshape, tstrides); };
  std::vector<ConstTensorView> ev;
  for (const auto& e : f.experts) ev.push_back(transposed(e));
  // Output also strided: write into a transposed view of a [48, 20] tensor.
  Tensor out(dtype::f32, {48, 20});
  const TensorView ov(out.mutable_data(), dtype::f32, tshape, tstrides);
  Ties{0.5, 1.0, TopKScope::per_tensor, {}}.merge_tensor(TensorMergeArgs{"w", transposed(f.base), ev, ov});
  // Reference on the contiguous transposed copies.
  Fixture g;
  auto materialize = [&](const Tensor& t) {
    const ConstTensorView v = transposed(t);
    std::vector<float> vals(static_cast<std::size_t>(v.numel()));
    read_f32(v, 0, v.numel(), vals.data());
    return Tensor::from_f32(vals, tshape, t.dtype());
  };
  g.base = materialize(f.base);
  for (const auto& e : f.experts) g.experts.push_back(materialize(e));
  const Vec ref = reference("ties", g, {1, 1, 1}, 1.0, 0.5, 0, 0, "w");
  check_close(ov, ref, 1e-6, 1e-6);
}

TEST_CASE("results are bit-identical for 1 and 2 threads, DARE and ties on bf16 included") {
  const Fixture f = make_fixture(17, dtype::bf16, {300, 400}, 4);
  const auto ev = f.views();
  // (The mergekit strategies have their own case in test_merge_mergekit.)
  for (std::string_view m : {"average", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "slerp",
                             "model_stock", "nearswap"}) {
    CAPTURE(std::string(m));
    MergeSettings s;
    s.method = std::string(m);
    s.seed = 3;
    const bool pairwise = m == "slerp" || m == "nearswap";  // the base and one expert
    if (pairwise) s.t = 0.3;
    else if (m != "average" && m != "task_arithmetic" && m != "model_stock") s.density = 0.3;
    const AnyMerger merger = AnyMerger::from_settings(s);
    const std::span<const ConstTensorView> inputs = pairwise ? std::span<const ConstTensorView>(ev).first(1) : ev;
    set_num_threads(1);
    const Tensor one = twin::merge_tensor(merger, "x", f.base.view(), inputs);
    set_num_threads(2);
    const Tensor two = twin::merge_tensor(merger, "x", f.base.view(), inputs);
    set_num_threads(0);
    CHECK(same_bits(one, two));
  }
}

TEST_CASE("dare keeps each entry with probability density (counter-based mask)") {
  const Fixture f = make_fixture(18, dtype::f32, {256, 256}, 1);
  const auto ev = f.views();
  const double p = 0.3;
  const Tensor out = twin::merge_tensor(DareLinear{{p, 1.0, 42, {}}}, "w", f.base.view(), ev);
  const Vec o = to_f64_vector(out.view()), b = f.basev();
  std::int64_t kept = 0;
  for (std::size_t j = 0; j < o.size(); ++j) kept += o[j] != b[j];
  const double n = static_cast<double>(o.size()), sd = std::sqrt(n * p * (1 - p));
  CHECK(std::abs(static_cast<double>(kept) - n * p) < 5 * sd);
  // Another seed gives another mask.
  const Tensor other = twin::merge_tensor(DareLinear{{p, 1.0, 43, {}}}, "w", f.base.view(), ev);
  CHECK_FALSE(same_bits(out, other));
}

// Checks a global-scope TIES merge (unit weights) of `merged` against the
// reference: each model's τ concatenated over those tensors in order, its
// top-k kept (ties: lower index first), then the disjoint mean; with
// zero_sign = majority a zero sum elects the sign of Σ_j sign(Σ_i τ'_ij) over
// the whole model (− where that is 0 too). Returns the concatenated length.
std::size_t check_global_ties(const StateDict& out, const StateDict& base, const std::vector<StateDict>& experts,
                              const std::vector<std::string>& merged, double density,
                              ZeroSign zero_sign = ZeroSign::plus) {
  std::vector<Vec> cat(experts.size());
  for (std::size_t i = 0; i < experts.size(); ++i)
    for (const auto& n : merged) {
      const Vec t = tau_of(experts[i].at(n), base.at(n));
      cat[i].insert(cat[i].end(), t.begin(), t.end());
    }
  for (auto& t : cat) {
    const auto keep = ref_top_k(t, floor_count(density, t.size()));
    for (std::size_t j = 0; j < t.size(); ++j) t[j] = keep[j] ? t[j] : 0.0;
  }
  double zero_elect = 1.0;
  if (zero_sign == ZeroSign::majority) {
    std::int64_t votes = 0;
    for (std::size_t j = 0; j < cat[0].size(); ++j) {
      double s = 0;
      for (const Vec& t : cat) s += t[j];
      votes += (s > 0) - (s < 0);
    }
    zero_elect = votes > 0 ? 1.0 : -1.0;
  }
  const Vec merged_cat = ref_disjoint(cat, Vec(experts.size(), 1.0), zero_elect);
  std::size_t off = 0;
  for (const auto& n : merged) {
    const Vec b = to_f64_vector(base.at(n).view());
    Vec ref(b.size());
    for (std::size_t j = 0; j < b.size(); ++j) ref[j] = b[j] + merged_cat[off + j];
    off += b.size();
    check_close(out.at(n).view(), ref, 1e-6, 1e-6, n);
  }
  return off;
}

TEST_CASE("merge_state: global ties scope equals the top-k over all merged tensors of each model") {
  std::mt19937_64 rng(19);
  StateDict base;
  base.insert("a.weight", random_tensor(rng, dtype::f32, {60, 70}));
  base.insert("a.bias", random_tensor(rng, dtype::f32, {60}));
  base.insert("head.weight", random_tensor(rng, dtype::f32, {10, 60}));
  base.insert("b.weight", random_tensor(rng, dtype::f32, {80, 50}));
  std::vector<StateDict> experts(3);
  for (int i = 0; i < 3; ++i)
    for (const auto& [name, t] : base)
      experts[static_cast<std::size_t>(i)].insert(name, perturbed(rng, t, 0.05 * (i + 1)));
  MergeOptions opts;
  opts.exclude = {".*head.*"};
  std::vector<std::string> seen;
  opts.progress = [&](std::size_t, std::size_t, std::string_view n) { seen.emplace_back(n); };
  const double density = 0.25;
  const StateDict out =
      merge_state(Ties{density, 1.0, TopKScope::global, {}}, base, std::span<const StateDict>(experts), opts);
  CHECK(seen == base.names());
  // Excluded tensors are the base's.
  check_close(out.at("head.weight").view(), to_f64_vector(base.at("head.weight").view()), 0, 0);
  check_global_ties(out, base, experts, {"a.weight", "a.bias", "b.weight"}, density);
  // Per-tensor scope trims differently (the experts differ in scale).
  const StateDict per =
      merge_state(Ties{density, 1.0, TopKScope::per_tensor, {}}, base, std::span<const StateDict>(experts), opts);
  CHECK_FALSE(same_bits(per.at("a.bias"), out.at("a.bias")));

  // The experts' excluded tensors are not read: one without its head, one with a head of 3 classes (another
  // task's label count) merge as before, and the output keeps the base's head; not excluded, both are refused.
  experts[0].erase("head.weight");
  experts[1].erase("head.weight");
  experts[1].insert("head.weight", random_tensor(rng, dtype::f32, {3, 60}));
  const StateDict heads =
      merge_state(Ties{density, 1.0, TopKScope::global, {}}, base, std::span<const StateDict>(experts), opts);
  CHECK(same_bits(heads.at("a.weight"), out.at("a.weight")));
  CHECK(same_bits(heads.at("head.weight"), base.at("head.weight")));
  CHECK_THROWS_AS(merge_state(Ties{density, 1.0, TopKScope::global, {}}, base, std::span<const StateDict>(experts)),
                  name_error);
}

TEST_CASE("mismatched names and shapes throw typed errors naming the tensor and both shapes") {
  std::mt19937_64 rng(20);
  StateDict base, e1, e2;
  base.insert("enc.w", random_tensor(rng, dtype::f32, {4, 5}));
  e1.insert("enc.w", random_tensor(rng, dtype::f32, {4, 6}));
  e2.insert("enc.v", random_tensor(rng, dtype::f32, {4, 5}));
  std::vector<const StateDict*> shape_bad = {&e1}, name_bad = {&e2};
  MergeOptions o;
  o.expert_labels = {"math.safetensors"};
  try {
    merge_state(TaskArithmetic{}, base, shape_bad, o);
    FAIL("no exception");
  } catch (const shape_error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("enc.w") != std::string::npos);
    CHECK(msg.find("[4, 5]") != std::string::npos);
    CHECK(msg.find("[4, 6]") != std::string::npos);
    CHECK(msg.find("math.safetensors") != std::string::npos);
  }
  CHECK_THROWS_AS(merge_state(TaskArithmetic{}, base, name_bad), name_error);
  MergeSettings unknown;
  unknown.method = "slerpish";
  CHECK_THROWS_AS(AnyMerger::from_settings(unknown), argument_error);
  MergeSettings bad_density;
  bad_density.method = "ties";
  bad_density.density = 1.5;
  CHECK_THROWS_AS(AnyMerger::from_settings(bad_density), argument_error);
  // A density per expert where the method takes one for all is refused, not dropped for the default.
  for (const char* m : {"ties", "dare_linear", "dare_ties"}) {
    MergeSettings per;
    per.method = m;
    per.densities = {0.7, 0.7};
    CHECK_THROWS_WITH_AS(AnyMerger::from_settings(per), doctest::Contains("takes one --density for every expert"),
                         argument_error);
  }
  MergeSettings eps;
  eps.method = "ram";
  eps.epsilons = {0.1, 0.2};
  CHECK_THROWS_WITH_AS(AnyMerger::from_settings(eps), doctest::Contains("ram takes one --epsilon"), argument_error);
  MergeSettings della;
  della.method = "della";
  della.densities = {0.4, 0.6};
  della.epsilons = {0.1, 0.1};
  CHECK_NOTHROW(AnyMerger::from_settings(della));
  MergeSettings bad_weights;
  bad_weights.method = "task_arithmetic";
  bad_weights.weights = {1, 2, 3};
  std::vector<const StateDict*> one = {&base};
  CHECK_THROWS_AS(merge_state(AnyMerger::from_settings(bad_weights), base, one), argument_error);
  StateDict ints;
  ints.insert("enc.w", Tensor(dtype::i32, {4, 5}));
  std::vector<const StateDict*> int_bad = {&ints};
  CHECK_THROWS_AS(merge_state(TaskArithmetic{}, base, int_bad), dtype_error);
}

TEST_CASE("task vectors: norms and cosine similarity equal their double-precision definitions") {
  std::mt19937_64 rng(21);
  StateDict base, e1, e2;
  base.insert("w", random_tensor(rng, dtype::f32, {30, 20}));
  base.insert("b", random_tensor(rng, dtype::bf16, {20}));
  for (const auto& [name, t] : base) {
    e1.insert(name, perturbed(rng, t, 0.1, t.dtype()));
    e2.insert(name, perturbed(rng, t, 0.3, t.dtype()));
  }
  const TaskVector t1 = TaskVector::from(base, e1), t2 = TaskVector::from(base, e2);
  Vec a, b;
  for (const auto& n : base.names()) {
    const Vec x = tau_of(e1.at(n), base.at(n)), y = tau_of(e2.at(n), base.at(n));
    a.insert(a.end(), x.begin(), x.end());
    b.insert(b.end(), y.begin(), y.end());
  }
  double aa = 0, bb = 0, ab = 0;
  for (std::size_t j = 0; j < a.size(); ++j) aa += a[j] * a[j], bb += b[j] * b[j], ab += a[j] * b[j];
  CHECK(t1.norm() == doctest::Approx(std::sqrt(aa)).epsilon(1e-12));
  CHECK(cosine_similarity(t1, t2) == doctest::Approx(ab / std::sqrt(aa * bb)).epsilon(1e-12));
  const TaskVector tvs[] = {t1.clone(), t2.clone()};
  const auto m = cosine_similarity_matrix(tvs);
  CHECK(m[0][0] == doctest::Approx(1.0));
  CHECK(m[0][1] == doctest::Approx(ab / std::sqrt(aa * bb)).epsilon(1e-12));
  // base + 0.5 (τ1 + τ2) equals task arithmetic with λ = 0.5.
  const StateDict applied = (t1 + t2).apply_to(base, 0.5);
  std::vector<const StateDict*> ex = {&e1, &e2};
  const StateDict ta = merge_state(TaskArithmetic{0.5, {}}, base, ex);
  for (const auto& n : base.names())
    check_close(applied.at(n).view(), to_f64_vector(ta.at(n).view()), unit_roundoff(base.at(n).dtype()), 1e-6, n);
}

TEST_CASE("TaskVector::from skips its excluded tensors: an expert's head of another size or none is not checked") {
  // A fine-tuned classifier's head has its own label count; excluded, it is
  // neither part of τ nor compared with the base's.
  std::mt19937_64 rng(23);
  StateDict base, expert, headless;
  base.insert("w", random_tensor(rng, dtype::f32, {6, 4}));
  base.insert("head.weight", random_tensor(rng, dtype::f32, {3, 4}));
  expert.insert("w", perturbed(rng, base.at("w"), 0.2));
  expert.insert("head.weight", random_tensor(rng, dtype::f32, {5, 4}));
  headless.insert("w", expert.at("w").clone());
  const std::vector<std::string> exclude = {"head\\..*"};
  for (const StateDict* e : {&expert, &headless}) {
    const TaskVector tv = TaskVector::from(base, *e, exclude);
    REQUIRE(tv.size() == 1);
    CHECK_FALSE(tv.deltas().contains("head.weight"));
    check_close(tv.deltas().at("w").view(), tau_of(e->at("w"), base.at("w")), 1e-7, 0.0, "w");
  }
  // Not excluded, the head's shape is still refused.
  CHECK_THROWS_AS(TaskVector::from(base, expert), shape_error);
}

TEST_CASE("merge_state_into writes caller-owned outputs (another dtype) equal to merge_state's, rounded") {
  std::mt19937_64 rng(22);
  StateDict base;
  base.insert("w", random_tensor(rng, dtype::f32, {40, 50}));
  base.insert("head", random_tensor(rng, dtype::f32, {3, 50}));
  std::vector<StateDict> experts(2);
  for (auto& e : experts)
    for (const auto& [name, t] : base) e.insert(name, perturbed(rng, t, 0.1));
  StateDict out;
  out.insert("w", Tensor(dtype::bf16, {40, 50}));
  out.insert("head", Tensor(dtype::f16, {3, 50}));
  std::vector<const StateDict*> ex = {&experts[0], &experts[1]};
  MergeOptions o;
  o.exclude = {"head"};
  merge_state_into(TaskArithmetic{0.3, {}}, base, ex, out, o);
  const StateDict ref = merge_state(TaskArithmetic{0.3, {}}, base, ex, o);
  check_close(out.at("w").view(), to_f64_vector(ref.at("w").view()), unit_roundoff(dtype::bf16), 0);
  check_close(out.at("head").view(), to_f64_vector(base.at("head").view()), unit_roundoff(dtype::f16), 0);
  StateDict missing;
  missing.insert("w", Tensor(dtype::f32, {40, 50}));
  CHECK_THROWS_AS(merge_state_into(TaskArithmetic{}, base, ex, missing, o), name_error);
}

TEST_CASE("merging in place (output = base or an expert, f32 and bf16, strided) equals the out-of-place merge") {
  // An engine short on memory merges into the base's own tensor. Every
  // strategy must give bit for bit what it gives into fresh memory.
  for (const dtype t : {dtype::f32, dtype::bf16}) {
    for (std::string_view m : merge_method_names) {
      CAPTURE(dtype_name(t));
      CAPTURE(std::string(m));
      MergeSettings s;
      s.method = std::string(m);
      s.seed = 5;
      // The base and one expert, or (nuslerp) two.
      const bool pairwise = m == "slerp" || m == "nearswap" || m == "arcee_fusion" || m == "passthrough";
      const bool two = m == "nuslerp";
      if (m == "slerp" || m == "nearswap") s.t = 0.4;
      const bool gta = m == "ties" || m.starts_with("dare") || m.starts_with("breadcrumbs") || m.starts_with("della");
      if (gta || m == "task_arithmetic") s.scaling = 0.7;
      if (gta) s.density = 0.3;
      if (m == "passthrough") s.scale = 0.5;
      const AnyMerger merger = AnyMerger::from_settings(s);
      const Fixture f = make_fixture(23, t, {70, 90}, pairwise ? 2 : 3);
      const auto all = f.views();
      // Pairwise methods take expert 1 alone (expert 1 is also an output below).
      const std::span<const ConstTensorView> ev = pairwise ? std::span<const ConstTensorView>(all).subspan(1, 1)
                                                  : two    ? std::span<const ConstTensorView>(all).first(2)
                                                           : all;
      const Tensor ref = twin::merge_tensor(merger, "x", f.base.view(), ev);

      Tensor base = f.base.clone();  // output = base
      merger.merge_tensor({"x", base.view(), ev, base.view()});
      CHECK(same_bits(base, ref));

      Fixture g = make_fixture(23, t, {70, 90}, pairwise ? 2 : 3);  // output = expert 1
      const auto gall = g.views();
      const std::span<const ConstTensorView> gv = pairwise ? std::span<const ConstTensorView>(gall).subspan(1, 1)
                                                  : two    ? std::span<const ConstTensorView>(gall).first(2)
                                                           : gall;
      merger.merge_tensor({"x", g.base.view(), gv, g.experts[1].view()});
      CHECK(same_bits(g.experts[1], ref));

      // A transposed view of the base's memory as output: the elements it
      // writes alias different positions of the input.
      Tensor tb = f.base.clone();
      const std::int64_t tshape[2] = {70, 90}, tstrides[2] = {1, 70};
      Tensor transposed_in = Tensor::empty(t, std::vector<std::int64_t>{70, 90});
      copy_convert(TensorView(tb.view().data(), t, tshape, tstrides), transposed_in.view());
      const Tensor tref = twin::merge_tensor(merger, "x", transposed_in.view(), ev);
      const TensorView tout(tb.view().data(), t, tshape, tstrides);
      merger.merge_tensor({"x", tout, ev, tout});
      Tensor back = Tensor::empty(t, std::vector<std::int64_t>{70, 90});
      copy_convert(tout, back.view());
      CHECK(same_bits(back, tref));
    }
  }
}

// ---------------------------------------------------------------------------
// The official TIES / Twin-Merging code's rules (selection = kthvalue,
// zero_sign = majority), on hand-worked cases. With base 0, one expert and
// λ = 1, Ties returns the trimmed task vector itself.

namespace {
std::vector<double> ties_of(const Ties& m, const std::vector<std::vector<float>>& taus) {
  const auto n = static_cast<std::int64_t>(taus[0].size());
  const Tensor base(dtype::f32, {n});
  std::vector<Tensor> ex;
  for (const auto& t : taus) ex.push_back(Tensor::from_f32(t, std::vector<std::int64_t>{n}));
  std::vector<ConstTensorView> ev;
  for (const auto& e : ex) ev.push_back(e.view());
  return to_f64_vector(twin::merge_tensor(m, "t", base.view(), ev).view());
}
Ties official_ties(double density, TopKSelection sel, ZeroSign zs) {
  Ties t{density, 1.0, TopKScope::per_tensor, {}};
  t.selection = sel;
  t.zero_sign = zs;
  return t;
}
}  // namespace

TEST_CASE("ties selection kthvalue keeps k + 1 entries and every tie at the threshold, as topk_values_mask") {
  // n = 6, density 0.5: k = int(3.0) = 3; the (6 − 3) = 3rd smallest
  // magnitude is 0.25, so every |τ| ≥ 0.25 stays: five entries. The exact
  // rule keeps three: 0.5, −0.5 and the lowest-indexed 0.25.
  const std::vector<float> tau{0.5f, -0.25f, 0.25f, 0.125f, -0.5f, 0.25f};
  CHECK(ties_of(official_ties(0.5, TopKSelection::kthvalue, ZeroSign::plus), {tau}) ==
        std::vector<double>{0.5, -0.25, 0.25, 0.0, -0.5, 0.25});
  CHECK(ties_of(official_ties(0.5, TopKSelection::exact, ZeroSign::plus), {tau}) ==
        std::vector<double>{0.5, -0.25, 0.0, 0.0, -0.5, 0.0});
  // Density 1 keeps all (the official code fails there); density 0 keeps
  // the largest magnitude and its ties (k = 0: the n-th smallest).
  const std::vector<double> all(tau.begin(), tau.end());
  CHECK(ties_of(official_ties(1.0, TopKSelection::kthvalue, ZeroSign::plus), {tau}) == all);
  CHECK(ties_of(official_ties(0.0, TopKSelection::kthvalue, ZeroSign::plus), {tau}) ==
        std::vector<double>{0.5, 0.0, 0.0, 0.0, -0.5, 0.0});
  // k is truncated as Python's int(n * density): 100 * 0.3 = 30.000000000000004
  // keeps 31 distinct magnitudes; 100 * 0.29 = 28.999999999999996 keeps 29,
  // where the exact rule's floor(n * density) (nudged) keeps 30 and 29.
  std::vector<float> ramp(100);
  for (std::size_t i = 0; i < ramp.size(); ++i) ramp[i] = static_cast<float>(i + 1) / 128.0f;
  auto kept = [&](const Ties& m) {
    const auto out = ties_of(m, {ramp});
    return std::count_if(out.begin(), out.end(), [](double x) { return x != 0.0; });
  };
  CHECK(kept(official_ties(0.3, TopKSelection::kthvalue, ZeroSign::plus)) == 31);
  CHECK(kept(official_ties(0.3, TopKSelection::exact, ZeroSign::plus)) == 30);
  CHECK(kept(official_ties(0.29, TopKSelection::kthvalue, ZeroSign::plus)) == 29);
  CHECK(kept(official_ties(0.29, TopKSelection::exact, ZeroSign::plus)) == 29);
}

TEST_CASE("ties zero_sign majority: a zero sum elects the sign of all elected signs; a tied vote keeps negatives") {
  // Sums [0, −2, −2, −1]: votes 0 − 1 − 1 − 1 < 0, so entry 0 elects −:
  // it keeps τ2's −1. With plus it keeps τ1's +1.
  const std::vector<float> t1{1.0f, -1.0f, -1.0f, 1.0f}, t2{-1.0f, -1.0f, -1.0f, -2.0f};
  CHECK(ties_of(official_ties(1.0, TopKSelection::exact, ZeroSign::majority), {t1, t2}) ==
        std::vector<double>{-1.0, -1.0, -1.0, -2.0});
  CHECK(ties_of(official_ties(1.0, TopKSelection::exact, ZeroSign::plus), {t1, t2}) ==
        std::vector<double>{1.0, -1.0, -1.0, -2.0});
  // Sums [0, 2, −2]: a tied vote (0); the official code's sign 0 keeps the
  // negative entries, so entry 0 takes τ2's −1.
  const std::vector<float> u1{1.0f, 1.0f, -1.0f}, u2{-1.0f, 1.0f, -1.0f};
  CHECK(ties_of(official_ties(1.0, TopKSelection::exact, ZeroSign::majority), {u1, u2}) ==
        std::vector<double>{-1.0, 1.0, -1.0});
}

TEST_CASE(
    "global ties scope over a model past the small-selection size (sampled windows, one counting pass) equals "
    "the top-k over the concatenated τ, ties across tensors kept in model order") {
  std::mt19937_64 rng(23);
  StateDict base;
  base.insert("a.weight", random_tensor(rng, dtype::f32, {150, 120}));
  base.insert("b.weight", random_tensor(rng, dtype::f32, {90, 100}));
  base.insert("c.bias", random_tensor(rng, dtype::f32, {300}));
  // Base values and deltas on a grid of 1/64: many τ entries share a magnitude, so the k-th largest
  // key has ties that the cut splits across tensors by their order in the model.
  for (auto& [name, t] : base)
    for (std::int64_t j = 0; j < t.numel(); ++j)
      static_cast<float*>(t.mutable_data())[j] = std::round(static_cast<float*>(t.mutable_data())[j] * 8.0f) / 8.0f;
  std::vector<StateDict> experts(3);
  for (int i = 0; i < 3; ++i)
    for (const auto& [name, t] : base) {
      Tensor e = t.clone();
      std::uniform_int_distribution<int> step(-6, 5);  // leaning negative: the model's vote is −
      for (std::int64_t j = 0; j < e.numel(); ++j)
        static_cast<float*>(e.mutable_data())[j] += static_cast<float>(step(rng) * (i + 1)) / 64.0f;
      experts[static_cast<std::size_t>(i)].insert(name, std::move(e));
    }
  const std::vector<std::string> merged = base.names();
  for (const double density : {0.2, 0.5}) {
    CAPTURE(density);
    std::optional<StateDict> plus;
    for (const ZeroSign zs : {ZeroSign::plus, ZeroSign::majority}) {
      CAPTURE(zs == ZeroSign::majority);
      Ties m{density, 1.0, TopKScope::global, {}};
      m.zero_sign = zs;
      StateDict out = merge_state(m, base, std::span<const StateDict>(experts));
      REQUIRE(check_global_ties(out, base, experts, merged, density, zs) > 16384);  // past detail::select_small
      if (!plus) plus = std::move(out);
      else CHECK_FALSE(same_bits(out.at("a.weight"), plus->at("a.weight")));  // the vote decided some zero sums
    }
  }
}

TEST_CASE("ties zero_sign majority with global scope votes over the whole model, per-tensor over each tensor") {
  // Tensor a: sums [0, +2] (its own vote +1); tensor b: sums [−2, −2]. The
  // model's vote is 1 − 2 < 0, so with global scope a's zero sum elects −.
  StateDict base, e1, e2;
  base.insert("a", Tensor(dtype::f32, {2}));
  base.insert("b", Tensor(dtype::f32, {2}));
  e1.insert("a", Tensor::from_f32(std::vector<float>{1.0f, 1.0f}, std::vector<std::int64_t>{2}));
  e2.insert("a", Tensor::from_f32(std::vector<float>{-1.0f, 1.0f}, std::vector<std::int64_t>{2}));
  e1.insert("b", Tensor::from_f32(std::vector<float>{-1.0f, -1.0f}, std::vector<std::int64_t>{2}));
  e2.insert("b", Tensor::from_f32(std::vector<float>{-1.0f, -1.0f}, std::vector<std::int64_t>{2}));
  const StateDict* ex[] = {&e1, &e2};
  Ties m{1.0, 1.0, TopKScope::global, {}};
  m.zero_sign = ZeroSign::majority;
  CHECK(to_f64_vector(merge_state(m, base, ex).at("a").view()) == std::vector<double>{-1.0, 1.0});
  m.scope = TopKScope::per_tensor;
  CHECK(to_f64_vector(merge_state(m, base, ex).at("a").view()) == std::vector<double>{1.0, 1.0});
  m.zero_sign = ZeroSign::plus;
  m.scope = TopKScope::global;
  CHECK(to_f64_vector(merge_state(m, base, ex).at("a").view()) == std::vector<double>{1.0, 1.0});
}

// --- interpolating strategies (mergekit's slerp, model_stock, nearswap) ---------------------

namespace {
Tensor f32_tensor(std::vector<float> v, std::vector<std::int64_t> shape) {
  return Tensor::from_f32(std::span<const float>(v), std::span<const std::int64_t>(shape));
}
Tensor merged(const AnyMerger& m, const Tensor& base, const std::vector<const Tensor*>& experts) {
  std::vector<ConstTensorView> ev;
  for (const Tensor* e : experts) ev.push_back(e->view());
  return twin::merge_tensor(m, "w", base.view(), ev);
}
AnyMerger by_name(const std::string& method, std::optional<double> t = {}, bool filter_wise = false) {
  MergeSettings s;
  s.method = method;
  s.t = t;
  s.filter_wise = filter_wise;
  return AnyMerger::from_settings(s);
}
double norm2(const Vec& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return std::sqrt(s);
}
}  // namespace

TEST_CASE("slerp: the worked example, and the angle and norm of unit vectors move by t") {
  // base [1, 0], expert [1, √3], t = 0.5: θ0 = π/3, s0 = s1 = 0.5/sin(π/3) → [1.154701, 1.000000].
  const Tensor b = f32_tensor({1.0f, 0.0f}, {2}), e = f32_tensor({1.0f, std::sqrt(3.0f)}, {2});
  check_close(merged(by_name("slerp", 0.5), b, {&e}).view(), {2.0 / std::sqrt(3.0), 1.0}, 1e-6, 1e-6);
  // Unit vectors at angle θ: the result is a unit vector at angle tθ from the base.
  std::mt19937_64 rng(5);
  const Tensor u0 = random_tensor(rng, dtype::f32, {64}, 1.0), u1 = random_tensor(rng, dtype::f32, {64}, 1.0);
  auto unit = [](const Tensor& t) {
    Vec v = to_f64_vector(t.view());
    const double n = norm2(v);
    std::vector<float> f;
    for (double x : v) f.push_back(static_cast<float>(x / n));
    return f32_tensor(f, {static_cast<std::int64_t>(f.size())});
  };
  const Tensor a = unit(u0), c = unit(u1);
  const Vec av = to_f64_vector(a.view()), cv = to_f64_vector(c.view());
  double dot = 0;
  for (std::size_t j = 0; j < av.size(); ++j) dot += av[j] * cv[j];
  const double theta = std::acos(dot);
  for (double t : {0.25, 0.5, 0.9}) {
    CAPTURE(t);
    const Vec r = to_f64_vector(merged(by_name("slerp", t), a, {&c}).view());
    double ra = 0;
    for (std::size_t j = 0; j < r.size(); ++j) ra += r[j] * av[j];
    CHECK(norm2(r) == doctest::Approx(1.0).epsilon(1e-5));
    CHECK(std::acos(std::clamp(ra / norm2(r), -1.0, 1.0)) == doctest::Approx(t * theta).epsilon(1e-4));
  }
  // t = 0 gives the base back bit for bit.
  CHECK(same_bits(merged(by_name("slerp", 0.0), a, {&c}), a));
}

TEST_CASE("slerp: near-colinear (|cos| > 0.9995) and antiparallel tensors fall back to lerp") {
  const Tensor b = f32_tensor({1.0f, 2.0f, -1.0f}, {3});
  const Tensor twice = f32_tensor({2.0f, 4.0f, -2.0f}, {3}), opposite = f32_tensor({-3.0f, -6.0f, 3.0f}, {3});
  for (const Tensor* e : {&twice, &opposite}) {
    const Vec bv = to_f64_vector(b.view()), evv = to_f64_vector(e->view());
    Vec lerp(3);
    for (std::size_t j = 0; j < 3; ++j) lerp[j] = 0.7 * bv[j] + 0.3 * evv[j];
    check_close(merged(by_name("slerp", 0.3), b, {e}).view(), lerp, 1e-6, 1e-6);
  }
}

TEST_CASE("model_stock: the worked 2-expert example and a hand-worked 4-expert case") {
  // w0 = [1,1], w1 = [2,1], w2 = [2,2]: cos = 1/√2, t = 2(√2 − 1) → [1.828427, 1.414214].
  const Tensor b = f32_tensor({1, 1}, {2}), e1 = f32_tensor({2, 1}, {2}), e2 = f32_tensor({2, 2}, {2});
  const double t = 2.0 * (std::sqrt(2.0) - 1.0);
  check_close(merged(by_name("model_stock"), b, {&e1, &e2}).view(), {t * 2.0 + (1 - t), t * 1.5 + (1 - t)}, 1e-6, 1e-6);
  // Offsets [1,0] ×3 and [0,1]: pair cosines 1,1,1,0,0,0 → mean 0.5, t = 4·0.5/(1 + 3·0.5) = 0.8;
  // average [1.75, 1.25] → 0.8·[1.75, 1.25] + 0.2·[1, 1] = [1.6, 1.2].
  const Tensor e3 = f32_tensor({2, 1}, {2}), e4 = f32_tensor({1, 2}, {2});
  check_close(merged(by_name("model_stock"), b, {&e1, &e1, &e3, &e4}).view(), {1.6, 1.2}, 1e-6, 1e-6);
  // No expert moved: cos = 0, t = 0, the base.
  check_close(merged(by_name("model_stock"), b, {&b, &b}).view(), {1.0, 1.0}, 0, 0);
  // Exactly opposite task vectors with 2 experts: 1 + (N−1)·cos = 0 is refused, not NaN.
  const Tensor back = f32_tensor({0, 1}, {2});
  CHECK_THROWS_AS(merged(by_name("model_stock"), b, {&e1, &back}), numeric_error);
}

TEST_CASE("model_stock filter_wise: each row merges as that row alone would") {
  std::mt19937_64 rng(8);
  const Tensor b = random_tensor(rng, dtype::f32, {3, 16}, 1.0);
  std::vector<Tensor> ex;
  for (int i = 0; i < 3; ++i) ex.push_back(perturbed(rng, b, 0.2));
  const std::vector<const Tensor*> ep = {&ex[0], &ex[1], &ex[2]};
  const Vec got = to_f64_vector(merged(by_name("model_stock", {}, true), b, ep).view());
  const Vec bv = to_f64_vector(b.view());
  for (std::int64_t r = 0; r < 3; ++r) {
    CAPTURE(r);
    auto row = [&](const Tensor& t) {
      const Vec v = to_f64_vector(t.view());
      return f32_tensor(std::vector<float>(v.begin() + r * 16, v.begin() + (r + 1) * 16), {16});
    };
    const Tensor rb = row(b), r0 = row(ex[0]), r1 = row(ex[1]), r2 = row(ex[2]);
    const Vec ref = to_f64_vector(merged(by_name("model_stock"), rb, {&r0, &r1, &r2}).view());
    for (std::int64_t j = 0; j < 16; ++j)
      CHECK(got[static_cast<std::size_t>(r * 16 + j)] == ref[static_cast<std::size_t>(j)]);
  }
  // Per tensor, one t for the whole tensor: a different result.
  CHECK_FALSE(same_bits(merged(by_name("model_stock"), b, ep), merged(by_name("model_stock", {}, true), b, ep)));
}

TEST_CASE("nearswap: the expert's value within t, a step of t toward it beyond") {
  // |Δ| = 0.05 ≤ t: the expert; |Δ| = 1: w = 0.1; |Δ| = 0: the (equal) value.
  const Tensor b = f32_tensor({0.0f, 0.0f, 1.0f}, {3}), e = f32_tensor({0.05f, 1.0f, 1.0f}, {3});
  check_close(merged(by_name("nearswap", 0.1), b, {&e}).view(), {0.05, 0.1, 1.0}, 1e-6, 1e-7);
  CHECK(same_bits(merged(by_name("nearswap", 0.0), b, {&e}), b));
}

TEST_CASE("slerp, model_stock, nearswap: tensors without elements merge to tensors without elements") {
  for (const std::vector<std::int64_t>& shape : {std::vector<std::int64_t>{0}, std::vector<std::int64_t>{3, 0}}) {
    const Tensor b = f32_tensor({}, shape), e = f32_tensor({}, shape);
    CHECK(merged(by_name("slerp", 0.5), b, {&e}).numel() == 0);
    CHECK(merged(by_name("nearswap", 0.5), b, {&e}).numel() == 0);
    CHECK(merged(by_name("model_stock"), b, {&e, &e}).numel() == 0);
    CHECK(merged(by_name("model_stock", {}, true), b, {&e, &e}).numel() == 0);
  }
}

TEST_CASE("slerp, model_stock, nearswap: wrong expert counts and foreign options are refused") {
  const Tensor b = f32_tensor({1, 1}, {2}), e = f32_tensor({2, 1}, {2});
  CHECK_THROWS_AS(merged(by_name("slerp", 0.5), b, {&e, &e}), argument_error);
  CHECK_THROWS_AS(merged(by_name("nearswap", 0.5), b, {&e, &e}), argument_error);
  CHECK_THROWS_AS(merged(by_name("model_stock"), b, {&e}), argument_error);
  CHECK_THROWS_AS(by_name("slerp"), argument_error);             // t is required
  CHECK_THROWS_AS(by_name("ties", 0.5), argument_error);         // t is not a ties option
  CHECK_THROWS_AS(by_name("slerp", 0.5, true), argument_error);  // filter_wise is model_stock's
  MergeSettings s;
  s.method = "model_stock";
  s.density = 0.5;
  CHECK_THROWS_AS(AnyMerger::from_settings(s), argument_error);
}
