// Shared helpers for the stylegan_ops kernels: host/device qualifiers, accumulation types, typed
// loads and stores, and float/double overloads of the libm functions the kernels use.
//
// Everything here compiles both with nvcc (device code) and with a plain C++ compiler, so the same
// element-wise math runs in the CUDA kernels and in the CPU emulation used by the tests.
#pragma once

#include <cstdint>

#include <math.h>

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define SG_HD __host__ __device__
#else
#define SG_HD
#endif

namespace sgops {

// dtype codes shared by the Python bindings and the launchers.
enum DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// Accumulation type: float for float/half/bfloat16 storage, double for double storage.
template <typename scalar_t>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

// Typed loads/stores. Half and bfloat16 overloads live next to their storage types: below for CUDA,
// in the CPU emulation for c10::Half / c10::BFloat16.
SG_HD inline float sg_load(const float* p) { return *p; }
SG_HD inline double sg_load(const double* p) { return *p; }
SG_HD inline void sg_store(float* p, float v) { *p = v; }
SG_HD inline void sg_store(double* p, double v) { *p = v; }

#ifdef __CUDACC__
// Explicit intrinsics: torch builds CUDA extensions with __CUDA_NO_HALF_CONVERSIONS__.
__device__ inline float sg_load(const __half* p) { return __half2float(*p); }
__device__ inline void sg_store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ inline float sg_load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ inline void sg_store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
#endif

// libm wrappers with exact float and double overloads (host and device).
SG_HD inline float sg_exp(float v) { return expf(v); }
SG_HD inline double sg_exp(double v) { return exp(v); }
SG_HD inline float sg_expm1(float v) { return expm1f(v); }
SG_HD inline double sg_expm1(double v) { return expm1(v); }
SG_HD inline float sg_log1p(float v) { return log1pf(v); }
SG_HD inline double sg_log1p(double v) { return log1p(v); }
SG_HD inline float sg_tanh(float v) { return tanhf(v); }
SG_HD inline double sg_tanh(double v) { return tanh(v); }

}  // namespace sgops
