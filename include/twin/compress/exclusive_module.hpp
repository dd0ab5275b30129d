// ExclusiveModule: the compressed exclusive knowledge v̂_t of one task for one
// tensor (docs/design.md §2, "Exclusive modules"). Kinds:
//   low_rank         v̂ = A·Bᵀ, factors in a float dtype           A, B
//   low_rank_q       v̂ = A·Bᵀ, factors quantized (packed.hpp)     A.codes, A.scales,
//                                                                  B.codes, B.scales, quant
//   low_rank_sparse  A·Bᵀ (plain or quantized) + a sparse residual  the above + indices, values
//   sparse           values at row-major linear indices            indices, values
//   dense            every value                                   dense
//   sign             α_row · (±1) on a kept mask                   signs, [mask], alpha
// Parts are plain named tensors (the suffixes above) so a model file stores
// them as is; `quant` is I32 [2] = {bits, group size}.
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "twin/compress/packed.hpp"
#include "twin/error.hpp"
#include "twin/metadata.hpp"
#include "twin/tensor.hpp"

namespace twin {

enum class ModuleKind : std::uint8_t { low_rank, sparse, dense, low_rank_q, low_rank_sparse, sign };

constexpr std::string_view module_kind_name(ModuleKind k) noexcept {
  switch (k) {
    case ModuleKind::low_rank: return "low_rank";
    case ModuleKind::sparse: return "sparse";
    case ModuleKind::dense: return "dense";
    case ModuleKind::low_rank_q: return "low_rank_q";
    case ModuleKind::low_rank_sparse: return "low_rank_sparse";
    case ModuleKind::sign: return "sign";
  }
  return "?";
}

// Rows and columns of the matrix twin works on: [d0, d1·…·dk] for rank ≥ 2
// (conv kernels flattened), [1, numel] for vectors and scalars.
struct MatrixShape {
  std::int64_t rows = 1, cols = 1;
};
inline MatrixShape matrix_shape(std::span<const std::int64_t> shape) {
  const std::int64_t n = checked_numel(shape);
  if (shape.size() >= 2) return {shape[0], shape[0] == 0 ? 0 : n / shape[0]};
  return {1, n};
}

class ExclusiveModule {
 public:
  ExclusiveModule() = default;

  // v̂ = A·Bᵀ with A [rows×r] and B [cols×r] of the matrix view of `shape`.
  static ExclusiveModule low_rank(Tensor a, Tensor b, std::span<const std::int64_t> shape) {
    const MatrixShape ms = matrix_shape(shape);
    if (a.rank() != 2 || b.rank() != 2 || a.dim(0) != ms.rows || b.dim(0) != ms.cols || a.dim(1) != b.dim(1))
      throw shape_error("low-rank factors A " + a.shape_str() + " and B " + b.shape_str() +
                        " do not factor a tensor of shape " + shape_string(shape));
    require_float(a.dtype(), "low-rank factor A");
    require_float(b.dtype(), "low-rank factor B");
    check_rank(a.dim(1), ms, shape);
    ExclusiveModule m;
    m.kind_ = ModuleKind::low_rank;
    m.shape_.assign(shape);
    m.rank_ = a.dim(1);
    m.a_ = std::move(a);
    m.b_ = std::move(b);
    return m;
  }

  // v̂ = A·Bᵀ with A [rows×r] and B [cols×r] quantized under `q`; the rank
  // is the codes' first dimension.
  static ExclusiveModule low_rank_quantized(QuantizedFactor a, QuantizedFactor b, QuantSpec q,
                                            std::span<const std::int64_t> shape) {
    const MatrixShape ms = matrix_shape(shape);
    const std::int64_t r = a.codes.rank() == 2 ? a.codes.dim(0) : -1;
    if (r >= 0) check_rank(r, ms, shape);
    check_quantized_factor(a, ms.rows, r, q, "quantized factor A of a tensor of shape " + shape_string(shape));
    check_quantized_factor(b, ms.cols, r, q, "quantized factor B of a tensor of shape " + shape_string(shape));
    ExclusiveModule m;
    m.kind_ = ModuleKind::low_rank_q;
    m.shape_.assign(shape);
    m.rank_ = r;
    m.quant_ = q;
    m.qa_ = std::move(a);
    m.qb_ = std::move(b);
    m.quant_info_ = Tensor(dtype::i32, std::vector<std::int64_t>{2});
    static_cast<std::int32_t*>(m.quant_info_.mutable_data())[0] = q.bits;
    static_cast<std::int32_t*>(m.quant_info_.mutable_data())[1] = static_cast<std::int32_t>(q.group);
    return m;
  }

