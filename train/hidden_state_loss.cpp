#include "train/hidden_state_loss.h"

#include <algorithm>
#include <cmath>
#include <set>

#include <nlohmann/json.hpp>

#include "model/safetensors.h"
#include "util/checked_json.h"
#include "util/error.h"
#include "util/files.h"
#include "util/random.h"

namespace minitron {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------
// Layer mapping
// ---------------------------------------------------------------------------------------

std::vector<LayerPair> default_layer_mapping(std::int64_t student_layers, std::int64_t teacher_layers) {
  MINITRON_ASSERT(student_layers >= 1 && teacher_layers >= 1);
  std::vector<LayerPair> pairs;
  for (std::int64_t i = 0; i < student_layers; ++i)
    pairs.push_back({i, ((i + 1) * teacher_layers + student_layers - 1) / student_layers - 1});
  return pairs;
}

namespace {

std::int64_t parse_layer(const std::string& text, const std::string& entry, const std::string& spec) {
  std::size_t used = 0;
  long long value = -1;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || value < 0)
    fail_expected(str("--intermediate-layers ", spec), str("entry '", entry, "' is not two layer numbers"),
                  "comma-separated STUDENT:TEACHER pairs of zero-based layer indices, e.g. 0:0,3:7");
  return value;
}

}  // namespace

std::vector<LayerPair> parse_layer_mapping(const std::string& spec, std::int64_t student_layers,
                                           std::int64_t teacher_layers) {
  if (spec.empty()) return default_layer_mapping(student_layers, teacher_layers);
  std::vector<LayerPair> pairs;
  std::set<std::int64_t> seen;
  std::size_t start = 0;
  while (start <= spec.size()) {
    const std::size_t comma = std::min(spec.find(',', start), spec.size());
    const std::string entry = spec.substr(start, comma - start);
    const std::size_t colon = entry.find(':');
    if (colon == std::string::npos)
      fail_expected(str("--intermediate-layers ", spec), str("entry '", entry, "' has no ':'"),
                    "comma-separated STUDENT:TEACHER pairs of zero-based layer indices, e.g. 0:0,3:7");
    const LayerPair p{parse_layer(entry.substr(0, colon), entry, spec),
                      parse_layer(entry.substr(colon + 1), entry, spec)};
    if (p.student >= student_layers)
      fail_expected(str("--intermediate-layers ", spec),
                    str("student layer ", p.student, " in '", entry, "' is out of range"),
                    str("0 <= student layer < ", student_layers, " (the student's num_hidden_layers)"));
    if (p.teacher >= teacher_layers)
      fail_expected(str("--intermediate-layers ", spec),
                    str("teacher layer ", p.teacher, " in '", entry, "' is out of range"),
                    str("0 <= teacher layer < ", teacher_layers, " (the teacher's num_hidden_layers)"));
    if (!seen.insert(p.student).second)
      fail_expected(str("--intermediate-layers ", spec), str("student layer ", p.student, " is mapped twice"),
                    "each student layer at most once");
    pairs.push_back(p);
    start = comma + 1;
  }
  return pairs;
}

std::string format_layer_mapping(const std::vector<LayerPair>& pairs) {
  std::string out;
  for (const LayerPair& p : pairs) out += str(out.empty() ? "" : ",", p.student, ":", p.teacher);
  return out;
}

// ---------------------------------------------------------------------------------------
// Cosine distance of one pair
// ---------------------------------------------------------------------------------------

namespace {
// RMSNorm with unit weights computes x / sqrt(mean(x^2) + eps); with a vanishing eps that is
// x * sqrt(D) / |x|, so cos(u, t) = uhat . that / D. The eps only keeps an all-zero row finite.
constexpr float kNormEps = 1e-20f;
DType stat_dtype(const Backend& b) { return b.activation_dtype() == DType::F64 ? DType::F64 : DType::F32; }
}  // namespace

