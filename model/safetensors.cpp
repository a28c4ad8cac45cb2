#include "model/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "core/bf16.h"
#include "util/checked_json.h"
#include "util/error.h"

namespace minitron {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The reference implementation's limit; a larger header is a damaged length field, not a model.
constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;
// No real tensor comes near this; it keeps every size computation far from overflow.
constexpr std::uint64_t kMaxElements = std::uint64_t{1} << 48;

bool parse_dtype(const std::string& name, SafetensorsDType& out) {
  if (name == "BF16")
    out = SafetensorsDType::BF16;
  else if (name == "F16")
    out = SafetensorsDType::F16;
  else if (name == "F32")
    out = SafetensorsDType::F32;
  else
    return false;
  return true;
}

std::uint64_t read_u64_le(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void put_u64_le(std::string& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// A non-negative JSON integer (the safetensors format writes no floats here), at most `limit`.
std::uint64_t non_negative(const JsonField& v, std::uint64_t limit) {
  if (!v.is_number() || !v.raw().is_number_unsigned()) v.refuse("a non-negative integer");
  return v.as_int<std::uint64_t>(0, limit);
}

}  // namespace

const char* safetensors_dtype_name(SafetensorsDType dtype) {
  switch (dtype) {
    case SafetensorsDType::BF16: return "BF16";
    case SafetensorsDType::F16: return "F16";
    case SafetensorsDType::F32: return "F32";
  }
  return "?";
}

std::size_t safetensors_dtype_size(SafetensorsDType dtype) { return dtype == SafetensorsDType::F32 ? 4 : 2; }

std::string shape_string(std::span<const std::int64_t> shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += str(i ? ", " : "", shape[i]);
  return s + "]";
}

SafetensorsFile::SafetensorsFile(const fs::path& path) : file_(path) {
  const std::string where = path.string();
  const std::uint64_t size = file_.size();
  if (size < 8)
    fail_expected(where, str("file is ", size, " bytes, too short for the 8-byte header length"), "a safetensors file");
  const std::uint64_t header_len = read_u64_le(file_.data());
  if (header_len > size - 8)
    fail_expected(where, str("header length ", header_len, " is beyond the file (", size, " bytes)"),
                  str("at most ", size - 8, " bytes"));
  if (header_len > kMaxHeaderBytes)
    fail_expected(where, str("header length ", header_len, " is too large"),
                  str("at most ", kMaxHeaderBytes, " bytes"));
  data_start_ = 8 + header_len;
  const std::uint64_t data_size = size - data_start_;

  const json header = parse_untrusted_json(
      std::string_view(reinterpret_cast<const char*>(file_.data() + 8), header_len), where, "a JSON object header");
  const JsonField header_field(header, where);
  if (!header_field.is_object()) header_field.refuse("a JSON object");

  for (const auto& [name, entry] : header_field.as_object()) {
    const json& v = entry.raw();
    if (name == "__metadata__") {
      for (const auto& [key, value] : entry.as_object()) metadata_[key] = value.as_string();
      continue;
    }
    const std::string what = str(where, ": tensor '", name, "'");
    if (!v.is_object())
      fail_expected(what, str("entry is a JSON ", v.type_name()), "an object with dtype, shape, data_offsets");
    SafetensorsTensor t;
    t.name = name;
    if (!v.contains("dtype") || !v["dtype"].is_string())
      fail_expected(what, "dtype missing or not a string", "\"BF16\", \"F16\" or \"F32\"");
    const std::string dtype = entry.at("dtype").as_string();
    if (!parse_dtype(dtype, t.dtype))
      fail_expected(what, str("dtype '", dtype, "' is not supported"), "BF16, F16 or F32");
    if (!v.contains("shape") || !v["shape"].is_array())
      fail_expected(what, "shape missing or not an array", "an array of non-negative integers");
    if (v["shape"].size() > 8) fail_expected(what, str("shape has ", v["shape"].size(), " dimensions"), "at most 8");
    std::uint64_t numel = 1;
    for (const JsonField& d : entry.at("shape").as_array()) {
      std::uint64_t dim = non_negative(d, kMaxElements);
      if (dim != 0 && numel > kMaxElements / dim)
        fail_expected(what, str("shape ", v["shape"].dump(), " has too many elements"), str("at most ", kMaxElements));
      numel *= dim;
      t.shape.push_back(static_cast<std::int64_t>(dim));
    }
    t.numel = static_cast<std::int64_t>(numel);
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
      fail_expected(what, "data_offsets missing or not a pair", "[begin, end]");
    // Bounded by the element limit here; against the file's data region below, so that a cut
    // file is reported as truncated.
    const std::uint64_t max_offset = kMaxElements * 4;
    t.begin = non_negative(entry.at("data_offsets")[0], max_offset);
    t.end = non_negative(entry.at("data_offsets")[1], max_offset);
    if (t.begin > t.end)
      fail_expected(what, str("data_offsets [", t.begin, ", ", t.end, "] end before begin"), "begin <= end");
    const std::uint64_t bytes = numel * safetensors_dtype_size(t.dtype);
    if (t.end - t.begin != bytes)
      fail_expected(what,
                    str("data_offsets [", t.begin, ", ", t.end, "] hold ", t.end - t.begin, " bytes but ", dtype, " ",
                        shape_string(t.shape), " needs ", bytes),
                    str(bytes, " bytes"));
    index_[t.name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }

  // As the safetensors reference validates: in offset order, every tensor starts where the
  // previous one ended and the last ends at the end of the file, so that the tensors tile the
  // data region exactly (no gaps, no overlaps, no trailing bytes).
  std::vector<const SafetensorsTensor*> by_offset;
  for (const SafetensorsTensor& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const auto* a, const auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end != b->end ? a->end < b->end : a->name < b->name;
  });
  std::uint64_t needed = 0;
  for (const SafetensorsTensor* t : by_offset) needed = std::max(needed, t->end);
  if (needed > data_size)
    fail_expected(where,
                  str("file is truncated: its data region holds ", data_size, " bytes but the tensors need ", needed),
                  str("a complete file of ", data_start_ + needed, " bytes"));
  std::uint64_t position = 0;
  const SafetensorsTensor* previous = nullptr;
  for (const SafetensorsTensor* t : by_offset) {
    if (t->begin < position)
      fail_expected(where,
                    str("tensors '", previous->name, "' [", previous->begin, ", ", previous->end, ") and '", t->name,
                        "' [", t->begin, ", ", t->end, ") overlap"),
                    "tensors that tile the data region exactly");
    if (t->begin > position)
      fail_expected(where,
                    str("bytes [", position, ", ", t->begin, ") of the data region before tensor '", t->name,
                        "' belong to no tensor"),
                    "tensors that tile the data region exactly (no gaps)");
    position = t->end;
    previous = t;
  }
  if (position != data_size)
    fail_expected(where, str("the data region holds ", data_size - position, " trailing bytes after the last tensor"),
                  str("tensors that tile the data region exactly (", position, " bytes)"));
}

const SafetensorsTensor* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const SafetensorsTensor& SafetensorsFile::at(const std::string& name) const {
  const SafetensorsTensor* t = find(name);
  if (!t) fail_expected(path().string(), str("tensor '", name, "' is missing"), "it in this file");
  return *t;
}

std::span<const std::uint8_t> SafetensorsFile::raw(const SafetensorsTensor& t) const {
  return {file_.data() + data_start_ + t.begin, static_cast<std::size_t>(t.end - t.begin)};
}

void SafetensorsFile::read_f32(const SafetensorsTensor& t, std::span<float> out) const {
  if (out.size() != static_cast<std::size_t>(t.numel))
    fail_expected(str(path().string(), ": tensor '", t.name, "'"),
                  str("destination holds ", out.size(), " floats but the tensor has ", t.numel), "equal sizes");
  read_f32_range(t, 0, out);
}

void SafetensorsFile::read_f32_range(const SafetensorsTensor& t, std::int64_t first, std::span<float> out) const {
  if (first < 0 || first > t.numel ||
      static_cast<std::uint64_t>(out.size()) > static_cast<std::uint64_t>(t.numel - first))
    fail_expected(str(path().string(), ": tensor '", t.name, "'"),
                  str("elements ", first, " to ", first + static_cast<std::int64_t>(out.size()), " asked of ", t.numel),
                  "a range inside the tensor");
  const std::uint8_t* src =
      file_.data() + data_start_ + t.begin + static_cast<std::uint64_t>(first) * safetensors_dtype_size(t.dtype);
  const std::size_t n = out.size();
  // memcpy per element: the data region need not be aligned for the element type.
  switch (t.dtype) {
    case SafetensorsDType::F32:
      if (n) std::memcpy(out.data(), src, n * 4);
      break;
    case SafetensorsDType::BF16:
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t b;
        std::memcpy(&b, src + 2 * i, 2);
        out[i] = bf16_to_float(b);
      }
      break;
    case SafetensorsDType::F16:
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t b;
        std::memcpy(&b, src + 2 * i, 2);
        out[i] = fp16_to_float(b);
      }
      break;
  }
}

