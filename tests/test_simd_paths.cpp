// The vector kernels a build chooses at run time from the CPU (Philox's
// rounds: AVX-512F, AVX2, portable; the bf16 fusion's AVX-512 BF16 product;
// DELLA's list of undecided draws; the streamed masks' bit packing; the
// top-k window scan):
// each is run here by name, whatever the CPU would pick, and a kernel this
// CPU lacks is reported SKIPPED.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "twin/backend/cpu/bf16_pairs.hpp"
#include "twin/backend/cpu/lines_ahead.hpp"
#include "twin/dtype.hpp"
#include "twin/merge/gta_masks.hpp"
#include "twin/random.hpp"

namespace {
// Runs f(avx512) for the portable kernel and, where this CPU has AVX-512F,
// the AVX-512 one (reported SKIPPED elsewhere): the kernels chosen from
// twin::cpu_has_avx512f (merge/gta_masks.hpp, merge/selection.hpp).
template <class F>
void for_each_avx512_kernel(F&& f) {
  for (const bool avx512 : {false, true}) {
    CAPTURE(avx512);
    if (avx512 && !twin::cpu_has_avx512f()) {
      MESSAGE("SKIPPED: this CPU has no avx512");
      continue;
    }
    f(avx512);
  }
}
}  // namespace

TEST_CASE("set_bits packs keep masks into bit words with either kernel, from any offset, other bits untouched") {
  // Property: after set_bits(keep, p0, p1, words), bit j of words (j in [p0, p1)) is set iff keep[j − p0] is
  // all ones, and every bit outside [p0, p1) is what it was; checked bit by bit against that definition, for
  // ranges that start and end inside a word, on word edges, and span many words.
  std::mt19937_64 rng(3);
  for_each_avx512_kernel([&](bool avx512) {
    for (const std::int64_t p0 : {0, 1, 37, 63, 64, 100, 128})
      for (const std::int64_t len : {0, 1, 27, 63, 64, 65, 128, 200, 1000}) {
        CAPTURE(p0);
        CAPTURE(len);
        const std::int64_t p1 = p0 + len;
        std::vector<std::uint64_t> words(static_cast<std::size_t>(p1 / 64 + 2));
        for (std::uint64_t& w : words) w = rng();
        for (std::int64_t j = p0; j < p1; ++j)
          words[static_cast<std::size_t>(j >> 6)] &= ~(std::uint64_t{1} << (j & 63));
        const std::vector<std::uint64_t> before = words;
        std::vector<std::uint32_t> keep(static_cast<std::size_t>(len));
        for (std::uint32_t& k : keep) k = rng() % 2 ? 0xffffffffu : 0u;
        twin::detail::set_bits(keep.data(), p0, p1, words.data(), avx512);
        std::int64_t wrong = 0;
        for (std::int64_t j = 0; j < static_cast<std::int64_t>(words.size()) * 64; ++j) {
          const bool got = (words[static_cast<std::size_t>(j >> 6)] >> (j & 63)) & 1u;
          const bool want = j >= p0 && j < p1 ? keep[static_cast<std::size_t>(j - p0)] != 0
                                              : ((before[static_cast<std::size_t>(j >> 6)] >> (j & 63)) & 1u) != 0;
          wrong += got != want;
        }
        CHECK(wrong == 0);
      }
  });
}

