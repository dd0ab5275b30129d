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
// to amortize scheduling, small enough that a chunk's buffers stay in L1/L2.
#ifndef TWIN_CHUNK_ELEMENTS
#  define TWIN_CHUNK_ELEMENTS 4096
#endif

#if defined(__GNUC__) || defined(__clang__)
#  define TWIN_RESTRICT __restrict__
#  define TWIN_LIKELY(x) __builtin_expect(!!(x), 1)
#  define TWIN_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#  define TWIN_RESTRICT
#  define TWIN_LIKELY(x) (x)
#  define TWIN_UNLIKELY(x) (x)
#endif
