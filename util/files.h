// File helpers shared by every reader and writer: whole-file reads, read-only memory maps,
// and atomic writes (write to a temporary name beside the target, fsync, rename), so that an
// interrupted run never leaves a half-written checkpoint or shard under the real name.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
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

// Builds a directory's contents under "<dir>.tmp-<pid>" and swaps it into place only when
// fill() returns, so an existing checkpoint directory is never half overwritten. An existing
// directory at `dir` is replaced as a whole (moved aside, then removed).
void write_directory_atomically(const std::filesystem::path& dir,
                                const std::function<void(const std::filesystem::path& tmp_dir)>& fill);

}  // namespace minitron
