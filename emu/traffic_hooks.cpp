// The instrumentation hooks of a counted build (emu/traffic.h): GCC's kernel-address sanitizer
// instrumentation, in its call form (--param asan-instrumentation-with-call-threshold=0), calls
// __asan_{load,store}{1,2,4,8,16,N}_noabort before every load and store of the instrumented
// sources; no sanitizer runtime is linked (kernel-address brings none), these are the runtime.
// Linked only into counted programs, never beside a real ASan runtime (the sanitizer builds do
// not build counted targets). Compiled without the instrumentation itself.
#include <cstddef>
#include <cstdint>

#include "emu/traffic.h"

namespace counted = minitron::emu::detail;

extern "C" {

void minitron_emu_traffic_hooks_linked() {}

#define MINITRON_TRAFFIC_HOOKS(bytes)                                           \
  void __asan_load##bytes##_noabort(std::uintptr_t address) {                   \
    counted::count_global_read(reinterpret_cast<const void*>(address), bytes);  \
  }                                                                             \
  void __asan_store##bytes##_noabort(std::uintptr_t address) {                  \
    counted::count_global_write(reinterpret_cast<const void*>(address), bytes); \
  }
MINITRON_TRAFFIC_HOOKS(1)
MINITRON_TRAFFIC_HOOKS(2)
MINITRON_TRAFFIC_HOOKS(4)
MINITRON_TRAFFIC_HOOKS(8)
MINITRON_TRAFFIC_HOOKS(16)
#undef MINITRON_TRAFFIC_HOOKS

void __asan_loadN_noabort(std::uintptr_t address, std::size_t bytes) {
  counted::count_global_read(reinterpret_cast<const void*>(address), bytes);
}
void __asan_storeN_noabort(std::uintptr_t address, std::size_t bytes) {
  counted::count_global_write(reinterpret_cast<const void*>(address), bytes);
}
// Called before a noreturn call (a throw); the real runtime unpoisons the stack there.
void __asan_handle_no_return() {}
// Around the dynamic initialisation of a file's globals (ASan's init-order checking): nothing to do.
void __asan_before_dynamic_init(const char*) {}
void __asan_after_dynamic_init() {}

}  // extern "C"
