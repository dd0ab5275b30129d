// DynamicFuser: the online stage of Twin-Merging (docs/design.md §1 step 6, §4).
// For router logits it writes θ* + Σ_t w_t · v̂_t into the host's own tensors,
// out of place. Low-rank modules of a matrix are concatenated once, at
// construction (quantized factors dequantized there), into A_cat [m×K] and
// B_cat [n×K] (K = Σ r_t), so a fusion is ONE GEMM per matrix with θ* as the
// addend; sparse parts are added by scatter, dense ones by axpy, sign
// modules by a bit-unpacking axpy. Row-range and column-range shards of a matrix
// (tensor-parallel layers) are fused the same way.
#pragma once

#include <algorithm>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <ranges>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "twin/adapter.hpp"
#include "twin/backend/cpu/bf16_pairs.hpp"
#include "twin/backend/cpu/gemm.hpp"
#include "twin/model/twin_model.hpp"
#include "twin/named_item.hpp"
#include "twin/parallel.hpp"
#include "twin/route/routing.hpp"

namespace twin {

// Precision of the low-rank product (docs/design.md §4). bf16: A_cat is
// rounded to bf16 once at construction and the mixture-scaled B_cat once per
// fusion, products summed in f32 by the CPU's bf16 dot products
// (backend/cpu/gemm.hpp gemm_bf16; widened to f32 where it has none).
// automatic: bf16 for tensors whose θ* is bf16 when this CPU has bf16 dot
// products, f32 otherwise.
enum class FactorPrecision { automatic, f32, bf16 };

struct FuseOptions {
  RoutingOptions routing;
  // Rows of a matrix per parallel work item (0: chosen from the shape).
  std::int64_t row_block = 0;
  FactorPrecision factors = FactorPrecision::automatic;
};

// What the fuser precomputes for one tensor of the model.
struct FusePlan {
  const TwinModel::Entry* entry = nullptr;
  const Tensor* shared = nullptr;     // θ* (null for excluded tensors)
  MatrixShape ms;                     // of the entry's shape (task 0's copy for an excluded tensor)
  std::int64_t K = 0;                 // Σ ranks of the low-rank modules
  std::vector<std::int64_t> offset;   // T+1 column offsets into A_cat / B_cat
  std::vector<float> a_cat, b_cat;    // [rows×K], [cols×K] row-major, f32
  std::vector<std::uint16_t> a_bf16;  // A_cat in bf16 when the product runs in bf16, else empty
  bool has_other = false;             // some task has a sparse, dense or sign part

  bool bf16_product() const noexcept { return !a_bf16.empty(); }
  std::int64_t rank_of(std::size_t t) const noexcept { return offset[t + 1] - offset[t]; }
};

class DynamicFuser {
 public:
  // The model must outlive the fuser; the fuser never writes to it, so any
  // number of fuse calls may run at once into different outputs.
  explicit DynamicFuser(const TwinModel& model, FuseOptions options = {}) : model_(&model), opts_(options) {
    opts_.routing.validate();
    const std::size_t T = model.num_tasks();
    plans_.resize(model.entries().size());
    const bool bf16_dots = backend::cpu::bf16_dot_products();
    parallel_blocks(static_cast<std::int64_t>(plans_.size()), 1, [&](std::int64_t i0, std::int64_t i1) {
      for (std::int64_t i = i0; i < i1; ++i) {
        const TwinModel::Entry& e = model.entries()[static_cast<std::size_t>(i)];
        const bool bf16 = opts_.factors == FactorPrecision::bf16 ||
                          (opts_.factors == FactorPrecision::automatic && bf16_dots && !e.excluded &&
                           model.shared().at(e.name).dtype() == dtype::bf16);
        prepare(plans_[static_cast<std::size_t>(i)], e, T, bf16);
      }
    });
    for (std::size_t i = 0; i < plans_.size(); ++i) {
      FusePlan& p = plans_[i];
      if (!p.entry->excluded) p.shared = &model.shared().at(p.entry->name);
      index_.emplace(p.entry->name, i);
    }
  }

  const TwinModel& model() const noexcept { return *model_; }
  std::size_t num_tasks() const noexcept { return model_->num_tasks(); }
  const FuseOptions& options() const noexcept { return opts_; }