CosineDistance::CosineDistance(Backend& backend, std::int64_t max_rows, std::int64_t student_width,
                               std::int64_t teacher_width)
    : backend_(backend), max_rows_(max_rows), student_width_(student_width), teacher_width_(teacher_width) {
  const DType act = backend.activation_dtype();
  const std::int64_t N = max_rows, Dt = teacher_width;
  u_ = BackendBuffer(backend, N * Dt, act);
  teacher_normed_ = BackendBuffer(backend, N * Dt, act);
  du_ = BackendBuffer(backend, N * Dt, act);
  student_rstd_ = BackendBuffer(backend, N, stat_dtype(backend));
  teacher_rstd_ = BackendBuffer(backend, N, stat_dtype(backend));
  ones_ = BackendBuffer(backend, Dt, act);
  const std::vector<float> ones(static_cast<std::size_t>(Dt), 1.0f);
  backend.upload(ones_, ones.data());
  dweight_ = BackendBuffer(backend, Dt, backend.gradient_dtype());
  cosines_ = BackendBuffer(backend, N, stat_dtype(backend));
  host_.resize(static_cast<std::size_t>(N));
}

void CosineDistance::project(Tensor u, Tensor s, Tensor W, std::int64_t rows) {
  if (W.empty())
    backend_.copy(u, s.slice(0, rows * student_width_));
  else
    backend_.matmul(u, s.slice(0, rows * student_width_), W, rows, teacher_width_, student_width_, false, true);
}

double CosineDistance::value(Tensor s, Tensor t, Tensor W, std::int64_t rows) {
  MINITRON_ASSERT(rows >= 1 && rows <= max_rows_, "cosine distance of ", rows, " rows (at most ", max_rows_, ")");
  MINITRON_ASSERT(!W.empty() || student_width_ == teacher_width_, "widths differ: a map W is needed");
  const std::int64_t Dt = teacher_width_;
  Tensor u = u_.tensor().slice(0, rows * Dt), cos = cosines_.tensor().slice(0, rows);
  project(u, s, W, rows);
  backend_.row_cosine(cos, u, t.slice(0, rows * Dt), rows, Dt);
  backend_.download_f64(host_.data(), cos);
  double sum = 0;
  for (std::int64_t r = 0; r < rows; ++r) sum += 1.0 - host_[static_cast<std::size_t>(r)];
  return sum / static_cast<double>(rows);
}

void CosineDistance::backward(Tensor ds, Tensor dW, Tensor s, Tensor t, Tensor W, std::int64_t rows, float grad_scale) {
  MINITRON_ASSERT(rows >= 1 && rows <= max_rows_);
  const std::int64_t Ds = student_width_, Dt = teacher_width_;
  Backend& b = backend_;
  Tensor u = u_.tensor().slice(0, rows * Dt), tn = teacher_normed_.tensor().slice(0, rows * Dt);
  Tensor du = du_.tensor().slice(0, rows * Dt);
  Tensor rstd_u = student_rstd_.tensor().slice(0, rows), rstd_t = teacher_rstd_.tensor().slice(0, rows);
  project(u, s, W, rows);
  // dL/d(uhat) = -grad_scale / (rows * Dt) * that, pushed through the unit-weight RMSNorm of u.
  b.rmsnorm_forward(tn, rstd_t, t.slice(0, rows * Dt), ones_, rows, Dt, kNormEps);
  b.scale_inplace(tn, -static_cast<double>(grad_scale) / static_cast<double>(rows * Dt));
  b.rmsnorm_forward(du, rstd_u, u, ones_, rows, Dt, kNormEps);  // only for rstd_u; du is reset next
  b.zero(du);
  b.rmsnorm_backward(du, dweight_, tn, u, ones_, rstd_u, rows, Dt);
  if (W.empty()) {
    b.copy(ds.slice(0, rows * Ds), du);
    return;
  }
  // u = s W^T: dW += du^T s first (it reads s, which ds may overwrite), then ds = du W.
  b.matmul(dW, du, s.slice(0, rows * Ds), Dt, Ds, rows, true, false, 1.0f, 1.0f);
  b.matmul(ds.slice(0, rows * Ds), du, W, rows, Ds, Dt, false, false);
}

