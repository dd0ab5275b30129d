// The router and the layers it is built from: gradients against central
// finite differences in double, float kernels against double loops,
// BatchNorm's two modes, Adam against its formula, training on synthetic
// clusters, determinism across runs and thread counts, persistence and the
// typed errors of bad input.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

// Every kernel takes its parallel path even on these small sizes, so the
// thread-count tests below exercise it.
#define TWIN_NN_PARALLEL_MIN_WORK 0.0
#define TWIN_NN_PARALLEL_MIN_ELEMENTS 0
#include "test_support.hpp"
#include "twin/io/router_file.hpp"
#include "twin/route/router.hpp"
#include "twin/route/router_training.hpp"

using namespace twin;
using MatD = nn::Matrix<double>;
using MatF = nn::Matrix<float>;

namespace {

MatD random_matrix(std::mt19937_64& rng, Eigen::Index r, Eigen::Index c, double scale = 1.0) {
  std::normal_distribution<double> nd(0.0, scale);
  MatD m(r, c);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = nd(rng);
  return m;
}

// Largest |a − b| / (|b| + floor) over all elements.
double max_rel_err(const MatD& a, const MatD& b, double floor = 1e-3) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  double e = 0;
  for (Eigen::Index i = 0; i < a.size(); ++i)
    e = std::max(e, std::abs(a.data()[i] - b.data()[i]) / (std::abs(b.data()[i]) + floor));
  return e;
}

// Central differences of the scalar f with respect to every element of m.
MatD numeric_grad(MatD& m, const std::function<double()>& f, double h = 1e-6) {
  MatD g(m.rows(), m.cols());
  for (Eigen::Index i = 0; i < m.size(); ++i) {
    const double keep = m.data()[i];
    m.data()[i] = keep + h;
    const double up = f();
    m.data()[i] = keep - h;
    const double down = f();
    m.data()[i] = keep;
    g.data()[i] = (up - down) / (2 * h);
  }
  return g;
}

double dot(const MatD& a, const MatD& b) { return (a.array() * b.array()).sum(); }

// Expects `f` to throw exactly E with every fragment in its message.
template <class E, class F>
void check_throws(F&& f, std::initializer_list<const char*> fragments) {
  bool thrown = false;
  try {
    f();
  } catch (const E& e) {
    thrown = true;
    const std::string msg = e.what();
    for (const char* frag : fragments) {
      INFO("message: " << msg << " | missing: " << frag);
      CHECK(msg.find(frag) != std::string::npos);
    }
  } catch (const std::exception& e) {
    FAIL("wrong exception type, message: " << e.what());
  }
  CHECK(thrown);
}

// T Gaussian clusters in d dimensions: centers at distance `sep` apart on
// random directions, unit noise, a shared offset and per-feature scales so
// that standardization has work to do.
struct Clusters {
  Tensor x;
  std::vector<std::int64_t> y;
};

Clusters make_clusters(std::uint64_t seed, std::int64_t T, std::int64_t per_task, std::int64_t d, double sep,
                       std::uint64_t sample_seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<double> centers(static_cast<std::size_t>(T * d)), offset(static_cast<std::size_t>(d)),
      scale(static_cast<std::size_t>(d));
  for (double& c : centers) c = nd(rng) * sep / std::sqrt(2.0 * static_cast<double>(d));
  for (std::int64_t j = 0; j < d; ++j)
    offset[static_cast<std::size_t>(j)] = 5.0 * nd(rng), scale[static_cast<std::size_t>(j)] = std::exp(nd(rng));
  std::mt19937_64 srng(sample_seed);
  Clusters c;
  std::vector<float> v;
  for (std::int64_t i = 0; i < T * per_task; ++i) {
    const std::int64_t t = i % T;
    c.y.push_back(t);
    for (std::int64_t j = 0; j < d; ++j)
      v.push_back(static_cast<float>(offset[static_cast<std::size_t>(j)] +
                                     scale[static_cast<std::size_t>(j)] *
                                         (centers[static_cast<std::size_t>(t * d + j)] + nd(srng))));
  }
  c.x = Tensor::from_f32(v, std::vector<std::int64_t>{T * per_task, d});
  return c;
}

bool same_state(const StateDict& a, const StateDict& b) {
  if (a.names() != b.names()) return false;
  for (const auto& [name, t] : a)
    if (!twin_test::same_bits(t, b.at(name))) return false;
  return true;
}

}  // namespace

// --- layers ------------------------------------------------------------------

TEST_CASE("Linear gradients (weight, bias, input) match central finite differences in double") {
  std::mt19937_64 rng(101);
  nn::Linear<double> lin(4, 3);
  lin.weight.value = random_matrix(rng, 3, 4);
  lin.bias.value = random_matrix(rng, 1, 3);
  MatD x = random_matrix(rng, 5, 4);
  const MatD G = random_matrix(rng, 5, 3);  // L = Σ y ⊙ G, so dL/dy = G
  MatD y, dx;
  auto loss = [&] {
    lin.forward(x, y);
    return dot(y, G);
  };
  loss();
  lin.backward(x, G, &dx);
  const MatD dW = lin.weight.grad, db = lin.bias.grad;
  CHECK(max_rel_err(dW, numeric_grad(lin.weight.value, loss)) < 1e-7);
  CHECK(max_rel_err(db, numeric_grad(lin.bias.value, loss)) < 1e-7);
  CHECK(max_rel_err(dx, numeric_grad(x, loss)) < 1e-7);
}

TEST_CASE("BatchNorm1d training-mode gradients (input, gamma, beta) match central finite differences in double") {
  std::mt19937_64 rng(102);
  nn::BatchNorm1d<double> bn(4);
  bn.weight.value = random_matrix(rng, 1, 4);
  bn.bias.value = random_matrix(rng, 1, 4);
  MatD x = random_matrix(rng, 6, 4, 2.0);
  const MatD G = random_matrix(rng, 6, 4);
  MatD y, dx;
  auto loss = [&] {
    bn.forward_train(x, y);
    return dot(y, G);
  };
  loss();
  bn.backward(G, dx);
  const MatD dg = bn.weight.grad, dbeta = bn.bias.grad;
  CHECK(max_rel_err(dx, numeric_grad(x, loss)) < 1e-6);
  CHECK(max_rel_err(dg, numeric_grad(bn.weight.value, loss)) < 1e-7);
  CHECK(max_rel_err(dbeta, numeric_grad(bn.bias.value, loss)) < 1e-7);
}

TEST_CASE("LeakyReLU gradient matches central finite differences and is slope on the negative side") {
  std::mt19937_64 rng(103);
  nn::LeakyReLU<double> act(0.2);
  MatD x = random_matrix(rng, 5, 6);
  for (Eigen::Index i = 0; i < x.size(); ++i)  // keep away from the kink
    if (std::abs(x.data()[i]) < 0.05) x.data()[i] = 0.5;
  const MatD G = random_matrix(rng, 5, 6);
  MatD y, dx;
  auto loss = [&] {
    act.forward(x, y);
    return dot(y, G);
  };
  loss();
  act.backward(x, G, dx);
  CHECK(max_rel_err(dx, numeric_grad(x, loss)) < 1e-7);
  for (Eigen::Index i = 0; i < x.size(); ++i)
    CHECK(y.data()[i] == doctest::Approx(x.data()[i] > 0 ? x.data()[i] : 0.2 * x.data()[i]));
}