  // Mixture weights for one input's logits (softmax with the fuser's
  // temperature and routing); checks the length. Logits are any contiguous
  // range of floats (std::vector, std::array, a span, a braced list) or a
  // host tensor of T values in f32, f16, bf16 or f64 (the router's output).
  std::vector<float> weights(std::span<const float> logits) const {
    if (logits.size() != num_tasks())
      throw shape_error("logits: expected " + std::to_string(num_tasks()) + " values (one per task), found " +
                        std::to_string(logits.size()));
    return routing_weights(logits, opts_.routing);
  }
  std::vector<float> weights(std::initializer_list<float> logits) const {
    return weights(std::span<const float>(logits.begin(), logits.size()));
  }
  template <tensor_like L>
  std::vector<float> weights(const L& logits) const {
    const ConstTensorView v = adapt(logits);
    require_float(v.dtype(), "logits");
    if (v.device() != device{})
      throw argument_error("logits are on a CUDA device; this fuser reads them from host memory");
    if (v.rank() > 2 || (v.rank() == 2 && v.dim(0) != 1))
      throw shape_error("logits: expected shape [" + std::to_string(num_tasks()) + "] or [1, " +
                        std::to_string(num_tasks()) + "], found " + v.shape_str());
    std::vector<float> values(static_cast<std::size_t>(v.numel()));
    if (!values.empty()) read_f32(v, 0, v.numel(), values.data());
    return weights(std::span<const float>(values));
  }

  // Writes every tensor the host names: `tensors` is any range whose
  // elements give a name and a tensor (named_item.hpp: maps and vectors of
  // pairs, engine containers with key()/value() items such as libtorch's
  // named_parameters()), whose tensors are tensor_like and writable.
  template <named_tensor_range Range, class Logits>
  void fuse(Range&& tensors, const Logits& logits) const {
    fuse_with_weights(std::forward<Range>(tensors), weights(logits));
  }
  template <named_tensor_range Range>
  void fuse(Range&& tensors, std::initializer_list<float> logits) const {
    fuse_with_weights(std::forward<Range>(tensors), weights(logits));
  }

  // Same with mixture weights given directly (group-wise fusion, or weights
  // the host computed itself); a weight of 0 skips the task. Where the range
  // can be walked twice (a container, libtorch's named_parameters()) every
  // output is checked before any is written, so a bad one — an unknown name,
  // or an excluded tensor whose top task's copy has another shape (a head of
  // another label count) — leaves the host's weights as they were; a
  // single-pass range is checked and written item by item.
  template <named_tensor_range Range>
  void fuse_with_weights(Range&& tensors, std::span<const float> w) const {
    check_weights(w, "fuse");
    if constexpr (std::ranges::forward_range<Range>) {
      const std::size_t top = top_task(w);
      for (auto&& item : tensors) {
        const std::string_view name(item_name(item));
        check_output(name, writable_view(item_tensor(item)), plan(name).entry->task_shape(top));
      }
    }
    for (auto&& item : tensors) fuse_tensor(std::string_view(item_name(item)), item_tensor(item), w);
  }

  // One tensor, for hosts that fuse layer by layer.
  template <class Out>
  void fuse_tensor(std::string_view name, Out&& out, std::span<const float> w) const {
    fuse_view(name, writable_view(std::forward<Out>(out)), w);
  }

  void fuse_view(std::string_view name, const TensorView& out, std::span<const float> w) const {
    const FusePlan& p = plan(name);
    check_weights(w, name);
    const auto full = p.entry->task_shape(top_task(w));
    check_output(name, out, full);
    const MatrixShape ms = matrix_shape(full);
    fuse_region(p, w, 0, ms.rows, 0, ms.cols, out);
  }

  // The shape `name` is fused to for weights w: the model's, or for an
  // excluded tensor whose tasks' copies differ (a head per label count) the
  // shape of the copy fuse writes, the top task's.
  std::span<const std::int64_t> output_shape(std::string_view name, std::span<const float> w) const {
    const FusePlan& p = plan(name);
    check_weights(w, name);
    return p.entry->task_shape(top_task(w));
  }
  // The task whose copy of an excluded tensor a fusion with weights w
  // writes: the largest weight, the first on ties.
  static std::size_t top_task(std::span<const float> w) {
    return static_cast<std::size_t>(std::max_element(w.begin(), w.end()) - w.begin());
  }

