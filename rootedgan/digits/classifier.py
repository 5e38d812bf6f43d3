"""A small CNN digit classifier, trained by our own code; its penultimate layer is the digits-FID space
(README, "The demo"; Inception's features say little about 8x8-pixel handwriting). The shipped file is
trained on a seeded 80 % split of the 1,797 UCI digits (all ten classes) with small random shifts, its
held-out accuracy in the file's metadata; ``python -m rootedgan.digits.classifier`` rebuilds it (a minute).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open, save
from torch import nn

from rootedgan.digits import CLASSIFIER
from rootedgan.digits.data import load_uci_digits, upsample_digit
from rootedgan.errors import UserError
from rootedgan.fileio import atomic_open

__all__ = ["FEATURE_DIM", "DigitsClassifier", "load_classifier", "train_classifier", "main"]

FEATURE_DIM = 128
_INPUT = 32


class DigitsClassifier(nn.Module):
    """Three conv blocks (32, 64, 128 channels; 32 -> 16 -> 8 -> 4 px), a 128-d feature layer, 10 logits."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, o in ((1, 32), (32, 64), (64, 128)):
            layers += [nn.Conv2d(i, o, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 4 * 4, FEATURE_DIM), nn.ReLU())
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    @staticmethod
    def prepare(images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` (C = 1 or 3) -> float ``[N, 1, 32, 32]`` in [-1, 1]: RGB averaged to grey,
        resized (bilinear, antialiased) when not 32x32."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected uint8 [N, 1|3, H, W] images, got {images.dtype} {list(images.shape)}")
        x = images.to(torch.float32).mean(dim=1, keepdim=True) / 127.5 - 1
        if x.shape[-2:] != (_INPUT, _INPUT):
            x = F.interpolate(x, size=(_INPUT, _INPUT), mode="bilinear", antialias=True, align_corners=False)
        return x

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` -> ``[N, 128]`` float32 features (the digits-FID space)."""
        return self.body(self.prepare(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` -> ``[N, 10]`` class logits."""
        return self.head(self.features(images))


def _shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random integer translations of each image by up to ``max_shift`` px (zero fill)."""
    n, _, h, w = x.shape
    padded = F.pad(x, [max_shift] * 4)
    dx = torch.randint(0, 2 * max_shift + 1, [n], generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, [n], generator=generator)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, seed: int = 0, epochs: int = 30, test_frac: float = 0.2
) -> tuple[DigitsClassifier, dict[str, float]]:
    """Train on a seeded split of uint8 ``images [N, C, 32, 32]``; returns the model and its accuracies."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    order = torch.randperm(len(images), generator=gen)
    n_test = int(round(len(images) * test_frac))
    test_idx, train_idx = order[:n_test], order[n_test:]
    model = DigitsClassifier()
    x_all = DigitsClassifier.prepare(images)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in range(epochs):
        model.train()
        perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for start in range(0, len(perm), 64):
            idx = perm[start : start + 64]
            logits = model.head(model.body(_shift(x_all[idx], gen)))
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        pred = model.head(model.body(x_all)).argmax(dim=1)
    acc = {
        "train_accuracy": float((pred[train_idx] == labels[train_idx]).float().mean()),
        "test_accuracy": float((pred[test_idx] == labels[test_idx]).float().mean()),
        "num_train": len(train_idx),
        "num_test": n_test,
    }
    return model, acc


def load_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> DigitsClassifier:
    """Load the shipped classifier (or ``path``), in eval mode."""
    path = Path(path) if path is not None else CLASSIFIER
    if not path.is_file():
        raise UserError(
            f"digits classifier not found at {path}; rebuild it with `python -m rootedgan.digits.classifier`"
        )
    model = DigitsClassifier()
    try:
        model.load_state_dict(load_file(str(path)))
    except Exception as err:
        raise UserError(f"{path} is not a digits classifier file ({err})") from None
    return model.to(device).eval()


def classifier_metadata(path: str | Path | None = None) -> dict[str, object]:
    """The training record stored with the classifier (accuracies, seed, split)."""
    with safe_open(str(Path(path) if path is not None else CLASSIFIER), "pt") as f:
        return json.loads((f.metadata() or {}).get("training", "{}"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the digits classifier (digits-FID features).")
    parser.add_argument("--out", default=str(CLASSIFIER))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    raw, labels = load_uci_digits()
    images = torch.from_numpy(np.stack([upsample_digit(im) for im in raw])).permute(0, 3, 1, 2).contiguous()
    model, record = train_classifier(images, torch.from_numpy(labels), seed=args.seed, epochs=args.epochs)
    record.update(seed=args.seed, epochs=args.epochs, data="UCI digits via scikit-learn, 32x32 bicubic")
    data = save({k: v.contiguous() for k, v in model.state_dict().items()}, {"training": json.dumps(record)})
    with atomic_open(args.out, "wb") as fh:
        fh.write(data)
    print(f"{args.out}: test accuracy {record['test_accuracy']:.4f} on {record['num_test']} held-out digits")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
