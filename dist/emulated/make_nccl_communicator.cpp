// The emulated build of dist/make_nccl_communicator.cu (see nccl_communicator.cpp here).
#include "dist/make_nccl_communicator.cu"
