#include "model/training_state.h"

#include <string>
#include <vector>

#include "model/safetensors.h"
#include "util/error.h"
#include "util/files.h"

namespace minitron {

namespace fs = std::filesystem;

namespace {
fs::path progress_path(const fs::path& dir) { return dir / "training_state.json"; }
fs::path tensors_path(const fs::path& dir) { return dir / "training_state.safetensors"; }
}  // namespace

void write_training_state(const fs::path& dir, const TrainingProgress& progress, std::span<const float> weights,
                          std::span<const float> m, std::span<const float> v) {
  MINITRON_ASSERT(m.size() == weights.size() && v.size() == weights.size(), "training state: ", weights.size(),
                  " weights but ", m.size(), " and ", v.size(), " moments");
  const std::vector<std::int64_t> shape{static_cast<std::int64_t>(weights.size())};
  const std::vector<SafetensorsEntry> entries{
      {"params", shape, weights.data()}, {"adam_m", shape, m.data()}, {"adam_v", shape, v.data()}};
  write_safetensors_file(tensors_path(dir), entries, SafetensorsDType::F32);
  const nlohmann::json json = {{"step", progress.step},
                               {"optimizer_steps", progress.optimizer_steps},
                               {"loader", progress.loader},
                               {"batch_size", progress.batch_size},
                               {"sequence_length", progress.sequence_length},
                               {"grad_accumulation", progress.grad_accumulation},
                               {"world_size", progress.world_size}};
  write_bytes_atomically(progress_path(dir), json.dump(2));
}

bool has_training_state(const fs::path& dir) { return fs::exists(progress_path(dir)); }

TrainingProgress read_training_progress(const fs::path& dir) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(read_text_file(progress_path(dir)));
  } catch (const nlohmann::json::exception& e) {
    fail_expected(progress_path(dir).string(), e.what(), "valid JSON written by minitron train");
  }
  TrainingProgress progress;
  progress.step = json.at("step").get<std::int64_t>();
  progress.optimizer_steps = json.at("optimizer_steps").get<std::int64_t>();
  progress.loader = json.at("loader");
  progress.batch_size = json.at("batch_size").get<std::int64_t>();
  progress.sequence_length = json.at("sequence_length").get<std::int64_t>();
  progress.grad_accumulation = json.at("grad_accumulation").get<std::int64_t>();
  progress.world_size = json.value("world_size", std::int64_t{1});
  return progress;
}

void read_training_tensors(const fs::path& dir, std::span<float> weights, std::int64_t moments_begin,
                           std::span<float> m, std::span<float> v) {
  SafetensorsFile file(tensors_path(dir));
  file.read_f32("params", weights);
  const auto parameters = static_cast<std::int64_t>(weights.size());
  for (const char* name : {"adam_m", "adam_v"})
    if (const std::int64_t numel = file.at(name).numel; numel != parameters)
      fail_expected(str(file.path().string(), ": tensor '", name, "'"), str(numel, " elements"),
                    str(parameters, ", one per parameter of the model"));
  file.read_f32_range("adam_m", moments_begin, m);
  file.read_f32_range("adam_v", moments_begin, v);
}

}  // namespace minitron
