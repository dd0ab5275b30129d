// Software prefetch paced over a piece of work: the cache lines of a few
// byte ranges, asked for in order, a few at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace twin::backend::cpu {

// The lines of the ranges added, range by range: a loop over the piece of
// work before them asks for lines() / (its iterations) per iteration, so
// that the next piece arrives one stream at a time while this one is read
// (a burst of prefetches fills the core's miss buffers and stalls it).
class LinesAhead {
 public:
  void clear() noexcept {
    range_.clear();
    at_ = 0, line_ = 0, lines_ = 0, asked_ = 0;
  }
  // The lines holding bytes [p, p + bytes), after those added before.
  void add(const void* p, std::size_t bytes) {
    if (bytes == 0) return;
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    const std::uintptr_t first = a / line, last = (a + bytes - 1) / line;
    const auto count = static_cast<std::int64_t>(last - first + 1);
    range_.emplace_back(reinterpret_cast<const char*>(first * line), count);
    lines_ += count;
  }
  std::int64_t lines() const noexcept { return lines_; }
  // How many lines are not asked for yet.
  std::int64_t left() const noexcept { return lines_ - asked_; }
  // Asks for the next `count` lines (fewer where the plan ends), into L2
  // (locality 2: prefetcht1), not L1: they are read a whole run later. On
  // an Intel Xeon that is faster (TIES 122 → 118 ms, model_stock 69 → 64);
  // on Zen 5 it measured the same as L1 (benchmarks/RESULTS.md, "Lines
  // ahead into L2").
  void ask(std::int64_t count) noexcept {
    for (; count > 0 && at_ < range_.size(); --count, ++asked_) {
      __builtin_prefetch(range_[at_].first + line_bytes * line_, 0, 2);
      if (++line_ == range_[at_].second) ++at_, line_ = 0;
    }
  }
  // The lines per iteration that ask for the whole plan over `iterations`.
  std::int64_t per(std::int64_t iterations) const noexcept {
    return iterations > 0 ? (lines_ + iterations - 1) / iterations : lines_;
  }

 private:
  static constexpr std::uintptr_t line = 64;
  static constexpr std::int64_t line_bytes = 64;
  std::vector<std::pair<const char*, std::int64_t>> range_;  // first line, how many
  std::size_t at_ = 0;
  std::int64_t line_ = 0, lines_ = 0, asked_ = 0;
};

}  // namespace twin::backend::cpu