TEST_CASE(
    "Dropout keeps about 1-p of the elements scaled by 1/(1-p), the same mask for the same stream, and its gradient matches finite differences") {
  std::mt19937_64 rng(104);
  nn::Dropout<double> drop(0.3, 77);
  MatD x = random_matrix(rng, 40, 50);
  MatD y, y2, dx;
  drop.forward_train(x, y, 5);
  const MatD mask = drop.mask();
  std::int64_t kept = 0;
  for (Eigen::Index i = 0; i < mask.size(); ++i) {
    const double m = mask.data()[i];
    CHECK((m == 0.0 || m == doctest::Approx(1.0 / 0.7)));
    kept += m != 0.0;
    CHECK(y.data()[i] == x.data()[i] * m);
  }
  // 2000 Bernoulli(0.7) draws: mean 1400, sd 20.5
  CHECK(std::abs(static_cast<double>(kept) - 1400.0) < 5 * 20.5);
  drop.forward_train(x, y2, 5);
  CHECK(drop.mask() == mask);
  drop.forward_train(x, y2, 6);
  CHECK(drop.mask() != mask);

  MatD xs = random_matrix(rng, 4, 5);
  const MatD G = random_matrix(rng, 4, 5);
  auto loss = [&] {
    drop.forward_train(xs, y, 5);
    return dot(y, G);
  };
  loss();
  drop.backward(G, dx);
  CHECK(max_rel_err(dx, numeric_grad(xs, loss)) < 1e-7);
  MatD e;
  drop.forward_eval(x, e);
  CHECK(e == x);
}

TEST_CASE(
    "softmax cross-entropy equals log-sum-exp minus the true logit, and its gradient matches finite differences") {
  std::mt19937_64 rng(105);
  MatD z = random_matrix(rng, 5, 4, 3.0);
  const std::vector<std::int64_t> labels = {0, 3, 1, 1, 2};
  double ref = 0;
  for (Eigen::Index r = 0; r < z.rows(); ++r) {
    double s = 0;
    for (Eigen::Index c = 0; c < z.cols(); ++c) s += std::exp(z(r, c));
    ref += std::log(s) - z(r, labels[static_cast<std::size_t>(r)]);
  }
  MatD g;
  const double l = nn::softmax_cross_entropy<double>(z, labels, &g);
  CHECK(l == doctest::Approx(ref / 5).epsilon(1e-12));
  auto loss = [&] { return nn::softmax_cross_entropy<double>(z, labels); };
  CHECK(max_rel_err(g, numeric_grad(z, loss), 1e-2) < 1e-7);
  const std::vector<std::int64_t> bad = {0, 4, 1, 1, 2};
  check_throws<argument_error>([&] { nn::softmax_cross_entropy<double>(z, bad); }, {"label 4", "[0, 4)"});
}

TEST_CASE(
    "a Linear-BatchNorm-LeakyReLU-Linear-cross-entropy chain has finite-difference gradients for its first weight") {
  std::mt19937_64 rng(106);
  nn::Linear<double> l0(5, 7), l1(7, 3);
  nn::BatchNorm1d<double> bn(7);
  nn::LeakyReLU<double> act(0.1);
  l0.reset_parameters(1);
  l1.reset_parameters(2);
  bn.weight.value = random_matrix(rng, 1, 7);
  const MatD x = random_matrix(rng, 8, 5);
  const std::vector<std::int64_t> y = {0, 1, 2, 0, 1, 2, 0, 1};
  MatD z, n, a, logits, dl, da, g1, g2;
  auto loss = [&] {
    l0.forward(x, z);
    bn.forward_train(z, n);
    act.forward(n, a);
    l1.forward(a, logits);
    return nn::softmax_cross_entropy<double>(logits, y, &dl);
  };
  loss();
  l1.backward(a, dl, &da);
  act.backward(n, da, g1);
  bn.backward(g1, g2);
  l0.backward(x, g2, nullptr);
  const MatD dW = l0.weight.grad;
  CHECK(max_rel_err(dW, numeric_grad(l0.weight.value, loss), 1e-4) < 1e-6);
}

TEST_CASE(
    "gemm, both modes, every transpose, alpha, accumulate and row_init, equals a double product; "
    "invariant mode gives the same bits on 1 and 2 threads") {
  namespace cpu = backend::cpu;
  std::mt19937_64 rng(311);
  // 300 × 270 spans two invariant tiles each way; ld > width checks the strides.
  const Eigen::Index M = 300, N = 270, K = 45, pad = 3;
  for (const cpu::GemmMode mode : {cpu::GemmMode::invariant, cpu::GemmMode::fastest})
    for (int tr = 0; tr < 4; ++tr) {
      const bool ta = tr & 1, tb = tr & 2;
      CAPTURE(static_cast<int>(mode));
      CAPTURE(tr);
      const MatD a = random_matrix(rng, ta ? K : M, (ta ? M : K) + pad),
                 b = random_matrix(rng, tb ? N : K, (tb ? K : N) + pad);
      const MatD c0 = random_matrix(rng, M, N + pad), bias = random_matrix(rng, 1, N);
      const MatF af = a.cast<float>(), bf = b.cast<float>(), biasf = bias.cast<float>();
      const float alpha = -0.75f;
      // op(A)·op(B) of the f32 operands by the definition, in double (once: the
      // three variants share it; raw indexing keeps this -O0 unit quick).
      MatD prod(M, N);
      const float *pa = af.data(), *pb = bf.data();
      const Eigen::Index la = af.cols(), lb = bf.cols();
      for (Eigen::Index i = 0; i < M; ++i)
        for (Eigen::Index j = 0; j < N; ++j) {
          double s = 0.0;
          for (Eigen::Index k = 0; k < K; ++k)
            s += static_cast<double>(ta ? pa[k * la + i] : pa[i * la + k]) *
                 static_cast<double>(tb ? pb[j * lb + k] : pb[k * lb + j]);
          prod(i, j) = s;
        }
      for (int variant = 0; variant < 3; ++variant) {  // overwrite, accumulate, row_init
        MatF c = c0.cast<float>();
        cpu::gemm<float>(mode, ta, tb, M, N, K, alpha, af.data(), af.cols(), bf.data(), bf.cols(), variant == 1,
                         c.data(), c.cols(), variant == 2 ? biasf.data() : nullptr);
        MatD ref(M, N);
        double worst = 0.0;
        for (Eigen::Index i = 0; i < M; ++i)
          for (Eigen::Index j = 0; j < N; ++j) {
            const double s = prod(i, j);
            const double init = variant == 1   ? static_cast<double>(static_cast<float>(c0(i, j)))
                                : variant == 2 ? static_cast<double>(biasf(0, j))
                                               : 0.0;
            ref(i, j) = init + alpha * s;
            worst = std::max(worst, std::abs(static_cast<double>(c(i, j)) - ref(i, j)));
          }
        // f32 sums of K products of N(0, 1) values: errors ~ sqrt(K) units of roundoff of sqrt(K).
        CHECK(worst < 64.0 * K * 0x1p-24 * 4.0);
        // The pad columns of C are never written.
        for (Eigen::Index i = 0; i < M; ++i)
          for (Eigen::Index j = N; j < N + pad; ++j) REQUIRE(c(i, j) == static_cast<float>(c0(i, j)));
      }
      if (mode == cpu::GemmMode::invariant) {
        MatF c1 = MatF::Zero(M, N), c2 = MatF::Zero(M, N);
        set_num_threads(1);
        cpu::gemm<float>(mode, ta, tb, M, N, K, 1.0f, af.data(), af.cols(), bf.data(), bf.cols(), false, c1.data(), N);
        set_num_threads(2);
        cpu::gemm<float>(mode, ta, tb, M, N, K, 1.0f, af.data(), af.cols(), bf.data(), bf.cols(), false, c2.data(), N);
        set_num_threads(0);
        CHECK(std::memcmp(c1.data(), c2.data(), sizeof(float) * static_cast<std::size_t>(M * N)) == 0);
      }
    }
}

