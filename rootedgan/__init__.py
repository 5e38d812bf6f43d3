"""rootedgan: finetune pretrained StyleGAN2 networks with the rooted logistic objective.

``load_network(path_or_url)`` reads NVIDIA ``.pkl``, rosinality ``.pt`` and native ``.safetensors``
checkpoints safely (no code from the file is ever run); ``save_network`` writes the native format.
``FinetuneModule`` and ``ImageDataModule`` (the Lightning modules of ``rootedgan finetune``) are imported on
first use, so that ``import rootedgan`` stays light.
"""

import importlib
import importlib.abc
import sys

from rootedgan.checkpoints import convert_network, load_network, save_network
from rootedgan.training import adapter as _adapter  # noqa: F401  (registers load_network's adapter loader)

__version__ = "0.1.0"

__all__ = [
    "FinetuneModule",
    "ImageDataModule",
    "__version__",
    "convert_network",
    "load_network",
    "save_network",
]

_LAZY = {"FinetuneModule": "rootedgan.training.module", "ImageDataModule": "rootedgan.data"}
#: Modules of earlier versions -> where their contents live now (an import of the old name says so).
_MOVED = {
    **{
        name: f"rootedgan.training.{name}"
        for name in ("module", "losses", "randomness", "resume", "progress", "strategy", "optim", "augment")
    },
    "orthogonal": "rootedgan.training.orthogonal",
    "projector": "rootedgan.tools.projector",
    "landscape": "rootedgan.tools.landscape",
    "run_folder": "rootedgan.runs (NetworkSnapshot: rootedgan.training.snapshots)",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rootedgan' has no attribute {name!r}")


class _MovedModules(importlib.abc.MetaPathFinder):
    """Asked last: an import of a module that moved fails with one line naming its new place."""

    def find_spec(self, fullname, path=None, target=None):
        old = fullname.removeprefix("rootedgan.")
        if fullname.startswith("rootedgan.") and old in _MOVED:
            raise ModuleNotFoundError(f"{fullname} moved: use {_MOVED[old]}", name=fullname)
        return None


sys.meta_path.append(_MovedModules())
