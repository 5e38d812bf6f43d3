"""rootedgan: finetune pretrained StyleGAN2 networks with the rooted logistic objective.

``load_network(path_or_url)`` reads NVIDIA ``.pkl``, rosinality ``.pt`` and native ``.safetensors``
checkpoints safely (no code from the file is ever run); ``save_network`` writes the native format.
"""

from rootedgan.checkpoints import convert_network, load_network, save_network

__version__ = "0.1.0"

__all__ = ["__version__", "convert_network", "load_network", "save_network"]