  // v̂ has `values` at the row-major linear `indices` (strictly increasing,
  // i32 or i64) and zeros elsewhere.
  static ExclusiveModule sparse(Tensor indices, Tensor values, std::span<const std::int64_t> shape) {
    ExclusiveModule m;
    m.kind_ = ModuleKind::sparse;
    m.shape_.assign(shape);
    m.set_sparse(std::move(indices), std::move(values));
    return m;
  }

  // A low-rank module (plain or quantized) plus a sparse residual: v̂ =
  // A·Bᵀ + S.
  static ExclusiveModule with_residual(ExclusiveModule factors, Tensor indices, Tensor values) {
    if (factors.kind_ != ModuleKind::low_rank && factors.kind_ != ModuleKind::low_rank_q)
      throw argument_error("a sparse residual needs a low-rank module, found " +
                           std::string(module_kind_name(factors.kind_)));
    factors.set_sparse(std::move(indices), std::move(values));
    factors.kind_ = ModuleKind::low_rank_sparse;
    return factors;
  }

  static ExclusiveModule dense(Tensor values) {
    require_float(values.dtype(), "dense exclusive module");
    ExclusiveModule m;
    m.kind_ = ModuleKind::dense;
    m.shape_.assign(values.shape());
    m.dense_ = std::move(values);
    return m;
  }

  // v̂_i = α_row(i) · (mask_i ? (sign_i ? −1 : +1) : 0): `signs` and `mask`
  // are bit vectors over the row-major entries (packed.hpp; an empty mask
  // keeps every entry), `alpha` F32 with one value per row of the matrix
  // view or a single value for the tensor.
  static ExclusiveModule sign(Tensor signs, Tensor mask, Tensor alpha, std::span<const std::int64_t> shape) {
    const std::int64_t n = checked_numel(shape);
    const MatrixShape ms = matrix_shape(shape);
    auto check_bits = [&](const Tensor& t, const char* what) {
      if (t.dtype() != dtype::u8 || t.rank() != 1 || t.numel() != bit_bytes(n))
        throw shape_error(std::string("sign module: ") + what + " " + std::string(dtype_name(t.dtype())) + " " +
                          t.shape_str() + " is not U8 [" + std::to_string(bit_bytes(n)) + "] (one bit per entry of " +
                          shape_string(shape) + ")");
      const int pad = static_cast<int>(bit_bytes(n) * 8 - n);
      if (pad > 0 && (static_cast<const std::uint8_t*>(t.data())[t.numel() - 1] >> (8 - pad)) != 0)
        throw shape_error(std::string("sign module: ") + what + " has bits set past the tensor's " + std::to_string(n) +
                          " entries");
    };
    check_bits(signs, "signs");
    const bool has_mask = mask.numel() > 0 || mask.rank() > 0;
    if (has_mask) check_bits(mask, "mask");
    if (alpha.dtype() != dtype::f32 || alpha.rank() != 1 || (alpha.numel() != 1 && alpha.numel() != ms.rows))
      throw shape_error("sign module: alpha " + std::string(dtype_name(alpha.dtype())) + " " + alpha.shape_str() +
                        " is not F32 [1] or F32 [" + std::to_string(ms.rows) + "] (one per row)");
    const float* av = static_cast<const float*>(alpha.data());
    for (std::int64_t i = 0; i < alpha.numel(); ++i)
      if (!(av[i] >= 0.0f) || !std::isfinite(av[i])) throw shape_error("sign module: alpha must be finite and >= 0");
    ExclusiveModule m;
    m.kind_ = ModuleKind::sign;
    m.shape_.assign(shape);
    m.signs_ = std::move(signs);
    if (has_mask) m.mask_ = std::move(mask);
    m.alpha_ = std::move(alpha);
    return m;
  }

