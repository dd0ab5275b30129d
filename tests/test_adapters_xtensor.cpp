// xtensor containers adapt without a copy in either layout, and merge like Tensors.
#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>
#include <xtensor/xtensor.hpp>

#include "test_support.hpp"
#include "twin/adapters/xtensor.hpp"

using namespace twin;

TEST_CASE("xtensor row- and column-major containers are views of their own memory") {
  xt::xtensor<float, 2> a = {{1, 2, 3}, {4, 5, 6}};
  xt::xarray<float, xt::layout_type::column_major> b = {{1, 2, 3}, {4, 5, 6}};
  const TensorView va = twin::adapt(a), vb = twin::adapt(b);
  CHECK(va.data() == a.data());
  CHECK(vb.data() == b.data());
  CHECK(va.is_contiguous());
  CHECK_FALSE(vb.is_contiguous());
  CHECK(to_f64_vector(va) == std::vector<double>{1, 2, 3, 4, 5, 6});
  CHECK(to_f64_vector(vb) == std::vector<double>{1, 2, 3, 4, 5, 6});
  const xt::xtensor<double, 1> c = {1.5, 2.5};
  static_assert(std::is_same_v<decltype(twin::adapt(c)), ConstTensorView>);
  CHECK(twin::adapt(c).dtype() == dtype::f64);
  // xarray and xtensor own their elements (adapt refuses them as temporaries); an adaptor of a buffer does not.
  std::vector<float> buf(6, 1.0f);
  auto ad = xt::adapt(buf.data(), buf.size(), xt::no_ownership(), std::array<std::size_t, 2>{2, 3});
  static_assert(owns_elements<xt::xarray<float>> && owns_elements<xt::xtensor<float, 2>>);
  static_assert(owns_elements<xt::xarray<float, xt::layout_type::column_major>>);
  static_assert(!owns_elements<decltype(ad)>);
}

TEST_CASE("a merge written into an xtensor output equals the merge of plain Tensors") {
  std::mt19937_64 rng(41);
  const Tensor base = twin_test::random_tensor(rng, dtype::f32, {6, 9});
  const Tensor e1 = twin_test::perturbed(rng, base, 0.3), e2 = twin_test::perturbed(rng, base, 0.3);
  xt::xarray<float, xt::layout_type::column_major> out = xt::zeros<float>({6, 9});
  const ConstTensorView ev[] = {e1.view(), e2.view()};
  Ties{0.5, 1.0, TopKScope::per_tensor, {}}.merge_tensor({"w", base.view(), ev, twin::adapt(out)});
  const Tensor ref = twin::merge_tensor(Ties{0.5, 1.0, TopKScope::per_tensor, {}}, "w", base.view(), ev);
  twin_test::check_close(twin::adapt(std::as_const(out)), to_f64_vector(ref.view()), 0, 0);
}
