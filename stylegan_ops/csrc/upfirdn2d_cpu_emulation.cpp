// CPU emulation of the upfirdn2d CUDA kernels, for tests: the same path choice and the same functions
// and instantiations from upfirdn2d_math.h as the launcher in upfirdn2d_kernel.cu, in plain loops over CPU
// tensors -- the tiled path block by block (all "threads" stage, then all compute, as around the
// kernel's barrier), the gather output by output -- with the call signature of the CUDA binding in
// upfirdn2d_bindings.cpp. Registered as torch.ops.sgops_emulation.upfirdn2d; `tiled` (optional) forces
// the path: -1 as the kernel chooses, 0 gather, 1 tiled (an error where it does not apply).
#include <torch/library.h>

#include <limits>
#include <vector>

#include "emulation_common.h"  // must precede the math header: c10 half/bfloat16 loads and stores

#include "upfirdn2d_math.h"

namespace {

at::Tensor upfirdn2d_emulation(const at::Tensor& x_in, const at::Tensor& f_in, int64_t upx, int64_t upy,
                               int64_t downx, int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0,
                               int64_t pady1, bool flip, double gain, int64_t tiled) {
  TORCH_CHECK(x_in.device().is_cpu(), "upfirdn2d emulation: x must be a CPU tensor");
  TORCH_CHECK(x_in.dim() == 4, "upfirdn2d emulation: x must be NCHW");
  TORCH_CHECK(f_in.dim() == 2 && f_in.numel() > 0, "upfirdn2d emulation: f must be a non-empty [fh, fw]");
  TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "upfirdn2d emulation: up/down must be >= 1");
  const auto f_dtype = x_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(f_in.scalar_type() == f_dtype, "upfirdn2d emulation: f must be ", f_dtype);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor f = f_in.contiguous();
  const int64_t in_h = x.size(2), in_w = x.size(3), fh = f.size(0), fw = f.size(1);
  const int64_t out_w = (in_w * upx + padx0 + padx1 - fw + downx) / downx;
  const int64_t out_h = (in_h * upy + pady0 + pady1 - fh + downy) / downy;
  TORCH_CHECK(out_w >= 1 && out_h >= 1, "upfirdn2d emulation: the parameters leave no output");
  at::Tensor out = at::empty({x.size(0), x.size(1), out_h, out_w}, x.options());
  const sgops::UpFirDn2dParams p = sgops::make_upfirdn2d_params(
      x.size(0) * x.size(1), in_h, in_w, out_h, out_w, fh, fw, upx, upy, downx, downy, padx0, pady0, flip);
  const int64_t n = out.numel();
  sgops::dispatch_storage_type(x, "upfirdn2d emulation", [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = typename sgops::AccType<scalar_t>::type;
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const acc_t* fp = f.data_ptr<acc_t>();
    sgops::UpFirDn2dTiling t;
    const bool can_tile = sgops::plan_upfirdn2d_tiling(p, int(sizeof(acc_t)), &t);
    TORCH_CHECK(tiled != 1 || can_tile, "upfirdn2d emulation: the tiled path does not apply here");
    if (can_tile && tiled != 0) {
      constexpr int threads = 256;  // the kernel's block size
      const size_t elems = size_t(sgops::upfirdn2d_tiling_shared_bytes(p, t, int(sizeof(acc_t))) / sizeof(acc_t));
      // NaN after the last window: a read past the staged windows shows up in the output.
      std::vector<acc_t> shared(elems + size_t(t.win_h) * t.win_w, std::numeric_limits<acc_t>::quiet_NaN());
      acc_t* taps = shared.data();
      acc_t* win = taps + p.fh * p.fw;
      for (int64_t group = 0; group < t.groups; ++group) {
        for (int ty = 0; ty < t.tiles_y; ++ty) {
          for (int tx = 0; tx < t.tiles_x; ++tx) {
            for (int th = 0; th < threads; ++th) {
              sgops::upfirdn2d_stage<scalar_t, acc_t>(p, t, xp, fp, group, ty, tx, taps, win, th, threads);
            }
            sgops::dispatch_tile_case(p, [&](auto up, auto down, auto fh, auto fw) {  // as the kernel does
              for (int th = 0; th < threads; ++th) {
                sgops::upfirdn2d_tile_compute<scalar_t, acc_t, decltype(up)::value, decltype(down)::value,
                                              decltype(fh)::value, decltype(fw)::value>(
                    p, t, taps, win, acc_t(gain), o, group, ty, tx, th, threads);
              }
            });
          }
        }
      }
      return;
    }
    for (int64_t i = 0; i < n; ++i) {
      sgops::upfirdn2d_linear_element<scalar_t, acc_t>(i, p, o, xp, fp, acc_t(gain));
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sgops_emulation, m) {
  m.def(
      "upfirdn2d(Tensor x, Tensor f, int upx, int upy, int downx, int downy, int padx0, int padx1, "
      "int pady0, int pady1, bool flip, float gain, int tiled=-1) -> Tensor",
      &upfirdn2d_emulation);
}
