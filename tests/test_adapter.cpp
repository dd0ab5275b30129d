// The adapter seam: every built-in adapter and the foreign-engine example type
// give views with the right pointer, dtype, shape and strides, and a merge
// through them equals the merge of plain Tensors.
#include <Eigen/Core>

#include "../examples/engine_tensor.hpp"
#include "test_support.hpp"
#include "twin/adapters/eigen.hpp"

using namespace twin;

namespace {
// Values of a view in row-major order, as double.
std::vector<double> values(const ConstTensorView& v) { return to_f64_vector(v); }
}  // namespace

TEST_CASE("TensorView and Tensor adapt to themselves; constness picks a read-only view") {
  Tensor t(dtype::bf16, {3, 4});
  auto v = adapt(t);
  static_assert(std::is_same_v<decltype(v), TensorView>);
  const Tensor& ct = t;
  static_assert(std::is_same_v<decltype(adapt(ct)), ConstTensorView>);
  CHECK(v.data() == t.data());
  CHECK(v.dtype() == dtype::bf16);
  CHECK(v.shape_str() == "[3, 4]");
  CHECK(v.is_contiguous());
  static_assert(tensor_like<TensorView> && writable_tensor<TensorView&>);
  static_assert(!writable_tensor<const Tensor&>);
}

TEST_CASE("ShapedVector: data, dtype and shape; a shape that does not fit its values is an error") {
  ShapedVector<float> sv{{1, 2, 3, 4, 5, 6}, {2, 3}};
  const TensorView v = adapt(sv);
  CHECK(v.data() == sv.values.data());
  CHECK(v.dtype() == dtype::f32);
  CHECK(values(v) == std::vector<double>{1, 2, 3, 4, 5, 6});
  ShapedVector<double> bad{{1, 2, 3}, {2, 2}};
  CHECK_THROWS_AS(adapt(bad), shape_error);
}

TEST_CASE("Eigen: row-major maps directly, column-major becomes a strided view of the same memory") {
  Eigen::Matrix<float, 3, 4, Eigen::RowMajor> rm;
  Eigen::MatrixXf cm(3, 4);
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 4; ++c) rm(r, c) = cm(r, c) = static_cast<float>(10 * r + c);
  const TensorView a = adapt(rm), b = adapt(cm);
  CHECK(a.is_contiguous());
  CHECK_FALSE(b.is_contiguous());
  CHECK(b.data() == cm.data());
  CHECK(b.stride(0) == 1);
  CHECK(b.stride(1) == 3);
  CHECK(values(a) == values(b));
  // Maps, const maps and blocks.
  std::vector<Eigen::half> buf(6, Eigen::half(1.5f));
  Eigen::Map<Eigen::Matrix<Eigen::half, 2, 3, Eigen::RowMajor>> m(buf.data());
  CHECK(adapt(m).dtype() == dtype::f16);
  CHECK(values(adapt(m)) == std::vector<double>(6, 1.5));
  const Eigen::Map<const Eigen::MatrixXf> cmap(cm.data(), 3, 4);
  static_assert(std::is_same_v<decltype(adapt(cmap)), ConstTensorView>);
  auto blk = rm.block(1, 1, 2, 2);
  const TensorView bv = adapt(blk);
  CHECK(values(bv) == std::vector<double>{11, 12, 21, 22});
  // A block or map may be a temporary (it does not own its coefficients); a Matrix may not (compile_fail test).
  CHECK(values(adapt(rm.block(0, 2, 2, 2))) == std::vector<double>{2, 3, 12, 13});
  static_assert(owns_elements<Eigen::MatrixXf> && owns_elements<Eigen::ArrayXXf> && owns_elements<Tensor>);
  static_assert(!owns_elements<Eigen::Map<Eigen::MatrixXf>> && !owns_elements<decltype(rm.block(0, 0, 1, 1))>);
}

