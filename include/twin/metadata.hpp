// Metadata: the string-to-string settings a file carries beside its tensors
// (safetensors' __metadata__). Defined here, below every layer, so that the
// objects that describe themselves (compressors, models, the router) and the
// file formats that store them share one type.
#pragma once

#include <map>
#include <string>

namespace twin {

using Metadata = std::map<std::string, std::string>;

}  // namespace twin