TEST_CASE("gemm_bf16 equals the double product of its bf16 operands, with bf16 dot products and widened to f32") {
  namespace cpu = backend::cpu;
  std::mt19937_64 rng(312);
  const Eigen::Index M = 70, N = 260, K = 128;
  auto bf16_matrix = [&](Eigen::Index r, Eigen::Index c) {
    const MatD d = random_matrix(rng, r, c);
    std::vector<std::uint16_t> h(static_cast<std::size_t>(r * c));
    for (std::size_t i = 0; i < h.size(); ++i) h[i] = f32_to_bf16(static_cast<float>(d.data()[i]));
    return h;
  };
  const std::vector<std::uint16_t> a = bf16_matrix(M, K), b = bf16_matrix(N, K), c16 = bf16_matrix(M, N);
  const bool native = cpu::bf16_dot_products();
  MESSAGE("bf16 dot products on this machine: " << (native ? "yes (oneDNN)" : "no (f32 path only)"));
  for (const bool dots : {true, false}) {
    if (dots && !native) {
      MESSAGE("SKIPPED: the bf16 dot-product path (no oneDNN bf16 kernel here)");
      continue;
    }
    cpu::set_bf16_dot_products(dots);
    CHECK(cpu::bf16_dot_products() == dots);
    for (const bool acc : {false, true}) {
      CAPTURE(dots);
      CAPTURE(acc);
      std::vector<float> cf(static_cast<std::size_t>(M * N));
      std::vector<std::uint16_t> cb = c16;
      for (std::size_t i = 0; i < cf.size(); ++i) cf[i] = bf16_to_f32(c16[i]);
      cpu::gemm_bf16(false, true, M, N, K, a.data(), K, b.data(), K, acc, cf.data(), N);
      cpu::gemm_bf16(false, true, M, N, K, a.data(), K, b.data(), K, acc, cb.data(), N);
      double worst_f = 0.0, worst_b = 0.0;
      for (Eigen::Index i = 0; i < M; ++i)
        for (Eigen::Index j = 0; j < N; ++j) {
          double s = acc ? static_cast<double>(bf16_to_f32(c16[static_cast<std::size_t>(i * N + j)])) : 0.0;
          for (Eigen::Index k = 0; k < K; ++k)
            s += static_cast<double>(bf16_to_f32(a[static_cast<std::size_t>(i * K + k)])) *
                 static_cast<double>(bf16_to_f32(b[static_cast<std::size_t>(j * K + k)]));
          const std::size_t ij = static_cast<std::size_t>(i * N + j);
          worst_f = std::max(worst_f, std::abs(cf[ij] - s));
          // A bf16 result is the f32 sum rounded once: within 2^-8 of it, relatively.
          worst_b = std::max(worst_b, std::abs(bf16_to_f32(cb[ij]) - s) - std::abs(s) * 0x1p-8);
        }
      // Products of bf16 values are exact in f32; only the f32 sums round.
      CHECK(worst_f < 64.0 * K * 0x1p-24 * 4.0);
      CHECK(worst_b < 64.0 * K * 0x1p-24 * 4.0);
    }
  }
  cpu::set_bf16_dot_products(true);
}

TEST_CASE("under ASan, gemm's bounds check finds the first operand row past the end of its buffer") {
  // The test suite's GEMM engines are built without ASan (docs/design.md §8);
  // this is the check that stands in for its instrumentation there.
  namespace cpu = backend::cpu;
  if (!TWIN_ASAN) {
    MESSAGE("SKIPPED: this build has no AddressSanitizer (the check is a no-op)");
    return;
  }
  const std::vector<float> ten(10, 1.0f);  // 40 bytes on the heap; ASan poisons what follows
  CHECK(cpu::detail::unaddressable_row(ten.data(), 2, 5, 5) == -1);
  CHECK(cpu::detail::unaddressable_row(ten.data(), 3, 4, 3) == -1);  // rows overlap: [0,4) [3,7) [6,10)
  CHECK(cpu::detail::unaddressable_row(ten.data(), 3, 4, 4) == 2);   // [8,12) runs 2 floats past the end
  CHECK(cpu::detail::unaddressable_row(ten.data(), 5, 1, 3) == 4);   // element 12
  CHECK(cpu::detail::unaddressable_row(ten.data() + 9, 1, 2, 2) == 0);
  CHECK(cpu::detail::unaddressable_row(ten.data(), 0, 4, 4) == -1);  // nothing read
}