  ModuleKind kind() const noexcept { return kind_; }
  std::span<const std::int64_t> shape() const noexcept { return shape_.span(); }
  MatrixShape matrix() const { return matrix_shape(shape()); }
  // Rank of the low-rank part (low_rank, low_rank_q, low_rank_sparse), 0
  // for the other kinds.
  std::int64_t rank() const noexcept { return rank_; }
  bool has_factors() const noexcept {
    return kind_ == ModuleKind::low_rank || kind_ == ModuleKind::low_rank_q || kind_ == ModuleKind::low_rank_sparse;
  }
  // Only quantized factors carry a quantization spec.
  bool quantized() const noexcept { return quant_.enabled(); }
  const QuantSpec& quant() const noexcept { return quant_; }
  // Parts a fuser adds besides the factors (sparse, dense, sign).
  bool has_rest() const noexcept { return kind_ != ModuleKind::low_rank && kind_ != ModuleKind::low_rank_q; }
  // Stored entries of the sparse part, or every entry of a dense module.
  std::int64_t nnz() const noexcept {
    return indices_.numel() > 0 ? indices_.numel() : kind_ == ModuleKind::dense ? dense_.numel() : 0;
  }

  // Plain factors (low_rank, or low_rank_sparse with unquantized factors).
  const Tensor& a() const { return plain_factor(a_, "A"); }
  const Tensor& b() const { return plain_factor(b_, "B"); }
  const QuantizedFactor& quantized_a() const { return quantized_factor(qa_, "A"); }
  const QuantizedFactor& quantized_b() const { return quantized_factor(qb_, "B"); }
  const Tensor& indices() const {
    if (kind_ != ModuleKind::sparse && kind_ != ModuleKind::low_rank_sparse) no_part("indices");
    return indices_;
  }
  const Tensor& values() const {
    if (kind_ == ModuleKind::dense) return dense_;
    if (kind_ != ModuleKind::sparse && kind_ != ModuleKind::low_rank_sparse) no_part("values");
    return values_;
  }
  const Tensor& signs() const { return sign_part(signs_, "signs"); }
  // Empty when every entry is kept.
  const Tensor& mask() const { return sign_part(mask_, "mask"); }
  const Tensor& alpha() const { return sign_part(alpha_, "alpha"); }
  float alpha_of_row(std::int64_t i) const noexcept {
    const float* a = static_cast<const float*>(alpha_.data());
    return alpha_.numel() == 1 ? a[0] : a[i];
  }

  // A [rows×r] and B [cols×r] row-major f32, dequantized if need be.
  void factors_f32(std::vector<float>& a, std::vector<float>& b) const {
    if (!has_factors()) no_part("factors");
    const MatrixShape ms = matrix();
    a.resize(static_cast<std::size_t>(ms.rows * rank_));
    b.resize(static_cast<std::size_t>(ms.cols * rank_));
    if (quantized()) {
      dequantize_factor(qa_, ms.rows, rank_, quant_, a.data());
      dequantize_factor(qb_, ms.cols, rank_, quant_, b.data());
    } else {
      read_f32(a_.view(), 0, ms.rows * rank_, a.data());
      read_f32(b_.view(), 0, ms.cols * rank_, b.data());
    }
  }

  // The parts as (suffix, tensor) pairs, for writing the module as named tensors.
  std::vector<std::pair<std::string, const Tensor*>> parts() const {
    std::vector<std::pair<std::string, const Tensor*>> p;
    if (has_factors() && !quantized()) p = {{"A", &a_}, {"B", &b_}};
    if (quantized())
      p = {{"A.codes", &qa_.codes},
           {"A.scales", &qa_.scales},
           {"B.codes", &qb_.codes},
           {"B.scales", &qb_.scales},
           {"quant", &quant_info_}};
    if (kind_ == ModuleKind::sparse || kind_ == ModuleKind::low_rank_sparse)
      p.insert(p.end(), {{"indices", &indices_}, {"values", &values_}});
    if (kind_ == ModuleKind::dense) p = {{"dense", &dense_}};
    if (kind_ == ModuleKind::sign) {
      p = {{"signs", &signs_}};
      if (mask_.numel() > 0) p.emplace_back("mask", &mask_);
      p.emplace_back("alpha", &alpha_);
    }
    return p;
  }

  std::size_t nbytes() const noexcept {
    std::size_t n = 0;
    for (const auto& [suffix, t] : parts()) n += t->nbytes();
    return n;
  }

