// MagnitudeSparsifier: keeps the k = floor(density · numel) entries of v_t
// with the largest |·| (the official Twin-Merging code's `magnitude` mask
// strategy; its scripts' default for the discriminative tables is SVD at a
// rank ratio of 0.1), stored as sorted linear indices and values. Uses
// the exact top-k of merge/selection.hpp, so ties keep the lowest indices.
// Vectors (rank < 2) stay dense.
#pragma once

#include <limits>

#include "twin/compress/exclusive_module.hpp"
#include "twin/merge/merger.hpp"
#include "twin/merge/selection.hpp"

namespace twin {

// The k entries of d with the largest |·| (ties keep the lowest indices) as
// sorted linear indices (I32 when they fit, else I64) and values in `storage`.
inline std::pair<Tensor, Tensor> top_k_entries(std::span<const float> d, std::int64_t k, dtype storage) {
  const std::int64_t n = static_cast<std::int64_t>(d.size());
  const MagnitudeCut cut = select_top_k(d, k);
  // i32 indices halve the index storage whenever they can address the tensor.
  const bool narrow = n <= std::numeric_limits<std::int32_t>::max();
  const std::int64_t len[1] = {k};
  Tensor idx(narrow ? dtype::i32 : dtype::i64, len);
  std::vector<float> vals(static_cast<std::size_t>(k));
  CutCursor cursor{cut, 0};
  std::int64_t j = 0;
  for (std::int64_t i = 0; i < n && j < k; ++i) {
    if (!cursor.keep(d[static_cast<std::size_t>(i)])) continue;
    if (narrow) static_cast<std::int32_t*>(idx.mutable_data())[j] = static_cast<std::int32_t>(i);
    else static_cast<std::int64_t*>(idx.mutable_data())[j] = i;
    vals[static_cast<std::size_t>(j++)] = d[static_cast<std::size_t>(i)];
  }
  TWIN_ASSERT(j == k);
  return {std::move(idx), Tensor::from_f32(vals, len, storage)};
}

struct MagnitudeSparsifier {
  double density = 0.1;        // fraction of entries kept
  dtype storage = dtype::f32;  // dtype of the kept values

  std::string_view name() const noexcept { return "magnitude"; }

  Metadata metadata() const {
    return {{"compressor", "magnitude"},
            {"density", std::to_string(density)},
            {"storage_dtype", std::string(dtype_name(storage))}};
  }

  ExclusiveModule compress(std::string_view name, ConstTensorView v, std::uint64_t = 0) const {
    check_unit_interval(density, "sparsifier density");
    require_float(storage, "sparsifier storage");
    require_float(v.dtype(), "exclusive delta of tensor '" + std::string(name) + "'");
    std::vector<float> d = detail::delta_f32(v);
    detail::check_finite_delta(name, d);
    if (v.rank() < 2) return ExclusiveModule::dense(Tensor::from_f32(d, v.shape(), storage));
    auto [idx, vals] = top_k_entries(d, keep_count(density, static_cast<std::int64_t>(d.size())), storage);
    return ExclusiveModule::sparse(std::move(idx), std::move(vals), v.shape());
  }
};

}  // namespace twin
