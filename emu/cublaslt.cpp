// The cuBLASLt subset the engine's GEMM wrapper uses, computed on the CPU for emulated builds.
//
// Same header (cublasLt.h) and column-major semantics as the library:
//   D = alpha * op(A) * op(B) + beta * C   (+ bias per row, ReLU, when the epilogue asks)
// with op(A) m x k, op(B) k x n, C and D m x n, each matrix described by its layout (type, rows,
// columns, leading dimension, order, batch count and stride as stored, i.e. before the op).
// Inputs may be bf16, fp16 or fp32; outputs fp32, bf16 or fp16; accumulation is fp32 (OpenBLAS
// sgemm on fp32 copies of the operands, which are exact conversions of bf16/fp16), and the output
// is rounded once, as cuBLAS does with CUBLAS_COMPUTE_32F. Unsupported settings return
// CUBLAS_STATUS_NOT_SUPPORTED rather than computing something else.
#include <cblas.h>
#include <cublasLt.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <vector>

#include "emu/emulator.h"
#include "emu/traffic.h"

struct cublasLtContext {
  int unused;
};

namespace {

struct MatmulDescription {
  cublasComputeType_t compute_type;
  cudaDataType_t scale_type;
  std::int32_t pointer_mode = CUBLASLT_POINTER_MODE_HOST;
  std::int32_t transa = CUBLAS_OP_N;
  std::int32_t transb = CUBLAS_OP_N;
  std::uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  std::int32_t bias_type = -1;  // -1: the type of D
};

struct LayoutDescription {
  cudaDataType_t type;
  std::uint64_t rows;
  std::uint64_t columns;
  std::int64_t ld;
  std::int32_t order = CUBLASLT_ORDER_COL;
  std::int32_t batch_count = 1;
  std::int64_t batch_stride = 0;
};

// The minimum alignments (bytes) the caller stated for A, B, C and D; 0 = not stated. The
// heuristic copies them into the algo it returns, and cublasLtMatmul refuses operands less aligned
// than the algo was chosen for: the library picks kernels that rely on the stated alignment, so
// on a GPU such a call may fault or read wrong data.
struct AlignmentPreference {
  std::uint32_t bytes[4] = {0, 0, 0, 0};
};

static_assert(sizeof(MatmulDescription) <= sizeof(cublasLtMatmulDescOpaque_t));
static_assert(sizeof(AlignmentPreference) <= sizeof(cublasLtMatmulPreferenceOpaque_t));
static_assert(sizeof(AlignmentPreference) <= sizeof(cublasLtMatmulAlgo_t));
static_assert(sizeof(LayoutDescription) <= sizeof(cublasLtMatrixLayoutOpaque_t));

MatmulDescription& description(cublasLtMatmulDesc_t handle) {
  return *std::launder(reinterpret_cast<MatmulDescription*>(handle->data));
}
LayoutDescription& description(cublasLtMatrixLayout_t handle) {
  return *std::launder(reinterpret_cast<LayoutDescription*>(handle->data));
}

std::size_t element_size(cudaDataType_t type) {
  switch (type) {
    case CUDA_R_32F: return 4;
    case CUDA_R_16BF:
    case CUDA_R_16F: return 2;
    default: return 0;
  }
}

float load(const void* base, cudaDataType_t type, std::int64_t index) {
  switch (type) {
    case CUDA_R_32F: return static_cast<const float*>(base)[index];
    case CUDA_R_16BF: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[index]);
    case CUDA_R_16F: return __half2float(static_cast<const __half*>(base)[index]);
    default: return 0.0f;
  }
}

void store(void* base, cudaDataType_t type, std::int64_t index, float value) {
  switch (type) {
    case CUDA_R_32F: static_cast<float*>(base)[index] = value; break;
    case CUDA_R_16BF: static_cast<__nv_bfloat16*>(base)[index] = __float2bfloat16_rn(value); break;
    case CUDA_R_16F: static_cast<__half*>(base)[index] = __float2half_rn(value); break;
    default: break;
  }
}