TEST_CASE("scan_windows counts the keys above each window and appends those inside it, with every kernel") {
  // Property: for window x over x = v[x] − base (v[x] alone without base; f32 values, or bf16 bits widened),
  // scan_windows adds to above[x] how many keys exceed its hi and writes at out[x], in index order after
  // what the buffer held, the keys with lo ≤ key ≤ hi; checked against a plain loop over each window's keys,
  // for lengths around the 16-entry steps, windows holding every key, none, and a band, keys equal to
  // either bound, negative zeros and NaNs (their keys are compared like any), windows sharing a vector
  // with the one before them or not (the kernel reuses the keys of the one before), and more windows than
  // a kernel takes at once.
  std::mt19937_64 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const std::uint32_t half = twin::magnitude_key(0.5f);
  // 20 windows: past a group of 16 (the vector kernels take 16 at a time).
  std::vector<twin::detail::KeyWindow> win;
  std::vector<std::size_t> vec_of;  // window x scans vector vec_of[x]
  for (int r = 0; r < 4; ++r) {
    win.insert(win.end(),
               {{0u, 0xffffffffu}, {half, half}, {twin::magnitude_key(0.25f), half}, {1u, 0u}, {half, half}});
    vec_of.insert(vec_of.end(), {0, 0, 1, 1, 0});
  }
  using twin::SimdKernel;
  for (const SimdKernel kernel : {SimdKernel::portable, SimdKernel::avx2, SimdKernel::avx512}) {
    CAPTURE(static_cast<int>(kernel));
    if (!twin::cpu_has(kernel)) {
      MESSAGE("SKIPPED: this CPU cannot run kernel level " << static_cast<int>(kernel));
      continue;
    }
    for (const std::int64_t c : {0, 1, 15, 16, 17, 40, 256, 1001})
      for (const bool with_base : {true, false})
        for (const bool bf16 : {false, true}) {
          CAPTURE(c);
          CAPTURE(with_base);
          CAPTURE(bf16);
          std::vector<std::vector<float>> e(2, std::vector<float>(static_cast<std::size_t>(c)));
          std::vector<std::vector<std::uint16_t>> h(2, std::vector<std::uint16_t>(static_cast<std::size_t>(c)));
          std::vector<float> b(static_cast<std::size_t>(c));
          for (std::int64_t j = 0; j < c; ++j) {
            const auto s = static_cast<std::size_t>(j);
            const auto r = rng() % 16;
            for (std::size_t v = 0; v < 2; ++v) {
              e[v][s] = r == 0 ? -0.0f : r == 1 ? std::nanf("") : r == 2 ? 0.5f : nd(rng);
              h[v][s] = twin::f32_to_bf16(e[v][s]);
              if (bf16) e[v][s] = twin::bf16_to_f32(h[v][s]);  // the values the bf16 scan sees
            }
            b[s] = r == 2 ? 0.0f : nd(rng) * 0.1f;
          }
          const float* base = with_base ? b.data() : nullptr;
          std::vector<twin::detail::KeyBuffer> in(win.size());
          std::vector<std::uint32_t*> out;
          std::vector<std::int64_t> above(win.size(), 3), want_above(win.size(), 3);  // counts already held stay
          std::vector<std::vector<std::uint32_t>> want(win.size(), {7u});
          for (std::size_t x = 0; x < win.size(); ++x) {
            *in[x].tail(static_cast<std::size_t>(c) + 1) = 7u, in[x].size = 1;  // keys already held stay first
            out.push_back(in[x].tail(static_cast<std::size_t>(c)));
            const std::vector<float>& ev = e[vec_of[x]];
            for (std::size_t s = 0; s < static_cast<std::size_t>(c); ++s) {
              const std::uint32_t key = twin::magnitude_key(base ? ev[s] - b[s] : ev[s]);
              want_above[x] += key > win[x].second;
              if (key >= win[x].first && key <= win[x].second) want[x].push_back(key);
            }
          }
          // The lines to ask for meanwhile (here the vectors' own): asked for, the results unchanged.
          twin::backend::cpu::LinesAhead ahead;
          for (std::size_t i = 0; i < 2; ++i) ahead.add(e[i].data(), e[i].size() * sizeof(float));
          if (bf16) {
            std::vector<const std::uint16_t*> v;
            for (const std::size_t i : vec_of) v.push_back(h[i].data());
            twin::detail::scan_windows(v.data(), base, c, win, above.data(), out.data(), kernel, &ahead);
          } else {
            std::vector<const float*> v;
            for (const std::size_t i : vec_of) v.push_back(e[i].data());
            twin::detail::scan_windows(v.data(), base, c, win, above.data(), out.data(), kernel, &ahead);
          }
          CHECK(ahead.left() == 0);
          CHECK(above == want_above);
          for (std::size_t x = 0; x < win.size(); ++x) {
            CAPTURE(x);
            in[x].size = static_cast<std::size_t>(out[x] - in[x].keys.get());
            const std::span<const std::uint32_t> got = in[x].view();
            CHECK(std::vector<std::uint32_t>(got.begin(), got.end()) == want[x]);
          }
        }
  }
}

