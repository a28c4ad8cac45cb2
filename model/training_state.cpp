#include "model/training_state.h"

#include <string>
#include <vector>

#include "model/safetensors.h"
#include "util/checked_json.h"
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
  const std::string file = progress_path(dir).string();
  const nlohmann::json document =
      parse_untrusted_json(read_text_file(progress_path(dir)), file, "valid JSON written by minitron train");
  const JsonField json(document, file);
  TrainingProgress progress;
  progress.file = file;
  progress.step = json.at("step").as_int<std::int64_t>(0);
  progress.optimizer_steps = json.at("optimizer_steps").as_int<std::int64_t>(0);
  progress.loader = json.at("loader").raw();
  progress.batch_size = json.at("batch_size").as_int<std::int64_t>(1);
  progress.sequence_length = json.at("sequence_length").as_int<std::int64_t>(1);
  progress.grad_accumulation = json.at("grad_accumulation").as_int<std::int64_t>(1);
  if (const auto world_size = json.optional("world_size")) progress.world_size = world_size->as_int<std::int64_t>(1);
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
