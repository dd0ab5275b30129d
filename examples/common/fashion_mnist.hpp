// Reader for the Fashion-MNIST IDX files Debian ships (package
// dataset-fashion-mnist, /usr/share/datasets/fashion-mnist/*.gz). Used by the
// examples that run on real data; not part of the library.
#pragma once

#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "twin/error.hpp"

namespace examples {

struct ImageSet {
  int rows = 0, cols = 0;
  std::vector<std::uint8_t> pixels;  // count × rows × cols
  std::vector<std::uint8_t> labels;  // count
  std::size_t size() const { return labels.size(); }
};

inline const char* default_fashion_mnist_dir() { return "/usr/share/datasets/fashion-mnist"; }

namespace detail {
inline std::vector<std::uint8_t> gunzip_file(const std::filesystem::path& p) {
  std::unique_ptr<gzFile_s, int (*)(gzFile)> f(gzopen(p.c_str(), "rb"), gzclose);
  if (!f)
    throw twin::io_error(p.string() + ": cannot open (install Debian's dataset-fashion-mnist, or pass --data DIR)");
  std::vector<std::uint8_t> out;
  std::uint8_t buf[1 << 16];
  for (;;) {
    const int n = gzread(f.get(), buf, sizeof buf);
    if (n < 0) throw twin::io_error(p.string() + ": corrupt gzip stream");
    if (n == 0) break;
    out.insert(out.end(), buf, buf + n);
  }
  return out;
}

inline std::uint32_t be32(const std::vector<std::uint8_t>& b, std::size_t off) {
  return (std::uint32_t{b[off]} << 24) | (std::uint32_t{b[off + 1]} << 16) | (std::uint32_t{b[off + 2]} << 8) |
         b[off + 3];
}
}  // namespace detail

// Reads `<prefix>-images-idx3-ubyte.gz` and `<prefix>-labels-idx1-ubyte.gz`
// (prefix "train" or "t10k"), validating magic numbers and sizes.
inline ImageSet load_fashion_mnist(const std::filesystem::path& dir, const std::string& prefix) {
  const auto img_path = dir / (prefix + "-images-idx3-ubyte.gz"), lab_path = dir / (prefix + "-labels-idx1-ubyte.gz");
  const auto img = detail::gunzip_file(img_path), lab = detail::gunzip_file(lab_path);
  if (img.size() < 16 || detail::be32(img, 0) != 0x803)
    throw twin::io_error(img_path.string() + ": not an IDX3 image file");
  if (lab.size() < 8 || detail::be32(lab, 0) != 0x801)
    throw twin::io_error(lab_path.string() + ": not an IDX1 label file");
  ImageSet s;
  const std::size_t n = detail::be32(img, 4);
  s.rows = static_cast<int>(detail::be32(img, 8));
  s.cols = static_cast<int>(detail::be32(img, 12));
  if (detail::be32(lab, 4) != n) throw twin::io_error(lab_path.string() + ": label count differs from the image count");
  const std::size_t px = n * static_cast<std::size_t>(s.rows) * static_cast<std::size_t>(s.cols);
  if (img.size() != 16 + px || lab.size() != 8 + n) throw twin::io_error(img_path.string() + ": truncated IDX data");
  s.pixels.assign(img.begin() + 16, img.end());
  s.labels.assign(lab.begin() + 8, lab.end());
  for (auto l : s.labels)
    if (l > 9) throw twin::io_error(lab_path.string() + ": label outside 0..9");
  return s;
}

}  // namespace examples
