// Configure-time probe (tests/CMakeLists.txt): exits 0 where this build's
// AVX-512 copies exist and the CPU running the probe can run them.
#include "twin/backend/cpu/avx512_copies.hpp"

int main() { return TWIN_HAS_AVX512_COPIES && twin::backend::cpu::avx512_copies_cpu() ? 0 : 1; }
