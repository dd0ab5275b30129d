// Writes a RoBERTa-base-shaped base model and T experts as safetensors files
// (the tensors of bench_common.hpp), the inputs of bench_build.sh.
//   make_checkpoints DIR [--experts 8] [--layers 12] [--dtype f32]
#include <cstdio>
#include <filesystem>

#include "bench_common.hpp"
#include "twin/io/safetensors.hpp"

int main(int argc, char** argv) try {
  if (argc < 2 || std::string(argv[1]) == "--help") {
    std::fprintf(stderr, "usage: make_checkpoints DIR [--experts N] [--layers L] [--dtype f32|f16|bf16]\n");
    return argc < 2 ? 2 : 0;
  }
  const std::filesystem::path dir = argv[1];
  int T = 8, layers = 12;
  twin::dtype dt = twin::dtype::f32;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--experts") T = std::atoi(argv[i + 1]);
    else if (a == "--layers") layers = std::atoi(argv[i + 1]);
    else if (a == "--dtype") dt = twin::parse_dtype(argv[i + 1]);
    else throw twin::argument_error("unknown option " + a);
  }
  std::filesystem::create_directories(dir);
  const auto specs = bench::roberta_base_specs(layers);
  for (int m = 0; m <= T; ++m) {
    const auto path = dir / (m == 0 ? std::string("base.safetensors") : "expert" + std::to_string(m) + ".safetensors");
    twin::save_safetensors(path, bench::make_model(specs, m, dt));
    std::printf("%s\n", path.c_str());
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