TEST_CASE("float Linear forward and backward agree with double loops across several GEMM tiles") {
  // 300 x 270 outputs span two tiles in each direction of the 256 x 256 tiling.
  std::mt19937_64 rng(107);
  const Eigen::Index B = 300, in = 37, out = 270;
  const MatD xd = random_matrix(rng, B, in), Wd = random_matrix(rng, out, in), bd = random_matrix(rng, 1, out),
             dyd = random_matrix(rng, B, out);
  nn::Linear<float> lin(in, out);
  lin.weight.value = Wd.cast<float>();
  lin.bias.value = bd.cast<float>();
  const MatF x = xd.cast<float>(), dy = dyd.cast<float>();
  MatF y, dx;
  lin.forward(x, y);
  lin.backward(x, dy, &dx);
  MatD yr(B, out), dWr = MatD::Zero(out, in), dxr = MatD::Zero(B, in), dbr = MatD::Zero(1, out);
  for (Eigen::Index i = 0; i < B; ++i)
    for (Eigen::Index o = 0; o < out; ++o) {
      double s = bd(0, o);
      for (Eigen::Index k = 0; k < in; ++k)
        s += static_cast<double>(x(i, k)) * static_cast<double>(lin.weight.value(o, k));
      yr(i, o) = s;
      dbr(0, o) += dy(i, o);
      for (Eigen::Index k = 0; k < in; ++k) {
        dWr(o, k) += static_cast<double>(dy(i, o)) * x(i, k);
        dxr(i, k) += static_cast<double>(dy(i, o)) * lin.weight.value(o, k);
      }
    }
  // f32 sums of K terms: error ~ sqrt(K) · unit roundoff relative to sqrt(K).
  CHECK(max_rel_err(y.cast<double>(), yr, std::sqrt(double(in))) < 1e-5);
  CHECK(max_rel_err(lin.weight.grad.cast<double>(), dWr, std::sqrt(double(B))) < 1e-5);
  CHECK(max_rel_err(lin.bias.grad.cast<double>(), dbr, std::sqrt(double(B))) < 1e-5);
  CHECK(max_rel_err(dx.cast<double>(), dxr, std::sqrt(double(out))) < 1e-5);
}

TEST_CASE(
    "BatchNorm1d: training normalizes with batch statistics and updates running ones; eval uses the running statistics") {
  std::mt19937_64 rng(108);
  nn::BatchNorm1d<double> bn(3, 1e-5, 0.1);
  bn.weight.value << 2.0, 0.5, 1.0;
  bn.bias.value << 1.0, -1.0, 0.0;
  MatD x = random_matrix(rng, 10, 3, 3.0);
  x.col(2).array() += 4.0;
  MatD y;
  bn.forward_train(x, y);
  for (Eigen::Index c = 0; c < 3; ++c) {
    const double m = x.col(c).mean();
    const double var_b = (x.col(c).array() - m).square().mean();
    const double var_u = var_b * 10.0 / 9.0;
    // Output: per-feature mean β and (biased) standard deviation ≈ |γ|.
    CHECK(y.col(c).mean() == doctest::Approx(bn.bias.value(0, c)).epsilon(1e-9));
    const double sd = std::sqrt((y.col(c).array() - y.col(c).mean()).square().mean());
    CHECK(sd == doctest::Approx(std::abs(bn.weight.value(0, c)) * std::sqrt(var_b / (var_b + 1e-5))).epsilon(1e-9));
    // Running statistics move 10% from (0, 1) toward the batch's (unbiased variance).
    CHECK(bn.running_mean(0, c) == doctest::Approx(0.1 * m).epsilon(1e-12));
    CHECK(bn.running_var(0, c) == doctest::Approx(0.9 + 0.1 * var_u).epsilon(1e-12));
  }
  // Eval: a fixed affine map from the running statistics, which it leaves alone.
  const MatD rm = bn.running_mean, rv = bn.running_var;
  MatD one = x.topRows(1), ye;
  bn.forward_eval(one, ye);
  for (Eigen::Index c = 0; c < 3; ++c)
    CHECK(ye(0, c) == doctest::Approx((one(0, c) - rm(0, c)) / std::sqrt(rv(0, c) + 1e-5) * bn.weight.value(0, c) +
                                      bn.bias.value(0, c))
                          .epsilon(1e-12));
  CHECK(bn.running_mean == rm);
  CHECK(bn.running_var == rv);
  // The same row gives a different output in training (batch statistics).
  CHECK(std::abs(ye(0, 0) - y(0, 0)) > 1e-3);
  check_throws<argument_error>([&] { bn.forward_train(one, ye); }, {"at least 2 rows"});
}

TEST_CASE("Adam matches torch.optim.Adam's update formula, with coupled and with decoupled weight decay") {
  for (const bool decoupled : {false, true}) {
    CAPTURE(decoupled);
    nn::Parameter<double> p;
    p.resize(2, 3);
    p.value << 1.0, -2.0, 0.5, 0.0, 3.0, -0.25;
    nn::AdamOptions o;
    o.lr = 0.01;
    o.beta1 = 0.8;
    o.beta2 = 0.9;
    o.eps = 1e-6;
    o.weight_decay = 0.1;
    o.decoupled_weight_decay = decoupled;
    nn::Adam<double> adam({&p}, o);
    std::vector<double> theta(p.value.data(), p.value.data() + 6), m(6, 0.0), v(6, 0.0);
    const double grads[3][6] = {
        {0.1, -0.2, 0.3, 0.0, 1.0, -1.0}, {0.5, 0.5, -0.5, 2.0, 0.0, 0.1}, {-1, 1, -1, 1, -1, 1}};
    for (int t = 1; t <= 3; ++t) {
      for (int i = 0; i < 6; ++i) p.grad.data()[i] = grads[t - 1][i];
      adam.step();
      for (int i = 0; i < 6; ++i) {
        double g = grads[t - 1][i];
        if (!decoupled) g += 0.1 * theta[static_cast<std::size_t>(i)];
        else theta[static_cast<std::size_t>(i)] *= 1 - 0.01 * 0.1;
        m[static_cast<std::size_t>(i)] = 0.8 * m[static_cast<std::size_t>(i)] + 0.2 * g;
        v[static_cast<std::size_t>(i)] = 0.9 * v[static_cast<std::size_t>(i)] + 0.1 * g * g;
        const double mh = m[static_cast<std::size_t>(i)] / (1 - std::pow(0.8, t));
        const double vh = v[static_cast<std::size_t>(i)] / (1 - std::pow(0.9, t));
        theta[static_cast<std::size_t>(i)] -= 0.01 * mh / (std::sqrt(vh) + 1e-6);
        CHECK(p.value.data()[i] == doctest::Approx(theta[static_cast<std::size_t>(i)]).epsilon(1e-12));
      }
    }
    CHECK(adam.steps() == 3);
  }
}

TEST_CASE("Adam's per-step lr_scale is a learning rate of lr * scale for that step, decoupled decay included") {
  nn::Parameter<double> p;
  p.resize(1, 3);
  p.value << 1.0, -2.0, 0.5;
  nn::AdamOptions o;
  o.lr = 0.1;
  o.weight_decay = 0.2;
  o.decoupled_weight_decay = true;
  nn::Adam<double> adam({&p}, o);
  std::vector<double> theta = {1.0, -2.0, 0.5}, m(3, 0.0), v(3, 0.0);
  const double scales[3] = {1.0, 2.0 / 3.0, 1.0 / 3.0}, grads[3] = {0.3, -0.1, 2.0};
  for (int t = 1; t <= 3; ++t) {
    for (int i = 0; i < 3; ++i) p.grad.data()[i] = grads[i] * t;
    adam.step(scales[t - 1]);
    const double lr = 0.1 * scales[t - 1];
    for (std::size_t i = 0; i < 3; ++i) {
      const double g = grads[i] * t;
      theta[i] *= 1 - lr * 0.2;
      m[i] = 0.9 * m[i] + 0.1 * g;
      v[i] = 0.999 * v[i] + 0.001 * g * g;
      theta[i] -= lr * (m[i] / (1 - std::pow(0.9, t))) / (std::sqrt(v[i] / (1 - std::pow(0.999, t))) + 1e-8);
      CHECK(p.value.data()[i] == doctest::Approx(theta[i]).epsilon(1e-12));
    }
  }
}

