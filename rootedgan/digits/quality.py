"""The digits FID (README, "The demo"): a domain FID in the feature space of our digits classifier, while
training, logged as ``metrics/fid{N}_digits`` with ``metrics/target_frac{N}`` (the share of samples
classified as a class present in the reference set) and, with NVIDIA's Inception weights on disk (never
downloaded unless ``inception=True``), ``metrics/fid{N}_full``; records go to ``metric-digits.jsonl``, at
the end ``quality.json`` and ``report.png``. The digits part is cheap (1,000 samples at 32x32: about a
second on a CPU), so every rank computes it identically without a collective; the Inception part is
collective, as in FIDCallback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from rootedgan.compare.report import pyplot, save_figure
from rootedgan.digits.classifier import DigitsClassifier, load_classifier
from rootedgan.errors import UserError
from rootedgan.fileio import atomic_open
from rootedgan.metrics.base import KimgMetricCallback
from rootedgan.metrics.callback import reference_dataset
from rootedgan.metrics.evaluator import Evaluator
from rootedgan.metrics.features import DatasetImages, generated_uint8
from rootedgan.metrics.inception import locate_inception
from rootedgan.metrics.stats import GaussianStats, frechet_distance
from rootedgan.runs import append_metric_record

__all__ = ["DigitsQualityCallback", "digits_fid", "reference_features"]

FEATURE_SPACE = "digits-classifier (rootedgan.digits, 128-d penultimate layer), not Inception"
_LOSS_KEYS = ("Loss/G/loss", "Loss/D/loss")


@torch.no_grad()
def _classify(classifier: DigitsClassifier, batches: Iterable[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Features ``[N, 128]`` (float64 numpy) and predicted classes ``[N]`` of uint8 image batches."""
    device = next(classifier.parameters()).device
    feats, classes = [], []
    for images in batches:
        f = classifier.features(images.to(device))
        feats.append(f.double().cpu())
        classes.append(classifier.head(f).argmax(dim=1).cpu())
    return torch.cat(feats).numpy(), torch.cat(classes).numpy()


def reference_features(classifier: DigitsClassifier, dataset: Any, batch_size: int = 256) -> tuple:
    """Features ``[N, 128]`` (float64 numpy) and class ids ``[N]`` of every image of ``dataset``."""
    return _classify(classifier, (images for images, _ in DataLoader(dataset, batch_size)))


@torch.no_grad()
def digits_fid(
    G: torch.nn.Module,
    reference: GaussianStats,
    classifier: DigitsClassifier,
    num_gen: int = 1000,
    seed: int = 0,
    target_classes: set[int] | None = None,
    batch_size: int = 250,
) -> dict[str, float]:
    """Digits FID of ``G`` against ``reference`` and the share of samples in ``target_classes``."""
    was_training = G.training
    G.eval()
    try:
        feats, classes = _classify(classifier, generated_uint8(G, num_gen, seed=seed, batch_size=batch_size))
    finally:
        G.train(was_training)
    gen = GaussianStats.from_features(feats)
    out = {"fid": frechet_distance(reference.mu, reference.sigma, gen.mu, gen.sigma)}
    if target_classes is not None:
        out["target_frac"] = sum(int(c) in target_classes for c in classes) / num_gen
    return out


