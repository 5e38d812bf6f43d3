"""Equivalence with clean-fid under both protocols: the same stand-in Inception torchscript on both sides.

Every comparison runs for NVIDIA's protocol (clean-fid's ``mode="legacy_tensorflow"``: no resize outside
the network, the file's own ``forward`` resizes) and for clean-fid's ``mode="clean"``. clean-fid builds
its feature extractor from ``/tmp/inception-2015-12-05.pt`` (downloading it when missing); here it gets
the stand-in through ``compute_fid(custom_feat_extractor=...)`` (its own ``InceptionV3W`` wrapper around
the file, with ``resize_inside`` as ``build_feature_extractor`` sets it for the mode) and, for
``compute_kid`` (no such argument), by replacing ``cleanfid.fid.build_feature_extractor``. The stand-in
(:func:`bench.standins.make_standin_inception`) resizes inside its ``forward`` like NVIDIA's file
(TensorFlow 1's bilinear resize), so the legacy path is exercised as with the real file.

clean-fid averages features in float32 (``np.mean``) and computes KID kernels in float32, so values
agree to about 1e-7 relative, not to the last bit; the features themselves are bit-identical when both
sides batch the same images together.

The end-to-end FID comparisons are marked slow: clean-fid's ``scipy.linalg.sqrtm`` on 2048x2048
takes 10-15 s on two idle cores.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.standins import make_standin_inception
from bench.synthetic_data import make_shapes_dataset
from rootedgan.data import ImageDataset
from rootedgan.metrics import (
    DatasetImages,
    Evaluator,
    FolderImages,
    folder_fid,
    folder_kid,
)
from rootedgan.metrics._cleanfid_import import import_cleanfid
from rootedgan.metrics.features import to_uint8_nchw
from rootedgan.networks import Generator

pytest.importorskip("cleanfid", reason="FID needs clean-fid (pip install clean-fid)")
CPU = torch.device("cpu")
BATCH = 8
PROTOCOLS = ["legacy_tensorflow", "clean"]


@pytest.fixture(scope="module")
def cleanfid():
    return import_cleanfid()


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    return make_standin_inception(tmp_path_factory.mktemp("inception") / "inception-2015-12-05.pt")


@pytest.fixture(scope="module")
def cf_models(cleanfid, standin) -> dict:
    """clean-fid's own wrappers of the stand-in, per mode (as its ``build_feature_extractor`` makes them)."""
    from cleanfid.inception_torchscript import InceptionV3W

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load
        return {
            mode: InceptionV3W(
                str(standin.parent), download=False, resize_inside=mode == "legacy_tensorflow"
            ).eval()
            for mode in PROTOCOLS
        }


@pytest.fixture(scope="module")
def cf_model(cf_models):
    return cf_models["clean"]


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


