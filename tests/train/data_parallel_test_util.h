// What the data-parallel training tests share: the run they train and the losses they read back.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/trainer.h"

namespace minitron::testing {

// A short run on one shard: batch 1 of 8 tokens, 3 steps, fp32 checkpoints (compared exactly).
inline TrainOptions data_parallel_options(const std::filesystem::path& shard) {
  TrainOptions o;
  o.batch_size = 1;
  o.sequence_length = 8;
  o.steps = 3;
  o.optimizer.learning_rate = 1e-2;
  o.optimizer.warmup_steps = 1;
  o.save_dtype = SafetensorsDType::F32;
  o.train_shards = {shard};
  return o;
}

// The `key` ("loss", or a logged term such as "kl") of every record of a run's metrics.jsonl
// that has one, in order.
inline std::vector<double> logged_losses(const std::filesystem::path& metrics, const std::string& key = "loss") {
  std::vector<double> losses;
  std::ifstream in(metrics);
  std::string line;
  while (std::getline(in, line)) {
    const nlohmann::json record = nlohmann::json::parse(line);
    if (record.contains(key)) losses.push_back(record[key].get<double>());
  }
  return losses;
}

}  // namespace minitron::testing
