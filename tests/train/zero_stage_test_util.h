// ZeRO stage 2 (model/gradient_buckets.h) against stage 1, for any engine and communicator: the
// same run trained with each stage must give the same weights, losses and gradient norms. With
// one micro-batch per step the two stages sum every gradient element with the same collective in
// the same (rank) order, so they agree to the bit; a bucket reduced before its gradient is whole,
// twice, or never changes the sum, and so the weights after the first step.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "model/llama.h"
#include "tests/train/data_parallel_test_util.h"
#include "train/losses.h"
#include "train/trainer.h"

namespace minitron::testing {

struct StageRun {
  std::vector<float> params;
  std::vector<double> losses, grad_norms;  // rank 0's metrics.jsonl (empty on other ranks)
  std::int64_t buckets = 0;
};

// One rank's cross-entropy run of `config` from `init` with the model's gradients kept as
// `stage` (buckets of at least bucket_elements elements), the parameters gathered after each step
// beside the next forward (overlap_parameter_gather) or in the step.
inline StageRun train_with_stage(const ModelConfig& config, const std::vector<float>& init, Backend& backend,
                                 Communicator& communicator, TrainOptions o, int stage, std::int64_t bucket_elements,
                                 bool overlap_parameter_gather = true) {
  GradientSharding sharding;
  sharding.stage = stage;
  sharding.communicator = &communicator;
  sharding.bucket_elements = bucket_elements;
  sharding.overlap_parameter_gather = overlap_parameter_gather;
  LlamaModel model(config, backend, o.batch_size, o.sequence_length, ModelMode::Training, o.recompute, sharding);
  model.set_parameters(init);
  LossWorkspace workspace(backend, config.vocab_size, o.batch_size * o.sequence_length);
  CrossEntropyObjective objective(workspace);
  o.zero_stage = stage;
  run_training(model, objective, o, communicator);
  StageRun run;
  run.params.resize(init.size());
  model.get_parameters(run.params);
  run.buckets = static_cast<std::int64_t>(model.gradient_buckets().buckets().size());
  if (communicator.rank() == 0) {
    run.losses = logged_losses(o.output / "metrics.jsonl");
    run.grad_norms = logged_losses(o.output / "metrics.jsonl", "grad_norm");
  }
  return run;
}

// Stage 2's run equals stage 1's to the bit: weights (memcmp, so that even the sign of a zero
// counts), every logged loss and gradient norm.
inline void expect_same_bits(const StageRun& stage1, const StageRun& stage2, const std::string& what) {
  ASSERT_EQ(stage1.params.size(), stage2.params.size()) << what;
  EXPECT_EQ(0, std::memcmp(stage1.params.data(), stage2.params.data(), stage1.params.size() * sizeof(float))) << what;
  EXPECT_EQ(stage1.losses, stage2.losses) << what;
  EXPECT_EQ(stage1.grad_norms, stage2.grad_norms) << what;
}

}  // namespace minitron::testing
