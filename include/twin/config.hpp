// Configuration macros of twin, all in one place. Each uses the provided
// definition when the build already set one (-DTWIN_...=...).
#pragma once

#define TWIN_VERSION_MAJOR 0
#define TWIN_VERSION_MINOR 1
#define TWIN_VERSION_PATCH 0

// Hot-path argument checks (strides, bounds inside kernels) become asserts
// that throw twin::error; off by default in release builds.
#ifndef TWIN_ENABLE_ASSERTS
#  ifdef NDEBUG
#    define TWIN_ENABLE_ASSERTS 0
#  else
#    define TWIN_ENABLE_ASSERTS 1
#  endif
#endif

// Largest tensor rank a view carries inline (no allocation per view).
#ifndef TWIN_MAX_RANK
#  define TWIN_MAX_RANK 8
#endif

// Elements a worker handles per chunk in elementwise kernels: large enough
// to amortize the per-chunk work, small enough that a merge's T + 2 f32
// chunk buffers, the inputs' lines being read and the next chunk's being
// prefetched all stay in L1 together (benchmarks/RESULTS.md, "Chunks of 256":
// 1024 cost f32 merges 5-25% and bf16 ones 15-30% against 256; 4096 more).
#ifndef TWIN_CHUNK_ELEMENTS
#  define TWIN_CHUNK_ELEMENTS 256
#endif

// Whether kernels for x86 instruction sets past the build's own can be
// compiled (function target attributes; the header includes <immintrin.h>)
// and chosen at run time from cpuid (cpu_has_avx512f): tests run each one
// by name.
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#  define TWIN_X86_KERNELS 1
#else
#  define TWIN_X86_KERNELS 0
#endif

namespace twin {
// Whether this CPU runs AVX-512F (found once; false off x86).
inline bool cpu_has_avx512f() noexcept {
#if TWIN_X86_KERNELS
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
#else
  return false;
#endif
}

// A level of hand-vectorized kernel (Philox's rounds, the magnitude scans):
// chosen at run time from what this CPU has, so that a build for the
// x86-64 baseline uses them too; every level gives the same results.
enum class SimdKernel { portable, avx2, avx512 };

// Whether this CPU runs kernel level k (portable always).
inline bool cpu_has(SimdKernel k) noexcept {
#if TWIN_X86_KERNELS
  if (k == SimdKernel::avx512) return cpu_has_avx512f();
  if (k == SimdKernel::avx2) return __builtin_cpu_supports("avx2");
#endif
  return k == SimdKernel::portable;
}

// The widest kernel level this CPU runs, found once.
inline SimdKernel best_simd_kernel() noexcept {
  static const SimdKernel k = cpu_has(SimdKernel::avx512) ? SimdKernel::avx512
                              : cpu_has(SimdKernel::avx2) ? SimdKernel::avx2
                                                          : SimdKernel::portable;
  return k;
}
}  // namespace twin

#if defined(__GNUC__) || defined(__clang__)
#  define TWIN_RESTRICT __restrict__
#  define TWIN_LIKELY(x) __builtin_expect(!!(x), 1)
#  define TWIN_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#  define TWIN_RESTRICT
#  define TWIN_LIKELY(x) (x)
#  define TWIN_UNLIKELY(x) (x)
#endif

// On a small function that a loop must inline to vectorize (the polynomial
// exp / log of backend/cpu/elementary.hpp): GCC's inliner gave up on
// exp_nonpositive inside a grown arcee_fusion::row_kl and called it per
// entry, twice as slow.
#if defined(__GNUC__)
#  define TWIN_ALWAYS_INLINE [[gnu::always_inline]] inline
#else
#  define TWIN_ALWAYS_INLINE inline
#endif

// On a function whose loops are arithmetic-bound (polynomial exp / log in
// double): GCC's x86 tuning vectorizes loops 256 bits wide even where the
// build enables AVX-512; this asks for the full width there (no effect on a
// build without AVX-512). arcee_fusion's softmax / KL pass: 20% faster.
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#  define TWIN_WIDE_VECTORS __attribute__((target("prefer-vector-width=512")))
#else
#  define TWIN_WIDE_VECTORS
#endif

// Whether this unit is compiled with AddressSanitizer (GCC or clang): entries
// whose work may run in code built without its checks check their operands'
// bounds themselves (backend/cpu/gemm.hpp).
#if defined(__SANITIZE_ADDRESS__)
#  define TWIN_ASAN 1
#elif defined(__has_feature)
#  if __has_feature(address_sanitizer)
#    define TWIN_ASAN 1
#  endif
#endif
#ifndef TWIN_ASAN
#  define TWIN_ASAN 0
#endif

// Below this many multiply-adds (GEMM) or elements (elementwise kernels) the
// thread-count-invariant kernels of backend/cpu/nn.hpp stay on the calling
// thread. Tests set both to 0 to exercise the parallel paths on small sizes.
#ifndef TWIN_NN_PARALLEL_MIN_WORK
#  define TWIN_NN_PARALLEL_MIN_WORK 4194304.0
#endif
#ifndef TWIN_NN_PARALLEL_MIN_ELEMENTS
#  define TWIN_NN_PARALLEL_MIN_ELEMENTS 1048576
#endif

// oneDNN (libdnnl) behind backend/cpu/gemm.hpp's fastest products: 1 when
// the program links -ldnnl (twin's CMake target sets it when it finds
// oneDNN); 0 leaves every product to Eigen.
#ifndef TWIN_HAVE_ONEDNN
#  define TWIN_HAVE_ONEDNN 0
#endif

// With TWIN_EXTERN_TEMPLATES defined to 1, the heavy engines of backend/cpu
// (the SVDs, the GEMMs, the bf16 dot-product kernel) are declared
// `extern template`, so including them costs parsing only; the program then
// instantiates them in ONE translation unit of its own that defines
// TWIN_INSTANTIATE_TEMPLATES before including those headers. Without an
// SVD instantiated, a unit spends about a minute compiling it.
#ifndef TWIN_EXTERN_TEMPLATES
#  define TWIN_EXTERN_TEMPLATES 0
#endif
#ifdef TWIN_INSTANTIATE_TEMPLATES
#  define TWIN_TEMPLATE_INSTANCE template
#else
#  define TWIN_TEMPLATE_INSTANCE extern template
#endif
// The same for the few non-template functions through which every merge
// strategy is reached (AnyMerger's dispatch): with TWIN_EXTERN_TEMPLATES they
// are declared only, and defined, not inline, in ONE unit of the program
// that defines TWIN_DEFINE_COMPILED_ONCE to 1 before including
// any_merger.hpp, so a unit that merges through AnyMerger alone does not
// compile the twenty strategies' kernels. Without TWIN_EXTERN_TEMPLATES (the
// default) they are inline functions like the rest of the library; every
// unit of one program must agree on TWIN_EXTERN_TEMPLATES.
#ifndef TWIN_DEFINE_COMPILED_ONCE
#  if TWIN_EXTERN_TEMPLATES
#    define TWIN_DEFINE_COMPILED_ONCE 0
#  else
#    define TWIN_DEFINE_COMPILED_ONCE 1
#  endif
#endif
#if TWIN_EXTERN_TEMPLATES
#  define TWIN_COMPILED_ONCE
#else
#  define TWIN_COMPILED_ONCE inline
#endif
