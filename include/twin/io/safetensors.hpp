// Reading and writing safetensors checkpoints (DESIGN.md §5): mmap'd zero-copy
// loading of single and sharded files, atomic writes. Files are untrusted:
// every length, offset, shape and dtype is validated before use.
//
// Loaded tensors view the mapped file: a file truncated by another process
// while mapped makes reads of the lost pages fault (SIGBUS), as with any mmap.
// Replacing a file with save_safetensors is safe (rename keeps the old inode).
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "twin/dtype.hpp"
#include "twin/error.hpp"
#include "twin/io/atomic_file.hpp"
#include "twin/io/mmap.hpp"
#include "twin/state_dict.hpp"
#include "twin/tensor.hpp"

namespace twin {

static_assert(std::endian::native == std::endian::little,
              "twin maps safetensors data (little-endian) directly and needs a little-endian host");

using Metadata = std::map<std::string, std::string>;

struct LoadedCheckpoint {
  StateDict tensors;
  Metadata metadata;
  // The mappings the tensors view (one per file). Holding them is optional:
  // each tensor keeps its own mapping alive. Streaming work calls
  // files[i]->release(t.data(), t.nbytes()) to drop pages it is done with.
  std::vector<std::shared_ptr<const MappedFile>> files;
};

// One tensor entry of a safetensors header; offsets are relative to the
// start of the data section (the file offset is data_start + begin).
struct SafetensorsEntry {
  std::string name;
  twin::dtype dtype = twin::dtype::f32;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> tensors;  // in data order (the order they were written)
  Metadata metadata;
  std::uint64_t data_start = 0;  // 8 + header length
  std::uint64_t data_bytes = 0;  // size of the data section
};

// The parsed model.safetensors.index.json of a sharded checkpoint.
struct SafetensorsIndex {
  std::vector<std::pair<std::string, std::string>> weight_map;  // tensor -> shard file, by name
  std::vector<std::string> shards;                              // sorted by file name
  Metadata metadata;                                            // without HF's "total_size"
};

// Larger headers are refused before any allocation (the format's own limit).
inline constexpr std::uint64_t safetensors_max_header_bytes = 100'000'000;
inline constexpr const char* safetensors_index_name = "model.safetensors.index.json";

// A tensor to write: name and any CPU view (strided views are written contiguously).
using NamedTensorView = std::pair<std::string, ConstTensorView>;

// ---------------------------------------------------------------------------
// Parsing (pure functions over bytes; the fuzz target calls these).

namespace detail {

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

inline std::string offsets_string(std::uint64_t b, std::uint64_t e) {
  return "[" + std::to_string(b) + ", " + std::to_string(e) + "]";
}

inline std::string json_kind(const json_value& j) { return j.type_name(); }

// Parses untrusted JSON, refusing duplicate keys
// (a repeated tensor name would otherwise silently shadow the first) and
// nesting deeper than any valid header needs (bounds memory and recursion).
inline json_value parse_untrusted_json(std::string_view text, const std::string& source, std::string_view what) {
  constexpr int max_depth = 16;
  std::vector<std::unordered_set<std::string>> keys;
  auto on_event = [&](int depth, json_value::parse_event_t ev, json_value& parsed) -> bool {
    if (depth > max_depth)
      throw io_error(source + ": " + std::string(what) + " nests deeper than " + std::to_string(max_depth) +
                     " levels");
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

inline bool safetensors_dtype(std::string_view s, twin::dtype& out) {
  constexpr twin::dtype all[] = {twin::dtype::f64, twin::dtype::f32, twin::dtype::f16, twin::dtype::bf16,
                                 twin::dtype::i64, twin::dtype::i32, twin::dtype::i16, twin::dtype::i8,
                                 twin::dtype::u8,  twin::dtype::boolean};
  for (twin::dtype t : all)
    if (s == dtype_name(t)) {
      out = t;
      return true;
    }
  return false;
}

inline Metadata parse_metadata_object(const json_value& m, const std::string& source, std::string_view where,
                                      std::string_view skip = {}) {
  if (!m.is_object())
    throw io_error(source + ": " + std::string(where) + " is a JSON " + json_kind(m) + ", expected an object");
  Metadata out;
  for (const auto& [k, v] : m.items()) {
    if (!skip.empty() && k == skip) continue;
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

inline SafetensorsEntry parse_entry(const std::string& name, const json_value& e, std::uint64_t data_bytes,
                                    const std::string& source) {
  const std::string who = source + ": tensor " + quote_name(name);
  if (!e.is_object()) throw io_error(who + " is a JSON " + json_kind(e) + ", expected an object");
  SafetensorsEntry out;
  out.name = name;

  const auto dt = e.find("dtype");
  if (dt == e.end() || !dt->is_string()) throw io_error(who + " has no dtype string");
  const auto& dts = dt->get_ref<const std::string&>();
  if (!safetensors_dtype(dts, out.dtype))
    throw io_error(who + " has unknown dtype " + quote_name(dts) + " (expected one of F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)");

  const auto sh = e.find("shape");
  if (sh == e.end() || !sh->is_array()) throw io_error(who + " has no shape array");
  if (sh->size() > TWIN_MAX_RANK)
    throw io_error(who + " has rank " + std::to_string(sh->size()) + ", more than TWIN_MAX_RANK (" +
                   std::to_string(TWIN_MAX_RANK) + ")");
  std::int64_t numel = 1;
  for (const auto& d : *sh) {
    std::uint64_t u = 0;
    if (as_u64(d, u)) {
      if (u > static_cast<std::uint64_t>(INT64_MAX)) throw io_error(who + " has extent " + std::to_string(u) + ", too large");
      out.shape.push_back(static_cast<std::int64_t>(u));
    } else if (d.is_number_integer()) {
      throw io_error(who + " has negative extent " + std::to_string(d.get<std::int64_t>()) + " in its shape");
    } else {
      throw io_error(who + " has a shape entry that is a JSON " + json_kind(d) + ", expected a non-negative integer");
    }
    const std::int64_t x = out.shape.back();
    if (x != 0 && numel > INT64_MAX / x)
      throw io_error(who + " has shape " + shape_string(out.shape) + " whose element count overflows");
    numel *= x;
  }
  const auto es = static_cast<std::int64_t>(dtype_size(out.dtype));
  if (numel > INT64_MAX / es)
    throw io_error(who + " has shape " + shape_string(out.shape) + " whose byte size overflows");
  const auto nbytes = static_cast<std::uint64_t>(numel * es);

  const auto off = e.find("data_offsets");
  if (off == e.end() || !off->is_array() || off->size() != 2 || !as_u64((*off)[0], out.begin) ||
      !as_u64((*off)[1], out.end))
    throw io_error(who + " needs data_offsets [begin, end] of two non-negative integers");
  const std::string offs = offsets_string(out.begin, out.end);
  if (out.begin > out.end) throw io_error(who + " data_offsets " + offs + " end before they begin");
  if (out.end > data_bytes)
    throw io_error(who + " data_offsets " + offs + " exceed the data section (" + std::to_string(data_bytes) +
                   " bytes)");
  if (out.end - out.begin != nbytes)
    throw io_error(who + " data_offsets " + offs + " span " + std::to_string(out.end - out.begin) + " bytes but " +
                   std::string(dtype_name(out.dtype)) + " " + shape_string(out.shape) + " needs " +
                   std::to_string(nbytes) + " (size mismatch)");
  return out;
}

// Validates the JSON header given the size of the data section behind it.
inline SafetensorsHeader parse_header_json(std::string_view json, std::uint64_t data_bytes, const std::string& source) {
  const json_value j = parse_untrusted_json(json, source, "header");
  if (!j.is_object()) throw io_error(source + ": header is a JSON " + json_kind(j) + ", expected an object");
  SafetensorsHeader h;
  h.data_bytes = data_bytes;
  for (const auto& [k, v] : j.items()) {
    if (k == "__metadata__")
      h.metadata = parse_metadata_object(v, source, "__metadata__");
    else
      h.tensors.push_back(parse_entry(k, v, data_bytes, source));
  }
  // Data order is the order the writer laid tensors out (state-dict order);
  // an empty tensor sorts before a non-empty one at the same offset, as written.
  std::stable_sort(h.tensors.begin(), h.tensors.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  const SafetensorsEntry* prev = nullptr;
  for (const auto& t : h.tensors) {
    if (t.begin == t.end) continue;  // empty tensors occupy no bytes
    if (prev && t.begin < prev->end)
      throw io_error(source + ": tensors " + quote_name(prev->name) + " " + offsets_string(prev->begin, prev->end) +
                     " and " + quote_name(t.name) + " " + offsets_string(t.begin, t.end) + " overlap");
    if (!prev || t.end > prev->end) prev = &t;
  }
  return h;
}

inline std::uint64_t read_le64(const std::byte* p) noexcept {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<std::uint64_t>(p[i]);
  return v;
}

// Checks the 8-byte length prefix against the file size; returns the header length.
inline std::uint64_t check_header_length(std::uint64_t n, std::uint64_t file_size, const std::string& source) {
  if (n > safetensors_max_header_bytes)
    throw io_error(source + ": header length " + std::to_string(n) + " exceeds the 100 MB limit");
  if (n > file_size - 8)
    throw io_error(source + ": header length " + std::to_string(n) + " exceeds the file (" +
                   std::to_string(file_size) + " bytes)");
  return n;
}

inline void check_file_size(std::uint64_t file_size, const std::string& source) {
  if (file_size < 8)
    throw io_error(source + ": file is " + std::to_string(file_size) +
                   " bytes, too short for the 8-byte header length (truncated?)");
}

}  // namespace detail

// Parses and validates the header of a whole safetensors file held in memory.
inline SafetensorsHeader parse_safetensors_header(std::span<const std::byte> file, std::string_view source) {
  const std::string src(source);
  detail::check_file_size(file.size(), src);
  const std::uint64_t n = detail::check_header_length(detail::read_le64(file.data()), file.size(), src);
  const std::string_view json(reinterpret_cast<const char*>(file.data()) + 8, static_cast<std::size_t>(n));
  SafetensorsHeader h = detail::parse_header_json(json, file.size() - 8 - n, src);
  h.data_start = 8 + n;
  return h;
}

// Tensors viewing `file` (kept alive by `keepalive`) after full validation.
// A tensor whose bytes are not aligned for its dtype (possible in files from
// other writers) is copied into aligned memory instead of viewed.
inline LoadedCheckpoint parse_safetensors(std::span<const std::byte> file, std::shared_ptr<const void> keepalive,
                                          std::string_view source) {
  const SafetensorsHeader h = parse_safetensors_header(file, source);
  LoadedCheckpoint out;
  out.metadata = h.metadata;
  for (const auto& e : h.tensors) {
    const std::byte* p = file.data() + h.data_start + e.begin;
    const std::size_t es = dtype_size(e.dtype);
    if (reinterpret_cast<std::uintptr_t>(p) % es == 0) {
      out.tensors.insert(e.name, Tensor::borrow(keepalive, p, e.dtype, e.shape));
    } else {
      Tensor t(e.dtype, e.shape);
      if (t.nbytes()) std::memcpy(t.mutable_data(), p, t.nbytes());
      out.tensors.insert(e.name, std::move(t));
    }
  }
  return out;
}

// Parses a model.safetensors.index.json: {"metadata": {...}, "weight_map":
// {tensor: shard}}. HF writes "metadata": {"total_size": <int>}; that key is
// bookkeeping and skipped, every other metadata value must be a string.
inline SafetensorsIndex parse_safetensors_index(std::string_view json, std::string_view source) {
  const std::string src(source);
  const detail::json_value j = detail::parse_untrusted_json(json, src, "index");
  if (!j.is_object()) throw io_error(src + ": index is a JSON " + detail::json_kind(j) + ", expected an object");
  SafetensorsIndex idx;
  if (const auto m = j.find("metadata"); m != j.end() && !m->is_null())
    idx.metadata = detail::parse_metadata_object(*m, src, "metadata", "total_size");
  const auto wm = j.find("weight_map");
  if (wm == j.end() || !wm->is_object()) throw io_error(src + ": index has no weight_map object");
  std::unordered_set<std::string> seen;
  for (const auto& [name, shard] : wm->items()) {
    if (!shard.is_string())
      throw io_error(src + ": weight_map entry " + detail::quote_name(name) + " is a JSON " + detail::json_kind(shard) +
                     ", expected a shard file name");
    const auto& s = shard.get_ref<const std::string&>();
    // Shards live next to the index; anything else could reach outside it.
    const std::filesystem::path sp(s);
    bool escapes = s.empty() || sp.is_absolute() || s.find('\0') != std::string::npos;
    for (const auto& part : sp)
      if (part == "..") escapes = true;
    if (escapes)
      throw io_error(src + ": weight_map entry " + detail::quote_name(name) + " names shard " + detail::quote_name(s) +
                     ", which is not a file inside the index's folder");
    if (seen.insert(s).second) idx.shards.push_back(s);
    idx.weight_map.emplace_back(name, s);
  }
  // Shard names (model-00001-of-00003...) sort in the order they were written.
  std::sort(idx.shards.begin(), idx.shards.end());
  return idx;
}

// ---------------------------------------------------------------------------
// Loading from disk.

namespace detail {

inline LoadedCheckpoint load_single(const std::filesystem::path& path) {
  auto map = MappedFile::open(path);
  std::shared_ptr<const void> keepalive(map, map->data());
  LoadedCheckpoint out = parse_safetensors(map->bytes(), std::move(keepalive), path.string());
  out.files.push_back(std::move(map));
  return out;
}

inline std::string read_small_file(const std::filesystem::path& path, std::uint64_t limit) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw io_error(path.string() + ": no such file");
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) throw io_error(path.string() + ": cannot read its size: " + ec.message());
  if (size > limit)
    throw io_error(path.string() + ": is " + std::to_string(size) + " bytes, over the " + std::to_string(limit) +
                   "-byte limit");
  std::ifstream in(path, std::ios::binary);
  std::string s(static_cast<std::size_t>(size), '\0');
  if (!in || !in.read(s.data(), static_cast<std::streamsize>(size)))
    throw io_error(path.string() + ": cannot read");
  return s;
}

inline LoadedCheckpoint load_sharded(const std::filesystem::path& index_path) {
  const std::string src = index_path.string();
  const SafetensorsIndex idx =
      parse_safetensors_index(read_small_file(index_path, safetensors_max_header_bytes), src);
  const std::filesystem::path dir = index_path.parent_path();
  std::unordered_map<std::string, std::string> shard_of;
  for (const auto& [name, shard] : idx.weight_map) shard_of.emplace(name, shard);

  // Every shard must exist before any is mapped, so a missing download is
  // reported as such rather than as a partial checkpoint.
  for (const auto& s : idx.shards) {
    std::error_code ec;
    if (!std::filesystem::exists(dir / s, ec)) {
      const auto it = std::find_if(idx.weight_map.begin(), idx.weight_map.end(),
                                   [&](const auto& p) { return p.second == s; });
      throw io_error(src + ": shard " + quote_name(s) + " (listed for tensor " + quote_name(it->first) +
                     ") does not exist");
    }
  }
  LoadedCheckpoint out;
  Metadata shard_meta;
  for (const auto& s : idx.shards) {
    LoadedCheckpoint part = load_single(dir / s);
    for (auto& [name, t] : part.tensors) {
      const auto it = shard_of.find(name);
      if (it == shard_of.end())
        throw io_error(src + ": shard " + quote_name(s) + " holds tensor " + quote_name(name) + ", which weight_map does not list");
      if (it->second != s)
        throw io_error(src + ": shard " + quote_name(s) + " holds tensor " + quote_name(name) + ", which weight_map places in " +
                       quote_name(it->second));
      out.tensors.insert(name, std::move(t));
    }
    shard_meta.insert(part.metadata.begin(), part.metadata.end());  // first shard wins
    out.files.push_back(std::move(part.files.front()));
  }
  for (const auto& [name, shard] : idx.weight_map)
    if (!out.tensors.contains(name))
      throw io_error(src + ": tensor " + quote_name(name) + " listed in weight_map is missing from shard " + quote_name(shard));
  out.metadata = idx.metadata;  // the index's own metadata wins over the shards'
  out.metadata.insert(shard_meta.begin(), shard_meta.end());
  return out;
}

}  // namespace detail

// A .safetensors file, or a model.safetensors.index.json (sharded), or a
// folder holding one of them (the index first).
inline LoadedCheckpoint load_safetensors(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    if (std::filesystem::exists(path / safetensors_index_name, ec)) return detail::load_sharded(path / safetensors_index_name);
    if (std::filesystem::exists(path / "model.safetensors", ec)) return detail::load_single(path / "model.safetensors");
    throw io_error(path.string() + ": folder holds neither " + std::string(safetensors_index_name) +
                   " nor model.safetensors");
  }
  if (path.extension() == ".json") return detail::load_sharded(path);
  return detail::load_single(path);
}

// Drops the resident pages of tensor `t` if it views one of `c`'s files
// (streaming work calls it for tensors it is done with, keeping resident
// memory flat); touching `t` again reads the pages back from the file.
inline void release_pages(const LoadedCheckpoint& c, const Tensor& t) noexcept {
  for (const auto& f : c.files) f->release(t.data(), t.nbytes());
}

// Names, dtypes, shapes and metadata of one .safetensors file without
// mapping its data (reads only the header).
inline SafetensorsHeader read_safetensors_header(const std::filesystem::path& path) {
  const std::string src = path.string();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw io_error(src + ": no such file");
  const std::uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) throw io_error(src + ": cannot read its size: " + ec.message());
  detail::check_file_size(size, src);
  std::ifstream in(path, std::ios::binary);
  std::byte len[8];
  if (!in.read(reinterpret_cast<char*>(len), 8)) throw io_error(src + ": cannot read the header length");
  const std::uint64_t n = detail::check_header_length(detail::read_le64(len), size, src);
  std::string json(static_cast<std::size_t>(n), '\0');
  if (!in.read(json.data(), static_cast<std::streamsize>(n))) throw io_error(src + ": cannot read the header");
  SafetensorsHeader h = detail::parse_header_json(json, size - 8 - n, src);
  h.data_start = 8 + n;
  return h;
}

// ---------------------------------------------------------------------------
// Writing.

namespace detail {

inline std::string json_dump(const json_value& j, const std::string& source, int indent = -1) {
  try {
    return j.dump(indent);
  } catch (const json_value::exception&) {
    throw io_error(source + ": a tensor name or metadata string is not valid UTF-8");
  }
}

// The header (length prefix included), padded with spaces to a multiple of 8
// so the data section starts 8-byte aligned.
inline std::string safetensors_header_bytes(std::span<const NamedTensorView> tensors, const Metadata& metadata,
                                            const std::string& source) {
  // Built entry by entry (json only escapes the strings) so the header keeps
  // the tensors' order and costs linear time in their number.
  std::string json = "{";
  if (!metadata.empty()) {
    json_value m = json_value::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    json += "\"__metadata__\":" + json_dump(m, source);
  }
  std::unordered_set<std::string_view> names;
  std::uint64_t offset = 0;
  for (const auto& [name, v] : tensors) {
    if (name == "__metadata__") throw io_error(source + ": '__metadata__' is reserved and cannot name a tensor");
    if (!names.insert(name).second)
      throw io_error(source + ": tensor " + quote_name(name) + " appears twice (duplicate names)");
    if (v.device().kind != twin::device::cpu)
      throw io_error(source + ": tensor " + quote_name(name) + " is not in host memory; copy it to the CPU first");
    const auto nbytes = static_cast<std::uint64_t>(v.numel()) * v.element_size();
    json_value e = json_value::object();
    e["dtype"] = std::string(dtype_name(v.dtype()));
    e["shape"] = std::vector<std::int64_t>(v.shape().begin(), v.shape().end());
    e["data_offsets"] = {offset, offset + nbytes};
    if (json.size() > 1) json += ',';
    json += json_dump(json_value(name), source) + ":" + json_dump(e, source);
    offset += nbytes;
  }
  json += '}';
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  std::uint64_t n = json.size();
  for (int i = 0; i < 8; ++i, n >>= 8) out[static_cast<std::size_t>(i)] = static_cast<char>(n & 0xff);
  return out + json;
}

// Writes a whole safetensors image through sink(const void*, size_t).
template <class Sink>
void write_safetensors_to(Sink&& sink, std::span<const NamedTensorView> tensors, const Metadata& metadata,
                          const std::string& source) {
  const std::string header = safetensors_header_bytes(tensors, metadata, source);
  sink(header.data(), header.size());
  std::vector<std::byte> buf;
  for (const auto& [name, v] : tensors) {
    const std::size_t es = v.element_size();
    if (v.is_contiguous()) {
      if (v.numel()) sink(v.data(), static_cast<std::size_t>(v.numel()) * es);
      continue;
    }
    // Strided views are gathered in bounded chunks.
    const std::int64_t chunk = std::max<std::int64_t>(1, (std::int64_t{1} << 20) / static_cast<std::int64_t>(es));
    buf.resize(static_cast<std::size_t>(chunk) * es);
    const auto* base = static_cast<const std::byte*>(v.data());
    for (std::int64_t s = 0; s < v.numel(); s += chunk) {
      const std::int64_t c = std::min(chunk, v.numel() - s);
      for_each_offset(v, s, c, [&](std::int64_t k, std::int64_t off) {
        std::memcpy(buf.data() + static_cast<std::size_t>(k) * es, base + off * static_cast<std::int64_t>(es), es);
      });
      sink(buf.data(), static_cast<std::size_t>(c) * es);
    }
  }
}

// 5 digits as HF numbers shards (model-00001-of-00003); more when needed.
inline std::string zero_padded(std::size_t v) {
  std::string s = std::to_string(v);
  return s.size() < 5 ? std::string(5 - s.size(), '0') + s : s;
}

inline std::vector<NamedTensorView> views_of(const StateDict& state) {
  std::vector<NamedTensorView> v;
  v.reserve(state.size());
  for (const auto& [name, t] : state) v.emplace_back(name, t.view());
  return v;
}

}  // namespace detail

// The bytes of a safetensors file holding `tensors` (in memory; for tests,
// fuzzing and small payloads).
inline std::vector<std::byte> serialize_safetensors(std::span<const NamedTensorView> tensors,
                                                    const Metadata& metadata = {}) {
  std::vector<std::byte> out;
  detail::write_safetensors_to(
      [&](const void* p, std::size_t n) {
        const auto* b = static_cast<const std::byte*>(p);
        out.insert(out.end(), b, b + n);
      },
      tensors, metadata, "<memory>");
  return out;
}
inline std::vector<std::byte> serialize_safetensors(const StateDict& state, const Metadata& metadata = {}) {
  const auto views = detail::views_of(state);
  return serialize_safetensors(std::span<const NamedTensorView>(views), metadata);
}

// Writes atomically: the target is replaced only by a complete, synced file;
// on failure it is left as it was and no temporary file remains.
inline void save_safetensors(const std::filesystem::path& path, std::span<const NamedTensorView> tensors,
                             const Metadata& metadata = {}) {
  const std::string src = path.string();
  // The header is built (and validated) before the temporary file exists.
  (void)detail::safetensors_header_bytes(tensors, metadata, src);
  AtomicFile f(path);
  detail::write_safetensors_to([&](const void* p, std::size_t n) { f.write(p, n); }, tensors, metadata, src);
  f.commit();
}

inline void save_safetensors(const std::filesystem::path& path, const StateDict& state, const Metadata& metadata = {}) {
  const auto views = detail::views_of(state);
  save_safetensors(path, std::span<const NamedTensorView>(views), metadata);
}

// Writes `state` as <prefix>-0000X-of-0000N.safetensors shards of at most
// `max_shard_bytes` of tensor data each (a larger tensor gets a shard of its
// own) plus model.safetensors.index.json, in folder `dir` (which must
// exist). Each file is written atomically and the index last, so the index
// never names a shard that is not complete. Returns the index's path.
inline std::filesystem::path save_safetensors_sharded(const std::filesystem::path& dir, const StateDict& state,
                                                      const Metadata& metadata, std::uint64_t max_shard_bytes,
                                                      std::string_view prefix = "model") {
  if (max_shard_bytes == 0) throw argument_error("save_safetensors_sharded: max_shard_bytes must be positive");
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    throw io_error((dir / safetensors_index_name).string() + ": folder '" + dir.string() + "' does not exist");
  const auto views = detail::views_of(state);
  std::vector<std::vector<NamedTensorView>> shards(1);
  std::uint64_t in_shard = 0, total = 0;
  for (const auto& nv : views) {
    const auto nbytes = static_cast<std::uint64_t>(nv.second.numel()) * nv.second.element_size();
    if (!shards.back().empty() && in_shard + nbytes > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(nv);
    in_shard += nbytes;
    total += nbytes;
  }
  const std::size_t n = shards.size();
  detail::json_value weight_map = detail::json_value::object();
  for (std::size_t i = 0; i < n; ++i) {
    const std::string file = std::string(prefix) + "-" + detail::zero_padded(i + 1) + "-of-" +
                             detail::zero_padded(n) + ".safetensors";
    save_safetensors(dir / file, std::span<const NamedTensorView>(shards[i]), metadata);
    for (const auto& nv : shards[i]) weight_map[nv.first] = file;
  }
  detail::json_value meta = detail::json_value::object();
  for (const auto& [k, v] : metadata) meta[k] = v;
  meta["total_size"] = total;
  detail::json_value index = detail::json_value::object();
  index["metadata"] = std::move(meta);
  index["weight_map"] = std::move(weight_map);
  const std::filesystem::path index_path = dir / safetensors_index_name;
  const std::string text = detail::json_dump(index, index_path.string(), 2) + "\n";
  AtomicFile f(index_path);
  f.write(text.data(), text.size());
  f.commit();
  return index_path;
}

}  // namespace twin
