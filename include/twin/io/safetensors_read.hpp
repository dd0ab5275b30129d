// Loading safetensors checkpoints from disk (docs/design.md §5): single
// files and sharded ones (model.safetensors.index.json) are mapped, and every
// tensor is a zero-copy view of its file after full validation.
//
// Loaded tensors view the mapped file: a file truncated by another process
// while mapped makes reads of the lost pages fault (SIGBUS), as with any mmap.
// Replacing a file with save_safetensors is safe (rename keeps the old inode).
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>

#include "twin/error.hpp"
#include "twin/io/mmap.hpp"
#include "twin/io/safetensors_format.hpp"
#include "twin/tensor.hpp"

namespace twin {

// Loading from disk.

namespace detail {

inline LoadedCheckpoint load_single(const std::filesystem::path& path) {
  auto map = MappedFile::open(path);
  const std::shared_ptr<const void> keepalive(map, map->data());
  LoadedCheckpoint out = parse_safetensors(map->bytes(), keepalive, path.string());
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
  if (!in || !in.read(s.data(), static_cast<std::streamsize>(size))) throw io_error(path.string() + ": cannot read");
  return s;
}

inline LoadedCheckpoint load_sharded(const std::filesystem::path& index_path) {
  const std::string src = index_path.string();
  const SafetensorsIndex idx = parse_safetensors_index(read_small_file(index_path, safetensors_max_header_bytes), src);
  const std::filesystem::path dir = index_path.parent_path();
  std::unordered_map<std::string, std::string> shard_of;
  for (const auto& [name, shard] : idx.weight_map) shard_of.emplace(name, shard);

  // Every shard must exist before any is mapped, so a missing download is
  // reported as such rather than as a partial checkpoint.
  for (const auto& s : idx.shards) {
    std::error_code ec;
    if (!std::filesystem::exists(dir / s, ec)) {
      const auto it =
          std::find_if(idx.weight_map.begin(), idx.weight_map.end(), [&](const auto& p) { return p.second == s; });
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
        throw io_error(src + ": shard " + quote_name(s) + " holds tensor " + quote_name(name) +
                       ", which weight_map does not list");
      if (it->second != s)
        throw io_error(src + ": shard " + quote_name(s) + " holds tensor " + quote_name(name) +
                       ", which weight_map places in " + quote_name(it->second));
      out.tensors.insert(name, std::move(t));
    }
    shard_meta.insert(part.metadata.begin(), part.metadata.end());  // first shard wins
    out.files.push_back(std::move(part.files.front()));
  }
  for (const auto& [name, shard] : idx.weight_map)
    if (!out.tensors.contains(name))
      throw io_error(src + ": tensor " + quote_name(name) + " listed in weight_map is missing from shard " +
                     quote_name(shard));
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
    if (std::filesystem::exists(path / safetensors_index_name, ec))
      return detail::load_sharded(path / safetensors_index_name);
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
  std::ifstream in(path, std::ios::binary);
  std::array<std::byte, 8> len{};
  if (size >= 8 && !in.read(reinterpret_cast<char*>(len.data()), 8))
    throw io_error(src + ": cannot read the header length");
  const std::uint64_t n = detail::header_length(len, size, src);
  std::string json(static_cast<std::size_t>(n), '\0');
  if (!in.read(json.data(), static_cast<std::streamsize>(n))) throw io_error(src + ": cannot read the header");
  SafetensorsHeader h = detail::parse_header_json(json, size - 8 - n, src);
  h.data_start = 8 + n;
  return h;
}

}  // namespace twin
