// AtomicFile: writes a file so that readers see either the old content or
// the complete new one, never a half-written file (temporary file in the same
// folder, fsync, rename over the target, fsync the folder).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <system_error>

#include "twin/error.hpp"
#include "twin/io/mmap.hpp"

namespace twin {

class AtomicFile {
 public:
  // Creates the temporary file next to `target`; a missing folder is an
  // io_error naming it.
  explicit AtomicFile(std::filesystem::path target) : target_(std::move(target)) {
    if (target_.filename().empty()) throw io_error(target_.string() + ": not a file name");
    dir_ = target_.parent_path();
    if (dir_.empty()) dir_ = ".";
    std::error_code ec;
    if (!std::filesystem::is_directory(dir_, ec))
      throw io_error(target_.string() + ": folder '" + dir_.string() + "' does not exist");
    // Own name scheme instead of mkstemp so the final file gets the usual
    // 0666 & ~umask permissions (mkstemp forces 0600).
    static std::atomic<std::uint64_t> counter{0};
    const auto seed = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    for (int attempt = 0; attempt < 100; ++attempt) {
      const std::uint64_t tag = seed ^ (counter.fetch_add(1) * 0x9E3779B97F4A7C15ull);
      // Appended piece by piece ("." + … inserts at the front of a temporary:
      // GCC 12's -Wrestrict false positive at -O3, see detail::append_listed).
      std::string name = ".";
      name += target_.filename().string();
      name += ".tmp-";
      name += std::to_string(::getpid());
      name += '-';
      name += std::to_string(tag % 1000000007ull);
      temp_ = dir_ / name;
      fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd_ >= 0) return;
      if (errno != EEXIST) break;
    }
    const int e = errno;
    throw io_error(target_.string() + ": cannot create a temporary file in '" + dir_.string() +
                   "': " + detail::errno_text(e));
  }

  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Without commit() the temporary file is removed and the target untouched.
  ~AtomicFile() { discard(); }

  const std::filesystem::path& target() const noexcept { return target_; }
  const std::filesystem::path& temp_path() const noexcept { return temp_; }

  void write(const void* data, std::size_t n) {
    const auto* p = static_cast<const std::byte*>(data);
    while (n > 0) {
      // Large writes are split: Linux moves at most ~2 GiB per call.
      const std::size_t chunk = n < (std::size_t{1} << 30) ? n : (std::size_t{1} << 30);
      const ::ssize_t w = ::write(fd_, p, chunk);
      if (w < 0) {
        if (errno == EINTR) continue;
        fail("cannot write");
      }
      p += w;
      n -= static_cast<std::size_t>(w);
    }
  }

  void commit() {
    if (::fsync(fd_) != 0) fail("cannot flush");
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail("cannot close");
    if (::rename(temp_.c_str(), target_.c_str()) != 0) fail("cannot rename the temporary file over the target");
    committed_ = true;
    // The rename is durable only once the folder entry is on disk.
    detail::FdGuard dfd{::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
    if (dfd.fd >= 0) ::fsync(dfd.fd);
  }

 private:
  [[noreturn]] void fail(const char* what) {
    const int e = errno;
    discard();
    throw io_error(target_.string() + ": " + what + ": " + detail::errno_text(e));
  }

  void discard() noexcept {
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
    if (!committed_ && !temp_.empty()) {
      ::unlink(temp_.c_str());
      temp_.clear();
    }
  }

  std::filesystem::path target_, dir_, temp_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace twin
