// Helpers shared by the Python bindings of the CUDA kernels (torch-dependent; not used by the kernels).
#pragma once

#include <torch/extension.h>

#include "sg_common.h"

namespace sgops {

// The launchers' dtype code of a tensor; `op` names the operation in the error message.
inline int dtype_code(const torch::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case torch::kFloat32:
      return kFloat32;
    case torch::kFloat64:
      return kFloat64;
    case torch::kFloat16:
      return kFloat16;
    case torch::kBFloat16:
      return kBFloat16;
    default:
      TORCH_CHECK(false, op, ": unsupported dtype ", t.scalar_type(),
                  " (expected float32, float64, float16 or bfloat16)");
  }
  return -1;
}

}  // namespace sgops
