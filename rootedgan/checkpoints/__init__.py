"""One loader for StyleGAN2 networks: NVIDIA ``.pkl`` (also TensorFlow-era), rosinality ``.pt``, ours.

``load_network(path_or_url)`` detects the format from the content (never the name), never executes code from
the file, and returns ``dict(G=..., D=..., G_ema=..., meta=...)`` with our modules (eval mode; a missing
network is ``None``); ``meta`` has ``format`` (``'nvidia-pkl'``, ``'nvidia-tf-pkl'``, ``'rosinality-pt'``
or ``'native'``), ``source`` and ``init_kwargs``.
"""

from rootedgan.checkpoints.loader import (
    convert_network,
    lightning_checkpoint_message,
    load_network,
    output_format,
    read_records,
)
from rootedgan.checkpoints.native import save_network
from rootedgan.checkpoints.sources import detect_format, resolve_source

__all__ = [
    "convert_network",
    "detect_format",
    "lightning_checkpoint_message",
    "load_network",
    "output_format",
    "read_records",
    "resolve_source",
    "save_network",
]
