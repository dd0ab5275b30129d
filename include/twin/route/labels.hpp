// Task ids as labels: the one range check every consumer of labels runs
// (router training and evaluation, the loss, the samplers), and reading
// labels from an integer tensor.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "twin/convert.hpp"
#include "twin/dtype.hpp"
#include "twin/error.hpp"
#include "twin/tensor_view.hpp"

namespace twin {

// Every label must be a task id in [0, num_tasks).
inline void check_labels(std::span<const std::int64_t> labels, std::int64_t num_tasks, std::string_view what) {
  for (std::size_t i = 0; i < labels.size(); ++i)
    if (labels[i] < 0 || labels[i] >= num_tasks)
      throw argument_error(std::string(what) + ": label " + std::to_string(labels[i]) + " at index " +
                           std::to_string(i) + " is outside [0, " + std::to_string(num_tasks) + ")");
}

// Labels from an integer tensor of shape [N] (a file's `labels`).
inline std::vector<std::int64_t> labels_from(const ConstTensorView& v) {
  if (dtype_is_float(v.dtype()))
    throw dtype_error("labels: expected an integer dtype, found " + std::string(dtype_name(v.dtype())));
  if (v.rank() != 1) throw shape_error("labels: expected shape [N], found " + v.shape_str());
  std::vector<std::int64_t> out(static_cast<std::size_t>(v.numel()));
  for (std::int64_t i = 0; i < v.numel(); ++i) {
    const double x = element_f64(v, i);
    out[static_cast<std::size_t>(i)] = static_cast<std::int64_t>(x);
  }
  return out;
}

}  // namespace twin
