// Typed exceptions. Every failure a caller can cause (wrong shapes, names,
// dtypes, bad files, bad settings) throws a subclass of twin::error whose
// message says what was expected and what was found.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

#include "twin/config.hpp"

namespace twin {

class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A tensor's shape does not match what the operation needs.
class shape_error : public error {
 public:
  using error::error;
};

// A tensor's element type is not supported or does not match.
class dtype_error : public error {
 public:
  using error::error;
};

// A tensor name is missing, unknown or duplicated.
class name_error : public error {
 public:
  using error::error;
};

// A setting (density, rank, temperature, ...) is out of its range.
class argument_error : public error {
 public:
  using error::error;
};

// A file is missing, truncated, malformed or could not be written.
class io_error : public error {
 public:
  using error::error;
};

// Numerical failure (non-finite input, SVD that did not converge twice).
class numeric_error : public error {
 public:
  using error::error;
};

// A CUDA runtime, cuBLAS, cuBLASLt or cuSOLVER call failed.
class device_error : public error {
 public:
  using error::error;
};

namespace detail {
[[noreturn]] inline void assert_fail(const char* expr, const char* file, int line) {
  throw error(std::string("twin internal check failed: ") + expr + " at " + file + ":" + std::to_string(line));
}
}  // namespace detail

namespace detail {
// Appends `item` to a list for a message ("a, b" → "a, b, c"), separated by
// `sep` after the first. Piece by piece: `(list.empty() ? "" : ", ") +
// std::string(item)` inserts at the front of a temporary, on which GCC 12 at
// -O3 -Wall warns of an overlapping memcpy (-Wrestrict, a false positive).
inline void append_listed(std::string& list, std::string_view item, std::string_view sep) {
  if (!list.empty()) list += sep;
  list += item;
}
}  // namespace detail

}  // namespace twin

#if TWIN_ENABLE_ASSERTS
// clang-format 14 (IndentPPDirectives: AfterHash) would write `#expr` as `#  expr`.
// clang-format off
#  define TWIN_ASSERT(expr) \
    ((expr) ? static_cast<void>(0) : ::twin::detail::assert_fail(#expr, __FILE__, __LINE__))
// clang-format on
#else
#  define TWIN_ASSERT(expr) static_cast<void>(0)
#endif
