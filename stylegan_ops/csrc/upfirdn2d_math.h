// Element-wise math of upfirdn2d: one output sample as a direct gather over the filter taps.
//
// Along one axis (same for x and y), with input length L, up-factor U, down-factor D, leading padding
// P0 (negative = crop) and a filter of K taps, the op builds
//     u[k] = in[(k - P0) / U]  if k - P0 >= 0, (k - P0) % U == 0 and (k - P0) / U < L,  else 0
// and produces
//     out[o] = gain * sum_{t=0}^{K-1} u[o * D + t] * w[t],   w[t] = f[K - 1 - t] (true convolution)
//                                                           w[t] = f[t]         (flip_filter: correlation)
// Only taps with (o * D + t - P0) a non-negative multiple of U that lands inside the input contribute,
// so the loops below step t by U starting at the first such tap. The trailing padding P1 only sets
// the output length, which the caller computes.
//
// The CUDA kernel (upfirdn2d_kernel.cu) and the CPU emulation (upfirdn2d_cpu_emulation.cpp) both call
// upfirdn2d_linear_element() for every output sample, so the emulation tests cover the kernel's math.
#pragma once

#include "sg_common.h"

namespace sgops {

// Shapes and resampling parameters of one upfirdn2d launch. The input is [nc, in_h, in_w] and the
// output [nc, out_h, out_w], both contiguous; the filter is [fh, fw] row-major in accumulation type.
struct UpFirDn2dParams {
  int64_t nc;
  int in_h, in_w;
  int out_h, out_w;
  int fh, fw;
  int upx, upy;
  int downx, downy;
  int padx0, pady0;
  bool flip;  // true: correlation (no filter flip); false: true convolution
};

// Parameters of one launch from the op's arguments (host code: bindings and CPU emulation).
inline UpFirDn2dParams make_upfirdn2d_params(int64_t nc, int64_t in_h, int64_t in_w, int64_t out_h,
                                             int64_t out_w, int64_t fh, int64_t fw, int64_t upx, int64_t upy,
                                             int64_t downx, int64_t downy, int64_t padx0, int64_t pady0,
                                             bool flip) {
  UpFirDn2dParams p;
  p.nc = nc;
  p.in_h = int(in_h);
  p.in_w = int(in_w);
  p.out_h = int(out_h);
  p.out_w = int(out_w);
  p.fh = int(fh);
  p.fw = int(fw);
  p.upx = int(upx);
  p.upy = int(upy);
  p.downx = int(downx);
  p.downy = int(downy);
  p.padx0 = int(padx0);
  p.pady0 = int(pady0);
  p.flip = flip;
  return p;
}

// Tap range [t_begin, t_end) (stepping by `up`) of output position `o` along one axis.
struct TapRange {
  int begin;
  int end;
};

SG_HD inline TapRange tap_range(int o, int in_size, int up, int down, int pad0, int taps) {
  // Position of tap 0 in the zero-inserted (unpadded) signal; real samples sit at multiples of up.
  const int64_t s0 = int64_t(o) * down - pad0;
  const int64_t first = s0 > 0 ? ((s0 + up - 1) / up) * up : 0;  // first real sample >= s0
  const int64_t last = int64_t(in_size - 1) * up;                // last real sample
  TapRange r;
  r.begin = int(first - s0);
  const int64_t end = last - s0 + 1;
  r.end = end < taps ? int(end) : taps;
  return r;
}

// Input index of tap t of output position o (valid only for taps from tap_range).
SG_HD inline int tap_input_index(int o, int t, int up, int down, int pad0) {
  return int((int64_t(o) * down - pad0 + t) / up);
}

// Output sample (oy, ox) of one [in_h, in_w] plane.
template <typename scalar_t, typename acc_t>
SG_HD inline acc_t upfirdn2d_element(const UpFirDn2dParams& p, const scalar_t* plane, const acc_t* f,
                                     acc_t gain, int oy, int ox) {
  const TapRange ry = tap_range(oy, p.in_h, p.upy, p.downy, p.pady0, p.fh);
  const TapRange rx = tap_range(ox, p.in_w, p.upx, p.downx, p.padx0, p.fw);
  acc_t acc = acc_t(0);
  for (int ty = ry.begin; ty < ry.end; ty += p.upy) {
    const int iy = tap_input_index(oy, ty, p.upy, p.downy, p.pady0);
    const int fy = p.flip ? ty : p.fh - 1 - ty;
    const scalar_t* row = plane + int64_t(iy) * p.in_w;
    const acc_t* frow = f + int64_t(fy) * p.fw;
    for (int tx = rx.begin; tx < rx.end; tx += p.upx) {
      const int ix = tap_input_index(ox, tx, p.upx, p.downx, p.padx0);
      const int fx = p.flip ? tx : p.fw - 1 - tx;
      acc += sg_load(row + ix) * frow[fx];
    }
  }
  return acc * gain;
}

// Output element i (flat index into the contiguous [nc, out_h, out_w] output).
template <typename scalar_t, typename acc_t>
SG_HD inline void upfirdn2d_linear_element(int64_t i, const UpFirDn2dParams& p, scalar_t* out,
                                           const scalar_t* x, const acc_t* f, acc_t gain) {
  const int ox = int(i % p.out_w);
  const int64_t rest = i / p.out_w;
  const int oy = int(rest % p.out_h);
  const int64_t plane = rest / p.out_h;
  const scalar_t* in = x + plane * int64_t(p.in_h) * p.in_w;
  sg_store(out + i, upfirdn2d_element<scalar_t, acc_t>(p, in, f, gain, oy, ox));
}

}  // namespace sgops
