// Tensor-core instructions behind one wrapper, so kernels that use them also run on the emulator.
//
//   mma_m16n8k16_bf16: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (D = A * B + C)
//   ldmatrix_x{1,2,4}[_trans]: ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16
//
// Under nvcc these are the PTX instructions. Under MINITRON_EMULATE they are warp operations with
// the PTX ISA's per-lane fragment layout, exchanged through the emulator's warp barrier (all 32
// lanes must take part, as on the GPU). Layout, with g = lane / 4 and t = lane % 4, each 32-bit
// register holding two bf16 (lower index in the low half):
//   A (16x16, row-major): reg r holds A[g + 8*(r%2)][2t + 8*(r/2) + {0,1}]
//   B (16x8, "col": k-major per column): reg r holds B[2t + 8*r + {0,1}][g]
//   C, D (16x8 fp32): value r is C[g + 8*(r/2)][2t + r%2]
//   ldmatrix: lanes 8j..8j+7 give the row addresses of matrix j (16 bytes each); lane i receives
//   in reg j the elements [i/4][2*(i%4) + {0,1}] of matrix j, or with .trans the elements
//   [2*(i%4) + {0,1}][i/4].
#pragma once

#include <cstdint>

#if defined(MINITRON_EMULATE)
#include <cstring>

#include "emu/emulator.h"
#include "emu/traffic.h"
#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#endif

