// File helpers shared by every reader and writer: whole-file reads, read-only memory maps,
// and atomic writes (write to a temporary name beside the target, fsync, rename), so that an
// interrupted run never leaves a half-written checkpoint or shard under the real name.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <string_view>

namespace minitron {

std::string read_text_file(const std::filesystem::path& path);

// A read-only memory map of a whole file. Movable, not copyable; unmaps on destruction.
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

// Calls write(tmp_path) and then renames tmp_path over path. If write throws, the temporary
// file is removed and path is untouched.
void write_file_atomically(const std::filesystem::path& path,
                           const std::function<void(const std::filesystem::path& tmp_path)>& write);

// Convenience: atomically replace path with the given bytes.
void write_bytes_atomically(const std::filesystem::path& path, std::string_view bytes);

// "<parent>/.<name>.<tag>-<pid>" for path (made absolute, without a trailing separator): a
// hidden name beside path that only this process uses, for temporaries and scratch space.
std::filesystem::path process_sibling(const std::filesystem::path& path, std::string_view tag);

// Whether an entry of an existing output directory is one the writer owns (a checkpoint's
// config.json, safetensors, ...) and may therefore be replaced.
using OwnedEntry = std::function<bool(const std::filesystem::directory_entry& entry)>;

// The one rule for replacing a directory as a whole: it must not lose files the tool did not
// write. Throws an Error naming `label` (e.g. "--output out") and what is in the way when dir
// (resolved with weakly_canonical) is the current directory or one of its ancestors; is, contains
// or lies inside one of `inputs` (directories the command reads); exists and is not a directory;
// or holds an entry that `owned` rejects. A missing or empty directory always passes.
void check_replaceable_directory(const std::filesystem::path& dir, const OwnedEntry& owned,
                                 std::span<const std::filesystem::path> inputs = {}, const std::string& label = "");

// Builds a directory's contents under ".<name>.tmp-<pid>" beside it and swaps it into place only
// when fill() returns, so an existing checkpoint directory is never half overwritten. An existing
// directory at `dir` is replaced as a whole (moved aside, then removed), and only when
// check_replaceable_directory(dir, owned) allows it, checked before fill() and again before the swap.
void write_directory_atomically(const std::filesystem::path& dir,
                                const std::function<void(const std::filesystem::path& tmp_dir)>& fill,
                                const OwnedEntry& owned);

}  // namespace minitron