  // A tensor-parallel shard: the slice [start, start + out.dim(axis)) of
  // dimension `axis` of the fused tensor (axis 0: a column-parallel layer's
  // rows, needing the matching rows of A; axis 1: a row-parallel layer's
  // columns, needing the matching rows of B). Equal to that slice of the full
  // fusion, computed without the rest.
  template <class Out>
  void fuse_shard(std::string_view name, Out&& out, std::span<const float> w, int axis, std::int64_t start) const {
    const TensorView ov = writable_view(std::forward<Out>(out));
    const FusePlan& p = plan(name);
    check_weights(w, name);
    const auto full = p.entry->task_shape(top_task(w));
    const MatrixShape ms = matrix_shape(full);
    const int rank = static_cast<int>(full.size());
    if (axis < 0 || axis >= std::max(rank, 1) || axis > 1)
      throw argument_error("tensor '" + std::string(name) + "' of shape " + shape_string(full) +
                           ": cannot shard along axis " + std::to_string(axis));
    if (ov.rank() != rank)
      throw shape_error("shard of tensor '" + std::string(name) + "': expected rank " + std::to_string(rank) +
                        " (shape " + shape_string(full) + "), found shape " + ov.shape_str());
    const std::int64_t len = rank == 0 ? 1 : ov.dim(axis);
    if (rank == 0 || start < 0 || start + len > full[static_cast<std::size_t>(axis)])
      throw shape_error("shard of tensor '" + std::string(name) + "': slice [" + std::to_string(start) + ", " +
                        std::to_string(start + len) + ") of axis " + std::to_string(axis) + " is outside shape " +
                        shape_string(full));
    Extents expect(full);
    expect[axis] = len;
    check_output(name, ov, expect.span());
    if (rank == 1) return fuse_region(p, w, 0, 1, start, start + len, ov);
    if (axis == 0) return fuse_region(p, w, start, start + len, 0, ms.cols, ov);
    // Columns of the matrix view: a slice of dim 1 is contiguous there.
    const std::int64_t inner = full[1] == 0 ? 0 : ms.cols / full[1];
    fuse_region(p, w, 0, ms.rows, start * inner, (start + len) * inner, ov);
  }

  const FusePlan& plan(std::string_view name) const {
    auto it = index_.find(name);
    if (it == index_.end()) throw name_error("the twin model has no tensor named '" + std::string(name) + "'");
    return plans_[it->second];
  }
  const std::vector<FusePlan>& plans() const noexcept { return plans_; }

  void check_weights(std::span<const float> w, std::string_view who) const {
    if (w.size() != num_tasks())
      throw shape_error(std::string(who) + ": " + std::to_string(w.size()) + " task weights given, the model has " +
                        std::to_string(num_tasks()) + " tasks");
    for (std::size_t t = 0; t < w.size(); ++t)
      if (!std::isfinite(w[t]))
        throw argument_error(std::string(who) + ": weight of task " + std::to_string(t) + " is not finite");
  }

 private:
  template <class Out>
  static TensorView writable_view(Out&& out) {
    static_assert(tensor_like<Out>, "the output must be tensor_like: specialize twin::tensor_adapter for its type");
    static_assert(writable_tensor<Out>,
                  "the output must be writable: a non-const tensor whose adapter's data() returns void*, or a "
                  "handle type whose adapter's data(const T&) returns void*");
    return adapt(out);  // out lives through the call
  }

  static void check_output(std::string_view name, const TensorView& out, std::span<const std::int64_t> expect) {
    if (!dtype_is_float(out.dtype()))
      throw dtype_error("output tensor '" + std::string(name) +
                        "': expected a float dtype (F32, F16, BF16, F64), found " +
                        std::string(dtype_name(out.dtype())));
    if (out.device() != device{})
      throw argument_error("output tensor '" + std::string(name) +
                           "' is on a CUDA device; this fuser writes host memory");
    check_same_shape(name, expect, out.shape(), "output tensor");
    check_output_layout(out, name);
  }

