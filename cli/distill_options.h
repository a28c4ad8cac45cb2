// The flags of `distill` that name its models and loss, shared with `plan distill` so that a
// distillation is planned with the command line it runs with.
#pragma once

#include <cxxopts.hpp>

namespace minitron::cli {

inline void add_distillation_options(cxxopts::Options& options) {
  // clang-format off
  options.add_options("model")
      ("teacher", "teacher HF checkpoint directory (forward only)", cxxopts::value<std::string>())
      ("student", "student HF checkpoint directory (e.g. the output of 'minitron prune')", cxxopts::value<std::string>())
      ("temperature", "softmax temperature of both distributions", cxxopts::value<float>()->default_value("1"))
      ("hard-label-weight", "w in loss = (1 - w) KL + w CE(next token) (0 = pure distillation, the recipe's)",
       cxxopts::value<float>()->default_value("0"))
      ("loss-chunk-rows", "tokens per chunk of the loss (0 = the device's default: about 16M logits per chunk on cpu, 268M on cuda)",
       cxxopts::value<std::int64_t>()->default_value("0"))
      ("intermediate-loss-weight",
       "w in L = L_logits + w * alpha * L_is: cosine loss between mapped layers' hidden states (a learned linear map "
       "when widths differ), alpha = L_logits / L_is recomputed every step (arXiv 2407.14679); 0 = off",
       cxxopts::value<float>()->default_value("0"))
      ("intermediate-layers",
       "STUDENT:TEACHER zero-based layer pairs for it, e.g. 0:0,15:31 (default: every student layer, the last to "
       "the teacher's last, evenly spaced)",
       cxxopts::value<std::string>()->default_value(""));
  // clang-format on
}

}  // namespace minitron::cli