TEST_CASE("Eigen vector types are rank 1: a bias or norm weight held as VectorXf is a [n] tensor") {
  Eigen::VectorXf v(5);
  Eigen::RowVectorXf rv(5);
  for (int i = 0; i < 5; ++i) v(i) = rv(i) = static_cast<float>(i + 1);
  const TensorView a = adapt(v), b = adapt(rv);
  CHECK(a.rank() == 1);
  CHECK(a.dim(0) == 5);
  CHECK(b.rank() == 1);
  CHECK(b.dim(0) == 5);
  CHECK(values(a) == std::vector<double>{1, 2, 3, 4, 5});
  CHECK(values(b) == values(a));
  // A column of a column-major matrix (stride 1) and a row (stride = rows), and the diagonal (stride rows + 1).
  Eigen::MatrixXf m(4, 4);
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c) m(r, c) = static_cast<float>(10 * r + c);
  auto col = m.col(2);
  auto row = m.row(1);
  auto dia = m.diagonal();
  const TensorView cv = adapt(col), rwv = adapt(row), dv = adapt(dia);
  CHECK(cv.rank() == 1);
  CHECK(cv.stride(0) == 1);
  CHECK(values(cv) == std::vector<double>{2, 12, 22, 32});
  CHECK(rwv.stride(0) == 4);
  CHECK(values(rwv) == std::vector<double>{10, 11, 12, 13});
  CHECK(dv.rank() == 1);
  CHECK(dv.stride(0) == 5);
  CHECK(values(dv) == std::vector<double>{0, 11, 22, 33});
  // A 1 × n matrix of dynamic size stays rank 2: only a compile-time vector type is rank 1.
  Eigen::MatrixXf one(1, 3);
  CHECK(adapt(one).rank() == 2);
}

TEST_CASE("the foreign engine tensor (ggml-like byte strides) adapts and merges like a Tensor") {
  std::mt19937_64 rng(31);
  const Tensor base = twin_test::random_tensor(rng, dtype::f16, {5, 7});
  const Tensor e1 = twin_test::perturbed(rng, base, 0.2, dtype::f16),
               e2 = twin_test::perturbed(rng, base, 0.2, dtype::f16);
  auto wrap = [](const Tensor& t) {
    return engine::tensor{engine::ggml_type::f16, 2, {7, 5, 1, 1}, {2, 14, 0, 0}, const_cast<void*>(t.data())};
  };
  const engine::tensor eb = wrap(base), ee1 = wrap(e1), ee2 = wrap(e2);
  const ConstTensorView vb = adapt(eb);
  CHECK(vb.shape_str() == "[5, 7]");
  CHECK(vb.dtype() == dtype::f16);
  CHECK(vb.is_contiguous());
  std::vector<std::uint16_t> out_storage(35);
  engine::tensor out{engine::ggml_type::f16, 2, {7, 5, 1, 1}, {2, 14, 0, 0}, out_storage.data()};
  const ConstTensorView ev[] = {adapt(ee1), adapt(ee2)};
  TaskArithmetic{0.5, {}}.merge_tensor({"w", vb, ev, adapt(out)});
  const ConstTensorView tv[] = {e1.view(), e2.view()};
  const Tensor ref = twin::merge_tensor(TaskArithmetic{0.5, {}}, "w", base.view(), tv);
  CHECK(std::equal(out_storage.begin(), out_storage.end(), ref.values<f16_t>().begin(),
                   [](std::uint16_t a, f16_t b) { return a == b.bits; }));
  // A byte stride that is not a multiple of the element size is refused.
  engine::tensor odd = eb;
  odd.nb[1] = 13;
  CHECK_THROWS_AS(adapt(odd), shape_error);
  engine::tensor quant = eb;
  quant.type = static_cast<engine::ggml_type>(2);
  CHECK_THROWS_AS(adapt(quant), dtype_error);
}