TEST_CASE("LinesAhead plans every cache line its ranges touch, in order, and asks for each once") {
  // Property: a range of `bytes` from p holds the lines from p's down to (p + bytes − 1)'s (64-byte lines,
  // counted by hand below), ranges add up, empty ones add nothing; ask(n) takes n of them (fewer where the
  // plan ends), per(i) spreads them over i steps (rounded up), and clear() empties the plan.
  alignas(64) static char mem[1024];
  twin::backend::cpu::LinesAhead a;
  a.add(mem, 64);       // one whole line
  a.add(mem + 63, 2);   // bytes 63 and 64: two lines
  a.add(mem + 100, 0);  // nothing
  a.add(mem + 1, 200);  // bytes 1..200: lines 0..3
  CHECK(a.lines() == 1 + 2 + 4);
  CHECK(a.left() == 7);
  CHECK(a.per(3) == 3);
  CHECK(a.per(7) == 1);
  CHECK(a.per(0) == 7);
  a.ask(2);
  CHECK(a.left() == 5);
  a.ask(10);
  CHECK(a.left() == 0);
  a.clear();
  CHECK(a.lines() == 0);
  CHECK(a.left() == 0);
}

TEST_CASE("list_between lists the indices with lo <= u < hi, ascending, with either kernel") {
  // Property: the list is exactly the ascending indices b < n with lo ≤ u[b] < hi (DELLA's draws between
  // p(0) and p(len − 1)), checked against a plain filter, for lengths around the 16-entry steps, bounds
  // that every draw meets or none, and draws equal to a bound (lo is in, hi is out).
  std::mt19937_64 rng(4);
  std::uniform_real_distribution<float> ud(0.0f, 1.0f);
  for_each_avx512_kernel([&](bool avx512) {
    for (const std::size_t n : {0, 1, 15, 16, 17, 33, 768, 1001})
      for (const auto& [lo, hi] : {std::pair{0.35f, 0.65f}, std::pair{0.0f, 1.0f}, std::pair{0.5f, 0.5f}}) {
        CAPTURE(n);
        CAPTURE(lo);
        std::vector<float> u(n);
        for (float& x : u) x = rng() % 8 == 0 ? (rng() % 2 ? lo : hi) : ud(rng);
        std::vector<std::uint32_t> want, got(n + 16, 0xdeadbeefu);
        for (std::size_t b = 0; b < n; ++b)
          if (u[b] >= lo && u[b] < hi) want.push_back(static_cast<std::uint32_t>(b));
        const std::size_t k = twin::detail::list_between(u.data(), n, lo, hi, got.data(), avx512);
        got.resize(k);
        CHECK(got == want);
      }
  });
}

TEST_CASE("every Philox::uniforms kernel gives the values of Philox::uniform for any start and length") {
  // Property: each kernel's rounds (vpmuludq, round keys computed once, no
  // masking between rounds) and its interleaving of the four words equal
  // the scalar block function, the reference, word for word.
  using Kernel = twin::Philox::Kernel;
  const std::pair<Kernel, const char*> kernels[] = {
      {Kernel::portable, "portable"}, {Kernel::avx2, "avx2"}, {Kernel::avx512, "avx512"}};
  for (const auto& [kernel, name] : kernels) {
    CAPTURE(name);
    if (!twin::Philox::cpu_has(kernel)) {
      MESSAGE("SKIPPED: this CPU has no " << name);
      continue;
    }
    for (const std::uint64_t key : {0ull, 0x1234567890abcdefull, ~0ull}) {
      const twin::Philox rng(key);
      // Starts inside a block and across the 2^32 boundary of the block
      // counter's low word; lengths around whole batches (32 blocks = 128
      // values) and partial ones.
      for (const std::uint64_t first : {0ull, 1ull, 6ull, 4294967294ull * 4 + 3, (1ull << 60) + 1}) {
        for (const std::uint64_t stream : {0ull, 99ull, 0xffffffffull, ~0ull}) {
          for (const std::size_t n : {0u, 1u, 3u, 4u, 5u, 63u, 64u, 65u, 127u, 128u, 129u, 256u, 1000u}) {
            std::vector<float> u(n);
            rng.uniforms(kernel, first, n, stream, u.data());
            std::size_t differ = 0;
            for (std::size_t k = 0; k < n; ++k) differ += u[k] != rng.uniform(first + k, stream);
            CAPTURE(key);
            CAPTURE(first);
            CAPTURE(stream);
            CAPTURE(n);
            CHECK(differ == 0);
          }
        }
      }
    }
  }
}