  static void prepare(FusePlan& p, const TwinModel::Entry& e, std::size_t T, bool bf16) {
    p.entry = &e;
    p.ms = matrix_shape(e.shape.span());
    p.offset.assign(T + 1, 0);
    if (e.excluded) return;
    for (std::size_t t = 0; t < T; ++t) {
      const ExclusiveModule& m = e.modules[t];
      p.offset[t + 1] = p.offset[t] + m.rank();
      p.has_other = p.has_other || m.has_rest();
    }
    p.K = p.offset[T];
    if (p.K == 0) return;
    const std::int64_t rows = p.ms.rows, cols = p.ms.cols, K = p.K;
    p.a_cat.assign(static_cast<std::size_t>(rows * K), 0.0f);
    p.b_cat.assign(static_cast<std::size_t>(cols * K), 0.0f);
    std::vector<float> a, b;
    for (std::size_t t = 0; t < T; ++t) {
      const ExclusiveModule& m = e.modules[t];
      const std::int64_t r = m.rank();
      if (r == 0) continue;
      // Quantized factors are dequantized here, once: a fusion costs the same.
      m.factors_f32(a, b);
      auto place = [&](const std::vector<float>& src, std::int64_t n, std::vector<float>& dst) {
        for (std::int64_t i = 0; i < n; ++i)
          std::memcpy(dst.data() + i * K + p.offset[t], src.data() + i * r,
                      static_cast<std::size_t>(r) * sizeof(float));
      };
      place(a, rows, p.a_cat);
      place(b, cols, p.b_cat);
    }
    if (bf16) {
      p.a_bf16.resize(p.a_cat.size());
      convert_from_f32(p.a_cat.data(), static_cast<std::int64_t>(p.a_cat.size()), p.a_bf16.data(), dtype::bf16);
    }
  }

  std::int64_t row_block_for(std::int64_t rows, std::int64_t cols, bool buffered) const {
    if (opts_.row_block > 0) return opts_.row_block;
    const std::int64_t nt = std::max(1, num_threads());
    // One block per thread keeps Eigen from repacking B_cat more than once
    // per thread; buffered outputs cap the f32 staging block at ~4 MiB (each
    // block repacks B_cat, which costs more than the staging block falling
    // out of L2 between the GEMM and the conversion).
    std::int64_t rb = (rows + nt - 1) / nt;
    if (buffered)
      rb = std::min(rb, std::max<std::int64_t>(8, (std::int64_t{1} << 20) / std::max<std::int64_t>(cols, 1)));
    return std::max<std::int64_t>(rb, 1);
  }

  // Scratch that lives with the thread, so repeated fusions do not fault in
  // fresh pages for every tensor.
  static std::vector<float>& scratch(int slot, std::size_t n) {
    thread_local std::vector<float> bufs[3];
    std::vector<float>& b = bufs[slot];
    if (b.size() < n) b.resize(n);
    return b;
  }
  static std::vector<std::uint16_t>& scratch_bf16(int slot, std::size_t n) {
    thread_local std::vector<std::uint16_t> bufs[3];
    std::vector<std::uint16_t>& b = bufs[slot];
    if (b.size() < n) b.resize(n);
    return b;
  }

  // The distance between rows of a region `cw` wide written straight into
  // `out`: its row stride where columns are adjacent, or 0 (staged instead).
  static std::int64_t row_stride(const TensorView& out, std::int64_t cw) {
    if (out.rank() == 2 && out.stride(1) == 1) return out.stride(0);
    return out.is_contiguous() ? cw : 0;
  }