TEST_CASE("clip_grad_norm scales all gradients to the global norm's limit, and leaves them below it") {
  nn::Parameter<float> a, b;
  a.resize(2, 2);
  b.resize(1, 3);
  a.grad << 3.0f, 0.0f, -4.0f, 1.0f;
  b.grad << 2.0f, -2.0f, 1.0f;  // ‖g‖² = 9 + 16 + 1 + 4 + 4 + 1 = 35
  nn::Parameter<float>* ps[2] = {&a, &b};
  const std::vector<float> before = {3, 0, -4, 1, 2, -2, 1};
  CHECK(nn::clip_grad_norm<float>(ps, 10.0) == doctest::Approx(std::sqrt(35.0)).epsilon(1e-12));
  CHECK(a.grad(1, 0) == -4.0f);  // below the limit: untouched
  CHECK(nn::clip_grad_norm<float>(ps, 1.0) == doctest::Approx(std::sqrt(35.0)).epsilon(1e-12));
  const double coef = 1.0 / (std::sqrt(35.0) + 1e-6);
  const float got[7] = {a.grad(0, 0), a.grad(0, 1), a.grad(1, 0), a.grad(1, 1),
                        b.grad(0, 0), b.grad(0, 1), b.grad(0, 2)};
  double sq = 0;
  for (int i = 0; i < 7; ++i) {
    CHECK(got[i] == doctest::Approx(before[static_cast<std::size_t>(i)] * coef).epsilon(1e-6));
    sq += static_cast<double>(got[i]) * got[i];
  }
  CHECK(std::sqrt(sq) == doctest::Approx(1.0).epsilon(1e-5));
  // The 1e-6 in the denominator shows on a small norm: 2e-6 clipped to 1e-6
  // is scaled by 1e-6 / 3e-6, not by 1/2.
  nn::Parameter<float> s;
  s.resize(1, 2);
  s.grad << 2e-6f, 0.0f;
  nn::Parameter<float>* one[1] = {&s};
  nn::clip_grad_norm<float>(one, 1e-6);
  CHECK(s.grad(0, 0) == doctest::Approx(2e-6 / 3.0).epsilon(1e-6));
}

TEST_CASE("the linear schedule's step count: a trailing single-row batch is not an update under BatchNorm") {
  // Hand-counted: 10 items in batches of 3 are 3 + 3 + 3 + 1; with BatchNorm
  // (depth > 0) the last is skipped.
  CHECK(detail::updates_per_epoch(10, 3, 2) == 3);
  CHECK(detail::updates_per_epoch(10, 3, 0) == 4);
  CHECK(detail::updates_per_epoch(9, 3, 2) == 3);
  CHECK(detail::updates_per_epoch(11, 3, 2) == 4);
  CHECK(detail::updates_per_epoch(2, 128, 2) == 1);
  CHECK(detail::updates_per_epoch(1, 128, 0) == 1);
  // Update k of S at (S − k) / S: the first at the full rate, the last at 1/S.
  CHECK(detail::lr_factor(LrSchedule::linear, 0, 8) == 1.0);
  CHECK(detail::lr_factor(LrSchedule::linear, 7, 8) == 0.125);
  CHECK(detail::lr_factor(LrSchedule::constant, 7, 8) == 1.0);
}

TEST_CASE("training with a linear schedule and gradient clipping equals softmax regression with Adam in double") {
  // A linear router (depth 0), one full batch per epoch, no standardization:
  // each epoch is one Adam update of W, b on the mean cross-entropy, with
  // the gradient clipped to a global norm and the k-th of S updates taken at
  // lr · (S − k) / S. The reference does the same arithmetic in double.
  const Clusters data = make_clusters(31, 3, 12, 5, 4.0, 32);
  const std::int64_t N = 36, d = 5, T = 3;
  RouterConfig rc{.input_dim = d, .num_tasks = T};
  rc.depth = 0;
  const auto xv = to_f64_vector(data.x.view());
  for (const bool linear : {false, true})
    for (const double clip : {0.0, 0.05}) {
      CAPTURE(linear);
      CAPTURE(clip);
      Router router(rc, 9);
      const nn::Linear<float>& lin = router.linear_layers()[0];
      std::vector<double> W(static_cast<std::size_t>(T * d)), b(static_cast<std::size_t>(T));
      for (std::int64_t t = 0; t < T; ++t) {
        for (std::int64_t j = 0; j < d; ++j) W[static_cast<std::size_t>(t * d + j)] = lin.weight.value(t, j);
        b[static_cast<std::size_t>(t)] = lin.bias.value(0, t);
      }
      RouterTrainOptions o;
      o.max_epochs = 4;
      o.patience = 0;
      o.batch_size = 64;
      o.holdout_fraction = 0.0;
      o.standardize = false;
      o.seed = 9;
      o.adam.lr = 0.05;
      o.lr_schedule = linear ? LrSchedule::linear : LrSchedule::constant;
      o.max_grad_norm = clip;
      train_router(router, data.x, data.y, o);

      std::vector<double> mW(W.size(), 0.0), vW = mW, mb(b.size(), 0.0), vb = mb;
      for (int k = 0; k < 4; ++k) {
        std::vector<double> gW(W.size(), 0.0), gb(b.size(), 0.0);
        for (std::int64_t i = 0; i < N; ++i) {
          double z[3], zmax = -1e300, sum = 0;
          for (std::int64_t t = 0; t < T; ++t) {
            z[t] = b[static_cast<std::size_t>(t)];
            for (std::int64_t j = 0; j < d; ++j)
              z[t] += W[static_cast<std::size_t>(t * d + j)] * xv[static_cast<std::size_t>(i * d + j)];
            zmax = std::max(zmax, z[t]);
          }
          for (double& zt : z) sum += std::exp(zt - zmax);
          for (std::int64_t t = 0; t < T; ++t) {
            const double dz = (std::exp(z[t] - zmax) / sum - (data.y[static_cast<std::size_t>(i)] == t ? 1.0 : 0.0)) /
                              static_cast<double>(N);
            gb[static_cast<std::size_t>(t)] += dz;
            for (std::int64_t j = 0; j < d; ++j)
              gW[static_cast<std::size_t>(t * d + j)] += dz * xv[static_cast<std::size_t>(i * d + j)];
          }
        }
        double sq = 0;
        for (double g : gW) sq += g * g;
        for (double g : gb) sq += g * g;
        const double coef = clip > 0 ? std::min(1.0, clip / (std::sqrt(sq) + 1e-6)) : 1.0;
        const double lr = 0.05 * (linear ? (4.0 - k) / 4.0 : 1.0);
        auto adam = [&](std::vector<double>& th, std::vector<double>& m, std::vector<double>& v,
                        const std::vector<double>& g) {
          for (std::size_t i = 0; i < th.size(); ++i) {
            const double gi = g[i] * coef;
            m[i] = 0.9 * m[i] + 0.1 * gi;
            v[i] = 0.999 * v[i] + 0.001 * gi * gi;
            th[i] -= lr * (m[i] / (1 - std::pow(0.9, k + 1))) / (std::sqrt(v[i] / (1 - std::pow(0.999, k + 1))) + 1e-8);
          }
        };
        adam(W, mW, vW, gW);
        adam(b, mb, vb, gb);
      }
      const nn::Linear<float>& got = router.linear_layers()[0];
      for (std::int64_t t = 0; t < T; ++t) {
        for (std::int64_t j = 0; j < d; ++j)
          CHECK(got.weight.value(t, j) == doctest::Approx(W[static_cast<std::size_t>(t * d + j)]).epsilon(1e-4));
        CHECK(got.bias.value(0, t) == doctest::Approx(b[static_cast<std::size_t>(t)]).epsilon(1e-4));
      }
    }
  // Bad clip values are refused.
  Router r(rc, 1);
  RouterTrainOptions bad;
  bad.max_grad_norm = -1.0;
  CHECK_THROWS_AS(train_router(r, data.x, data.y, bad), argument_error);
}

