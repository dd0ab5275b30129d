// The SharedMerger concept and the driver that merges whole state dicts.
// A strategy merges one tensor at a time (merge_tensor); strategies that need
// a look at every tensor first (Ties with global top-k scope) also provide
// plan(), which the driver calls once before the per-tensor pass.
#pragma once

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "twin/backend/cpu/avx512_copies.hpp"
#include "twin/backend/cpu/lines_ahead.hpp"
#include "twin/convert.hpp"
#include "twin/error.hpp"
#include "twin/parallel.hpp"
#include "twin/state_dict.hpp"
#include "twin/tensor.hpp"

namespace twin {

// One tensor's inputs and output. Views may be strided and of any float
// dtype; values are read as f32 and written rounded to out's dtype.
struct TensorMergeArgs {
  std::string_view name;
  ConstTensorView base;
  std::span<const ConstTensorView> experts;
  TensorView out;
};

// What plan() sees: every tensor that will be merged, in order, with a way to
// view the base (model -1) or expert i (model i) copy of it.
struct MergeCatalog {
  std::vector<std::string> names;
  int num_experts = 0;
  std::function<ConstTensorView(std::size_t tensor, int model)> view;
};

template <class M>
concept SharedMerger = requires(const M& m, const TensorMergeArgs& a) {
  { m.name() } -> std::convertible_to<std::string_view>;
  m.merge_tensor(a);
};

// A strategy that needs a global pass: plan(catalog) returns a plan that the
// per-tensor call then takes as second argument.
template <class M>
concept PlannedMerger = requires(const M& m, const MergeCatalog& c, const TensorMergeArgs& a) {
  m.plan(c);
  m.merge_tensor(a, m.plan(c));
};

// Per-model weights w_i: empty means 1 for every model.
inline std::vector<float> resolve_weights(const std::vector<double>& w, std::size_t n, std::string_view who) {
  if (w.empty()) return std::vector<float>(n, 1.0f);
  if (w.size() != n)
    throw argument_error(std::string(who) + ": " + std::to_string(w.size()) + " weights given for " +
                         std::to_string(n) + " experts");
  return std::vector<float>(w.begin(), w.end());
}

inline void check_unit_interval(double v, std::string_view what) {
  if (!(v >= 0.0 && v <= 1.0))
    throw argument_error(std::string(what) + " must be in [0, 1], found " + std::to_string(v));
}

namespace detail {

inline void check_merge_args(const TensorMergeArgs& a) {
  if (a.experts.empty()) throw argument_error("tensor '" + std::string(a.name) + "': no experts to merge");
  require_float(a.base.dtype(), "base tensor '" + std::string(a.name) + "'");
  require_float(a.out.dtype(), "output tensor '" + std::string(a.name) + "'");
  require_host(a.base, "base tensor '" + std::string(a.name) + "'");
  require_host(a.out, "output tensor '" + std::string(a.name) + "'");
  check_same_shape(a.name, a.base.shape(), a.out.shape(), "output tensor");
  check_output_layout(a.out, a.name);
  for (std::size_t i = 0; i < a.experts.size(); ++i) {
    require_float(a.experts[i].dtype(), "expert " + std::to_string(i) + " tensor '" + std::string(a.name) + "'");
    require_host(a.experts[i], "expert " + std::to_string(i) + " tensor '" + std::string(a.name) + "'");
    check_same_shape(a.name, a.base.shape(), a.experts[i].shape(), "expert " + std::to_string(i) + " tensor");
  }
}

// Merging in place (the output viewing the base's or an expert's memory, as
// an engine short on memory does) must give the out-of-place result, but the
// kernels read inputs after writing outputs: an output that may share memory
// with an input is merged into scratch memory, then copied over. Returns
// whether it did so (the caller then has nothing left to do).
template <class F>
bool merge_aliased_through_scratch(const TensorMergeArgs& a, F&& merge) {
  bool aliased = may_alias(a.out, a.base);
  for (const ConstTensorView& e : a.experts) aliased = aliased || may_alias(a.out, e);
  if (!aliased) return false;
  Tensor scratch = Tensor::empty(a.out.dtype(), a.out.shape());
  TensorMergeArgs s = a;
  s.out = scratch.view();
  merge(s);
  copy_convert(scratch.view(), a.out);
  return true;
}

// Whether a view's values are f32 in one run: read and written in place,
// with nothing staged.
template <class View>
bool contiguous_f32(const View& v) noexcept {
  return v.dtype() == dtype::f32 && v.is_contiguous();
}

// Reads `n` values at `lo` as f32: straight from memory when the view is
// contiguous f32, else converted into buf.
inline const float* chunk_f32(const ConstTensorView& v, std::int64_t lo, std::int64_t n, float* buf) {
  if (contiguous_f32(v)) return static_cast<const float*>(v.data()) + lo;
  read_f32(v, lo, n, buf);
  return buf;
}

// Per-thread scratch of at least n floats, reused across blocks and calls
// (a fresh buffer per block costs a page-faulting allocation and a memset
// larger than the work on a small tensor). One buffer per Slot, so drivers
// that run inside one another never share one.
template <int Slot>
float* scratch_floats(std::size_t n) {
  thread_local std::vector<float> v;
  if (v.size() < n) v.resize(n);
  return v.data();
}

// Asks for the cache lines of elements [lo, lo + n) of a contiguous view
// (none of a strided one: it is left to the hardware).
inline void prefetch_chunk(const ConstTensorView& v, std::int64_t lo, std::int64_t n) noexcept {
  if (!v.is_contiguous()) return;
  const auto es = static_cast<std::int64_t>(v.element_size());
  const char* p = static_cast<const char*>(v.data()) + lo * es;
  for (std::int64_t off = 0; off < n * es; off += 64) __builtin_prefetch(p + off);
}

// Asks for the chunk after [lo, lo + C) of every input, up to b1: the
// hardware prefetchers follow few streams and stop at page boundaries, and
// a merge reads T + 1 streams a chunk at a time.
inline void prefetch_next_chunk(const TensorMergeArgs& a, std::int64_t lo, std::int64_t b1) noexcept {
  constexpr std::int64_t C = TWIN_CHUNK_ELEMENTS;
  if (lo + C >= b1) return;
  prefetch_chunk(a.base, lo + C, std::min(C, b1 - lo - C));
  for (const ConstTensorView& e : a.experts) prefetch_chunk(e, lo + C, std::min(C, b1 - lo - C));
}

// g(args..., w) where g takes a vector width last (a kernel written for
// either width, merge/lanes.hpp: Lanes<W>), else g(args...).
template <class G, class W, class... A>
void call_at_width(G& g, W w, A&&... args) {
  if constexpr (std::is_invocable_v<G&, A..., W>) g(std::forward<A>(args)..., w);
  else g(std::forward<A>(args)...);
}

// Calls f(lo, c, base, ex, spare) on consecutive chunks of at most C
// elements of [b0, b1), where base/ex[i] point at the base's and the
// experts' values over [lo, lo + c) as f32 and spare at C floats of this
// thread's scratch (slot 0: not for drivers nested in one another); f may
// take a vector width last (with_avx512_copy_width's).
template <class F>
void for_input_chunks(const TensorMergeArgs& a, std::int64_t b0, std::int64_t b1, F&& f) {
  constexpr std::int64_t C = TWIN_CHUNK_ELEMENTS;
  const std::size_t T = a.experts.size();
  float* buf = scratch_floats<0>(static_cast<std::size_t>(C) * (T + 2));
  std::vector<const float*> ex(T);
  for (std::int64_t lo = b0; lo < b1; lo += C) {
    const std::int64_t c = std::min(C, b1 - lo);
    prefetch_next_chunk(a, lo, b1);
    const float* base = chunk_f32(a.base, lo, c, buf);
    for (std::size_t i = 0; i < T; ++i) ex[i] = chunk_f32(a.experts[i], lo, c, buf + C * (i + 1));
    backend::cpu::with_avx512_copy_width([&](auto w) {
      call_at_width(f, w, lo, c, base, static_cast<const float* const*>(ex.data()), buf + C * (T + 1));
    });
  }
}

// Runs g(o) for the chunk [lo, lo + c) of a merge's output, o pointing
// into `out` where it is contiguous f32, else at `spare` (c floats), whose
// values are then stored into `out`: the frame of every chunk driver below.
template <class G>
void with_chunk_out(const TensorView& out, std::int64_t lo, std::int64_t c, float* spare, G&& g) {
  const bool direct = contiguous_f32(out);
  float* o = direct ? static_cast<float*>(out.data()) + lo : spare;
  g(o);
  if (!direct) write_f32(o, lo, c, out);
}

// Elementwise driver. For each parallel block of `block` elements it calls
// make(block_lo) once, then the returned callable g(lo, n, base, ex, out) on
// consecutive chunks, where base/ex[i] point at f32 input values and out at
// an f32 buffer that is then stored into a.out (g may take a vector width
// last, as for_input_chunks' f). Blocks never depend on the thread count.
template <class Make>
void merge_chunks(const TensorMergeArgs& a, std::int64_t block, Make&& make) {
  parallel_blocks(a.base.numel(), block, [&](std::int64_t b0, std::int64_t b1) {
    auto g = make(b0);
    for_input_chunks(
        a, b0, b1,
        [&](std::int64_t lo, std::int64_t c, const float* base, const float* const* ex, float* spare, auto w) {
          with_chunk_out(a.out, lo, c, spare, [&](float* out) { call_at_width(g, w, lo, c, base, ex, out); });
        });
  });
}

// Whether a view's values are bf16 in one run: read in place, widened in
// the kernels' registers.
inline bool contiguous_bf16(const ConstTensorView& v) noexcept { return v.dtype() == dtype::bf16 && v.is_contiguous(); }

// Whether every expert is contiguous bf16.
inline bool experts_contiguous_bf16(const TensorMergeArgs& a) noexcept {
  return std::all_of(a.experts.begin(), a.experts.end(), contiguous_bf16);
}

// merge_chunks for kernels written for either stored type: where every
// expert is contiguous bf16, g gets ex as `const std::uint16_t* const*`
// (their bf16 bits, read in place, widened in the kernel's registers);
// otherwise as merge_chunks gives it (f32, in place or converted). g is
// generic over both.
template <class Make>
void merge_chunks_stored(const TensorMergeArgs& a, std::int64_t block, Make&& make) {
  if (!experts_contiguous_bf16(a)) {
    merge_chunks(a, block, make);
    return;
  }
  parallel_blocks(a.base.numel(), block, [&](std::int64_t b0, std::int64_t b1) {
    auto g = make(b0);
    constexpr std::int64_t C = TWIN_CHUNK_ELEMENTS;
    float* buf = scratch_floats<0>(static_cast<std::size_t>(2 * C));  // base, out
    std::vector<const std::uint16_t*> ex(a.experts.size());
    for (std::int64_t lo = b0; lo < b1; lo += C) {
      const std::int64_t c = std::min(C, b1 - lo);
      prefetch_next_chunk(a, lo, b1);
      const float* base = chunk_f32(a.base, lo, c, buf);
      for (std::size_t i = 0; i < ex.size(); ++i) ex[i] = static_cast<const std::uint16_t*>(a.experts[i].data()) + lo;
      with_chunk_out(a.out, lo, c, buf + C, [&](float* out) {
        backend::cpu::with_avx512_copy_width([&](auto w) {
          call_at_width(g, w, lo, c, base, static_cast<const std::uint16_t* const*>(ex.data()), out);
        });
      });
    }
  });
}

// One expert's values over one chunk, for loops that take the experts one
// at a time: with(i, f) calls f(x) where x(j) is expert i's value j of the
// chunk as f32, read in place from a contiguous f32 or bf16 tensor (the
// conversion then happens in the loop's registers) and converted into a
// scratch buffer otherwise.
struct ExpertChunks {
  const TensorMergeArgs* a;
  std::int64_t lo, n;
  float* buf;  // n floats

