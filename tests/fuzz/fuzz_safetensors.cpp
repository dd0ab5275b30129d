// libFuzzer target for the safetensors readers: every input is parsed as a
// whole .safetensors file and as a model.safetensors.index.json. Properties:
// nothing but twin::io_error escapes, no sanitizer report, and every file
// that is accepted survives serialize -> parse with identical content.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string_view>

#include "twin/io/safetensors_format.hpp"

namespace {

// Reads every byte of every tensor so ASan sees any view that escapes the
// input buffer.
std::uint8_t touch(const twin::StateDict& s) {
  std::uint8_t acc = 0;
  for (const auto& [name, t] : s) {
    const auto* p = static_cast<const std::uint8_t*>(t.data());
    for (std::size_t i = 0; i < t.nbytes(); ++i) acc = static_cast<std::uint8_t>(acc ^ p[i]);
  }
  return acc;
}

void check_round_trip(const twin::LoadedCheckpoint& c) {
  const std::vector<std::byte> bytes = twin::serialize_safetensors(c.tensors, c.metadata);
  const twin::LoadedCheckpoint d = twin::parse_safetensors(bytes, nullptr, "round-trip");
  if (d.metadata != c.metadata || d.tensors.names() != c.tensors.names()) std::abort();
  for (const auto& [name, t] : c.tensors) {
    const twin::Tensor& u = d.tensors.at(name);
    if (u.dtype() != t.dtype() || u.nbytes() != t.nbytes() ||
        !std::equal(t.shape().begin(), t.shape().end(), u.shape().begin(), u.shape().end()) ||
        (t.nbytes() && std::memcmp(t.data(), u.data(), t.nbytes()) != 0))
      std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  // The input outlives every tensor below, so the keepalive owns nothing.
  const std::shared_ptr<const void> keepalive(data, [](const void*) {});
  try {
    const twin::LoadedCheckpoint c = twin::parse_safetensors(bytes, keepalive, "fuzz");
    volatile std::uint8_t sink = touch(c.tensors);
    (void)sink;
    // A file that was accepted must be writable and read back unchanged; a
    // failure here is a bug, so it is not caught below as an input error.
    try {
      check_round_trip(c);
    } catch (...) {
      std::abort();
    }
  } catch (const twin::io_error&) {
  }
  try {
    const twin::SafetensorsIndex idx =
        twin::parse_safetensors_index(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz-index");
    if (idx.weight_map.size() < idx.shards.size()) std::abort();
  } catch (const twin::io_error&) {
  }
  return 0;
}