bool SafetensorsCheckpoint::present(const fs::path& dir) {
  return fs::exists(dir / "model.safetensors.index.json") || fs::exists(dir / "model.safetensors");
}

SafetensorsCheckpoint::SafetensorsCheckpoint(const fs::path& dir) : dir_(dir) {
  const fs::path index_path = dir / "model.safetensors.index.json";
  const fs::path single = dir / "model.safetensors";
  // As transformers does: a single model.safetensors wins over an index beside it.
  if (!fs::exists(single) && fs::exists(index_path)) {
    sharded_ = true;
    const std::string where = index_path.string();
    const json index = parse_untrusted_json(read_text_file(index_path), where, "a safetensors index");
    const JsonField index_field(index, where);
    if (!index_field.is_object() || !index_field.at("weight_map").is_object())
      fail_expected(where, "no weight_map object", "{\"metadata\": {...}, \"weight_map\": {tensor: file}}");
    std::map<std::string, const SafetensorsFile*> shards;
    for (const auto& [tensor, file_field] : index_field.at("weight_map").as_object()) {
      if (!file_field.is_string()) file_field.refuse("a file name");
      const std::string& file = file_field.as_string();
      if (file.empty() || file.find('/') != std::string::npos || file.find('\\') != std::string::npos || file == "." ||
          file == "..")
        fail_expected(str(where, ": weight_map['", tensor, "']"), str("'", file, "' is not a plain file name"),
                      "a shard file in the same directory");
      auto found = shards.find(file);
      if (found == shards.end()) {
        if (!fs::exists(dir / file))
          fail_expected(where, str("shard '", file, "' (for tensor '", tensor, "') does not exist"),
                        "every shard named in weight_map beside the index");
        files_.push_back(std::make_unique<SafetensorsFile>(dir / file));
        found = shards.emplace(file, files_.back().get()).first;
      }
      const SafetensorsTensor* t = found->second->find(tensor);
      if (!t)
        fail_expected(where, str("tensor '", tensor, "' is not in its shard '", file, "'"),
                      "weight_map to match the shards' headers");
      tensors_[tensor] = {found->second, t};
    }
    return;
  }
  if (!fs::exists(single))
    fail_expected(dir.string(), "no model.safetensors or model.safetensors.index.json",
                  "a Hugging Face safetensors checkpoint directory");
  files_.push_back(std::make_unique<SafetensorsFile>(single));
  for (const SafetensorsTensor& t : files_.back()->tensors()) tensors_[t.name] = {files_.back().get(), &t};
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [name, _] : tensors_) out.push_back(name);
  return out;
}

