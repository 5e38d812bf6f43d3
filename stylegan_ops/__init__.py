"""StyleGAN's custom ops ``bias_act`` and ``upfirdn2d``: CUDA kernels compiled at first use, and the
pure-PyTorch references, which are the specification and the fallback (README, "The custom ops")."""

from stylegan_ops.bias_act import ACTIVATIONS, bias_act, bias_act_ref
from stylegan_ops.upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upfirdn2d_ref, upsample2d

__all__ = [
    "ACTIVATIONS",
    "bias_act",
    "bias_act_ref",
    "downsample2d",
    "filter2d",
    "setup_filter",
    "upfirdn2d",
    "upfirdn2d_ref",
    "upsample2d",
]
