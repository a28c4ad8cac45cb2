// A teacher and a narrower, shallower student sharing one vocabulary, for the distillation tests.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/make_backend.h"
#include "model/config.h"
#include "model/llama.h"
#include "tests/prune/prune_test_util.h"
#include "util/files.h"

namespace minitron::testing {

// A JSON fixture of tests/fixtures/ (`writer`: the tools/ script that writes it).
inline nlohmann::json load_json_fixture(const std::string& name, const std::string& writer) {
  const std::filesystem::path path = std::filesystem::path(MINITRON_SOURCE_DIR) / "tests/fixtures" / name;
  EXPECT_TRUE(std::filesystem::exists(path)) << "missing tests/fixtures/" << name << " (" << writer << " writes it)";
  return nlohmann::json::parse(read_text_file(path));
}

struct DistillPair {
  ModelConfig teacher_config = tiny_config(), student_config = tiny_config();
  std::vector<float> teacher_params, student_params;
  DistillPair() {
    student_config.hidden_size = 16;
    student_config.intermediate_size = 24;
    student_config.num_hidden_layers = 2;
    teacher_config.rms_norm_eps = student_config.rms_norm_eps = 1e-5;
    teacher_params = tiny_parameters(teacher_config, 11);
    student_params = tiny_parameters(student_config, 12);
  }
};

// The pair as models on a CPU backend, for batches up to batch x sequence: the teacher in
// Inference mode (no gradient storage, as distillation runs it), the student in Training mode,
// each loaded with the pair's parameters.
struct DistillModels {
  std::unique_ptr<Backend> backend;
  LlamaModel teacher, student;
  DistillModels(const DistillPair& pair, std::int64_t batch, std::int64_t sequence)
      : backend(make_backend("cpu")),
        teacher(pair.teacher_config, *backend, batch, sequence, ModelMode::Inference),
        student(pair.student_config, *backend, batch, sequence, ModelMode::Training) {
    teacher.set_parameters(pair.teacher_params);
    student.set_parameters(pair.student_params);
  }
};

inline std::vector<float> gradients(LlamaModel& m) {
  std::vector<float> g(static_cast<std::size_t>(m.table().total_numel()));
  m.backend().download(g.data(), m.gradients());
  return g;
}

}  // namespace minitron::testing