// Offset of element (row, column) of a stored matrix.
std::int64_t offset(const LayoutDescription& layout, std::uint64_t row, std::uint64_t column) {
  return layout.order == CUBLASLT_ORDER_ROW
             ? static_cast<std::int64_t>(row) * layout.ld + static_cast<std::int64_t>(column)
             : static_cast<std::int64_t>(column) * layout.ld + static_cast<std::int64_t>(row);
}

bool valid_layout(const LayoutDescription& layout) {
  if (element_size(layout.type) == 0) return false;
  if (layout.order != CUBLASLT_ORDER_COL && layout.order != CUBLASLT_ORDER_ROW) return false;
  const std::uint64_t minimum_ld = layout.order == CUBLASLT_ORDER_COL ? layout.rows : layout.columns;
  return layout.ld > 0 && static_cast<std::uint64_t>(layout.ld) >= minimum_ld && layout.batch_count >= 1;
}

template <typename T>
cublasStatus_t copy_attribute(T& field, const void* buffer, std::size_t bytes) {
  if (buffer == nullptr || bytes != sizeof(T)) return CUBLAS_STATUS_INVALID_VALUE;
  std::memcpy(&field, buffer, sizeof(T));
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

extern "C" {

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasLtContext{0};
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasLtGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_INTERNAL_ERROR";
  }
}

const char* cublasLtGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid value was used as an argument";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported (by the emulator)";
    case CUBLAS_STATUS_ALLOC_FAILED: return "resource allocation failed";
    default: return "an internal operation failed";
  }
}

