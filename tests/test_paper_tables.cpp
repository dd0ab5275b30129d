// Smoke test of the paper-table reproduction: runs the built paper_tables in
// its smallest setting on real Fashion-MNIST data and checks, on the
// summary.json it writes, the properties Twin-Merging guarantees whatever the
// absolute numbers: experts beat the pretrained model on their own task,
// fusing with one-hot weights gives each expert back up to the compression
// error, Twin-Merging's average beats Task Arithmetic's, and a storage budget
// is kept.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "paper_smoke.hpp"

#ifndef PAPER_TABLES_EXE
#  error "PAPER_TABLES_EXE must name the built paper_tables program"
#endif

using nlohmann::json;
using paper_smoke::find_row;
namespace fs = std::filesystem;

TEST_CASE("paper_tables --smoke reproduces the method's guaranteed properties on real data") {
  if (!paper_smoke::fashion_mnist_installed()) {
    MESSAGE("Fashion-MNIST is not installed (Debian package dataset-fashion-mnist): skipped");
    return;
  }
  const paper_smoke::Run run(PAPER_TABLES_EXE, "twin_paper_smoke");
  const auto& out = run.out;
  for (const char* f : {"tables.md", "summary.json", "fig3_exclusive_share.svg", "fig4_num_tasks.svg", "fig4_rank.svg",
                        "fig_storage_accuracy.svg"})
    CHECK_MESSAGE(fs::exists(out / f), f);
  const json& s = run.summary;
  const json& t2 = s.at("table2");
  const auto tasks = s.at("config").at("tasks").get<std::vector<std::string>>();
  REQUIRE(tasks.size() >= 2);

  {  // each individual expert beats the pretrained model on its own task
    const json* ind = find_row(t2, "Individual");
    const json* pre = find_row(t2, "Pretrained");
    REQUIRE(ind);
    REQUIRE(pre);
    for (const auto& t : tasks) {
      INFO("task " << t);
      CHECK(ind->at("per_task").at(t).at("accuracy").get<double>() >
            pre->at("per_task").at(t).at("accuracy").get<double>());
    }
    CHECK(s.at("checks").at("experts_beat_pretrained").get<bool>());
  }

  {  // fusion with one-hot weights gives the expert back up to the compression
    const json& oh = s.at("checks").at("onehot_fusion");
    // Dense exclusive knowledge: θ* + 1·(θ_t − θ*) is θ_t up to float rounding.
    CHECK(oh.at("dense_max_abs_diff").get<double>() <= 1e-5);
    CHECK(oh.at("dense_accuracy_equals_expert").get<bool>());
    // SVD: the fused body is off by exactly the error the compressor reported.
    CHECK(oh.at("svd_worst_gap").get<double>() < 1e-3);
    for (const json& p : oh.at("per_task")) {
      const double e = p.at("svd_relative_error").get<double>();
      CHECK(e >= 0.0);
      CHECK(e < 1.0);  // a rank-r truncation removes less than all of v_t
    }
    CHECK(oh.at("ok").get<bool>());
  }

  {  // Twin-Merging's average beats Task Arithmetic's
    const json* ta = find_row(t2, "Task Arithmetic");
    const json* tw = find_row(t2, "Twin-Merging (SVD");
    REQUIRE(ta);
    REQUIRE(tw);
    CHECK(tw->at("avg_normalized").get<double>() > ta->at("avg_normalized").get<double>());
    CHECK(s.at("checks").at("twin_beats_task_arithmetic").get<bool>());
    // storage is reported for every method of Table 2 and Twin-Merging's is
    // below the T dense experts'
    CHECK(tw->at("storage_bytes").get<double>() < find_row(t2, "Individual")->at("storage_bytes").get<double>());
  }

  {  // every table and figure has its rows
    for (const char* k :
         {"table2", "table4", "table5", "table5_pretrained_heads", "figure3", "figure4_tasks", "figure4_rank"}) {
      INFO(k);
      CHECK(!s.at(k).empty());
    }
    CHECK(s.at("table7").at("mixed_batch").at("max_abs_diff_vs_per_input_fusion").get<double>() < 1e-3);
  }

  {  // exclusive knowledge in fewer bytes: a Table 2 row per packed kind, the
     // budget within its fraction, int4 factors smaller than int8 ones, and
     // every packed row scored
    const double budget = s.at("config").at("budget").get<double>();
    const std::string svd = "Twin-Merging (SVD rank " + std::to_string(s.at("config").at("rank").get<int>());
    const json* b = find_row(t2, "Twin-Merging (budget");
    const json* q8 = find_row(t2, svd + ", int8 factors)");
    const json* q4 = find_row(t2, svd + ", int4 factors)");
    REQUIRE(b);
    REQUIRE(q8);
    REQUIRE(q4);
    CHECK(find_row(t2, "Twin-Merging (sign bits"));
    CHECK(find_row(t2, svd + ", int4 + "));
    CHECK(q4->at("storage_bytes").get<double>() < q8->at("storage_bytes").get<double>());
    for (const json& r : s.at("table2_packed")) {
      INFO(r.at("method").get<std::string>());
      CHECK(r.at("avg_normalized").get<double>() > 0.0);
      CHECK(r.at("exclusive_ratio").get<double>() > 0.0);
      if (r.at("method").get<std::string>().find("budget") != std::string::npos)
        CHECK(r.at("exclusive_ratio").get<double>() <= budget);
    }
    CHECK(s.at("headline").at("twin_budget_exclusive_ratio").get<double>() <= budget);
    CHECK(!s.at("storage_accuracy").empty());
  }
}
