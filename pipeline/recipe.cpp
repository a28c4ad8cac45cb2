#include "pipeline/recipe.h"

#include <set>

#include <nlohmann/json.hpp>

#include "model/activation_recompute.h"
#include "util/checked_json.h"
#include "util/error.h"
#include "util/files.h"

namespace minitron {

namespace {

using nlohmann::json;

// Reads keys from one JSON object, refusing unknown ones and wrong types with the key's path.
class Reader {
 public:
  explicit Reader(const JsonField& object) : object_(object) {
    if (!object_.is_object()) object_.refuse("an object");
  }
  template <typename T>
  void get(const char* key, T& out) {
    seen_.insert(key);
    const JsonField value = object_.at(key);
    if (!value.exists()) return;
    if constexpr (std::is_same_v<T, std::string>)
      out = value.as_string();
    else if constexpr (std::is_same_v<T, bool>)
      out = value.as_bool();
    else if constexpr (std::is_integral_v<T>)
      out = value.as_int<T>();
    else
      out = value.as_float();
  }
  template <typename T>
  void get(const char* key, std::optional<T>& out) {
    T value{};
    if (object_.at(key).exists()) {
      get(key, value);
      out = value;
    } else {
      seen_.insert(key);
    }
  }
  std::optional<JsonField> child(const char* key) {
    seen_.insert(key);
    const JsonField value = object_.at(key);
    if (!value.exists()) return std::nullopt;
    return value;
  }
  void finish() const {
    for (const auto& [key, value] : object_.as_object())
      if (!seen_.count(key)) value.refuse("unknown key", "one of the keys listed in recipes/README.md");
  }

