// Small helpers for the examples' hand-written command lines: numbers parsed
// whole with errors that name the option, and a size mode (--quick, --smoke)
// found before the other options so that those override it in any order.
#pragma once

#include <cstdint>
#include <exception>
#include <initializer_list>
#include <string>
#include <string_view>

#include "twin/error.hpp"

namespace examples {

// An integer in [lo, hi]; "12x", "" or an out-of-range value is an error.
inline long long parse_int(const std::string& opt, const std::string& v, long long lo, long long hi) {
  try {
    std::size_t pos = 0;
    const long long x = std::stoll(v, &pos);
    if (pos == v.size() && x >= lo && x <= hi) return x;
  } catch (const std::exception&) {
  }
  throw twin::argument_error(opt + ": '" + v + "' is not an integer in [" + std::to_string(lo) + ", " +
                             std::to_string(hi) + "]");
}

// An unsigned 64-bit value (a seed); a sign is an error, not a wrap-around.
inline std::uint64_t parse_u64(const std::string& opt, const std::string& v) {
  try {
    std::size_t pos = 0;
    if (!v.empty() && v[0] != '-' && v[0] != '+') {
      const unsigned long long x = std::stoull(v, &pos);
      if (pos == v.size()) return x;
    }
  } catch (const std::exception&) {
  }
  throw twin::argument_error(opt + ": '" + v + "' is not a non-negative integer");
}

// The options both paper programs take (Config has seed, rank, out, data,
// cache, threads); `next()` returns the option's value. Returns whether `a`
// was one of them.
template <class Config, class Next>
bool parse_run_option(const std::string& a, Next&& next, Config& cfg) {
  if (a == "--seed") cfg.seed = parse_u64(a, next());
  else if (a == "--rank") cfg.rank = parse_int(a, next(), 1, 1 << 20);
  else if (a == "--out") cfg.out = next();
  else if (a == "--data") cfg.data = next();
  else if (a == "--cache") cfg.cache = next();
  else if (a == "--threads") cfg.threads = static_cast<int>(parse_int(a, next(), 0, 4096));
  else return false;
  return true;
}

// The one mode among `modes` ("--quick", ...) given on the command line, or
// "" for none; two different modes are an error.
inline std::string find_mode(int argc, char** argv, std::initializer_list<std::string_view> modes) {
  std::string found;
  for (int i = 1; i < argc; ++i)
    for (std::string_view m : modes)
      if (argv[i] == m) {
        if (!found.empty() && found != m)
          throw twin::argument_error(found + " and " + std::string(m) + " cannot be combined");
        found = std::string(m);
      }
  return found;
}

}  // namespace examples
