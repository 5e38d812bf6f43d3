"""Import clean-fid where torchvision cannot be imported, and keep it working on new SciPy.

clean-fid 0.1.35 imports torchvision for its legacy PyTorch Inception (``mode="legacy_pytorch"``) and its
folder data set's ``ToTensor``; our protocols need neither (NVIDIA's torchscript; ``ToTensor`` of a float
array is a transpose). Where ``import torchvision`` fails (not installed, or a build that does not match
torch: ``operator torchvision::nms does not exist``), :func:`import_cleanfid` installs a minimal stand-in
(a working torchvision is always preferred). And clean-fid calls ``scipy.linalg.sqrtm(..., disp=False)``,
whose ``disp`` SciPy 1.18 removed: :func:`patch_sqrtm` (our metrics never call ``sqrtm``, see :mod:`.stats`).
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from typing import Any

import numpy as np
import scipy.linalg
import torch

from rootedgan.errors import UserError

_STANDIN_FLAG = "__rootedgan_standin__"


def torchvision_is_standin() -> bool:
    """Whether ``sys.modules['torchvision']`` is the stand-in installed by this module."""
    return bool(getattr(sys.modules.get("torchvision"), _STANDIN_FLAG, False))


def _legacy_only(*args: Any, **kwargs: Any) -> Any:
    raise UserError(
        "clean-fid's legacy PyTorch Inception (mode='legacy_pytorch') needs a working torchvision, which "
        "cannot be imported here; rootedgan uses the 'clean' mode (NVIDIA's Inception torchscript), "
        "which does not need it"
    )


class _LegacyInceptionBlock(torch.nn.Module):
    """Placeholder base class for clean-fid's legacy Inception blocks (never instantiated here)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _legacy_only()


class _ToTensor:
    """torchvision's ``ToTensor`` for numpy arrays: ``[H, W, C]`` -> ``[C, H, W]``; uint8 scaled by 1/255."""

    def __call__(self, pic: Any) -> torch.Tensor:
        pic = np.asarray(pic)
        img = torch.from_numpy((pic[:, :, None] if pic.ndim == 2 else pic).transpose((2, 0, 1))).contiguous()
        return img.to(torch.get_default_dtype()).div(255) if img.dtype == torch.uint8 else img

    def __repr__(self) -> str:
        return "ToTensor()"


def install_torchvision_standin() -> types.ModuleType:
    """Put the minimal stand-in ``torchvision`` package into ``sys.modules`` (see module docstring)."""
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]  # a half-imported broken torchvision must not linger
    root, models, inception, transforms = (
        types.ModuleType(f"torchvision{sub}") for sub in ("", ".models", ".models.inception", ".transforms")
    )
    root.__version__ = "0.0.0+rootedgan.standin"
    root.__path__ = models.__path__ = []  # packages, so that `import torchvision.models.utils` fails cleanly
    for name in ("InceptionA", "InceptionB", "InceptionC", "InceptionD", "InceptionE", "Inception3"):
        setattr(inception, name, type(name, (_LegacyInceptionBlock,), {"__module__": inception.__name__}))
    inception.inception_v3 = models.inception_v3 = _legacy_only
    models.inception, models.Inception3 = inception, inception.Inception3
    transforms.ToTensor = _ToTensor
    root.models, root.transforms = models, transforms
    for module in (root, models, inception, transforms):
        setattr(module, _STANDIN_FLAG, True)
        sys.modules[module.__name__] = module
    return root


class _CompatLinalg(types.ModuleType):
    """``scipy.linalg`` with a ``sqrtm`` that accepts the ``disp`` argument SciPy 1.18 removed."""

    def __getattr__(self, name: str) -> Any:
        return getattr(scipy.linalg, name)

    def sqrtm(self, A: Any, disp: bool = True, blocksize: Any = None) -> Any:
        """SciPy's ``sqrtm(A)``; ``disp=False`` also returns the error estimate SciPy < 1.18 returned."""
        X = scipy.linalg.sqrtm(A)
        if disp:
            return X
        try:
            err = scipy.linalg.norm(X @ X - A, "fro") ** 2 / scipy.linalg.norm(A, "fro")
        except ValueError:  # NaNs
            err = np.inf
        return X, err


def patch_sqrtm(fid_module: types.ModuleType, force: bool = False) -> bool:
    """Give ``cleanfid.fid`` a ``linalg`` whose ``sqrtm`` accepts ``disp`` when SciPy's does not; whether
    the patch is applied (always with ``force``, e.g. to test it on an older SciPy)."""
    linalg = getattr(fid_module, "linalg", None)
    if isinstance(linalg, _CompatLinalg):
        return True
    if linalg is None:
        return False
    if not force:
        try:
            if "disp" in inspect.signature(linalg.sqrtm).parameters:
                return False
        except (TypeError, ValueError):
            return False
    fid_module.linalg = _CompatLinalg("scipy.linalg")
    return True


def import_cleanfid() -> types.ModuleType:
    """Import and return ``cleanfid.fid`` (with ``cleanfid.resize`` and ``cleanfid.features`` loaded), with
    the stand-in and the ``sqrtm`` guard only where needed; :class:`UserError` without clean-fid."""
    if "cleanfid.fid" in sys.modules:
        fid = sys.modules["cleanfid.fid"]
        patch_sqrtm(fid)
        return fid
    try:
        importlib.import_module("cleanfid")
    except ImportError:
        raise UserError(
            "FID needs clean-fid: pip install clean-fid (rootedgan uses its 'clean' resize and its "
            "Inception torchscript protocol)"
        ) from None
    if "torchvision" not in sys.modules:
        try:
            importlib.import_module("torchvision")
        except Exception:  # not installed, or a build that does not match torch (RuntimeError)
            install_torchvision_standin()
    try:
        fid = importlib.import_module("cleanfid.fid")
    except ImportError as err:
        raise UserError(f"cannot import clean-fid ({err}); reinstall it: pip install clean-fid") from None
    importlib.import_module("cleanfid.resize")
    importlib.import_module("cleanfid.features")
    patch_sqrtm(fid)
    return fid
