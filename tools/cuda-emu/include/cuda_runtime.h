// Emulator shim: kernels may include cuda_runtime.h; everything they use from it (dim3, the
// built-in variables, the intrinsics) comes from emu.h, which is force-included.
#pragma once
#include "cuda_fp16.h"