size_t cublasLtGetVersion(void) { return CUBLAS_VERSION; }

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* handle, cublasComputeType_t compute_type,
                                        cudaDataType_t scale_type) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  auto* opaque = new cublasLtMatmulDescOpaque_t{};
  auto* desc = new (opaque->data) MatmulDescription{};
  desc->compute_type = compute_type;
  desc->scale_type = scale_type;
  *handle = opaque;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t handle, cublasLtMatmulDescAttributes_t attribute,
                                              const void* buffer, size_t bytes) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  MatmulDescription& desc = description(handle);
  switch (attribute) {
    case CUBLASLT_MATMUL_DESC_TRANSA: return copy_attribute(desc.transa, buffer, bytes);
    case CUBLASLT_MATMUL_DESC_TRANSB: return copy_attribute(desc.transb, buffer, bytes);
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return copy_attribute(desc.epilogue, buffer, bytes);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return copy_attribute(desc.bias, buffer, bytes);
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: return copy_attribute(desc.bias_type, buffer, bytes);
    case CUBLASLT_MATMUL_DESC_POINTER_MODE: return copy_attribute(desc.pointer_mode, buffer, bytes);
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: return copy_attribute(desc.compute_type, buffer, bytes);
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE: return copy_attribute(desc.scale_type, buffer, bytes);
    case CUBLASLT_MATMUL_DESC_FAST_ACCUM:
    case CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET: return CUBLAS_STATUS_SUCCESS;  // performance hints
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
  }
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* handle, cudaDataType type, uint64_t rows,
                                          uint64_t columns, int64_t ld) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  auto* opaque = new cublasLtMatrixLayoutOpaque_t{};
  auto* layout = new (opaque->data) LayoutDescription{};
  layout->type = type;
  layout->rows = rows;
  layout->columns = columns;
  layout->ld = ld;
  *handle = opaque;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t handle,
                                                cublasLtMatrixLayoutAttribute_t attribute, const void* buffer,
                                                size_t bytes) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  LayoutDescription& layout = description(handle);
  switch (attribute) {
    case CUBLASLT_MATRIX_LAYOUT_TYPE: return copy_attribute(layout.type, buffer, bytes);
    case CUBLASLT_MATRIX_LAYOUT_ORDER: return copy_attribute(layout.order, buffer, bytes);
    case CUBLASLT_MATRIX_LAYOUT_ROWS: return copy_attribute(layout.rows, buffer, bytes);
    case CUBLASLT_MATRIX_LAYOUT_COLS: return copy_attribute(layout.columns, buffer, bytes);
    case CUBLASLT_MATRIX_LAYOUT_LD: return copy_attribute(layout.ld, buffer, bytes);
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: return copy_attribute(layout.batch_count, buffer, bytes);
    case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: return copy_attribute(layout.batch_stride, buffer, bytes);
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
  }
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* handle) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasLtMatmulPreferenceOpaque_t{};
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t handle,
                                                    cublasLtMatmulPreferenceAttributes_t attribute, const void* buffer,
                                                    size_t bytes) {
  // Workspace limits do not change a CPU GEMM; stated alignments are checked at the call.
  if (handle == nullptr || buffer == nullptr || bytes == 0) return CUBLAS_STATUS_INVALID_VALUE;
  int operand = -1;
  switch (attribute) {
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: operand = 0; break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES: operand = 1; break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: operand = 2; break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: operand = 3; break;
    default: return CUBLAS_STATUS_SUCCESS;
  }
  if (bytes != sizeof(std::uint32_t)) return CUBLAS_STATUS_INVALID_VALUE;
  std::memcpy(reinterpret_cast<unsigned char*>(handle->data) + operand * sizeof(std::uint32_t), buffer,
              sizeof(std::uint32_t));
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t operation,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t preference, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int* returned) {
  if (handle == nullptr || operation == nullptr || a == nullptr || b == nullptr || c == nullptr || d == nullptr ||
      preference == nullptr || requested <= 0 || results == nullptr || returned == nullptr)
    return CUBLAS_STATUS_INVALID_VALUE;
  results[0] = cublasLtMatmulHeuristicResult_t{};
  std::memcpy(static_cast<void*>(results[0].algo.data), preference->data, sizeof(AlignmentPreference));
  results[0].workspaceSize = 0;
  results[0].state = CUBLAS_STATUS_SUCCESS;
  results[0].wavesCount = 1.0f;
  *returned = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t operation, const void* alpha_pointer,
                              const void* a, cublasLtMatrixLayout_t a_handle, const void* b,
                              cublasLtMatrixLayout_t b_handle, const void* beta_pointer, const void* c,
                              cublasLtMatrixLayout_t c_handle, void* d, cublasLtMatrixLayout_t d_handle,
                              const cublasLtMatmulAlgo_t* algo, void*, size_t, cudaStream_t) {
  if (handle == nullptr || operation == nullptr || a_handle == nullptr || b_handle == nullptr || c_handle == nullptr ||
      d_handle == nullptr || alpha_pointer == nullptr || beta_pointer == nullptr)
    return CUBLAS_STATUS_INVALID_VALUE;
  if (algo != nullptr) {
    AlignmentPreference stated;
    std::memcpy(&stated, algo->data, sizeof(stated));
    const void* operands[4] = {a, b, c, d};
    for (int i = 0; i < 4; ++i) {
      if (stated.bytes[i] > 1 && reinterpret_cast<std::uintptr_t>(operands[i]) % stated.bytes[i] != 0) {
        std::fprintf(stderr,
                     "minitron emulator: cublasLtMatmul: %c at %p is not %u-byte aligned, as the algo's "
                     "heuristic was told (a GPU kernel chosen for that alignment may fault)\n",
                     "ABCD"[i], operands[i], stated.bytes[i]);
        return CUBLAS_STATUS_NOT_SUPPORTED;
      }
    }
  }
  const MatmulDescription& desc = description(operation);
  const LayoutDescription& la = description(a_handle);
  const LayoutDescription& lb = description(b_handle);
  const LayoutDescription& lc = description(c_handle);
  const LayoutDescription& ld = description(d_handle);
  if (desc.scale_type != CUDA_R_32F || desc.pointer_mode != CUBLASLT_POINTER_MODE_HOST)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  const std::uint32_t epilogue = desc.epilogue;
  const bool bias = epilogue == CUBLASLT_EPILOGUE_BIAS || epilogue == CUBLASLT_EPILOGUE_RELU_BIAS;
  const bool relu = epilogue == CUBLASLT_EPILOGUE_RELU || epilogue == CUBLASLT_EPILOGUE_RELU_BIAS;
  if (!bias && !relu && epilogue != CUBLASLT_EPILOGUE_DEFAULT) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (bias && desc.bias == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  if (!valid_layout(la) || !valid_layout(lb) || !valid_layout(lc) || !valid_layout(ld))
    return CUBLAS_STATUS_INVALID_VALUE;
  const bool ta = desc.transa != CUBLAS_OP_N, tb = desc.transb != CUBLAS_OP_N;
  const std::uint64_t m = ta ? la.columns : la.rows;
  const std::uint64_t k = ta ? la.rows : la.columns;
  const std::uint64_t n = tb ? lb.rows : lb.columns;
  if ((tb ? lb.columns : lb.rows) != k || lc.rows != m || lc.columns != n || ld.rows != m || ld.columns != n)
    return CUBLAS_STATUS_INVALID_VALUE;
  if (lc.type != ld.type) return CUBLAS_STATUS_NOT_SUPPORTED;
  const int batches = ld.batch_count;
  if (la.batch_count != batches || lb.batch_count != batches || lc.batch_count != batches)
    return CUBLAS_STATUS_INVALID_VALUE;
  const float alpha = *static_cast<const float*>(alpha_pointer);
  const float beta = *static_cast<const float*>(beta_pointer);
  const cudaDataType_t bias_type = desc.bias_type < 0 ? ld.type : static_cast<cudaDataType_t>(desc.bias_type);

  // op(A), op(B) as dense column-major fp32; product in fp32.
  std::vector<float> op_a(m * k), op_b(k * n), product(m * n);
  for (int batch = 0; batch < batches; ++batch) {
    const auto* a_bytes = static_cast<const unsigned char*>(a) + batch * la.batch_stride * element_size(la.type);
    const auto* b_bytes = static_cast<const unsigned char*>(b) + batch * lb.batch_stride * element_size(lb.type);
    const auto* c_bytes = static_cast<const unsigned char*>(c) + batch * lc.batch_stride * element_size(lc.type);
    auto* d_bytes = static_cast<unsigned char*>(d) + batch * ld.batch_stride * element_size(ld.type);
    for (std::uint64_t j = 0; j < k; ++j)
      for (std::uint64_t i = 0; i < m; ++i)
        op_a[j * m + i] = load(a_bytes, la.type, ta ? offset(la, j, i) : offset(la, i, j));
    for (std::uint64_t j = 0; j < n; ++j)
      for (std::uint64_t i = 0; i < k; ++i)
        op_b[j * k + i] = load(b_bytes, lb.type, tb ? offset(lb, j, i) : offset(lb, i, j));
    if (m != 0 && n != 0) {
      if (k == 0) {
        std::fill(product.begin(), product.end(), 0.0f);
      } else {
        cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
                    static_cast<int>(k), 1.0f, op_a.data(), static_cast<int>(m), op_b.data(), static_cast<int>(k), 0.0f,
                    product.data(), static_cast<int>(m));
      }
    }
    for (std::uint64_t j = 0; j < n; ++j)
      for (std::uint64_t i = 0; i < m; ++i) {
        float value = alpha * product[j * m + i];
        // beta == 0 ignores C entirely, as cuBLAS does (C may hold NaN or be unset).
        if (beta != 0.0f) value += beta * load(c_bytes, lc.type, offset(lc, i, j));
        if (bias) value += load(desc.bias, bias_type, static_cast<std::int64_t>(i));
        if (relu && value < 0.0f) value = 0.0f;
        store(d_bytes, ld.type, offset(ld, i, j), value);
      }
  }
  // For a roofline (emu/traffic.h): what cuBLAS needs at the least, each operand once.
  const std::uint64_t b_count = static_cast<std::uint64_t>(batches);
  const std::uint64_t bytes_read = b_count * (m * k * element_size(la.type) + k * n * element_size(lb.type) +
                                              (beta != 0.0f ? m * n * element_size(lc.type) : 0)) +
                                   (bias ? m * element_size(bias_type) : 0);
  ::minitron::emu::detail::record_library_call("cublasLtMatmul", bytes_read, b_count * m * n * element_size(ld.type),
                                               2 * b_count * m * n * k);
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
