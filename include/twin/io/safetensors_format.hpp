// The safetensors format itself (docs/design.md §5), as pure functions over
// bytes: parsing the header, its tensor entries and the sharded index,
// validated as untrusted input, and serializing tensors into memory. No file
// is opened here; the fuzzer runs exactly this code.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "twin/convert.hpp"
#include "twin/dtype.hpp"
#include "twin/error.hpp"
#include "twin/io/json.hpp"
#include "twin/metadata.hpp"
#include "twin/shape.hpp"
#include "twin/state_dict.hpp"
#include "twin/tensor.hpp"

namespace twin {

static_assert(std::endian::native == std::endian::little,
              "twin maps safetensors data (little-endian) directly and needs a little-endian host");

class MappedFile;

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
  Metadata metadata;  // its string values (HF's total_size, total_parameters skipped)
};

// Larger headers are refused before any allocation (the format's own limit).
inline constexpr std::uint64_t safetensors_max_header_bytes = 100'000'000;
inline constexpr const char* safetensors_index_name = "model.safetensors.index.json";

namespace detail {

inline std::string offsets_string(std::uint64_t b, std::uint64_t e) {
  return "[" + std::to_string(b) + ", " + std::to_string(e) + "]";
}

inline bool safetensors_dtype(std::string_view s, twin::dtype& out) {
  for (twin::dtype t : all_dtypes)
    if (s == dtype_name(t)) {
      out = t;
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
    throw io_error(who + " has unknown dtype " + quote_name(dts) + " (expected one of " + dtype_name_list() + ")");

  const auto sh = e.find("shape");
  if (sh == e.end() || !sh->is_array()) throw io_error(who + " has no shape array");
  if (sh->size() > TWIN_MAX_RANK)
    throw io_error(who + " has rank " + std::to_string(sh->size()) + ", more than TWIN_MAX_RANK (" +
                   std::to_string(TWIN_MAX_RANK) + ")");
  std::int64_t numel = 1;
  for (const auto& d : *sh) {
    std::uint64_t u = 0;
    if (as_u64(d, u)) {
      if (u > static_cast<std::uint64_t>(INT64_MAX))
        throw io_error(who + " has extent " + std::to_string(u) + ", too large");
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
    if (k == "__metadata__") {
      if (!v.is_null()) h.metadata = parse_metadata_object(v, source, "__metadata__");  // null: none (serde's Option)
    } else {
      h.tensors.push_back(parse_entry(k, v, data_bytes, source));
    }
  }
  // Data order is the order the writer laid tensors out (state-dict order);
  // an empty tensor sorts before a non-empty one at the same offset, as written.
  std::stable_sort(h.tensors.begin(), h.tensors.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  // The tensors must tile the data section exactly: no overlap, and no hole,
  // since bytes that no tensor covers are how polyglot files smuggle a
  // second payload (the format forbids them).
  const SafetensorsEntry* prev = nullptr;
  std::uint64_t covered = 0;
  for (const auto& t : h.tensors) {
    if (t.begin == t.end) continue;  // empty tensors occupy no bytes
    if (prev && t.begin < prev->end)
      throw io_error(source + ": tensors " + quote_name(prev->name) + " " + offsets_string(prev->begin, prev->end) +
                     " and " + quote_name(t.name) + " " + offsets_string(t.begin, t.end) + " overlap");
    if (t.begin > covered)
      throw io_error(source + ": data bytes " + offsets_string(covered, t.begin) + " before tensor " +
                     quote_name(t.name) + " belong to no tensor (a hole, which the format forbids)");
    if (!prev || t.end > prev->end) prev = &t;
    covered = std::max(covered, t.end);
  }
  if (covered < data_bytes)
    throw io_error(source + ": data bytes " + offsets_string(covered, data_bytes) +
                   " at the end of the file belong to no tensor (a hole, which the format forbids)");
  return h;
}

// The 8-byte little-endian header length at the start of a file of
// `file_size` bytes, checked against the file and the format's limit.
inline std::uint64_t header_length(std::span<const std::byte> prefix, std::uint64_t file_size,
                                   const std::string& source) {
  if (file_size < 8 || prefix.size() < 8)
    throw io_error(source + ": file is " + std::to_string(file_size) +
                   " bytes, too short for the 8-byte header length (truncated?)");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<std::uint64_t>(prefix[static_cast<std::size_t>(i)]);
  if (n > safetensors_max_header_bytes)
    throw io_error(source + ": header length " + std::to_string(n) + " exceeds the 100 MB limit");
  if (n > file_size - 8)
    throw io_error(source + ": header length " + std::to_string(n) + " exceeds the file (" + std::to_string(file_size) +
                   " bytes)");
  return n;
}

}  // namespace detail

// Parses and validates the header of a whole safetensors file held in memory.
inline SafetensorsHeader parse_safetensors_header(std::span<const std::byte> file, std::string_view source) {
  const std::string src(source);
  const std::uint64_t n = detail::header_length(file.first(std::min<std::size_t>(file.size(), 8)), file.size(), src);
  const std::string_view json(reinterpret_cast<const char*>(file.data()) + 8, static_cast<std::size_t>(n));
  SafetensorsHeader h = detail::parse_header_json(json, file.size() - 8 - n, src);
  h.data_start = 8 + n;
  return h;
}

// Tensors viewing `file` (kept alive by `keepalive`) after full validation.
// A tensor whose bytes are not aligned for its dtype (possible in files from
// other writers) is copied into aligned memory instead of viewed.
inline LoadedCheckpoint parse_safetensors(std::span<const std::byte> file, const std::shared_ptr<const void>& keepalive,
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
// {tensor: shard}}. HF writes "metadata": {"total_size": <int>} (transformers
// ≥ 4.53 and mlx-lm add "total_parameters": <int>); values that are not
// strings are bookkeeping and skipped, the strings kept.
inline SafetensorsIndex parse_safetensors_index(std::string_view json, std::string_view source) {
  const std::string src(source);
  const detail::json_value j = detail::parse_untrusted_json(json, src, "index");
  if (!j.is_object()) throw io_error(src + ": index is a JSON " + detail::json_kind(j) + ", expected an object");
  SafetensorsIndex idx;
  if (const auto m = j.find("metadata"); m != j.end() && !m->is_null())
    idx.metadata = detail::parse_metadata_object(*m, src, "metadata", true);
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
// Serializing (in memory; writing files is safetensors_write.hpp).

// A tensor to write: name and any CPU view (strided views are written contiguously).
using NamedTensorView = std::pair<std::string, ConstTensorView>;

namespace detail {

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
    json += json_quote(name, source);
    json += ':';
    json += json_dump(e, source);
    offset += nbytes;
  }
  json += '}';
  json.append((8 - json.size() % 8) % 8, ' ');
  // Readers (the reference's and ours) refuse a larger header.
  if (json.size() > safetensors_max_header_bytes)
    throw io_error(source + ": the header would be " + std::to_string(json.size()) + " bytes, over safetensors' " +
                   std::to_string(safetensors_max_header_bytes) + "-byte limit (too many tensors for one file)");
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

}  // namespace twin
