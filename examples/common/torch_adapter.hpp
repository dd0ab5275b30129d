// twin's adapter for PyTorch's at::Tensor (Debian's libtorch-dev), shared by
// the examples that run inside libtorch: data, dtype, shape and element
// strides. at::Tensor is a shared handle, so twin writes through const
// references (the handle form of the seam, docs/design.md §4).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "twin/adapter.hpp"
#include "twin/error.hpp"
#include "twin/state_dict.hpp"
#include "twin/tensor.hpp"

template <>
struct twin::tensor_adapter<at::Tensor> {
  static void* data(const at::Tensor& t) { return t.data_ptr(); }
  static twin::dtype dtype(const at::Tensor& t) {
    switch (t.scalar_type()) {
      case at::kFloat: return twin::dtype::f32;
      case at::kHalf: return twin::dtype::f16;
      case at::kBFloat16: return twin::dtype::bf16;
      case at::kDouble: return twin::dtype::f64;
      default: throw twin::dtype_error(std::string("at::Tensor of type ") + c10::toString(t.scalar_type()));
    }
  }
  static std::span<const std::int64_t> shape(const at::Tensor& t) { return {t.sizes().data(), t.sizes().size()}; }
  // Computed on the spot (a value): twin copies it out at once.
  static std::vector<std::int64_t> strides(const at::Tensor& t) { return t.strides().vec(); }
  static twin::device device(const at::Tensor& t) {
    return t.is_cuda() ? twin::device{twin::device::cuda, static_cast<int>(t.get_device())} : twin::device{};
  }
};

namespace examples {

// The module's parameters as a twin StateDict of read-only views: no copy is
// made; each entry holds its at::Tensor handle, so the storage outlives the
// module if need be. Parameters must be contiguous CPU tensors.
inline twin::StateDict borrow_parameters(const torch::nn::Module& m) {
  twin::StateDict sd;
  for (const auto& item : m.named_parameters()) {
    const at::Tensor& t = item.value();
    if (!t.is_contiguous() || t.is_cuda())
      throw twin::argument_error("parameter " + item.key() + " is not a contiguous CPU tensor");
    const twin::ConstTensorView v = twin::adapt(t);
    auto handle = std::make_shared<at::Tensor>(t.detach());
    const void* data = handle->data_ptr();
    sd.insert(item.key(), twin::Tensor::borrow(std::move(handle), data, v.dtype(), v.shape()));
  }
  return sd;
}

// Copies a StateDict into the module's parameters: parameter `name` from
// tensor `prefix` + name (shapes must match; dtypes are converted). Every
// parameter must be present; other tensors of the state dict are ignored.
inline void load_parameters(torch::nn::Module& m, const twin::StateDict& sd, const std::string& prefix = {}) {
  torch::NoGradGuard no_grad;
  for (auto& item : m.named_parameters()) {
    const twin::Tensor* t = sd.find(prefix + item.key());
    if (!t) throw twin::name_error("state dict has no tensor '" + prefix + item.key() + "'");
    twin::copy_convert(t->view(), twin::adapt(item.value()));
  }
}

}  // namespace examples