  // dst[i] += w · v̂[i] over the row-major f32 buffer of the rows [r0, r1) ×
  // cols [c0, c1) of the matrix view, whose leading dimension is ld: the
  // parts other than the factors (sparse, dense, sign).
  void add_rest_to(float* dst, std::int64_t ld, float w, std::int64_t r0, std::int64_t r1, std::int64_t c0,
                   std::int64_t c1) const {
    const std::int64_t cols = matrix().cols, cw = c1 - c0;
    if (w == 0.0f || r1 <= r0 || cw <= 0) return;
    if (kind_ == ModuleKind::dense) {
      const ConstTensorView v = dense_.view();
      thread_local std::vector<float> row;
      row.resize(static_cast<std::size_t>(cw));
      for (std::int64_t i = r0; i < r1; ++i) {
        read_f32(v, i * cols + c0, cw, row.data());
        float* d = dst + (i - r0) * ld;
        for (std::int64_t j = 0; j < cw; ++j) d[j] += w * row[static_cast<std::size_t>(j)];
      }
    } else if (kind_ == ModuleKind::sign) {
      const auto* s = static_cast<const std::uint8_t*>(signs_.data());
      const auto* mk = mask_.numel() > 0 ? static_cast<const std::uint8_t*>(mask_.data()) : nullptr;
      for (std::int64_t i = r0; i < r1; ++i)
        sign_axpy(s, mk, i * cols + c0, cw, w * alpha_of_row(i), dst + (i - r0) * ld);
    } else if (indices_.numel() > 0) {
      auto scatter = [&](const auto* ix) {
        const std::int64_t nnz = indices_.numel();
        const std::int64_t first = r0 * cols + c0, last = (r1 - 1) * cols + c1;
        std::int64_t k = std::lower_bound(ix, ix + nnz, first,
                                          [](auto a, std::int64_t b) { return static_cast<std::int64_t>(a) < b; }) -
                         ix;
        const float* vf = values_.dtype() == dtype::f32 ? static_cast<const float*>(values_.data()) : nullptr;
        for (; k < nnz; ++k) {
          const std::int64_t li = static_cast<std::int64_t>(ix[k]);
          if (li >= last) break;
          const std::int64_t i = li / cols, j = li % cols;
          if (j < c0 || j >= c1) continue;
          const float x = vf ? vf[k] : static_cast<float>(load_as_f64(values_.data(), values_.dtype(), k));
          dst[(i - r0) * ld + (j - c0)] += w * x;
        }
      };
      if (indices_.dtype() == dtype::i32) scatter(static_cast<const std::int32_t*>(indices_.data()));
      else scatter(static_cast<const std::int64_t*>(indices_.data()));
    }
  }

  // dst[i] += w · v̂[i] over the row-major f32 buffer of numel values (a
  // straightforward reference path: the fuser has its own fast one).
  void add_to(std::span<float> dst, float w) const {
    const std::int64_t n = checked_numel(shape());
    if (static_cast<std::int64_t>(dst.size()) != n)
      throw shape_error("add_to: buffer of " + std::to_string(dst.size()) + " values for a module of shape " +
                        shape_string(shape()));
    const MatrixShape ms = matrix();
    if (has_factors()) {
      std::vector<float> a, b;
      factors_f32(a, b);
      const std::int64_t r = rank_;
      for (std::int64_t i = 0; i < ms.rows; ++i)
        for (std::int64_t j = 0; j < ms.cols; ++j) {
          float s = 0.0f;
          for (std::int64_t t = 0; t < r; ++t)
            s += a[static_cast<std::size_t>(i * r + t)] * b[static_cast<std::size_t>(j * r + t)];
          dst[static_cast<std::size_t>(i * ms.cols + j)] += w * s;
        }
    }
    add_rest_to(dst.data(), ms.cols, w, 0, ms.rows, 0, ms.cols);
  }

  // v̂ as a dense f32 tensor.
  Tensor to_dense() const {
    Tensor t(dtype::f32, shape());
    add_to(t.values<float>(), 1.0f);
    return t;
  }

