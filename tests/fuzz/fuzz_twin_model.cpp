// libFuzzer target for the Twin model loader: every input is parsed as a
// safetensors file and assembled into a TwinModel (+ router). Properties:
// nothing but twin::io_error escapes, no sanitizer report, and a model that
// is accepted can be fused (every module's factors are in bounds).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "twin/fuse/dynamic_fuser.hpp"
#include "twin/io/twin_model_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  const std::shared_ptr<const void> keepalive(data, [](const void*) {});
  twin::TwinModelFile f;
  try {
    f = twin::twin_model_from_checkpoint(twin::parse_safetensors(bytes, keepalive, "fuzz"), "fuzz");
  } catch (const twin::io_error&) {
    return 0;
  }
  // Accepted: fusing with each task on top in turn must touch only valid
  // memory (excluded copies may differ in shape per task). Shapes are
  // bounded by the input size, so this stays cheap.
  try {
    const twin::DynamicFuser fuser(f.model);
    const std::size_t T = f.model.num_tasks();
    for (std::size_t top = 0; top < T; ++top) {
      std::vector<float> w(T, 0.5f / static_cast<float>(T));
      w[top] += 0.5f;
      for (const auto& e : f.model.entries()) {
        twin::Tensor out(twin::dtype::f32, fuser.output_shape(e.name, w));
        fuser.fuse_tensor(e.name, out, w);
      }
    }
  } catch (const twin::error&) {
    // A model the loader accepted but the fuser refuses is a loader bug.
    std::abort();
  }
  return 0;
}
