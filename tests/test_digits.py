"""The embedded digits demo: data from scikit-learn's UCI digits, the classifier, the digits FID,
the shipped pretrained model, reproducible pretraining and a reduced demo run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from rootedgan.data import ImageDataset
from rootedgan.digits import PRETRAINED, SOURCE_ZIP, TARGET_ZIP
from rootedgan.digits.classifier import DigitsClassifier, classifier_metadata, load_classifier
from rootedgan.digits.quality import digits_fid, reference_features
from rootedgan.errors import UserError
from rootedgan.metrics.stats import GaussianStats


def _images(path: Path) -> tuple[torch.Tensor, np.ndarray]:
    ds = ImageDataset(str(path), use_labels=True)
    imgs = torch.stack([ds[i][0] for i in range(len(ds))])
    return imgs, ds.labels.argmax(axis=1)


@pytest.fixture(scope="module")
def target() -> tuple[torch.Tensor, np.ndarray]:
    return _images(TARGET_ZIP)


@pytest.fixture(scope="module")
def source() -> tuple[torch.Tensor, np.ndarray]:
    return _images(SOURCE_ZIP)


@pytest.fixture(scope="module")
def classifier() -> DigitsClassifier:
    return load_classifier()


# -- data ----------------------------------------------------------------------------------------


def test_shipped_zips_are_what_the_script_makes(tmp_path, source, target):
    pytest.importorskip("sklearn")
    from rootedgan.digits.data import load_uci_digits, main

    assert main([str(tmp_path)]) == 0
    raw, labels = load_uci_digits()
    assert len(raw) == 1797
    for shipped, domain in ((source, "source"), (target, "target")):
        imgs, lab = _images(tmp_path / f"digits-{domain}.zip")
        assert torch.equal(imgs, shipped[0]) and np.array_equal(lab, shipped[1])
    assert len(source[0]) == int(np.isin(labels, [0, 1, 2, 3, 4]).sum()) == 901
    assert len(target[0]) == int(np.isin(labels, [5, 6, 7, 8, 9]).sum()) == 896


def test_domains_and_format(source, target):
    assert set(source[1].tolist()) == {0, 1, 2, 3, 4}
    assert set(target[1].tolist()) == {5, 6, 7, 8, 9}
    for imgs, _ in (source, target):
        assert imgs.shape[1:] == (3, 32, 32) and imgs.dtype == torch.uint8
        assert torch.equal(imgs[:, 0], imgs[:, 1]) and torch.equal(imgs[:, 0], imgs[:, 2])  # grey as RGB
        # white strokes on black: corners dark, centre bright on average
        assert imgs[:, 0, :2, :2].float().mean() < 10 and imgs[:, 0, 12:20, 12:20].float().mean() > 80


def test_upsample_digit_scaling():
    from rootedgan.digits.data import upsample_digit

    flat = upsample_digit(np.full([8, 8], 16.0))
    assert flat.shape == (32, 32, 3) and (flat == 255).all()
    assert (upsample_digit(np.zeros([8, 8])) == 0).all()
    half = upsample_digit(np.full([8, 8], 8.0))
    assert (half == 128).all()  # round(8 * 255 / 16) = 127.5 -> 128


# -- classifier ------------------------------------------------------------------------------------


def test_classifier_recorded_accuracy_reproduces():
    """The held-out split is re-derived from the stored seed; accuracy on it equals the stored number."""
    pytest.importorskip("sklearn")
    from rootedgan.digits.data import load_uci_digits, upsample_digit

    meta = classifier_metadata()
    raw, labels = load_uci_digits()
    images = torch.from_numpy(np.stack([upsample_digit(im) for im in raw])).permute(0, 3, 1, 2)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(meta["seed"]))
    test_idx = order[: meta["num_test"]]
    with torch.no_grad():
        pred = load_classifier()(images[test_idx]).argmax(dim=1).numpy()
    accuracy = float((pred == labels[test_idx.numpy()]).mean())
    assert accuracy == pytest.approx(meta["test_accuracy"], abs=1e-6)
    assert accuracy > 0.97


def test_classifier_input_rules(classifier, target):
    imgs = target[0][:8]
    with torch.no_grad():
        rgb = classifier.features(imgs)
        grey = classifier.features(imgs[:, :1])
        big = classifier.features(
            torch.nn.functional.interpolate(imgs.float(), scale_factor=2).round().byte()
        )
    assert rgb.shape == (8, 128)
    torch.testing.assert_close(rgb, grey)  # RGB is averaged to grey
    assert torch.nn.functional.cosine_similarity(rgb, big).min() > 0.9  # resized back to 32x32
    with pytest.raises(ValueError, match="uint8"):
        classifier.features(imgs.float())


def test_classifier_missing_or_foreign_file(tmp_path):
    with pytest.raises(UserError, match="rootedgan.digits.classifier"):
        load_classifier(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a digits classifier"):
        load_classifier(bad)


# -- digits FID ------------------------------------------------------------------------------------


class _ImageBank(torch.nn.Module):
    """A stand-in generator that returns stored images (as [-1, 1] floats) picked by its latents."""

    z_dim, c_dim = 4, 0

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("images", images.float() / 127.5 - 1)
        self.dummy = torch.nn.Parameter(torch.zeros([]))

    def forward(self, z, c, truncation_psi=1, noise_mode="const"):
        idx = (z[:, 0].abs() * 1e4).long() % len(self.images)
        return self.images[idx]


def test_digits_fid_ranks_domains(classifier, source, target):
    feats, classes = reference_features(classifier, ImageDataset(str(TARGET_ZIP)))
    assert set(np.unique(classes)) == {5, 6, 7, 8, 9}
    reference = GaussianStats.from_features(feats)
    targets = {5, 6, 7, 8, 9}
    same = digits_fid(_ImageBank(target[0]), reference, classifier, num_gen=600, target_classes=targets)
    other = digits_fid(_ImageBank(source[0]), reference, classifier, num_gen=600, target_classes=targets)
    assert same["target_frac"] > 0.97 and other["target_frac"] < 0.03
    assert same["fid"] < other["fid"] / 10


# -- the shipped pretrained model ---------------------------------------------------------------------


def test_pretrained_model_draws_source_digits(classifier):
    from rootedgan import load_network

    nets = load_network(PRETRAINED)
    assert nets["D"] is not None and nets["G_ema"] is not None
    assert "rootedgan.digits.pretrain" in json.dumps(nets["meta"])
    G = nets["G_ema"]
    assert (G.img_resolution, G.img_channels) == (32, 3)
    z = torch.randn([256, G.z_dim], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        img = G(z, None, noise_mode="const")
        pred = classifier(((img * 127.5 + 128).clamp(0, 255)).to(torch.uint8)).argmax(dim=1)
    frac_source = float((pred < 5).float().mean())
    assert frac_source > 0.85, f"only {frac_source:.0%} of the pretrained samples look like digits 0-4"
    assert PRETRAINED.stat().st_size < 8 * 2**20  # "a few MB"


def test_pretrain_is_reproducible(tmp_path):
    from rootedgan.checkpoints import load_network
    from rootedgan.digits.pretrain import pretrain

    paths = [
        pretrain(
            tmp_path / f"run{i}.safetensors",
            kimg=0.016,
            batch_size=8,
            run_dir=tmp_path / f"r{i}",
            progress=False,
        )
        for i in range(2)
    ]
    a, b = (load_network(p) for p in paths)
    for key in ("G_ema", "D"):
        for (name, x), (_, y) in zip(a[key].state_dict().items(), b[key].state_dict().items(), strict=True):
            assert torch.equal(x, y), f"{key}.{name} differs between two runs with the same seed"


# -- the demo -------------------------------------------------------------------------------------


def _demo(out: Path, *args: str, num_gen: int) -> int:
    """``rootedgan demo`` at a reduced size (batch 8, evaluations every 0.016 kimg of ``num_gen`` samples)."""
    from rootedgan.cli import main

    small = ["--data.batch_size", "8", "--trainer.callbacks.init_args.every_kimg", "0.016"]
    small += ["--trainer.callbacks.init_args.num_gen", str(num_gen), "--trainer.enable_progress_bar", "false"]
    return main(["demo", *args, "--out", str(out), "--", *small])


def test_demo_reduced(tmp_path, capsys):
    out = tmp_path / "demo"
    status = _demo(out, "--kimg", "0.032", num_gen=200)
    assert status == 0
    run = next(out.glob("lightning_logs/version_*"))
    quality = json.loads((run / "quality.json").read_text())
    assert "not Inception" in quality["feature_space"]
    assert [h["kimg"] for h in quality["history"]] == pytest.approx([0.0, 0.016, 0.032])
    for h in quality["history"]:
        assert np.isfinite(h["metrics/fid200_digits"]) and 0 <= h["metrics/target_frac200"] <= 1
    before = np.asarray(Image.open(run / "fakes_init.png"))
    combined = np.asarray(Image.open(run / "before_after.png"))
    assert combined.shape == (before.shape[0], 2 * before.shape[1] + 8, 3)
    assert np.array_equal(combined[:, : before.shape[1]], before[..., :3])
    assert (run / "report.png").is_file()
    loss = yaml.load((run / "hparams.yaml").read_text(), Loader=yaml.FullLoader)["loss"]  # tuples in it
    assert loss["name"] == "rooted" and loss["k"] == 20.0  # the demo's default loss
    printed = capsys.readouterr().out
    assert "digits FID (digits-classifier" in printed and "not Inception" in printed


def test_demo_baseline_runs_both_losses(tmp_path):
    out = tmp_path / "demo"
    status = _demo(out, "--baseline", "--kimg", "0.016", num_gen=100)
    assert status == 0
    report = json.loads((out / "compare" / "compare.json").read_text())
    assert report["metric"] == "metrics/fid100_digits"
    assert set(report["summary"]["losses"]) == {"logistic", "rooted"}
    assert (out / "compare" / "compare.png").is_file() and (out / "compare" / "compare.md").is_file()
