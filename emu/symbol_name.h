// Names of functions in the running program, for the emulator's messages.
#pragma once

#include <string>

namespace minitron::emu::detail {

// The demangled name of the function starting at `address`, from the dynamic symbols or else
// the file's static symbol table (which also holds kernels in anonymous namespaces); empty when
// neither knows it (a stripped binary).
std::string function_name(const void* address);

}  // namespace minitron::emu::detail
