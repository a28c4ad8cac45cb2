// Emulated builds find this file instead of CUDA's <cooperative_groups.h>, which is empty for a
// host compiler. It provides the subset in emu/cooperative_groups.h.
#pragma once
#include "emu/cooperative_groups.h"
