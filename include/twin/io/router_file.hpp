// Router files (docs/design.md §5): a router's tensors (Router::to_state_dict)
// and the settings that rebuild it, as safetensors metadata under a prefix
// ("router." by default), alone in a file or inside a Twin model file. A
// corrupt router is an io_error naming the file, whichever file holds it.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "twin/error.hpp"
#include "twin/io/file_metadata.hpp"
#include "twin/io/safetensors.hpp"
#include "twin/metadata.hpp"
#include "twin/route/router.hpp"
#include "twin/state_dict.hpp"

namespace twin {

inline constexpr int router_format_version = 1;
inline constexpr std::string_view router_architecture = "mlp:linear-batchnorm-leakyrelu-dropout";

// The settings that, with the tensors, rebuild the router; keys carry the
// prefix so a model file can hold them beside its own.
inline Metadata router_metadata(const Router& r, std::string_view prefix = "router.") {
  const std::string p(prefix);
  const RouterConfig& c = r.config();
  return {{p + "format", "twin-router"},
          {p + "format_version", std::to_string(router_format_version)},
          {p + "architecture", std::string(router_architecture)},
          {p + "input_dim", std::to_string(c.input_dim)},
          {p + "num_tasks", std::to_string(c.num_tasks)},
          {p + "hidden", std::to_string(c.hidden_width())},
          {p + "depth", std::to_string(c.depth)},
          {p + "dropout", detail::format_double(c.dropout)},
          {p + "slope", detail::format_double(c.slope)},
          {p + "bn_eps", detail::format_double(c.bn_eps)},
          {p + "bn_momentum", detail::format_double(c.bn_momentum)}};
}

// The router stored under `prefix` in a loaded (untrusted) checkpoint;
// `source` names the file in errors, which are all io_errors.
inline Router router_from_checkpoint(const StateDict& tensors, const Metadata& meta, const std::string& source,
                                     std::string_view prefix = "router.") {
  const std::string p(prefix);
  constexpr std::string_view what = "twin router";
  detail::check_format(meta, p + "format", "twin-router", p + "format_version", router_format_version, source, what);
  if (const std::string& a = detail::metadata_field(meta, p + "architecture", source, what); a != router_architecture)
    throw io_error(source + ": router architecture '" + a + "' is not supported (this build reads '" +
                   std::string(router_architecture) + "')");
  RouterConfig c;
  c.input_dim = detail::metadata_int(meta, p + "input_dim", source, what);
  c.num_tasks = detail::metadata_int(meta, p + "num_tasks", source, what);
  c.hidden = detail::metadata_int(meta, p + "hidden", source, what);
  const std::int64_t depth = detail::metadata_int(meta, p + "depth", source, what);
  if (depth < 0 || depth > 64) throw io_error(source + ": router depth " + std::to_string(depth) + " is out of range");
  c.depth = static_cast<int>(depth);
  c.dropout = detail::metadata_double(meta, p + "dropout", source, what);
  c.slope = detail::metadata_double(meta, p + "slope", source, what);
  c.bn_eps = detail::metadata_double(meta, p + "bn_eps", source, what);
  c.bn_momentum = detail::metadata_double(meta, p + "bn_momentum", source, what);
  try {
    return Router::from_state_dict(c, tensors, prefix);
  } catch (const io_error&) {
    throw;
  } catch (const error& e) {
    throw io_error(source + ": router: " + e.what());
  }
}

// Writes the router alone, atomically.
inline void save_router(const std::filesystem::path& path, const Router& r) {
  save_safetensors(path, r.to_state_dict(), router_metadata(r));
}

// Reads a file written by save_router.
inline Router load_router(const std::filesystem::path& path) {
  const LoadedCheckpoint ck = load_safetensors(path);
  return router_from_checkpoint(ck.tensors, ck.metadata, path.string());
}

}  // namespace twin
