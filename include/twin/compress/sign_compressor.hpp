// SignCompressor: v_t ≈ α ⊙ sign(v_t) on a kept mask (BitDelta keeps every
// entry; T-Switch-style masks keep the largest |v|). The mask keeps
// k = floor(density · numel) entries of largest |v| (ties: lowest indices);
// for a fixed mask, the α of a row (or of the tensor) minimizing
// ‖v − v̂‖² is the mean |v| over the row's kept entries (0 if none):
//   d/dα Σ_kept (|v_i| − α)² = 0  ⇒  α = Σ_kept |v_i| / #kept.
// Stored as bit vectors (one sign bit per entry, one mask bit per entry when
// density < 1) and F32 α: 1 bit per entry at density 1, 2 below.
#pragma once

#include <limits>

#include "twin/compress/exclusive_module.hpp"
#include "twin/merge/selection.hpp"

namespace twin {

struct SignCompressor {
  double density = 1.0;  // fraction of entries kept, in (0, 1]
  bool per_row = true;   // one α per row of the matrix view; false: one per tensor

  std::string_view name() const noexcept { return "sign"; }

  Metadata metadata() const {
    return {{"compressor", "sign"}, {"density", std::to_string(density)}, {"alpha", per_row ? "row" : "tensor"}};
  }

  void validate() const {
    if (!(density > 0.0 && density <= 1.0))
      throw argument_error("sign compressor density must be in (0, 1], found " + std::to_string(density));
  }

  ExclusiveModule compress(std::string_view name, ConstTensorView v, std::uint64_t = 0) const {
    validate();
    require_float(v.dtype(), "exclusive delta of tensor '" + std::string(name) + "'");
    std::vector<float> d = detail::delta_f32(v);
    detail::check_finite_delta(name, d);
    const std::int64_t n = static_cast<std::int64_t>(d.size());
    const MatrixShape ms = matrix_shape(v.shape());
    const std::int64_t nb = bit_bytes(n);
    const std::int64_t bshape[1] = {nb};
    Tensor signs(dtype::u8, bshape), mask;
    auto* s = static_cast<std::uint8_t*>(signs.mutable_data());
    std::uint8_t* mk = nullptr;
    MagnitudeCut cut = MagnitudeCut::keep_all();
    if (keep_count(density, n) < n) {
      mask = Tensor(dtype::u8, bshape);
      mk = static_cast<std::uint8_t*>(mask.mutable_data());
      cut = select_top_k(std::span<const float>(d), keep_count(density, n));
    }
    const std::int64_t rows = per_row ? ms.rows : 1, per = per_row ? ms.cols : n;
    std::vector<float> alpha(static_cast<std::size_t>(std::max<std::int64_t>(rows, 1)), 0.0f);
    CutCursor cursor{cut, 0};
    for (std::int64_t r = 0; r < rows; ++r) {
      double sum = 0.0;
      std::int64_t kept = 0;
      for (std::int64_t i = r * per; i < (r + 1) * per; ++i) {
        const float x = d[static_cast<std::size_t>(i)];
        if (std::signbit(x)) set_bit(s, i);
        if (mk && !cursor.keep(x)) continue;
        if (mk) set_bit(mk, i);
        sum += std::abs(static_cast<double>(x)), ++kept;
      }
      alpha[static_cast<std::size_t>(r)] = kept ? static_cast<float>(sum / static_cast<double>(kept)) : 0.0f;
    }
    const std::int64_t ashape[1] = {static_cast<std::int64_t>(alpha.size())};
    return ExclusiveModule::sign(std::move(signs), std::move(mask), Tensor::from_f32(alpha, ashape, dtype::f32),
                                 v.shape());
  }
};

}  // namespace twin
