// Smoke test of the transformer reproduction: runs the built paper_vit (a ViT
// trained, merged and fused inside libtorch) in its smallest setting on real
// Fashion-MNIST data and checks, on the summary.json it writes, what holds
// whatever the absolute numbers: one-hot fusion with dense exclusive
// knowledge writes each expert's parameters back into the live torch::nn
// module, per-input fusion into the module equals θ* + Σ w_t v̂_t formed
// densely in double precision, every normalized score of Tables 2, 4 and 5
// is accuracy over its reference, the tables have the rows the claims read,
// and Twin-Merging stores less than the experts.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "paper_smoke.hpp"

#ifndef PAPER_VIT_EXE
#  error "PAPER_VIT_EXE must name the built paper_vit program"
#endif

using nlohmann::json;
using paper_smoke::find_row;
namespace fs = std::filesystem;

TEST_CASE("paper_vit --smoke: fusion into a live libtorch module is exact, tables complete") {
  if (!paper_smoke::fashion_mnist_installed()) {
    MESSAGE("Fashion-MNIST is not installed (Debian package dataset-fashion-mnist): skipped");
    return;
  }
  // Its own checkpoint cache, so that the test trains from scratch each time.
  const paper_smoke::Run run(PAPER_VIT_EXE, "twin_paper_vit_smoke", "--cache \"{out}/cache\"");
  for (const char* f : {"tables.md", "summary.json"}) CHECK_MESSAGE(fs::exists(run.out / f), f);
  const json& s = run.summary;
  const auto tasks = s.at("config").at("tasks").get<std::vector<std::string>>();
  const auto held = s.at("config").at("held_out_tasks").get<std::vector<std::string>>();
  REQUIRE(tasks.size() == 8);
  REQUIRE(held.size() == 2);

  // θ* + 1·(θ_t − θ*) is θ_t up to float rounding, parameter by parameter.
  CHECK(s.at("checks").at("onehot_dense_max_abs_diff").get<double>() <= 1e-5);
  // The module's output under fused weights = under the dense double reference.
  CHECK(s.at("checks").at("mixture_vs_dense_reference_rel_diff").get<double>() <= 1e-4);

  const json& t2 = s.at("table2");
  const json* ind = find_row(t2, "Individual");
  REQUIRE(ind);
  const auto ref = s.at("individual_accuracy").get<std::vector<double>>();
  REQUIRE(ref.size() == tasks.size());
  // Every normalized score of Tables 2 and 4 is 100 × accuracy / the expert's.
  for (const char* table : {"table2", "table4"})
    for (const json& r : s.at(table))
      for (std::size_t t = 0; t < tasks.size(); ++t) {
        INFO(table << " " << r.at("method").get<std::string>() << " " << tasks[t]);
        const json& p = r.at("per_task").at(tasks[t]);
        CHECK(p.at("normalized").get<double>() ==
              doctest::Approx(100.0 * p.at("accuracy").get<double>() / ref[t]).epsilon(1e-9));
      }
  // Table 5, both protocols: own expert, pretrained, 4 static merges, then the
  // two Twin-Merging rows (where the paper-vs-ours claims read them), each
  // normalized by the held-out task's own expert (row 0 of the first table).
  const json& own = s.at("table5");
  REQUIRE(own.size() == 8);
  for (const char* table : {"table5", "table5_pretrained_heads"}) {
    const json& t5 = s.at(table);
    REQUIRE(t5.size() == 8);
    CHECK(t5[0].at("method").get<std::string>().rfind("Individual", 0) == 0);
    CHECK(t5[1].at("method").get<std::string>() == "Pretrained");
    CHECK(t5[6].at("method").get<std::string>().rfind("Twin-Merging (SVD", 0) == 0);
    CHECK(t5[7].at("method").get<std::string>().rfind("Twin-Merging (sparsified", 0) == 0);
    for (const json& r : t5)
      for (const auto& h : held) {
        INFO(table << " " << r.at("method").get<std::string>() << " " << h);
        const double ref_h = own[0].at("per_task").at(h).at("accuracy").get<double>();
        const json& p = r.at("per_task").at(h);
        CHECK(p.at("normalized").get<double>() ==
              doctest::Approx(100.0 * p.at("accuracy").get<double>() / ref_h).epsilon(1e-9));
      }
  }
  // Table 4: a static merge, then Twin-Merging on it.
  const json& t4 = s.at("table4");
  REQUIRE(t4.size() == 6);
  for (std::size_t i = 1; i < t4.size(); i += 2)
    CHECK(t4[i].at("method").get<std::string>().rfind("Twin-Merging on ", 0) == 0);
  const json* tw = find_row(t2, "Twin-Merging (SVD");
  REQUIRE(tw);
  CHECK(tw->at("storage_bytes").get<double>() < ind->at("storage_bytes").get<double>());
}
