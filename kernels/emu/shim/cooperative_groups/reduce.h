// Emulated builds find this file instead of CUDA's <cooperative_groups/reduce.h> (which needs the
// device compiler); cg::reduce is in kernels/emu/cooperative_groups.h.
#pragma once
#include "kernels/emu/cooperative_groups.h"