const SafetensorsTensor* SafetensorsCheckpoint::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : it->second.second;
}

const SafetensorsTensor& SafetensorsCheckpoint::at(const std::string& name) const {
  const SafetensorsTensor* t = find(name);
  if (!t) fail_expected(dir_.string(), str("tensor '", name, "' is missing"), "it in the checkpoint");
  return *t;
}

const SafetensorsFile& SafetensorsCheckpoint::file_of(const std::string& name) const {
  at(name);
  return *tensors_.at(name).first;
}

void SafetensorsCheckpoint::read_f32(const std::string& name, std::span<float> out) const {
  file_of(name).read_f32(at(name), out);
}

// ---------------------------------------------------------------------------------- writing

namespace {

std::uint64_t entry_numel(const SafetensorsEntry& e) {
  std::uint64_t n = 1;
  for (std::int64_t d : e.shape) {
    if (d < 0) fail_expected(str("tensor '", e.name, "'"), str("shape ", shape_string(e.shape)), "non-negative dims");
    n *= static_cast<std::uint64_t>(d);
  }
  return n;
}

std::string header_bytes(std::span<const SafetensorsEntry> entries, SafetensorsDType dtype) {
  nlohmann::ordered_json header;
  header["__metadata__"] = {{"format", "pt"}};
  std::uint64_t offset = 0;
  std::set<std::string> seen;
  for (const SafetensorsEntry& e : entries) {
    if (e.name == "__metadata__" || !seen.insert(e.name).second)
      fail_expected(str("tensor '", e.name, "'"), "name repeated or reserved", "unique tensor names");
    const std::uint64_t bytes = entry_numel(e) * safetensors_dtype_size(dtype);
    if (bytes && !e.data) fail(str("tensor '", e.name, "': no data to write"));
    header[e.name] = {
        {"dtype", safetensors_dtype_name(dtype)}, {"shape", e.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  // Pad so that 8 + N is a multiple of 8 and every tensor in the data region starts aligned.
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out;
  put_u64_le(out, text.size());
  return out + text;
}

}  // namespace

void write_safetensors_file(const fs::path& path, std::span<const SafetensorsEntry> entries, SafetensorsDType dtype) {
  if (dtype == SafetensorsDType::F16) fail_expected(path.string(), "writing F16 is not supported", "BF16 or F32");
  const std::string header = header_bytes(entries, dtype);
  write_file_atomically(path, [&](const fs::path& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail_expected(tmp.string(), "cannot create file", "a writable directory");
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    std::vector<std::uint16_t> buffer;
    constexpr std::size_t kChunk = std::size_t{1} << 20;
    for (const SafetensorsEntry& e : entries) {
      const std::size_t n = static_cast<std::size_t>(entry_numel(e));
      if (dtype == SafetensorsDType::F32) {
        if (n) out.write(reinterpret_cast<const char*>(e.data), static_cast<std::streamsize>(n * 4));
        continue;
      }
      for (std::size_t start = 0; start < n; start += kChunk) {
        const std::size_t count = std::min(kChunk, n - start);
        buffer.resize(count);
        for (std::size_t i = 0; i < count; ++i) buffer[i] = float_to_bf16(e.data[start + i]);
        out.write(reinterpret_cast<const char*>(buffer.data()), static_cast<std::streamsize>(count * 2));
      }
    }
    out.close();
    if (!out) fail(str(tmp.string(), ": write failed (disk full?)"));
  });
}

std::vector<std::string> write_safetensors_model(const fs::path& dir, std::span<const SafetensorsEntry> entries,
                                                 SafetensorsDType dtype, std::uint64_t max_shard_bytes) {
  if (max_shard_bytes == 0) fail_expected("max_shard_bytes", "0", "a positive byte count");
  // Greedy packing in table order, as transformers does: a tensor larger than the limit gets
  // a shard of its own.
  std::vector<std::pair<std::size_t, std::size_t>> shards;  // [first, last) entry ranges
  std::uint64_t total = 0, current = 0;
  std::size_t first = 0;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const std::uint64_t bytes = entry_numel(entries[i]) * safetensors_dtype_size(dtype);
    if (i > first && current + bytes > max_shard_bytes) {
      shards.emplace_back(first, i);
      first = i;
      current = 0;
    }
    current += bytes;
    total += bytes;
  }
  shards.emplace_back(first, entries.size());

  fs::create_directories(dir);
  if (shards.size() == 1) {
    write_safetensors_file(dir / "model.safetensors", entries, dtype);
    return {"model.safetensors"};
  }
  std::vector<std::string> names;
  json weight_map = json::object();
  const std::size_t count = shards.size();
  for (std::size_t s = 0; s < count; ++s) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", s + 1, count);
    auto [begin, end] = shards[s];
    write_safetensors_file(dir / name, entries.subspan(begin, end - begin), dtype);
    for (std::size_t i = begin; i < end; ++i) weight_map[entries[i].name] = name;
    names.push_back(name);
  }
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  write_bytes_atomically(dir / "model.safetensors.index.json", index.dump(2) + "\n");
  names.push_back("model.safetensors.index.json");
  return names;
}

}  // namespace minitron
