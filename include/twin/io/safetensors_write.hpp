// Writing safetensors checkpoints (docs/design.md §5): single files and
// size-sharded ones with their index, always atomically (a temporary file
// renamed into place), so a reader never sees a half-written file.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "twin/error.hpp"
#include "twin/io/atomic_file.hpp"
#include "twin/io/json.hpp"
#include "twin/io/safetensors_format.hpp"
#include "twin/metadata.hpp"
#include "twin/state_dict.hpp"
#include "twin/tensor_view.hpp"

namespace twin {

namespace detail {

// 5 digits as HF numbers shards (model-00001-of-00003); more when needed.
inline std::string zero_padded(std::size_t v) {
  std::string s = std::to_string(v);
  return s.size() < 5 ? std::string(5 - s.size(), '0') + s : s;
}

}  // namespace detail

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
    const std::string file =
        std::string(prefix) + "-" + detail::zero_padded(i + 1) + "-of-" + detail::zero_padded(n) + ".safetensors";
    save_safetensors(dir / file, std::span<const NamedTensorView>(shards[i]), metadata);
    for (const auto& nv : shards[i]) weight_map[nv.first] = file;
  }
  detail::json_value meta = detail::json_value::object();
  for (const auto& [k, v] : metadata) meta[k] = v;
  meta["total_size"] = total;
  detail::json_value index = detail::json_value::object();
  index["metadata"] = std::move(meta);
  index["weight_map"] = std::move(weight_map);
  std::filesystem::path index_path = dir / safetensors_index_name;
  const std::string text = detail::json_dump(index, index_path.string(), 2) + "\n";
  AtomicFile f(index_path);
  f.write(text.data(), text.size());
  f.commit();
  return index_path;
}

}  // namespace twin