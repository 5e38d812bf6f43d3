// CUDA kernel of upfirdn2d: a grid-stride loop over output samples, each a direct gather over the
// filter taps (upfirdn2d_math.h). Needs only the CUDA runtime headers (no torch headers), see
// upfirdn2d_launch.h.
#include <cuda_runtime.h>

#include "upfirdn2d_launch.h"
#include "upfirdn2d_math.h"

namespace sgops {
namespace {

constexpr int kBlock = 256;
constexpr int64_t kMaxGrid = 65535;

template <typename scalar_t, typename acc_t>
__global__ void upfirdn2d_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ x,
                                 const acc_t* __restrict__ f, UpFirDn2dParams p, acc_t gain, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    upfirdn2d_linear_element<scalar_t, acc_t>(i, p, out, x, f, gain);
  }
}

template <typename scalar_t>
const char* launch_typed(void* out, const void* x, const void* f, const UpFirDn2dParams& p, double gain,
                         cudaStream_t stream) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t n = p.nc * int64_t(p.out_h) * p.out_w;
  if (n <= 0) return nullptr;
  int64_t blocks = (n + kBlock - 1) / kBlock;
  if (blocks > kMaxGrid) blocks = kMaxGrid;
  upfirdn2d_kernel<scalar_t, acc_t><<<unsigned(blocks), kBlock, 0, stream>>>(
      static_cast<scalar_t*>(out), static_cast<const scalar_t*>(x), static_cast<const acc_t*>(f), p,
      acc_t(gain), n);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace
}  // namespace sgops

// Defined with its qualified name so that a signature that drifts from the declaration in the
// launch header is a compile error rather than a new overload that fails only at load time.
const char* sgops::launch_upfirdn2d(int dtype, void* out, const void* x, const void* f,
                                    const sgops::UpFirDn2dParams& p, double gain, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32:
      return launch_typed<float>(out, x, f, p, gain, s);
    case kFloat64:
      return launch_typed<double>(out, x, f, p, gain, s);
    case kFloat16:
      return launch_typed<__half>(out, x, f, p, gain, s);
    case kBFloat16:
      return launch_typed<__nv_bfloat16>(out, x, f, p, gain, s);
    default:
      return "upfirdn2d: unsupported dtype code";
  }
}

