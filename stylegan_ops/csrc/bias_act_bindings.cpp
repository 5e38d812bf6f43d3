// Python bindings of the bias_act CUDA kernel: input checks, output allocation, stream and device
// selection. The kernel itself is in bias_act_kernel.cu (raw pointers, see bias_act_launch.h).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "binding_common.h"
#include "bias_act_launch.h"

namespace {

void check_like(const torch::Tensor& t, const torch::Tensor& x, const char* name) {
  TORCH_CHECK(t.device() == x.device(), "bias_act: ", name, " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "bias_act: ", name, " has dtype ", t.scalar_type(),
              " but x has ", x.scalar_type());
  TORCH_CHECK(t.is_contiguous(), "bias_act: ", name, " must be contiguous");
}

}  // namespace

// out = bias_act kernel in `mode` (0 forward, 1 first derivative, 2 second derivative, 3 first derivative
// from the kept output y passed as x, 4 forward keeping y for mode 3), see
// bias_act_math.h. x: any shape, contiguous CUDA tensor; b: [x.shape[dim]] or None; dy: like x, or
// None in forward mode. act is ActivationSpec.cuda_idx; clamp < 0 means no clamping.
torch::Tensor bias_act(const torch::Tensor& x, const std::optional<torch::Tensor>& b,
                       const std::optional<torch::Tensor>& dy, int64_t mode, int64_t act, double alpha,
                       double gain, double clamp, int64_t dim) {
  TORCH_CHECK(x.is_cuda(), "bias_act: x must be a CUDA tensor");
  TORCH_CHECK(x.is_contiguous(), "bias_act: x must be contiguous");
  TORCH_CHECK(mode >= 0 && mode <= 4, "bias_act: mode must be 0 to 4, got ", mode);
  TORCH_CHECK(act >= 1 && act <= 9, "bias_act: unknown activation id ", act);
  const int dtype = sgops::dtype_code(x, "bias_act");
  int64_t b_inner = 1;
  int64_t b_size = 0;
  const void* b_ptr = nullptr;
  if (b.has_value() && b->defined()) {
    check_like(*b, x, "b");
    TORCH_CHECK(b->dim() == 1, "bias_act: b must be 1-D, got ", b->dim(), " dims");
    TORCH_CHECK(dim >= 0 && dim < x.dim(), "bias_act: dim ", dim, " out of range for a ", x.dim(), "-D x");
    TORCH_CHECK(b->size(0) == x.size(dim), "bias_act: b has ", b->size(0), " entries but x.shape[", dim,
                "] = ", x.size(dim));
    for (int64_t d = dim + 1; d < x.dim(); ++d) b_inner *= x.size(d);
    b_size = x.size(dim);
    b_ptr = b->data_ptr();
  }
  const void* dy_ptr = nullptr;
  if (mode != 0 && mode != 4) {  // 4: forward, keeping y
    TORCH_CHECK(dy.has_value() && dy->defined(), "bias_act: dy is required in gradient modes");
    check_like(*dy, x, "dy");
    TORCH_CHECK(dy->sizes() == x.sizes(), "bias_act: dy has shape ", dy->sizes(), " but x has ", x.sizes());
    dy_ptr = dy->data_ptr();
  }
  const c10::cuda::CUDAGuard guard(x.device());
  torch::Tensor out = torch::empty_like(x);
  if (x.numel() == 0) return out;
  if (b_size == 0) b_size = 1;  // no bias: never read
  const char* err = sgops::launch_bias_act(dtype, out.data_ptr(), x.data_ptr(), b_ptr, dy_ptr, x.numel(),
                                           int(mode), int(act), alpha, gain, clamp, b_inner, b_size,
                                           c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
  TORCH_CHECK(err == nullptr, "bias_act: CUDA kernel launch failed: ", err);
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "stylegan_ops bias_act CUDA kernel";
  m.def("bias_act", &bias_act, "Fused bias + activation + gain + clamp (and its derivatives)",
        pybind11::arg("x"), pybind11::arg("b"), pybind11::arg("dy"), pybind11::arg("mode"),
        pybind11::arg("act"), pybind11::arg("alpha"), pybind11::arg("gain"), pybind11::arg("clamp"),
        pybind11::arg("dim"));
}