// --- data handling -------------------------------------------------------------

TEST_CASE("stratified_split holds out round(f * n) items of each task, disjoint from training, fixed by the seed") {
  std::vector<std::int64_t> labels;
  for (int i = 0; i < 50; ++i) labels.push_back(0);
  for (int i = 0; i < 21; ++i) labels.push_back(2);
  for (int i = 0; i < 1; ++i) labels.push_back(1);
  std::shuffle(labels.begin(), labels.end(), std::mt19937_64(5));
  const DataSplit s = stratified_split(labels, 3, 0.2, 9);
  std::vector<int> held(3, 0);
  for (auto i : s.heldout) ++held[static_cast<std::size_t>(labels[static_cast<std::size_t>(i)])];
  CHECK(held == std::vector<int>{10, 0, 4});
  std::vector<std::int64_t> all = s.train;
  all.insert(all.end(), s.heldout.begin(), s.heldout.end());
  std::sort(all.begin(), all.end());
  for (std::size_t i = 0; i < all.size(); ++i) CHECK(all[i] == static_cast<std::int64_t>(i));
  CHECK(stratified_split(labels, 3, 0.2, 9).heldout == s.heldout);
  CHECK(stratified_split(labels, 3, 0.2, 10).heldout != s.heldout);
}

TEST_CASE("epoch_order is a seeded permutation, and class-balanced draws make every task about equally frequent") {
  std::vector<std::int64_t> labels(900, 0);
  for (int i = 0; i < 90; ++i) labels[static_cast<std::size_t>(i * 10)] = 1;      // 10% task 1
  for (int i = 0; i < 9; ++i) labels[static_cast<std::size_t>(i * 100 + 1)] = 2;  // 1% task 2
  std::vector<std::int64_t> perm = epoch_order(labels, 3, 4, 1, false);
  CHECK(perm != epoch_order(labels, 3, 4, 2, false));
  CHECK(perm == epoch_order(labels, 3, 4, 1, false));
  std::sort(perm.begin(), perm.end());
  for (std::size_t i = 0; i < perm.size(); ++i) CHECK(perm[i] == static_cast<std::int64_t>(i));

  std::vector<int> count(3, 0);
  for (int epoch = 1; epoch <= 4; ++epoch)
    for (auto i : epoch_order(labels, 3, 4, epoch, true))
      ++count[static_cast<std::size_t>(labels[static_cast<std::size_t>(i)])];
  // 3600 draws, each task with probability 1/3: mean 1200, sd 28.3.
  for (int c : count) CHECK(std::abs(c - 1200) < 5 * 28.3);
}

// --- the router ------------------------------------------------------------------

TEST_CASE("the router reaches at least 99% held-out accuracy on clearly separable clusters, and reports each epoch") {
  const Clusters data = make_clusters(11, 4, 150, 16, 12.0, 12);
  Router router(RouterConfig{.input_dim = 16, .num_tasks = 4});
  RouterTrainOptions o;
  o.max_epochs = 30;
  o.patience = 5;
  o.batch_size = 32;
  o.seed = 3;
  std::vector<double> seen;
  int calls = 0;
  o.progress = [&](int epoch, double loss, double acc) {
    CHECK(epoch == ++calls);
    CHECK(std::isfinite(loss));
    seen.push_back(acc);
  };
  const RouterTrainReport rep = train_router(router, data.x, data.y, o);
  CHECK(rep.train_size == 540);
  CHECK(rep.heldout_size == 60);
  CHECK(calls == rep.epochs_run);
  CHECK(seen == rep.heldout_accuracy);
  CHECK(rep.best_heldout_accuracy >= 0.99);
  CHECK(rep.train_loss.back() < rep.train_loss.front());
  // Fresh items from the same clusters.
  const Clusters test = make_clusters(11, 4, 100, 16, 12.0, 13);
  const RouterDiagnostics d = router.evaluate(test.x, test.y);
  CHECK(d.accuracy >= 0.99);
}

TEST_CASE("training keeps the epoch with the best held-out accuracy and stops after `patience` epochs without gain") {
  // Overlapping clusters: held-out accuracy moves from epoch to epoch.
  const Clusters data = make_clusters(21, 3, 80, 12, 2.5, 22);
  const DataSplit split = stratified_split(data.y, 3, 0.25, 1);
  auto rows = [&](const std::vector<std::int64_t>& idx, std::vector<std::int64_t>& y) {
    std::vector<float> v;
    const auto all = data.x.values<float>();
    for (auto i : idx) {
      v.insert(v.end(), all.begin() + i * 12, all.begin() + (i + 1) * 12);
      y.push_back(data.y[static_cast<std::size_t>(i)]);
    }
    return Tensor::from_f32(v, std::vector<std::int64_t>{static_cast<std::int64_t>(idx.size()), 12});
  };
  std::vector<std::int64_t> yt, yh;
  const Tensor xt = rows(split.train, yt), xh = rows(split.heldout, yh);

  Router router(RouterConfig{.input_dim = 12, .num_tasks = 3, .hidden = 16});
  RouterTrainOptions o;
  o.max_epochs = 40;
  o.patience = 4;
  o.batch_size = 16;
  o.adam.lr = 3e-3;
  o.seed = 8;
  const RouterTrainReport rep = train_router(router, xt, yt, xh, yh, o);
  const auto& acc = rep.heldout_accuracy;
  const auto& hl = rep.heldout_loss;
  // Expected: the best accuracy, ties broken by the lower held-out loss.
  std::size_t want = 0;
  for (std::size_t e = 1; e < acc.size(); ++e)
    if (acc[e] > acc[want] || (acc[e] == acc[want] && hl[e] < hl[want])) want = e;
  const double best = acc[want];
  CHECK(rep.best_heldout_accuracy == best);
  CHECK(rep.best_epoch == static_cast<int>(want) + 1);
  if (rep.stopped_early) CHECK(rep.epochs_run == rep.best_epoch + o.patience);
  else CHECK(rep.epochs_run == o.max_epochs);
  // The weights kept are the best epoch's: evaluating them reproduces its accuracy.
  CHECK(router.evaluate(xh, yh).accuracy == best);
  // Without a held-out set the last epoch is kept and no early stopping happens.
  RouterTrainOptions o2 = o;
  o2.holdout_fraction = 0.0;
  o2.max_epochs = 3;
  const RouterTrainReport rep2 = train_router(router, xt, yt, o2);
  CHECK(rep2.epochs_run == 3);
  CHECK(rep2.best_epoch == 3);
  CHECK(std::isnan(rep2.heldout_accuracy[0]));
}

