// RAM and RAM+ (tensor-local), as mergekit's `ram` and `ramplus_tl` compute
// them per tensor (docs/mergekit_methods.md §11):
//   τ_i = expert_i − base; an entry contributes where |τ_ij| > ε (strictly);
//   c_j = the number of contributing experts; Z_ij = τ_ij if it contributes,
//   else 0;
//   Ram:       θ0 + Σ_i [c_j = 1] Z_ij + [c_j > 1] Z_ij / c_j
//              (the single value where one expert moves an entry, the mean of
//              the movers where several do, the base where none does);
//   RamPlusTl: the unique entries of expert i scaled by
//              λ_i = 1 + r·clamp(ρ_i, 0, α), ρ_i = shared_i / max(unique_i, ε),
//              shared_i / unique_i = how many of expert i's contributing
//              entries of this tensor have c > 1 / c = 1.
// Counts are integers (the same for any thread count); values in f32 in
// expert order, as mergekit sums them.
#pragma once

#include <algorithm>

#include "twin/backend/cpu/avx512_copies.hpp"
#include "twin/merge/merger.hpp"

namespace twin {

namespace detail {

struct RamCounts {
  std::vector<std::int64_t> shared, unique;
  RamCounts& operator+=(const RamCounts& o) {
    if (shared.empty()) shared.assign(o.shared.size(), 0), unique.assign(o.unique.size(), 0);
    for (std::size_t i = 0; i < o.shared.size(); ++i) shared[i] += o.shared[i], unique[i] += o.unique[i];
    return *this;
  }
};

// cnt[j] = the number of experts whose |τ_j| > eps over the chunk of ex
// (as an integer count or its float value); where `moved` is given,
// moved[i] += how many entries of the chunk expert i moves.
template <class Count>
void count_contributors(const ExpertChunks& ex, std::size_t T, const float* base, float eps, Count* cnt,
                        std::int64_t* moved = nullptr) {
  const std::int64_t n = ex.n;
  for (std::int64_t j = 0; j < n; ++j) cnt[j] = Count(0);
  for (std::size_t i = 0; i < T; ++i)
    ex.with(i, [&, eps](auto x) {
      if (!moved) {
        for (std::int64_t j = 0; j < n; ++j) cnt[j] += std::abs(x(j) - base[j]) > eps ? Count(1) : Count(0);
        return;
      }
      std::int32_t k = 0;  // at most a chunk's count
      for (std::int64_t j = 0; j < n; ++j) {
        const bool nz = std::abs(x(j) - base[j]) > eps;
        cnt[j] += nz ? Count(1) : Count(0);
        k += nz ? 1 : 0;
      }
      moved[i] += k;
    });
}

// Which expert alone moves each entry of a RamPlusTl merge (ram_none where
// none or several do), reused across tensors on the calling thread.
constexpr std::uint16_t ram_none = 0xFFFF;
inline std::vector<std::uint16_t>& ram_alone_scratch() {
  thread_local std::vector<std::uint16_t> v;
  return v;
}

// out[j] = Σ_i (c_j = 1 ? Z_ij : Z_ij / max(c_j, 1)) over the experts in
// order: RAM's terms with every λ 1 (Z as mergekit divides it), before the
// base is added; expert-outer loops, which vectorize.
inline void ram_terms(const ExpertChunks& ex, std::size_t T, const float* base, float eps, const float* cnt,
                      float* out) {
  const std::int64_t n = ex.n;
  for (std::int64_t j = 0; j < n; ++j) out[j] = 0.0f;
  for (std::size_t i = 0; i < T; ++i)
    ex.with(i, [&, eps](auto x) {
      for (std::int64_t j = 0; j < n; ++j) {
        const float t = x(j) - base[j];
        const float z = std::abs(t) > eps ? t : 0.0f;
        out[j] += cnt[j] == 1.0f ? z : z / std::max(cnt[j], 1.0f);
      }
    });
}

template <bool Plus>
struct RamBase {
  double epsilon = 1e-5;  // an entry contributes where |τ| > epsilon
  double r = 0.1;         // RamPlusTl: gain on the unique entries
  double alpha = 0.2;     // RamPlusTl: cap of the shared/unique ratio