TEST_CASE("dtype conversions round to nearest even and keep specials") {
  // f16: 1 + 2^-11 is halfway between 1 and 1 + 2^-10: rounds to even (1).
  CHECK(f32_to_f16(1.0f + 0x1.0p-11f) == 0x3c00);
  CHECK(f32_to_f16(1.0f + 3 * 0x1.0p-11f) == 0x3c02);
  CHECK(f32_to_f16(65504.0f) == 0x7bff);
  CHECK(f32_to_f16(65520.0f) == 0x7c00);    // rounds past the largest half
  CHECK(f32_to_f16(0x1.0p-24f) == 0x0001);  // smallest subnormal
  CHECK(f32_to_f16(0x1.0p-25f) == 0x0000);  // halfway to 0: even
  CHECK(f16_to_f32(0x0001) == 0x1.0p-24f);
  CHECK(std::isnan(f16_to_f32(f32_to_f16(std::nanf("")))));
  CHECK(f32_to_bf16(1.0f + 0x1.0p-8f) == 0x3f80);
  CHECK(f32_to_bf16(1.0f + 3 * 0x1.0p-8f) == 0x3f82);
  CHECK(std::isnan(bf16_to_f32(f32_to_bf16(std::nanf("")))));
  // Every finite f16 survives f16 -> f32 -> f16.
  int bad = 0;
  for (std::uint32_t h = 0; h < 0x10000; ++h)
    if ((h & 0x7c00) != 0x7c00) bad += f32_to_f16(f16_to_f32(static_cast<std::uint16_t>(h))) != h;
  CHECK(bad == 0);
  // Against a double reference: nearest representable f16.
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<float> u(-70000.0f, 70000.0f);
  int off = 0;
  for (int i = 0; i < 20000; ++i) {
    const float x = u(rng) * (i % 2 ? 1e-4f : 1.0f);
    const double got = f16_to_f32(f32_to_f16(x));
    if (std::isinf(got)) {
      off += std::abs(x) < 65520.0f;
      continue;
    }
    // Spacing of f16 values around x (subnormal spacing below 2^-14).
    const double ulp = std::ldexp(1.0, std::max(std::ilogb(std::max(std::abs(got), 0x1.0p-14)), -14) - 10);
    off += !(std::abs(got - x) <= ulp / 2);
  }
  CHECK(off == 0);
}

TEST_CASE("views: narrow, reshape, as_matrix and bad shapes") {
  Tensor t(dtype::f32, {2, 3, 4});
  auto v = t.view();
  CHECK(v.as_matrix().shape_str() == "[2, 12]");
  const TensorView n = v.narrow(1, 1, 2);
  CHECK(n.shape_str() == "[2, 2, 4]");
  CHECK_FALSE(n.is_contiguous());
  CHECK_THROWS_AS(n.as_matrix(), shape_error);
  CHECK_THROWS_AS(v.narrow(1, 2, 2), shape_error);
  const std::int64_t neg[] = {2, -1};
  CHECK_THROWS_AS(Tensor(dtype::f32, neg), shape_error);
  const std::int64_t huge[] = {INT64_MAX / 2, 4};
  CHECK_THROWS_AS(checked_numel(huge), shape_error);
  CHECK(parse_dtype("bf16") == dtype::bf16);
  CHECK_THROWS_AS(parse_dtype("q4_0"), dtype_error);
}

// ---------------------------------------------------------------------------
// The seam's contract with engines (shape and strides returned by value,
// shared handles, overlapping outputs, DLPack).

namespace {
// An engine tensor that, like libtorch, exposes element strides only: its
// adapter computes shape and byte strides into fresh vectors on each call.
struct ByValueTensor {
  std::vector<float> storage;
  std::int64_t rows = 0, cols = 0, row_stride = 0;  // elements
};

using Handle = twin_test::SharedHandle;
}  // namespace

template <>
struct twin::tensor_adapter<ByValueTensor> {
  static void* data(ByValueTensor& t) { return t.storage.data(); }
  static const void* data(const ByValueTensor& t) { return t.storage.data(); }
  static twin::dtype dtype(const ByValueTensor&) { return twin::dtype::f32; }
  static std::vector<std::int64_t> shape(const ByValueTensor& t) { return {t.rows, t.cols}; }
  static std::vector<std::int64_t> byte_strides(const ByValueTensor& t) {
    return {t.row_stride * std::int64_t{4}, std::int64_t{4}};
  }
};

