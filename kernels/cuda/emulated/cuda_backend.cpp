// The emulated build of kernels/cuda/cuda_backend.cu: the same source compiled as host C++ with
// MINITRON_EMULATE (see kernels/cuda/CMakeLists.txt). A wrapper file, because CMake gives a
// source file one language per directory.
#include "kernels/cuda/cuda_backend.cu"
