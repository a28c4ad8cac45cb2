// The emulated build of kernels/cuda/make_nccl_communicator.cu (see nccl_communicator.cpp here).
#include "kernels/cuda/make_nccl_communicator.cu"
