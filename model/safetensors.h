// safetensors: the checkpoint tensor format of Hugging Face. A file is an 8-byte little-endian
// header length N, N bytes of JSON ({"name": {"dtype", "shape", "data_offsets": [begin, end]},
// optional "__metadata__"}), then the data region that the offsets index.
//
// The reader memory-maps and validates every header field before any tensor is touched, so a
// damaged or hostile file gives a minitron::Error, never a crash or an out-of-bounds read. As the
// safetensors reference requires, the tensors must tile the data region exactly (no gaps, no
// overlaps, no trailing bytes); a file cut short is reported as truncated.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "util/files.h"

namespace minitron {

enum class SafetensorsDType { BF16, F16, F32 };
const char* safetensors_dtype_name(SafetensorsDType dtype);  // "BF16", "F16", "F32"
std::size_t safetensors_dtype_size(SafetensorsDType dtype);

struct SafetensorsTensor {
  std::string name;
  SafetensorsDType dtype = SafetensorsDType::F32;
  std::vector<std::int64_t> shape;
  std::int64_t numel = 0;
  std::uint64_t begin = 0, end = 0;  // byte range inside the data region
};

std::string shape_string(std::span<const std::int64_t> shape);  // "[4096, 128256]"

// One .safetensors file.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return file_.path(); }
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }  // header order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsTensor* find(const std::string& name) const;
  const SafetensorsTensor& at(const std::string& name) const;  // Error naming the file if absent

  std::span<const std::uint8_t> raw(const SafetensorsTensor& tensor) const;
  // Converts to fp32 into `out`, whose size must equal the tensor's element count.
  void read_f32(const SafetensorsTensor& tensor, std::span<float> out) const;
  void read_f32(const std::string& name, std::span<float> out) const { read_f32(at(name), out); }
  // Elements [first, first + out.size()) of the flattened tensor, converted to fp32: one rank's
  // part of a sharded optimizer state, without the rest in memory.
  void read_f32_range(const SafetensorsTensor& tensor, std::int64_t first, std::span<float> out) const;
  void read_f32_range(const std::string& name, std::int64_t first, std::span<float> out) const {
    read_f32_range(at(name), first, out);
  }

 private:
  MappedFile file_;
  std::uint64_t data_start_ = 0;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// The tensors of a model directory: `model.safetensors`, or shards listed by
// `model.safetensors.index.json` (weight_map: tensor name -> shard file name). When both
// exist, model.safetensors is read, as transformers does.
class SafetensorsCheckpoint {
 public:
  explicit SafetensorsCheckpoint(const std::filesystem::path& dir);
  static bool present(const std::filesystem::path& dir);  // either layout exists in dir

  std::vector<std::string> names() const;  // sorted
  const SafetensorsTensor* find(const std::string& name) const;
  const SafetensorsTensor& at(const std::string& name) const;
  const SafetensorsFile& file_of(const std::string& name) const;
  void read_f32(const std::string& name, std::span<float> out) const;
  bool sharded() const { return files_.size() > 1 || sharded_; }
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::filesystem::path dir_;
  bool sharded_ = false;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<const SafetensorsFile*, const SafetensorsTensor*>> tensors_;
};

// Writing. Entries are written in the given order, contiguously, in `dtype` (BF16 rounds to
// nearest even). The header carries __metadata__ {"format": "pt"} (transformers requires it)
// and is padded with spaces to a multiple of 8 bytes so the data region stays aligned.
struct SafetensorsEntry {
  std::string name;
  std::vector<std::int64_t> shape;
  const float* data = nullptr;
};

inline constexpr std::uint64_t kDefaultMaxShardBytes = 5'000'000'000ull;  // HF's default "5GB"

void write_safetensors_file(const std::filesystem::path& path, std::span<const SafetensorsEntry> entries,
                            SafetensorsDType dtype);

// Writes `model.safetensors` into dir, or, when the data exceeds max_shard_bytes,
// `model-0000i-of-0000N.safetensors` shards plus `model.safetensors.index.json`. Returns the
// file names written.
std::vector<std::string> write_safetensors_model(const std::filesystem::path& dir,
                                                 std::span<const SafetensorsEntry> entries, SafetensorsDType dtype,
                                                 std::uint64_t max_shard_bytes = kDefaultMaxShardBytes);

}  // namespace minitron
