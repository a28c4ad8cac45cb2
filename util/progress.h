// Progress reporting for long work, and JSONL metrics.
//
// Progress draws a bar with rate and ETA when stderr is a terminal, and prints a plain line
// every `log_every_seconds` otherwise (logs, CI), so long runs are visible either way.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

namespace minitron {

class Progress {
 public:
  Progress(std::string label, std::int64_t total, std::string unit = "it", double log_every_seconds = 10.0);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void advance(std::int64_t n = 1);
  void set(std::int64_t done);
  void finish();
  // Ends without the final line: the work failed, and its error should be the last thing printed.
  void abandon() { finished_ = true; }

 private:
  void draw(bool final);

  std::string label_, unit_;
  std::int64_t total_, done_ = 0;
  double log_every_;
  bool terminal_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

// Appends one JSON object per line; flushes each line so a crashed run keeps its metrics.
class MetricsLog {
 public:
  MetricsLog() = default;
  explicit MetricsLog(const std::filesystem::path& path, bool append = false);
  void write(const nlohmann::json& record);
  bool is_open() const { return out_.is_open(); }

 private:
  std::ofstream out_;
};

}  // namespace minitron