// ---------------------------------------------------------------------------------------
// The intermediate loss of a teacher/student pair
// ---------------------------------------------------------------------------------------

// Copies the mapped layers' outputs out of a forward pass (Inference-mode models keep only two
// residual buffers, so the teacher's states must be taken while they exist).
class HiddenStateDistillation::Recorder : public ActivationObserver {
 public:
  Recorder(Backend& backend, std::vector<std::pair<std::int64_t, Tensor>> targets)
      : backend_(backend), targets_(std::move(targets)), recorded_(targets_.size(), false) {}
  bool wants(ActivationSite site) const override { return site == ActivationSite::LayerOutput; }
  void observe(ActivationSite, std::int64_t layer, Tensor act, std::int64_t batch, std::int64_t sequence,
               std::int64_t channels) override {
    for (std::size_t i = 0; i < targets_.size(); ++i) {
      if (targets_[i].first != layer) continue;
      const std::int64_t n = batch * sequence * channels;
      MINITRON_ASSERT(n <= targets_[i].second.numel, "hidden state of ", batch, " x ", sequence,
                      " rows exceeds the buffer");
      backend_.copy(targets_[i].second.slice(0, n), act.slice(0, n));
      recorded_[i] = true;
      rows_ = batch * sequence;
    }
  }
  // Rows of the recorded forward; fails unless every mapped layer was seen since the last take.
  std::int64_t take(const char* model) {
    for (std::size_t i = 0; i < targets_.size(); ++i)
      MINITRON_ASSERT(recorded_[i], "the ", model, "'s layer ", targets_[i].first,
                      " output was not recorded: pass the observer to forward()");
    std::fill(recorded_.begin(), recorded_.end(), false);
    return rows_;
  }

 private:
  Backend& backend_;
  std::vector<std::pair<std::int64_t, Tensor>> targets_;
  std::vector<bool> recorded_;
  std::int64_t rows_ = 0;
};

namespace {
// Normals from util/random.h, so the map's initial values are identical on every machine. The
// seed is mixed with a constant ("minitron") so that the map does not repeat the stream of the
// model's initial weights drawn from the same seed.
std::vector<float> initial_map(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  SplitMix64 rng(seed ^ 0x6D696E6974726F6Eull);
  // std 1/sqrt(fan_in): u = W s keeps the scale of s (the cosine ignores it, but the update
  // sizes of AdamW are relative to the weights' scale).
  const double std = 1.0 / std::sqrt(static_cast<double>(cols));
  std::vector<float> w(static_cast<std::size_t>(rows * cols));
  for (std::size_t i = 0; i < w.size(); i += 2) {
    const NormalPair z = normal_pair(rng, std);
    w[i] = static_cast<float>(z.first);
    if (i + 1 < w.size()) w[i + 1] = static_cast<float>(z.second);
  }
  return w;
}
}  // namespace