TEST_CASE("an adapter that returns shape and byte strides by value gives a view that owns copies of them") {
  // Before the fix the view spanned the destroyed vectors (ASan:
  // heap-use-after-free); the padded rows check that strides are right.
  ByValueTensor t{std::vector<float>(3 * 6), 3, 4, 6};
  for (std::size_t i = 0; i < t.storage.size(); ++i) t.storage[i] = static_cast<float>(i);
  const TensorView v = adapt(t);
  // Allocations that would reuse the freed vectors' memory.
  std::vector<std::vector<std::int64_t>> noise(64, std::vector<std::int64_t>(2, -7));
  CHECK(v.shape_str() == "[3, 4]");
  CHECK(v.stride(0) == 6);
  CHECK(v.stride(1) == 1);
  CHECK(values(v) == std::vector<double>{0, 1, 2, 3, 6, 7, 8, 9, 12, 13, 14, 15});
  // A merge through it equals the merge of plain tensors holding the same values.
  std::mt19937_64 rng(41);
  const Tensor e = twin_test::random_tensor(rng, dtype::f32, {3, 4});
  const ConstTensorView ev[] = {e.view()};
  ByValueTensor out{std::vector<float>(3 * 6, -1.0f), 3, 4, 6};
  TaskArithmetic{1.0, {}}.merge_tensor({"w", adapt(std::as_const(t)), ev, adapt(out)});
  const Tensor plain = Tensor::from_f32(std::vector<float>{0, 1, 2, 3, 6, 7, 8, 9, 12, 13, 14, 15}, v.shape());
  const Tensor ref = twin::merge_tensor(TaskArithmetic{1.0, {}}, "w", plain.view(), ev);
  CHECK(values(adapt(std::as_const(out))) == values(ref.view()));
  CHECK(out.storage[4] == -1.0f);  // padding untouched
}

TEST_CASE("the adapter decides writability: a handle is written through a const reference, a const container is not") {
  static_assert(writable_tensor<const Handle&>);
  static_assert(writable_tensor<Handle&>);
  static_assert(!writable_tensor<const Tensor&>);
  static_assert(writable_tensor<Tensor&>);
  static_assert(writable_tensor<const TensorView&>);  // a view is a handle
  static_assert(!writable_tensor<const ConstTensorView&>);
  static_assert(std::is_same_v<decltype(adapt(std::declval<const Handle&>())), TensorView>);
  const Handle h{std::make_shared<std::vector<float>>(6, 0.0f), {2, 3}};
  const Handle copy = h;
  const TensorView v = adapt(h);
  CHECK(v.data() == copy.storage->data());
  // Merge into the handle through a const reference; the copy sees it.
  const Tensor base = Tensor::from_f32(std::vector<float>{1, 2, 3, 4, 5, 6}, v.shape());
  const Tensor e1 = Tensor::from_f32(std::vector<float>{2, 2, 3, 4, 5, 6}, v.shape());
  const ConstTensorView ev[] = {e1.view()};
  TaskArithmetic{2.0, {}}.merge_tensor({"w", base.view(), ev, adapt(h)});
  CHECK(*copy.storage == std::vector<float>{3, 2, 3, 4, 5, 6});
}

