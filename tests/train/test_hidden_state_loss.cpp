// The intermediate-state distillation loss (train/hidden_state_loss.h): the cosine loss and its
// gradients against PyTorch (tools/make_hidden_state_fixture.py), the whole-model gradient
// through LlamaModel::add_layer_output_gradient against central differences in double, the
// dynamic weighting of the objective, bit-exact resume with the learned map, layer mappings.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include <nlohmann/json.hpp>

#include "data/shards.h"
#include "kernels/make_backend.h"
#include "model/llama.h"
#include "tests/train/distill_test_util.h"
#include "train/distill.h"
#include "train/hidden_state_loss.h"
#include "train/losses.h"
#include "train/trainer.h"

namespace minitron {
namespace {

std::vector<double> download(Backend& b, Tensor t) {
  std::vector<double> out(static_cast<std::size_t>(t.numel));
  b.download_f64(out.data(), t);
  return out;
}

void check_cosine(const std::string& device, double tolerance) {
  auto backend = make_backend(device);
  Backend& b = *backend;
  const DType act = b.activation_dtype();
  const nlohmann::json fixture =
      testing::load_json_fixture("hidden_state/cosine_fixture.json", "tools/make_hidden_state_fixture.py");
  for (const nlohmann::json& c : fixture["cases"]) {
    const std::int64_t rows = c["rows"], Ds = c["student_width"], Dt = c["teacher_width"];
    const bool with_map = c.contains("map");
    BackendBuffer s(b, rows * Ds, act), t(b, rows * Dt, act), ds(b, rows * Ds, act);
    BackendBuffer W, dW;
    b.upload(s, c["student"].get<std::vector<float>>().data());
    b.upload(t, c["teacher"].get<std::vector<float>>().data());
    if (with_map) {
      W = BackendBuffer(b, Dt * Ds, act);
      dW = BackendBuffer(b, Dt * Ds, b.gradient_dtype());
      b.upload(W, c["map"].get<std::vector<float>>().data());
      b.zero(dW);
    }
    CosineDistance cosine(b, rows, Ds, Dt);
    const double loss = cosine.value(s, t, W, rows);
    EXPECT_NEAR(loss, c["loss"].get<double>(), tolerance) << device;
    cosine.backward(ds, dW, s, t, W, rows, 1.0f);
    const auto expected_ds = c["dstudent"].get<std::vector<double>>();
    const auto got_ds = download(b, ds);
    for (std::size_t i = 0; i < got_ds.size(); ++i)
      EXPECT_NEAR(got_ds[i], expected_ds[i], tolerance) << device << " ds[" << i << "]";
    if (with_map) {
      const auto expected_dW = c["dmap"].get<std::vector<double>>();
      const auto got_dW = download(b, dW);
      for (std::size_t i = 0; i < got_dW.size(); ++i)
        EXPECT_NEAR(got_dW[i], expected_dW[i], tolerance) << device << " dW[" << i << "]";
      // backward() may write ds over s itself (what HiddenStateDistillation does).
      b.zero(dW);
      cosine.backward(s, dW, s, t, W, rows, 1.0f);
      const auto in_place = download(b, s);
      for (std::size_t i = 0; i < in_place.size(); ++i)
        EXPECT_NEAR(in_place[i], expected_ds[i], tolerance) << device << " in place";
    }
  }
}

// fp32: rows of 5-7 values of order 1; the RMSNorm backward and the GEMMs each round to fp32
// (~6e-8 relative) on values and gradients of order 0.1-1, so 2e-6 absolute leaves margin.
TEST(HiddenStateCosine, CpuMatchesTorch) { check_cosine("cpu", 2e-6); }
// fp64 engine on the same float32 inputs torch used, double throughout on both sides (the
// gradient factor -1 / (rows * Dt) too: Backend::scale_inplace takes a double). Only the order
// and form of a few dozen double operations differ, each within 2^-53 relative, on a loss of
// up to 2 and gradients of up to 0.24: a few 1e-16 at most (measured: under 1e-17).
TEST(HiddenStateCosine, DoubleMatchesTorch) { check_cosine("cpu-f64", 1e-15); }

ModelConfig small_config(std::int64_t hidden, std::int64_t layers) {
  ModelConfig c;
  c.vocab_size = 11;
  c.hidden_size = hidden;
  c.intermediate_size = 12;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 6;
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-5;
  c.max_position_embeddings = 64;
  return c;
}

std::vector<float> seeded(const ModelConfig& c, std::uint64_t seed) {
  ParameterTable table(c);
  std::vector<float> p(static_cast<std::size_t>(table.total_numel()));
  // A large std so that attention is far from uniform and every path carries gradient.
  initialize_parameters(c, table, p, seed, 0.5);
  return p;
}

// The student's gradient of KL + c * L_is (the hook adds L_is's part into the residual stream
// at the mapped layers) and W's gradient equal central differences of that loss, in double.
TEST(HiddenStateDistillation, WholeModelGradientMatchesCentralDifferences) {
  const ModelConfig tc = small_config(12, 3), sc = small_config(8, 2);
  auto backend = make_backend("cpu-f64");
  const std::int64_t B = 2, T = 4, N = B * T;
  LlamaModel teacher(tc, *backend, B, T, ModelMode::Inference);
  teacher.set_parameters(seeded(tc, 21));
  LlamaModel student(sc, *backend, B, T, ModelMode::Training);
  student.set_parameters(seeded(sc, 22));
  const std::vector<std::int32_t> tokens{1, 5, 9, 2, 7, 7, 0, 10};
  LossWorkspace ws(*backend, tc.vocab_size, N, 3, /*distillation=*/true);
  HiddenStateDistillation hidden(*backend, sc, tc, default_layer_mapping(2, 3), N);
  ASSERT_TRUE(hidden.has_map());
  ASSERT_EQ(hidden.pairs(), (std::vector<LayerPair>{{0, 1}, {1, 2}}));
  const double c = 0.7;

  auto forward = [&] {
    ForwardOptions to, so;
    to.observer = &hidden.teacher_observer();
    so.observer = &hidden.student_observer();
    teacher.forward(tokens, B, T, to);
    student.forward(tokens, B, T, so);
  };
  auto loss = [&] {
    forward();
    const double kl = distillation_loss(student, teacher, ws, 1.0f);
    return kl + c * hidden.loss();
  };
  student.zero_gradients();
  forward();
  distillation_loss(student, teacher, ws, 1.0f, 1.0f);
  hidden.loss();
  hidden.backward(student, static_cast<float>(c));
  student.backward();
  const auto n = static_cast<std::size_t>(student.table().total_numel());
  const std::vector<double> grads(student.gradients().as<double>(), student.gradients().as<double>() + n);
  const std::vector<double> map_grads = download(*backend, hidden.map_gradient());

  // Step 1e-5: truncation error ~h^2 * |f'''| ~ 1e-10, rounding ~1e-16 / h ~ 1e-11; the
  // tolerance is a few times that, relative to the gradient.
  const double h = 1e-5;
  auto check = [&](double& w, double analytic, const std::string& what) {
    const double saved = w;
    w = saved + h;
    const double up = loss();
    w = saved - h;
    const double down = loss();
    w = saved;
    const double numeric = (up - down) / (2 * h);
    EXPECT_NEAR(analytic, numeric, 1e-8 + 1e-6 * std::abs(numeric)) << what;
  };
  double* params = student.parameters().as<double>();
  for (const ParamInfo& info : student.table().entries())
    for (std::int64_t i = 0; i < info.numel; ++i)
      check(params[info.offset + i], grads[static_cast<std::size_t>(info.offset + i)], str(info.name, "[", i, "]"));
  double* map = hidden.map().as<double>();
  for (std::size_t i = 0; i < map_grads.size(); ++i) check(map[i], map_grads[i], str("W[", i, "]"));

  // The hook matters: without it the layers' weights would see only the KL's gradient.
  student.zero_gradients();
  forward();
  distillation_loss(student, teacher, ws, 1.0f, 1.0f);
  student.backward();
  const std::vector<double> kl_only(student.gradients().as<double>(), student.gradients().as<double>() + n);
  double difference = 0;
  for (std::size_t i = 0; i < n; ++i) difference = std::max(difference, std::abs(kl_only[i] - grads[i]));
  EXPECT_GT(difference, 1e-3);
}

using Pair = testing::DistillPair;
using testing::gradients;

// L = KL + w * alpha * L_is with alpha = KL / L_is: the loss is (1 + w) KL, and the gradient is
// the KL's plus w * alpha times the intermediate loss's own.
TEST(HiddenStateDistillation, ObjectiveWeighsTheTermsDynamically) {
  Pair p;
  const std::int64_t B = 2, T = 8, N = B * T, V = p.teacher_config.vocab_size;
  const auto all = testing::tiny_tokens(N + 1, V);
  const std::vector<std::int32_t> inputs(all.begin(), all.end() - 1), targets(all.begin() + 1, all.end());
  testing::DistillModels models(p, B, T);
  LossWorkspace ws(*models.backend, V, N, 5, /*distillation=*/true);
  HiddenStateDistillation hidden(*models.backend, p.student_config, p.teacher_config,
                                 parse_layer_mapping("0:1,1:3", 2, 4), N);
  const float w = 0.5f;

  models.student.zero_gradients();
  TeacherDistillationObjective kl(models.teacher, ws);
  const double l_kl = kl.step(models.student, inputs, targets, {}, B, T, 1.0f);
  models.student.backward();
  const auto g_kl = gradients(models.student);

  // The intermediate loss's own gradient (weight 1) on the same forward.
  models.student.zero_gradients();
  ForwardOptions to, so;
  to.observer = &hidden.teacher_observer();
  so.observer = &hidden.student_observer();
  models.teacher.forward(inputs, B, T, to);
  models.student.forward(inputs, B, T, so);
  const double l_is = hidden.loss();
  hidden.backward(models.student, 1.0f);
  models.student.backward();
  const auto g_is = gradients(models.student);
  ASSERT_GT(l_is, 0.0);

  models.student.zero_gradients();
  TeacherDistillationObjective both(models.teacher, ws, 1.0f, 0.0f, &hidden, w);
  EXPECT_STREQ(both.name(), "kl+hidden");
  const double l_both = both.step(models.student, inputs, targets, {}, B, T, 1.0f);
  models.student.backward();
  const auto g_both = gradients(models.student);
  const double alpha = l_kl / l_is;
  // Same fp32 numbers, combined in double.
  EXPECT_NEAR(both.last_intermediate(), l_is, 1e-12);
  EXPECT_NEAR(both.last_alpha(), alpha, 1e-9 * alpha);
  EXPECT_NEAR(l_both, (1 + w) * l_kl, 1e-9);
  std::vector<float> expected(g_kl.size());
  for (std::size_t i = 0; i < expected.size(); ++i) expected[i] = g_kl[i] + static_cast<float>(w * alpha) * g_is[i];
  // Scaling the hidden-state gradient before vs after the backward: fp32 reassociation.
  EXPECT_LE(testing::max_abs_diff(g_both, expected), 1e-5 * std::max(1.0, testing::max_abs(expected)));

  EXPECT_THROW(TeacherDistillationObjective(models.teacher, ws, 1.0f, 0.0f, &hidden, -1.0f), Error);
  EXPECT_THROW(TeacherDistillationObjective(models.teacher, ws, 1.0f, 0.0f, nullptr, 1.0f), Error);
}

// Training with the intermediate loss, interrupted at a checkpoint and resumed, ends with the
// same student and the same map W, bit for bit, as an uninterrupted run.
TEST(HiddenStateDistillation, ResumeIsBitExact) {
  Pair p;
  testing::TempDir dir;
  const std::int64_t B = 2, T = 8, V = p.teacher_config.vocab_size;
  write_shard(dir / "train.bin", testing::tiny_tokens(300, V, 4));
  testing::DistillModels models(p, B, T);  // its student is the one refused a resume below
  LossWorkspace ws(*models.backend, V, B * T, 0, /*distillation=*/true);
  TrainOptions o;
  o.batch_size = B;
  o.sequence_length = T;
  o.steps = 4;
  o.save_interval = 2;
  o.grad_accumulation = 2;
  o.optimizer.learning_rate = 1e-2;
  o.optimizer.warmup_steps = 1;
  o.save_dtype = SafetensorsDType::F32;
  o.train_shards = {dir / "train.bin"};

  auto run = [&](const std::string& out, bool resume, std::uint64_t map_seed, std::vector<float>& map) {
    LlamaModel student(p.student_config, *models.backend, B, T, ModelMode::Training);
    student.set_parameters(p.student_params);
    HiddenStateDistillation hidden(*models.backend, p.student_config, p.teacher_config, default_layer_mapping(2, 4),
                                   B * T, map_seed);
    TeacherDistillationObjective objective(models.teacher, ws, 1.0f, 0.0f, &hidden, 1.0f);
    TrainOptions options = o;
    options.output = dir / out;
    options.resume = resume;
    const TrainSummary s = run_training(student, objective, options);
    std::vector<float> params(p.student_params.size());
    student.get_parameters(params);
    map = hidden.get_map();
    return std::make_pair(s.last_train_loss, params);
  };
  std::vector<float> map_a, map_b, map_c;
  const auto a = run("a", false, 1, map_a);
  // Interrupted copy: keep a's checkpoint-2 only, then resume from it with a map initialised
  // differently (so only the restored map can make the result equal).
  std::filesystem::create_directories(dir / "b");
  std::filesystem::copy(dir / "a" / "checkpoint-2", dir / "b" / "checkpoint-2",
                        std::filesystem::copy_options::recursive);
  ASSERT_TRUE(std::filesystem::exists(dir / "b" / "checkpoint-2" / "hidden_state_map.safetensors"));
  const auto b = run("b", true, 99, map_b);
  EXPECT_EQ(a.first, b.first);
  ASSERT_EQ(a.second.size(), b.second.size());
  EXPECT_EQ(0, std::memcmp(a.second.data(), b.second.data(), a.second.size() * sizeof(float)));
  ASSERT_EQ(map_a.size(), map_b.size());
  EXPECT_EQ(0, std::memcmp(map_a.data(), map_b.data(), map_a.size() * sizeof(float)));
  // The map was trained (it moved from its seed-1 initialisation).
  HiddenStateDistillation fresh(*models.backend, p.student_config, p.teacher_config, default_layer_mapping(2, 4), B * T,
                                1);
  EXPECT_GT(testing::max_abs_diff(fresh.get_map(), map_a), 0.0);
  // Resuming with another mapping is refused.
  std::filesystem::create_directories(dir / "c");
  std::filesystem::copy(dir / "a" / "checkpoint-2", dir / "c" / "checkpoint-2",
                        std::filesystem::copy_options::recursive);
  HiddenStateDistillation other(*models.backend, p.student_config, p.teacher_config, parse_layer_mapping("1:3", 2, 4),
                                B * T);
  TeacherDistillationObjective objective(models.teacher, ws, 1.0f, 0.0f, &other, 1.0f);
  TrainOptions options = o;
  options.output = dir / "c";
  options.resume = true;
  EXPECT_THROW(run_training(models.student, objective, options), Error);
}

// The intermediate-state loss reads the student's layer outputs during forward and adds their
// gradients in backward; with recomputation those outputs are the kept layer inputs, so the
// KL + hidden-state gradients stay bit-identical.
TEST(HiddenStateDistillation, RecomputationKeepsTheGradientsBitIdentical) {
  Pair p;
  const std::int64_t B = 2, T = 8, N = B * T, V = p.teacher_config.vocab_size;
  const auto all = testing::tiny_tokens(N + 1, V);
  const std::vector<std::int32_t> inputs(all.begin(), all.end() - 1), targets(all.begin() + 1, all.end());
  testing::DistillModels models(p, B, T);
  LossWorkspace ws(*models.backend, V, N, 5, /*distillation=*/true);
  auto gradients_with = [&](ActivationRecompute recompute) {
    LlamaModel student(p.student_config, *models.backend, B, T, ModelMode::Training, recompute);
    student.set_parameters(p.student_params);
    HiddenStateDistillation hidden(*models.backend, p.student_config, p.teacher_config,
                                   parse_layer_mapping("0:1,1:3", 2, 4), N);
    TeacherDistillationObjective objective(models.teacher, ws, 1.0f, 0.0f, &hidden, 0.5f);
    student.zero_gradients();
    objective.step(student, inputs, targets, {}, B, T, 1.0f);
    student.backward();
    return testing::gradients(student);
  };
  const std::vector<float> none = gradients_with(ActivationRecompute::None);
  for (ActivationRecompute r : {ActivationRecompute::Selective, ActivationRecompute::Full}) {
    const std::vector<float> g = gradients_with(r);
    ASSERT_EQ(g.size(), none.size());
    EXPECT_EQ(0, std::memcmp(g.data(), none.data(), none.size() * sizeof(float))) << activation_recompute_name(r);
  }
}

TEST(LayerMapping, DefaultMapsLastToLastEvenlySpaced) {
  EXPECT_EQ(default_layer_mapping(4, 4), (std::vector<LayerPair>{{0, 0}, {1, 1}, {2, 2}, {3, 3}}));
  EXPECT_EQ(default_layer_mapping(2, 4), (std::vector<LayerPair>{{0, 1}, {1, 3}}));
  // 3 of 32: ceil(32/3) - 1 = 10, ceil(64/3) - 1 = 21, 31.
  EXPECT_EQ(default_layer_mapping(3, 32), (std::vector<LayerPair>{{0, 10}, {1, 21}, {2, 31}}));
  EXPECT_EQ(default_layer_mapping(16, 32).back(), (LayerPair{15, 31}));
  EXPECT_EQ(parse_layer_mapping("", 2, 4), default_layer_mapping(2, 4));
  EXPECT_EQ(parse_layer_mapping("0:0,1:3", 2, 4), (std::vector<LayerPair>{{0, 0}, {1, 3}}));
  EXPECT_EQ(format_layer_mapping({{0, 0}, {1, 3}}), "0:0,1:3");
}

std::string error_of(const std::string& spec) {
  try {
    parse_layer_mapping(spec, 2, 4);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(LayerMapping, RefusesBadMappingsClearly) {
  EXPECT_NE(error_of("0:4").find("teacher layer 4 in '0:4' is out of range"), std::string::npos) << error_of("0:4");
  EXPECT_NE(error_of("0:4").find("0 <= teacher layer < 4"), std::string::npos);
  EXPECT_NE(error_of("2:0").find("student layer 2 in '2:0' is out of range"), std::string::npos) << error_of("2:0");
  EXPECT_NE(error_of("0:1,0:2").find("student layer 0 is mapped twice"), std::string::npos);
  EXPECT_NE(error_of("0-1").find("has no ':'"), std::string::npos);
  EXPECT_NE(error_of("a:1").find("is not two layer numbers"), std::string::npos);
  EXPECT_NE(error_of("0:-1").find("is not two layer numbers"), std::string::npos);
  EXPECT_NE(error_of("0:1,").find("has no ':'"), std::string::npos);
}

}  // namespace
}  // namespace minitron
