"""Stand-ins for NVIDIA's downloads, for tests, benchmarks and trying the pipeline without internet.

    python bench/standins.py inception PATH   # the interface of NVIDIA's inception-2015-12-05.pt
    python bench/standins.py vgg16 PATH       # the interface of NVIDIA's vgg16.pt

Each file is deterministic (``seed``) and has the real file's entry points, so ``rootedgan fid --inception
PATH`` and ``rootedgan project --vgg16 PATH`` run end to end with it; the numbers computed with it (FIDs,
LPIPS distances) mean nothing.

* :func:`make_standin_inception`: strided convolutions to 2048 features. Like NVIDIA's file it has
  ``layers(x)`` on 299x299 inputs in [-1, 1] (the clean protocol) and ``forward(img, return_features=True)``
  on images of any size in [0, 255], resized inside (``tf1_bilinear_resize``, then ``(x - 128) / 128``,
  then ``layers``: the legacy_tensorflow protocol). NVIDIA's forward returns the 1008 logits unless
  ``return_features``; the stand-in returns its features either way.
* :func:`make_random_inception_v3`: the same interface on Inception-v3 *of the real architecture* with
  random weights (torchvision), for timings where NVIDIA's file cannot be downloaded.
* :func:`make_standin_vgg16`: ``vgg(images in [0, 255], resize_images=False, return_lpips=True) -> [N, F]``
  features whose squared distance is an LPIPS-like distance.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from rootedgan.metrics.inception import tf1_bilinear_resize


class _StandInLayers(torch.nn.Module):
    """Strided convolutions + ReLU + average pooling to 32 x 8 x 8 = 2048 non-negative features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, kernel_size=7, stride=4, padding=3)
        self.conv2 = torch.nn.Conv2d(16, 32, kernel_size=5, stride=3, padding=2)
        self.pool = torch.nn.AdaptiveAvgPool2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.pool(x).flatten(1) * 10  # about the scale of Inception's pool features


class _InceptionV3Layers(torch.nn.Module):
    """torchvision's Inception-v3 up to the 2048-d pool features (eval mode: a plain tensor out)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _InceptionInterface(torch.nn.Module):
    """``layers`` and the resizing ``forward`` of NVIDIA's Inception file around any feature network."""

    def __init__(self, layers: torch.nn.Module) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = tf1_bilinear_resize(img.to(torch.float32), 299)  # NVIDIA's file resizes inside too
        return self.layers((x - 128) / 128)


class _StandInVGG(torch.nn.Module):
    """Three strided convolutions; each layer's features unit-normalised per pixel and weighted, as LPIPS."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = torch.nn.ModuleList(
            [
                torch.nn.Conv2d(3, 8, kernel_size=3, stride=1, padding=1),
                torch.nn.Conv2d(8, 16, kernel_size=3, stride=2, padding=1),
                torch.nn.Conv2d(16, 16, kernel_size=3, stride=2, padding=1),
            ]
        )

    def forward(
        self, x: torch.Tensor, resize_images: bool = True, return_lpips: bool = False
    ) -> torch.Tensor:
        if resize_images:
            x = F.interpolate(x, size=(32, 32), mode="area")
        x = x / 127.5 - 1
        parts: list[torch.Tensor] = []
        for conv in self.convs:
            x = torch.relu(conv(x))
            unit = x / (x.square().sum(dim=1, keepdim=True) + 1e-10).sqrt()
            parts.append((unit / float(unit.shape[2] * unit.shape[3]) ** 0.5).flatten(1))
        if return_lpips:
            return torch.cat(parts, dim=1)
        return x.mean(dim=[2, 3])


def _randomized(model: torch.nn.Module, seed: int, weight_gain: float) -> torch.nn.Module:
    """``model`` with seeded normal parameters: biases 0.1, weights ``weight_gain / sqrt(fan_in)``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = 0.1 if p.ndim == 1 else weight_gain / p[0].numel() ** 0.5
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return model


def _save_script(model: torch.nn.Module, path: str | os.PathLike[str]) -> Path:
    """``torch.jit.script(model)`` written to ``path`` atomically (a temp file renamed over it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated")
        torch.jit.script(model.eval()).save(str(tmp))
    os.replace(tmp, path)
    return path


def make_standin_inception(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write the small stand-in for NVIDIA's Inception torchscript to ``path`` (module docstring)."""
    return _save_script(_InceptionInterface(_randomized(_StandInLayers(), seed, 0.5)), path)


def make_random_inception_v3(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write Inception-v3 of the real architecture with random weights (torchvision's ``inception_v3``,
    ``weights=None``) with the Inception file's interface: every convolution of the real network runs, so
    timings are the real ones. Needs torchvision (raises ImportError without it)."""
    import torchvision

    torch.manual_seed(seed)
    net = torchvision.models.inception_v3(
        weights=None, aux_logits=False, transform_input=False, init_weights=True
    )
    net.fc = torch.nn.Identity()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layers = torch.jit.trace(_InceptionV3Layers(net).eval(), torch.zeros(1, 3, 299, 299))
        return _save_script(_InceptionInterface(layers), path)


def make_standin_vgg16(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write the tiny stand-in for NVIDIA's ``vgg16.pt`` (LPIPS) to ``path`` (module docstring)."""
    return _save_script(_randomized(_StandInVGG(), seed, 1.0), path)


MAKERS = {"inception": make_standin_inception, "vgg16": make_standin_vgg16}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(MAKERS), help="which network file to stand in for")
    parser.add_argument("path", type=Path, help="where to write it")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = MAKERS[args.kind](args.path, seed=args.seed)
    print(f"wrote {path}: a stand-in {args.kind} network; the numbers computed with it mean nothing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
