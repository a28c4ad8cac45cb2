# minitron_cuda_library(NAME): the nvcc build of the CUDA engine (kernels/cuda/*.cu) with the
# project's CUDA flags. Shared by kernels/cuda/CMakeLists.txt (the main build) and
# bench/gpu/CMakeLists.txt (the CUDA-only build on a lent GPU machine).
#  - SASS for sm_80 (A100), sm_90 (H100/H200), sm_100 (B200/GB200) and sm_120 (RTX 50, RTX PRO
#    Blackwell), plus compute_90 PTX that the driver JIT-compiles on a GPU none of them runs
#    natively (a newer architecture). sm_90 rather than sm_90a: the kernels use no wgmma/TMA.
#    tests/kernels/cuda/test_fatbin_targets.sh reads the built library's fatbinary and fails when
#    one of these is missing. MINITRON_CUDA_GENCODE overrides (e.g. only sm_90 on an H200 to save
#    time; the lent-GPU build does that). Cost, nvcc 13 on the 2-core dev machine (2026-12-06):
#    the five .cu files (engine and NCCL communicator) take 74.5 CPU-seconds for these five
#    targets against 36.0 for sm_80 + sm_90 alone (cuda_backend.cu 55.1 against 23.5), so
#    `make test` (about 21 minutes) grows by 20-40 s: no trimming needed;
#  - every host and device warning an error;
#  - ptxas warns, hence fails, on register spills and local memory: a kernel that starts spilling
#    is noticed at build time rather than in a profile. MINITRON_CUDA_SPILLS_FATAL=OFF (the lent
#    GPU machine's build, bench/gpu, whose ptxas may differ from the one here) has ptxas report
#    every kernel's registers, spills and stack (-v) instead: visible in the build log, not an
#    error. Every other warning stays an error there too.
# The cache entry holds only an override, so that a build folder configured before the default
# changed still picks up the new default.
set(MINITRON_CUDA_GENCODE "" CACHE STRING "nvcc -gencode values for the CUDA engine (empty: the default targets)")
if(NOT MINITRON_CUDA_GENCODE)
  set(MINITRON_CUDA_GENCODE
      "arch=compute_80,code=sm_80;arch=compute_90,code=sm_90;arch=compute_100,code=sm_100;arch=compute_120,code=sm_120;arch=compute_90,code=compute_90")
endif()
set(MINITRON_CUDA_SPILLS_FATAL ON CACHE BOOL "ptxas register spills and local memory fail the build")
# CMake 3.25 does not know nvcc 13's C++20 flag; CUDA targets inherit the project's
# CXX_STANDARD 20, so tell it (harmless where CMake knows it already).
set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")

function(minitron_cuda_library name)
  set(dir ${CMAKE_CURRENT_FUNCTION_LIST_DIR})
  add_library(${name} STATIC ${dir}/cuda_backend.cu ${dir}/cuda_context.cu ${dir}/gemm.cu)
  minitron_cuda_target_options(${name})
  target_link_libraries(${name} PUBLIC CUDA::cudart CUDA::cublasLt)
endfunction()

# The flags above for any target of the engine's .cu files (minitron_cuda, minitron_nccl).
function(minitron_cuda_target_options name)
  set(dir ${CMAKE_CURRENT_FUNCTION_LIST_DIR})
  set_target_properties(${name} PROPERTIES
    CUDA_ARCHITECTURES OFF          # the -gencode flags below say exactly what is built
    CUDA_STANDARD 20
    POSITION_INDEPENDENT_CODE ON)
  foreach(code ${MINITRON_CUDA_GENCODE})
    target_compile_options(${name} PRIVATE "$<$<COMPILE_LANGUAGE:CUDA>:SHELL:-gencode ${code}>")
  endforeach()
  target_compile_options(${name} PRIVATE
    "$<$<COMPILE_LANGUAGE:CUDA>:SHELL:-Werror all-warnings>"
    "$<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Werror>")
  if(MINITRON_CUDA_SPILLS_FATAL)
    target_compile_options(${name} PRIVATE "$<$<COMPILE_LANGUAGE:CUDA>:-Xptxas=-warn-spills,-warn-lmem-usage>")
  else()
    # "-Werror all-warnings" would make ptxas spill warnings errors: the counts, without a warning.
    target_compile_options(${name} PRIVATE "$<$<COMPILE_LANGUAGE:CUDA>:-Xptxas=-v>")
  endif()
  target_include_directories(${name} PUBLIC ${dir}/../..)
endfunction()