  template <class F>
  void with(std::size_t i, F&& f) const {
    const ConstTensorView& v = a->experts[i];
    if (contiguous_bf16(v)) {
      const std::uint16_t* p = static_cast<const std::uint16_t*>(v.data()) + lo;
      f([p](std::int64_t j) { return bf16_to_f32(p[j]); });
      return;
    }
    const float* p = chunk_f32(v, lo, n, buf);
    f([p](std::int64_t j) { return p[j]; });
  }
};

// Elements per chunk of merge_chunks_by_expert where nothing is staged (the
// base, every expert and the output contiguous f32): each expert is then
// read in runs of 16 KB, which the memory serves faster than 1 KB pieces of
// T + 1 streams, and which the hardware prefetchers follow on their own
// (linear f32 33 → 27 ms; benchmarks/RESULTS.md, "by-expert chunks of 4096").
// Staged chunks keep TWIN_CHUNK_ELEMENTS: 4096 there took bf16 linear from
// 19 to 26 ms.
constexpr std::int64_t by_expert_run = 4096;
// The longest chunk merge_chunks_by_expert passes.
constexpr std::int64_t by_expert_chunk_max = std::max<std::int64_t>(TWIN_CHUNK_ELEMENTS, by_expert_run);

// Whether the base and every expert are contiguous f32 (read in place).
inline bool inputs_contiguous_f32(const TensorMergeArgs& a) noexcept {
  return contiguous_f32(a.base) &&
         std::all_of(a.experts.begin(), a.experts.end(), [](const ConstTensorView& e) { return contiguous_f32(e); });
}

// The next run's lines for for_input_runs: elements [lo, lo + n) of a's
// contiguous inputs (the base, then each expert), input by input: the
// memory serves one stream at a time faster than T + 1 side by side, as
// the work reads them (the counting pass of TIES' cuts over bf16 experts
// 2.6 → 1.9 ms per 3072×768 tensor; benchmarks/RESULTS.md, "the next
// run's lines").
inline void plan_inputs_ahead(backend::cpu::LinesAhead& ahead, const TensorMergeArgs& a, std::int64_t lo,
                              std::int64_t n) {
  ahead.clear();
  if (n <= 0) return;
  auto add = [&](const ConstTensorView& v) {
    if (!v.is_contiguous()) return;
    const auto es = static_cast<std::int64_t>(v.element_size());
    ahead.add(static_cast<const char*>(v.data()) + lo * es, static_cast<std::size_t>(n * es));
  };
  add(a.base);
  for (const ConstTensorView& e : a.experts) add(e);
}

// for_input_chunks for passes that only read (no output, no chunk-sized
// buffers of their own): f(lo, c, base, ex, ahead) on runs of
// by_expert_run elements where every expert is read in place: ex as `const
// float* const*` where the base and every expert are contiguous f32, as
// `const std::uint16_t* const*` (bf16 bits) where every expert is
// contiguous bf16 (the base in f32, converted into this thread's scratch
// slot 0 unless it is contiguous f32), and `ahead` the next run's lines
// (plan_inputs_ahead), for f to ask for while it reads this one; otherwise
// for_input_chunks' chunks of f32, ahead null. f is generic over both (c ≤
// by_expert_chunk_max either way).
template <class F>
void for_input_runs(const TensorMergeArgs& a, std::int64_t b0, std::int64_t b1, F&& f) {
  const bool f32 = inputs_contiguous_f32(a);
  if (!f32 && !experts_contiguous_bf16(a)) {
    for_input_chunks(a, b0, b1,
                     [&](std::int64_t lo, std::int64_t c, const float* base, const float* const* ex, float*) {
                       f(lo, c, base, ex, static_cast<backend::cpu::LinesAhead*>(nullptr));
                     });
    return;
  }
  float* buf = f32 ? nullptr : scratch_floats<0>(static_cast<std::size_t>(by_expert_run));
  std::vector<const float*> ef(f32 ? a.experts.size() : 0);
  std::vector<const std::uint16_t*> eh(f32 ? 0 : a.experts.size());
  backend::cpu::LinesAhead ahead;
  for (std::int64_t lo = b0; lo < b1; lo += by_expert_run) {
    const std::int64_t c = std::min(by_expert_run, b1 - lo);
    plan_inputs_ahead(ahead, a, lo + c, std::min(by_expert_run, b1 - lo - c));
    if (f32) {
      for (std::size_t i = 0; i < ef.size(); ++i) ef[i] = static_cast<const float*>(a.experts[i].data()) + lo;
      backend::cpu::with_avx512_copy([&] {
        f(lo, c, static_cast<const float*>(a.base.data()) + lo, static_cast<const float* const*>(ef.data()), &ahead);
      });
    } else {
      for (std::size_t i = 0; i < eh.size(); ++i) eh[i] = static_cast<const std::uint16_t*>(a.experts[i].data()) + lo;
      const float* base = chunk_f32(a.base, lo, c, buf);
      backend::cpu::with_avx512_copy(
          [&] { f(lo, c, base, static_cast<const std::uint16_t* const*>(eh.data()), &ahead); });
    }
  }
}

// merge_chunks for loops that take the experts one at a time: g(lo, n,
// base, ex, out) with ex an ExpertChunks over the chunk instead of f32
// copies of every expert (n ≤ by_expert_chunk_max). Staging T bf16 chunks
// into f32 buffers and reading them back cost a bf16 merge as much time as
// its memory traffic.
template <class Make>
void merge_chunks_by_expert(const TensorMergeArgs& a, std::int64_t block, Make&& make) {
  const bool unstaged = contiguous_f32(a.out) && inputs_contiguous_f32(a);
  const std::int64_t C = unstaged ? by_expert_run : TWIN_CHUNK_ELEMENTS;
  parallel_blocks(a.base.numel(), block, [&](std::int64_t b0, std::int64_t b1) {
    auto g = make(b0);
    float* buf = scratch_floats<0>(static_cast<std::size_t>(3 * C));  // base, one expert, out
    for (std::int64_t lo = b0; lo < b1; lo += C) {
      const std::int64_t c = std::min(C, b1 - lo);
      if (!unstaged) prefetch_next_chunk(a, lo, b1);
      const float* base = chunk_f32(a.base, lo, c, buf);
      with_chunk_out(a.out, lo, c, buf + 2 * C, [&](float* out) {
        backend::cpu::with_avx512_copy([&] { g(lo, c, base, ExpertChunks{&a, lo, c, buf + C}, out); });
      });
    }
  });
}

constexpr std::int64_t merge_block = std::int64_t{1} << 16;

// Σ_j f(j) over j < n in double: 8 partial sums (entry j into lane j mod 8,
// which vectorize), then the lanes in order; the same order for any vector
// width.
template <class F>
double lane_sum(std::int64_t n, F&& f) {
  double lane[8] = {};
  std::int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) lane[l] += f(j + l);
  for (; j < n; ++j) lane[j % 8] += f(j);
  double s = 0.0;
  for (double v : lane) s += v;
  return s;
}

// Scratch memory for τ, reused across tensors and calls on the same thread:
// a fresh multi-megabyte allocation per tensor costs more in page faults
// than the merge itself. It only grows (to T × the largest tensor merged).
inline std::vector<float>& tau_scratch() {
  thread_local std::vector<float> scratch;
  return scratch;
}

// τ_i = expert_i − base for every expert, as one dense f32 buffer of
// T rows of n values (row i is τ_i), held in `tau`.
inline void task_vectors_f32(const TensorMergeArgs& a, std::vector<float>& tau) {
  const std::int64_t n = a.base.numel();
  const std::size_t need = a.experts.size() * static_cast<std::size_t>(n);
  if (tau.size() < need) tau.resize(need);
  parallel_blocks(n, merge_block, [&](std::int64_t b0, std::int64_t b1) {
    constexpr std::int64_t C = TWIN_CHUNK_ELEMENTS;
    std::vector<float> bb(C), eb(C);
    for (std::int64_t lo = b0; lo < b1; lo += C) {
      const std::int64_t c = std::min(C, b1 - lo);
      const float* base = chunk_f32(a.base, lo, c, bb.data());
      for (std::size_t i = 0; i < a.experts.size(); ++i) {
        const float* e = chunk_f32(a.experts[i], lo, c, eb.data());
        float* t = tau.data() + static_cast<std::int64_t>(i) * n + lo;
        for (std::int64_t j = 0; j < c; ++j) t[j] = e[j] - base[j];
      }
    }
  });
}

// TIES' elect + disjoint mean over T (trimmed) task values per element, for
// n elements: s = sign(Σ w τ) with 0 -> +1; merged = Σ w τ [sign τ = s] /
// Σ w [sign τ = s], 0 where nothing has sign s. `sum` and `den` are n-float
// scratch buffers.
inline void weighted_sum(std::int64_t n, std::size_t T, const float* const* tau, const float* w,
                         float* TWIN_RESTRICT sum) noexcept {
  for (std::int64_t j = 0; j < n; ++j) sum[j] = 0.0f;
  for (std::size_t i = 0; i < T; ++i) {
    const float* TWIN_RESTRICT t = tau[i];
    const float wi = w[i];
    for (std::int64_t j = 0; j < n; ++j) sum[j] += wi * t[j];
  }
}

// `zero_sign` is what a sum of exactly zero elects: +1, −1, or 0, which (as
// in the official TIES code, where sign 0 takes the negative branch) keeps
// the negative entries. Branch-free and expert-outer, so every loop
// vectorizes; each element's arithmetic is the same as one element alone.
inline void disjoint_mean(std::int64_t n, std::size_t T, const float* const* tau, const float* w,
                          float* TWIN_RESTRICT merged, float* TWIN_RESTRICT sum, float* TWIN_RESTRICT den,
                          float zero_sign = 1.0f) noexcept {
  weighted_sum(n, T, tau, w, sum);
  const bool zero_positive = zero_sign > 0.0f;
  // sum[j] becomes 1 where the elected sign is +, 0 where it is −.
  for (std::int64_t j = 0; j < n; ++j) sum[j] = (sum[j] > 0.0f) | ((sum[j] == 0.0f) & zero_positive) ? 1.0f : 0.0f;
  for (std::int64_t j = 0; j < n; ++j) merged[j] = 0.0f, den[j] = 0.0f;
  for (std::size_t i = 0; i < T; ++i) {
    const float* TWIN_RESTRICT t = tau[i];
    const float wi = w[i];
    for (std::int64_t j = 0; j < n; ++j) {
      const float x = t[j];
      const bool positive = sum[j] != 0.0f;
      const bool agree = (positive & (x > 0.0f)) | (!positive & (x < 0.0f));
      merged[j] += agree ? wi * x : 0.0f;
      den[j] += agree ? wi : 0.0f;
    }
  }
  for (std::int64_t j = 0; j < n; ++j) merged[j] = den[j] != 0.0f ? merged[j] / den[j] : 0.0f;
}

}  // namespace detail