 private:
  // A rank above both dimensions adds nothing (and, on an empty tensor, would
  // take no bytes however large): refused, so an untrusted file cannot make
  // the fuser's column offsets overflow.
  static void check_rank(std::int64_t r, const MatrixShape& ms, std::span<const std::int64_t> shape) {
    if (r > std::max<std::int64_t>({ms.rows, ms.cols, 1}))
      throw shape_error("low-rank factors of rank " + std::to_string(r) + " for a tensor of shape " +
                        shape_string(shape) + ": the rank exceeds both of its dimensions");
  }
  void set_sparse(Tensor indices, Tensor values) {
    if (indices.dtype() != dtype::i32 && indices.dtype() != dtype::i64)
      throw dtype_error("sparse indices must be I32 or I64, found " + std::string(dtype_name(indices.dtype())));
    require_float(values.dtype(), "sparse values");
    if (indices.rank() != 1 || values.rank() != 1 || indices.numel() != values.numel())
      throw shape_error("sparse indices " + indices.shape_str() + " and values " + values.shape_str() +
                        " must be vectors of one length");
    const std::int64_t n = checked_numel(shape());
    std::int64_t prev = -1;
    for (std::int64_t i = 0; i < indices.numel(); ++i) {
      const std::int64_t ix = static_cast<std::int64_t>(load_as_f64(indices.data(), indices.dtype(), i));
      if (ix <= prev || ix >= n)
        throw shape_error("sparse index " + std::to_string(ix) + " at position " + std::to_string(i) +
                          " is out of order or outside a tensor of shape " + shape_string(shape()));
      prev = ix;
    }
    indices_ = std::move(indices);
    values_ = std::move(values);
  }
  [[noreturn]] void no_part(const char* what) const {
    throw argument_error(std::string("exclusive module is ") + std::string(module_kind_name(kind_)) + ", it has no " +
                         what);
  }
  const Tensor& plain_factor(const Tensor& t, const char* what) const {
    if (!has_factors()) no_part(what);
    if (quantized())
      throw argument_error(std::string("exclusive module's factor ") + what +
                           " is quantized: read it with quantized_a/b() or factors_f32()");
    return t;
  }
  const QuantizedFactor& quantized_factor(const QuantizedFactor& f, const char* what) const {
    if (!quantized()) no_part((std::string("quantized factor ") + what).c_str());
    return f;
  }
  const Tensor& sign_part(const Tensor& t, const char* what) const {
    if (kind_ != ModuleKind::sign) no_part(what);
    return t;
  }

  ModuleKind kind_ = ModuleKind::dense;
  Extents shape_;
  std::int64_t rank_ = 0;
  Tensor a_, b_;             // plain factors
  QuantizedFactor qa_, qb_;  // quantized factors
  QuantSpec quant_;          // their spec (bits 0: the factors are not quantized)
  Tensor quant_info_;        // I32 [2] {bits, group}, as stored
  Tensor indices_, values_;  // sparse module or residual
  Tensor dense_;
  Tensor signs_, mask_, alpha_;
};

// What TwinModel::build needs from a compressor: turn one task's exclusive
// delta v_t (f32, any shape) into a module. `stream` distinguishes the tasks
// for seeded engines; metadata() records the settings in the model.
template <class C>
concept ExclusiveCompressor = requires(const C& c, std::string_view name, ConstTensorView v, std::uint64_t stream) {
  { c.name() } -> std::convertible_to<std::string_view>;
  { c.compress(name, v, stream) } -> std::same_as<ExclusiveModule>;
  { c.metadata() } -> std::convertible_to<Metadata>;
};

namespace detail {
inline void check_finite_delta(std::string_view name, std::span<const float> v) {
  for (std::size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i]))
      throw numeric_error("exclusive delta of tensor '" + std::string(name) + "' has a non-finite value at index " +
                          std::to_string(i));
}
// The delta as contiguous f32 values (read from host memory: every
// compressor starts here).
inline std::vector<float> delta_f32(const ConstTensorView& v) {
  require_host(v, "an exclusive delta");
  std::vector<float> out(static_cast<std::size_t>(v.numel()));
  read_f32(v, 0, v.numel(), out.data());
  return out;
}
}  // namespace detail

// Keeps v_t dense (in `storage` dtype): the official code's "dense twin
// vectors", and the reference point for the compressed forms.
struct DenseCompressor {
  dtype storage = dtype::f32;

  std::string_view name() const noexcept { return "dense"; }
  Metadata metadata() const { return {{"compressor", "dense"}, {"storage_dtype", std::string(dtype_name(storage))}}; }
  ExclusiveModule compress(std::string_view name, ConstTensorView v, std::uint64_t = 0) const {
    require_float(storage, "dense compressor storage");
    std::vector<float> d = detail::delta_f32(v);
    detail::check_finite_delta(name, d);
    return ExclusiveModule::dense(Tensor::from_f32(d, v.shape(), storage));
  }
};

}  // namespace twin
