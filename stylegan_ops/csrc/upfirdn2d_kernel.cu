// CUDA kernels of upfirdn2d (math in upfirdn2d_math.h): each block stages the input window of an output
// tile in shared memory (upfirdn2d_tiled_kernel); filters and factors too large for the tiles take a
// grid-stride loop over output samples, each a direct gather over the filter taps (upfirdn2d_kernel).
// Needs only the CUDA runtime headers (no torch headers), see upfirdn2d_launch.h.
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

// One block per (tile_x, tile_y, group of planes); blockIdx.z strides over the groups.
template <typename scalar_t, typename acc_t, int UP, int DOWN, int FH, int FW>
__global__ void upfirdn2d_tiled_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ x,
                                       const acc_t* __restrict__ f, UpFirDn2dParams p, UpFirDn2dTiling t,
                                       acc_t gain) {
  extern __shared__ __align__(16) unsigned char shared_raw[];
  acc_t* taps = reinterpret_cast<acc_t*>(shared_raw);
  acc_t* win = taps + p.fh * p.fw;
  for (int64_t group = blockIdx.z; group < t.groups; group += gridDim.z) {
    upfirdn2d_stage<scalar_t, acc_t>(p, t, x, f, group, blockIdx.y, blockIdx.x, taps, win, threadIdx.x,
                                     blockDim.x);
    __syncthreads();
    upfirdn2d_tile_compute<scalar_t, acc_t, UP, DOWN, FH, FW>(p, t, taps, win, gain, out, group, blockIdx.y,
                                                              blockIdx.x, threadIdx.x, blockDim.x);
    __syncthreads();  // the next group overwrites the windows
  }
}

template <typename scalar_t>
const char* launch_typed(void* out, const void* x, const void* f, const UpFirDn2dParams& p, double gain,
                         int tiled, cudaStream_t stream) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t n = p.nc * int64_t(p.out_h) * p.out_w;
  if (n <= 0) return nullptr;
  UpFirDn2dTiling t;
  const bool can_tile =
      plan_upfirdn2d_tiling(p, int(sizeof(acc_t)), &t) && t.tiles_x <= kMaxGrid && t.tiles_y <= kMaxGrid;
  if (tiled == 1 && !can_tile) return "upfirdn2d: the tiled path does not apply here";
  if (can_tile && tiled != 0) {
    const int64_t z = t.groups < kMaxGrid ? t.groups : kMaxGrid;
    const dim3 grid(unsigned(t.tiles_x), unsigned(t.tiles_y), unsigned(z));
    const int shared = upfirdn2d_tiling_shared_bytes(p, t, int(sizeof(acc_t)));
    scalar_t* o = static_cast<scalar_t*>(out);
    const scalar_t* xi = static_cast<const scalar_t*>(x);
    const acc_t* fi = static_cast<const acc_t*>(f);
    const acc_t g = acc_t(gain);
    dispatch_tile_case(p, [&](auto up, auto down, auto fh, auto fw) {
      upfirdn2d_tiled_kernel<scalar_t, acc_t, decltype(up)::value, decltype(down)::value, decltype(fh)::value,
                             decltype(fw)::value><<<grid, kBlock, shared, stream>>>(o, xi, fi, p, t, g);
    });
    const cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
  }
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
                                    const sgops::UpFirDn2dParams& p, double gain, int tiled, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32:
      return launch_typed<float>(out, x, f, p, gain, tiled, s);
    case kFloat64:
      return launch_typed<double>(out, x, f, p, gain, tiled, s);
    case kFloat16:
      return launch_typed<__half>(out, x, f, p, gain, tiled, s);
    case kBFloat16:
      return launch_typed<__nv_bfloat16>(out, x, f, p, gain, tiled, s);
    default:
      return "upfirdn2d: unsupported dtype code";
  }
}

