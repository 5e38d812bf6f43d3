// CUDA kernel of bias_act: a grid-stride loop over contiguous elements calling the shared math in
// bias_act_math.h. Needs only the CUDA runtime headers (no torch headers), see bias_act_launch.h.
#include <cuda_runtime.h>

#include "bias_act_launch.h"
#include "bias_act_math.h"

namespace sgops {
namespace {

constexpr int kBlock = 256;
constexpr int64_t kMaxGrid = 65535;
constexpr int64_t kMaxIndex32 = 0x7fffffff;

template <typename scalar_t, typename index_t>
__global__ void bias_act_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ x,
                                const scalar_t* __restrict__ b, const scalar_t* __restrict__ dy, index_t n,
                                BiasActParams<typename AccType<scalar_t>::type> p) {
  // uint32_t cannot wrap: n < 2^31 and the stride is below 2^24 (kMaxGrid * kBlock)
  const index_t stride = index_t(gridDim.x) * blockDim.x;
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    bias_act_linear_element<scalar_t, index_t>(i, out, x, b, dy, p);
  }
}

template <typename scalar_t>
const char* launch_typed(void* out, const void* x, const void* b, const void* dy, int64_t n, int mode, int act,
                         double alpha, double gain, double clamp, int64_t b_inner, int64_t b_size,
                         cudaStream_t stream) {
  using acc_t = typename AccType<scalar_t>::type;
  BiasActParams<acc_t> p;
  p.mode = mode;
  p.act = act;
  p.alpha = acc_t(alpha);
  p.gain = acc_t(gain);
  p.clamp = acc_t(clamp);
  p.b_inner = b_inner > 0 ? b_inner : 1;
  p.b_size = b_size > 0 ? b_size : 1;
  if (n <= 0) return nullptr;
  int64_t blocks = (n + kBlock - 1) / kBlock;
  if (blocks > kMaxGrid) blocks = kMaxGrid;
  auto* o = static_cast<scalar_t*>(out);
  const auto* xp = static_cast<const scalar_t*>(x);
  const auto* bp = static_cast<const scalar_t*>(b);
  const auto* dyp = static_cast<const scalar_t*>(dy);
  if (n <= kMaxIndex32) {
    bias_act_kernel<scalar_t, uint32_t>
        <<<unsigned(blocks), kBlock, 0, stream>>>(o, xp, bp, dyp, uint32_t(n), p);
  } else {
    bias_act_kernel<scalar_t, int64_t><<<unsigned(blocks), kBlock, 0, stream>>>(o, xp, bp, dyp, n, p);
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace
}  // namespace sgops

// Defined with its qualified name so that a signature that drifts from the declaration in the
// launch header is a compile error rather than a new overload that fails only at load time.
const char* sgops::launch_bias_act(int dtype, void* out, const void* x, const void* b, const void* dy,
                                   int64_t n, int mode, int act, double alpha, double gain, double clamp,
                                   int64_t b_inner, int64_t b_size, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32:
      return launch_typed<float>(out, x, b, dy, n, mode, act, alpha, gain, clamp, b_inner, b_size, s);
    case kFloat64:
      return launch_typed<double>(out, x, b, dy, n, mode, act, alpha, gain, clamp, b_inner, b_size, s);
    case kFloat16:
      return launch_typed<__half>(out, x, b, dy, n, mode, act, alpha, gain, clamp, b_inner, b_size, s);
    case kBFloat16:
      return launch_typed<__nv_bfloat16>(out, x, b, dy, n, mode, act, alpha, gain, clamp, b_inner, b_size,
                                         s);
    default:
      return "bias_act: unsupported dtype code";
  }
}

