// StateDict: an ordered name -> Tensor map, the unit checkpoints are read
// into and merges are written to. Order is insertion order (the order of the
// checkpoint), which makes global operations deterministic.
#pragma once

#include <cstddef>
// GCC 12 warns -Wmaybe-uninitialized inside <regex>'s automaton (its
// std::function members, at -O1 with the sanitizers): a false positive in
// the standard library, silenced for its lines only.
#if defined(__GNUC__) && !defined(__clang__)
#  pragma GCC diagnostic push
#  pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <regex>
#if defined(__GNUC__) && !defined(__clang__)
#  pragma GCC diagnostic pop
#endif
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "twin/error.hpp"
#include "twin/tensor.hpp"

namespace twin {

class StateDict {
 public:
  using value_type = std::pair<std::string, Tensor>;

  StateDict() = default;
  StateDict(StateDict&&) noexcept = default;
  StateDict& operator=(StateDict&&) noexcept = default;
  StateDict(const StateDict&) = delete;
  StateDict& operator=(const StateDict&) = delete;

  StateDict clone() const {
    StateDict out;
    for (const auto& [name, t] : items_) out.insert(name, t.clone());
    return out;
  }

  // Adds a tensor; a name already present is an error (checkpoints with
  // duplicate names are malformed).
  Tensor& insert(std::string name, Tensor t) {
    if (index_.contains(name)) throw name_error("tensor '" + name + "' is already in the state dict");
    index_.emplace(name, items_.size());
    items_.emplace_back(std::move(name), std::move(t));
    return items_.back().second;
  }

  // Adds or replaces.
  Tensor& assign(const std::string& name, Tensor t) {
    if (auto it = index_.find(name); it != index_.end()) {
      items_[it->second].second = std::move(t);
      return items_[it->second].second;
    }
    return insert(name, std::move(t));
  }

  bool contains(std::string_view name) const { return index_.contains(std::string(name)); }
  std::size_t size() const noexcept { return items_.size(); }
  bool empty() const noexcept { return items_.empty(); }

  const Tensor* find(std::string_view name) const {
    auto it = index_.find(std::string(name));
    return it == index_.end() ? nullptr : &items_[it->second].second;
  }
  Tensor* find(std::string_view name) {
    auto it = index_.find(std::string(name));
    return it == index_.end() ? nullptr : &items_[it->second].second;
  }
  const Tensor& at(std::string_view name) const {
    if (const Tensor* t = find(name)) return *t;
    throw name_error("no tensor named '" + std::string(name) + "'");
  }
  Tensor& at(std::string_view name) {
    if (Tensor* t = find(name)) return *t;
    throw name_error("no tensor named '" + std::string(name) + "'");
  }

  void erase(std::string_view name) {
    auto it = index_.find(std::string(name));
    if (it == index_.end()) return;
    items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(it->second));
    reindex();
  }

  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(items_.size());
    for (const auto& it : items_) out.push_back(it.first);
    return out;
  }

  // Names matching any of the regular expressions (std::regex_match on the
  // whole name, ECMAScript syntax), in order.
  std::vector<std::string> names_matching(std::span<const std::string> patterns) const;

  // Total elements and bytes of all tensors.
  std::int64_t numel() const {
    std::int64_t n = 0;
    for (const auto& it : items_) n += it.second.numel();
    return n;
  }
  std::size_t nbytes() const {
    std::size_t n = 0;
    for (const auto& it : items_) n += it.second.nbytes();
    return n;
  }

  auto begin() noexcept { return items_.begin(); }
  auto end() noexcept { return items_.end(); }
  auto begin() const noexcept { return items_.begin(); }
  auto end() const noexcept { return items_.end(); }

 private:
  void reindex() {
    index_.clear();
    for (std::size_t i = 0; i < items_.size(); ++i) index_.emplace(items_[i].first, i);
  }

  std::vector<value_type> items_;
  std::unordered_map<std::string, std::size_t> index_;
};

// A set of compiled name patterns (exclude lists such as ".*classifier.*").
class NameFilter {
 public:
  NameFilter() = default;
  explicit NameFilter(std::span<const std::string> patterns) {
    for (const auto& p : patterns) add(p);
  }
  void add(const std::string& pattern) {
    try {
      regexes_.emplace_back(pattern, std::regex::ECMAScript | std::regex::optimize);
      patterns_.push_back(pattern);
    } catch (const std::regex_error& e) {
      throw argument_error("invalid name pattern '" + pattern + "': " + e.what());
    }
  }
  bool matches(std::string_view name) const {
    for (const auto& r : regexes_)
      if (std::regex_match(name.begin(), name.end(), r)) return true;
    return false;
  }
  bool empty() const noexcept { return regexes_.empty(); }
  const std::vector<std::string>& patterns() const noexcept { return patterns_; }

 private:
  std::vector<std::regex> regexes_;
  std::vector<std::string> patterns_;
};

inline std::vector<std::string> StateDict::names_matching(std::span<const std::string> patterns) const {
  const NameFilter f(patterns);
  std::vector<std::string> out;
  for (const auto& it : items_)
    if (f.matches(it.first)) out.push_back(it.first);
  return out;
}

}  // namespace twin