// --- whole state dicts -----------------------------------------------------

struct MergeOptions {
  // Tensors whose names match are not merged: the output takes the base's copy.
  std::vector<std::string> exclude;
  // Output dtype (default: the base tensor's dtype).
  std::optional<twin::dtype> out_dtype;
  // Labels for error messages (file names); default "expert <i>".
  std::vector<std::string> expert_labels;
  // Called after each tensor: (tensors done, total, name).
  std::function<void(std::size_t, std::size_t, std::string_view)> progress;
};

namespace detail {
inline std::string expert_label(const MergeOptions& o, std::size_t i) {
  if (i < o.expert_labels.size()) return "expert " + std::to_string(i) + " ('" + o.expert_labels[i] + "')";
  return "expert " + std::to_string(i);
}

// Same names, same shapes, float dtypes: the contract every merge needs.
// Excluded tensors take the base's copy, so the experts' own (a classifier
// head of another size, or none) are not checked.
// `excluded` is o.exclude compiled.
inline void check_compatible(const StateDict& base, std::span<const StateDict* const> experts, const MergeOptions& o,
                             const NameFilter& excluded) {
  if (experts.empty()) throw argument_error("merge needs at least one expert");
  for (std::size_t i = 0; i < experts.size(); ++i) {
    const StateDict& e = *experts[i];
    for (const auto& [name, t] : base) {
      if (excluded.matches(name)) continue;
      const Tensor* et = e.find(name);
      if (!et) throw name_error(expert_label(o, i) + " has no tensor '" + name + "' that the base has");
      if (!std::equal(t.shape().begin(), t.shape().end(), et->shape().begin(), et->shape().end()))
        throw shape_error("tensor '" + name + "': base has shape " + t.shape_str() + ", " + expert_label(o, i) +
                          " has " + et->shape_str());
      require_float(et->dtype(), "tensor '" + name + "' of " + expert_label(o, i));
    }
    if (e.size() != base.size())
      for (const auto& [name, t] : e)
        if (!base.contains(name) && !excluded.matches(name))
          throw name_error(expert_label(o, i) + " has a tensor '" + name + "' that the base does not have");
  }
}
}  // namespace detail