TEST_CASE("the same seed gives bit-identical weights and logits, on 1 thread and on 2; another seed does not") {
  // hidden 260 > one 256-wide GEMM tile, so products are split across threads.
  const Clusters data = make_clusters(31, 3, 40, 8, 4.0, 32);
  RouterConfig cfg{.input_dim = 8, .num_tasks = 3, .hidden = 260};
  RouterTrainOptions o;
  o.max_epochs = 2;
  o.batch_size = 48;
  o.seed = 5;
  o.class_balanced = true;
  const int threads_before = num_threads();
  auto run = [&](int threads, std::uint64_t seed) {
    set_num_threads(threads);
    RouterTrainOptions oo = o;
    oo.seed = seed;
    Router r(cfg);
    train_router(r, data.x, data.y, oo);
    std::pair<StateDict, Tensor> out{r.to_state_dict(), r.logits(data.x)};
    set_num_threads(threads_before);
    return out;
  };
  const auto a = run(2, 5), b = run(2, 5), c = run(1, 5), e = run(2, 6);
  CHECK(same_state(a.first, b.first));
  CHECK(twin_test::same_bits(a.second, b.second));
  CHECK(same_state(a.first, c.first));
  CHECK(twin_test::same_bits(a.second, c.second));
  CHECK_FALSE(same_state(a.first, e.first));
  CHECK_FALSE(twin_test::same_bits(a.second, e.second));
}

TEST_CASE("inference: one embedding gives the [T] logits of its row in a batch; predict is their argmax") {
  const Clusters data = make_clusters(41, 3, 20, 10, 6.0, 42);
  Router router(RouterConfig{.input_dim = 10, .num_tasks = 3}, 4);
  RouterTrainOptions o;
  o.max_epochs = 2;
  o.batch_size = 16;
  train_router(router, data.x, data.y, o);
  const Tensor all = router.logits(data.x);
  REQUIRE(all.rank() == 2);
  CHECK(all.dim(0) == 60);
  CHECK(all.dim(1) == 3);
  const auto av = all.values<float>();
  const auto xv = data.x.values<float>();
  const std::vector<std::int64_t> pred = router.predict(data.x);
  for (std::int64_t i : {0, 17, 59}) {
    const std::vector<float> one = router.logits(std::span<const float>(xv.data() + i * 10, 10));
    REQUIRE(one.size() == 3);
    for (std::size_t t = 0; t < 3; ++t)
      CHECK(one[t] == doctest::Approx(av[static_cast<std::size_t>(i * 3) + t]).epsilon(1e-5));
    const auto row = av.subspan(static_cast<std::size_t>(i * 3), 3);
    CHECK(pred[static_cast<std::size_t>(i)] == std::max_element(row.begin(), row.end()) - row.begin());
  }
  // A bf16 copy of the embeddings goes through the same path.
  const Tensor bf = data.x.clone_as(dtype::bf16);
  CHECK(router.logits(bf).dim(0) == 60);
}

TEST_CASE("diagnostics: the confusion matrix and per-task accuracy agree with the predictions") {
  const Clusters data = make_clusters(51, 3, 30, 6, 2.0, 52);
  Router router(RouterConfig{.input_dim = 6, .num_tasks = 3, .hidden = 8});
  RouterTrainOptions o;
  o.max_epochs = 3;
  o.batch_size = 16;
  train_router(router, data.x, data.y, o);
  const std::vector<std::int64_t> pred = router.predict(data.x);
  const RouterDiagnostics d = router.evaluate(data.x, data.y);
  std::vector<std::int64_t> conf(9, 0);
  std::int64_t correct = 0;
  for (std::size_t i = 0; i < pred.size(); ++i) {
    ++conf[static_cast<std::size_t>(data.y[i] * 3 + pred[i])];
    correct += pred[i] == data.y[i];
  }
  CHECK(d.confusion == conf);
  CHECK(d.total == 90);
  CHECK(d.correct == correct);
  CHECK(d.accuracy == doctest::Approx(static_cast<double>(correct) / 90.0));
  for (std::int64_t t = 0; t < 3; ++t) {
    CHECK(d.per_task_count[static_cast<std::size_t>(t)] == 30);
    CHECK(d.per_task_accuracy[static_cast<std::size_t>(t)] ==
          doctest::Approx(static_cast<double>(conf[static_cast<std::size_t>(t * 4)]) / 30.0));
  }
  CHECK(d.to_string().find("accuracy") != std::string::npos);
}

TEST_CASE("save then load gives bit-identical tensors and logits; the file carries the architecture as metadata") {
  const Clusters data = make_clusters(61, 4, 20, 12, 6.0, 62);
  Router router(
      RouterConfig{.input_dim = 12, .num_tasks = 4, .hidden = 20, .depth = 3, .dropout = 0.25, .slope = 0.05});
  RouterTrainOptions o;
  o.max_epochs = 2;
  o.batch_size = 16;
  train_router(router, data.x, data.y, o);
  const auto path =
      std::filesystem::temp_directory_path() / ("twin_test_router_" + std::to_string(::getpid()) + ".safetensors");
  save_router(path, router);
  const Router back = load_router(path);
  const LoadedCheckpoint ck = load_safetensors(path);
  std::filesystem::remove(path);
  CHECK(twin_test::same_bits(router.logits(data.x), back.logits(data.x)));
  CHECK(same_state(router.to_state_dict(), back.to_state_dict()));
  CHECK(back.config().depth == 3);
  CHECK(back.config().hidden_width() == 20);
  CHECK(back.config().slope == 0.05);
  CHECK(back.config().dropout == 0.25);
  CHECK(ck.metadata.at("router.input_dim") == "12");
  CHECK(ck.metadata.at("router.num_tasks") == "4");
  CHECK(ck.metadata.at("router.format_version") == "1");
  CHECK(ck.tensors.at("router.layer0.weight").shape_str() == "[20, 12]");
  CHECK(ck.tensors.at("router.layer3.weight").shape_str() == "[4, 20]");
  CHECK(ck.tensors.at("router.norm2.running_var").shape_str() == "[20]");
  CHECK(ck.tensors.at("router.input_scale").shape_str() == "[12]");

  // Embedding in another state dict under its own prefix.
  const StateDict sd = router.to_state_dict("model.router.");
  const Router again = router_from_checkpoint(sd, router_metadata(router, "model.router."), "m.st", "model.router.");
  CHECK(twin_test::same_bits(router.logits(data.x), again.logits(data.x)));
  // A missing tensor or a wrong shape is named: by the network as a typed
  // error, and by the file format as an io_error naming the file too.
  StateDict broken = router.to_state_dict();
  broken.erase("router.norm1.running_mean");
  check_throws<name_error>([&] { Router::from_state_dict(router.config(), broken); }, {"router.norm1.running_mean"});
  check_throws<io_error>([&] { router_from_checkpoint(broken, router_metadata(router), "r.st"); },
                         {"r.st", "router.norm1.running_mean"});
  StateDict wrong = router.to_state_dict();
  wrong.assign("router.layer1.bias", Tensor(dtype::f32, {7}));
  check_throws<shape_error>([&] { Router::from_state_dict(router.config(), wrong); },
                            {"router.layer1.bias", "[20]", "[7]"});
  check_throws<io_error>([&] { router_from_checkpoint(wrong, router_metadata(router), "r.st"); },
                         {"r.st", "router.layer1.bias", "[20]", "[7]"});
}

