// The tensor-core wrapper (kernels/mma.cuh) on the emulator: fragment layouts as the PTX ISA
// tables give them, and a small mma/ldmatrix GEMM against a CPU GEMM.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/launch.cuh"
#include "kernels/mma.cuh"

namespace minitron {
namespace {

// ldmatrix of four 8x8 matrices stored one after another (row-major, 8 b16 per row).
template <bool Transposed>
__global__ void ldmatrix_kernel(const std::uint16_t* matrices, std::uint32_t* registers) {
  __shared__ __align__(16) std::uint16_t tile[4 * 64];
  for (unsigned i = threadIdx.x; i < 4 * 64; i += 32) tile[i] = matrices[i];
  __syncwarp();
  const unsigned lane = threadIdx.x;
  std::uint32_t r[4];
  const std::uint16_t* row = &tile[(lane / 8) * 64 + (lane % 8) * 8];
  if (Transposed)
    mma::ldmatrix_x4_trans(r, row);
  else
    mma::ldmatrix_x4(r, row);
  for (int j = 0; j < 4; ++j) registers[lane * 4 + j] = r[j];
}

TEST(TensorCoreWrapper, LdmatrixFollowsThePtxLayout) {
  std::vector<std::uint16_t> matrices(4 * 64);
  for (int i = 0; i < 4 * 64; ++i) matrices[i] = static_cast<std::uint16_t>(i * 3 + 1);
  for (bool transposed : {false, true}) {
    std::vector<std::uint32_t> registers(32 * 4);
    if (transposed)
      cuda::launch(ldmatrix_kernel<true>, dim3(1), dim3(32), 0, nullptr, matrices.data(), registers.data());
    else
      cuda::launch(ldmatrix_kernel<false>, dim3(1), dim3(32), 0, nullptr, matrices.data(), registers.data());
    for (int lane = 0; lane < 32; ++lane)
      for (int j = 0; j < 4; ++j) {
        // PTX ISA, ldmatrix: lane i holds row i/4, columns 2(i%4) and 2(i%4)+1 (transposed: swapped).
        const int row = lane / 4, column = 2 * (lane % 4);
        const auto at = [&](int r, int c) { return static_cast<std::uint32_t>(matrices[j * 64 + r * 8 + c]); };
        const std::uint32_t expected =
            transposed ? at(column, row) | at(column + 1, row) << 16 : at(row, column) | at(row, column + 1) << 16;
        EXPECT_EQ(registers[lane * 4 + j], expected)
            << "lane " << lane << " matrix " << j << " transposed " << transposed;
      }
  }
}

// One warp computes a 16x8 tile with fragments built straight from the PTX layout tables.
__global__ void mma_direct_kernel(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c) {
  const unsigned lane = threadIdx.x, g = lane / 4, t = lane % 4;
  mma::FragmentA fa;
  mma::FragmentB fb;
  for (unsigned r = 0; r < 4; ++r) {
    const unsigned row = g + 8 * (r % 2), k = 2 * t + 8 * (r / 2);
    fa.reg[r] = mma::pack_bf16x2(a[row * 16 + k], a[row * 16 + k + 1]);
  }
  for (unsigned r = 0; r < 2; ++r) {
    const unsigned k = 2 * t + 8 * r;
    fb.reg[r] = mma::pack_bf16x2(b[k * 8 + g], b[(k + 1) * 8 + g]);
  }
  mma::Accumulator acc{{1.0f, 2.0f, 3.0f, 4.0f}};
  mma::mma_m16n8k16_bf16(acc, fa, fb, acc);
  for (unsigned r = 0; r < 4; ++r) c[(g + 8 * (r / 2)) * 8 + 2 * t + r % 2] = acc.value[r];
}

TEST(TensorCoreWrapper, MmaFollowsThePtxLayout) {
  std::vector<__nv_bfloat16> a(16 * 16), b(16 * 8);
  for (int i = 0; i < 256; ++i) a[i] = __float2bfloat16(static_cast<float>((i * 7) % 11) - 5.0f);
  for (int i = 0; i < 128; ++i) b[i] = __float2bfloat16(static_cast<float>((i * 5) % 9) - 4.0f);
  std::vector<float> c(16 * 8);
  cuda::launch(mma_direct_kernel, dim3(1), dim3(32), 0, nullptr, a.data(), b.data(), c.data());
  for (int row = 0; row < 16; ++row)
    for (int column = 0; column < 8; ++column) {
      // The accumulator started at r + 1 in the register r that holds this position.
      float expected = static_cast<float>((row / 8) * 2 + column % 2 + 1);
      for (int k = 0; k < 16; ++k) expected += __bfloat162float(a[row * 16 + k]) * __bfloat162float(b[k * 8 + column]);
      EXPECT_EQ(c[row * 8 + column], expected) << row << "," << column;  // small integers: exact
    }
}

// C (M x N, fp32) = A (M x K, row-major bf16) * B (K x N, row-major bf16). Each warp owns a
// 16x8 tile of C; A and B tiles are staged in shared memory and loaded with ldmatrix.
constexpr int kWarpsPerBlock = 2;

__global__ void mma_gemm_kernel(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c, int m, int n, int k) {
  __shared__ __align__(16) __nv_bfloat16 a_tile[kWarpsPerBlock][16 * 16];
  __shared__ __align__(16) __nv_bfloat16 b_tile[kWarpsPerBlock][16 * 8];
  const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int tile = static_cast<int>(blockIdx.x * kWarpsPerBlock + warp);
  const int tiles_n = n / 8;
  if (tile >= (m / 16) * tiles_n) return;  // whole warps leave together
  const int row0 = tile / tiles_n * 16, column0 = tile % tiles_n * 8;
  mma::Accumulator acc{{0.0f, 0.0f, 0.0f, 0.0f}};
  for (int k0 = 0; k0 < k; k0 += 16) {
    for (unsigned i = lane; i < 256; i += 32) a_tile[warp][i] = a[(row0 + i / 16) * k + k0 + i % 16];
    for (unsigned i = lane; i < 128; i += 32) b_tile[warp][i] = b[(k0 + i / 8) * n + column0 + i % 8];
    __syncwarp();
    // A: matrix j covers rows 8*(j%2).., k 8*(j/2)..; lane gives row lane%8 of matrix lane/8.
    mma::FragmentA fa;
    const unsigned j = lane / 8;
    mma::ldmatrix_x4(fa.reg, &a_tile[warp][(8 * (j % 2) + lane % 8) * 16 + 8 * (j / 2)]);
    // B is k-major in shared memory; the transposed load gives the "col" fragment.
    mma::FragmentB fb;
    mma::ldmatrix_x2_trans(fb.reg, &b_tile[warp][(lane % 16) * 8]);
    mma::mma_m16n8k16_bf16(acc, fa, fb, acc);
    __syncwarp();
  }
  const unsigned g = lane / 4, t = lane % 4;
  for (unsigned r = 0; r < 4; ++r) c[(row0 + g + 8 * (r / 2)) * n + column0 + 2 * t + r % 2] = acc.value[r];
}

TEST(TensorCoreWrapper, MmaGemmMatchesCpuGemm) {
  const int m = 48, n = 24, k = 64;
  std::vector<__nv_bfloat16> a(m * k), b(k * n);
  for (int i = 0; i < m * k; ++i) a[i] = __float2bfloat16(std::sin(0.1f * static_cast<float>(i)));
  for (int i = 0; i < k * n; ++i) b[i] = __float2bfloat16(std::cos(0.07f * static_cast<float>(i)));
  std::vector<float> c(m * n, -1.0f);
  const int tiles = (m / 16) * (n / 8);
  cuda::launch(mma_gemm_kernel, dim3((tiles + kWarpsPerBlock - 1) / kWarpsPerBlock), dim3(32 * kWarpsPerBlock), 0,
               nullptr, a.data(), b.data(), c.data(), m, n, k);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double expected = 0, magnitude = 0;
      for (int p = 0; p < k; ++p) {
        const double term = static_cast<double>(__bfloat162float(a[i * k + p])) * __bfloat162float(b[p * n + j]);
        expected += term;
        magnitude += std::fabs(term);
      }
      // fp32 accumulation of 64 exact products: error below 64 * 2^-24 * sum|terms|.
      EXPECT_NEAR(c[i * n + j], expected, 64 * 0x1p-24 * magnitude + 1e-30) << i << "," << j;
    }
}

}  // namespace
}  // namespace minitron
