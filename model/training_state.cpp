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

void load_training_tensors(const fs::path& dir, Backend& backend, const TrainingStateTargets& targets,
                           HostStaging& staging) {
  const SafetensorsFile file(tensors_path(dir));
  const std::int64_t parameters = targets.parameters.numel;
  for (const char* name : {"params", "adam_m", "adam_v"})
    if (const std::int64_t numel = file.at(name).numel; numel != parameters)
      fail_expected(str(file.path().string(), ": tensor '", name, "'"), str(numel, " elements"),
                    str(parameters, ", one per parameter of the model"));
  const std::int64_t part = targets.m.numel;
  MINITRON_ASSERT(targets.v.numel == part && (targets.master.empty() || targets.master.numel == part) &&
                      targets.part_begin >= 0 && targets.part_begin + part <= parameters,
                  "training state targets: a part of ", part, " at ", targets.part_begin, " of ", parameters);
  staging.stream(file, file.at("params"), 0, backend, targets.parameters);
  if (!targets.master.empty()) staging.stream(file, file.at("params"), targets.part_begin, backend, targets.master);
  staging.stream(file, file.at("adam_m"), targets.part_begin, backend, targets.m);
  staging.stream(file, file.at("adam_v"), targets.part_begin, backend, targets.v);
}

}  // namespace minitron
