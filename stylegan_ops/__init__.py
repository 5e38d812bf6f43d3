"""StyleGAN's custom ops: ``bias_act`` and ``upfirdn2d``.

CUDA kernels are compiled at first use (ninja, cached); the pure-PyTorch reference implementations
are the specification and the fallback. See :mod:`stylegan_ops._impl` for how one is chosen.
"""

from stylegan_ops.bias_act import ACTIVATIONS, bias_act, bias_act_ref
from stylegan_ops.upfirdn2d import (
    downsample2d,
    filter2d,
    setup_filter,
    upfirdn2d,
    upfirdn2d_ref,
    upsample2d,
)

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
