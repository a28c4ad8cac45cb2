// The emulated build of dist/nccl_communicator.cu: the same source compiled as host C++
// with MINITRON_EMULATE against the emulated NCCL (emu/nccl.cpp). A wrapper file, because
// CMake gives a source file one language per directory.
#include "dist/nccl_communicator.cu"
