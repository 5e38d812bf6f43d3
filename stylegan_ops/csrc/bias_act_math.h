// Element-wise math of bias_act: y = clamp(gain * act(x + b), -clamp, clamp).
//
// The CUDA kernel (bias_act_kernel.cu) and the CPU emulation (bias_act_cpu_emulation.cpp) both call
// bias_act_linear_element() for every element, so the emulation tests cover the kernel's math.
//
// Modes (z = x + b, a = act(z), m = 1 where -clamp <= gain * a <= clamp (or no clamp), else 0):
//   kForward: out = clamp(gain * a)                       (the op itself)
//   kGrad:    out = dy * gain * act'(z) * m                (d out / d x, i.e. the first derivative)
//   kGrad2:   out = dy * gain * act''(z) * m               (derivative of kGrad w.r.t. z)
//   kGradY:   out = dy * gain * act'(y) * [|y| < clamp]    (kGrad from the kept output y, passed as x)
//   kForwardKeep: kForward, except that a value inside [-clamp, clamp] that would be stored as +-clamp is
//             stored one step toward zero, so that the stored y tells inside from clamped exactly.
// kForwardKeep/kGradY serve linear, relu and lrelu with gain > 0 and alpha >= 0, where y > 0 exactly where
// z > 0: the backward pass then keeps y (which the next layer keeps anyway) instead of x, as NVIDIA's
// plugin does, and the gradient equals kGrad's. The price: an output exactly at the clamp, or rounding
// onto it in half precision, is stored one step inside.
#pragma once

#include "sg_common.h"

