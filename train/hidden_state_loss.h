// Distillation of intermediate hidden states, the optional second loss of Minitron
// (Muralidharan et al., "Compact Language Models via Pruning and Knowledge Distillation",
// arXiv 2407.14679, section on retraining with distillation): for mapped (student layer,
// teacher layer) pairs, a cosine loss between the hidden states the two layers output, the
// student's first sent through a learned linear map W [teacher hidden, student hidden] when
// the widths differ (one W shared by every pair), added to the logit loss as
//   L = L_logits + weight * alpha * L_is,   alpha = L_logits / L_is (a number, no gradient),
// so that the two terms have the same magnitude. The paper's text could not be consulted
// here (no copy was reachable from this machine): the formula follows the task's statement of
// it, and `weight` (--intermediate-loss-weight) scales the dynamic alpha, 0 turning it off.
//
// Which hidden states: each mapped layer's output, the residual stream, compared by cosine.
// The cosine is invariant to a positive scale per token, so it equals the cosine of the states
// passed through RMSNorm without weights (the "normalised" hidden states), and comparing raw
// outputs is that comparison exactly. The final norm's weights are left out on purpose: they
// are a learned per-channel scale that differs between teacher and student, and the logit
// loss already trains the student's through the head.
//
// Everything runs on the Backend (matmul, RMSNorm forward/backward with unit weights,
// row_cosine), so the loss works on every engine; its gradient reaches the student's residual
// stream through LlamaModel::add_layer_output_gradient().
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/backend.h"
#include "dist/communicator.h"
#include "model/config.h"
#include "model/llama.h"
#include "train/optimizer.h"

namespace minitron {

struct LayerPair {
  std::int64_t student = 0, teacher = 0;
  bool operator==(const LayerPair&) const = default;
};

// Every student layer, student layer i to teacher layer ceil((i + 1) * Lt / Ls) - 1: the last
// to the last, evenly spaced before it (identity when the depths are equal; for a depth-pruned
// student, each student layer to the end of its share of the teacher's layers).
std::vector<LayerPair> default_layer_mapping(std::int64_t student_layers, std::int64_t teacher_layers);

// "s0:t0,s1:t1,..." (zero-based layer indices); "" gives default_layer_mapping. Throws Error
// naming the entry when one is malformed, out of range, or maps a student layer twice.
std::vector<LayerPair> parse_layer_mapping(const std::string& spec, std::int64_t student_layers,
                                           std::int64_t teacher_layers);
std::string format_layer_mapping(const std::vector<LayerPair>& pairs);

// The cosine loss of one pair on the backend: L = mean over rows r of 1 - cos(u_r, t_r) with
// u = s W^T (s [rows, Ds], W [Dt, Ds], t [rows, Dt]; with an empty W, u = s and Ds == Dt).
// Owns the scratch buffers for up to max_rows rows.
class CosineDistance {
 public:
  CosineDistance(Backend& backend, std::int64_t max_rows, std::int64_t student_width, std::int64_t teacher_width);
  double value(Tensor s, Tensor t, Tensor W, std::int64_t rows);
  // ds = grad_scale * dL/ds (overwritten; ds may be s itself), dW += grad_scale * dL/dW
  // (gradient dtype; ignored when W is empty).
  void backward(Tensor ds, Tensor dW, Tensor s, Tensor t, Tensor W, std::int64_t rows, float grad_scale);

 private:
  void project(Tensor u, Tensor s, Tensor W, std::int64_t rows);
  Backend& backend_;
  std::int64_t max_rows_, student_width_, teacher_width_;
  BackendBuffer u_, teacher_normed_, du_, student_rstd_, teacher_rstd_, ones_, dweight_, cosines_;
  std::vector<double> host_;
};

// The whole intermediate loss: records the mapped layers' outputs during both models'
// forward passes (pass the observers to forward()), computes L_is, back-propagates it, and
// trains W with its own AdamW state (saved with the training checkpoint, not the model).
class HiddenStateDistillation {
 public:
  HiddenStateDistillation(Backend& backend, const ModelConfig& student, const ModelConfig& teacher,
                          std::vector<LayerPair> pairs, std::int64_t max_rows, std::uint64_t seed = 1337);
  ~HiddenStateDistillation();
  HiddenStateDistillation(const HiddenStateDistillation&) = delete;
  HiddenStateDistillation& operator=(const HiddenStateDistillation&) = delete;

  const std::vector<LayerPair>& pairs() const { return pairs_; }
  bool has_map() const { return !map_.tensor().empty(); }
  Tensor map() const { return map_; }                    // W [teacher hidden, student hidden]
  Tensor map_gradient() const { return map_gradient_; }  // gradient dtype
  void set_map(std::span<const float> host);             // tests and restore
  std::vector<float> get_map() const;

  ActivationObserver& student_observer();
  ActivationObserver& teacher_observer();

  // L_is = sum over pairs of the pair's mean cosine distance, after both models ran forward()
  // on the same rows with the observers attached.
  double loss();
  // Adds grad_weight * dL_is/dW to W's gradient and queues grad_weight * dL_is/d(hidden) on
  // the student's mapped layers (call after loss(), before student.backward()). Overwrites the
  // recorded student states with their gradients.
  void backward(LlamaModel& student, float grad_weight);

  // Sums W's gradient over the ranks of a data-parallel run (before optimizer_step), so every
  // rank's W takes the same update; nothing to do without a map.
  void all_reduce_gradients(Communicator& communicator);
  // One AdamW update of W from its accumulated gradient (the model's schedule, decay and
  // clipping by W's own gradient norm), then zeroes that gradient. 0-based step.
  void optimizer_step(std::int64_t step, const OptimizerConfig& config);
  // W, its moments and step count in dir/hidden_state_map.safetensors (+ .json); restore_state
  // refuses a file written for other widths or another mapping.
  void save_state(const std::filesystem::path& dir) const;
  void restore_state(const std::filesystem::path& dir);

 private:
  class Recorder;
  Backend& backend_;
  std::vector<LayerPair> pairs_;
  std::int64_t max_rows_, student_width_, teacher_width_, rows_ = 0;
  std::vector<BackendBuffer> student_states_, teacher_states_;  // per pair [max_rows, width]
  BackendBuffer map_, map_gradient_, map_m_, map_v_, map_master_;
  std::int64_t map_steps_ = 0;
  CosineDistance cosine_;
  std::unique_ptr<Recorder> student_recorder_, teacher_recorder_;
};

}  // namespace minitron
