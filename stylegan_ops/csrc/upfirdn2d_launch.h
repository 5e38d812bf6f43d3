// Launcher of the upfirdn2d CUDA kernel, callable without CUDA or torch headers (raw pointers).
#pragma once

#include <cstdint>

#include "upfirdn2d_math.h"  // UpFirDn2dParams, DType

namespace sgops {

// Runs upfirdn2d on `stream` (a cudaStream_t): x is [p.nc, p.in_h, p.in_w] and out
// [p.nc, p.out_h, p.out_w], both contiguous with storage type `dtype` (sgops::DType); f is the
// [p.fh, p.fw] filter in accumulation type (float64 for float64 data, float32 otherwise).
// tiled: -1 the tiled kernel where it applies (plain filtering), else the gather; 0 always the gather
// (for measurements); 1 the tiled kernel, an error where it does not apply.
// Returns nullptr on success, else an error string.
const char* launch_upfirdn2d(int dtype, void* out, const void* x, const void* f, const UpFirDn2dParams& p,
                             double gain, int tiled, void* stream);

}  // namespace sgops
