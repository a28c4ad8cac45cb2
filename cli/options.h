// Shared flag handling for the subcommands: cxxopts with long names only, a --help on every
// command, and range checks that fail with "minitron: error: --flag: ..." messages.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <cxxopts.hpp>

#include "kernels/make_backend.h"
#include "model/safetensors.h"
#include "util/error.h"

namespace minitron::cli {

// Parses argv; prints help and returns false when --help was given.
inline bool parse_options(cxxopts::Options& options, int argc, char** argv, cxxopts::ParseResult& result) {
  // clang-format off
  options.add_options()("help", "Print this help");
  // clang-format on
  try {
    result = options.parse(argc, argv);
  } catch (const cxxopts::exceptions::incorrect_argument_type& e) {
    // cxxopts names only the value ("Argument '1e99x' failed to parse"): name its flag too.
    const std::string message = e.what();
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      if (arg.rfind("--", 0) != 0) continue;
      const std::size_t eq = arg.find('=');
      const std::string flag = arg.substr(0, eq);
      const std::string value = eq != std::string::npos ? arg.substr(eq + 1) : (i + 1 < argc ? argv[i + 1] : "");
      if (!value.empty() && (message.find("'" + value + "'") != std::string::npos ||
                             message.find("\u2018" + value + "\u2019") != std::string::npos))
        fail(str(flag, ": '", value, "' is not a number of this flag's type, or is out of its range (see 'minitron ",
                 options.program(), " --help')"));
    }
    fail(str(message, " (see 'minitron ", options.program(), " --help')"));
  } catch (const cxxopts::exceptions::exception& e) {
    fail(str(e.what(), " (see 'minitron ", options.program(), " --help')"));
  }
  if (result.count("help")) {
    std::fputs(options.help().c_str(), stdout);
    return false;
  }
  if (!result.unmatched().empty())
    fail(str("unexpected argument '", result.unmatched().front(), "' (see 'minitron ", options.program(), " --help')"));
  return true;
}

template <typename T>
T required(const cxxopts::ParseResult& result, const std::string& flag) {
  if (!result.count(flag)) fail(str("--", flag, ": missing (this flag is required)"));
  return result[flag].as<T>();
}

template <typename T>
T in_range(const cxxopts::ParseResult& result, const std::string& flag, T low, T high) {
  T value = result[flag].as<T>();
  if (value < low || value > high)
    fail_expected(str("--", flag), str("value ", value, " is out of range"), str("a value from ", low, " to ", high));
  return value;
}

// --device: "cpu", "cuda", or empty for the default (cuda when a GPU is present, else cpu).
inline std::string choose_device(const std::string& requested) {
  std::vector<std::string> devices = available_devices();
  if (requested.empty()) {
    for (const std::string& d : devices)
      if (d == "cuda") return d;
    return "cpu";
  }
  return requested;  // make_backend explains why an unavailable device cannot be used
}

// --save-dtype: the HF names bfloat16 / float32.
inline SafetensorsDType parse_save_dtype(const std::string& name) {
  if (name == "bfloat16" || name == "bf16") return SafetensorsDType::BF16;
  if (name == "float32" || name == "fp32") return SafetensorsDType::F32;
  fail_expected("--save-dtype", str("'", name, "'"), "bfloat16 or float32");
}

}  // namespace minitron::cli