 private:
  JsonField object_;
  std::set<std::string> seen_;
};

void read_training(const JsonField& j, RecipeTraining& t) {
  Reader r(j);
  r.get("steps", t.steps);
  r.get("batch_size", t.batch_size);
  r.get("grad_accumulation", t.grad_accumulation);
  r.get("global_batch_size", t.global_batch_size);
  r.get("learning_rate", t.learning_rate);
  r.get("min_learning_rate", t.min_learning_rate);
  r.get("original_learning_rate", t.original_learning_rate);
  r.get("warmup_steps", t.warmup_steps);
  r.get("weight_decay", t.weight_decay);
  r.get("eval_interval", t.eval_interval);
  r.get("temperature", t.temperature);
  r.get("hard_label_weight", t.hard_label_weight);
  r.get("intermediate_loss_weight", t.intermediate_loss_weight);
  r.get("intermediate_layers", t.intermediate_layers);
  r.get("enabled", t.enabled);
  r.get("recompute", t.recompute);
  r.get("zero_stage", t.zero_stage);
  r.finish();
  if (t.steps < 1) fail_expected(j.at("steps").where(), str(t.steps), "at least 1");
  if (j.at("global_batch_size").exists() && j.at("grad_accumulation").exists())
    fail_expected(j.where(), "both global_batch_size and grad_accumulation given",
                  "one: the global batch over all ranks, or each rank's micro-batches per step");
  if (j.at("global_batch_size").exists() && t.global_batch_size < 1)
    fail_expected(j.at("global_batch_size").where(), str(t.global_batch_size), "at least 1");
  if (!parse_activation_recompute(t.recompute))
    fail_expected(j.at("recompute").where(), str("'", t.recompute, "'"), "none, selective or full");
  if (t.zero_stage != 0 && t.zero_stage != 1 && t.zero_stage != 2)
    fail_expected(j.at("zero_stage").where(), str(t.zero_stage), "1 or 2 (or no zero_stage: 2 with several ranks)");
}

// One {task, task_file, shots, limit, fewshot_file} object; name is its key path ("importance.task").
RecipeTask read_task(const JsonField& j) {
  RecipeTask task;
  Reader tr(j);
  tr.get("task", task.task);
  tr.get("task_file", task.task_file);
  tr.get("shots", task.shots);
  tr.get("limit", task.limit);
  tr.get("fewshot_file", task.fewshot_file);
  tr.finish();
  if (task.task.empty() || task.task_file.empty()) fail_expected(j.where(), "task or task_file missing", "both");
  if (task.shots < 0 || task.limit < 0)
    fail_expected(j.where(), str("shots ", task.shots, ", limit ", task.limit), "both at least 0");
  return task;
}

}  // namespace

Recipe load_recipe(const std::filesystem::path& path) {
  const json j = parse_untrusted_json(read_text_file(path), str("recipe ", path.string()), "a JSON object");
  const JsonField root(j, path.string());
  Recipe recipe;
  Reader r(root);
  std::string teacher;
  r.get("name", recipe.name);
  r.get("teacher", teacher);
  recipe.teacher = teacher;
  if (teacher.empty())
    fail_expected(str(path.string(), ": teacher"), "missing", "the teacher's HF checkpoint directory");
  r.get("device", recipe.device);
  r.get("batch_size", recipe.batch_size);
  r.get("sequence_length", recipe.sequence_length);
  r.get("seed", recipe.seed);
  r.get("save_dtype", recipe.save_dtype);
  if (std::optional<JsonField> d = r.child("data")) {
    Reader dr(*d);
    dr.get("train", recipe.train_data);
    dr.get("validation", recipe.validation_data);
    dr.get("calibration", recipe.calibration_data);
    dr.finish();
  }
  if (recipe.train_data.empty() || recipe.validation_data.empty())
    fail_expected(str(path.string(), ": data"), "train or validation missing",
                  "\"data\": {\"train\": SHARDS, \"validation\": SHARDS} (the distillation data)");
  if (recipe.calibration_data.empty()) recipe.calibration_data = recipe.train_data;
  // Correction defaults: the paper's 1/5 of the original peak, minimum a tenth of that.
  recipe.correction.learning_rate = 0;
  if (std::optional<JsonField> c = r.child("correction")) read_training(*c, recipe.correction);
  if (recipe.correction.learning_rate <= 0)
    recipe.correction.learning_rate = recipe.correction.original_learning_rate / 5.0;
  if (std::optional<JsonField> c = r.child("correction"); !c || !c->at("min_learning_rate").exists())
    recipe.correction.min_learning_rate = recipe.correction.learning_rate / 10.0;
  if (std::optional<JsonField> d = r.child("distillation")) read_training(*d, recipe.distillation);
  // The ranks' count is the launch's, but a global batch no single rank's micro-batches divide
  // would fail on any number of GPUs: refused here rather than after the steps before it.
  for (const auto& [key, t] : {std::pair{"correction", &recipe.correction}, {"distillation", &recipe.distillation}}) {
    const std::int64_t batch = t->batch_size > 0 ? t->batch_size : recipe.batch_size;
    if (t->global_batch_size > 0 && t->global_batch_size % batch != 0)
      fail_expected(str(path.string(), ": ", key, ".global_batch_size"), str(t->global_batch_size),
                    str("a multiple of its batch_size ", batch));
  }
  if (std::optional<JsonField> i = r.child("importance")) {
    Reader ir(*i);
    ir.get("samples", recipe.importance_samples);
    ir.get("layer_windows", recipe.importance_layer_windows);
    ir.get("batch_size", recipe.importance_batch_size);
    ir.get("sequence_length", recipe.importance_sequence_length);
    if (std::optional<JsonField> t = ir.child("task")) recipe.importance_task = read_task(*t);
    ir.finish();
    if (recipe.importance_task && recipe.importance_layer_windows < 1)
      fail_expected(str(path.string(), ": importance.layer_windows"),
                    str(recipe.importance_layer_windows, " with importance.task"),
                    "at least 1 (the task is scored beside the layer-removal losses)");
  }
  if (std::optional<JsonField> s = r.child("students")) {
    if (!s->is_array() || s->size() == 0) s->refuse("a non-empty list of pruned architectures");
    for (std::size_t k = 0; k < s->size(); ++k) {
      RecipeStudent student;
      Reader sr((*s)[k]);
      sr.get("name", student.name);
      sr.get("hidden_size", student.hidden_size);
      sr.get("intermediate_size", student.intermediate_size);
      sr.get("num_attention_heads", student.num_attention_heads);
      sr.get("num_key_value_heads", student.num_key_value_heads);
      sr.get("num_layers", student.num_layers);
      sr.get("drop_layers", student.drop_layers);
      sr.get("target_params", student.target_params);
      sr.get("layer_criterion", student.layer_criterion);
      sr.finish();
      if (!student.layer_criterion.empty() && student.layer_criterion != "loss" &&
          student.layer_criterion != "block-importance" && student.layer_criterion != "task")
        fail_expected(str(path.string(), ": students[", k, "].layer_criterion"), str("'", student.layer_criterion, "'"),
                      "loss, block-importance or task");
      if (student.layer_criterion == "task" && !recipe.importance_task)
        fail_expected(str(path.string(), ": students[", k, "].layer_criterion"),
                      "task, but the recipe has no importance.task",
                      "\"importance\": {\"task\": {\"task\": NAME, \"task_file\": FILE}} to measure block accuracies");
      if (student.name.empty() ||
          student.name.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-_") != std::string::npos)
        fail_expected(str(path.string(), ": students[", k, "].name"), str("'", student.name, "'"),
                      "a non-empty name of lower-case letters, digits, - and _ (it names the run directories)");
      for (const RecipeStudent& other : recipe.students)
        if (other.name == student.name)
          fail_expected(str(path.string(), ": students[", k, "].name"), "duplicate", "distinct names");
      recipe.students.push_back(std::move(student));
    }
  }
  if (recipe.students.empty())
    fail_expected(str(path.string(), ": students"), "missing", "at least one pruned architecture");
  if (std::optional<JsonField> b = r.child("baseline")) {
    if (b->is_bool()) {
      recipe.baseline = b->as_bool();
    } else {
      Reader br(*b);
      double lr = 0;
      br.get("learning_rate", lr);
      br.finish();
      recipe.baseline = true;
      if (lr > 0) recipe.baseline_learning_rate = lr;
    }
  }
  if (std::optional<JsonField> e = r.child("evaluation")) {
    Reader er(*e);
    er.get("eval_windows", recipe.eval_windows);
    if (std::optional<JsonField> tasks = er.child("tasks")) {
      if (!tasks->is_array()) tasks->refuse("a list of {task, task_file}");
      for (const JsonField& task : tasks->as_array()) recipe.tasks.push_back(read_task(task));
    }
    if (std::optional<JsonField> suite = er.child("suite")) {
      RecipeSuite rs;
      Reader sr(*suite);
      sr.get("name", rs.name);
      sr.get("task_dir", rs.task_dir);
      sr.get("limit", rs.limit);
      sr.get("max_gen_toks", rs.max_gen_toks);
      sr.finish();
      if (rs.name.empty() || rs.task_dir.empty()) fail_expected(suite->where(), "name or task_dir missing", "both");
      if (rs.limit < 0 || rs.max_gen_toks < 1)
        fail_expected(suite->where(), str("limit ", rs.limit, ", max_gen_toks ", rs.max_gen_toks),
                      "limit at least 0, max_gen_toks at least 1");
      recipe.suite = rs;
    }
    er.finish();
  }
  r.finish();
  return recipe;
}

}  // namespace minitron
