// safetensors I/O: round trips of every dtype, sharding and metadata; files
// checked by an independent reader written here from the format's spec;
// zero-copy mapping; hostile inputs; atomic writes.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "twin/io/safetensors.hpp"

namespace fs = std::filesystem;
using twin::dtype;

namespace {

// A fresh folder under the system temp dir, removed on scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    std::random_device rd;
    path = fs::temp_directory_path() /
           ("twin-st-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path operator/(const std::string& s) const { return path / s; }
  std::vector<std::string> files() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(path)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
};

std::vector<std::uint8_t> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  REQUIRE(in);
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(fs::file_size(p)));
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(in.gcount() == static_cast<std::streamsize>(bytes.size()));
  return bytes;
}

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le64(std::uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i, n >>= 8) s[static_cast<std::size_t>(i)] = static_cast<char>(n & 0xff);
  return s;
}

// A file's header length: its first 8 bytes, little-endian (le64 reversed).
std::uint64_t header_length_of(const std::vector<std::uint8_t>& f) {
  REQUIRE(f.size() >= 8);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | f[static_cast<std::size_t>(i)];
  return n;
}

// A raw file: length prefix, the header text exactly as given, data bytes.
std::string raw_file(const std::string& header, std::size_t data_bytes) {
  return le64(header.size()) + header + std::string(data_bytes, '\x11');
}

// Tensor of `shape` in dtype `t` with random bytes (0/1 for BOOL; finite
// values for floats so every dtype is covered by plain byte comparison).
twin::Tensor random_bytes_tensor(std::mt19937_64& rng, dtype t, std::vector<std::int64_t> shape) {
  twin::Tensor x(t, shape);
  auto* p = static_cast<std::uint8_t*>(x.mutable_data());
  for (std::size_t i = 0; i < x.nbytes(); ++i) p[i] = static_cast<std::uint8_t>(rng());
  if (t == dtype::boolean)
    for (std::size_t i = 0; i < x.nbytes(); ++i) p[i] &= 1;
  return x;
}

bool same_bytes(const void* a, const void* b, std::size_t n) { return n == 0 || std::memcmp(a, b, n) == 0; }

const dtype all_dtypes[] = {dtype::f64, dtype::f32, dtype::f16, dtype::bf16, dtype::i64,
                            dtype::i32, dtype::i16, dtype::i8,  dtype::u8,   dtype::boolean};

twin::StateDict every_dtype_state(std::mt19937_64& rng) {
  twin::StateDict s;
  int i = 0;
  for (dtype t : all_dtypes) {
    const std::int64_t a = 1 + static_cast<std::int64_t>(rng() % 5), b = 1 + static_cast<std::int64_t>(rng() % 7);
    s.insert("layer." + std::to_string(i++) + "." + std::string(twin::dtype_name(t)),
             random_bytes_tensor(rng, t, {a, b}));
  }
  s.insert("scalar", random_bytes_tensor(rng, dtype::f32, {}));
  s.insert("empty", random_bytes_tensor(rng, dtype::f16, {0, 3}));
  s.insert("rank4", random_bytes_tensor(rng, dtype::bf16, {2, 3, 1, 2}));
  return s;
}

void check_same_state(const twin::StateDict& got, const twin::StateDict& want) {
  REQUIRE(got.names() == want.names());  // order preserved too
  for (const auto& item : want) {
    const std::string& name = item.first;  // a plain reference: INFO captures it
    const twin::Tensor& w = item.second;
    INFO("tensor " << name);
    const twin::Tensor& g = got.at(name);
    CHECK(g.dtype() == w.dtype());
    CHECK(std::vector<std::int64_t>(g.shape().begin(), g.shape().end()) ==
          std::vector<std::int64_t>(w.shape().begin(), w.shape().end()));
    REQUIRE(g.nbytes() == w.nbytes());
    CHECK(same_bytes(g.data(), w.data(), w.nbytes()));
  }
}

// ---------------------------------------------------------------------------
// Independent reader, written from the safetensors spec (not from twin's
// reader): u64 little-endian N, N bytes of UTF-8 JSON object, then the data
// section; entries {dtype, shape, data_offsets} relative to the data section,
// which they cover exactly without holes or overlap; optional __metadata__
// of string values. Checks also what twin promises on top: header padded
// with spaces to a multiple of 8, tensors in state-dict order.
struct SpecTensor {
  std::string name, dtype;
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> bytes;
};
struct SpecFile {
  std::vector<SpecTensor> tensors;
  std::map<std::string, std::string> metadata;
};