@pytest.fixture(scope="module")
def any_size_folders(tmp_path_factory) -> tuple[Path, Path]:
    """Two folders of images that are neither square nor powers of two, of several sizes in each folder
    (what ``rootedgan fid --data A --images B`` used to refuse and ``cleanfid.compute_fid(A, B)`` scores)."""
    rng = np.random.RandomState(4)
    folders = []
    for name, sizes, count in (
        ("any_a", [(45, 30), (23, 61), (100, 37)], 21),
        ("any_b", [(50, 70), (33, 33)], 16),
    ):
        folder = tmp_path_factory.mktemp(name)
        for i in range(count):
            h, w = sizes[i % len(sizes)]
            arr = rng.randint(0, 256, (h, w, 3)).astype(np.uint8)
            if name == "any_b":  # a visibly different set: bright, with a flat block
                arr = np.clip(arr.astype(int) + 90, 0, 255).astype(np.uint8)
                arr[h // 4 : h // 2, w // 4 : w // 2] = rng.randint(0, 256, 3)
            Image.fromarray(arr).save(folder / f"{i:03d}.png")
        folders.append(folder)
    return folders[0], folders[1]


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


@pytest.mark.parametrize("mode", PROTOCOLS)
def test_folder_features_are_bit_identical_to_cleanfid(cleanfid, cf_models, standin, folders, mode):
    a, _ = folders
    ref = cleanfid.get_folder_features(
        str(a), cf_models[mode], num_workers=0, batch_size=BATCH, device=CPU, mode=mode, verbose=False
    )
    ev = evaluator(standin, mode=mode)
    ours = ev.images_stats(FolderImages(a), keep_features=True)
    np.testing.assert_array_equal(ours.features, ref)
    # the data-set reader (training rules) yields the same pixels for square RGB PNGs
    dataset = ev.images_stats(DatasetImages(ImageDataset(a)), keep_features=True)
    np.testing.assert_array_equal(dataset.features, ref)
    np.testing.assert_allclose(ours.mu, ref.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(ours.sigma, np.cov(ref, rowvar=False), rtol=1e-9, atol=1e-15)
    # the two protocols do differ on the same images (32x32 upscaled bilinearly vs bicubically)
    other = evaluator(standin, mode="clean" if mode == "legacy_tensorflow" else "legacy_tensorflow")
    assert np.abs(other.images_stats(FolderImages(a), keep_features=True).features - ref).max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("mode", PROTOCOLS)
def test_folder_fid_of_any_image_size_equals_cleanfid_compute_fid(
    cleanfid, cf_models, standin, any_size_folders, mode
):
    a, b = any_size_folders
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqrtm's deprecated disp / singular-matrix warnings
        # batch_size=1: clean-fid cannot stack images of different sizes (legacy_tensorflow resizes inside)
        ref = cleanfid.compute_fid(
            str(a), str(b), mode=mode, num_workers=0, batch_size=1, device=CPU,
            custom_feat_extractor=cf_models[mode], verbose=False,
        )  # fmt: skip
    ours = folder_fid(
        a, b, mode=mode, inception=standin, device=CPU, batch_size=BATCH, num_workers=0, use_cache=False
    )
    assert ref > 10
    assert ours == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("mode", PROTOCOLS)
def test_folder_features_of_any_image_size_equal_cleanfid(
    cleanfid, cf_models, standin, any_size_folders, mode
):
    """Images of one size are batched together here (one batch per size group); clean-fid, one by one."""
    a, _ = any_size_folders
    ref = cleanfid.get_folder_features(
        str(a), cf_models[mode], num_workers=0, batch_size=1, device=CPU, mode=mode, verbose=False
    )
    ours = evaluator(standin, mode=mode, batch_size=1).images_stats(FolderImages(a), keep_features=True)
    np.testing.assert_array_equal(ours.features, ref)
    batched = evaluator(standin, mode=mode).images_stats(FolderImages(a), keep_features=True)
    np.testing.assert_allclose(batched.features, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", PROTOCOLS)
def test_folder_kid_equals_cleanfid_compute_kid(cleanfid, cf_models, standin, folders, monkeypatch, mode):
    a, b = folders
    monkeypatch.setattr(cleanfid, "build_feature_extractor", lambda *args, **kwargs: cf_models[mode])
    np.random.seed(123)  # clean-fid draws the KID subsets from numpy's global generator
    ref = cleanfid.compute_kid(
        str(a), str(b), mode=mode, num_workers=0, batch_size=BATCH, device=CPU, verbose=False
    )
    ours = folder_kid(
        a, b, seed=123, mode=mode, inception=standin, device=CPU, batch_size=BATCH, num_workers=0
    )
    assert ref > 0.1
    assert ours == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("mode", PROTOCOLS)
def test_generator_features_are_bit_identical_to_cleanfid(cleanfid, cf_models, standin, mode):
    G = small_generator()
    num_gen = 36  # not a multiple of the batch: clean-fid generates 40 and keeps the first 36
    seen: list[torch.Tensor] = []
    torch.manual_seed(0)
    ref_feats = cleanfid.get_model_features(
        cleanfid_gen(G, seen), cf_models[mode], mode=mode, z_dim=G.z_dim, num_gen=num_gen, batch_size=BATCH,
        device=CPU, verbose=False,
    )  # fmt: skip
    ev = evaluator(standin, mode=mode)
    ours = ev.generator_stats(G, num_gen, keep_features=True, latents=torch.cat(seen), noise_mode="const")
    np.testing.assert_array_equal(ours.features, ref_feats)


@pytest.mark.parametrize("mode", [*PROTOCOLS, "fast"])
def test_inception_gets_contiguous_nchw_batches_as_in_cleanfid(standin, folders, mode, monkeypatch):
    """clean-fid hands Inception contiguous NCHW batches; a channels-last view of the same values makes oneDNN
    pick other kernels (features ~1e-6 off on AVX2 CPUs, equal on AVX-512 ones), so the layout is checked."""
    ev = evaluator(standin, mode=mode)
    forward, layouts = ev.extractor.inception.forward, []

    def spy(x):
        layouts.append(x.is_contiguous())
        return forward(x)

    monkeypatch.setattr(ev.extractor.inception, "forward", spy)
    ev.generator_stats(small_generator(), 10, keep_features=True, seed=0, noise_mode="const")
    ev.images_stats(FolderImages(folders[0]))
    assert len(layouts) >= 3 and all(layouts)


@pytest.mark.slow
@pytest.mark.parametrize("mode", PROTOCOLS)
def test_generator_fid_equals_cleanfid_gen_path(cleanfid, cf_models, standin, folders, mode):
    _, b = folders
    G = small_generator()
    num_gen = 36
    seen: list[torch.Tensor] = []
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = cleanfid.compute_fid(
            gen=cleanfid_gen(G, seen), fdir2=str(b), mode=mode, num_gen=num_gen, z_dim=G.z_dim,
            batch_size=BATCH, device=CPU, num_workers=0, custom_feat_extractor=cf_models[mode], verbose=False,
        )  # fmt: skip
    latents = torch.cat(seen)[:num_gen]
    ev = evaluator(standin, mode=mode)
    gen = ev.generator_stats(G, num_gen, keep_features=True, latents=latents, noise_mode="const")
    ours = ev.fid(ev.images_stats(FolderImages(b)), gen)
    assert ours == pytest.approx(ref, rel=1e-6)


def test_fast_path_stays_close_to_the_clean_path(standin, folders):
    """The GPU approximation of the clean protocol (here run on the CPU): torch's antialiased bicubic
    instead of PIL's, float32."""
    a, b = folders
    exact = evaluator(standin, mode="clean")
    fast = evaluator(standin, mode="fast")
    ea, eb = (exact.images_stats(FolderImages(p), keep_features=True) for p in (a, b))
    fa, fb = (fast.images_stats(FolderImages(p), keep_features=True) for p in (a, b))
    rel = np.abs(fa.features - ea.features).max() / np.abs(ea.features).max()
    assert rel < 1e-4
    fid_exact, fid_fast = exact.fid(ea, eb), fast.fid(fa, fb)
    assert fid_fast == pytest.approx(fid_exact, rel=1e-4)