HiddenStateDistillation::HiddenStateDistillation(Backend& backend, const ModelConfig& student,
                                                 const ModelConfig& teacher, std::vector<LayerPair> pairs,
                                                 std::int64_t max_rows, std::uint64_t seed)
    : backend_(backend),
      pairs_(std::move(pairs)),
      max_rows_(max_rows),
      student_width_(student.hidden_size),
      teacher_width_(teacher.hidden_size),
      cosine_(backend, max_rows, student.hidden_size, teacher.hidden_size) {
  if (pairs_.empty()) fail_expected("--intermediate-layers", "no layer pairs", "at least one STUDENT:TEACHER pair");
  for (const LayerPair& p : pairs_)
    if (p.student < 0 || p.student >= student.num_hidden_layers || p.teacher < 0 ||
        p.teacher >= teacher.num_hidden_layers)
      fail_expected("--intermediate-layers", str("pair ", p.student, ":", p.teacher, " is out of range"),
                    str("student layers in [0, ", student.num_hidden_layers, "), teacher layers in [0, ",
                        teacher.num_hidden_layers, ")"));
  const DType act = backend.activation_dtype();
  std::vector<std::pair<std::int64_t, Tensor>> student_targets, teacher_targets;
  for (const LayerPair& p : pairs_) {
    student_states_.emplace_back(backend, max_rows * student_width_, act);
    teacher_states_.emplace_back(backend, max_rows * teacher_width_, act);
    student_targets.emplace_back(p.student, student_states_.back().tensor());
    teacher_targets.emplace_back(p.teacher, teacher_states_.back().tensor());
  }
  student_recorder_ = std::make_unique<Recorder>(backend, std::move(student_targets));
  teacher_recorder_ = std::make_unique<Recorder>(backend, std::move(teacher_targets));
  if (student_width_ != teacher_width_) {
    const std::int64_t n = teacher_width_ * student_width_;
    map_ = BackendBuffer(backend, n, act);
    map_gradient_ = BackendBuffer(backend, n, backend.gradient_dtype());
    map_m_ = BackendBuffer(backend, n, DType::F32);
    map_v_ = BackendBuffer(backend, n, DType::F32);
    backend.zero(map_gradient_);
    backend.zero(map_m_);
    backend.zero(map_v_);
    if (act == DType::BF16) map_master_ = BackendBuffer(backend, n, DType::F32);  // as AdamW does for the model
    set_map(initial_map(teacher_width_, student_width_, seed));
  }
}

HiddenStateDistillation::~HiddenStateDistillation() = default;

ActivationObserver& HiddenStateDistillation::student_observer() { return *student_recorder_; }
ActivationObserver& HiddenStateDistillation::teacher_observer() { return *teacher_recorder_; }

void HiddenStateDistillation::set_map(std::span<const float> host) {
  MINITRON_ASSERT(has_map(), "equal widths: no map");
  if (static_cast<std::int64_t>(host.size()) != map_.numel())
    fail_expected("hidden-state map", str(host.size(), " values"), str(teacher_width_, " x ", student_width_));
  backend_.upload(map_, host.data());
  if (!map_master_.tensor().empty()) backend_.upload(map_master_, host.data());
}

std::vector<float> HiddenStateDistillation::get_map() const {
  std::vector<float> host(static_cast<std::size_t>(map_.numel()));
  if (!host.empty())
    backend_.download(host.data(), map_master_.tensor().empty() ? map_.tensor() : map_master_.tensor());
  return host;
}

double HiddenStateDistillation::loss() {
  const std::int64_t rows = student_recorder_->take("student");
  if (teacher_recorder_->take("teacher") != rows)
    fail("intermediate loss: teacher and student ran on different batches");
  MINITRON_ASSERT(rows <= max_rows_, rows, " rows, built for ", max_rows_);
  rows_ = rows;
  double sum = 0;
  for (std::size_t i = 0; i < pairs_.size(); ++i)
    sum += cosine_.value(student_states_[i], teacher_states_[i], map_, rows);
  return sum;
}

void HiddenStateDistillation::backward(LlamaModel& student, float grad_weight) {
  MINITRON_ASSERT(rows_ > 0, "call loss() before backward()");
  MINITRON_ASSERT(student.rows() == rows_, "the student ran on another batch since loss()");
  for (std::size_t i = 0; i < pairs_.size(); ++i) {
    Tensor s = student_states_[i].tensor().slice(0, rows_ * student_width_);
    cosine_.backward(s, map_gradient_, s, teacher_states_[i], map_, rows_, grad_weight);
    student.add_layer_output_gradient(pairs_[i].student, s);
  }
  rows_ = 0;
}