namespace minitron::mma {

struct FragmentA {
  std::uint32_t reg[4];
};
struct FragmentB {
  std::uint32_t reg[2];
};
struct Accumulator {
  float value[4];
};

// Two bf16 in one register, `low` in bits 0-15 (the lower k or column index).
__device__ __forceinline__ std::uint32_t pack_bf16x2(__nv_bfloat16 low, __nv_bfloat16 high) {
  return static_cast<std::uint32_t>(__bfloat16_as_ushort(low)) |
         (static_cast<std::uint32_t>(__bfloat16_as_ushort(high)) << 16);
}

#if defined(MINITRON_EMULATE)

namespace detail {

inline float bf16_half(std::uint32_t reg, unsigned half) {
  const std::uint32_t bits = half == 0 ? (reg << 16) : (reg & 0xffff0000u);
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline std::uint16_t b16_at(const unsigned char* row, unsigned element) {
  std::uint16_t value;
  std::memcpy(&value, row + 2 * element, sizeof value);
  return value;
}

// The x1/x2/x4 ldmatrix: each lane publishes the 16-byte row it points at (read when it arrives,
// so a lane that runs ahead after the exchange cannot change what the others receive).
template <unsigned Matrices, bool Transposed>
void ldmatrix(std::uint32_t* registers, const void* row_address,
              const std::source_location& where) {
  const unsigned lane = ::minitron::emu::detail::current("ldmatrix").lane;
  // The roofline's fragment loads (emu/traffic.h): one instruction per warp, counted once.
  if (lane == 0) ::minitron::emu::detail::count_ldmatrix();
  unsigned char row[16] = {};
  if (lane < 8 * Matrices)
    std::memcpy(row, row_address, sizeof row);  // other lanes' addresses are ignored
  unsigned char rows[32][16];
  ::minitron::emu::detail::warp_exchange(0xffffffffu, ::minitron::emu::detail::WarpOp::mma, row,
                                         sizeof row, ::minitron::emu::detail::all_lanes, rows,
                                         where);
  for (unsigned j = 0; j < Matrices; ++j) {
    std::uint16_t low, high;
    if (Transposed) {
      low = b16_at(rows[8 * j + 2 * (lane % 4)], lane / 4);
      high = b16_at(rows[8 * j + 2 * (lane % 4) + 1], lane / 4);
    } else {
      low = b16_at(rows[8 * j + lane / 4], 2 * (lane % 4));
      high = b16_at(rows[8 * j + lane / 4], 2 * (lane % 4) + 1);
    }
    registers[j] = static_cast<std::uint32_t>(low) | (static_cast<std::uint32_t>(high) << 16);
  }
}

}  // namespace detail

// d = a * b + c for the warp's 16x8 tile (d may alias c).
inline void mma_m16n8k16_bf16(Accumulator& d, const FragmentA& a, const FragmentB& b,
                              const Accumulator& c,
                              const std::source_location& where = std::source_location::current()) {
  struct Operands {
    FragmentA a;
    FragmentB b;
  };
  const Operands mine{a, b};
  Operands all[32];
  ::minitron::emu::detail::warp_exchange(0xffffffffu, ::minitron::emu::detail::WarpOp::mma, &mine,
                                         sizeof mine, ::minitron::emu::detail::all_lanes, all,
                                         where);
  auto a_at = [&](unsigned row, unsigned k) {
    return detail::bf16_half(all[(row % 8) * 4 + (k % 8) / 2].a.reg[(row / 8) + 2 * (k / 8)],
                             k % 2);
  };
  auto b_at = [&](unsigned k, unsigned column) {
    return detail::bf16_half(all[column * 4 + (k % 8) / 2].b.reg[k / 8], k % 2);
  };
  const unsigned lane = ::minitron::emu::detail::current("mma").lane;
  // The roofline's tensor-core work (emu/traffic.h): one m16n8k16 per warp, counted once.
  if (lane == 0) ::minitron::emu::detail::count_tensor_flops(2 * 16 * 8 * 16);
  const unsigned g = lane / 4, t = lane % 4;
  Accumulator result;
  for (unsigned r = 0; r < 4; ++r) {
    const unsigned row = g + 8 * (r / 2), column = 2 * t + r % 2;
    float sum = 0.0f;  // bf16 products are exact in fp32; the sum is rounded per step in k order
    for (unsigned k = 0; k < 16; ++k) sum += a_at(row, k) * b_at(k, column);
    result.value[r] = sum + c.value[r];
  }
  d = result;
}

inline void ldmatrix_x4(std::uint32_t (&registers)[4], const void* row_address,
                        const std::source_location& where = std::source_location::current()) {
  detail::ldmatrix<4, false>(registers, row_address, where);
}
inline void ldmatrix_x4_trans(std::uint32_t (&registers)[4], const void* row_address,
                              const std::source_location& where = std::source_location::current()) {
  detail::ldmatrix<4, true>(registers, row_address, where);
}
inline void ldmatrix_x2(std::uint32_t (&registers)[2], const void* row_address,
                        const std::source_location& where = std::source_location::current()) {
  detail::ldmatrix<2, false>(registers, row_address, where);
}
inline void ldmatrix_x2_trans(std::uint32_t (&registers)[2], const void* row_address,
                              const std::source_location& where = std::source_location::current()) {
  detail::ldmatrix<2, true>(registers, row_address, where);
}
inline void ldmatrix_x1(std::uint32_t (&registers)[1], const void* row_address,
                        const std::source_location& where = std::source_location::current()) {
  detail::ldmatrix<1, false>(registers, row_address, where);
}
inline void ldmatrix_x1_trans(std::uint32_t (&registers)[1], const void* row_address,
                              const std::source_location& where = std::source_location::current()) {
  detail::ldmatrix<1, true>(registers, row_address, where);
}

#else  // nvcc: the instructions themselves (sm_80 and later)

__device__ __forceinline__ void mma_m16n8k16_bf16(Accumulator& d, const FragmentA& a,
                                                  const FragmentB& b, const Accumulator& c) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d.value[0]), "=f"(d.value[1]), "=f"(d.value[2]), "=f"(d.value[3])
      : "r"(a.reg[0]), "r"(a.reg[1]), "r"(a.reg[2]), "r"(a.reg[3]), "r"(b.reg[0]), "r"(b.reg[1]),
        "f"(c.value[0]), "f"(c.value[1]), "f"(c.value[2]), "f"(c.value[3]));
}

__device__ __forceinline__ unsigned shared_address(const void* pointer) {
  return static_cast<unsigned>(__cvta_generic_to_shared(pointer));
}

__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], const void* row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row_address)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row_address)));
}
__device__ __forceinline__ void ldmatrix_x2(std::uint32_t (&r)[2], const void* row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(shared_address(row_address)));
}
__device__ __forceinline__ void ldmatrix_x2_trans(std::uint32_t (&r)[2], const void* row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(shared_address(row_address)));
}
__device__ __forceinline__ void ldmatrix_x1(std::uint32_t (&r)[1], const void* row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
               : "=r"(r[0])
               : "r"(shared_address(row_address)));
}
__device__ __forceinline__ void ldmatrix_x1_trans(std::uint32_t (&r)[1], const void* row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
               : "=r"(r[0])
               : "r"(shared_address(row_address)));
}

#endif

}  // namespace minitron::mma
