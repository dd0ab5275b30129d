// Quick start on real data: merging four experts of one pretrained model.
//
// The "model" is a linear classifier on Fashion-MNIST images (Debian's
// dataset-fashion-mnist). It is pretrained on the plain images; four experts
// are fine-tuned from it, in closed form, on four views of the images
// (plain, inverted, mirrored, pixel-permuted) — each is ridge regression
// pulled toward the pretrained weights, W_t = argmin |X_t W − Y|² + α|W − W0|².
// Then every merge strategy builds one model from the four, and each is scored
// on every task's test split, showing the interference that Twin-Merging's
// exclusive knowledge is there to resolve.
//
//   quickstart [--data DIR] [--train N] [--alpha A] [--scaling L] [--density D]
#include <Eigen/Cholesky>
#include <Eigen/Core>

#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>

#include "common/fashion_mnist.hpp"
#include "twin/adapters/eigen.hpp"
#include "twin/twin.hpp"

namespace {

using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
constexpr int kPixels = 784, kFeatures = kPixels + 1, kClasses = 10;

// The four views of an image: what makes the tasks differ.
enum class View { plain, inverted, mirrored, permuted };
const char* view_name(View v) {
  switch (v) {
    case View::plain: return "plain";
    case View::inverted: return "inverted";
    case View::mirrored: return "mirrored";
    case View::permuted: return "permuted";
  }
  return "?";
}

// Design matrix [n, 785] (pixels in [0,1], then a constant 1 for the bias).
Mat features(const examples::ImageSet& s, std::size_t first, std::size_t n, View v, const std::vector<int>& perm) {
  Mat x(static_cast<Eigen::Index>(n), kFeatures);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint8_t* img = s.pixels.data() + (first + i) * kPixels;
    for (int p = 0; p < kPixels; ++p) {
      int src = p;
      if (v == View::mirrored) src = (p / 28) * 28 + (27 - p % 28);
      if (v == View::permuted) src = perm[static_cast<std::size_t>(p)];
      float val = img[src] / 255.0f;
      if (v == View::inverted) val = 1.0f - val;
      x(static_cast<Eigen::Index>(i), p) = val;
    }
    x(static_cast<Eigen::Index>(i), kPixels) = 1.0f;
  }
  return x;
}

Mat one_hot(const examples::ImageSet& s, std::size_t first, std::size_t n) {
  Mat y = Mat::Constant(static_cast<Eigen::Index>(n), kClasses, -0.1f);
  for (std::size_t i = 0; i < n; ++i) y(static_cast<Eigen::Index>(i), s.labels[first + i]) = 0.9f;
  return y;
}

// argmin |XW − Y|² + α|W − W0|² = (XᵀX + αI)⁻¹ (XᵀY + α W0), W as [785, 10];
// returned transposed as a [10, 785] weight like a Linear layer's.
Mat ridge(const Mat& x, const Mat& y, const Mat& w0t, float alpha) {
  Eigen::MatrixXd g = (x.transpose() * x).cast<double>();
  g.diagonal().array() += alpha;
  const Eigen::MatrixXd rhs = (x.transpose() * y).cast<double>() + alpha * w0t.transpose().cast<double>();
  return g.ldlt().solve(rhs).transpose().cast<float>();
}

double accuracy(const Mat& w, const Mat& x, const examples::ImageSet& s, std::size_t first) {
  const Mat scores = x * w.transpose();
  std::size_t ok = 0;
  for (Eigen::Index i = 0; i < scores.rows(); ++i) {
    Eigen::Index best;
    scores.row(i).maxCoeff(&best);
    ok += static_cast<std::size_t>(best) == s.labels[first + static_cast<std::size_t>(i)];
  }
  return 100.0 * static_cast<double>(ok) / static_cast<double>(scores.rows());
}

twin::Tensor to_tensor(const Mat& w) {
  twin::Tensor t(twin::dtype::f32, {w.rows(), w.cols()});
  std::copy(w.data(), w.data() + w.size(), t.values<float>().begin());
  return t;
}

}  // namespace

