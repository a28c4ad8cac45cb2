#include "pipeline/recipe.h"

#include <set>

#include <nlohmann/json.hpp>

#include "model/llama.h"
#include "util/error.h"
#include "util/files.h"

namespace minitron {

namespace {

using nlohmann::json;

// Reads keys from one JSON object, refusing unknown ones and wrong types with the key's path.
class Reader {
 public:
  Reader(const json& object, std::string where, const std::filesystem::path& file) : object_(object), where_(std::move(where)), file_(file) {
    if (!object_.is_object()) fail_expected(str(file_.string(), ": ", where_), "not a JSON object", "an object");
  }
  ~Reader() = default;
  template <typename T>
  void get(const char* key, T& out) {
    seen_.insert(key);
    auto it = object_.find(key);
    if (it == object_.end()) return;
    try {
      out = it->get<T>();
    } catch (const json::exception&) {
      fail_expected(str(file_.string(), ": ", where_, key), str("value ", it->dump()), expected_type<T>());
    }
  }
  template <typename T>
  void get(const char* key, std::optional<T>& out) {
    T value{};
    if (object_.contains(key)) {
      get(key, value);
      out = value;
    } else {
      seen_.insert(key);
    }
  }
  const json* child(const char* key) {
    seen_.insert(key);
    auto it = object_.find(key);
    return it == object_.end() ? nullptr : &*it;
  }
  void finish() const {
    for (auto it = object_.begin(); it != object_.end(); ++it)
      if (!seen_.count(it.key()))
        fail_expected(str(file_.string(), ": ", where_, it.key()), "unknown key", "one of the keys listed in recipes/README.md");
  }