SpecFile spec_read(const fs::path& p) {
  const std::vector<std::uint8_t> f = read_bytes(p);
  const std::uint64_t n = header_length_of(f);
  REQUIRE(n <= f.size() - 8);
  CHECK(n % 8 == 0);
  const std::string header(f.begin() + 8, f.begin() + 8 + static_cast<std::ptrdiff_t>(n));
  REQUIRE(!header.empty());
  CHECK(header.front() == '{');
  const std::size_t last = header.find_last_not_of(' ');
  CHECK(header[last] == '}');
  const auto j = nlohmann::ordered_json::parse(header);  // key order = file order
  REQUIRE(j.is_object());
  const std::size_t data_start = 8 + n, data_size = f.size() - data_start;
  static const std::map<std::string, std::size_t> sizes = {{"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2},
                                                           {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1},
                                                           {"U8", 1},  {"BOOL", 1}};
  SpecFile out;
  std::uint64_t expect_begin = 0;
  for (const auto& [k, v] : j.items()) {
    if (k == "__metadata__") {
      for (const auto& [mk, mv] : v.items()) {
        REQUIRE(mv.is_string());
        out.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    SpecTensor t;
    t.name = k;
    t.dtype = v.at("dtype").get<std::string>();
    REQUIRE(sizes.count(t.dtype) == 1);
    std::uint64_t numel = 1;
    for (const auto& d : v.at("shape")) {
      REQUIRE(d.is_number_unsigned());
      t.shape.push_back(d.get<std::int64_t>());
      numel *= d.get<std::uint64_t>();
    }
    const auto& off = v.at("data_offsets");
    REQUIRE(off.size() == 2);
    const auto b = off[0].get<std::uint64_t>(), e = off[1].get<std::uint64_t>();
    CHECK(b == expect_begin);  // contiguous, in order
    REQUIRE(e >= b);
    REQUIRE(e <= data_size);
    CHECK(e - b == numel * sizes.at(t.dtype));
    expect_begin = e;
    t.bytes.assign(f.begin() + static_cast<std::ptrdiff_t>(data_start + b),
                   f.begin() + static_cast<std::ptrdiff_t>(data_start + e));
    out.tensors.push_back(std::move(t));
  }
  CHECK(expect_begin == data_size);  // the data section holds nothing else
  return out;
}

}  // namespace

TEST_CASE("every dtype round-trips bit-exactly through save and load, in state-dict order") {
  std::mt19937_64 rng(1);
  TempDir dir;
  const twin::StateDict s = every_dtype_state(rng);
  const twin::Metadata md = {{"format", "pt"}, {"note", "ünïcode ✓"}};
  twin::save_safetensors(dir / "m.safetensors", s, md);
  const twin::LoadedCheckpoint c = twin::load_safetensors(dir / "m.safetensors");
  check_same_state(c.tensors, s);
  CHECK(c.metadata == md);
  // The in-memory pair agrees with the files.
  const auto bytes = twin::serialize_safetensors(s, md);
  const auto file = read_bytes(dir / "m.safetensors");
  REQUIRE(bytes.size() == file.size());
  CHECK(same_bytes(bytes.data(), file.data(), file.size()));
}

TEST_CASE("files twin writes are valid safetensors according to an independent reader of the spec") {
  std::mt19937_64 rng(2);
  TempDir dir;
  const twin::StateDict s = every_dtype_state(rng);
  for (const twin::Metadata& md : {twin::Metadata{}, twin::Metadata{{"a", "1"}, {"quote\"key", "line\nbreak"}}}) {
    twin::save_safetensors(dir / "m.safetensors", s, md);
    const SpecFile f = spec_read(dir / "m.safetensors");
    CHECK(f.metadata == md);
    REQUIRE(f.tensors.size() == s.size());
    std::size_t i = 0;
    for (const auto& [name, t] : s) {
      const SpecTensor& g = f.tensors[i++];
      CHECK(g.name == name);
      CHECK(g.dtype == std::string(twin::dtype_name(t.dtype())));
      CHECK(g.shape == std::vector<std::int64_t>(t.shape().begin(), t.shape().end()));
      REQUIRE(g.bytes.size() == t.nbytes());
      CHECK(same_bytes(g.bytes.data(), t.data(), t.nbytes()));
    }
  }
  // No metadata -> no __metadata__ key at all.
  twin::save_safetensors(dir / "m.safetensors", s);
  const auto f = read_bytes(dir / "m.safetensors");
  CHECK(std::string(f.begin(), f.end()).find("__metadata__") == std::string::npos);
}

TEST_CASE("loaded tensors are zero-copy views at the file's data offsets inside the mapping") {
  std::mt19937_64 rng(3);
  TempDir dir;
  // Wider dtypes first keeps every tensor aligned in the file (a writer that
  // mixes widths otherwise gets copies for the misaligned ones, tested below).
  twin::StateDict s;
  for (dtype t : {dtype::f64, dtype::i64, dtype::f32, dtype::i32, dtype::f16, dtype::bf16, dtype::i16, dtype::i8,
                  dtype::u8, dtype::boolean})
    s.insert(std::string(twin::dtype_name(t)), random_bytes_tensor(rng, t, {3, 5}));
  twin::save_safetensors(dir / "m.safetensors", s);
  const twin::LoadedCheckpoint c = twin::load_safetensors(dir / "m.safetensors");
  const twin::SafetensorsHeader h = twin::read_safetensors_header(dir / "m.safetensors");
  const auto file = read_bytes(dir / "m.safetensors");
  REQUIRE(c.files.size() == 1);
  const std::byte* base = c.files[0]->data();
  REQUIRE(c.files[0]->size() == file.size());
  for (const auto& e : h.tensors) {
    INFO("tensor " << e.name);
    const twin::Tensor& t = c.tensors.at(e.name);
    CHECK(t.read_only());
    // The pointer is exactly the mapped file's byte at the recorded offset...
    CHECK(t.data() == base + h.data_start + e.begin);
    CHECK(c.files[0]->contains(t.data(), t.nbytes()));
    // ...and holds the file's bytes there.
    CHECK(same_bytes(t.data(), file.data() + h.data_start + e.begin, t.nbytes()));
  }
}

TEST_CASE("a mapping stays alive while any tensor viewing it lives, and is unmapped after the last") {
  std::mt19937_64 rng(4);
  TempDir dir;
  twin::StateDict s;
  s.insert("a", random_bytes_tensor(rng, dtype::f32, {16}));
  s.insert("b", random_bytes_tensor(rng, dtype::f32, {16}));
  twin::save_safetensors(dir / "m.safetensors", s);
  std::weak_ptr<const twin::MappedFile> weak;
  twin::Tensor kept;
  {
    twin::LoadedCheckpoint c = twin::load_safetensors(dir / "m.safetensors");
    weak = c.files[0];
    kept = std::move(c.tensors.at("b"));
  }
  REQUIRE_FALSE(weak.expired());
  CHECK(same_bytes(kept.data(), s.at("b").data(), s.at("b").nbytes()));
  kept = twin::Tensor();
  CHECK(weak.expired());
}

TEST_CASE("releasing a tensor's pages keeps its content, read back from the file") {
  std::mt19937_64 rng(11);
  TempDir dir;
  twin::StateDict s;
  s.insert("big", random_bytes_tensor(rng, dtype::f32, {1 << 16}));  // 256 KiB: whole pages inside
  twin::save_safetensors(dir / "m.safetensors", s);
  const twin::LoadedCheckpoint c = twin::load_safetensors(dir / "m.safetensors");
  const twin::Tensor& t = c.tensors.at("big");
  REQUIRE(same_bytes(t.data(), s.at("big").data(), t.nbytes()));
  twin::release_pages(c, t);
  CHECK(same_bytes(t.data(), s.at("big").data(), t.nbytes()));
  // Memory that is not part of a mapping is never handed to madvise.
  twin::release_pages(c, s.at("big"));
  CHECK(c.tensors.at("big").nbytes() == s.at("big").nbytes());
  CHECK(same_bytes(t.data(), s.at("big").data(), t.nbytes()));
}

TEST_CASE("sharded checkpoints split by size and round-trip through the index, the folder and metadata") {
  std::mt19937_64 rng(5);
  TempDir dir;
  twin::StateDict s;
  for (int i = 0; i < 7; ++i)
    s.insert("w" + std::to_string(i), random_bytes_tensor(rng, dtype::f32, {10, 10}));  // 400 B
  s.insert("big", random_bytes_tensor(rng, dtype::f64, {200}));                         // 1600 B
  s.insert("last", random_bytes_tensor(rng, dtype::i8, {3}));
  const twin::Metadata md = {{"format", "pt"}, {"total_size", "user value kept"}};
  const fs::path index = twin::save_safetensors_sharded(dir.path, s, md, 1000);
  CHECK(index.filename() == "model.safetensors.index.json");
  // w0,w1 | w2,w3 | w4,w5 | w6 | big (alone, over the limit) | last
  const std::vector<std::string> want_files = {"model-00001-of-00006.safetensors", "model-00002-of-00006.safetensors",
                                               "model-00003-of-00006.safetensors", "model-00004-of-00006.safetensors",
                                               "model-00005-of-00006.safetensors", "model-00006-of-00006.safetensors",
                                               "model.safetensors.index.json"};
  CHECK(dir.files() == want_files);
  for (int k = 1; k <= 6; ++k) {
    const SpecFile f = spec_read(dir / want_files[static_cast<std::size_t>(k - 1)]);
    std::size_t data = 0;
    for (const auto& t : f.tensors) data += t.bytes.size();
    CHECK((data <= 1000 || f.tensors.size() == 1));
  }
  const auto j = nlohmann::json::parse(read_bytes(index));
  CHECK(j.at("metadata").at("total_size").get<std::uint64_t>() == s.nbytes());
  CHECK(j.at("weight_map").at("big") == "model-00005-of-00006.safetensors");

  for (const fs::path& p : {index, dir.path}) {
    const twin::LoadedCheckpoint c = twin::load_safetensors(p);
    check_same_state(c.tensors, s);
    CHECK(c.metadata == md);
    CHECK(c.files.size() == 6);
  }
}

TEST_CASE("metadata round-trips exactly, including empty and non-ASCII strings") {
  std::mt19937_64 rng(6);
  TempDir dir;
  twin::StateDict s;
  s.insert("x", random_bytes_tensor(rng, dtype::bf16, {4}));
  const twin::Metadata md = {{"", "empty key"}, {"empty", ""}, {"json", "{\"nested\": [1, 2]}"}, {"日本", "語"}};
  twin::save_safetensors(dir / "m.safetensors", s, md);
  CHECK(twin::load_safetensors(dir / "m.safetensors").metadata == md);
  CHECK(twin::read_safetensors_header(dir / "m.safetensors").metadata == md);
  twin::save_safetensors(dir / "n.safetensors", s);
  CHECK(twin::load_safetensors(dir / "n.safetensors").metadata.empty());
  // "__metadata__": null is no metadata, as the reference reader (an Option) takes it.
  write_bytes(dir / "null.safetensors", raw_file(R"({"__metadata__":null,"w":{"dtype":"U8","shape":[2],)"
                                                 R"("data_offsets":[0,2]}})",
                                                 2));
  const twin::LoadedCheckpoint nl = twin::load_safetensors(dir / "null.safetensors");
  CHECK(nl.metadata.empty());
  CHECK(nl.tensors.size() == 1);
}

TEST_CASE("strided views are written contiguously in row-major order") {
  TempDir dir;
  twin::Tensor a(dtype::i32, {4, 6});
  auto v = a.values<std::int32_t>();
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<std::int32_t>(i);
  // The transpose: shape [6, 4], strides [1, 6].
  const std::int64_t shape[] = {6, 4}, strides[] = {1, 6};
  const twin::ConstTensorView t(a.data(), dtype::i32, shape, strides);
  REQUIRE_FALSE(t.is_contiguous());
  const std::vector<twin::NamedTensorView> views = {{"t", t}, {"a", a.view()}};
  twin::save_safetensors(dir / "m.safetensors", views);
  const twin::LoadedCheckpoint c = twin::load_safetensors(dir / "m.safetensors");
  const auto got = c.tensors.at("t").values<std::int32_t>();
  REQUIRE(got.size() == 24);
  for (int r = 0; r < 6; ++r)
    for (int k = 0; k < 4; ++k) CHECK(got[static_cast<std::size_t>(r * 4 + k)] == k * 6 + r);
  CHECK(same_bytes(c.tensors.at("a").data(), a.data(), a.nbytes()));
}

TEST_CASE("tensors at offsets misaligned for their dtype (foreign writers) are copied into aligned memory") {
  TempDir dir;
  // U8[3] at [0,3], then F32[2] at [3,11]: the F32 data is not 4-byte aligned.
  const std::string header =
      R"({"u":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"f":{"dtype":"F32","shape":[2],"data_offsets":[3,11]}})";
  std::string file = le64(header.size()) + header;
  const std::string u = "\x01\x02\x03";
  const float fv[2] = {1.5f, -2.25f};
  file += u + std::string(reinterpret_cast<const char*>(fv), 8);
  write_bytes(dir / "m.safetensors", file);
  const twin::LoadedCheckpoint c = twin::load_safetensors(dir / "m.safetensors");
  const twin::Tensor& f = c.tensors.at("f");
  CHECK(reinterpret_cast<std::uintptr_t>(f.data()) % 4 == 0);
  CHECK_FALSE(c.files[0]->contains(f.data(), f.nbytes()));
  CHECK(f.values<float>()[0] == 1.5f);
  CHECK(f.values<float>()[1] == -2.25f);
  CHECK(c.files[0]->contains(c.tensors.at("u").data(), 3));
  CHECK(c.tensors.names() == std::vector<std::string>{"u", "f"});  // data order, not key order
}

TEST_CASE("the header-only reader lists names, dtypes, shapes and offsets without mapping data") {
  std::mt19937_64 rng(7);
  TempDir dir;
  const twin::StateDict s = every_dtype_state(rng);
  twin::save_safetensors(dir / "m.safetensors", s, {{"k", "v"}});
  const twin::SafetensorsHeader h = twin::read_safetensors_header(dir / "m.safetensors");
  REQUIRE(h.tensors.size() == s.size());
  std::size_t i = 0;
  std::uint64_t off = 0;
  for (const auto& [name, t] : s) {
    const auto& e = h.tensors[i++];
    CHECK(e.name == name);
    CHECK(e.dtype == t.dtype());
    CHECK(e.shape == std::vector<std::int64_t>(t.shape().begin(), t.shape().end()));
    CHECK(e.begin == off);
    off += t.nbytes();
    CHECK(e.end == off);
  }
  CHECK(h.data_bytes == off);
  CHECK(h.data_start + h.data_bytes == fs::file_size(dir / "m.safetensors"));
  CHECK(h.metadata == twin::Metadata{{"k", "v"}});
}

// ---------------------------------------------------------------------------
// Hostile inputs.

namespace {

struct BadFile {
  const char* what;
  std::string bytes;
  const char* message;  // a substring the error must contain
};

std::string entry(const std::string& name, const std::string& dt, const std::string& shape, const std::string& offs) {
  return "\"" + name + "\":{\"dtype\":\"" + dt + "\",\"shape\":" + shape + ",\"data_offsets\":" + offs + "}";
}

std::vector<BadFile> bad_files() {
  const std::string ok = "{" + entry("w", "F32", "[4]", "[0,16]") + "}";
  const std::string valid = raw_file(ok, 16);
  std::string deep = "{\"__metadata__\":" + std::string(40, '[') + std::string(40, ']') + "}";
  return {
      {"empty file", "", "too short for the 8-byte header length"},
      {"file shorter than the length prefix", "\x10\x00\x00", "too short"},
      {"file truncated inside the header", valid.substr(0, 20), "exceeds the file"},
      {"file truncated inside the data", valid.substr(0, valid.size() - 5), "exceed the data section (11 bytes)"},
      {"header length past the end", le64(4096) + ok, "header length 4096 exceeds the file"},
      {"header length over 100 MB", le64(200'000'000) + ok, "exceeds the 100 MB limit"},
      // The limit's edge: 10^8 bytes are allowed (the file is then too short), 10^8 + 1 are not.
      {"header length at the 100 MB limit", le64(100'000'000) + ok, "header length 100000000 exceeds the file"},
      {"header length one byte over the limit", le64(100'000'001) + ok, "exceeds the 100 MB limit"},
      {"header length 2^64-1", le64(~std::uint64_t{0}) + ok, "exceeds the 100 MB limit"},
      {"bad JSON", raw_file("{\"w\": {", 0), "not valid JSON"},
      {"JSON with trailing garbage", raw_file(ok + "xx", 16), "not valid JSON"},
      {"JSON that is not an object", raw_file("[1, 2]", 0), "header is a JSON array, expected an object"},
      {"entry that is not an object", raw_file("{\"w\": 3}", 0), "tensor 'w' is a JSON number"},
      {"missing dtype", raw_file("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4), "has no dtype"},
      {"unknown dtype", raw_file("{" + entry("w", "F8_E4M3", "[4]", "[0,4]") + "}", 4), "unknown dtype 'F8_E4M3'"},
      {"lower-case dtype", raw_file("{" + entry("w", "f32", "[1]", "[0,4]") + "}", 4), "unknown dtype 'f32'"},
      {"missing shape", raw_file("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4), "has no shape"},
      {"negative shape", raw_file("{" + entry("w", "F32", "[-1, 4]", "[0,4]") + "}", 4), "negative extent -1"},
      {"fractional shape", raw_file("{" + entry("w", "F32", "[1.5]", "[0,4]") + "}", 4),
       "expected a non-negative integer"},
      {"shape product overflow", raw_file("{" + entry("w", "U8", "[4294967296, 4294967296]", "[0,4]") + "}", 4),
       "element count overflows"},
      {"byte size overflow", raw_file("{" + entry("w", "F64", "[4611686018427387904]", "[0,4]") + "}", 4),
       "byte size overflows"},
      {"rank over the limit", raw_file("{" + entry("w", "U8", "[1,1,1,1,1,1,1,1,1]", "[0,1]") + "}", 1),
       "more than TWIN_MAX_RANK"},
      {"offsets out of range", raw_file("{" + entry("w", "F32", "[25]", "[0,100]") + "}", 64),
       "tensor 'w' data_offsets [0, 100] exceed the data section (64 bytes)"},
      {"offsets reversed", raw_file("{" + entry("w", "F32", "[1]", "[8,4]") + "}", 8), "end before they begin"},
      {"negative offset", raw_file("{" + entry("w", "F32", "[1]", "[-4,0]") + "}", 8), "needs data_offsets"},
      {"one offset", raw_file("{" + entry("w", "F32", "[1]", "[4]") + "}", 8), "needs data_offsets"},
      {"offsets overlapping",
       raw_file("{" + entry("a", "F32", "[4]", "[0,16]") + "," + entry("b", "F32", "[4]", "[8,24]") + "}", 24),
       "tensors 'a' [0, 16] and 'b' [8, 24] overlap"},
      {"offsets nested inside another tensor",
       raw_file("{" + entry("a", "F32", "[8]", "[0,32]") + "," + entry("b", "F32", "[1]", "[4,8]") + "," +
                    entry("c", "F32", "[1]", "[12,16]") + "}",
                32),
       "overlap"},
      // The tensors must tile the data section: bytes no tensor covers are
      // how polyglot files hide a second payload.
      {"a hole between tensors",
       raw_file("{" + entry("a", "F32", "[1]", "[0,4]") + "," + entry("b", "F32", "[1]", "[8,12]") + "}", 12),
       "data bytes [4, 8] before tensor 'b' belong to no tensor (a hole"},
      {"a hole before the first tensor", raw_file("{" + entry("w", "F32", "[1]", "[4,8]") + "}", 8),
       "data bytes [0, 4] before tensor 'w' belong to no tensor"},
      {"bytes after the last tensor", raw_file(ok, 24),
       "data bytes [16, 24] at the end of the file belong to no tensor"},
      {"data but only empty tensors", raw_file("{" + entry("e", "F32", "[0]", "[0,0]") + "}", 4),
       "data bytes [0, 4] at the end of the file belong to no tensor"},
      {"size mismatch", raw_file("{" + entry("w", "F32", "[4]", "[0,8]") + "}", 16), "size mismatch"},
      {"duplicate names",
       raw_file("{" + entry("w", "F32", "[1]", "[0,4]") + "," + entry("w", "F32", "[1]", "[4,8]") + "}", 8),
       "has the key 'w' twice (duplicate names)"},
      {"duplicate field",
       raw_file("{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
       "has the key 'dtype' twice"},
      {"non-string metadata", raw_file("{\"__metadata__\":{\"n\":3}," + entry("w", "F32", "[1]", "[0,4]") + "}", 4),
       "__metadata__ value of 'n' is a JSON number, expected a string"},
      {"metadata not an object", raw_file("{\"__metadata__\":[]}", 0), "__metadata__ is a JSON array"},
      {"deeply nested JSON", raw_file(deep, 0), "nests deeper than"},
      {"control characters in a name", raw_file("{" + entry("a\\nb", "F8", "[1]", "[0,1]") + "}", 1),
       "tensor 'a\\x0ab' has unknown dtype"},
      {"invalid UTF-8 in a name", raw_file("{" + entry("\xff\xfe", "F32", "[1]", "[0,4]") + "}", 4), "not valid JSON"},
  };
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const twin::io_error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("WRONG EXCEPTION TYPE: ") + e.what();
  }
  return "NO EXCEPTION";
}

}  // namespace

TEST_CASE("every hostile safetensors file is an io_error naming the file and the problem, from disk and memory") {
  TempDir dir;
  for (const BadFile& b : bad_files()) {
    INFO("case: " << b.what);
    const fs::path p = dir / "bad.safetensors";
    write_bytes(p, b.bytes);
    const std::string e = error_of([&] { (void)twin::load_safetensors(p); });
    INFO("error: " << e);
    CHECK(e.rfind(p.string() + ": ", 0) == 0);
    CHECK(e.find(b.message) != std::string::npos);
    CHECK(e.find('\n') == std::string::npos);  // one line, whatever the file holds
    // The header-only reader and the in-memory parser refuse it the same way.
    const std::string h = error_of([&] { (void)twin::read_safetensors_header(p); });
    CHECK(h == e);
    auto buf = std::make_shared<std::string>(b.bytes);
    const std::string m = error_of([&] {
      (void)twin::parse_safetensors(std::as_bytes(std::span<const char>(buf->data(), buf->size())), buf, "mem");
    });
    CHECK(m.rfind("mem: ", 0) == 0);
    CHECK(m.find(b.message) != std::string::npos);
  }
}

TEST_CASE("hostile sharded indexes are io_errors naming the index and the problem") {
  std::mt19937_64 rng(8);
  TempDir dir;
  twin::StateDict s;
  s.insert("a", random_bytes_tensor(rng, dtype::f32, {4}));
  s.insert("b", random_bytes_tensor(rng, dtype::f32, {4}));
  twin::save_safetensors(dir / "s1.safetensors", s);
  struct BadIndex {
    const char* what;
    std::string json;
    const char* message;
  };
  const std::vector<BadIndex> cases = {
      {"missing shard", R"({"weight_map":{"a":"s1.safetensors","b":"gone.safetensors"}})",
       "shard 'gone.safetensors' (listed for tensor 'b') does not exist"},
      {"shard outside the folder", R"({"weight_map":{"a":"../s1.safetensors"}})",
       "not a file inside the index's folder"},
      {"absolute shard path", R"({"weight_map":{"a":"/etc/passwd"}})", "not a file inside the index's folder"},
      {"tensor missing from its shard",
       R"({"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"s1.safetensors"}})",
       "tensor 'c' listed in weight_map is missing from shard 's1.safetensors'"},
      {"shard tensor not listed", R"({"weight_map":{"a":"s1.safetensors"}})",
       "holds tensor 'b', which weight_map does not list"},
      {"bad JSON", R"({"weight_map":)", "not valid JSON"},
      {"no weight_map", R"({"metadata":{}})", "no weight_map"},
      {"non-string shard", R"({"weight_map":{"a":1}})", "expected a shard file name"},
      {"duplicate names", R"({"weight_map":{"a":"s1.safetensors","a":"s1.safetensors"}})", "duplicate names"},
  };
  for (const auto& c : cases) {
    INFO("case: " << c.what);
    const fs::path p = dir / "model.safetensors.index.json";
    write_bytes(p, c.json);
    const std::string e = error_of([&] { (void)twin::load_safetensors(p); });
    INFO("error: " << e);
    CHECK(e.rfind(p.string() + ": ", 0) == 0);
    CHECK(e.find(c.message) != std::string::npos);
  }
  // A shard that exists but is corrupt is reported under the shard's name.
  write_bytes(dir / "s2.safetensors", "garbage!garbage!");
  write_bytes(dir / "model.safetensors.index.json", R"({"weight_map":{"a":"s2.safetensors"}})");
  const std::string e = error_of([&] { (void)twin::load_safetensors(dir / "model.safetensors.index.json"); });
  CHECK(e.rfind((dir / "s2.safetensors").string() + ": ", 0) == 0);
  // HF's numeric total_size is accepted, and the total_parameters that transformers ≥ 4.53 and mlx-lm add (any
  // value that is not a string is bookkeeping, skipped; strings are kept).
  write_bytes(dir / "model.safetensors.index.json",
              R"({"metadata":{"total_size":32},"weight_map":{"a":"s1.safetensors","b":"s1.safetensors"}})");
  CHECK(twin::load_safetensors(dir.path).tensors.size() == 2);
  const std::string hf453 = R"({"metadata":{"total_parameters":8030261248,"total_size":32,"x":[1],"note":"kept"},)"
                            R"("weight_map":{"a":"s1.safetensors","b":"s1.safetensors"}})";
  write_bytes(dir / "model.safetensors.index.json", hf453);
  const twin::SafetensorsIndex idx = twin::parse_safetensors_index(hf453, "index");
  CHECK(idx.metadata == twin::Metadata{{"note", "kept"}});
  CHECK(twin::load_safetensors(dir.path).tensors.size() == 2);
}

TEST_CASE("a header over safetensors' 100 MB limit is refused before writing, not written for readers to refuse") {
  // 101 empty tensors with names of 995 000 characters: a header of ~100.5 MB; 100 of them: ~99.5 MB, written
  // (the reader's side of the limit, exactly at 10^8 bytes, is a case of the hostile files above).
  TempDir dir;
  twin::StateDict s;
  for (int i = 0; i < 101; ++i) s.insert(std::string(995'000, 'a') + std::to_string(i), twin::Tensor(dtype::f32, {0}));
  const std::string e = error_of([&] { twin::save_safetensors(dir / "big.safetensors", s); });
  CHECK(e.find("over safetensors' 100000000-byte limit") != std::string::npos);
  CHECK(dir.files().empty());
  s.erase(std::string(995'000, 'a') + "0");  // 100 names: under the limit, written whole
  twin::save_safetensors(dir / "ok.safetensors", s);
  const std::vector<std::uint8_t> raw = read_bytes(dir / "ok.safetensors");
  const std::string_view bytes(reinterpret_cast<const char*>(raw.data()), raw.size());
  const std::uint64_t n = header_length_of(raw);
  CHECK(n > 99'000'000);
  CHECK(n <= 100'000'000);
  CHECK(bytes.size() == 8 + n);  // empty tensors: no data section
  // Every name is in the header, in order, as its JSON string.
  std::size_t at = 8, found = 0;
  for (int i = 1; i <= 100; ++i) {
    const std::string key = "\"" + std::string(995'000, 'a') + std::to_string(i) + "\":";
    const std::size_t p = bytes.find(key, at);
    if (p == std::string_view::npos) break;
    at = p + key.size();
    ++found;
  }
  CHECK(found == 100);
}

TEST_CASE("json_quote gives json_dump's bytes for any string; invalid UTF-8 is an io_error") {
  // Property: the writer's fast path for plain names is the library's own escaping, byte for byte.
  const std::vector<std::string> cases = {"",
                                          "layer.0.weight",
                                          "a b~{}[]:,/",
                                          "quote\"in",
                                          "back\\slash",
                                          std::string("nul\0byte", 8),
                                          "tab\tnewline\n",
                                          "\x7f",
                                          "\x1f",
                                          "日本語",
                                          "caf\xc3\xa9"};
  for (const std::string& c : cases) {
    CAPTURE(c);
    CHECK(twin::detail::json_quote(c, "src") == twin::detail::json_dump(twin::detail::json_value(c), "src"));
  }
  CHECK(error_of([] { (void)twin::detail::json_quote("bad\xff", "src"); }).find("not valid UTF-8") !=
        std::string::npos);
}

TEST_CASE("a missing file, a folder without a checkpoint and a non-regular file are io_errors") {
  TempDir dir;
  CHECK(error_of([&] {
          (void)twin::load_safetensors(dir / "nope.safetensors");
        }).find("nope.safetensors: cannot open") != std::string::npos);
  CHECK(error_of([&] { (void)twin::load_safetensors(dir.path); }).find("holds neither") != std::string::npos);
  CHECK(error_of([&] { (void)twin::load_safetensors("/dev/null"); }).find("not a regular file") != std::string::npos);
}

// ---------------------------------------------------------------------------
// Atomic writes.

TEST_CASE("saving into a folder that does not exist is an io_error naming the folder and creates nothing") {
  TempDir dir;
  twin::StateDict s;
  s.insert("x", twin::Tensor(dtype::f32, {2}));
  const fs::path missing = dir / "no" / "such";
  const std::string e = error_of([&] { twin::save_safetensors(missing / "m.safetensors", s); });
  CHECK(e.find("folder '" + missing.string() + "' does not exist") != std::string::npos);
  const std::string e2 = error_of([&] { (void)twin::save_safetensors_sharded(missing, s, {}, 100); });
  CHECK(e2.find("folder '" + missing.string() + "' does not exist") != std::string::npos);
  CHECK(dir.files().empty());
}

TEST_CASE("a write that fails midway keeps the existing target intact and leaves no temporary file") {
  std::mt19937_64 rng(9);
  TempDir dir;
  const fs::path target = dir / "m.safetensors";
  twin::StateDict small;
  small.insert("x", random_bytes_tensor(rng, dtype::f32, {8}));
  twin::save_safetensors(target, small);
  const auto before = read_bytes(target);

  // A real I/O failure in the middle of the data: the file size limit makes
  // write() fail with EFBIG once 64 KiB are written.
  twin::StateDict big;
  big.insert("y", random_bytes_tensor(rng, dtype::f32, {1 << 18}));  // 1 MiB
  struct rlimit old {};
  REQUIRE(::getrlimit(RLIMIT_FSIZE, &old) == 0);
  auto* old_handler = ::signal(SIGXFSZ, SIG_IGN);
  struct rlimit lim = old;
  lim.rlim_cur = 64 * 1024;
  REQUIRE(::setrlimit(RLIMIT_FSIZE, &lim) == 0);
  const std::string e = error_of([&] { twin::save_safetensors(target, big); });
  ::setrlimit(RLIMIT_FSIZE, &old);
  ::signal(SIGXFSZ, old_handler);
  INFO("error: " << e);
  CHECK(e.rfind(target.string() + ": cannot write", 0) == 0);
  CHECK(dir.files() == std::vector<std::string>{"m.safetensors"});
  CHECK(read_bytes(target) == before);

  // A state refused before writing (reserved name) also leaves no trace.
  twin::StateDict reserved;
  reserved.insert("__metadata__", twin::Tensor(dtype::f32, {1}));
  CHECK(error_of([&] { twin::save_safetensors(target, reserved); }).find("reserved") != std::string::npos);
  const std::vector<twin::NamedTensorView> dup = {{"a", small.at("x").view()}, {"a", small.at("x").view()}};
  CHECK(error_of([&] { twin::save_safetensors(target, dup); }).find("duplicate names") != std::string::npos);
  CHECK(dir.files() == std::vector<std::string>{"m.safetensors"});
  CHECK(read_bytes(target) == before);
}

TEST_CASE("saving over an existing checkpoint replaces it with the new content") {
  std::mt19937_64 rng(10);
  TempDir dir;
  twin::StateDict a, b;
  a.insert("x", random_bytes_tensor(rng, dtype::f32, {100}));
  b.insert("y", random_bytes_tensor(rng, dtype::f16, {3}));
  twin::save_safetensors(dir / "m.safetensors", a);
  // The old mapping stays valid while the file is replaced under it (rename
  // swaps the directory entry; the mapped inode lives on).
  const twin::LoadedCheckpoint old = twin::load_safetensors(dir / "m.safetensors");
  twin::save_safetensors(dir / "m.safetensors", b, {{"v", "2"}});
  check_same_state(twin::load_safetensors(dir / "m.safetensors").tensors, b);
  check_same_state(old.tensors, a);
  CHECK(dir.files() == std::vector<std::string>{"m.safetensors"});
}
