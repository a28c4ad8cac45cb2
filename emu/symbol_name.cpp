// Looks up function names without libraries beyond libc: dladdr for exported symbols, then the
// ELF .symtab of the file that holds the address. Only error messages use this, so the file is
// mapped and scanned on each call.
#include "emu/symbol_name.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace minitron::emu::detail {
namespace {

std::string demangle(const char* symbol) {
  int status = 0;
  char* demangled = abi::__cxa_demangle(symbol, nullptr, nullptr, &status);
  std::string name = status == 0 && demangled != nullptr ? demangled : symbol;
  std::free(demangled);
  return name;
}

// Searches the static symbol table of `path`, loaded at `base`.
std::string static_symbol(const char* path, std::uintptr_t base, std::uintptr_t address) {
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  struct stat status {};
  if (fstat(fd, &status) != 0 || static_cast<std::size_t>(status.st_size) < sizeof(Elf64_Ehdr)) {
    close(fd);
    return {};
  }
  const auto size = static_cast<std::size_t>(status.st_size);
  void* mapped = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (mapped == MAP_FAILED) return {};
  const auto* bytes = static_cast<const unsigned char*>(mapped);
  std::string name;
  Elf64_Ehdr header;
  std::memcpy(&header, bytes, sizeof header);
  const bool valid = std::memcmp(header.e_ident, ELFMAG, SELFMAG) == 0 && header.e_ident[EI_CLASS] == ELFCLASS64 &&
                     header.e_shoff + 1ull * header.e_shnum * sizeof(Elf64_Shdr) <= size;
  // Position-independent executables and libraries hold addresses relative to their load base.
  const std::uintptr_t offset = valid && header.e_type == ET_DYN ? address - base : address;
  for (unsigned s = 0; valid && s < header.e_shnum && name.empty(); ++s) {
    Elf64_Shdr section;
    std::memcpy(&section, bytes + header.e_shoff + s * sizeof(Elf64_Shdr), sizeof section);
    if (section.sh_type != SHT_SYMTAB || section.sh_link >= header.e_shnum) continue;
    Elf64_Shdr strings;
    std::memcpy(&strings, bytes + header.e_shoff + section.sh_link * sizeof(Elf64_Shdr), sizeof strings);
    if (section.sh_offset + section.sh_size > size || strings.sh_offset + strings.sh_size > size) continue;
    const std::size_t count = section.sh_size / sizeof(Elf64_Sym);
    for (std::size_t i = 0; i < count; ++i) {
      Elf64_Sym symbol;
      std::memcpy(&symbol, bytes + section.sh_offset + i * sizeof(Elf64_Sym), sizeof symbol);
      if (ELF64_ST_TYPE(symbol.st_info) != STT_FUNC || symbol.st_value != offset) continue;
      if (symbol.st_name >= strings.sh_size) continue;
      const char* text = reinterpret_cast<const char*>(bytes + strings.sh_offset + symbol.st_name);
      if (std::memchr(text, '\0', strings.sh_size - symbol.st_name) == nullptr) continue;
      name = demangle(text);
      break;
    }
  }
  munmap(mapped, size);
  return name;
}

}  // namespace

std::string function_name(const void* address) {
  Dl_info info{};
  if (dladdr(address, &info) == 0) return {};
  if (info.dli_sname != nullptr && info.dli_saddr == address) return demangle(info.dli_sname);
  // The main program's dli_fname is argv[0]-like; /proc/self/exe is its file.
  const void* main_base = nullptr;
  dl_iterate_phdr(
      [](dl_phdr_info* object, std::size_t, void* data) {
        *static_cast<const void**>(data) = reinterpret_cast<const void*>(object->dlpi_addr);
        return 1;  // the first entry is the main program
      },
      &main_base);
  const char* path = info.dli_fbase == main_base || info.dli_fname == nullptr ? "/proc/self/exe" : info.dli_fname;
  return static_symbol(path, reinterpret_cast<std::uintptr_t>(info.dli_fbase),
                       reinterpret_cast<std::uintptr_t>(address));
}

}  // namespace minitron::emu::detail
