// A run-time switch of the CPU backend's kernel choices (bf16 dot products,
// twin's AVX-512 BF16 kernel): on by default, turned off by its environment
// variable set to a value starting with '0' (read on first use), or by set().
// Tests turn kernels off to compare them with the paths they replace.
#pragma once

#include <atomic>
#include <cstdlib>

namespace twin::backend::cpu::detail {

class EnvSwitch {
 public:
  // constexpr: an inline variable of it is initialized before any code runs.
  explicit constexpr EnvSwitch(const char* env) noexcept : env_(env) {}
  bool on() noexcept {
    int v = state_.load(std::memory_order_relaxed);
    if (v < 0) {
      const char* e = std::getenv(env_);
      v = !(e && e[0] == '0');
      state_.store(v, std::memory_order_relaxed);
    }
    return v == 1;
  }
  void set(bool on) noexcept { state_.store(on ? 1 : 0, std::memory_order_relaxed); }

 private:
  const char* env_;
  std::atomic<int> state_{-1};  // -1: the environment decides on first use
};

}  // namespace twin::backend::cpu::detail