void HiddenStateDistillation::all_reduce_gradients(Communicator& communicator) {
  if (has_map()) communicator.all_reduce_sum(map_gradient_);
}

void HiddenStateDistillation::optimizer_step(std::int64_t step, const OptimizerConfig& config) {
  if (!has_map()) return;
  Backend& b = backend_;
  const double norm = std::sqrt(b.sum_of_squares(map_gradient_));
  float scale = 1.0f;
  if (config.grad_clip > 0 && norm > config.grad_clip) scale = static_cast<float>(config.grad_clip / (norm + 1e-6));
  AdamWStep s;
  s.learning_rate = static_cast<float>(learning_rate_at(config, step));
  s.beta1 = static_cast<float>(config.beta1);
  s.beta2 = static_cast<float>(config.beta2);
  s.epsilon = static_cast<float>(config.epsilon);
  s.weight_decay = static_cast<float>(config.weight_decay);  // a matrix, decayed like the model's
  s.step = ++map_steps_;
  s.grad_scale = scale;
  b.adamw_update(map_, map_master_, map_gradient_, map_m_, map_v_, s);
  b.zero(map_gradient_);
}

void HiddenStateDistillation::save_state(const fs::path& dir) const {
  nlohmann::json meta = {{"layers", format_layer_mapping(pairs_)},
                         {"student_hidden_size", student_width_},
                         {"teacher_hidden_size", teacher_width_},
                         {"steps", map_steps_}};
  if (has_map()) {
    const std::vector<float> w = get_map();
    std::vector<float> m(w.size()), v(w.size());
    backend_.download(m.data(), map_m_);
    backend_.download(v.data(), map_v_);
    const std::vector<std::int64_t> shape{teacher_width_, student_width_};
    const std::vector<SafetensorsEntry> entries{
        {"map", shape, w.data()}, {"adam_m", shape, m.data()}, {"adam_v", shape, v.data()}};
    write_safetensors_file(dir / "hidden_state_map.safetensors", entries, SafetensorsDType::F32);
  }
  write_bytes_atomically(dir / "hidden_state_map.json", meta.dump(2));
}

void HiddenStateDistillation::restore_state(const fs::path& dir) {
  const fs::path meta_path = dir / "hidden_state_map.json";
  if (!fs::is_regular_file(meta_path))
    fail_expected(str("--resume from ", dir.string()), "no hidden_state_map.json",
                  "a checkpoint written with the same --intermediate-loss-weight (> 0) and --intermediate-layers");
  const nlohmann::json document =
      parse_untrusted_json(read_text_file(meta_path), meta_path.string(), "valid JSON written by minitron distill");
  const JsonField meta(document, meta_path.string());
  const std::string layers = meta.at("layers").as_string();
  if (layers != format_layer_mapping(pairs_) ||
      meta.at("student_hidden_size").as_int<std::int64_t>() != student_width_ ||
      meta.at("teacher_hidden_size").as_int<std::int64_t>() != teacher_width_)
    fail_expected(str("--resume from ", dir.string()),
                  str("the checkpoint's intermediate loss maps layers ", layers, " but this run maps ",
                      format_layer_mapping(pairs_)),
                  "the same --intermediate-layers and models as the interrupted run");
  map_steps_ = meta.at("steps").as_int<std::int64_t>(0);
  if (!has_map()) return;
  SafetensorsFile file(dir / "hidden_state_map.safetensors");
  const auto n = static_cast<std::size_t>(map_.numel());
  std::vector<float> w(n), m(n), v(n);
  file.read_f32("map", w);
  file.read_f32("adam_m", m);
  file.read_f32("adam_v", v);
  set_map(w);
  backend_.upload(map_m_, m.data());
  backend_.upload(map_v_, v.data());
  backend_.zero(map_gradient_);
}

}  // namespace minitron
