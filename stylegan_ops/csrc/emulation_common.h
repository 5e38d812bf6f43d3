// CPU emulation support (tests only): half/bfloat16 loads and stores for c10 types and the dtype
// dispatch, so the kernels' shared math can run in plain C++ loops over CPU tensors.
#pragma once

#include <ATen/ATen.h>

#include "sg_common.h"

namespace sgops {

inline float sg_load(const c10::Half* p) { return static_cast<float>(*p); }
inline void sg_store(c10::Half* p, float v) { *p = c10::Half(v); }
inline float sg_load(const c10::BFloat16* p) { return static_cast<float>(*p); }
inline void sg_store(c10::BFloat16* p, float v) { *p = c10::BFloat16(v); }

// Calls fn(scalar_t{}) with the storage type of `t`; throws for anything but the four float types.
template <typename Fn>
void dispatch_storage_type(const at::Tensor& t, const char* op, Fn&& fn) {
  switch (t.scalar_type()) {
    case at::kFloat:
      fn(float{});
      break;
    case at::kDouble:
      fn(double{});
      break;
    case at::kHalf:
      fn(c10::Half{});
      break;
    case at::kBFloat16:
      fn(c10::BFloat16{});
      break;
    default:
      TORCH_CHECK(false, op, ": unsupported dtype ", t.scalar_type());
  }
}

}  // namespace sgops
