"""Equivalence with clean-fid: the same stand-in Inception torchscript is given to both sides.

clean-fid builds its own "clean" feature extractor from ``/tmp/inception-2015-12-05.pt`` (downloading it
when missing); here it gets the stand-in through ``compute_fid(custom_feat_extractor=...)`` (its own
``InceptionV3W`` wrapper around the file) and, for ``compute_kid`` (no such argument), by replacing
``cleanfid.fid.build_feature_extractor``. clean-fid averages features in float32 (``np.mean``) and
computes KID kernels in float32, so values agree to about 1e-7 relative, not to the last bit; the
features themselves are bit-identical.

The two end-to-end FID comparisons are marked slow: clean-fid's ``scipy.linalg.sqrtm`` on 2048x2048
takes 10-15 s on two cores.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rootedgan.data import ImageDataset
from rootedgan.metrics import (
    DatasetImages,
    Evaluator,
    FolderImages,
    folder_fid,
    folder_kid,
    make_standin_inception,
)
from rootedgan.metrics._cleanfid_import import import_cleanfid
from rootedgan.metrics.features import to_uint8_nchw
from rootedgan.networks import Generator
from rootedgan.synthetic_data import make_shapes_dataset

pytest.importorskip("cleanfid", reason="FID needs clean-fid (pip install clean-fid)")
CPU = torch.device("cpu")
BATCH = 8


@pytest.fixture(scope="module")
def cleanfid():
    return import_cleanfid()


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    return make_standin_inception(tmp_path_factory.mktemp("inception") / "inception-2015-12-05.pt")


@pytest.fixture(scope="module")
def cf_model(cleanfid, standin):
    from cleanfid.inception_torchscript import InceptionV3W

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load
        return InceptionV3W(str(standin.parent), download=False).eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    """Two visibly different sets: 30 shapes and 24 bright noisy squares (32x32 PNG)."""
    a = make_shapes_dataset(tmp_path_factory.mktemp("set_a"), count=30, resolution=32, seed=1)
    b = tmp_path_factory.mktemp("set_b")
    rng = np.random.RandomState(2)
    for i in range(24):
        arr = rng.randint(90, 256, (32, 32, 3)).astype(np.uint8)
        arr[6:22, 10:26] = rng.randint(0, 256, 3)
        Image.fromarray(arr).save(b / f"{i:03d}.png")
    return a, b


def evaluator(standin: Path, **kwargs) -> Evaluator:
    kwargs = {"batch_size": BATCH, "num_workers": 0, "progress": False, "use_cache": False, **kwargs}
    return Evaluator(inception=standin, device=CPU, **kwargs)


def small_generator() -> Generator:
    torch.manual_seed(3)
    return Generator(
        z_dim=16,
        w_dim=16,
        c_dim=0,
        img_resolution=16,
        img_channels=3,
        mapping_kwargs={"num_layers": 1},
        synthesis_kwargs={"channel_base": 256, "channel_max": 16},
    ).eval()


def cleanfid_gen(G: Generator, seen: list[torch.Tensor]):
    """clean-fid's ``gen``: z -> images in [0, 255] (ours rounded to uint8 as saved PNGs would be);
    records the latents clean-fid draws, so that our path can be given the same ones."""

    def gen(z: torch.Tensor) -> torch.Tensor:
        seen.append(z.clone())
        with torch.no_grad():
            img = G(z, torch.zeros([len(z), 0]), noise_mode="const")
        return to_uint8_nchw(img).float()

    return gen


def test_folder_features_are_bit_identical_to_cleanfid(cleanfid, cf_model, standin, folders):
    a, _ = folders
    ref = cleanfid.get_folder_features(
        str(a), cf_model, num_workers=0, batch_size=BATCH, device=CPU, mode="clean", verbose=False
    )
    ev = evaluator(standin)
    ours = ev.images_stats(FolderImages(a), keep_features=True)
    np.testing.assert_array_equal(ours.features, ref)
    # the data-set reader (training rules) yields the same pixels for square RGB PNGs
    dataset = ev.images_stats(DatasetImages(ImageDataset(a)), keep_features=True)
    np.testing.assert_array_equal(dataset.features, ref)
    np.testing.assert_allclose(ours.mu, ref.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(ours.sigma, np.cov(ref, rowvar=False), rtol=1e-9, atol=1e-15)


@pytest.mark.slow
def test_folder_fid_equals_cleanfid_compute_fid(cleanfid, cf_model, standin, folders):
    a, b = folders
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqrtm's deprecated disp / singular-matrix warnings
        ref = cleanfid.compute_fid(
            str(a), str(b), mode="clean", num_workers=0, batch_size=BATCH, device=CPU,
            custom_feat_extractor=cf_model, verbose=False,
        )  # fmt: skip
    ours = folder_fid(a, b, inception=standin, device=CPU, batch_size=BATCH, num_workers=0, use_cache=False)
    assert ref > 10
    assert ours == pytest.approx(ref, rel=1e-6)


def test_folder_kid_equals_cleanfid_compute_kid(cleanfid, cf_model, standin, folders, monkeypatch):
    a, b = folders
    monkeypatch.setattr(cleanfid, "build_feature_extractor", lambda *args, **kwargs: cf_model)
    np.random.seed(123)  # clean-fid draws the KID subsets from numpy's global generator
    ref = cleanfid.compute_kid(str(a), str(b), num_workers=0, batch_size=BATCH, device=CPU, verbose=False)
    ours = folder_kid(a, b, seed=123, inception=standin, device=CPU, batch_size=BATCH, num_workers=0)
    assert ref > 0.1
    assert ours == pytest.approx(ref, rel=1e-6)


@pytest.mark.slow
def test_generator_fid_equals_cleanfid_gen_path(cleanfid, cf_model, standin, folders):
    _, b = folders
    G = small_generator()
    num_gen = 36  # not a multiple of the batch: clean-fid generates 40 and keeps the first 36
    seen: list[torch.Tensor] = []
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = cleanfid.compute_fid(
            gen=cleanfid_gen(G, seen), fdir2=str(b), mode="clean", num_gen=num_gen, z_dim=G.z_dim,
            batch_size=BATCH, device=CPU, num_workers=0, custom_feat_extractor=cf_model, verbose=False,
        )  # fmt: skip
    latents = torch.cat(seen)[:num_gen]
    ev = evaluator(standin)
    gen = ev.generator_stats(G, num_gen, keep_features=True, latents=latents, noise_mode="const")
    ours = ev.fid(ev.images_stats(FolderImages(b)), gen)
    assert ours == pytest.approx(ref, rel=1e-6)
    # and feature for feature (clean-fid's generator path alone)
    seen.clear()
    torch.manual_seed(0)
    ref_feats = cleanfid.get_model_features(
        cleanfid_gen(G, seen), cf_model, mode="clean", z_dim=G.z_dim, num_gen=num_gen, batch_size=BATCH,
        device=CPU, verbose=False,
    )  # fmt: skip
    again = ev.generator_stats(G, num_gen, keep_features=True, latents=torch.cat(seen), noise_mode="const")
    np.testing.assert_array_equal(again.features, ref_feats)


def test_fast_path_stays_close_to_the_exact_path(standin, folders):
    """The GPU path (here run on the CPU): torch's antialiased bicubic instead of PIL's, float32."""
    a, b = folders
    exact = evaluator(standin)
    fast = evaluator(standin, mode="fast")
    ea, eb = (exact.images_stats(FolderImages(p), keep_features=True) for p in (a, b))
    fa, fb = (fast.images_stats(FolderImages(p), keep_features=True) for p in (a, b))
    rel = np.abs(fa.features - ea.features).max() / np.abs(ea.features).max()
    assert rel < 1e-4
    fid_exact, fid_fast = exact.fid(ea, eb), fast.fid(fa, fb)
    assert fid_fast == pytest.approx(fid_exact, rel=1e-4)
