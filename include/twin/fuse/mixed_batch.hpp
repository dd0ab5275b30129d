// Mixed-batch apply (docs/design.md §2): a linear layer run on a batch whose rows
// each have their own routing weights, without materializing any fused
// weight. With W = θ* + Σ_t w_t A_t B_tᵀ per row,
//   Y = X W*ᵀ + ((X B_cat) ⊙ Ŵ) A_catᵀ
// where Ŵ [tokens×K] repeats each row's w_t over task t's r_t columns: two
// skinny GEMMs on top of the plain layer (quantized factors were dequantized
// into A_cat / B_cat by the fuser). Dense and sign modules cost one product
// per task, sparse parts are added entry by entry; excluded weights use each row's top task's copy.
#pragma once

#include <algorithm>
#include <span>
#include <string>
#include <type_traits>

#include "twin/fuse/dynamic_fuser.hpp"

namespace twin {

struct MixedApplyOptions {
  // Name of the layer's bias (a vector tensor of the model), fused per row
  // and added; empty: no bias.
  std::string bias;
  // Y += result instead of Y = result.
  bool accumulate = false;
};

namespace detail {
// The task with the largest weight in row i of [rows×T] weights (the first
// on ties), as the fuser picks excluded copies.
inline std::size_t row_top_task(std::span<const float> row_weights, std::size_t T, std::int64_t i) {
  return DynamicFuser::top_task(row_weights.subspan(static_cast<std::size_t>(i) * T, T));
}
// Refuses row weights that are not [rows×T].
inline void check_row_weights(std::span<const float> row_weights, std::int64_t rows, std::size_t T,
                              const std::string& name) {
  if (row_weights.size() != static_cast<std::size_t>(rows) * T)
    throw shape_error("mixed-batch apply for tensor '" + name + "': expected " + std::to_string(rows) + "×" +
                      std::to_string(T) + " row weights, found " + std::to_string(row_weights.size()));
}
// Contiguous f32 values of a [rows×cols] view: the view's memory when it
// already is, else a converted copy in `buf`.
inline const float* f32_matrix(const ConstTensorView& v, std::vector<float>& buf) {
  if (v.dtype() == dtype::f32 && v.is_contiguous()) return static_cast<const float*>(v.data());
  buf.resize(static_cast<std::size_t>(v.numel()));
  read_f32(v, 0, v.numel(), buf.data());
  return buf.data();
}
}  // namespace detail

// x: [tokens×n] activations; row_weights: [tokens×T] row-major mixture
// weights (rows of routing_weights); y: [tokens×m] output, for the model's
// weight `name` of shape [m×n].
inline void apply_mixed_view(const DynamicFuser& fuser, std::string_view name, const ConstTensorView& x,
                             std::span<const float> row_weights, const TensorView& y,
                             const MixedApplyOptions& opts = {}) {
  const FusePlan& p = fuser.plan(name);
  const std::string nm(name);
  std::span<const std::int64_t> wshape = p.entry->shape.span();
  if (!p.entry->uniform_shape()) {
    // An excluded tensor whose tasks' copies differ in shape (a head per
    // label count): the rows share one output, so their top tasks' copies
    // must have one shape, which is Y's.
    const std::size_t T = fuser.num_tasks();
    const std::int64_t rows = x.rank() == 2 ? x.dim(0) : 0;
    if (x.rank() == 2) detail::check_row_weights(row_weights, rows, T, nm);
    if (rows > 0) {
      const std::size_t t0 = detail::row_top_task(row_weights, T, 0);
      wshape = p.entry->task_shape(t0);
      for (std::int64_t i = 1; i < rows; ++i)
        if (const std::size_t t = detail::row_top_task(row_weights, T, i);
            !std::ranges::equal(p.entry->task_shape(t), wshape))
          throw shape_error("mixed-batch apply: row 0 is routed to task " + std::to_string(t0) +
                            ", whose copy of excluded tensor '" + nm + "' has shape " + shape_string(wshape) +
                            ", and row " + std::to_string(i) + " to task " + std::to_string(t) + ", whose copy has " +
                            shape_string(p.entry->task_shape(t)) + ": rows share one output; fuse them apart");
    } else if (y.rank() == 2) {
      // No rows: any task's shape that Y has.
      for (std::size_t t = 0; t < T; ++t)
        if (const auto s = p.entry->task_shape(t); s.size() == 2 && s[0] == y.dim(1)) wshape = s;
    }
  }
  if (wshape.size() != 2)
    throw shape_error("mixed-batch apply: tensor '" + nm + "' of shape " + shape_string(wshape) +
                      " is not the weight of a linear layer");
  const std::int64_t m = wshape[0], n = wshape[1];
  const std::size_t T = fuser.num_tasks();
  if (x.rank() != 2 || x.dim(1) != n)
    throw shape_error("mixed-batch apply: input for tensor '" + nm + "' of shape " + shape_string(wshape) +
                      ": expected shape [tokens, " + std::to_string(n) + "], found " + x.shape_str());
  const std::int64_t tokens = x.dim(0);
  const std::int64_t yshape[2] = {tokens, m};
  check_same_shape(nm, yshape, y.shape(), "mixed-batch output for tensor");
  require_float(x.dtype(), "mixed-batch input for tensor '" + nm + "'");
  require_float(y.dtype(), "mixed-batch output for tensor '" + nm + "'");
  require_host(x, "mixed-batch input for tensor '" + nm + "'");
  require_host(y, "mixed-batch output for tensor '" + nm + "'");
  // Y is written while X is read (the f32 path reads X's memory in place):
  // distinct elements, and no memory shared with X.
  check_output_layout(y, nm);
  if (may_alias(y, x))
    throw argument_error("mixed-batch apply for tensor '" + nm +
                         "': the output shares memory with the input; write into a separate tensor");
  detail::check_row_weights(row_weights, tokens, T, nm);
  // The bias's shape for every row (its top task's copy where an excluded
  // bias's copies differ), checked before Y is written.
  const FusePlan* bp = opts.bias.empty() ? nullptr : &fuser.plan(opts.bias);
  if (bp && tokens > 0) {
    const std::int64_t bshape[1] = {m};
    if (bp->entry->uniform_shape())
      check_same_shape(opts.bias, bshape, bp->entry->shape.span(), "bias of tensor '" + nm + "':");
    else
      for (std::int64_t i = 0; i < tokens; ++i)
        check_same_shape(opts.bias, bshape, bp->entry->task_shape(detail::row_top_task(row_weights, T, i)),
                         "bias of tensor '" + nm + "' (row " + std::to_string(i) + "'s top task's copy):");
  }
  if (tokens == 0 || m == 0) return;

  std::vector<float> xbuf;
  // X in f32, converted on first use (a bf16 X times a bf16 θ* with bf16
  // factor products never needs it). Not called inside parallel regions.
  const float* x32 = nullptr;
  auto X = [&] { return x32 ? x32 : (x32 = detail::f32_matrix(x, xbuf)); };
  const bool direct = y.dtype() == dtype::f32 && y.stride(1) == 1 && !opts.accumulate;
  std::vector<float> ybuf;
  float* Y;
  std::int64_t ldy;
  if (direct) {
    Y = static_cast<float*>(y.data());
    ldy = y.stride(0);
  } else {
    ybuf.resize(static_cast<std::size_t>(tokens * m));
    Y = ybuf.data();
    ldy = m;
  }
  auto wt = [&](std::int64_t i, std::size_t t) { return row_weights[static_cast<std::size_t>(i) * T + t]; };
  // Whether any row weighs task t: tasks no row weighs are left out.
  auto weighed = [&](std::size_t t) {
    for (std::int64_t i = 0; i < tokens; ++i)
      if (wt(i, t) != 0.0f) return true;
    return false;
  };

  if (p.entry->excluded) {
    // Rows grouped by their top task, one GEMM per task copy.
    std::vector<std::vector<std::int64_t>> by_task(T);
    for (std::int64_t i = 0; i < tokens; ++i) by_task[detail::row_top_task(row_weights, T, i)].push_back(i);
    std::vector<float> wb, xs, ys;
    for (std::size_t t = 0; t < T; ++t) {
      if (by_task[t].empty()) continue;
      const float* Wt = detail::f32_matrix(p.entry->copies[t].view(), wb);
      const auto rows = static_cast<std::int64_t>(by_task[t].size());
      xs.resize(static_cast<std::size_t>(rows * n));
      ys.resize(static_cast<std::size_t>(rows * m));
      for (std::int64_t k = 0; k < rows; ++k)
        std::memcpy(xs.data() + k * n, X() + by_task[t][static_cast<std::size_t>(k)] * n,
                    static_cast<std::size_t>(n) * sizeof(float));
      backend::cpu::gemm(backend::cpu::GemmMode::fastest, false, true, rows, m, n, 1.0f, xs.data(), n, Wt, n, false,
                         ys.data(), m);
      for (std::int64_t k = 0; k < rows; ++k)
        std::memcpy(Y + by_task[t][static_cast<std::size_t>(k)] * ldy, ys.data() + k * m,
                    static_cast<std::size_t>(m) * sizeof(float));
    }
  } else {
    // Plain layer: Y = X W*ᵀ.
    const Tensor& star = *p.shared;
    if (star.dtype() == dtype::f32) {
      backend::cpu::gemm(backend::cpu::GemmMode::fastest, false, true, tokens, m, n, 1.0f, X(), n,
                         static_cast<const float*>(star.data()), n, false, Y, ldy);
    } else if (star.dtype() == dtype::bf16 && x.dtype() == dtype::bf16 && x.is_contiguous()) {
      // bf16 activations and θ*: the CPU's bf16 dot products where it has
      // them (each product exact in f32, sums in f32: only the order of the
      // sums differs from the widened path), neither operand widened.
      backend::cpu::gemm_bf16(false, true, tokens, m, n, static_cast<const std::uint16_t*>(x.data()), n,
                              static_cast<const std::uint16_t*>(star.data()), n, false, Y, ldy);
    } else {
      // Converted block by block so a 16-bit θ* is never held in f32 whole.
      const float* xf = X();
      parallel_blocks(m, 256, [&](std::int64_t lo, std::int64_t hi) {
        thread_local std::vector<float> wblk;
        wblk.resize(static_cast<std::size_t>((hi - lo) * n));
        read_f32(star.view(), lo * n, (hi - lo) * n, wblk.data());
        backend::cpu::gemm(backend::cpu::GemmMode::fastest, false, true, tokens, hi - lo, n, 1.0f, xf, n, wblk.data(),
                           n, false, Y + lo, ldy);
      });
    }
    // Low-rank modules: Z = X B_act, Z ⊙ Ŵ, Y += Z A_actᵀ.
    std::vector<std::size_t> act;
    std::int64_t Ka = 0;
    for (std::size_t t = 0; t < T; ++t) {
      if (p.rank_of(t) > 0 && weighed(t)) act.push_back(t), Ka += p.rank_of(t);
    }
    if (Ka > 0) {
      // Active tasks' columns of a [rows×K] factor (the whole factor when every task is active).
      auto active = [&](const auto& cat, std::int64_t rows, auto& dst) {
        if (Ka == p.K) return cat.data();
        dst.resize(static_cast<std::size_t>(rows * Ka));
        for (std::int64_t i = 0; i < rows; ++i) {
          auto* d = dst.data() + i * Ka;
          for (std::size_t t : act)
            for (std::int64_t q = p.offset[t]; q < p.offset[t + 1]; ++q)
              *d++ = cat[static_cast<std::size_t>(i * p.K + q)];
        }
        return static_cast<const std::remove_cvref_t<decltype(*cat.data())>*>(dst.data());
      };
      std::vector<float> ag, bg;
      const float* B = active(p.b_cat, n, bg);
      std::vector<float> Z(static_cast<std::size_t>(tokens * Ka));
      // bf16 activations and a plan whose factor products run in bf16 (the
      // fuser's FactorPrecision): B rounded to bf16 here, Z = X B summed in
      // f32, Z ⊙ Ŵ rounded to bf16 once, Y += Z A_bf16ᵀ summed in f32.
      const bool bf16 = x.dtype() == dtype::bf16 && x.is_contiguous() && p.bf16_product();
      std::vector<std::uint16_t> b16, z16, ag16;
      if (bf16) {
        b16.resize(static_cast<std::size_t>(n * Ka));
        convert_from_f32(B, n * Ka, b16.data(), dtype::bf16);
        backend::cpu::gemm_bf16(false, false, tokens, Ka, n, static_cast<const std::uint16_t*>(x.data()), n, b16.data(),
                                Ka, false, Z.data(), Ka);
      } else {
        backend::cpu::gemm(backend::cpu::GemmMode::fastest, false, false, tokens, Ka, n, 1.0f, X(), n, B, Ka, false,
                           Z.data(), Ka);
      }
      for (std::int64_t i = 0; i < tokens; ++i) {
        float* z = Z.data() + i * Ka;
        for (std::size_t t : act) {
          const float w = wt(i, t);
          for (std::int64_t q = p.offset[t]; q < p.offset[t + 1]; ++q) *z++ *= w;
        }
      }
      if (bf16) {
        z16.resize(Z.size());
        convert_from_f32(Z.data(), tokens * Ka, z16.data(), dtype::bf16);
        backend::cpu::gemm_bf16(false, true, tokens, m, Ka, z16.data(), Ka, active(p.a_bf16, m, ag16), Ka, true, Y,
                                ldy);
      } else {
        backend::cpu::gemm(backend::cpu::GemmMode::fastest, false, true, tokens, m, Ka, 1.0f, Z.data(), Ka,
                           active(p.a_cat, m, ag), Ka, true, Y, ldy);
      }
    }
    // Sparse, dense and sign parts, task by task.
    for (std::size_t t = 0; t < T; ++t) {
      const ExclusiveModule& mod = p.entry->modules[t];
      if (!mod.has_rest() || !weighed(t)) continue;
      if (mod.kind() == ModuleKind::dense || mod.kind() == ModuleKind::sign) {
        std::vector<float> vb, Zt(static_cast<std::size_t>(tokens * m));
        const float* V;
        if (mod.kind() == ModuleKind::dense) {
          V = detail::f32_matrix(mod.values().view(), vb);
        } else {
          vb.assign(static_cast<std::size_t>(m * n), 0.0f);
          mod.add_rest_to(vb.data(), n, 1.0f, 0, m, 0, n);
          V = vb.data();
        }
        backend::cpu::gemm(backend::cpu::GemmMode::fastest, false, true, tokens, m, n, 1.0f, X(), n, V, n, false,
                           Zt.data(), m);
        for (std::int64_t i = 0; i < tokens; ++i) {
          const float w = wt(i, t);
          if (w == 0.0f) continue;
          for (std::int64_t j = 0; j < m; ++j) Y[i * ldy + j] += w * Zt[static_cast<std::size_t>(i * m + j)];
        }
        continue;
      }
      const Tensor& idx = mod.indices();
      std::vector<float> vals(static_cast<std::size_t>(idx.numel()));
      read_f32(mod.values().view(), 0, idx.numel(), vals.data());
      const float* xf = X();
      parallel_blocks(tokens, 16, [&](std::int64_t lo, std::int64_t hi) {
        for (std::int64_t k = 0; k < idx.numel(); ++k) {
          const auto li = static_cast<std::int64_t>(load_as_f64(idx.data(), idx.dtype(), k));
          const std::int64_t r = li / n, c = li % n;
          const float v = vals[static_cast<std::size_t>(k)];
          for (std::int64_t i = lo; i < hi; ++i) Y[i * ldy + r] += wt(i, t) * v * xf[i * n + c];
        }
      });
    }
  }

  if (bp) {
    const std::int64_t bshape[1] = {m};
    parallel_blocks(tokens, 16, [&](std::int64_t lo, std::int64_t hi) {
      std::vector<float> b(static_cast<std::size_t>(m));
      for (std::int64_t i = lo; i < hi; ++i) {
        fuser.fuse_view(opts.bias, TensorView(b.data(), dtype::f32, bshape),
                        row_weights.subspan(static_cast<std::size_t>(i) * T, T));
        for (std::int64_t j = 0; j < m; ++j) Y[i * ldy + j] += b[static_cast<std::size_t>(j)];
      }
    });
  }

  if (!direct) {
    if (opts.accumulate) {
      std::vector<float> prev(static_cast<std::size_t>(tokens * m));
      read_f32(y, 0, tokens * m, prev.data());
      for (std::size_t i = 0; i < prev.size(); ++i) ybuf[i] += prev[i];
    }
    write_f32(ybuf.data(), 0, tokens * m, y);
  }
}

// Host-tensor form: x and y are tensor_like (y writable).
template <tensor_like X, class Y>
void apply_mixed(const DynamicFuser& fuser, std::string_view name, X&& x, std::span<const float> row_weights, Y&& y,
                 const MixedApplyOptions& opts = {}) {
  const ConstTensorView xv = adapt(x);  // x lives through the call
  TensorView yv;
  if constexpr (std::is_same_v<std::remove_cvref_t<Y>, TensorView>) {
    yv = y;
  } else {
    static_assert(writable_tensor<Y>, "the output of apply_mixed must be writable");
    yv = adapt(y);
  }
  apply_mixed_view(fuser, name, xv, row_weights, yv, opts);
}

}  // namespace twin