  std::string_view name() const noexcept { return Plus ? "ramplus_tl" : "ram"; }

  void merge_tensor(const TensorMergeArgs& a) const {
    check_merge_args(a);
    if (!(epsilon >= 0.0) || !std::isfinite(r) || !std::isfinite(alpha))
      throw argument_error(std::string(name()) + ": epsilon must be ≥ 0 and r, alpha finite");
    if (merge_aliased_through_scratch(a, [&](const TensorMergeArgs& s) { merge_tensor(s); })) return;
    const std::size_t T = a.experts.size();
    const auto eps = static_cast<float>(epsilon);
    if constexpr (Plus) {
      merge_plus(a, eps);
    } else {
      // Per chunk: the counts, then each expert's term in order.
      merge_chunks_by_expert(a, merge_block, [&](std::int64_t) {
        return [&, cnt = std::vector<float>(by_expert_chunk_max)](std::int64_t, std::int64_t n, const float* base,
                                                                  const ExpertChunks& ex, float* out) mutable {
          count_contributors(ex, T, base, eps, cnt.data());
          ram_terms(ex, T, base, eps, cnt.data(), out);
          for (std::int64_t j = 0; j < n; ++j) out[j] += base[j];
        };
      });
    }
  }

  // RamPlusTl's λ_i need the whole tensor's counts, but they scale only the
  // entries one expert moves alone. One pass reads the inputs once: the
  // counts (expert i's shared entries are the ones it moves less the ones it
  // moves alone, so only chunks with an entry of count 1 look at which), every
  // other entry's final value (RAM's), and where expert i alone moves an
  // entry, its z and i; a second pass sets those entries to
  // base + λ_i·z, only in the chunks that have any (then, where the output
  // is not contiguous f32, stores every value). The same operations per
  // entry as forming Σ_i λ-scaled terms in expert order: the one nonzero
  // term plus zeros.
  void merge_plus(const TensorMergeArgs& a, float eps) const {
    const std::size_t T = a.experts.size();
    if (T >= ram_none) throw argument_error("ramplus_tl: at most 65534 experts");
    constexpr std::int64_t C = TWIN_CHUNK_ELEMENTS;
    const std::int64_t n = a.base.numel();
    const bool direct = contiguous_f32(a.out);
    std::vector<float>& spare = tau_scratch();
    if (!direct && spare.size() < static_cast<std::size_t>(n)) spare.resize(static_cast<std::size_t>(n));
    float* y = direct ? static_cast<float*>(a.out.data()) : spare.data();  // f32 values of the output
    std::vector<std::uint16_t>& alone = ram_alone_scratch();
    if (alone.size() < static_cast<std::size_t>(n)) alone.resize(static_cast<std::size_t>(n));
    std::vector<std::uint8_t> has_alone(static_cast<std::size_t>((n + C - 1) / C), 0);  // per chunk
    RamCounts c = backend::cpu::parallel_kernel_sum<RamCounts>(n, merge_block, [&](std::int64_t lo, std::int64_t hi) {
      // k.shared counts what each expert moves until the block's end
      // takes away what it moves alone.
      RamCounts k{std::vector<std::int64_t>(T, 0), std::vector<std::int64_t>(T, 0)};
      float* buf = scratch_floats<3>(static_cast<std::size_t>(2 * C));  // base, one expert
      std::vector<float> cnt(static_cast<std::size_t>(C));
      std::vector<std::int32_t> who(static_cast<std::size_t>(C));  // 32-bit, as the float masks: it vectorizes
      for (std::int64_t p = lo; p < hi; p += C) {
        const std::int64_t m = std::min(C, hi - p);
        prefetch_next_chunk(a, p, hi);
        const float* base = chunk_f32(a.base, p, m, buf);
        const ExpertChunks ex{&a, p, m, buf + C};  // each expert read in place, twice
        count_contributors(ex, T, base, eps, cnt.data(), k.shared.data());
        float* TWIN_RESTRICT o = y + p;
        std::int32_t* TWIN_RESTRICT wh = who.data();
        ram_terms(ex, T, base, eps, cnt.data(), o);
        const float* TWIN_RESTRICT cn = cnt.data();
        std::int32_t ones = 0;
        for (std::int64_t j = 0; j < m; ++j) ones += cn[j] == 1.0f ? 1 : 0;
        std::int64_t alone_here = 0;
        if (ones > 0) {
          for (std::int64_t j = 0; j < m; ++j) wh[j] = ram_none;
          for (std::size_t i = 0; i < T; ++i)
            ex.with(i, [&, eps, id = static_cast<std::int32_t>(i)](auto x) {
              // How many entries the expert moves alone, and which: loops
              // apart (each vectorizes; together GCC leaves them scalar),
              // the count with & (GCC made && a branch).
              std::int32_t un = 0;  // at most a chunk's count
              for (std::int64_t j = 0; j < m; ++j)
                un += static_cast<std::int32_t>((cn[j] == 1.0f) & (std::abs(x(j) - base[j]) > eps));
              if (un > 0)
                for (std::int64_t j = 0; j < m; ++j)
                  wh[j] = cn[j] == 1.0f && std::abs(x(j) - base[j]) > eps ? id : wh[j];
              k.unique[i] += un;
              alone_here += un;
            });
        }
        for (std::int64_t j = 0; j < m; ++j) o[j] = cn[j] == 1.0f ? o[j] : o[j] + base[j];
        if (alone_here > 0) {
          has_alone[static_cast<std::size_t>(p / C)] = 1;
          for (std::int64_t j = 0; j < m; ++j)
            alone[static_cast<std::size_t>(p + j)] = static_cast<std::uint16_t>(wh[j]);
        }
      }
      for (std::size_t i = 0; i < T; ++i) k.shared[i] -= k.unique[i];
      return k;
    });
    if (c.shared.empty()) c.shared.assign(T, 0), c.unique.assign(T, 0);
    std::vector<float> lambda(T);
    for (std::size_t i = 0; i < T; ++i) {
      const float rho = static_cast<float>(c.shared[i]) / std::max(static_cast<float>(c.unique[i]), eps);
      lambda[i] = 1.0f + static_cast<float>(r) * std::clamp(rho, 0.0f, static_cast<float>(alpha));
    }
    backend::cpu::parallel_kernel_blocks(n, merge_block, [&](std::int64_t lo, std::int64_t hi) {
      float* buf = scratch_floats<3>(static_cast<std::size_t>(C));
      for (std::int64_t p = lo; p < hi; p += C) {
        const std::int64_t m = std::min(C, hi - p);
        float* TWIN_RESTRICT o = y + p;
        if (has_alone[static_cast<std::size_t>(p / C)]) {
          const float* base = chunk_f32(a.base, p, m, buf);
          const std::uint16_t* wh = alone.data() + p;
          // λ·z rounded, then the base added: two loops, so that the
          // product and the sum are not contracted into one rounding.
          for (std::int64_t j = 0; j < m; ++j)
            if (wh[j] != ram_none) o[j] = o[j] * lambda[wh[j]];
          for (std::int64_t j = 0; j < m; ++j)
            if (wh[j] != ram_none) o[j] = o[j] + base[j];
        }
        if (!direct) write_f32(o, p, m, a.out);
      }
    });
  }
};
}  // namespace detail

struct Ram : detail::RamBase<false> {};
struct RamPlusTl : detail::RamBase<true> {};

}  // namespace twin
