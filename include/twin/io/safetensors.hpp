// Reading and writing safetensors checkpoints (docs/design.md §5): the
// format (safetensors_format.hpp), loading by mmap (safetensors_read.hpp) and
// atomic writing (safetensors_write.hpp).
#pragma once

#include "twin/io/safetensors_format.hpp"
#include "twin/io/safetensors_read.hpp"
#include "twin/io/safetensors_write.hpp"
