// The fiber context switch of the CUDA emulator: x86-64 System V only.
//
// A switch saves what the ABI says a callee must preserve (rbx, rbp, r12-r15, the MXCSR and the
// x87 control word) on the current stack, stores the stack pointer, loads the other fiber's stack
// pointer and pops the same set. That is ~20 instructions and no system call; ucontext's
// swapcontext also saves the signal mask with a system call and measured 4-12x slower.
//
// A fresh fiber's stack is prepared by context_switch.h's prepare_fiber_stack() so that the first
// switch to it "returns" into minitron_emu_fiber_trampoline with r12 = argument and r13 = entry.
#include "emu/context_switch.h"

#if !defined(__x86_64__)
#error "the CUDA emulator's context switch is written for x86-64"
#endif

// Top-level asm keeps this file plain C++ (no ASM language in CMake) and outside every sanitizer's
// instrumentation, which must not see the stack pointer jump.
asm(R"(
  .text
  .globl minitron_emu_switch
  .type minitron_emu_switch, @function
  .p2align 4
minitron_emu_switch:
  .cfi_startproc
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .cfi_endproc
  .size minitron_emu_switch, .-minitron_emu_switch

  .globl minitron_emu_fiber_trampoline
  .type minitron_emu_fiber_trampoline, @function
  .p2align 4
minitron_emu_fiber_trampoline:
  .cfi_startproc
  .cfi_undefined rip
  movq %r12, %rdi
  callq *%r13
  ud2
  .cfi_endproc
  .size minitron_emu_fiber_trampoline, .-minitron_emu_fiber_trampoline
)");

namespace minitron::emu::detail {

void* prepare_fiber_stack(void* stack_top, void (*entry)(void*), void* argument) {
  // Frame popped by the first switch, from low to high address: MXCSR + x87 control word,
  // r15, r14, r13, r12, rbx, rbp, return address. After the `ret` the stack pointer must be
  // 16-byte aligned so that the trampoline's `call` gives the entry the ABI's alignment.
  auto top = reinterpret_cast<std::uintptr_t>(stack_top) & ~std::uintptr_t{15};
  auto* frame = reinterpret_cast<std::uint64_t*>(top - 16 - 8 * 8);
  std::uint32_t control[2] = {0x1F80u, 0x037Fu};  // default MXCSR, default x87 control word
  __builtin_memcpy(&frame[0], control, sizeof control);
  frame[1] = 0;                                          // r15
  frame[2] = 0;                                          // r14
  frame[3] = reinterpret_cast<std::uint64_t>(entry);     // r13
  frame[4] = reinterpret_cast<std::uint64_t>(argument);  // r12
  frame[5] = 0;                                          // rbx
  frame[6] = 0;                                          // rbp
  frame[7] = reinterpret_cast<std::uint64_t>(&minitron_emu_fiber_trampoline);
  return frame;
}

}  // namespace minitron::emu::detail
