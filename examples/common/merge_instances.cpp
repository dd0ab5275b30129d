// The one translation unit of twin's own programs (examples, tests) that
// compiles AnyMerger's dispatch, and with it the kernels of every merge
// strategy it reaches; every other unit is compiled with
// TWIN_EXTERN_TEMPLATES=1 and sees that dispatch declared only (config.hpp:
// TWIN_COMPILED_ONCE). Apart from backend_instances.cpp so that the two
// build side by side.
#define TWIN_DEFINE_COMPILED_ONCE 1
#include "twin/merge/any_merger.hpp"
