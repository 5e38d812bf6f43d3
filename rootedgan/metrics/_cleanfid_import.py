"""Import clean-fid where torchvision cannot be imported, and keep it working on new SciPy.

clean-fid 0.1.35 imports torchvision when it is imported: ``cleanfid/inception_pytorch.py`` subclasses
``torchvision.models.inception.InceptionA/C/E`` for its *legacy* PyTorch Inception (``mode=
"legacy_pytorch"``), and ``cleanfid/utils.py`` uses ``torchvision.transforms.ToTensor`` in its folder
data set. The "clean" protocol used here needs neither the legacy model nor anything else from
torchvision: features come from NVIDIA's Inception torchscript file, and ``ToTensor`` on a float32
``[H, W, C]`` array is only a transpose.

On machines where ``import torchvision`` fails (not installed, or a build whose C extension does not
match the installed torch, which raises ``RuntimeError: operator torchvision::nms does not exist``),
:func:`import_cleanfid` puts a minimal stand-in ``torchvision`` package into ``sys.modules`` and
imports clean-fid again. The stand-in has ``__version__``, ``models.inception.InceptionA/InceptionC/
InceptionE/Inception3`` as plain ``nn.Module`` subclasses, ``models.inception_v3`` (raises a clear error:
only the legacy mode needs the real torchvision) and ``transforms.ToTensor`` (the same conversion as
torchvision's for numpy arrays). A working real torchvision is always used when there is one: the
stand-in is installed only after importing the real one failed.

clean-fid's ``frechet_distance`` calls ``scipy.linalg.sqrtm(..., disp=False)``; SciPy 1.18 removed
``disp``. :func:`import_cleanfid` then gives ``cleanfid.fid`` a ``linalg`` whose ``sqrtm`` accepts
``disp`` and returns what SciPy < 1.18 returned (our own metrics never call it: see :mod:`.stats`).
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from typing import Any

import numpy as np
import torch

from rootedgan.errors import UserError

__all__ = ["import_cleanfid", "install_torchvision_standin", "patch_sqrtm", "torchvision_is_standin"]

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
        if not isinstance(pic, np.ndarray):
            pic = np.asarray(pic)
        if pic.ndim == 2:
            pic = pic[:, :, None]
        img = torch.from_numpy(pic.transpose((2, 0, 1))).contiguous()
        if img.dtype == torch.uint8:
            return img.to(torch.get_default_dtype()).div(255)
        return img

    def __repr__(self) -> str:
        return "ToTensor()"


def install_torchvision_standin() -> types.ModuleType:
    """Put the minimal stand-in ``torchvision`` package into ``sys.modules`` (see module docstring)."""
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]  # a half-imported broken torchvision must not linger
    root = types.ModuleType("torchvision")
    root.__version__ = "0.0.0+rootedgan.standin"
    root.__path__ = []  # a package, so that `import torchvision.models.utils` fails with ImportError
    setattr(root, _STANDIN_FLAG, True)
    models = types.ModuleType("torchvision.models")
    models.__path__ = []
    inception = types.ModuleType("torchvision.models.inception")
    for cls_name in ("InceptionA", "InceptionB", "InceptionC", "InceptionD", "InceptionE", "Inception3"):
        setattr(
            inception, cls_name, type(cls_name, (_LegacyInceptionBlock,), {"__module__": inception.__name__})
        )
    inception.inception_v3 = _legacy_only
    models.inception = inception
    models.inception_v3 = _legacy_only
    models.Inception3 = inception.Inception3
    transforms = types.ModuleType("torchvision.transforms")
    transforms.ToTensor = _ToTensor
    root.models = models
    root.transforms = transforms
    for module in (root, models, inception, transforms):
        setattr(module, _STANDIN_FLAG, True)
        sys.modules[module.__name__] = module
    return root


def _sqrtm_accepts_disp(sqrtm: Any) -> bool:
    try:
        return "disp" in inspect.signature(sqrtm).parameters
    except (TypeError, ValueError):
        return True


class _CompatLinalg(types.ModuleType):
    """``scipy.linalg`` with a ``sqrtm`` that accepts the ``disp`` argument SciPy 1.18 removed."""

    def __init__(self) -> None:
        super().__init__("scipy.linalg")
        import scipy.linalg

        self._linalg = scipy.linalg

    def __getattr__(self, name: str) -> Any:
        return getattr(self._linalg, name)

    def sqrtm(self, A: Any, disp: bool = True, blocksize: Any = None) -> Any:
        """SciPy's ``sqrtm(A)``; ``disp=False`` also returns the error estimate SciPy < 1.18 returned."""
        X = self._linalg.sqrtm(A)
        if disp:
            return X
        try:
            err = self._linalg.norm(X @ X - A, "fro") ** 2 / self._linalg.norm(A, "fro")
        except ValueError:  # NaNs
            err = np.inf
        return X, err


def patch_sqrtm(fid_module: types.ModuleType, force: bool = False) -> bool:
    """Give ``cleanfid.fid`` a ``linalg`` whose ``sqrtm`` accepts ``disp`` when SciPy's does not.

    Returns whether the patch was applied (always with ``force``, e.g. to test it on an older SciPy).
    """
    linalg = getattr(fid_module, "linalg", None)
    if isinstance(linalg, _CompatLinalg):
        return True
    if linalg is None or (not force and _sqrtm_accepts_disp(linalg.sqrtm)):
        return False
    fid_module.linalg = _CompatLinalg()
    return True


def import_cleanfid() -> types.ModuleType:
    """Import and return ``cleanfid.fid`` (with ``cleanfid.resize`` and ``cleanfid.features`` loaded).

    Installs the torchvision stand-in only when the real torchvision cannot be imported, and the
    ``sqrtm`` guard only when SciPy rejects ``disp``. Raises :class:`UserError` without clean-fid.
    """
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