TEST_CASE("an output whose elements share memory (stride 0) is refused; an input may broadcast") {
  const float one = 1.0f;
  const std::int64_t shape[2] = {2, 3}, zero[2] = {0, 1}, bcast[2] = {0, 0};
  std::vector<float> row(3, 0.0f);
  const TensorView expanded(row.data(), dtype::f32, shape, zero);  // like torch's expand()
  CHECK(has_overlapping_elements(expanded));
  CHECK_FALSE(has_overlapping_elements(TensorView(row.data(), dtype::f32, {3})));
  const std::int64_t interleaved[2] = {1, 1};  // [2, 3] over 4 floats: rows overlap
  CHECK(has_overlapping_elements(TensorView(row.data(), dtype::f32, shape, interleaved)));
  const std::int64_t transposed[2] = {1, 2};  // column-major: distinct
  std::vector<float> six(6, 0.0f);
  CHECK_FALSE(has_overlapping_elements(TensorView(six.data(), dtype::f32, shape, transposed)));
  const Tensor base(dtype::f32, {2, 3});
  const ConstTensorView ev[] = {ConstTensorView(&one, dtype::f32, shape, bcast)};  // a broadcast input is fine
  const std::string e = twin_test::error_of<shape_error>([&] {
    TaskArithmetic{1.0, {}}.merge_tensor({"w", base.view(), ev, expanded});
  });
  CHECK(e.find("output tensor 'w'") != std::string::npos);
  CHECK(e.find("share memory") != std::string::npos);
  Tensor out(dtype::f32, {2, 3});
  TaskArithmetic{1.0, {}}.merge_tensor({"w", base.view(), ev, out.view()});
  CHECK(values(out.view()) == std::vector<double>(6, 1.0));
}

#if __has_include(<dlpack/dlpack.h>)
#  include "twin/adapters/dlpack.hpp"

TEST_CASE("DLPack tensors of every float dtype adapt with their strides, byte offset and device") {
  std::mt19937_64 rng(43);
  for (const dtype t : {dtype::f32, dtype::f16, dtype::bf16, dtype::f64}) {
    CAPTURE(dtype_name(t));
    // A [3, 4] column-major tensor 16 bytes into its buffer.
    const Tensor src = twin_test::random_tensor(rng, t, {4, 3});  // the transpose, row-major
    const auto es = static_cast<std::uint64_t>(dtype_size(t));
    std::vector<std::byte> buf(16 + src.nbytes());
    std::memcpy(buf.data() + 16, src.data(), src.nbytes());
    std::int64_t shape[2] = {3, 4}, strides[2] = {1, 3};
    DLTensor dl{};
    dl.data = buf.data();
    dl.byte_offset = 16;
    dl.device = {kDLCPU, 0};
    dl.ndim = 2;
    dl.dtype = {static_cast<std::uint8_t>(t == dtype::bf16 ? kDLBfloat : kDLFloat), static_cast<std::uint8_t>(es * 8),
                1};
    dl.shape = shape;
    dl.strides = strides;
    const TensorView v = adapt(std::as_const(dl));  // a handle: writable through const
    CHECK(v.dtype() == t);
    CHECK(v.data() == buf.data() + 16);
    CHECK(v.stride(0) == 1);
    CHECK(v.stride(1) == 3);
    const std::vector<double> s = values(src.view());
    for (std::int64_t i = 0; i < 3; ++i)
      for (std::int64_t j = 0; j < 4; ++j) CHECK(element_f64(v, i * 4 + j) == s[static_cast<std::size_t>(j * 3 + i)]);
    // Compact (strides NULL) and managed tensors.
    dl.strides = nullptr;
    CHECK(adapt(dl).stride(0) == 4);
    DLManagedTensor managed{dl, nullptr, nullptr};
    CHECK(adapt(managed).data() == buf.data() + 16);
    dl.device = {kDLCUDA, 1};
    CHECK(adapt(dl).device() == device{device::cuda, 1});
  }
  DLTensor bad{};
  std::int64_t one = 1;
  bad.ndim = 1;
  bad.shape = &one;
  bad.device = {kDLCPU, 0};
  bad.dtype = {kDLComplex, 64, 1};
  CHECK_THROWS_AS(adapt(bad), dtype_error);
  bad.dtype = {kDLFloat, 32, 4};  // vector lanes
  CHECK_THROWS_AS(adapt(bad), dtype_error);
  bad.dtype = {kDLFloat, 32, 1};
  bad.device = {kDLVulkan, 0};
  CHECK_THROWS_AS(adapt(bad), argument_error);
}
#endif
