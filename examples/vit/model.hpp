// The transformer of the libtorch reproduction (examples/paper_vit.cpp): a
// small pre-LN vision transformer on 28×28 images. The image is cut into the
// 16 tiles of 7×7 pixels, each a token (Linear 49 → D), a class token is
// prepended and a learned position embedding added; `depth` blocks of
// LayerNorm → 4-head self-attention → residual, LayerNorm → MLP (GELU) →
// residual; a final LayerNorm. Heads (one Linear D → 10 per task) read the
// class token and live outside the body, so that merges see the body only.
//
// Parameter names, as twin sees them: patch.{weight,bias}, cls [1, D],
// pos [17, D], blocks.<i>.{ln1,qkv,proj,ln2,fc1,fc2}.{weight,bias},
// norm.{weight,bias}.
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>

namespace vit {

inline constexpr std::int64_t kSide = 28, kPatch = 7, kGrid = kSide / kPatch, kTiles = kGrid * kGrid,
                              kPatchDim = kPatch * kPatch, kTokens = kTiles + 1, kClasses = 10;

struct Shape {
  std::int64_t width = 64, heads = 4, depth = 2, mlp = 128;
};

// [B, 784] → [B, 16, 49]: the tiles in row-major order of the 4×4 grid, each
// tile's pixels in row-major order.
inline torch::Tensor tiles(const torch::Tensor& x) {
  const std::int64_t B = x.size(0);
  return x.view({B, kGrid, kPatch, kGrid, kPatch}).permute({0, 1, 3, 2, 4}).reshape({B, kTiles, kPatchDim});
}

struct BlockImpl : torch::nn::Module {
  explicit BlockImpl(const Shape& s) : heads(s.heads) {
    using torch::nn::LayerNorm, torch::nn::LayerNormOptions, torch::nn::Linear;
    ln1 = register_module("ln1", LayerNorm(LayerNormOptions({s.width})));
    qkv = register_module("qkv", Linear(s.width, 3 * s.width));
    proj = register_module("proj", Linear(s.width, s.width));
    ln2 = register_module("ln2", LayerNorm(LayerNormOptions({s.width})));
    fc1 = register_module("fc1", Linear(s.width, s.mlp));
    fc2 = register_module("fc2", Linear(s.mlp, s.width));
  }
  torch::Tensor forward(torch::Tensor x) {
    const std::int64_t B = x.size(0), N = x.size(1), D = x.size(2), dh = D / heads;
    const torch::Tensor q = qkv(ln1(x)).view({B, N, 3, heads, dh}).permute({2, 0, 3, 1, 4});  // [3, B, H, N, dh]
    const torch::Tensor a =
        torch::softmax(torch::matmul(q[0], q[1].transpose(-2, -1)) / std::sqrt(static_cast<double>(dh)), -1);
    x = x + proj(torch::matmul(a, q[2]).transpose(1, 2).reshape({B, N, D}));
    return x + fc2(torch::gelu(fc1(ln2(x))));
  }
  std::int64_t heads;
  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  torch::nn::Linear qkv{nullptr}, proj{nullptr}, fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(Block);

struct BodyImpl : torch::nn::Module {
  explicit BodyImpl(const Shape& s) : shape(s) {
    patch = register_module("patch", torch::nn::Linear(kPatchDim, s.width));
    cls = register_parameter("cls", torch::zeros({1, s.width}));
    pos = register_parameter("pos", 0.02 * torch::randn({kTokens, s.width}));
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (std::int64_t i = 0; i < s.depth; ++i) blocks->push_back(Block(s));
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({s.width})));
  }
  // Token states after the final norm, [B, 17, D]; token 0 is the class token.
  torch::Tensor forward(const torch::Tensor& x) {
    const std::int64_t B = x.size(0);
    torch::Tensor t = torch::cat({cls.unsqueeze(0).expand({B, 1, shape.width}), patch(tiles(x))}, 1) + pos;
    for (const auto& b : *blocks) t = b->as<BlockImpl>()->forward(t);
    return norm(t);
  }
  Shape shape;
  torch::nn::Linear patch{nullptr};
  torch::Tensor cls, pos;
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm norm{nullptr};
};
TORCH_MODULE(Body);

// What the heads read: the class token.
inline torch::Tensor class_token(const torch::Tensor& tokens) { return tokens.select(1, 0); }
// What the router reads (as the official code does): the mean token state.
inline torch::Tensor mean_token(const torch::Tensor& tokens) { return tokens.mean(1); }

}  // namespace vit
