#include "prune/search.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "model/parameters.h"
#include "util/error.h"

namespace minitron {

std::int64_t parse_parameter_count(const std::string& text, const std::string& flag) {
  const std::string expected = "a count such as 4.5B, 350M, 20K or 123456";
  if (text.empty()) fail_expected(flag, "empty", expected);
  double scale = 1;
  std::string number = text;
  switch (text.back()) {
    case 'K': case 'k': scale = 1e3; break;
    case 'M': case 'm': scale = 1e6; break;
    case 'B': case 'b': case 'G': case 'g': scale = 1e9; break;
    case 'T': case 't': scale = 1e12; break;
    default: break;
  }
  if (scale != 1) number.pop_back();
  char* end = nullptr;
  const double value = std::strtod(number.c_str(), &end);
  if (number.empty() || end != number.c_str() + number.size() || !(value > 0))
    fail_expected(flag, str("'", text, "'"), expected);
  // Checked before rounding: llround of a value beyond int64 is undefined. A quadrillion is far
  // above any model and far below where the conversion could overflow.
  constexpr double kMaxCount = 1e15;
  if (!(value * scale >= 1 && value * scale <= kMaxCount))
    fail_expected(flag, str("'", text, "' is out of range"), "a count from 1 to 1000T (1e15)");
  return static_cast<std::int64_t>(std::llround(value * scale));
}

std::int64_t parameter_count(const ModelConfig& c) { return ParameterTable(c).total_numel(); }

nlohmann::json architecture_to_json(const Architecture& a) {
  return {{"hidden_size", a.hidden_size},         {"intermediate_size", a.intermediate_size},
          {"num_attention_heads", a.num_attention_heads}, {"num_key_value_heads", a.num_key_value_heads},
          {"num_hidden_layers", a.num_layers},    {"parameters", a.parameters}};
}

std::string architecture_string(const Architecture& a) {
  return str("hidden ", a.hidden_size, ", ffn ", a.intermediate_size, ", heads ", a.num_attention_heads, "/",
             a.num_key_value_heads, ", layers ", a.num_layers);
}

PruneTargets targets_of(const Architecture& a, LayerCriterion criterion) {
  PruneTargets t;
  t.hidden_size = a.hidden_size;
  t.intermediate_size = a.intermediate_size;
  t.num_attention_heads = a.num_attention_heads;
  t.num_key_value_heads = a.num_key_value_heads;
  t.num_layers = a.num_layers;
  t.layer_criterion = criterion;
  return t;
}

namespace {

// Values step, 2*step, ... up to current (always included), not below floor.
std::vector<std::int64_t> axis(std::int64_t current, std::int64_t step, std::int64_t floor) {
  std::vector<std::int64_t> out;
  for (std::int64_t v = step; v < current; v += step)
    if (v >= floor) out.push_back(v);
  out.push_back(current);
  return out;
}

// About 1/16 of the size, rounded down to a multiple of `multiple`, at least `multiple`.
std::int64_t default_step(std::int64_t size, std::int64_t multiple) {
  return std::max<std::int64_t>(multiple, size / 16 / multiple * multiple);
}

}  // namespace

std::vector<Architecture> enumerate_architectures(const ModelConfig& config, std::int64_t target, double tolerance,
                                                  const SearchGrid& grid) {
  const std::int64_t D = config.hidden_size, F = config.intermediate_size, L = config.num_hidden_layers;
  const std::int64_t Hkv = config.num_key_value_heads, group = config.query_heads_per_group();
  const std::int64_t hidden_step =
      grid.hidden_step > 0 ? grid.hidden_step : (D >= 2048 ? 256 : default_step(D, kHiddenSizeMultiple));
  const std::int64_t ffn_step = grid.intermediate_step > 0 ? grid.intermediate_step : (F >= 4096 ? 512 : default_step(F, 8));
  if (hidden_step % kHiddenSizeMultiple != 0)
    fail_expected("hidden step", str(hidden_step), str("a multiple of ", kHiddenSizeMultiple));
  const auto floor_of = [](std::int64_t size, double fraction) {
    return static_cast<std::int64_t>(std::ceil(static_cast<double>(size) * fraction));
  };
  std::vector<Architecture> out;
  ModelConfig c = config;
  for (std::int64_t d : axis(D, hidden_step, floor_of(D, grid.min_width_fraction)))
    for (std::int64_t f : axis(F, ffn_step, floor_of(F, grid.min_width_fraction)))
      for (std::int64_t per_group = 1; per_group <= group; ++per_group) {
        c.hidden_size = d;
        c.intermediate_size = f;
        c.num_attention_heads = per_group * Hkv;
        c.num_key_value_heads = Hkv;
        // Every layer has the same tensors, so the table's total is linear in the depth: two
        // small tables (1 and 2 layers) give it for every depth without a full table each.
        c.num_hidden_layers = 1;
        const std::int64_t one_layer = parameter_count(c);
        c.num_hidden_layers = 2;
        const std::int64_t per_layer = parameter_count(c) - one_layer;
        for (std::int64_t l = std::max<std::int64_t>(1, floor_of(L, grid.min_depth_fraction)); l <= L; ++l) {
          const std::int64_t n = one_layer + (l - 1) * per_layer;
          if (std::abs(static_cast<double>(n) - static_cast<double>(target)) > tolerance * static_cast<double>(target))
            continue;
          out.push_back({d, f, per_group * Hkv, Hkv, l, n});
        }
      }
  std::stable_sort(out.begin(), out.end(), [&](const Architecture& a, const Architecture& b) {
    return std::llabs(a.parameters - target) < std::llabs(b.parameters - target);
  });
  return out;
}

std::vector<Architecture> spread_subset(const std::vector<Architecture>& all, std::size_t n) {
  if (all.size() <= n || n == 0) return n == 0 ? std::vector<Architecture>{} : all;
  if (n == 1) return {all.front()};
  std::vector<Architecture> out;
  for (std::size_t i = 0; i < n; ++i) out.push_back(all[i * (all.size() - 1) / (n - 1)]);
  return out;
}

}  // namespace minitron