class DigitsQualityCallback(KimgMetricCallback):
    """Digits FID and target-class share of ``G_ema`` every ``every_kimg`` thousand images (0: only at the
    start and the end) on ``num_gen`` samples of latents seeded with ``seed``. ``data_path``: the reference
    images (default: the datamodule's data set); ``classifier``: its file (default: the shipped one);
    ``plot``: write ``report.png`` at the end; ``inception``: also the Inception FID (None: when the weights
    are on disk, no download; True: always, downloading if needed; False: never)."""

    def __init__(
        self,
        every_kimg: float = 0.5,
        num_gen: int = 1000,
        data_path: str | None = None,
        classifier: str | None = None,
        seed: int = 0,
        plot: bool = True,
        inception: bool | None = None,
    ) -> None:
        super().__init__(every_kimg)
        if num_gen < 2:
            raise ValueError(f"DigitsQualityCallback: num_gen must be >= 2, got {num_gen}")
        self.num_gen, self.data_path, self.classifier_path = num_gen, data_path, classifier
        self.seed, self.plot, self.inception = seed, plot, inception
        tag = f"{num_gen // 1000}k" if num_gen % 1000 == 0 else str(num_gen)
        self.fid_key = f"metrics/fid{tag}_digits"
        self.frac_key = f"metrics/target_frac{tag}"
        self.inception_key = f"metrics/fid{tag}_full"
        self.history: list[dict[str, float]] = []
        self.losses: list[dict[str, Any]] = []
        self._evaluator: Any = None  # Inception's, when on
        self._classifier: DigitsClassifier | None = None
        self._reference: GaussianStats | None = None
        self._inception_reference: GaussianStats | None = None
        self._targets: set[int] = set()

    def prepare(self, trainer: L.Trainer, module: Any) -> None:
        """The classifier, the reference features and target classes (and Inception's, when on)."""
        if self._reference is not None:
            return
        self._classifier = load_classifier(self.classifier_path, device=module.device)
        dataset = reference_dataset(trainer, module, self.data_path, False, "DigitsQualityCallback")
        self._setup_inception(module, dataset)
        feats, classes = reference_features(self._classifier, dataset)
        self._reference = GaussianStats.from_features(feats)
        # classes the classifier sees in the reference set (>= 2 % of it, so stray errors don't count)
        counts = np.bincount(classes, minlength=10)
        self._targets = {int(c) for c in np.nonzero(counts >= 0.02 * len(classes))[0]}

    def _setup_inception(self, module: Any, dataset: Any) -> None:
        if self.inception is False:
            return
        try:
            found = locate_inception(download=bool(self.inception))
        except UserError:
            if self.inception:
                raise
            return  # auto: no local Inception weights, digits FID only
        self._evaluator = Evaluator(found, module.device, num_workers=0, progress=False, download=False)
        self._inception_reference = self._evaluator.reference_stats(DatasetImages(dataset))

    def evaluate(self, trainer: L.Trainer, module: Any) -> dict[str, float]:
        """Digits FID and target share now (and Inception FID when on): ``{logged key: value}``, also
        appended to ``metric-digits.jsonl`` in the run folder."""
        start = time.time()
        self.prepare(trainer, module)
        assert self._classifier is not None and self._reference is not None
        res = digits_fid(
            module.G_ema, self._reference, self._classifier, self.num_gen, self.seed, self._targets
        )
        inception: dict[str, float] = {}
        if self._evaluator is not None:
            gen = self._evaluator.generator_stats(module.G_ema, self.num_gen, seed=self.seed)
            inception[self.inception_key] = self._evaluator.fid(self._inception_reference, gen)
        record = {
            "kimg": float(module.cur_nimg) / 1000,
            self.fid_key: res["fid"],
            self.frac_key: res["target_frac"],
            "seconds": time.time() - start,
            "feature_space": FEATURE_SPACE,
            "target_classes": sorted(self._targets),
            **inception,
        }
        self.history.append(record)
        if trainer.is_global_zero:
            append_metric_record(self._out or Path(trainer.default_root_dir), "digits", record)
        return {k: v for k, v in record.items() if k.startswith("metrics/")}

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        metrics = trainer.callback_metrics
        if all(k in metrics for k in _LOSS_KEYS):  # tensors: converted when plotted, so no GPU sync here
            kimg = float(module.cur_nimg) / 1000
            self.losses.append({"kimg": kimg, **{k: metrics[k].detach().clone() for k in _LOSS_KEYS}})
        super().on_train_batch_end(trainer, module, *args)

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        super().on_train_end(trainer, module)  # the final evaluation
        if not trainer.is_global_zero or not self.history:
            return
        out = self._out or Path(trainer.default_root_dir)
        first, last = self.history[0], self.history[-1]
        summary = {
            "feature_space": FEATURE_SPACE,
            "metric": self.fid_key,
            "start": {"kimg": first["kimg"], "fid": first[self.fid_key], "target_frac": first[self.frac_key]},
            "end": {"kimg": last["kimg"], "fid": last[self.fid_key], "target_frac": last[self.frac_key]},
            "loss": module.adv_loss.label,
            "history": self.history,
        }
        with atomic_open(out / "quality.json", "w") as fh:
            json.dump(summary, fh, indent=2)
        if self.plot:
            self.write_report(out / "report.png", title=f"loss {module.adv_loss.label}")
        self._summary = [
            f"digits FID ({FEATURE_SPACE}): {first[self.fid_key]:.2f} at kimg {first['kimg']:.2f} -> "
            f"{last[self.fid_key]:.2f} at kimg {last['kimg']:.2f}; samples classified as the target digits "
            f"{sorted(self._targets)}: {100 * first[self.frac_key]:.1f}% -> {100 * last[self.frac_key]:.1f}%"
        ]
        if self.inception_key in last:
            self._summary.append(
                f"FID ({self._evaluator.extractor.inception.label}, {self.inception_key}): "
                f"{first[self.inception_key]:.2f} -> {last[self.inception_key]:.2f}"
            )

    def on_fit_end(self, trainer: L.Trainer, module: Any) -> None:
        """The summary, after the run's last tick and ``done`` lines (printed at the end of training)."""
        for line in getattr(self, "_summary", []):
            print(line)

    def write_report(self, path: Path, title: str = "") -> None:
        """Quality (digits FID, target share) and the G/D losses against kimg, as one PNG."""
        fig, axes = pyplot().subplots(1, 3, figsize=(13, 3.6))
        kimg = [h["kimg"] for h in self.history]
        axes[0].plot(kimg, [h[self.fid_key] for h in self.history], marker="o")
        axes[0].set(xlabel="kimg", ylabel=f"{self.fid_key}\n(digits-classifier features)", title="digits FID")
        axes[1].plot(kimg, [100 * h[self.frac_key] for h in self.history], marker="o", color="tab:green")
        classes = f"classified as {sorted(self._targets)}"
        axes[1].set(xlabel="kimg", ylabel="% of samples", title=classes, ylim=(0, 100))
        if self.losses:
            lk = [r["kimg"] for r in self.losses]
            for key in _LOSS_KEYS:
                axes[2].plot(lk, [float(r[key]) for r in self.losses], label=key, linewidth=1)
            axes[2].legend()
        axes[2].set(xlabel="kimg", title="losses")
        fig.suptitle(title)
        save_figure(fig, path, dpi=90)
