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

// ---- Tiled path ---------------------------------------------------------------------------------
//
// Neighbouring outputs share most of their input samples, so a block stages the input window of a whole
// output tile once, in accumulation type, and every output reads its taps from there: each input sample
// is read from global memory about once instead of once per tap, and the per-output index arithmetic of
// the gather above shrinks to a phase and an offset. Small planes are packed several to a block so that
// every thread has work.
//
// Along one axis (names as at the top of this file), the outputs [o0, o0 + T) of a tile read the real
// samples at positions s = o * D - P0 + t of the zero-inserted signal, i.e. input indices from
// i0 = floor((o0 * D - P0) / U) on, at most ((T - 1) * D + K - 1 + U - 1) / U + 1 of them (the window).
// Output o's first contributing tap is t = (-(o * D - P0)) mod U, reading input (o * D - P0 + t) / U; each
// further tap (t += U) reads the next input sample. Inputs outside [0, L) are staged as zeros.
//
// Zero taps are summed as exact zeros in the same order as the gather, so both paths give the same
// values bit for bit. The stage / compute split mirrors the kernel's two phases around a barrier; the CPU
// emulation runs them as two loops over the "threads" of each block.

// Tiling of one launch. Tiles and planes per block are powers of two.
struct UpFirDn2dTiling {
  int tile_h, tile_w;    // outputs per tile
  int log2_tile_w;       // log2(tile_w)
  int log2_tile_area;    // log2(tile_h * tile_w)
  int win_h, win_w;      // staged input window per plane
  int planes;            // planes per block
  int tiles_x, tiles_y;  // tiles per plane
  int64_t groups;        // blocks along the planes: ceil(nc / planes)
};

constexpr int kTiledOutputsPerBlock = 1024;      // outputs per block (4 per thread with 256 threads)
constexpr int kTiledMaxTaps = 64;                // larger filters take the gather
constexpr int kTiledMaxFactor = 8;               // larger up/down factors take the gather
constexpr int kTiledMaxSharedBytes = 48 * 1024;  // static limit without an opt-in

inline int ilog2_at_least(int v) {  // smallest k with 2^k >= v
  int k = 0;
  while ((1 << k) < v) ++k;
  return k;
}

