// Builds the tests' shared precompiled header (doctest and twin/twin.hpp),
// which every test built with the common flags reuses (tests/CMakeLists.txt).
