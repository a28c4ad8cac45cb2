#include "util/files.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <vector>

#include "util/error.h"

namespace minitron {

namespace fs = std::filesystem;

std::string read_text_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_expected(path.string(), "cannot open file", "a readable file");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail(str(path.string(), ": read failed"));
  return text;
}

MappedFile::MappedFile(const fs::path& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_expected(path.string(), std::strerror(errno), "a readable file");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail(str(path.string(), ": cannot stat: ", std::strerror(errno)));
  }
  size_ = static_cast<std::size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      fail(str(path.string(), ": cannot memory-map: ", std::strerror(errno)));
    }
    data_ = static_cast<const std::uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<std::uint8_t*>(data_), size_);
}

MappedFile::MappedFile(MappedFile&& other) noexcept { *this = std::move(other); }

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    if (data_) ::munmap(const_cast<std::uint8_t*>(data_), size_);
    path_ = std::move(other.path_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

// Absolute and lexically normal, without a trailing separator: "out/" and "out" name one directory.
static fs::path absolute_normal(const fs::path& path) {
  fs::path p = fs::absolute(path).lexically_normal();
  if (p.filename().empty() && p.has_parent_path() && p != p.root_path()) p = p.parent_path();
  return p;
}

fs::path process_sibling(const fs::path& path, std::string_view tag) {
  const fs::path target = absolute_normal(path);
  return target.parent_path() / str(".", target.filename().string(), ".", tag, "-", ::getpid());
}

static void fsync_path(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

void write_file_atomically(const fs::path& path, const std::function<void(const fs::path&)>& write) {
  if (!path.parent_path().empty()) fs::create_directories(path.parent_path());
  fs::path tmp = process_sibling(path, "tmp");
  try {
    write(tmp);
    fsync_path(tmp);
    fs::rename(tmp, path);
  } catch (...) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw;
  }
}

void write_bytes_atomically(const fs::path& path, std::string_view bytes) {
  write_file_atomically(path, [&](const fs::path& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail_expected(tmp.string(), "cannot create file", "a writable directory");
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    if (!out) fail(str(tmp.string(), ": write failed (disk full?)"));
  });
}

namespace {

// Canonical form with no trailing separator, so that "out/" and "out" compare equal.
fs::path resolved(const fs::path& path) { return absolute_normal(fs::weakly_canonical(fs::absolute(path))); }

// True when `inner` is `outer` or lies somewhere below it (both resolved).
bool is_within(const fs::path& inner, const fs::path& outer) {
  auto i = inner.begin();
  for (auto o = outer.begin(); o != outer.end(); ++o, ++i)
    if (i == inner.end() || *i != *o) return false;
  return true;
}

}  // namespace

void check_replaceable_directory(const fs::path& dir, const OwnedEntry& owned, std::span<const fs::path> inputs,
                                 const std::string& label) {
  const std::string what = label.empty() ? dir.string() : label;
  const std::string fix = "a new directory or one holding only a checkpoint (this tool's or Hugging Face's)";
  const fs::path target = resolved(dir);
  const fs::path cwd = resolved(fs::current_path());
  if (target == cwd)
    fail_expected(what, "is the current directory: replacing it would delete everything in it",
                  "a new or checkpoint-only directory below it, e.g. pruned/");
  if (is_within(cwd, target))
    fail_expected(what, str("contains the current directory ", cwd.string(), ": replacing it would delete it"), fix);
  for (const fs::path& input : inputs) {
    if (input.empty()) continue;
    const fs::path in = resolved(input);
    if (in == target)
      fail_expected(what, str("is the input model directory ", input.string()), "an output apart from the inputs");
    if (is_within(in, target))
      fail_expected(what, str("contains the input model directory ", input.string()),
                    "an output apart from the inputs");
    if (is_within(target, in))
      fail_expected(what, str("lies inside the input model directory ", input.string()),
                    "an output apart from the inputs");
  }
  std::error_code error;
  const fs::file_status status = fs::status(target, error);
  if (!fs::exists(status)) return;
  if (!fs::is_directory(status))
    fail_expected(what, "exists and is not a directory",
                  "a directory path; move the file away or choose another output");
  std::vector<std::string> foreign;
  for (const fs::directory_entry& entry : fs::directory_iterator(target))
    if (!owned(entry)) foreign.push_back(entry.path().filename().string() + (entry.is_directory() ? "/" : ""));
  if (foreign.empty()) return;
  std::sort(foreign.begin(), foreign.end());
  fail_expected(what,
                str("holds '", foreign.front(), "'",
                    foreign.size() > 1 ? str(" and ", foreign.size() - 1, " more entries") : std::string(),
                    " that no checkpoint writes; replacing the directory would delete them"),
                str(fix, "; move those files away or choose another output"));
}

void write_directory_atomically(const fs::path& dir, const std::function<void(const fs::path&)>& fill,
                                const OwnedEntry& owned) {
  const fs::path target = absolute_normal(dir);
  check_replaceable_directory(target, owned);
  fs::create_directories(target.parent_path());
  const fs::path tmp = process_sibling(target, "tmp");
  std::error_code ignored;
  fs::remove_all(tmp, ignored);
  fs::create_directories(tmp);
  try {
    fill(tmp);
    // Again: fill() may take hours, and the directory may have gained files meanwhile.
    check_replaceable_directory(target, owned);
  } catch (...) {
    fs::remove_all(tmp, ignored);
    throw;
  }
  if (fs::exists(target)) {
    const fs::path old = process_sibling(target, "old");
    fs::rename(target, old);
    fs::rename(tmp, target);
    fs::remove_all(old, ignored);
  } else {
    fs::rename(tmp, target);
  }
}

}  // namespace minitron
