// A progress bar on stderr for long CLI work, drawn only when stderr is a
// terminal (logs and pipes stay clean).
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <string_view>

namespace examples {

class Progress {
 public:
  Progress(std::string label, bool enabled = isatty(STDERR_FILENO) != 0)
      : label_(std::move(label)), enabled_(enabled), start_(std::chrono::steady_clock::now()) {}
  ~Progress() { finish(); }

  void update(std::size_t done, std::size_t total, std::string_view item = {}) {
    if (!enabled_ || total == 0) return;
    constexpr int width = 30;
    const int filled = static_cast<int>(width * done / total);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    std::string bar(static_cast<std::size_t>(filled), '=');
    bar.resize(width, ' ');
    std::string name(item.substr(0, 40));
    std::fprintf(stderr, "\r%s [%s] %zu/%zu %5.1fs %-40s", label_.c_str(), bar.c_str(), done, total, secs,
                 name.c_str());
    std::fflush(stderr);
    drawn_ = true;
  }
  void finish() {
    if (drawn_) std::fprintf(stderr, "\n");
    drawn_ = false;
  }

 private:
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace examples