TEST_CASE("Philox::best_kernel is the widest kernel this CPU has") {
  // Property: the run-time choice is one the CPU runs, and no wider one is
  // left unused (the reference: cpu_has for each level, widest first).
  using Kernel = twin::Philox::Kernel;
  const Kernel best = twin::Philox::best_kernel();
  CHECK(twin::Philox::cpu_has(best));
  const Kernel expected = twin::Philox::cpu_has(Kernel::avx512) ? Kernel::avx512
                          : twin::Philox::cpu_has(Kernel::avx2) ? Kernel::avx2
                                                                : Kernel::portable;
  CHECK(best == expected);
}

TEST_CASE("Philox::uniforms_side_by_side gives each generator's Philox::uniform values in its own row") {
  // Property: drawing several generators' values side by side (AVX-512:
  // vectors of different generators and counters in one kernel call, four
  // per call, round keys per vector) equals each generator's scalar block
  // function, for starts inside and at block boundaries, lengths around
  // whole 32-value vectors, and counts around the four vectors per call; the
  // gap between rows (stride > n) is left as it was.
  using Kernel = twin::Philox::Kernel;
  for (const Kernel kernel : {Kernel::portable, Kernel::avx2, Kernel::avx512}) {
    CAPTURE(static_cast<int>(kernel));
    if (!twin::Philox::cpu_has(kernel)) {
      MESSAGE("SKIPPED: this CPU lacks kernel " << static_cast<int>(kernel));
      continue;
    }
    std::vector<twin::Philox> g;
    for (std::uint64_t e = 0; e < 9; ++e) g.emplace_back(0x9E3779B97F4A7C15ull * (e + 1));
    for (const std::size_t count : {1u, 3u, 4u, 5u, 9u}) {
      for (const std::uint64_t first : {0ull, 4ull, 2ull, 4294967294ull * 4 + 4, 64ull}) {
        for (const std::size_t n : {0u, 1u, 31u, 32u, 33u, 64u, 96u, 100u}) {
          const std::size_t stride = n + 3;
          std::vector<float> u(count * stride, -1.0f);
          twin::Philox::uniforms_side_by_side(kernel, g.data(), count, first, n, 7, u.data(), stride);
          std::size_t differ = 0, touched = 0;
          for (std::size_t e = 0; e < count; ++e) {
            for (std::size_t k = 0; k < n; ++k) differ += u[e * stride + k] != g[e].uniform(first + k, 7);
            for (std::size_t k = n; k < stride; ++k) touched += u[e * stride + k] != -1.0f;
          }
          CAPTURE(count);
          CAPTURE(first);
          CAPTURE(n);
          CHECK(differ == 0);
          CHECK(touched == 0);
        }
      }
    }
  }
}

