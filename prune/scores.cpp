#include "prune/scores.h"

#include <cmath>

#include "util/checked_json.h"
#include "util/error.h"
#include "util/files.h"
#include "util/random.h"

namespace minitron {

namespace fs = std::filesystem;

ImportanceScores empty_scores(const ModelConfig& c) {
  ImportanceScores s;
  s.hidden_size = c.hidden_size;
  s.intermediate_size = c.intermediate_size;
  s.num_layers = c.num_hidden_layers;
  s.num_attention_heads = c.num_attention_heads;
  s.num_key_value_heads = c.num_key_value_heads;
  s.head_dim = c.head_dim;
  s.vocab_size = c.vocab_size;
  return s;
}

ImportanceScores random_scores(const ModelConfig& c, std::uint64_t seed) {
  ImportanceScores s = empty_scores(c);
  Xoshiro256 rng(seed);
  auto uniform = [&]() { return static_cast<double>(rng.next() >> 11) * 0x1.0p-53; };
  auto fill = [&](std::int64_t n) {
    std::vector<double> v(static_cast<std::size_t>(n));
    for (double& x : v) x = uniform();
    return v;
  };
  const std::int64_t L = c.num_hidden_layers;
  for (std::int64_t l = 0; l < L; ++l) {
    s.width.mlp.push_back(fill(c.intermediate_size));
    s.width.heads.push_back(fill(c.num_attention_heads));
  }
  s.width.hidden = fill(c.hidden_size);
  s.layers.block_importance = fill(L);
  for (std::int64_t k = 1; k < L; ++k) s.layers.block_removal_loss[k] = fill(L - k + 1);
  s.provenance = {{"random_seed", seed}, {"note", "uniform random scores: a baseline, not importance"}};
  return s;
}

nlohmann::json scores_to_json(const ImportanceScores& s) {
  nlohmann::json j;
  j["format"] = kScoresFormat;
  j["version"] = kScoresVersion;
  j["model_shape"] = {{"hidden_size", s.hidden_size},
                      {"intermediate_size", s.intermediate_size},
                      {"num_hidden_layers", s.num_layers},
                      {"num_attention_heads", s.num_attention_heads},
                      {"num_key_value_heads", s.num_key_value_heads},
                      {"head_dim", s.head_dim},
                      {"vocab_size", s.vocab_size}};
  j["provenance"] = s.provenance;
  nlohmann::json width = nlohmann::json::object();
  if (!s.width.mlp.empty()) width["mlp"] = s.width.mlp;
  if (!s.width.heads.empty()) width["heads"] = s.width.heads;
  if (!s.width.head_channels.empty()) width["head_channels"] = s.width.head_channels;
  if (!s.width.hidden.empty()) width["hidden"] = s.width.hidden;
  j["width"] = width;
  nlohmann::json layers = nlohmann::json::object();
  layers["windows"] = s.layers.windows;
  if (s.layers.baseline_loss) layers["baseline_loss"] = *s.layers.baseline_loss;
  if (!s.layers.single_removal_loss.empty()) layers["single_removal_loss"] = s.layers.single_removal_loss;
  nlohmann::json blocks = nlohmann::json::array();
  for (const auto& [k, losses] : s.layers.block_removal_loss) {
    nlohmann::json block = {{"block_size", k}, {"loss", losses}};
    if (auto it = s.layers.block_removal_task_score.find(k); it != s.layers.block_removal_task_score.end())
      block["task_score"] = it->second;
    blocks.push_back(block);
  }
  if (!s.layers.task.empty()) layers["task"] = s.layers.task;
  if (s.layers.baseline_task_score) layers["baseline_task_score"] = *s.layers.baseline_task_score;
  layers["block_removal_loss"] = blocks;
  if (!s.layers.block_importance.empty()) layers["block_importance"] = s.layers.block_importance;
  j["layers"] = layers;
  return j;
}

namespace {

std::vector<std::vector<double>> float_matrix(const JsonField& rows) {
  std::vector<std::vector<double>> out;
  for (const JsonField& row : rows.as_array()) out.push_back(row.as_float_array());
  return out;
}

}  // namespace

ImportanceScores scores_from_json(const nlohmann::json& j, const std::string& where) {
  const std::string expected = "a scores file written by 'minitron importance'";
  const JsonField root(j, where);
  if (!root.is_object() || !root.at("format").is_string() || root.at("format").as_string() != kScoresFormat)
    fail_expected(where, "not a minitron importance scores file (no \"format\": \"minitron-importance\")", expected);
  if (root.at("version").as_int<std::int64_t>() != kScoresVersion)
    root.at("version").refuse(str("version ", kScoresVersion));
  ImportanceScores s;
  // Sizes are bounded as config.json's are (check_scores_match compares them with the model's).
  constexpr std::int64_t kLargestSize = std::int64_t{1} << 24;
  const JsonField m = root.at("model_shape");
  s.hidden_size = m.at("hidden_size").as_int<std::int64_t>(0, kLargestSize);
  s.intermediate_size = m.at("intermediate_size").as_int<std::int64_t>(0, kLargestSize);
  s.num_layers = m.at("num_hidden_layers").as_int<std::int64_t>(0, kLargestSize);
  s.num_attention_heads = m.at("num_attention_heads").as_int<std::int64_t>(0, kLargestSize);
  s.num_key_value_heads = m.at("num_key_value_heads").as_int<std::int64_t>(0, kLargestSize);
  s.head_dim = m.at("head_dim").as_int<std::int64_t>(0, kLargestSize);
  s.vocab_size = m.optional("vocab_size") ? m.at("vocab_size").as_int<std::int64_t>(0, kLargestSize) : 0;
  if (std::optional<JsonField> provenance = root.optional("provenance")) s.provenance = provenance->raw();
  const JsonField w = root.at("width");
  if (!w.is_object()) w.refuse("an object");
  if (w.has("mlp")) s.width.mlp = float_matrix(w.at("mlp"));
  if (w.has("heads")) s.width.heads = float_matrix(w.at("heads"));
  if (w.has("head_channels")) s.width.head_channels = float_matrix(w.at("head_channels"));
  if (w.has("hidden")) s.width.hidden = w.at("hidden").as_float_array();
  const JsonField l = root.at("layers");
  if (!l.is_object()) l.refuse("an object");
  s.layers.windows = l.optional("windows") ? l.at("windows").as_int<std::int64_t>(0) : 0;
  if (l.has("baseline_loss")) s.layers.baseline_loss = l.at("baseline_loss").as_float();
  if (l.has("single_removal_loss")) s.layers.single_removal_loss = l.at("single_removal_loss").as_float_array();
  if (std::optional<JsonField> blocks = l.optional("block_removal_loss")) {
    for (const JsonField& b : blocks->as_array()) {
      const auto k = b.at("block_size").as_int<std::int64_t>(1, kLargestSize);
      s.layers.block_removal_loss[k] = b.at("loss").as_float_array();
      if (b.has("task_score")) s.layers.block_removal_task_score[k] = b.at("task_score").as_float_array();
    }
  }
  s.layers.task = l.optional("task") ? l.at("task").as_string() : "";
  if (l.has("baseline_task_score")) s.layers.baseline_task_score = l.at("baseline_task_score").as_float();
  if (l.has("block_importance")) s.layers.block_importance = l.at("block_importance").as_float_array();
  return s;
}

void check_scores_finite(const ImportanceScores& s, const std::string& where) {
  auto check = [&](double value, auto&&... site) {
    if (!std::isfinite(value))
      fail_expected(where, str("the score of ", site..., " is ", value),
                    "finite scores (a non-finite activation or loss: the model or the calibration diverged)");
  };
  for (std::size_t l = 0; l < s.width.mlp.size(); ++l)
    for (std::size_t j = 0; j < s.width.mlp[l].size(); ++j) check(s.width.mlp[l][j], "mlp neuron ", j, " of layer ", l);
  for (std::size_t l = 0; l < s.width.heads.size(); ++l)
    for (std::size_t h = 0; h < s.width.heads[l].size(); ++h)
      check(s.width.heads[l][h], "attention head ", h, " of layer ", l);
  for (std::size_t l = 0; l < s.width.head_channels.size(); ++l)
    for (std::size_t c = 0; c < s.width.head_channels[l].size(); ++c)
      check(s.width.head_channels[l][c], "attention channel ", c, " (o_proj input) of layer ", l);
  for (std::size_t c = 0; c < s.width.hidden.size(); ++c)
    check(s.width.hidden[c], "hidden channel ", c, " (summed over layers)");
  if (s.layers.baseline_loss) check(*s.layers.baseline_loss, "the held-out loss with every layer");
  for (std::size_t l = 0; l < s.layers.single_removal_loss.size(); ++l)
    check(s.layers.single_removal_loss[l], "the held-out loss without layer ", l);
  for (const auto& [k, losses] : s.layers.block_removal_loss)
    for (std::size_t b = 0; b < losses.size(); ++b)
      check(losses[b], "the held-out loss without layers ", b, "-", b + static_cast<std::size_t>(k) - 1);
  if (s.layers.baseline_task_score) check(*s.layers.baseline_task_score, "the task accuracy with every layer");
  for (const auto& [k, accuracies] : s.layers.block_removal_task_score)
    for (std::size_t b = 0; b < accuracies.size(); ++b)
      check(accuracies[b], "the task accuracy without layers ", b, "-", b + static_cast<std::size_t>(k) - 1);
  for (std::size_t l = 0; l < s.layers.block_importance.size(); ++l)
    check(s.layers.block_importance[l], "block importance of layer ", l);
}

void save_scores(const fs::path& path, const ImportanceScores& scores) {
  // JSON has no NaN (nlohmann writes null, which load_scores then rejects as a type error):
  // refuse here, naming the site and layer, before anything is written.
  check_scores_finite(scores, path.string());
  // One top-level key per line keeps the file readable while the long arrays stay compact.
  const nlohmann::json j = scores_to_json(scores);
  std::string text = "{\n";
  bool first = true;
  for (const auto& [key, value] : j.items()) {
    text += str(first ? "" : ",\n", " ", nlohmann::json(key).dump(), ": ", value.dump());
    first = false;
  }
  text += "\n}\n";
  write_bytes_atomically(path, text);
}

ImportanceScores load_scores(const fs::path& path) {
  if (!fs::is_regular_file(path)) fail_expected(str("--scores ", path.string()), "no such file", "a scores JSON file");
  const nlohmann::json j =
      parse_untrusted_json(read_text_file(path), path.string(), "valid JSON written by 'minitron importance'");
  return scores_from_json(j, path.string());
}

void check_scores_match(const ImportanceScores& s, const ModelConfig& c, const std::string& where) {
  auto same = [&](const char* field, std::int64_t scored, std::int64_t model) {
    if (scored != model)
      fail_expected(where,
                    str("scores were measured on a model with ", field, " = ", scored, ", this model has ", model),
                    "scores from 'minitron importance' on this same model");
  };
  same("hidden_size", s.hidden_size, c.hidden_size);
  same("intermediate_size", s.intermediate_size, c.intermediate_size);
  same("num_hidden_layers", s.num_layers, c.num_hidden_layers);
  same("num_attention_heads", s.num_attention_heads, c.num_attention_heads);
  same("num_key_value_heads", s.num_key_value_heads, c.num_key_value_heads);
  same("head_dim", s.head_dim, c.head_dim);
  if (s.vocab_size) same("vocab_size", s.vocab_size, c.vocab_size);
  auto shape = [&](const char* name, const auto& arrays, std::int64_t rows, std::int64_t cols) {
    if (arrays.empty()) return;
    if (static_cast<std::int64_t>(arrays.size()) != rows)
      fail_expected(where, str("width.", name, " has ", arrays.size(), " layers"), str(rows));
    for (const auto& row : arrays)
      if (static_cast<std::int64_t>(row.size()) != cols)
        fail_expected(where, str("width.", name, " has a layer of ", row.size(), " scores"), str(cols));
  };
  shape("mlp", s.width.mlp, c.num_hidden_layers, c.intermediate_size);
  shape("heads", s.width.heads, c.num_hidden_layers, c.num_attention_heads);
  shape("head_channels", s.width.head_channels, c.num_hidden_layers, c.q_dim());
  if (!s.width.hidden.empty() && static_cast<std::int64_t>(s.width.hidden.size()) != c.hidden_size)
    fail_expected(where, str("width.hidden has ", s.width.hidden.size(), " scores"), str(c.hidden_size));
  const auto L = static_cast<std::size_t>(c.num_hidden_layers);
  if (!s.layers.single_removal_loss.empty() && s.layers.single_removal_loss.size() != L)
    fail_expected(where, str("layers.single_removal_loss has ", s.layers.single_removal_loss.size(), " values"),
                  str(L));
  if (!s.layers.block_importance.empty() && s.layers.block_importance.size() != L)
    fail_expected(where, str("layers.block_importance has ", s.layers.block_importance.size(), " values"), str(L));
  // Per block size k, one value per block start: the losses and the task accuracies alike.
  auto blocks = [&](const char* name, const std::map<std::int64_t, std::vector<double>>& by_size) {
    for (const auto& [k, values] : by_size)
      if (k < 1 || k > c.num_hidden_layers || values.size() != L - static_cast<std::size_t>(k) + 1)
        fail_expected(where, str("layers.", name, " for block size ", k, " has ", values.size(), " values"),
                      str(c.num_hidden_layers, " - k + 1 values for 1 <= k <= ", c.num_hidden_layers));
  };
  blocks("block_removal_loss", s.layers.block_removal_loss);
  blocks("block_removal_task_score", s.layers.block_removal_task_score);
}

}  // namespace minitron
