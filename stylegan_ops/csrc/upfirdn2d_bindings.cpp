// Python bindings of the upfirdn2d CUDA kernel: input checks, output allocation, stream and device
// selection. The kernel itself is in upfirdn2d_kernel.cu (raw pointers, see upfirdn2d_launch.h).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "binding_common.h"
#include "upfirdn2d_launch.h"

// One upfirdn2d pass with a 2-D filter, see upfirdn2d_math.h. x: [N, C, H, W] contiguous CUDA tensor;
// f: [fh, fw] contiguous, float64 for float64 x and float32 otherwise. tiled: see upfirdn2d_launch.h.
// Returns [N, C, out_h, out_w].
torch::Tensor upfirdn2d(const torch::Tensor& x, const torch::Tensor& f, int64_t upx, int64_t upy, int64_t downx,
                        int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1, bool flip,
                        double gain, int64_t tiled) {
  TORCH_CHECK(x.is_cuda(), "upfirdn2d: x must be a CUDA tensor");
  TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must be NCHW, got ", x.dim(), " dims");
  TORCH_CHECK(x.is_contiguous(), "upfirdn2d: x must be contiguous");
  const int dtype = sgops::dtype_code(x, "upfirdn2d");
  const auto f_dtype = x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  TORCH_CHECK(f.device() == x.device(), "upfirdn2d: f is on ", f.device(), " but x is on ", x.device());
  TORCH_CHECK(f.scalar_type() == f_dtype, "upfirdn2d: f must be ", f_dtype, " for ", x.scalar_type(),
              " input, got ", f.scalar_type());
  TORCH_CHECK(f.dim() == 2 && f.numel() > 0, "upfirdn2d: f must be a non-empty 2-D [fh, fw] tensor");
  TORCH_CHECK(f.is_contiguous(), "upfirdn2d: f must be contiguous");
  TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "upfirdn2d: up and down must be >= 1");
  const int64_t in_h = x.size(2), in_w = x.size(3), fh = f.size(0), fw = f.size(1);
  const int64_t out_w = (in_w * upx + padx0 + padx1 - fw + downx) / downx;
  const int64_t out_h = (in_h * upy + pady0 + pady1 - fh + downy) / downy;
  TORCH_CHECK(out_w >= 1 && out_h >= 1, "upfirdn2d: the parameters leave no output (", out_h, "x", out_w, ")");
  const int64_t int_max = 0x7fffffff;
  TORCH_CHECK(in_h * upy + std::abs(pady0) < int_max && in_w * upx + std::abs(padx0) < int_max &&
                  out_h * downy < int_max && out_w * downx < int_max,
              "upfirdn2d: sizes too large");
  const c10::cuda::CUDAGuard guard(x.device());
  torch::Tensor out = torch::empty({x.size(0), x.size(1), out_h, out_w}, x.options());
  if (out.numel() == 0) return out;
  const sgops::UpFirDn2dParams p = sgops::make_upfirdn2d_params(
      x.size(0) * x.size(1), in_h, in_w, out_h, out_w, fh, fw, upx, upy, downx, downy, padx0, pady0, flip);
  const char* err = sgops::launch_upfirdn2d(dtype, out.data_ptr(), x.data_ptr(), f.data_ptr(), p, gain,
                                            int(tiled), c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
  TORCH_CHECK(err == nullptr, "upfirdn2d: CUDA kernel launch failed: ", err);
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "stylegan_ops upfirdn2d CUDA kernel";
  m.def("upfirdn2d", &upfirdn2d, "Upsample, FIR-filter, downsample (one pass, 2-D filter)", pybind11::arg("x"),
        pybind11::arg("f"), pybind11::arg("upx"), pybind11::arg("upy"), pybind11::arg("downx"),
        pybind11::arg("downy"), pybind11::arg("padx0"), pybind11::arg("padx1"), pybind11::arg("pady0"),
        pybind11::arg("pady1"), pybind11::arg("flip"), pybind11::arg("gain"), pybind11::arg("tiled") = -1);
}
