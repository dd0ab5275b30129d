// The router's settings and what training and evaluation report: plain
// types shared by the network (router.hpp), its training loop
// (router_training.hpp) and its file format (io/router_file.hpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "twin/error.hpp"
#include "twin/route/nn.hpp"

namespace twin {

// Architecture: `depth` blocks Linear → BatchNorm → LeakyReLU → Dropout of
// width `hidden`, then Linear(hidden, T). The defaults are the official
// Twin-Merging router: depth 2, hidden = 2d, dropout 0.5.
struct RouterConfig {
  std::int64_t input_dim = 0;  // d, the embedding width
  std::int64_t num_tasks = 0;  // T
  std::int64_t hidden = 0;     // 0: 2 * input_dim
  int depth = 2;               // hidden blocks; 0 is a linear classifier
  double dropout = 0.5;
  double slope = 0.01;  // LeakyReLU's negative slope (PyTorch's default)
  double bn_eps = 1e-5;
  double bn_momentum = 0.1;

  std::int64_t hidden_width() const noexcept { return hidden > 0 ? hidden : 2 * input_dim; }

  void validate() const {
    auto bad = [](const std::string& m) { throw argument_error("RouterConfig: " + m); };
    if (input_dim <= 0) bad("input_dim must be positive, found " + std::to_string(input_dim));
    if (num_tasks <= 0) bad("num_tasks must be positive, found " + std::to_string(num_tasks));
    if (hidden < 0) bad("hidden must be >= 0 (0: 2 * input_dim), found " + std::to_string(hidden));
    if (depth < 0) bad("depth must be >= 0, found " + std::to_string(depth));
    if (!(dropout >= 0.0 && dropout < 1.0)) bad("dropout must be in [0, 1), found " + std::to_string(dropout));
    if (!std::isfinite(slope)) bad("slope must be finite");
    if (!(bn_eps > 0.0)) bad("bn_eps must be positive, found " + std::to_string(bn_eps));
    if (!(bn_momentum >= 0.0 && bn_momentum <= 1.0))
      bad("bn_momentum must be in [0, 1], found " + std::to_string(bn_momentum));
  }
};

// The learning rate over a training run.
enum class LrSchedule {
  constant,  // opts.adam.lr throughout
  linear,    // decayed linearly to 0 over max_epochs' updates, as the official router's HF Trainer does
};

struct RouterTrainOptions {
  int max_epochs = 100;
  // Stop after this many epochs without a better held-out result (0: never).
  int patience = 10;
  std::int64_t batch_size = 128;
  nn::AdamOptions adam{};  // lr 5e-4, betas (0.9, 0.999), eps 1e-8, no weight decay
  // linear: the k-th update (0-based) of S = max_epochs × updates per epoch
  // takes lr · (S − k) / S (HF's get_linear_schedule_with_warmup, no warmup),
  // whether or not early stopping ends the run first.
  LrSchedule lr_schedule = LrSchedule::constant;
  // Before each update the gradients of all parameters are scaled by
  // max_grad_norm / (‖g‖ + 1e-6) where that is below 1, ‖g‖ their global L2
  // norm (torch.nn.utils.clip_grad_norm_; the official Trainer's is 1).
  // 0: no clipping.
  double max_grad_norm = 0.0;
  // Share of each task's items held out when fit() is given one set (0: none,
  // and the last epoch is kept).
  double holdout_fraction = 0.1;
  // Draw each epoch's items with probability ∝ 1 / (items of their task), as
  // torch's WeightedRandomSampler with replacement, instead of a shuffle.
  bool class_balanced = false;
  // Fit a per-feature mean and scale on the training items and apply them to
  // every input (stored with the router).
  bool standardize = true;
  std::uint64_t seed = 0;
  // After each epoch (1-based): mean training loss, held-out accuracy (NaN
  // without a held-out set).
  std::function<void(int epoch, double loss, double heldout_accuracy)> progress;
};

struct RouterTrainReport {
  int epochs_run = 0;
  // 1-based; the weights kept are this epoch's: the best held-out accuracy,
  // ties broken by the lower held-out loss (a saturated accuracy still
  // lets training go on while the held-out loss improves).
  int best_epoch = 0;
  double best_heldout_accuracy = std::numeric_limits<double>::quiet_NaN();
  bool stopped_early = false;
  std::int64_t train_size = 0, heldout_size = 0;
  std::vector<double> train_loss;        // per epoch
  std::vector<double> heldout_accuracy;  // per epoch
  std::vector<double> heldout_loss;      // per epoch: mean cross-entropy
};

// Accuracy by task and the confusion matrix on a labelled set.
struct RouterDiagnostics {
  std::int64_t num_tasks = 0;
  std::int64_t total = 0, correct = 0;
  double accuracy = 0.0;
  std::vector<std::int64_t> per_task_count;
  std::vector<double> per_task_accuracy;  // NaN for a task with no items
  std::vector<std::int64_t> confusion;    // row-major [true task, predicted task]

  std::int64_t confusion_at(std::int64_t truth, std::int64_t predicted) const {
    return confusion.at(static_cast<std::size_t>(truth * num_tasks + predicted));
  }

  std::string to_string() const {
    std::string s = "accuracy " + fmt_pct(accuracy) + " (" + std::to_string(correct) + "/" + std::to_string(total) +
                    ")\ntask  items  accuracy  predicted:";
    for (std::int64_t p = 0; p < num_tasks; ++p) s += " " + pad(std::to_string(p), 6);
    for (std::int64_t t = 0; t < num_tasks; ++t) {
      s += "\n" + pad(std::to_string(t), 4) + " " +
           pad(std::to_string(per_task_count[static_cast<std::size_t>(t)]), 6) + " " +
           pad(fmt_pct(per_task_accuracy[static_cast<std::size_t>(t)]), 9) + "           ";
      for (std::int64_t p = 0; p < num_tasks; ++p) s += " " + pad(std::to_string(confusion_at(t, p)), 6);
    }
    return s;
  }

 private:
  static std::string pad(const std::string& v, std::size_t w) {
    return v.size() < w ? std::string(w - v.size(), ' ') + v : v;
  }
  static std::string fmt_pct(double v) {
    if (std::isnan(v)) return "-";
    char b[32];
    std::snprintf(b, sizeof b, "%.2f%%", 100.0 * v);
    return b;
  }
};

}  // namespace twin
