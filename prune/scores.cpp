#include "prune/scores.h"

#include <cmath>

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

ImportanceScores scores_from_json(const nlohmann::json& j, const std::string& where) {
  const std::string expected = "a scores file written by 'minitron importance'";
  if (!j.is_object() || j.value("format", "") != kScoresFormat)
    fail_expected(where, "not a minitron importance scores file (no \"format\": \"minitron-importance\")", expected);
  if (j.value("version", 0) != kScoresVersion)
    fail_expected(where, str("version ", j.value("version", 0)), str("version ", kScoresVersion));
  ImportanceScores s;
  try {
    const nlohmann::json& m = j.at("model_shape");
    s.hidden_size = m.at("hidden_size");
    s.intermediate_size = m.at("intermediate_size");
    s.num_layers = m.at("num_hidden_layers");
    s.num_attention_heads = m.at("num_attention_heads");
    s.num_key_value_heads = m.at("num_key_value_heads");
    s.head_dim = m.at("head_dim");
    s.vocab_size = m.value("vocab_size", 0);
    s.provenance = j.value("provenance", nlohmann::json::object());
    const nlohmann::json& w = j.at("width");
    if (w.contains("mlp")) s.width.mlp = w["mlp"].get<std::vector<std::vector<double>>>();
    if (w.contains("heads")) s.width.heads = w["heads"].get<std::vector<std::vector<double>>>();
    if (w.contains("head_channels")) s.width.head_channels = w["head_channels"].get<std::vector<std::vector<double>>>();
    if (w.contains("hidden")) s.width.hidden = w["hidden"].get<std::vector<double>>();
    const nlohmann::json& l = j.at("layers");
    s.layers.windows = l.value("windows", 0);
    if (l.contains("baseline_loss")) s.layers.baseline_loss = l["baseline_loss"].get<double>();
    if (l.contains("single_removal_loss")) s.layers.single_removal_loss = l["single_removal_loss"].get<std::vector<double>>();
    for (const nlohmann::json& b : l.value("block_removal_loss", nlohmann::json::array())) {
      const auto k = b.at("block_size").get<std::int64_t>();
      s.layers.block_removal_loss[k] = b.at("loss").get<std::vector<double>>();
      if (b.contains("task_score")) s.layers.block_removal_task_score[k] = b["task_score"].get<std::vector<double>>();
    }
    s.layers.task = l.value("task", "");
    if (l.contains("baseline_task_score")) s.layers.baseline_task_score = l["baseline_task_score"].get<double>();
    if (l.contains("block_importance")) s.layers.block_importance = l["block_importance"].get<std::vector<double>>();
  } catch (const nlohmann::json::exception& e) {
    fail_expected(where, e.what(), expected);
  }
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
    for (std::size_t h = 0; h < s.width.heads[l].size(); ++h) check(s.width.heads[l][h], "attention head ", h, " of layer ", l);
  for (std::size_t l = 0; l < s.width.head_channels.size(); ++l)
    for (std::size_t c = 0; c < s.width.head_channels[l].size(); ++c)
      check(s.width.head_channels[l][c], "attention channel ", c, " (o_proj input) of layer ", l);
  for (std::size_t c = 0; c < s.width.hidden.size(); ++c) check(s.width.hidden[c], "hidden channel ", c, " (summed over layers)");
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
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    fail_expected(path.string(), e.what(), "valid JSON written by 'minitron importance'");
  }
  return scores_from_json(j, path.string());
}

void check_scores_match(const ImportanceScores& s, const ModelConfig& c, const std::string& where) {
  auto same = [&](const char* field, std::int64_t scored, std::int64_t model) {
    if (scored != model)
      fail_expected(where, str("scores were measured on a model with ", field, " = ", scored, ", this model has ", model),
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
    fail_expected(where, str("layers.single_removal_loss has ", s.layers.single_removal_loss.size(), " values"), str(L));
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
