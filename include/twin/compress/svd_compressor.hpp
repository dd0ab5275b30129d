// SvdCompressor: v_t ≈ U Σ Vᵀ truncated per matrix (Twin-Merging's default
// compression), stored as A = UΣ [m×r] and B = V [n×r]. The rank is fixed,
// the smallest keeping a fraction of ‖v‖_F², or a ratio of min(m, n); the
// engine is exact (BDCSVD) or randomized (HMT), picked by size and rank.
// Optionally the factors are quantized to int8 / int4 with f16 scales per
// group (packed.hpp), and the top entries of what the factors leave are kept
// as a sparse residual. Vectors (rank < 2) stay dense.
#pragma once

#include <cmath>
#include <sstream>

#include "twin/backend/cpu/gemm.hpp"
#include "twin/backend/cpu/svd.hpp"
#include "twin/compress/exclusive_module.hpp"
#include "twin/compress/magnitude_sparsifier.hpp"
#include "twin/random.hpp"

namespace twin {

enum class SvdEngine : std::uint8_t { automatic, exact, randomized };
enum class RankMode : std::uint8_t { rank, energy, rank_ratio };

struct SvdCompressor {
  RankMode mode = RankMode::rank;
  std::int64_t rank = 16;   // mode rank: clamped to min(m, n)
  double energy = 0.9;      // mode energy: fraction of ‖v‖_F² kept, in (0, 1]
  double rank_ratio = 0.1;  // mode rank_ratio: r = ceil(ratio · min(m, n)), at least 1
  SvdEngine engine = SvdEngine::automatic;
  int oversample = 10;            // randomized: p extra test vectors
  int power_iters = 2;            // randomized: q power iterations
  std::uint64_t seed = 0;         // randomized: test matrices are Philox(seed, tensor, task)
  dtype storage = dtype::f32;     // dtype of A and B (and of the residual's values)
  QuantSpec quant;                // bits 8 or 4: A and B quantized; 0: stored in `storage`
  double residual_density = 0.0;  // > 0: also keep this fraction of v − A·Bᵀ's entries, largest |·|

  static SvdCompressor with_rank(std::int64_t r, dtype storage = dtype::f32) {
    SvdCompressor c;
    c.rank = r;
    c.storage = storage;
    return c;
  }
  static SvdCompressor with_energy(double e, dtype storage = dtype::f32) {
    SvdCompressor c;
    c.mode = RankMode::energy;
    c.energy = e;
    c.storage = storage;
    return c;
  }
  static SvdCompressor with_rank_ratio(double x, dtype storage = dtype::f32) {
    SvdCompressor c;
    c.mode = RankMode::rank_ratio;
    c.rank_ratio = x;
    c.storage = storage;
    return c;
  }

  std::string_view name() const noexcept { return "svd"; }

  void validate() const {
    if (mode == RankMode::rank && rank < 1)
      throw argument_error("svd rank must be at least 1, found " + std::to_string(rank));
    if (mode == RankMode::energy && !(energy > 0.0 && energy <= 1.0))
      throw argument_error("svd energy must be in (0, 1], found " + std::to_string(energy));
    if (mode == RankMode::rank_ratio && !(rank_ratio > 0.0 && rank_ratio <= 1.0))
      throw argument_error("svd rank ratio must be in (0, 1], found " + std::to_string(rank_ratio));
    if (oversample < 0 || power_iters < 0) throw argument_error("svd oversampling and power iterations must be >= 0");
    require_float(storage, "svd factor storage");
    if (quant.enabled()) quant.validate("svd factors");
    if (!(residual_density >= 0.0 && residual_density <= 1.0))
      throw argument_error("svd residual density must be in [0, 1], found " + std::to_string(residual_density));
  }

  Metadata metadata() const {
    auto num = [](double x) {
      std::ostringstream s;
      s << x;
      return s.str();
    };
    Metadata m{{"compressor", "svd"},
               {"storage_dtype", std::string(dtype_name(storage))},
               {"engine", engine == SvdEngine::exact        ? "exact"
                          : engine == SvdEngine::randomized ? "randomized"
                                                            : "auto"},
               {"oversample", std::to_string(oversample)},
               {"power_iters", std::to_string(power_iters)},
               {"seed", std::to_string(seed)}};
    if (mode == RankMode::rank) m["rank"] = std::to_string(rank);
    if (mode == RankMode::energy) m["energy"] = num(energy);
    if (mode == RankMode::rank_ratio) m["rank_ratio"] = num(rank_ratio);
    if (quant.enabled()) m["quant_bits"] = std::to_string(quant.bits), m["quant_group"] = std::to_string(quant.group);
    if (residual_density > 0.0) m["residual_density"] = num(residual_density);
    return m;
  }

  // The rank asked for a [m×n] matrix before the spectrum is known (energy
  // mode: -1, decided from the spectrum).
  std::int64_t target_rank(std::int64_t m, std::int64_t n) const {
    const std::int64_t p = std::min(m, n);
    switch (mode) {
      case RankMode::rank: return std::min(rank, p);
      case RankMode::rank_ratio:
        return std::clamp<std::int64_t>(
            static_cast<std::int64_t>(std::ceil(rank_ratio * static_cast<double>(p) - 1e-9)), 1, p);
      case RankMode::energy: return -1;
    }
    return -1;
  }

