// Read-only file mappings: MappedFile maps a whole file (POSIX mmap,
// MAP_PRIVATE) so tensors can be views into it; shared ownership unmaps it
// when the last view dies.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <span>
#include <string>

#include "twin/error.hpp"

namespace twin {

namespace detail {
inline std::string errno_text(int e) { return std::string(std::strerror(e)); }

// Closes a descriptor on scope exit (the mapping outlives the descriptor).
struct FdGuard {
  int fd = -1;
  ~FdGuard() {
    if (fd >= 0) ::close(fd);
  }
};
}  // namespace detail

class MappedFile {
 public:
  // Maps `path` read-only. An empty file gives an empty mapping (mmap refuses
  // length 0). Opening or mapping failures are io_errors naming the file.
  static std::shared_ptr<const MappedFile> open(const std::filesystem::path& path) {
    detail::FdGuard fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
    if (fd.fd < 0) throw io_error(path.string() + ": cannot open: " + detail::errno_text(errno));
    struct stat st {};
    if (::fstat(fd.fd, &st) != 0) throw io_error(path.string() + ": cannot stat: " + detail::errno_text(errno));
    // Pipes and devices have no stable size to validate offsets against.
    if (!S_ISREG(st.st_mode)) throw io_error(path.string() + ": not a regular file");
    auto m = std::shared_ptr<MappedFile>(new MappedFile());
    m->path_ = path;
    m->size_ = static_cast<std::size_t>(st.st_size);
    if (m->size_ > 0) {
      void* p = ::mmap(nullptr, m->size_, PROT_READ, MAP_PRIVATE, fd.fd, 0);
      if (p == MAP_FAILED) throw io_error(path.string() + ": cannot map: " + detail::errno_text(errno));
      m->data_ = static_cast<const std::byte*>(p);
    }
    return m;
  }

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() {
    if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
  }

  const std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
  const std::filesystem::path& path() const noexcept { return path_; }

  bool contains(const void* p, std::size_t n) const noexcept {
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    const auto b = reinterpret_cast<std::uintptr_t>(data_);
    return data_ && a >= b && a - b <= size_ && n <= size_ - (a - b);
  }

  // Drops the resident pages wholly inside [p, p+n) (streaming work releases
  // tensors it is done with); they are read back from the file if touched
  // again. Ranges outside this mapping are ignored, so heap memory is never
  // handed to madvise.
  void release(const void* p, std::size_t n) const noexcept {
    if (!contains(p, n) || n == 0) return;
    const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    const std::uintptr_t first = (a + page - 1) / page * page;
    const std::uintptr_t last = (a + n) / page * page;
    if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
  }

 private:
  MappedFile() = default;
  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace twin
