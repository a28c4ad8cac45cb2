// The emulator's fiber context switch (see context_switch.cpp).
#pragma once

#include <cstdint>

extern "C" {
// Saves the current context on the current stack, stores its stack pointer in *save_sp and
// resumes the context whose stack pointer is new_sp.
void minitron_emu_switch(void** save_sp, void* new_sp);
// First code a fresh fiber runs: calls r13(r12). The entry must never return.
void minitron_emu_fiber_trampoline();
}

namespace minitron::emu::detail {

// Writes an initial frame below stack_top and returns the stack pointer to switch to; the first
// switch then calls entry(argument) on that stack.
void* prepare_fiber_stack(void* stack_top, void (*entry)(void*), void* argument);

}  // namespace minitron::emu::detail