namespace detail {
// The whole-state merge; out_view(name, base_tensor) supplies each output.
template <SharedMerger M, class OutView>
void merge_state_impl(const M& merger, const StateDict& base, std::span<const StateDict* const> experts,
                      const MergeOptions& opts, OutView&& out_view) {
  const NameFilter excluded(opts.exclude);
  check_compatible(base, experts, opts, excluded);

  MergeCatalog catalog;
  catalog.num_experts = static_cast<int>(experts.size());
  for (const auto& [name, t] : base)
    if (!excluded.matches(name)) catalog.names.push_back(name);
  catalog.view = [&](std::size_t i, int model) -> ConstTensorView {
    const std::string& name = catalog.names[i];
    return model < 0 ? base.at(name).view() : experts[static_cast<std::size_t>(model)]->at(name).view();
  };

  std::size_t done = 0;
  auto run = [&](auto&& merge_one) {
    for (const auto& [name, t] : base) {
      const TensorView o = out_view(name, t);
      if (excluded.matches(name)) {
        copy_convert(t.view(), o);
      } else {
        std::vector<ConstTensorView> ev;
        ev.reserve(experts.size());
        for (const StateDict* e : experts) ev.push_back(e->at(name).view());
        merge_one(TensorMergeArgs{name, t.view(), ev, o});
      }
      if (opts.progress) opts.progress(++done, base.size(), name);
    }
  };

  if constexpr (PlannedMerger<M>) {
    const auto plan = merger.plan(catalog);
    run([&](const TensorMergeArgs& a) { merger.merge_tensor(a, plan); });
  } else {
    run([&](const TensorMergeArgs& a) { merger.merge_tensor(a); });
  }
}
}  // namespace detail

