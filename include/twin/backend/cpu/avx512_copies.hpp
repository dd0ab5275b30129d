// The merges' loops compiled a second time for AVX-512, chosen at run time.
//
// A build that targets less than AVX-512 (no -march: SSE2) compiles the
// merge kernels' 64-byte vector code piecewise, some of it one lane at a
// time (sce ran at a tenth of the speed of a -march=native build). Here a
// chunk's or a parallel block's work is compiled twice: as the build
// targets it, and inlined whole (`flatten`) into a function that targets
// x86-64-v4's vector instructions, which runs where cpuid shows them. GCC
// compiles the copy with -ffp-contract=off, as the build compiles its own
// code where it targets no FMA, so the copy performs the same operations in
// the same order and gives the same bits (test_avx512_copies compares the
// two); clang's default (-ffp-contract=on) may fuse a multiply and an add
// within one expression in the copy unless the build passes
// -ffp-contract=off. Builds that target AVX-512 or FMA (-march=native,
// x86-64-v3, v4) compile no copy: the former need none, and the latter fuse
// in their own code, which the copy would not match.
//
// set_avx512_copies(false), or TWIN_AVX512_COPIES=0 in the environment,
// runs the build's own code; defining TWIN_NO_AVX512_COPIES before
// including twin compiles no copy (about half the merges' compile time).
#pragma once

#include <atomic>
#include <cstdint>

#include "twin/backend/cpu/switch.hpp"
#include "twin/config.hpp"
#include "twin/parallel.hpp"

// Only where the build neither targets AVX-512 (nothing to copy) nor FMA:
// a build with FMA contracts multiplies and adds in its own code, so a copy
// without contraction would not give its bits. x86-64 only (a 32-bit build
// computes in x87 registers).
#if defined(__x86_64__) && TWIN_X86_KERNELS && !defined(__AVX512F__) && !defined(__FMA__) && \
    !defined(TWIN_NO_AVX512_COPIES)
#  define TWIN_HAS_AVX512_COPIES 1
#  define TWIN_AVX512_COPY_ISA "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,bmi,bmi2,popcnt"
#  if defined(__clang__)
#    define TWIN_AVX512_COPY __attribute__((target(TWIN_AVX512_COPY_ISA), flatten))
#  else
#    define TWIN_AVX512_COPY \
      __attribute__((target(TWIN_AVX512_COPY_ISA ",prefer-vector-width=512"), flatten, optimize("fp-contract=off")))
#  endif
#else
#  define TWIN_HAS_AVX512_COPIES 0
#endif

namespace twin::backend::cpu {

// Whether this CPU runs the instructions the AVX-512 copies use (found once;
// false off x86).
inline bool avx512_copies_cpu() noexcept {
#if TWIN_X86_KERNELS
  static const bool ok =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt");
  return ok;
#else
  return false;
#endif
}

namespace detail {
inline EnvSwitch avx512_copies_switch{"TWIN_AVX512_COPIES"};

#if defined(TWIN_COUNT_AVX512_COPIES)
// How many times a copy ran (tests define TWIN_COUNT_AVX512_COPIES to see
// that the copies run at all).
inline std::atomic<std::int64_t> avx512_copy_runs{0};
#endif

#if TWIN_HAS_AVX512_COPIES
template <class F>
TWIN_AVX512_COPY void run_avx512_copy(F& f) {
  f();
}
#endif
}  // namespace detail

// Whether with_avx512_copy runs the AVX-512 copy: the build compiled one,
// the CPU runs it, and neither set_avx512_copies(false) nor
// TWIN_AVX512_COPIES=0 turned it off.
inline bool avx512_copies_enabled() noexcept {
  return TWIN_HAS_AVX512_COPIES && avx512_copies_cpu() && detail::avx512_copies_switch.on();
}

inline void set_avx512_copies(bool allowed) noexcept { detail::avx512_copies_switch.set(allowed); }

// The vector width with_avx512_copy_width gives a kernel: W f32 lanes, 0
// for the build's own (merge/lanes.hpp: Lanes<W>).
template <int W>
struct CopyWidth {
  static constexpr int value = W;
};

// Runs f(CopyWidth<16>{}) in the AVX-512 copy where
// avx512_copies_enabled(), else f(CopyWidth<0>{}), the build's own code: a
// kernel written for either width gets AVX-512's 16 lanes in the copy,
// where a build without AVX keeps 4 (TIES' combination 2× faster there).
// f and everything it calls is inlined into the copy, so f should be a
// loop's whole work, not a piece of it; the 16-lane instantiation is
// called only there, so its 64-byte vectors never cross a function
// boundary of the build's own ABI.
template <class F>
void with_avx512_copy_width(F&& f) {
#if TWIN_HAS_AVX512_COPIES
  if (avx512_copies_enabled()) {
#  if defined(TWIN_COUNT_AVX512_COPIES)
    detail::avx512_copy_runs.fetch_add(1, std::memory_order_relaxed);
#  endif
    auto wide = [&] { f(CopyWidth<16>{}); };
    detail::run_avx512_copy(wide);
    return;
  }
#endif
  f(CopyWidth<0>{});
}

// Runs f(): its AVX-512 copy where avx512_copies_enabled(), else the build's
// own code (with_avx512_copy_width for a kernel of one width).
template <class F>
void with_avx512_copy(F&& f) {
  with_avx512_copy_width([&](auto) { f(); });
}

// parallel_blocks whose blocks run through with_avx512_copy: the merges'
// parallel loops.
template <class F>
void parallel_kernel_blocks(std::int64_t n, std::int64_t block, F&& f) {
  parallel_blocks(n, block, [&](std::int64_t b0, std::int64_t b1) { with_avx512_copy([&] { f(b0, b1); }); });
}

// parallel_sum whose blocks run through with_avx512_copy.
template <class T, class F>
T parallel_kernel_sum(std::int64_t n, std::int64_t block, F&& partial) {
  return parallel_sum<T>(n, block, [&](std::int64_t lo, std::int64_t hi) {
    T part{};
    with_avx512_copy([&] { part = partial(lo, hi); });
    return part;
  });
}

}  // namespace twin::backend::cpu
