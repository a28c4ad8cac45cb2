// The emulated build of kernels/cuda/nccl_communicator.cu: the same source compiled as host C++
// with MINITRON_EMULATE against the emulated NCCL (kernels/emu/nccl.cpp). A wrapper file, because
// CMake gives a source file one language per directory.
#include "kernels/cuda/nccl_communicator.cu"