  // Writes rows [r0, r1) × cols [c0, c1) of the fused matrix view into `out`,
  // whose row-major order is that region's.
  void fuse_region(const FusePlan& p, std::span<const float> w, std::int64_t r0, std::int64_t r1, std::int64_t c0,
                   std::int64_t c1, const TensorView& out) const {
    const std::int64_t rows = r1 - r0, cw = c1 - c0, cols = p.ms.cols;
    if (rows <= 0 || cw <= 0) return;
    const std::size_t T = num_tasks();
    const TwinModel::Entry& e = *p.entry;

    if (e.excluded) {
      // The task the router trusts most supplies its own copy (of its own
      // shape, which the callers checked the region against).
      const ConstTensorView src = e.copies[top_task(w)].view();
      const std::int64_t src_cols = matrix_shape(src.shape()).cols;
      parallel_blocks(rows, row_block_for(rows, cw, true), [&](std::int64_t lo, std::int64_t hi) {
        std::vector<float>& buf = scratch(0, static_cast<std::size_t>(cw));
        for (std::int64_t i = lo; i < hi; ++i) {
          read_f32(src, (r0 + i) * src_cols + c0, cw, buf.data());
          write_f32(buf.data(), i * cw, cw, out);
        }
      });
      return;
    }

    // Active low-rank columns, scaled by w on the B side: Bs [cw×Ka].
    // Kept between calls (no allocation per fusion); the lambdas below run on
    // other threads and reach it through this reference, not their own copy.
    thread_local std::vector<std::size_t> act_storage;
    std::vector<std::size_t>& act = act_storage;
    act.clear();
    std::int64_t Ka = 0;
    for (std::size_t t = 0; t < T; ++t)
      if (w[t] != 0.0f && p.rank_of(t) > 0) act.push_back(t), Ka += p.rank_of(t);
    // In a bf16 product, Bs is rounded to bf16 after the scaling (one rounding).
    const bool bf16 = p.bf16_product();
    std::vector<float>& bs = scratch(1, static_cast<std::size_t>(cw * Ka));
    std::vector<std::uint16_t>& bs16 = scratch_bf16(0, bf16 ? static_cast<std::size_t>(cw * Ka) : 0);
    const float* a_ptr = nullptr;
    const std::uint16_t* a16_ptr = nullptr;
    std::int64_t lda = Ka;
    const Tensor& star = *p.shared;
    // bf16 θ* into a bf16 output with unit column stride, nothing but
    // low-rank modules: the product added to θ* and rounded once, no f32
    // staging; by the AVX-512 BF16 kernel with Bs in pairs order
    // (backend/cpu/bf16_pairs.hpp) where the CPU has it, else by oneDNN.
    // The kernel also adds bf16 products to an f32 θ* in an f32 output.
    const bool same_dtype = star.dtype() == out.dtype() && (out.dtype() == dtype::bf16 || out.dtype() == dtype::f32);
    const std::int64_t ldp = bf16 && Ka > 0 && !p.has_other && same_dtype ? row_stride(out, cw) : 0;
    const std::int64_t ld16 = out.dtype() == dtype::bf16 ? ldp : 0;
    const bool pairs = ldp > 0 && backend::cpu::bf16_dot_products() && backend::cpu::bf16_pairs_enabled();
    std::vector<std::uint16_t>& bp16 =
        scratch_bf16(2, pairs ? static_cast<std::size_t>(backend::cpu::bf16_pairs_size(cw, Ka)) : 0);
    if (Ka > 0) {
      // Bs of a 768-wide region in 3 blocks, so that both cores of a small
      // machine share it (~7% of a bf16 fusion's time, perf says).
      parallel_blocks(cw, 256, [&](std::int64_t lo, std::int64_t hi) {
        for (std::int64_t j = lo; j < hi; ++j) {
          const float* src = p.b_cat.data() + (c0 + j) * p.K;
          float* dst = bs.data() + j * Ka;
          for (std::size_t t : act) {
            const float wt = w[t];
            for (std::int64_t q = p.offset[t]; q < p.offset[t + 1]; ++q) *dst++ = wt * src[q];
          }
          if (bf16) convert_from_f32(bs.data() + j * Ka, Ka, bs16.data() + j * Ka, dtype::bf16);
        }
        if (pairs) backend::cpu::pack_bf16_pairs(bs16.data(), cw, Ka, Ka, lo, hi, bp16.data());
      });
      // A_cat's rows of the region, only the active tasks' columns.
      auto gather = [&](const auto& cat, auto& ag) {
        for (std::int64_t i = 0; i < rows; ++i) {
          const auto* src = cat.data() + (r0 + i) * p.K;
          auto* dst = ag.data() + i * Ka;
          for (std::size_t t : act)
            for (std::int64_t q = p.offset[t]; q < p.offset[t + 1]; ++q) *dst++ = src[q];
        }
        return ag.data();
      };
      if (Ka == p.K) {
        a_ptr = p.a_cat.data() + r0 * p.K;
        if (bf16) a16_ptr = p.a_bf16.data() + r0 * p.K;
        lda = p.K;
      } else if (bf16) {
        a16_ptr = gather(p.a_bf16, scratch_bf16(1, static_cast<std::size_t>(rows * Ka)));
      } else {
        a_ptr = gather(p.a_cat, scratch(2, static_cast<std::size_t>(rows * Ka)));
      }
    }

    // f32 outputs with unit column stride are written in place; anything
    // else is staged in f32 and converted once.
    const std::int64_t ldo = out.dtype() == dtype::f32 ? row_stride(out, cw) : 0;
    const bool direct = ldo > 0;
    const bool star_f32 = star.dtype() == dtype::f32;

    if (pairs) {
      // Blocks of 96 rows or fewer, at least two per thread so that the
      // dynamic schedule evens out the threads.
      const std::int64_t nt = std::max(1, num_threads());
      const std::int64_t rb = opts_.row_block > 0 ? opts_.row_block
                                                  : std::clamp<std::int64_t>((rows + 2 * nt - 1) / (2 * nt), 1, 16) *
                                                        backend::cpu::bf16_pairs_rows;
      auto run = [&](auto* dst) {
        using T = std::remove_pointer_t<decltype(dst)>;
        const T* src = static_cast<const T*>(star.data()) + r0 * cols + c0;
        parallel_blocks(rows, rb, [&](std::int64_t lo, std::int64_t hi) {
          backend::cpu::add_product_bf16_pairs(hi - lo, cw, Ka, a16_ptr + lo * lda, lda, bp16.data(), src + lo * cols,
                                               cols, dst + lo * ldp, ldp);
        });
      };
      if (out.dtype() == dtype::bf16) run(static_cast<std::uint16_t*>(out.data()));
      else run(static_cast<float*>(out.data()));
      return;
    }
    if (ld16 > 0) {
      // θ* rows copied into the output, oneDNN's product added there.
      // Blocks of ~256 KiB of output: the rows just copied are still in L2
      // when the product's sum reads them back.
      const std::int64_t rb =
          opts_.row_block > 0
              ? opts_.row_block
              : std::min(row_block_for(rows, cw, false),
                         std::max<std::int64_t>(32, (std::int64_t{1} << 17) / std::max<std::int64_t>(cw, 1)));
      parallel_blocks(rows, rb, [&](std::int64_t lo, std::int64_t hi) {
        auto* dst = static_cast<std::uint16_t*>(out.data()) + lo * ld16;
        const auto* src = static_cast<const std::uint16_t*>(star.data());
        for (std::int64_t i = 0; i < hi - lo; ++i)
          std::memcpy(dst + i * ld16, src + (r0 + lo + i) * cols + c0, static_cast<std::size_t>(cw) * 2);
        backend::cpu::gemm_bf16(false, true, hi - lo, cw, Ka, a16_ptr + lo * lda, lda, bs16.data(), Ka, true, dst,
                                ld16);
      });
      return;
    }

    parallel_blocks(rows, row_block_for(rows, cw, !direct), [&](std::int64_t lo, std::int64_t hi) {
      const std::int64_t nr = hi - lo;
      float* dst;
      std::int64_t ld;
      if (direct) {
        dst = static_cast<float*>(out.data()) + lo * ldo;
        ld = ldo;
      } else {
        dst = scratch(0, static_cast<std::size_t>(nr * cw)).data();
        ld = cw;
      }
      for (std::int64_t i = 0; i < nr; ++i) {
        const std::int64_t src = (r0 + lo + i) * cols + c0;
        if (star_f32)
          std::memcpy(dst + i * ld, static_cast<const float*>(star.data()) + src,
                      static_cast<std::size_t>(cw) * sizeof(float));
        else read_f32(star.view(), src, cw, dst + i * ld);
      }
      if (Ka > 0 && bf16)
        backend::cpu::gemm_bf16(false, true, nr, cw, Ka, a16_ptr + lo * lda, lda, bs16.data(), Ka, true, dst, ld);
      else if (Ka > 0)
        backend::cpu::gemm(backend::cpu::GemmMode::fastest, false, true, nr, cw, Ka, 1.0f, a_ptr + lo * lda, lda,
                           bs.data(), Ka, true, dst, ld);
      if (p.has_other) add_other(p, w, r0 + lo, r0 + hi, c0, c1, dst, ld);
      if (!direct) write_f32(dst, lo * cw, nr * cw, out);
    });
  }

  // Sparse, dense and sign parts: dst (rows [ra, rb) × cols [c0, c1),
  // leading dimension ld) += Σ w_t v̂_t.
  void add_other(const FusePlan& p, std::span<const float> w, std::int64_t ra, std::int64_t rb, std::int64_t c0,
                 std::int64_t c1, float* dst, std::int64_t ld) const {
    for (std::size_t t = 0; t < w.size(); ++t)
      if (p.entry->modules[t].has_rest()) p.entry->modules[t].add_rest_to(dst, ld, w[t], ra, rb, c0, c1);
  }

  const TwinModel* model_;
  FuseOptions opts_;
  std::vector<FusePlan> plans_;
  // Looked up by string_view without building a string (no allocation per fusion).
  struct NameHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, std::size_t, NameHash, std::equal_to<>> index_;
};

}  // namespace twin