SG_HD inline int floor_div(int a, int b) {  // b > 0
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// Input samples of a window for a tile of `tile` outputs along one axis.
inline int tile_window(int tile, int up, int down, int taps) {
  return ((tile - 1) * down + taps - 1 + up - 1) / up + 1;
}

inline int64_t tiling_shared_elems(const UpFirDn2dParams& p, const UpFirDn2dTiling& t) {
  return int64_t(t.planes) * t.win_h * t.win_w + p.fh * p.fw;
}

// Fills `t` and returns true when the tiled path applies to `p`; false for filters of more than
// kTiledMaxTaps taps, factors above kTiledMaxFactor, and windows that do not fit in shared memory even
// for the smallest tile.
inline bool plan_upfirdn2d_tiling(const UpFirDn2dParams& p, int acc_bytes, UpFirDn2dTiling* t) {
  if (p.fh * p.fw > kTiledMaxTaps) return false;
  if (p.upx > kTiledMaxFactor || p.upy > kTiledMaxFactor || p.downx > kTiledMaxFactor ||
      p.downy > kTiledMaxFactor)
    return false;
  const int need_w = ilog2_at_least(p.out_w), need_h = ilog2_at_least(p.out_h);
  int lw = need_w < 5 ? need_w : 5;  // tile_w <= 32
  const int max_lh = ilog2_at_least(kTiledOutputsPerBlock) - lw;
  int lh = need_h < max_lh ? need_h : max_lh;
  for (;;) {
    t->tile_w = 1 << lw;
    t->tile_h = 1 << lh;
    t->win_h = tile_window(t->tile_h, p.upy, p.downy, p.fh);
    t->win_w = tile_window(t->tile_w, p.upx, p.downx, p.fw);
    int planes = kTiledOutputsPerBlock >> (lw + lh);  // >= 1: lw + lh <= log2(kTiledOutputsPerBlock)
    while (planes > 1 && planes / 2 >= p.nc) planes /= 2;  // no block of mostly absent planes
    t->planes = planes;
    while (t->planes > 1 && tiling_shared_elems(p, *t) * acc_bytes > kTiledMaxSharedBytes) t->planes /= 2;
    if (tiling_shared_elems(p, *t) * acc_bytes <= kTiledMaxSharedBytes) break;
    if (lh == 0 && lw == 0) return false;
    if (lh >= lw) --lh; else --lw;  // a smaller tile, a smaller window
  }
  t->log2_tile_w = lw;
  t->log2_tile_area = lw + lh;
  t->tiles_x = (p.out_w + t->tile_w - 1) / t->tile_w;
  t->tiles_y = (p.out_h + t->tile_h - 1) / t->tile_h;
  t->groups = (p.nc + t->planes - 1) / t->planes;
  return true;
}

// Bytes of shared memory of one block: the oriented taps, then the windows of its planes.
inline int upfirdn2d_tiling_shared_bytes(const UpFirDn2dParams& p, const UpFirDn2dTiling& t, int acc_bytes) {
  return int(tiling_shared_elems(p, t) * acc_bytes);
}

// Phase 1 of block (group, tile_y, tile_x), the share of thread `thread` of `threads`: writes the taps
// in correlation order (taps[ty * fw + tx] multiplies the sample at s = o * D - P0 + t along each axis)
// and the input windows [planes, win_h, win_w] (zeros outside the input and beyond the last plane).
template <typename scalar_t, typename acc_t>
SG_HD inline void upfirdn2d_stage(const UpFirDn2dParams& p, const UpFirDn2dTiling& t, const scalar_t* x,
                                  const acc_t* f, int64_t group, int tile_y, int tile_x, acc_t* taps,
                                  acc_t* win, int thread, int threads) {
  const int ntaps = p.fh * p.fw;
  for (int j = thread; j < ntaps; j += threads) {
    taps[j] = p.flip ? f[j] : f[ntaps - 1 - j];  // true convolution: the filter reversed in y and x
  }
  const int window = t.win_h * t.win_w;
  const int iy0 = floor_div(tile_y * t.tile_h * p.downy - p.pady0, p.upy);
  const int ix0 = floor_div(tile_x * t.tile_w * p.downx - p.padx0, p.upx);
  const int64_t plane0 = group * t.planes;
  for (int j = thread; j < t.planes * window; j += threads) {
    const int pl = j / window;
    const int r = j - pl * window;
    const int wy = r / t.win_w;
    const int wx = r - wy * t.win_w;
    const int iy = iy0 + wy;
    const int ix = ix0 + wx;
    const int64_t plane = plane0 + pl;
    acc_t v = acc_t(0);
    if (plane < p.nc && iy >= 0 && iy < p.in_h && ix >= 0 && ix < p.in_w) {
      v = sg_load(x + (plane * p.in_h + iy) * p.in_w + ix);
    }
    win[j] = v;
  }
}

// First tap of output `o` (relative to the tile's first output o0) and its offset in the window.
struct TileTap {
  int t;    // first tap index with a real sample
  int off;  // its input sample's index in the window
};

SG_HD inline TileTap tile_first_tap(int o, int o0, int up, int down, int pad0) {
  const int s = o * down - pad0;           // position of tap 0 in the zero-inserted signal
  const int phase = floor_div(s, up) * up;  // the real sample at or before s
  TileTap r;
  r.t = phase == s ? 0 : phase + up - s;
  r.off = (s + r.t) / up - floor_div(o0 * down - pad0, up);
  return r;
}

// Phase 2: the outputs of the block from the staged taps and windows. UP, DOWN > 0 fix both axes'
// factors and FH, FW > 0 the filter size at compile time (the common cases); 0 reads them from p.
template <typename scalar_t, typename acc_t, int UP, int DOWN, int FH, int FW>
SG_HD inline void upfirdn2d_tile_compute(const UpFirDn2dParams& p, const UpFirDn2dTiling& t,
                                         const acc_t* taps, const acc_t* win, acc_t gain, scalar_t* out,
                                         int64_t group, int tile_y, int tile_x, int thread, int threads) {
  const int fh = FH > 0 ? FH : p.fh;
  const int fw = FW > 0 ? FW : p.fw;
  const int upx = UP > 0 ? UP : p.upx;
  const int upy = UP > 0 ? UP : p.upy;
  const int downx = DOWN > 0 ? DOWN : p.downx;
  const int downy = DOWN > 0 ? DOWN : p.downy;
  const int area_mask = (1 << t.log2_tile_area) - 1;
  const int w_mask = t.tile_w - 1;
  const int window = t.win_h * t.win_w;
  const int64_t plane0 = group * t.planes;
  const int oy0 = tile_y * t.tile_h;
  const int ox0 = tile_x * t.tile_w;
  for (int j = thread; j < (t.planes << t.log2_tile_area); j += threads) {
    const int pl = j >> t.log2_tile_area;
    const int ly = (j & area_mask) >> t.log2_tile_w;
    const int lx = j & w_mask;
    const int64_t plane = plane0 + pl;
    const int oy = oy0 + ly;
    const int ox = ox0 + lx;
    if (plane >= p.nc || oy >= p.out_h || ox >= p.out_w) continue;
    acc_t acc = acc_t(0);
    if (UP == 1) {  // every tap has a sample: one dense loop (unrolled for the fixed filter)
      const acc_t* src = win + pl * window + ly * downy * t.win_w + lx * downx;
#ifdef __CUDACC__
#pragma unroll
#endif
      for (int ty = 0; ty < fh; ++ty) {
#ifdef __CUDACC__
#pragma unroll
#endif
        for (int tx = 0; tx < fw; ++tx) {
          acc += src[ty * t.win_w + tx] * taps[ty * fw + tx];
        }
      }
    } else {
      const TileTap ry = tile_first_tap(oy, oy0, upy, downy, p.pady0);
      const TileTap rx = tile_first_tap(ox, ox0, upx, downx, p.padx0);
      const acc_t* src = win + pl * window + ry.off * t.win_w + rx.off;
      for (int ty = ry.t, wy = 0; ty < fh; ty += upy, ++wy) {
        for (int tx = rx.t, wx = 0; tx < fw; tx += upx, ++wx) {
          acc += src[wy * t.win_w + wx] * taps[ty * fw + tx];
        }
      }
    }
    sg_store(out + (plane * p.out_h + oy) * p.out_w + ox, acc * gain);
  }
}

// Calls fn(std::integral_constant UP, DOWN, FH, FW) with the compile-time case of `p`: up = down = 1,
// up = 2 or down = 2 (both axes), each with a 4 x 4 filter (StyleGAN2's [1, 3, 3, 1]); else all 0.
template <int V>
struct IntC {
  static constexpr int value = V;
};

template <typename Fn>
inline void dispatch_tile_case(const UpFirDn2dParams& p, Fn&& fn) {
  const bool f44 = p.fh == 4 && p.fw == 4;
  const bool up1 = p.upx == 1 && p.upy == 1, down1 = p.downx == 1 && p.downy == 1;
  const bool up2 = p.upx == 2 && p.upy == 2, down2 = p.downx == 2 && p.downy == 2;
  if (f44 && up1 && down1) {
    fn(IntC<1>{}, IntC<1>{}, IntC<4>{}, IntC<4>{});
  } else if (f44 && up2 && down1) {
    fn(IntC<2>{}, IntC<1>{}, IntC<4>{}, IntC<4>{});
  } else if (f44 && up1 && down2) {
    fn(IntC<1>{}, IntC<2>{}, IntC<4>{}, IntC<4>{});
  } else {
    fn(IntC<0>{}, IntC<0>{}, IntC<0>{}, IntC<0>{});
  }
}

}  // namespace sgops
