// What the smoke tests of the paper reproductions share: whether the data is
// installed, running a built example in its --smoke setting into a fresh
// folder (failing the test with the program's log when it fails), and
// finding a method's row in a table of its summary.json.
#pragma once

#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <unistd.h>

#include <nlohmann/json.hpp>

namespace paper_smoke {

namespace fs = std::filesystem;
using nlohmann::json;

inline bool fashion_mnist_installed() {
  return fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz") ||
         std::getenv("TWIN_FASHION_MNIST") != nullptr;
}

// A --smoke run's output folder, removed with the run; when the program
// fails, the test fails in the constructor and the folder and its log stay
// for inspection.
struct Run {
  fs::path out;
  json summary;
  Run(const Run&) = delete;
  Run& operator=(const Run&) = delete;
  ~Run() {
    std::error_code ec;
    fs::remove_all(out, ec);
    fs::remove(out.string() + ".log", ec);
  }

  // `exe --smoke --out DIR [extra]`; the test fails with the log on a
  // non-zero status. `extra` may name DIR as {out}.
  Run(const std::string& exe, const std::string& tag, std::string extra = {})
      : out(fs::temp_directory_path() / (tag + "_" + std::to_string(::getpid()))) {
    fs::remove_all(out);
    for (std::size_t p; (p = extra.find("{out}")) != std::string::npos;) extra.replace(p, 5, out.string());
    std::string cmd = "\"" + exe + "\" --smoke --out \"" + out.string() + "\" " + extra;
    if (const char* d = std::getenv("TWIN_FASHION_MNIST")) cmd += std::string(" --data \"") + d + "\"";
    cmd += " > \"" + out.string() + ".log\" 2>&1";
    const int rc = std::system(cmd.c_str());
    if (rc != 0) {
      std::ifstream log(out.string() + ".log");
      const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
      FAIL(exe << " --smoke failed (status " << rc << "):\n" << text);
    }
    std::ifstream in(out / "summary.json");
    summary = json::parse(in);
  }
};

inline const json* find_row(const json& table, const std::string& prefix) {
  for (const json& r : table)
    if (r.at("method").get<std::string>().rfind(prefix, 0) == 0) return &r;
  return nullptr;
}

}  // namespace paper_smoke