  // Smallest k with σ₁² + … + σ_k² ≥ energy · Σσ² (0 for a zero matrix).
  std::int64_t energy_rank(std::span<const double> s) const {
    double total = 0.0;
    for (double x : s) total += x * x;
    if (total <= 0.0) return 0;
    double kept = 0.0;
    for (std::size_t i = 0; i < s.size(); ++i) {
      kept += s[i] * s[i];
      // relative slack: Σσ² and ‖v‖² agree only to rounding
      if (kept >= energy * total * (1.0 - 1e-12)) return static_cast<std::int64_t>(i) + 1;
    }
    return static_cast<std::int64_t>(s.size());
  }

  // The engine `compress` uses for a [m×n] matrix: randomized when the
  // rank (plus oversampling) is a small part of min(m, n) and the matrix is
  // large enough for the range finder to pay off; exact otherwise and always
  // in energy mode, which needs the whole spectrum.
  SvdEngine engine_for(std::int64_t m, std::int64_t n) const {
    if (engine != SvdEngine::automatic) return mode == RankMode::energy ? SvdEngine::exact : engine;
    const std::int64_t k = target_rank(m, n);
    const std::int64_t p = std::min(m, n);
    if (k < 0 || p < 128) return SvdEngine::exact;
    return 4 * (k + oversample) <= p ? SvdEngine::randomized : SvdEngine::exact;
  }

  // Truncated factors of the row-major [m×n] f32 matrix (for the compressor
  // and for callers that want U, Σ, V themselves). A template (Real is
  // float) so that only translation units that compress instantiate Eigen's
  // SVD; see backend/cpu/svd.hpp.
  template <class Real>
  backend::cpu::SvdFactors factorize(std::string_view name, const Real* v, std::int64_t m, std::int64_t n,
                                     std::uint64_t stream = 0) const {
    static_assert(std::is_same_v<Real, float>, "SvdCompressor factorizes f32 matrices");
    validate();
    backend::cpu::SvdFactors f;
    if (m == 0 || n == 0) {  // an empty matrix: rank 0, no engine (Eigen asserts on it)
      f.m = m, f.n = n;
      return f;
    }
    backend::cpu::detail::check_addressable(v, m, n, n, "SVD input");  // under ASan (gemm.hpp)
    const std::int64_t k = target_rank(m, n);
    if (engine_for(m, n) == SvdEngine::randomized) {
      if (!backend::cpu::svd_randomized(v, m, n, k, oversample, power_iters, random_key(seed, name, stream), f))
        throw numeric_error("randomized SVD of tensor '" + std::string(name) + "' " +
                            shape_string(std::array<std::int64_t, 2>{m, n}) + " did not converge");
      return f;
    }
    const backend::cpu::RankPicker pick = [&](std::span<const double> s) -> std::int64_t {
      return k >= 0 ? k : energy_rank(s);
    };
    if (!backend::cpu::svd_exact(v, m, n, pick, f))
      throw numeric_error("SVD of tensor '" + std::string(name) + "' " +
                          shape_string(std::array<std::int64_t, 2>{m, n}) + " did not converge, in f32 nor in f64");
    return f;
  }

  template <class View = ConstTensorView>
  ExclusiveModule compress(std::string_view name, const View& view, std::uint64_t stream = 0) const {
    const ConstTensorView v = view;
    validate();
    require_float(v.dtype(), "exclusive delta of tensor '" + std::string(name) + "'");
    std::vector<float> d = detail::delta_f32(v);
    detail::check_finite_delta(name, d);
    if (v.rank() < 2) return ExclusiveModule::dense(Tensor::from_f32(d, v.shape(), storage));
    const MatrixShape ms = matrix_shape(v.shape());
    const backend::cpu::SvdFactors f = factorize(name, d.data(), ms.rows, ms.cols, stream);
    // A = U Σ (Σ folded into the left factor, as the paper stores it).
    const std::vector<float> a = f.u_times_s();
    const std::int64_t sa[2] = {f.m, f.k}, sb[2] = {f.n, f.k};
    ExclusiveModule mod =
        quant.enabled()
            ? ExclusiveModule::low_rank_quantized(
                  quantize_factor(a.data(), f.m, f.k, quant, "factor A of tensor '" + std::string(name) + "'"),
                  quantize_factor(f.v.data(), f.n, f.k, quant, "factor B of tensor '" + std::string(name) + "'"), quant,
                  v.shape())
            : ExclusiveModule::low_rank(Tensor::from_f32(a, sa, storage), Tensor::from_f32(f.v, sb, storage),
                                        v.shape());
    if (residual_density <= 0.0) return mod;
    // Residual of the factors as stored (rounded or quantized): d − A·Bᵀ.
    if (f.k > 0) {
      std::vector<float> fa, fb;
      mod.factors_f32(fa, fb);
      backend::cpu::gemm(backend::cpu::GemmMode::fastest, false, true, f.m, f.n, f.k, -1.0f, fa.data(), f.k, fb.data(),
                         f.k, true, d.data(), f.n);
    }
    auto [idx, vals] = top_k_entries(d, keep_count(residual_density, static_cast<std::int64_t>(d.size())), storage);
    return ExclusiveModule::with_residual(std::move(mod), std::move(idx), std::move(vals));
  }
};

}  // namespace twin
