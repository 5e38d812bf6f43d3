// Launcher of the bias_act CUDA kernel, callable without CUDA or torch headers (raw pointers).
#pragma once

#include <cstdint>

#include "sg_common.h"  // DType

namespace sgops {

// Runs bias_act on n contiguous elements on `stream` (a cudaStream_t). x, dy (null in forward mode),
// b (null without bias) and out share the storage type `dtype` (sgops::DType); b_inner/b_size are
// described in bias_act_math.h. Returns nullptr on success, else a CUDA error string.
const char* launch_bias_act(int dtype, void* out, const void* x, const void* b, const void* dy, int64_t n,
                            int mode, int act, double alpha, double gain, double clamp, int64_t b_inner,
                            int64_t b_size, void* stream);

}  // namespace sgops