int main(int argc, char** argv) try {
  std::string data = examples::default_fashion_mnist_dir();
  std::size_t train = 12000;
  double scaling = 0.3, density = 0.3;
  float alpha = 2000.0f;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw twin::argument_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--data") data = next();
    else if (a == "--train") train = std::stoul(next());
    else if (a == "--scaling") scaling = std::stod(next());
    else if (a == "--density") density = std::stod(next());
    else if (a == "--alpha") alpha = std::stof(next());
    else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: quickstart [--data DIR] [--train N] [--alpha A] [--scaling L] [--density D]\n"
          "  --alpha: pull of each fine-tune toward the pretrained weights (default 2000)\n"
          "Merges four Fashion-MNIST experts of one pretrained linear model with every strategy.\n");
      return 0;
    } else {
      throw twin::argument_error("unknown option " + a + " (see --help)");
    }
  }
  const examples::ImageSet tr = examples::load_fashion_mnist(data, "train"),
                           te = examples::load_fashion_mnist(data, "t10k");
  train = std::min(train, tr.size() / 5);
  std::vector<int> perm(kPixels);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(2024));
  const View views[] = {View::plain, View::inverted, View::mirrored, View::permuted};

  // Pretrained: plain images, its own slice of the training set, strong ridge.
  const Mat w0 =
      ridge(features(tr, 0, train, View::plain, perm), one_hot(tr, 0, train), Mat::Zero(kClasses, kFeatures), 10.0f);
  twin::StateDict base;
  base.insert("classifier.weight", to_tensor(w0));
  std::vector<twin::StateDict> experts(4);
  std::vector<Mat> test_x;
  for (std::size_t t = 0; t < 4; ++t) {
    const std::size_t first = train * (t + 1);  // each task fine-tunes on its own images
    const Mat w = ridge(features(tr, first, train, views[t], perm), one_hot(tr, first, train), w0, alpha);
    experts[t].insert("classifier.weight", to_tensor(w));
    test_x.push_back(features(te, 0, te.size(), views[t], perm));
  }

  auto weights_of = [](const twin::StateDict& sd) {
    const twin::Tensor& t = sd.at("classifier.weight");
    return Mat(Eigen::Map<const Mat>(t.values<float>().data(), kClasses, kFeatures));
  };
  std::printf("Fashion-MNIST, linear model [10 x 785], 4 tasks, %zu training images per task, %zu test images\n\n",
              train, te.size());
  std::printf("%-28s", "model");
  for (View v : views) std::printf(" %9s", view_name(v));
  std::printf(" %9s\n", "average");
  auto row = [&](const std::string& name, auto&& model_for_task) {
    double sum = 0;
    std::printf("%-28s", name.c_str());
    for (std::size_t t = 0; t < 4; ++t) {
      const double a = accuracy(model_for_task(t), test_x[t], te, 0);
      sum += a;
      std::printf(" %9.2f", a);
    }
    std::printf(" %9.2f\n", sum / 4);
  };
  row("pretrained", [&](std::size_t) { return w0; });
  row("individual experts", [&](std::size_t t) { return weights_of(experts[t]); });
  const std::vector<std::pair<std::string, twin::MergeSettings>> settings = [&] {
    std::vector<std::pair<std::string, twin::MergeSettings>> s;
    auto add = [&](std::string label, std::string method, std::optional<double> lam, std::optional<double> d) {
      twin::MergeSettings m;
      m.method = std::move(method);
      m.scaling = lam;
      m.density = d;
      m.seed = 1;
      s.emplace_back(std::move(label), m);
    };
    add("weight average", "average", {}, {});
    add("task arithmetic", "task_arithmetic", scaling, {});
    add("ties", "ties", 1.0, density);
    add("dare_linear", "dare_linear", scaling, density);
    add("dare_ties", "dare_ties", 1.0, density);
    add("breadcrumbs", "breadcrumbs", scaling, 0.9);
    return s;
  }();
  for (const auto& [label, s] : settings) {
    const twin::StateDict merged =
        twin::merge_state(twin::AnyMerger::from_settings(s), base, std::span<const twin::StateDict>(experts));
    const Mat w = weights_of(merged);
    row(label, [&](std::size_t) { return w; });
  }
  std::printf(
      "\nOne merged model must serve all four views; each expert only its own. The gap between\n"
      "'individual experts' and the best merge is what Twin-Merging's exclusive knowledge recovers.\n");
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
