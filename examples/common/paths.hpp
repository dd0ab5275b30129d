// Where the examples keep what they cache between runs by default: a folder
// next to the program (or in the working directory when /proc is missing).
#pragma once

#include <filesystem>
#include <string>
#include <system_error>

namespace examples {

inline std::filesystem::path beside_program(const std::string& name) {
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::canonical("/proc/self/exe", ec);
  return (ec ? std::filesystem::current_path() : exe.parent_path()) / name;
}

}  // namespace examples
