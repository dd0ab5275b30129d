// The paper's tables, reproduced at small scale on real data.
//
// Twin-Merging (Lu et al., NeurIPS 2024) is evaluated on RoBERTa/GLUE,
// Qwen-14B and ViT-B/32 experts that cannot be downloaded here. This program
// builds a faithful analog from Fashion-MNIST (Debian's dataset-fashion-mnist):
// 8 tasks are fixed views of the images (rotated, inverted, pixel-permuted,
// ...), each with its own 10-way head; an MLP body is pretrained once as a
// denoising autoencoder; every expert fine-tunes body + head from it with one
// recipe; then each merging method of the paper builds one model, Twin-Merging
// adds compressed exclusive knowledge and a router, and all are scored on each
// task's test split. Markdown on stdout and in --out, results/summary.json,
// SVG figures. Checkpoints are cached as safetensors and reused.
//
//   paper_tables [--quick|--smoke] [--seed S] [--tasks LIST|N] [--rank R]
//                [--out DIR] [--data DIR] [--cache DIR] [--threads N]
#include <cstdio>
#include <exception>
#include <optional>

#include "paper/claims.hpp"
#include "paper/context.hpp"
#include "paper/figures.hpp"
#include "paper/options.hpp"
#include "paper/prepare.hpp"
#include "paper/table2.hpp"
#include "paper/table4.hpp"
#include "paper/table5.hpp"
#include "paper/table7.hpp"
#include "paper/write.hpp"

using namespace paper;

int main(int argc, char** argv) try {
  const auto t_start = Clock::now();
  const std::optional<Config> cfg = parse_options(argc, argv);
  if (!cfg) return 0;  // --help
  // In place and never moved: the shared models' fusers point into it.
  Context cx(*cfg, t_start);
  prepare_data(cx);
  prepare_checkpoints(cx);
  evaluate_experts(cx);
  build_shared_models(cx);
  // Tables 4, 5 and 7 reuse what Table 2 measured, so they come after it.
  Results res;
  res.table2 = table2(cx);
  res.table4 = table4(cx, res.table2);
  res.table5 = table5(cx, res.table2);
  res.table7 = table7(cx, res.table2.groupwise);
  res.figures = figures(cx);
  res.storage = storage_study(cx, res.table2);
  res.claims = paper_vs_ours(cx, res.table2, res.table4, res.table5, res.figures, res.storage);
  write_outputs(cx, res);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
