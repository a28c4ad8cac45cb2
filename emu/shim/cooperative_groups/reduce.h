// Emulated builds find this file instead of CUDA's <cooperative_groups/reduce.h> (which needs the
// device compiler); cg::reduce is in emu/cooperative_groups.h.
#pragma once
#include "emu/cooperative_groups.h"