namespace sgops {

// Activation ids, equal to ActivationSpec.cuda_idx in stylegan_ops/bias_act.py.
enum BiasActKind : int {
  kActLinear = 1,
  kActRelu = 2,
  kActLrelu = 3,
  kActTanh = 4,
  kActSigmoid = 5,
  kActElu = 6,
  kActSelu = 7,
  kActSoftplus = 8,
  kActSwish = 9,
};

enum BiasActMode : int { kForward = 0, kGrad = 1, kGrad2 = 2, kGradY = 3, kForwardKeep = 4 };

// SELU constants (Klambauer et al. 2017), as used by torch.nn.functional.selu.
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSeluScale = 1.0507009873554804934193349852946;
// torch.nn.functional.softplus default threshold (beta = 1): linear above it.
constexpr double kSoftplusThreshold = 20.0;

// Value, first and second derivative of one activation at z.
template <typename T>
struct ActEval {
  T value;
  T d1;
  T d2;
};

template <typename T>
SG_HD inline T sg_sigmoid(T z) {
  return T(1) / (T(1) + sg_exp(-z));
}

// Evaluates act(z) and its first two derivatives. Branch points follow PyTorch's kernels so that
// results (and derivatives at the kinks) match the reference: relu/lrelu use z > 0; elu/selu take the
// exponential branch for z <= 0 (z < 0 for the second derivative); softplus is linear for z > 20
// (second derivative zero for z >= 20).
template <typename T>
SG_HD inline ActEval<T> act_eval(int act, T z, T alpha) {
  ActEval<T> r;
  r.value = z;
  r.d1 = T(1);
  r.d2 = T(0);
  switch (act) {
    case kActRelu:
      if (z <= T(0)) {  // NaN keeps value NaN and gradient 1, like torch.relu
        r.value = T(0);
        r.d1 = T(0);
      }
      break;
    case kActLrelu:
      if (!(z > T(0))) {
        r.value = z * alpha;
        r.d1 = alpha;
      }
      break;
    case kActTanh: {
      const T t = sg_tanh(z);
      const T s = T(1) - t * t;
      r.value = t;
      r.d1 = s;
      r.d2 = T(-2) * t * s;
      break;
    }
    case kActSigmoid: {
      const T s = sg_sigmoid(z);
      const T ds = s * (T(1) - s);
      r.value = s;
      r.d1 = ds;
      r.d2 = ds * (T(1) - T(2) * s);
      break;
    }
    case kActElu:
      if (z <= T(0)) {
        const T e = sg_exp(z);
        r.value = sg_expm1(z);
        r.d1 = e;
        r.d2 = z < T(0) ? e : T(0);  // torch's elu double backward is zero at z == 0
      }
      break;
    case kActSelu: {
      const T scale = T(kSeluScale);
      if (z <= T(0)) {
        const T sa = T(kSeluScale * kSeluAlpha);
        const T e = sg_exp(z);
        r.value = sa * sg_expm1(z);
        r.d1 = sa * e;
        r.d2 = z < T(0) ? sa * e : T(0);
      } else {
        r.value = scale * z;
        r.d1 = scale;
      }
      break;
    }
    case kActSoftplus:
      if (!(z > T(kSoftplusThreshold))) {
        const T s = sg_sigmoid(z);
        r.value = sg_log1p(sg_exp(z));
        r.d1 = s;
        // torch's softplus double backward is zero from the threshold on (x * beta < threshold).
        r.d2 = z < T(kSoftplusThreshold) ? s * (T(1) - s) : T(0);
      }
      break;
    case kActSwish: {
      // swish(z) = z * sigmoid(z); d1 = s + z s (1 - s); d2 = s (1 - s) (2 + z (1 - 2 s)).
      const T s = sg_sigmoid(z);
      const T ds = s * (T(1) - s);
      r.value = z * s;
      r.d1 = s + z * ds;
      r.d2 = ds * (T(2) + z * (T(1) - T(2) * s));
      break;
    }
    default:  // kActLinear (ids are validated by the bindings)
      break;
  }
  return r;
}

// Scalar parameters of one bias_act launch.
template <typename T>
struct BiasActParams {
  int mode;        // BiasActMode
  int act;         // BiasActKind
  T alpha;         // lrelu slope
  T gain;          // output scale
  T clamp;         // < 0: no clamping
  int64_t b_inner; // product of x.shape[dim + 1:]: consecutive elements sharing one bias entry
  int64_t b_size;  // x.shape[dim] (== bias length); 0 when there is no bias
};

// One element: x, b (0 without bias) and dy (ignored in kForward) in accumulation precision.
template <typename T>
SG_HD inline T bias_act_element(const BiasActParams<T>& p, T x, T b, T dy) {
  const T z = x + b;
  const ActEval<T> e = act_eval<T>(p.act, z, p.alpha);
  const T y = e.value * p.gain;
  const bool clamping = p.clamp >= T(0);
  if (p.mode == kForward) {
    if (clamping) {
      // Written so that NaN propagates like torch.clamp.
      if (y > p.clamp) return p.clamp;
      if (y < -p.clamp) return -p.clamp;
    }
    return y;
  }
  if (clamping && !(y >= -p.clamp && y <= p.clamp)) return T(0);
  const T d = p.mode == kGrad ? e.d1 : e.d2;
  return dy * (d * p.gain);
}

// kGradY for a kept output y; `stored_clamp` is the clamp as the storage type holds it (< 0: none).
template <typename T>
SG_HD inline T bias_act_grad_from_output(const BiasActParams<T>& p, T y, T dy, T stored_clamp) {
  if (stored_clamp >= T(0) && !(y > -stored_clamp && y < stored_clamp)) return T(0);
  T d = T(1);
  if (p.act == kActRelu && y <= T(0)) d = T(0);  // NaN keeps slope 1, as kGrad from a NaN z
  if (p.act == kActLrelu && !(y > T(0))) d = p.alpha;
  return dy * (d * p.gain);
}

// v rounded to the storage type and back.
template <typename scalar_t, typename T>
SG_HD inline T stored_value(T v) {
  scalar_t s;
  sg_store(&s, v);
  return sg_load(&s);
}

// The largest storage value below the stored clamp c (> 0, finite when stored): halving steps toward it
// round to it exactly when the step falls between half and one spacing of the storage type.
template <typename scalar_t, typename T>
SG_HD inline T below_stored_clamp(T c) {
  const T top = stored_value<scalar_t>(c);
  T below = T(0);
  T step = top;
  for (int k = 0; k < 64; ++k) {
    step *= T(0.5);
    const T candidate = stored_value<scalar_t>(top - step);
    if (!(candidate < top)) break;
    below = candidate;
  }
  return below;
}

// kForwardKeep for one element (see the modes above).
template <typename scalar_t, typename T>
SG_HD inline T bias_act_keep_element(const BiasActParams<T>& p, T x, T b) {
  BiasActParams<T> q = p;
  q.mode = kForward;
  q.clamp = T(-1);
  const T v = bias_act_element<T>(q, x, b, T(0));
  if (!(p.clamp >= T(0))) return v;
  if (v > p.clamp) return p.clamp;
  if (v < -p.clamp) return -p.clamp;
  const T top = stored_value<scalar_t>(p.clamp);
  const T s = stored_value<scalar_t>(v);
  if (!(s >= top || s <= -top)) return v;  // inside after rounding, or NaN
  const T inside = below_stored_clamp<scalar_t>(p.clamp);
  return s > T(0) ? inside : -inside;
}

// Element i of a contiguous tensor: loads x[i], the bias entry of i's position along `dim` and
// dy[i], evaluates, stores out[i]. b and dy may be null (no bias / forward mode). index_t: uint32_t when
// the tensor has fewer than 2^31 elements (the bias index then costs two 32-bit divisions per element, not
// two 64-bit ones, which on a GPU take several times the element's memory time), else int64_t.
template <typename scalar_t, typename index_t>
SG_HD inline void bias_act_linear_element(index_t i, scalar_t* out, const scalar_t* x, const scalar_t* b,
                                          const scalar_t* dy,
                                          const BiasActParams<typename AccType<scalar_t>::type>& p) {
  using acc_t = typename AccType<scalar_t>::type;
  const acc_t xv = sg_load(x + i);
  const acc_t bv = b != nullptr ? sg_load(b + (i / index_t(p.b_inner)) % index_t(p.b_size)) : acc_t(0);
  const acc_t dyv = dy != nullptr ? sg_load(dy + i) : acc_t(0);
  if (p.mode == kForwardKeep) {
    sg_store(out + i, bias_act_keep_element<scalar_t>(p, xv, bv));
  } else if (p.mode == kGradY) {
    const acc_t top = p.clamp >= acc_t(0) ? stored_value<scalar_t>(p.clamp) : p.clamp;
    sg_store(out + i, bias_act_grad_from_output<acc_t>(p, xv, dyv, top));
  } else {
    sg_store(out + i, bias_act_element<acc_t>(p, xv, bv, dyv));
  }
}

}  // namespace sgops