TEST_CASE("router metadata from a newer, corrupt or foreign writer is an io_error naming the file") {
  const Router router(RouterConfig{.input_dim = 6, .num_tasks = 3, .hidden = 8, .depth = 1}, 5);
  const StateDict sd = router.to_state_dict();
  auto with = [&](const std::string& key, const std::string& value) {
    Metadata m = router_metadata(router);
    if (value.empty()) m.erase(key);
    else m[key] = value;
    return m;
  };
  // The model file's rule: newer versions ask for an upgrade, older ones load.
  check_throws<io_error>([&] { router_from_checkpoint(sd, with("router.format_version", "2"), "r.st"); },
                         {"r.st", "newer twin (format version 2)", "upgrade"});
  check_throws<io_error>([&] { router_from_checkpoint(sd, with("router.format_version", "0"), "r.st"); }, {"r.st"});
  check_throws<io_error>([&] { router_from_checkpoint(sd, with("router.format_version", "1x"), "r.st"); },
                         {"r.st", "not a number"});
  check_throws<io_error>([&] { router_from_checkpoint(sd, with("router.format", "other"), "r.st"); },
                         {"r.st", "not a twin router"});
  check_throws<io_error>([&] { router_from_checkpoint(sd, with("router.hidden", ""), "r.st"); },
                         {"r.st", "router.hidden"});
  check_throws<io_error>([&] { router_from_checkpoint(sd, with("router.dropout", "half"), "r.st"); },
                         {"r.st", "router.dropout", "not a number"});
  check_throws<io_error>([&] { router_from_checkpoint(sd, with("router.architecture", "transformer"), "r.st"); },
                         {"r.st", "transformer"});
  // A settings value the network refuses (dropout 1) is an io_error as well.
  check_throws<io_error>([&] { router_from_checkpoint(sd, with("router.dropout", "1"), "r.st"); }, {"r.st", "dropout"});
}

TEST_CASE("bad input gives a typed error that says which: width, labels, empty set, NaN") {
  const Clusters data = make_clusters(71, 3, 10, 8, 6.0, 72);
  Router router(RouterConfig{.input_dim = 8, .num_tasks = 3});
  RouterTrainOptions o;
  o.max_epochs = 1;
  o.batch_size = 8;

  const Tensor narrow(dtype::f32, {30, 5});
  check_throws<shape_error>([&] { train_router(router, narrow, data.y, o); }, {"width 5", "d = 8"});
  check_throws<shape_error>([&] { router.logits(narrow); }, {"width 5", "d = 8"});

  std::vector<std::int64_t> bad = data.y;
  bad[7] = 3;
  check_throws<argument_error>([&] { train_router(router, data.x, bad, o); }, {"label 3", "index 7", "[0, 3)"});
  bad[7] = -1;
  check_throws<argument_error>([&] { router.evaluate(data.x, bad); }, {"label -1", "index 7"});
  check_throws<shape_error>([&] { train_router(router, data.x, std::span<const std::int64_t>(data.y).first(29), o); },
                            {"29 labels", "30 embeddings"});

  const Tensor empty(dtype::f32, {0, 8});
  check_throws<argument_error>([&] { train_router(router, empty, std::span<const std::int64_t>(), o); }, {"empty"});
  check_throws<argument_error>([&] { router.evaluate(empty, std::span<const std::int64_t>()); }, {"empty"});

  Tensor nan = data.x.clone();
  nan.values<float>()[4 * 8 + 6] = std::nanf("");
  check_throws<numeric_error>([&] { train_router(router, nan, data.y, o); }, {"NaN", "embedding 4", "feature 6"});
  check_throws<numeric_error>([&] { router.logits(nan); }, {"NaN", "embedding 4"});
  nan.values<float>()[4 * 8 + 6] = INFINITY;
  check_throws<numeric_error>([&] { router.predict(nan); }, {"infinite"});

  const Tensor ints(dtype::i32, {30, 8});
  check_throws<dtype_error>([&] { router.logits(ints); }, {"I32"});
  check_throws<argument_error>([&] { Router(RouterConfig{.input_dim = 0, .num_tasks = 3}); }, {"input_dim"});
  check_throws<argument_error>([&] { Router(RouterConfig{.input_dim = 4, .num_tasks = 3, .dropout = 1.0}); },
                               {"dropout"});
  RouterTrainOptions ob = o;
  ob.batch_size = 1;
  check_throws<argument_error>([&] { train_router(router, data.x, data.y, ob); }, {"batch_size"});
}

TEST_CASE("labels_from reads integer label tensors and refuses float ones") {
  const std::vector<std::int32_t> v = {0, 2, 1};
  const std::int64_t shape[1] = {3};
  CHECK(labels_from(ConstTensorView(v.data(), dtype::i32, shape)) == std::vector<std::int64_t>{0, 2, 1});
  const std::vector<float> f = {0, 2, 1};
  check_throws<dtype_error>([&] { labels_from(ConstTensorView(f.data(), dtype::f32, shape)); }, {"integer"});
}

TEST_CASE("Philox::uniforms gives the values of Philox::uniform for any start and length") {
  const Philox rng(0x1234567890abcdefull);
  for (const std::uint64_t first : {0ull, 1ull, 6ull, 4294967294ull * 4 + 3}) {
    for (const std::size_t n : {0u, 1u, 3u, 4u, 5u, 63u, 64u, 65u, 200u}) {
      std::vector<float> u(n);
      rng.uniforms(first, n, 99, u.data());
      for (std::size_t k = 0; k < n; ++k) CHECK(u[k] == rng.uniform(first + k, 99));
    }
  }
}
