// ExclusiveModule: the compressed exclusive knowledge v̂_t of one task for one
// tensor — low-rank factors (v̂ = A·Bᵀ), a sparse top-k delta (linear indices
// and values), or a dense delta. Parts are plain named tensors ("A"/"B",
// "indices"/"values", "dense") so a model file can store them as is.
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

#include "twin/error.hpp"
#include "twin/metadata.hpp"
#include "twin/tensor.hpp"

namespace twin {

enum class ModuleKind : std::uint8_t { low_rank, sparse, dense };

constexpr std::string_view module_kind_name(ModuleKind k) noexcept {
  switch (k) {
    case ModuleKind::low_rank: return "low_rank";
    case ModuleKind::sparse: return "sparse";
    case ModuleKind::dense: return "dense";
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
    ExclusiveModule m;
    m.kind_ = ModuleKind::low_rank;
    m.shape_.assign(shape);
    m.first_ = std::move(a);
    m.second_ = std::move(b);
    return m;
  }

  // v̂ has `values` at the row-major linear `indices` (strictly increasing,
  // i32 or i64) and zeros elsewhere.
  static ExclusiveModule sparse(Tensor indices, Tensor values, std::span<const std::int64_t> shape) {
    if (indices.dtype() != dtype::i32 && indices.dtype() != dtype::i64)
      throw dtype_error("sparse indices must be I32 or I64, found " + std::string(dtype_name(indices.dtype())));
    require_float(values.dtype(), "sparse values");
    if (indices.rank() != 1 || values.rank() != 1 || indices.numel() != values.numel())
      throw shape_error("sparse indices " + indices.shape_str() + " and values " + values.shape_str() +
                        " must be vectors of one length");
    const std::int64_t n = checked_numel(shape);
    std::int64_t prev = -1;
    for (std::int64_t i = 0; i < indices.numel(); ++i) {
      const std::int64_t ix = static_cast<std::int64_t>(load_as_f64(indices.data(), indices.dtype(), i));
      if (ix <= prev || ix >= n)
        throw shape_error("sparse index " + std::to_string(ix) + " at position " + std::to_string(i) +
                          " is out of order or outside a tensor of shape " + shape_string(shape));
      prev = ix;
    }
    ExclusiveModule m;
    m.kind_ = ModuleKind::sparse;
    m.shape_.assign(shape);
    m.first_ = std::move(indices);
    m.second_ = std::move(values);
    return m;
  }

  static ExclusiveModule dense(Tensor values) {
    require_float(values.dtype(), "dense exclusive module");
    ExclusiveModule m;
    m.kind_ = ModuleKind::dense;
    m.shape_.assign(values.shape());
    m.first_ = std::move(values);
    return m;
  }

  ModuleKind kind() const noexcept { return kind_; }
  std::span<const std::int64_t> shape() const noexcept { return shape_.span(); }
  MatrixShape matrix() const { return matrix_shape(shape()); }
  // Rank of a low-rank module, 0 for the other kinds.
  std::int64_t rank() const noexcept { return kind_ == ModuleKind::low_rank ? first_.dim(1) : 0; }
  std::int64_t nnz() const noexcept {
    return kind_ == ModuleKind::sparse ? first_.numel() : kind_ == ModuleKind::dense ? first_.numel() : 0;
  }

  const Tensor& a() const { return part(ModuleKind::low_rank, first_, "A"); }
  const Tensor& b() const { return part(ModuleKind::low_rank, second_, "B"); }
  const Tensor& indices() const { return part(ModuleKind::sparse, first_, "indices"); }
  const Tensor& values() const {
    return kind_ == ModuleKind::dense ? first_ : part(ModuleKind::sparse, second_, "values");
  }

  // The parts as (suffix, tensor) pairs, for writing the module as named tensors.
  std::vector<std::pair<std::string, const Tensor*>> parts() const {
    switch (kind_) {
      case ModuleKind::low_rank: return {{"A", &first_}, {"B", &second_}};
      case ModuleKind::sparse: return {{"indices", &first_}, {"values", &second_}};
      case ModuleKind::dense: return {{"dense", &first_}};
    }
    return {};
  }

  std::size_t nbytes() const noexcept { return first_.nbytes() + second_.nbytes(); }

  // dst[i] += w · v̂[i] over the row-major f32 buffer of numel values (a
  // straightforward reference path: the fuser has its own fast one).
  void add_to(std::span<float> dst, float w) const {
    const std::int64_t n = checked_numel(shape());
    if (static_cast<std::int64_t>(dst.size()) != n)
      throw shape_error("add_to: buffer of " + std::to_string(dst.size()) + " values for a module of shape " +
                        shape_string(shape()));
    switch (kind_) {
      case ModuleKind::dense: {
        std::vector<float> v(static_cast<std::size_t>(n));
        read_f32(first_.view(), 0, n, v.data());
        for (std::int64_t i = 0; i < n; ++i) dst[static_cast<std::size_t>(i)] += w * v[static_cast<std::size_t>(i)];
        return;
      }
      case ModuleKind::sparse: {
        const std::int64_t z = first_.numel();
        std::vector<float> v(static_cast<std::size_t>(z));
        read_f32(second_.view(), 0, z, v.data());
        for (std::int64_t i = 0; i < z; ++i)
          dst[static_cast<std::size_t>(load_as_f64(first_.data(), first_.dtype(), i))] +=
              w * v[static_cast<std::size_t>(i)];
        return;
      }
      case ModuleKind::low_rank: {
        const MatrixShape ms = matrix();
        const std::int64_t r = rank();
        std::vector<float> a(static_cast<std::size_t>(ms.rows * r)), b(static_cast<std::size_t>(ms.cols * r));
        read_f32(first_.view(), 0, ms.rows * r, a.data());
        read_f32(second_.view(), 0, ms.cols * r, b.data());
        for (std::int64_t i = 0; i < ms.rows; ++i)
          for (std::int64_t j = 0; j < ms.cols; ++j) {
            float s = 0.0f;
            for (std::int64_t t = 0; t < r; ++t)
              s += a[static_cast<std::size_t>(i * r + t)] * b[static_cast<std::size_t>(j * r + t)];
            dst[static_cast<std::size_t>(i * ms.cols + j)] += w * s;
          }
        return;
      }
    }
  }

  // v̂ as a dense f32 tensor.
  Tensor to_dense() const {
    Tensor t(dtype::f32, shape());
    add_to(t.values<float>(), 1.0f);
    return t;
  }

 private:
  const Tensor& part(ModuleKind want, const Tensor& t, const char* what) const {
    if (kind_ != want)
      throw argument_error(std::string("exclusive module is ") + std::string(module_kind_name(kind_)) + ", it has no " +
                           what);
    return t;
  }

  ModuleKind kind_ = ModuleKind::dense;
  Extents shape_;
  Tensor first_, second_;
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
// The delta as contiguous f32 values.
inline std::vector<float> delta_f32(const ConstTensorView& v) {
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
