// twin inside a real engine: PyTorch's C++ API (Debian's libtorch-dev). A
// torch::nn model is the host; its parameters are fused in place by
//
//     fuser.fuse(net->named_parameters(), logits);
//
// through the at::Tensor adapter of examples/common/torch_adapter.hpp
// (at::Tensor is a shared handle, so it is written through const
// references), then the model runs. One layer is
// bf16 and one parameter is a transposed (strided) view. The program checks
// that one-hot logits give each expert's own outputs back (exactly up to
// rounding at full rank) and that a mixture differs from every expert, and
// exits non-zero otherwise; ctest runs it where CMake finds Torch.
#include <torch/torch.h>

#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "common/torch_adapter.hpp"
#include "twin/twin.hpp"

namespace {

constexpr std::int64_t kIn = 16, kHidden = 32, kOut = 8, kProj = 4;
constexpr int kExperts = 3;

// fc1 in f32, fc2 in bf16, and `proj` a transposed view of a [kProj, kOut]
// buffer, registered as is: its strides are (1, kOut).
struct NetImpl : torch::nn::Module {
  NetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(kIn, kHidden));
    fc2 = register_module("fc2", torch::nn::Linear(kHidden, kOut));
    fc2->to(torch::kBFloat16);
    proj = register_parameter("proj", torch::randn({kProj, kOut}).t());
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const torch::Tensor h = torch::relu(fc1(x));
    return fc2(h.to(torch::kBFloat16)).to(torch::kFloat).matmul(proj);
  }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::Tensor proj;
};
TORCH_MODULE(Net);

using Params = std::vector<std::pair<std::string, torch::Tensor>>;

Params snapshot(Net& net) {
  Params p;
  for (const auto& item : net->named_parameters()) p.emplace_back(item.key(), item.value().detach().clone());
  return p;
}

void load(Net& net, const Params& p) {
  torch::NoGradGuard no_grad;
  auto params = net->named_parameters();
  for (const auto& [name, t] : p) params[name].copy_(t);
}

// twin's copy of a parameter set (read through the adapter, no torch math).
twin::StateDict to_state(const Params& p) {
  twin::StateDict sd;
  for (const auto& [name, t] : p) {
    const twin::ConstTensorView v = twin::adapt(t);
    twin::Tensor copy = twin::Tensor::empty(v.dtype(), v.shape());
    twin::copy_convert(v, copy.view());
    sd.insert(name, std::move(copy));
  }
  return sd;
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

}  // namespace

int main() try {
  torch::manual_seed(0);
  Net net;
  const Params base = snapshot(net);
  // Experts: the base plus a rank-2 change per matrix and a small bias change.
  std::vector<Params> experts;
  for (int e = 0; e < kExperts; ++e) {
    Params p = snapshot(net);
    for (auto& [name, t] : p) {
      if (t.dim() == 2) {
        const auto u = torch::randn({t.size(0), 2}), v = torch::randn({2, t.size(1)});
        t += (0.2 * u.matmul(v)).to(t.scalar_type());
      } else {
        t += (0.1 * torch::randn(t.sizes())).to(t.scalar_type());
      }
    }
    experts.push_back(std::move(p));
  }

  // The Twin model: Task Arithmetic θ*, exclusive knowledge at full rank.
  std::vector<twin::StateDict> expert_states;
  for (const Params& p : experts) expert_states.push_back(to_state(p));
  const twin::TwinModel model = twin::TwinModel::build(to_state(base), std::span<const twin::StateDict>(expert_states),
                                                       twin::TaskArithmetic{0.3, {}},
                                                       twin::SvdCompressor::with_rank(kHidden));
  const twin::DynamicFuser fuser(model);

  const torch::Tensor x = torch::randn({5, kIn});
  std::vector<torch::Tensor> expert_out;
  for (const Params& p : experts) {
    load(net, p);
    torch::NoGradGuard no_grad;
    expert_out.push_back(net->forward(x));
  }

  int failures = 0;
  for (int e = 0; e < kExperts; ++e) {
    std::vector<float> logits(kExperts, -30.0f);
    logits[static_cast<std::size_t>(e)] = 30.0f;  // one-hot after the softmax
    load(net, base);                              // start from other values
    {
      torch::NoGradGuard no_grad;
      fuser.fuse(net->named_parameters(), logits);
    }
    torch::NoGradGuard no_grad;
    const double d = max_abs_diff(net->forward(x), expert_out[static_cast<std::size_t>(e)]);
    // fc2 is stored in bf16: θ* + v̂ is rounded once more than the expert.
    const bool ok = d < 0.05;
    failures += !ok;
    std::printf("one-hot fusion of expert %d vs the expert's own model: max |Δ output| = %.3g %s\n", e, d,
                ok ? "ok" : "FAILED");
  }
  {
    torch::NoGradGuard no_grad;
    fuser.fuse(net->named_parameters(), {0.2f, 0.5f, -0.1f});
    const torch::Tensor mixed = net->forward(x);
    double nearest = 1e30;
    for (const auto& o : expert_out) nearest = std::min(nearest, max_abs_diff(mixed, o));
    const bool ok = nearest > 0.05;
    failures += !ok;
    std::printf("mixture (logits 0.2, 0.5, -0.1): distance to the nearest expert %.3g %s\n", nearest,
                ok ? "ok" : "FAILED");
  }
  const auto strides = net->proj.strides();
  std::printf("proj is a transposed view (strides %lld, %lld), fc2 is %s; %s\n", static_cast<long long>(strides[0]),
              static_cast<long long>(strides[1]), c10::toString(net->fc2->weight.scalar_type()),
              failures ? "FAILED" : "all checks passed");
  return failures ? 1 : 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
