// JSON from untrusted files, read safely: duplicate keys and deep nesting
// refused, messages that quote file content made printable, and the small
// accessors every twin file format needs (string metadata, non-negative
// integers). Only io/ includes nlohmann/json.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "twin/error.hpp"
#include "twin/metadata.hpp"

namespace twin::detail {

// nlohmann::json, whose objects are std::maps: lookups stay logarithmic on
// hostile headers with millions of keys (ordered_json searches linearly).
// Tensor order comes from the data offsets instead of key order.
using json_value = nlohmann::json;

// Text from an untrusted file made safe for a one-line message: control
// bytes (and, unless keep_utf8, all non-ASCII bytes) escaped as \xNN, long
// text cut at a character boundary.
inline std::string printable(std::string_view s, bool keep_utf8 = true, std::size_t max = 120) {
  std::string out;
  std::size_t n = s.size();
  if (n > max) {
    n = max;
    while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;  // not inside a UTF-8 sequence
  }
  for (std::size_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f || (c >= 0x80 && !keep_utf8)) {
      static constexpr char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (n < s.size()) out += "...";
  return out;
}

inline std::string quote_name(std::string_view s) { return "'" + printable(s) + "'"; }

inline std::string json_kind(const json_value& j) { return j.type_name(); }

// Parses untrusted JSON, refusing duplicate keys
// (a repeated tensor name would otherwise silently shadow the first) and
// nesting deeper than any valid header needs (bounds memory and recursion).
inline json_value parse_untrusted_json(std::string_view text, const std::string& source, std::string_view what) {
  constexpr int max_depth = 16;
  std::vector<std::unordered_set<std::string>> keys;
  auto on_event = [&](int depth, json_value::parse_event_t ev, json_value& parsed) -> bool {
    if (depth > max_depth)
      throw io_error(source + ": " + std::string(what) + " nests deeper than " + std::to_string(max_depth) + " levels");
    switch (ev) {
      case json_value::parse_event_t::object_start: keys.emplace_back(); break;
      case json_value::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case json_value::parse_event_t::key: {
        const auto& k = parsed.get_ref<const std::string&>();
        if (!keys.empty() && !keys.back().insert(k).second)
          throw io_error(source + ": " + std::string(what) + " has the key " + quote_name(k) +
                         " twice (duplicate names)");
        break;
      }
      default: break;
    }
    return true;
  };
  try {
    return json_value::parse(text.begin(), text.end(), on_event, /*allow_exceptions=*/true);
  } catch (const json_value::exception& e) {
    // nlohmann quotes the bytes it last read; they come from the file.
    std::string_view msg = e.what();
    if (const auto p = msg.find("] "); msg.rfind("[json.exception.", 0) == 0 && p != std::string_view::npos)
      msg.remove_prefix(p + 2);
    throw io_error(source + ": " + std::string(what) + " is not valid JSON: " + printable(msg, false, 300));
  }
}
// A string → string object; `strings_only` skips values of other kinds
// (an index's bookkeeping: total_size, total_parameters) instead of
// refusing them.
inline Metadata parse_metadata_object(const json_value& m, const std::string& source, std::string_view where,
                                      bool strings_only = false) {
  if (!m.is_object())
    throw io_error(source + ": " + std::string(where) + " is a JSON " + json_kind(m) + ", expected an object");
  Metadata out;
  for (const auto& [k, v] : m.items()) {
    if (strings_only && !v.is_string()) continue;
    if (!v.is_string())
      throw io_error(source + ": " + std::string(where) + " value of " + quote_name(k) + " is a JSON " + json_kind(v) +
                     ", expected a string");
    out.emplace(k, v.get<std::string>());
  }
  return out;
}

// A non-negative JSON integer ("-0" included, which parses as signed).
inline bool as_u64(const json_value& j, std::uint64_t& out) {
  if (j.is_number_unsigned()) {
    out = j.get<std::uint64_t>();
    return true;
  }
  if (j.is_number_integer() && j.get<std::int64_t>() >= 0) {
    out = static_cast<std::uint64_t>(j.get<std::int64_t>());
    return true;
  }
  return false;
}
inline std::string json_dump(const json_value& j, const std::string& source, int indent = -1) {
  try {
    return j.dump(indent);
  } catch (const json_value::exception&) {
    throw io_error(source + ": a tensor name or metadata string is not valid UTF-8");
  }
}

// A string as a JSON string literal: the bytes json_dump gives for it.
// Strings of printable ASCII without '"' or '\\' (nearly every tensor name)
// are quoted as they are, skipping nlohmann's per-byte UTF-8 decoding
// (a 100 MB header: seconds); anything else goes through json_dump.
inline std::string json_quote(std::string_view s, const std::string& source) {
  for (const char c : s)
    if (c < 0x20 || c > 0x7e || c == '"' || c == '\\') return json_dump(json_value(std::string(s)), source);
  std::string out;
  out.reserve(s.size() + 2);
  out += '"';
  out += s;
  out += '"';
  return out;
}

}  // namespace twin::detail