// Merges every tensor of `base` with the same-named experts' tensors into
// `out`, whose tensors (same names and shapes, any float dtype) the caller
// owns: an engine's own weight buffers, or a mapped output file.
template <SharedMerger M>
void merge_state_into(const M& merger, const StateDict& base, std::span<const StateDict* const> experts, StateDict& out,
                      const MergeOptions& opts = {}) {
  detail::merge_state_impl(merger, base, experts, opts, [&](const std::string& name, const Tensor& t) {
    Tensor* o = out.find(name);
    if (!o) throw name_error("output state dict has no tensor '" + name + "'");
    check_same_shape(name, t.shape(), o->shape(), "output tensor");
    return o->view();
  });
}

// Merges every tensor of `base` with the same-named tensors of the experts
// into a new state dict (dtype: opts.out_dtype, else the base tensor's).
template <SharedMerger M>
StateDict merge_state(const M& merger, const StateDict& base, std::span<const StateDict* const> experts,
                      const MergeOptions& opts = {}) {
  StateDict out;
  detail::merge_state_impl(merger, base, experts, opts, [&](const std::string& name, const Tensor& t) {
    return out.insert(name, Tensor::empty(opts.out_dtype.value_or(t.dtype()), t.shape())).view();
  });
  return out;
}

template <SharedMerger M>
StateDict merge_state(const M& merger, const StateDict& base, std::span<const StateDict> experts,
                      const MergeOptions& opts = {}) {
  std::vector<const StateDict*> ptrs;
  for (const StateDict& e : experts) ptrs.push_back(&e);
  return merge_state(merger, base, std::span<const StateDict* const>(ptrs), opts);
}

// Merges one tensor into a freshly allocated output (convenience for tests
// and layer-by-layer hosts).
template <SharedMerger M>
Tensor merge_tensor(const M& merger, std::string_view name, ConstTensorView base,
                    std::span<const ConstTensorView> experts, std::optional<twin::dtype> out_dtype = {}) {
  Tensor o = Tensor::empty(out_dtype.value_or(base.dtype()), base.shape());
  const TensorMergeArgs a{name, base, experts, o.view()};
  if constexpr (PlannedMerger<M>) {
    MergeCatalog c;
    c.names = {std::string(name)};
    c.num_experts = static_cast<int>(experts.size());
    c.view = [&](std::size_t, int model) { return model < 0 ? base : experts[static_cast<std::size_t>(model)]; };
    merger.merge_tensor(a, merger.plan(c));
  } else {
    merger.merge_tensor(a);
  }
  return o;
}

}  // namespace twin
