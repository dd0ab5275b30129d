// Shared helpers for twin's tests: seeded random tensors and comparisons with
// double-precision references.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "twin/twin.hpp"

namespace twin_test {

// Tensor of `shape` in dtype `t`, values mean + stddev * N(0,1).
inline twin::Tensor random_tensor(std::mt19937_64& rng, twin::dtype t, std::vector<std::int64_t> shape,
                                  double mean = 0.0, double stddev = 1.0) {
  std::normal_distribution<float> nd(static_cast<float>(mean), static_cast<float>(stddev));
  std::vector<float> v(static_cast<std::size_t>(twin::checked_numel(shape)));
  for (float& x : v) x = nd(rng);
  return twin::Tensor::from_f32(v, shape, t);
}

// An expert = base + stddev * N(0,1), stored in dtype t.
inline twin::Tensor perturbed(std::mt19937_64& rng, const twin::Tensor& base, double stddev,
                              twin::dtype t = twin::dtype::f32) {
  std::normal_distribution<double> nd(0.0, stddev);
  const std::vector<double> b = twin::to_f64_vector(base.view());
  std::vector<float> v(b.size());
  for (std::size_t i = 0; i < b.size(); ++i) v[i] = static_cast<float>(b[i] + nd(rng));
  return twin::Tensor::from_f32(v, base.shape(), t);
}

// Unit roundoff of a storage dtype.
inline double unit_roundoff(twin::dtype t) {
  switch (t) {
    case twin::dtype::f16: return std::ldexp(1.0, -11);
    case twin::dtype::bf16: return std::ldexp(1.0, -8);
    case twin::dtype::f64: return std::ldexp(1.0, -53);
    default: return std::ldexp(1.0, -24);
  }
}

// Every element of `got` within rounding of `ref`: |got - ref| <= rel*|ref| + abs.
inline void check_close(const twin::ConstTensorView& got, const std::vector<double>& ref, double rel, double abs,
                        const std::string& what = "") {
  REQUIRE(static_cast<std::size_t>(got.numel()) == ref.size());
  std::int64_t bad = 0, first = -1;
  for (std::int64_t i = 0; i < got.numel(); ++i) {
    const double g = twin::element_f64(got, i), r = ref[static_cast<std::size_t>(i)];
    if (!(std::abs(g - r) <= rel * std::abs(r) + abs)) {
      if (first < 0) first = i;
      ++bad;
    }
  }
  INFO(what << ": " << bad << " of " << got.numel() << " elements differ; first at " << first
            << (first >= 0 ? " got " + std::to_string(twin::element_f64(got, first)) + " expected " +
                                 std::to_string(ref[static_cast<std::size_t>(first)])
                           : std::string()));
  CHECK(bad == 0);
}

// Bitwise equality of two tensors' storage.
// The message of the E that f() throws ("no exception" or "wrong type: ..."
// otherwise), for checks on what an error says.
template <class E, class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("wrong type: ") + e.what();
  }
  return "no exception";
}

inline bool same_bits(const twin::Tensor& a, const twin::Tensor& b) {
  return a.dtype() == b.dtype() && a.nbytes() == b.nbytes() &&
         std::equal(static_cast<const std::byte*>(a.data()), static_cast<const std::byte*>(a.data()) + a.nbytes(),
                    static_cast<const std::byte*>(b.data()));
}

}  // namespace twin_test

namespace twin_test {
// A shared handle like at::Tensor: copies share storage, and its adapter
// hands out void* for a const object, so it is written through const.
struct SharedHandle {
  std::shared_ptr<std::vector<float>> storage;
  std::vector<std::int64_t> shape;
};
}  // namespace twin_test

template <>
struct twin::tensor_adapter<twin_test::SharedHandle> {
  static void* data(const twin_test::SharedHandle& h) { return h.storage->data(); }
  static twin::dtype dtype(const twin_test::SharedHandle&) { return twin::dtype::f32; }
  static std::span<const std::int64_t> shape(const twin_test::SharedHandle& h) { return h.shape; }
};
