// CPU emulation of the bias_act CUDA kernel, for tests: the same per-element function
// (sgops::bias_act_linear_element from bias_act_math.h) in a plain loop over CPU tensors, with the
// same call signature as the CUDA binding in bias_act_bindings.cpp. Registered as
// torch.ops.sgops_emulation.bias_act.
#include <torch/library.h>

#include "emulation_common.h"  // must precede the math header: c10 half/bfloat16 loads and stores

#include "bias_act_math.h"

namespace {

at::Tensor bias_act_emulation(const at::Tensor& x_in, const std::optional<at::Tensor>& b,
                              const std::optional<at::Tensor>& dy, int64_t mode, int64_t act, double alpha,
                              double gain, double clamp, int64_t dim) {
  TORCH_CHECK(x_in.device().is_cpu(), "bias_act emulation: x must be a CPU tensor");
  TORCH_CHECK(mode >= 0 && mode <= 4, "bias_act emulation: mode must be 0 to 4, got ", mode);
  TORCH_CHECK(act >= 1 && act <= 9, "bias_act emulation: unknown activation id ", act);
  const at::Tensor x = x_in.contiguous();
  at::Tensor bc;
  int64_t b_inner = 1;
  int64_t b_size = 1;
  if (b.has_value() && b->defined()) {
    TORCH_CHECK(b->dim() == 1 && dim >= 0 && dim < x.dim() && b->size(0) == x.size(dim),
                "bias_act emulation: bad bias shape");
    TORCH_CHECK(b->scalar_type() == x.scalar_type(), "bias_act emulation: b dtype differs from x");
    bc = b->contiguous();
    for (int64_t d = dim + 1; d < x.dim(); ++d) b_inner *= x.size(d);
    b_size = x.size(dim);
  }
  at::Tensor dyc;
  if (mode != 0 && mode != 4) {  // 4: forward, keeping y
    TORCH_CHECK(dy.has_value() && dy->defined(), "bias_act emulation: dy is required in gradient modes");
    TORCH_CHECK(dy->sizes() == x.sizes() && dy->scalar_type() == x.scalar_type(),
                "bias_act emulation: dy must match x");
    dyc = dy->contiguous();
  }
  at::Tensor out = at::empty_like(x);
  const int64_t n = x.numel();
  sgops::dispatch_storage_type(x, "bias_act emulation", [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = typename sgops::AccType<scalar_t>::type;
    sgops::BiasActParams<acc_t> p;
    p.mode = int(mode);
    p.act = int(act);
    p.alpha = acc_t(alpha);
    p.gain = acc_t(gain);
    p.clamp = acc_t(clamp);
    p.b_inner = b_inner;
    p.b_size = b_size;
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* bp = bc.defined() ? bc.data_ptr<scalar_t>() : nullptr;
    const scalar_t* dyp = dyc.defined() ? dyc.data_ptr<scalar_t>() : nullptr;
    if (n <= 0x7fffffff) {  // the index types of the CUDA kernel
      for (uint32_t i = 0; i < uint32_t(n); ++i) {
        sgops::bias_act_linear_element<scalar_t, uint32_t>(i, o, xp, bp, dyp, p);
      }
    } else {
      for (int64_t i = 0; i < n; ++i) sgops::bias_act_linear_element<scalar_t, int64_t>(i, o, xp, bp, dyp, p);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sgops_emulation, m) {
  m.def(
      "bias_act(Tensor x, Tensor? b, Tensor? dy, int mode, int act, float alpha, float gain, float clamp, "
      "int dim) -> Tensor",
      &bias_act_emulation);
}