 private:
  template <typename T>
  static const char* expected_type() {
    if constexpr (std::is_same_v<T, std::string>) return "a string";
    else if constexpr (std::is_same_v<T, bool>) return "true or false";
    else if constexpr (std::is_integral_v<T>) return "an integer";
    else return "a number";
  }
  const json& object_;
  std::string where_;
  const std::filesystem::path& file_;
  std::set<std::string> seen_;
};

void read_training(const json& j, const std::string& where, const std::filesystem::path& file, RecipeTraining& t) {
  Reader r(j, where, file);
  r.get("steps", t.steps);
  r.get("batch_size", t.batch_size);
  r.get("grad_accumulation", t.grad_accumulation);
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
  r.finish();
  if (t.steps < 1) fail_expected(str(file.string(), ": ", where, "steps"), str(t.steps), "at least 1");
  if (!parse_activation_recompute(t.recompute))
    fail_expected(str(file.string(), ": ", where, "recompute"), str("'", t.recompute, "'"), "none, selective or full");
}

// One {task, task_file, shots, limit, fewshot_file} object; name is its key path ("importance.task").
RecipeTask read_task(const json& j, const std::string& name, const std::filesystem::path& file) {
  RecipeTask task;
  Reader tr(j, name + ".", file);
  tr.get("task", task.task);
  tr.get("task_file", task.task_file);
  tr.get("shots", task.shots);
  tr.get("limit", task.limit);
  tr.get("fewshot_file", task.fewshot_file);
  tr.finish();
  if (task.task.empty() || task.task_file.empty())
    fail_expected(str(file.string(), ": ", name), "task or task_file missing", "both");
  if (task.shots < 0 || task.limit < 0)
    fail_expected(str(file.string(), ": ", name), str("shots ", task.shots, ", limit ", task.limit), "both at least 0");
  return task;
}

}  // namespace

Recipe load_recipe(const std::filesystem::path& path) {
  json j;
  try {
    j = json::parse(read_text_file(path));
  } catch (const json::exception& e) {
    fail_expected(str("recipe ", path.string()), e.what(), "a JSON object");
  }
  Recipe recipe;
  Reader r(j, "", path);
  std::string teacher;
  r.get("name", recipe.name);
  r.get("teacher", teacher);
  recipe.teacher = teacher;
  if (teacher.empty()) fail_expected(str(path.string(), ": teacher"), "missing", "the teacher's HF checkpoint directory");
  r.get("device", recipe.device);
  r.get("batch_size", recipe.batch_size);
  r.get("sequence_length", recipe.sequence_length);
  r.get("seed", recipe.seed);
  r.get("save_dtype", recipe.save_dtype);
  if (const json* d = r.child("data")) {
    Reader dr(*d, "data.", path);
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
  if (const json* c = r.child("correction")) read_training(*c, "correction.", path, recipe.correction);
  if (recipe.correction.learning_rate <= 0) recipe.correction.learning_rate = recipe.correction.original_learning_rate / 5.0;
  if (const json* c = r.child("correction"); !c || !c->contains("min_learning_rate"))
    recipe.correction.min_learning_rate = recipe.correction.learning_rate / 10.0;
  if (const json* d = r.child("distillation")) read_training(*d, "distillation.", path, recipe.distillation);
  if (const json* i = r.child("importance")) {
    Reader ir(*i, "importance.", path);
    ir.get("samples", recipe.importance_samples);
    ir.get("layer_windows", recipe.importance_layer_windows);
    ir.get("batch_size", recipe.importance_batch_size);
    ir.get("sequence_length", recipe.importance_sequence_length);
    if (const json* t = ir.child("task")) recipe.importance_task = read_task(*t, "importance.task", path);
    ir.finish();
    if (recipe.importance_task && recipe.importance_layer_windows < 1)
      fail_expected(str(path.string(), ": importance.layer_windows"), str(recipe.importance_layer_windows, " with importance.task"),
                    "at least 1 (the task is scored beside the layer-removal losses)");
  }
  if (const json* s = r.child("students")) {
    if (!s->is_array() || s->empty()) fail_expected(str(path.string(), ": students"), "not a non-empty array", "a list of pruned architectures");
    for (std::size_t k = 0; k < s->size(); ++k) {
      RecipeStudent student;
      Reader sr((*s)[k], str("students[", k, "]."), path);
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
        fail_expected(str(path.string(), ": students[", k, "].layer_criterion"), "task, but the recipe has no importance.task",
                      "\"importance\": {\"task\": {\"task\": NAME, \"task_file\": FILE}} to measure block accuracies");
      if (student.name.empty() || student.name.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-_") != std::string::npos)
        fail_expected(str(path.string(), ": students[", k, "].name"), str("'", student.name, "'"),
                      "a non-empty name of lower-case letters, digits, - and _ (it names the run directories)");
      for (const RecipeStudent& other : recipe.students)
        if (other.name == student.name) fail_expected(str(path.string(), ": students[", k, "].name"), "duplicate", "distinct names");
      recipe.students.push_back(std::move(student));
    }
  }
  if (recipe.students.empty()) fail_expected(str(path.string(), ": students"), "missing", "at least one pruned architecture");
  if (const json* b = r.child("baseline")) {
    if (b->is_boolean()) {
      recipe.baseline = b->get<bool>();
    } else {
      Reader br(*b, "baseline.", path);
      double lr = 0;
      br.get("learning_rate", lr);
      br.finish();
      recipe.baseline = true;
      if (lr > 0) recipe.baseline_learning_rate = lr;
    }
  }
  if (const json* e = r.child("evaluation")) {
    Reader er(*e, "evaluation.", path);
    er.get("eval_windows", recipe.eval_windows);
    if (const json* tasks = er.child("tasks")) {
      if (!tasks->is_array()) fail_expected(str(path.string(), ": evaluation.tasks"), "not an array", "a list of {task, task_file}");
      for (std::size_t k = 0; k < tasks->size(); ++k) {
        recipe.tasks.push_back(read_task((*tasks)[k], str("evaluation.tasks[", k, "]"), path));
      }
    }
    er.finish();
  }
  r.finish();
  return recipe;
}

}  // namespace minitron