// add_product_bf16_pairs into S, C of element type T (bf16 bits or f32)
// against double-precision sums; returns the entries checked.
template <class T>
std::int64_t check_pairs_kernel() {
  using namespace twin::backend::cpu;
  constexpr bool bf16 = std::is_same_v<T, std::uint16_t>;
  auto value = [](T x) { return bf16 ? twin::bf16_to_f32(static_cast<std::uint16_t>(x)) : static_cast<double>(x); };
  std::mt19937 g(7);
  std::normal_distribution<float> nd;
  constexpr std::uint16_t nan = 0x7fc0;
  const T sentinel = bf16 ? T(0x7fc1) : T(-1234.5f);
  std::int64_t checked = 0;
  for (const std::int64_t M : {1, 5, 6, 7, 13})
    for (const std::int64_t N : {1, 15, 16, 17, 63, 64, 65, 130, 1100})
      for (const std::int64_t K : {1, 2, 3, 8, 17, 128}) {
        CAPTURE(bf16);
        CAPTURE(M);
        CAPTURE(N);
        CAPTURE(K);
        const std::int64_t lda = K + 3, ldb = K + 1, lds = N + 2, ldc = N + 5;
        std::vector<std::uint16_t> A(static_cast<std::size_t>((M + 1) * lda), nan),
            B(static_cast<std::size_t>(N * ldb), nan), Bp(static_cast<std::size_t>(bf16_pairs_size(N, K))),
            Bp2(Bp.size(), 1);
        std::vector<T> S(static_cast<std::size_t>(M * lds)), C(static_cast<std::size_t>((M + 1) * ldc), sentinel),
            C2(C);
        for (std::int64_t i = 0; i < M; ++i)
          for (std::int64_t k = 0; k < K; ++k) A[static_cast<std::size_t>(i * lda + k)] = twin::f32_to_bf16(nd(g));
        for (std::int64_t j = 0; j < N; ++j)
          for (std::int64_t k = 0; k < K; ++k) B[static_cast<std::size_t>(j * ldb + k)] = twin::f32_to_bf16(nd(g));
        for (auto& x : S) x = bf16 ? T(twin::f32_to_bf16(4.0f * nd(g))) : T(4.0f * nd(g));
        pack_bf16_pairs(B.data(), N, K, ldb, 0, N, Bp.data());
        add_product_bf16_pairs(M, N, K, A.data(), lda, Bp.data(), S.data(), lds, C.data(), ldc);
        const std::int64_t jh = N / 2 / 16 * 16, ih = M / 2;
        pack_bf16_pairs(B.data(), N, K, ldb, jh, N, Bp2.data());
        pack_bf16_pairs(B.data(), N, K, ldb, 0, jh, Bp2.data());
        add_product_bf16_pairs(ih, N, K, A.data(), lda, Bp2.data(), S.data(), lds, C2.data(), ldc);
        add_product_bf16_pairs(M - ih, N, K, A.data() + ih * lda, lda, Bp2.data(), S.data() + ih * lds, lds,
                               C2.data() + ih * ldc, ldc);
        CHECK(Bp2 == Bp);
        // The packing against its definition: pair p of row j, a zero after an odd K's last entry.
        std::int64_t misplaced = 0;
        for (std::int64_t q = 0; q < (K + 1) / 2 * 2; ++q)
          for (std::int64_t j = 0; j < N; ++j)
            misplaced += Bp[static_cast<std::size_t>(((q / 2) * N + j) * 2 + (q & 1))] !=
                         (q < K ? B[static_cast<std::size_t>(j * ldb + q)] : std::uint16_t{0});
        CHECK(misplaced == 0);
        CHECK(std::memcmp(C2.data(), C.data(), C.size() * sizeof(T)) == 0);
        std::int64_t bad = 0, untouched = 0;
        for (std::int64_t i = 0; i <= M; ++i)
          for (std::int64_t j = 0; j < ldc; ++j) {
            const T c = C[static_cast<std::size_t>(i * ldc + j)];
            if (i == M || j >= N) {
              untouched += std::memcmp(&c, &sentinel, sizeof(T)) != 0;
              continue;
            }
            double ref = value(S[static_cast<std::size_t>(i * lds + j)]), mag = std::abs(ref);
            for (std::int64_t k = 0; k < K; ++k) {
              const double p = twin::bf16_to_f32(A[static_cast<std::size_t>(i * lda + k)]) *
                               twin::bf16_to_f32(B[static_cast<std::size_t>(j * ldb + k)]);
              ref += p;
              mag += std::abs(p);
            }
            const double tol =
                (bf16 ? std::ldexp(std::abs(ref), -8) : 0.0) + 2.0 * static_cast<double>(K + 1) * std::ldexp(mag, -24);
            bad += !(std::abs(value(c) - ref) <= tol);
            ++checked;
          }
        CHECK(bad == 0);
        CHECK(untouched == 0);
      }
  return checked;
}

TEST_CASE(
    "add_product_bf16_pairs gives S + A·Bᵀ summed in f32 (and for bf16 S, C rounded once), for every tail shape") {
  // Property: each entry is within the f32 sum's error of the
  // double-precision S + Σ_k a_k b_k (K + 1 roundings of at most 2⁻²⁴ of
  // the magnitudes), plus one bf16 rounding for a bf16 C, for row counts
  // around the 6-row tile, column counts around the 16-column vectors and
  // 64-column panels (and past the 1024-column chunks of Bp kept in L2 at
  // K = 128), odd and even K (A holds NaNs past each row's K entries: the
  // odd pair must not read them), leading dimensions wider than the rows;
  // the columns past N and the rows past M are left as they were; and a call
  // split into two row ranges, with B packed in two column ranges, gives
  // the same bits.
  if (!twin::backend::cpu::bf16_pairs_cpu()) {
    MESSAGE("SKIPPED: this CPU has no AVX-512 BF16");
    return;
  }
  CHECK(check_pairs_kernel<std::uint16_t>() > 0);
  CHECK(check_pairs_kernel<float>() > 0);
}
