// The metadata of twin's own file formats (model files, router files): one
// rule for format versions and one way to read typed settings, so that every
// format refuses the same things with the same io_error.
#pragma once

#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>

#include "twin/error.hpp"
#include "twin/metadata.hpp"

namespace twin::detail {

// The value of `key`; a file without it is not a `what` at all.
inline const std::string& metadata_field(const Metadata& meta, const std::string& key, const std::string& source,
                                         std::string_view what) {
  const auto it = meta.find(key);
  if (it == meta.end()) throw io_error(source + ": not a " + std::string(what) + " (metadata has no '" + key + "')");
  return it->second;
}

// Whether `s` is a whole decimal integer (the entire string, no trailing
// characters); the value goes to `out`.
inline bool parse_whole_int(const std::string& s, std::int64_t& out) {
  try {
    std::size_t pos = 0;
    out = std::stoll(s, &pos);
    return pos == s.size();
  } catch (const std::exception&) {
    return false;
  }
}

inline std::int64_t metadata_int(const Metadata& meta, const std::string& key, const std::string& source,
                                 std::string_view what) {
  const std::string& s = metadata_field(meta, key, source, what);
  std::int64_t v = 0;
  if (!parse_whole_int(s, v)) throw io_error(source + ": metadata '" + key + "' = '" + s + "' is not an integer");
  return v;
}

inline double metadata_double(const Metadata& meta, const std::string& key, const std::string& source,
                              std::string_view what) {
  const std::string& s = metadata_field(meta, key, source, what);
  try {
    std::size_t pos = 0;
    const double v = std::stod(s, &pos);
    if (pos == s.size()) return v;
  } catch (const std::exception&) {
  }
  throw io_error(source + ": metadata '" + key + "' = '" + s + "' is not a number");
}

// Round-trips exactly through metadata_double.
inline std::string format_double(double v) {
  char b[40];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}

// A twin file format's identity: `format_key` must name `format`, and the
// version under `version_key` is checked: a file from a newer twin is
// refused with a word to upgrade; an older one is read (each format keeps
// reading its old versions); 0, negative or non-numeric versions are corrupt.
inline int check_format(const Metadata& meta, const std::string& format_key, std::string_view format,
                        const std::string& version_key, int supported, const std::string& source,
                        std::string_view what) {
  const std::string& name = metadata_field(meta, format_key, source, what);
  if (name != format)
    throw io_error(source + ": not a " + std::string(what) + " (" + format_key + " is '" + name + "')");
  const std::string& s = metadata_field(meta, version_key, source, what);
  std::int64_t version = 0;
  if (!parse_whole_int(s, version)) throw io_error(source + ": " + version_key + " '" + s + "' is not a number");
  if (version > supported)
    throw io_error(source + ": " + std::string(what) + " written by a newer twin (format version " +
                   std::to_string(version) + "); this build reads versions up to " + std::to_string(supported) +
                   ": upgrade twin");
  if (version < 1) throw io_error(source + ": invalid " + version_key + " " + std::to_string(version));
  return static_cast<int>(version);
}

}  // namespace twin::detail
