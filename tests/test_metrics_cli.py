"""``rootedgan fid``: folders and networks against a data set, JSON lines, the statistics cache, the
protocols and their names, refusing statistics of another protocol or Inception file, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.standins import make_standin_inception
from bench.synthetic_data import make_shapes_dataset
from rootedgan.cli import main as cli_main
from rootedgan.errors import UserError
from rootedgan.metrics import Evaluator, features, folder_fid
from rootedgan.metrics import inception as inc
from rootedgan.networks import Generator

pytest.importorskip("cleanfid", reason="FID needs clean-fid (pip install clean-fid)")
NVIDIA_KEYS = {"results", "metric", "total_time", "total_time_str", "num_gpus", "snapshot_pkl", "timestamp"}
PROTOCOL_KEYS = {"protocol", "protocol_description", "inception", "inception_sha256"}


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    return make_standin_inception(tmp_path_factory.mktemp("inception") / "standin.pt")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data"), count=32, resolution=32, seed=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("images"), count=20, resolution=32, seed=5)


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ROOTEDGAN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "fid-stats"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_fid(*args: str) -> int:
    return cli_main(["fid", "--device", "cpu", "--workers", "0", "--batch", "16", *args])


def test_images_vs_data_prints_writes_jsonl_and_reuses_cached_reference(
    tmp_path, standin, data, images, cache, capsys, monkeypatch
):
    out = tmp_path / "out"
    args = ["--data", str(data), "--images", str(images), "--metrics", "fid50k_full,kid50k_full",
            "--inception", str(standin), "--outdir", str(out)]  # fmt: skip
    assert run_fid(*args) == 0
    printed = capsys.readouterr().out
    assert "reporting fid50k_full as fid20_full" in printed  # the folder holds 20 images
    fid = read_jsonl(out / "metric-fid20_full.jsonl")[0]
    kid = read_jsonl(out / "metric-kid20_full.jsonl")[0]
    assert NVIDIA_KEYS <= fid.keys() and fid["metric"] == "fid20_full" and fid["snapshot_pkl"] == str(images)
    # the protocol (NVIDIA's by default, under NVIDIA's names) and the Inception file, in every record
    digest = inc.file_digest(standin)
    for record in (fid, kid):
        assert PROTOCOL_KEYS <= record.keys() and record["protocol"] == "legacy_tensorflow"
        assert record["inception"] == str(standin) and record["inception_sha256"] == digest
    # ... and printed before any work
    assert f"Inception: {standin} (sha256 {digest}, given explicitly)" in printed
    assert printed.index("Inception:") < printed.index("reference:")
    assert f"fid20_full: {fid['results']['fid20_full']:.6g}" in printed
    assert kid["results"]["kid20_full"] > 0
    # the reference statistics (with features, for KID) are cached, keyed by content
    assert len(list(cache.glob("*.npz"))) == 1 and len(list(cache.glob("*.features.npy"))) == 1
    # same value as the library's folder-vs-folder FID
    direct = folder_fid(data, images, inception=standin, batch_size=16, num_workers=0, use_cache=False)
    assert fid["results"]["fid20_full"] == pytest.approx(direct, rel=1e-12)

    # a second run reads the reference from the cache instead of computing it
    described = []
    original = Evaluator.images_stats
    monkeypatch.setattr(
        Evaluator,
        "images_stats",
        lambda self, source, **kw: described.append(kw.get("desc")) or original(self, source, **kw),
    )
    assert run_fid(*args) == 0
    assert "reference features" not in described and described == ["features"]
    again = read_jsonl(out / "metric-fid20_full.jsonl")
    assert len(again) == 2 and again[1]["results"] == again[0]["results"]


def test_network_vs_data_and_vs_cached_statistics(tmp_path, standin, data, cache, nvidia_fixture_dir, capsys):
    network = str(nvidia_fixture_dir / "tiny32.pkl")
    out = tmp_path / "out"
    common = ["--network", network, "--num-gen", "40", "--inception", str(standin), "--outdir", str(out)]
    assert run_fid("--data", str(data), *common) == 0
    assert "fid40_full:" in capsys.readouterr().out
    record = read_jsonl(out / "metric-fid40_full.jsonl")[0]
    assert record["snapshot_pkl"] == network and record["num_gen"] == 40
    assert record["protocol"] == "legacy_tensorflow"
    # the cached statistics file can be the reference itself (the same latents: the same value)
    stats_file = next(cache.glob("*.npz"))
    assert run_fid("--data", str(stats_file), *common) == 0
    second = read_jsonl(out / "metric-fid40_full.jsonl")[1]
    assert second["results"]["fid40_full"] == pytest.approx(record["results"]["fid40_full"], rel=1e-12)


def test_missing_inception_is_a_clear_error(tmp_path, data, images, monkeypatch, capsys):
    monkeypatch.setenv("ROOTEDGAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(inc.INCEPTION_ENV, raising=False)
    monkeypatch.setattr(inc, "CLEANFID_INCEPTION_PATH", tmp_path / "none" / inc.INCEPTION_FILENAME)
    code = run_fid("--data", str(data), "--images", str(images), "--no-download", "--outdir", str(tmp_path))
    err = capsys.readouterr().err
    assert code == 2
    assert inc.INCEPTION_URL in err and "--inception" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--metrics", "is50k"], "unknown metric"),
        (["--metrics", "fid50k_full", "--bf16"], "--bf16 needs --mode fast"),
        (["--num-gen", "1"], "--num-gen must be >= 2"),
    ],
)
def test_option_errors(tmp_path, standin, data, images, extra, message, capsys):
    code = run_fid("--data", str(data), "--images", str(images), "--inception", str(standin), *extra)
    assert code == 2 and message in capsys.readouterr().err


def test_conditional_generator_draws_classes_from_labels(standin):
    torch.manual_seed(0)
    G = Generator(
        z_dim=8,
        w_dim=8,
        c_dim=3,
        img_resolution=8,
        img_channels=1,
        mapping_kwargs={"num_layers": 1},
        synthesis_kwargs={"channel_base": 64, "channel_max": 8},
    )
    ev = Evaluator(inception=standin, num_workers=0, progress=False, use_cache=False)
    labels = np.eye(3, dtype=np.float32)
    stats = ev.generator_stats(G, 6, keep_features=True, labels=labels)
    assert stats.features.shape == (6, 2048)  # grayscale repeated to RGB
    again = ev.generator_stats(G, 6, keep_features=True, labels=labels)
    np.testing.assert_array_equal(stats.features, again.features)  # seeded latents, labels and noise
    from rootedgan.errors import UserError

    with pytest.raises(UserError, match="conditional"):
        ev.generator_stats(G, 6)


def save_sizes(folder: Path, sizes: list[tuple[int, int]], seed: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.RandomState(seed)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.randint(0, 256, (h, w, 3)).astype(np.uint8)).save(folder / f"{i:02d}.png")
    return folder


@pytest.mark.parametrize("mode", ["legacy_tensorflow", "clean"])
def test_folder_vs_folder_scores_images_of_any_size(tmp_path, standin, cache, capsys, mode):
    """Neither square nor powers of two, several sizes per folder: scored like cleanfid.compute_fid(A, B)
    (whose value folder_fid equals: tests/test_metrics_cleanfid.py)."""
    a = save_sizes(tmp_path / "a", [(45, 30), (23, 61), (100, 37)] * 4, seed=0)
    b = save_sizes(tmp_path / "b", [(50, 70), (33, 33)] * 5, seed=1)
    out = tmp_path / "out"
    args = ["--data", str(a), "--images", str(b), "--metrics", "fid50k_full,kid50k_full", "--mode", mode,
            "--inception", str(standin), "--outdir", str(out)]  # fmt: skip
    assert run_fid(*args) == 0
    prefix = "clean_" if mode == "clean" else ""
    record = read_jsonl(out / f"metric-{prefix}fid10_full.jsonl")[0]
    assert record["protocol"] == mode
    kw = dict(mode=mode, inception=standin, batch_size=16, num_workers=0, use_cache=False)
    assert record["results"][f"{prefix}fid10_full"] == pytest.approx(folder_fid(a, b, **kw), rel=1e-12)
    assert read_jsonl(out / f"metric-{prefix}kid10_full.jsonl")[0]["results"][f"{prefix}kid10_full"] > 0
    assert "any size" in capsys.readouterr().out  # the reference is described as read


def test_protocol_names_and_choice(tmp_path, standin, data, images, cache, capsys):
    out = tmp_path / "out"
    common = ["--data", str(data), "--images", str(images), "--inception", str(standin), "--outdir", str(out)]
    assert run_fid(*common, "--mode", "clean") == 0
    clean = read_jsonl(out / "metric-clean_fid20_full.jsonl")[0]
    assert clean["protocol"] == "clean" and "clean_fid20_full" in clean["results"]
    # a prefixed name selects its protocol
    assert run_fid(*common, "--metrics", "clean_fid50k_full") == 0
    assert len(read_jsonl(out / "metric-clean_fid20_full.jsonl")) == 2
    assert run_fid(*common, "--mode", "fast") == 0
    fast = read_jsonl(out / "metric-approx_clean_fid20_full.jsonl")[0]
    assert fast["protocol"] == "fast"
    assert run_fid(*common) == 0
    nvidia = read_jsonl(out / "metric-fid20_full.jsonl")[0]
    assert nvidia["protocol"] == "legacy_tensorflow"
    # the protocols differ on the same images: that is why their names differ
    assert nvidia["results"]["fid20_full"] != pytest.approx(clean["results"]["clean_fid20_full"], rel=1e-3)
    capsys.readouterr()
    for extra, message in (
        (["--metrics", "fid50k_full,approx_clean_kid50k_full,clean_fid50k_full"], "mixes protocols"),
        (["--metrics", "clean_fid50k_full", "--mode", "legacy_tensorflow"], "clean protocol's"),
        (["--metrics", "fid50k_full", "--mode", "clean", "--bf16"], "--bf16 needs --mode fast"),
    ):
        assert run_fid(*common, *extra) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_statistics_of_another_inception_file_or_protocol_are_refused(
    tmp_path, standin, data, images, cache, capsys
):
    """The reported bug: statistics made with another Inception file were used silently (FID 1538.7 instead
    of 426.9 on the same images). Every statistics file now records its protocol and Inception sha256."""
    out = tmp_path / "out"
    common = ["--images", str(images), "--outdir", str(out)]
    assert run_fid("--data", str(data), "--inception", str(standin), *common) == 0
    stats_file = next(cache.glob("*.npz"))
    meta = json.loads(str(np.load(stats_file)["meta"]))
    assert meta["protocol"] == "legacy_tensorflow" and meta["inception_sha256"] == inc.file_digest(standin)
    other = make_standin_inception(tmp_path / "other.pt", seed=1)
    capsys.readouterr()
    assert run_fid("--data", str(stats_file), "--inception", str(other), *common) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "Inception sha256" in err and inc.file_digest(other)[:16] in err and str(other) in err
    assert run_fid("--data", str(stats_file), "--inception", str(standin), "--mode", "clean", *common) == 2
    assert "protocol legacy_tensorflow, not clean" in capsys.readouterr().err
    # the same file with the same Inception file and protocol is used as before
    assert run_fid("--data", str(stats_file), "--inception", str(standin), *common) == 0
    # clean-fid's own files record nothing but their mode, in the file name
    with np.load(stats_file) as d:
        mu, sigma = d["mu"], d["sigma"]
    named = tmp_path / "mydata_clean_custom_na.npz"
    np.savez(named, mu=mu, sigma=sigma)
    assert run_fid("--data", str(named), "--inception", str(standin), *common) == 2
    assert "protocol clean, not legacy_tensorflow" in capsys.readouterr().err
    bare = tmp_path / "bare.npz"
    np.savez(bare, mu=mu, sigma=sigma)
    assert run_fid("--data", str(bare), "--inception", str(standin), *common) == 0
    assert "records neither its FID protocol nor its Inception file" in capsys.readouterr().out


def test_statistics_cache_entries_record_and_check_their_protocol(tmp_path, standin, data, cache):
    from rootedgan.data import ImageDataset
    from rootedgan.metrics import DatasetImages
    from rootedgan.metrics import cache as stats_cache

    ev = Evaluator(inception=standin, num_workers=0, progress=False)
    source = DatasetImages(ImageDataset(data))
    ev.reference_stats(source)
    key, meta = stats_cache.cache_key(source.content_key(), ev.protocol())
    assert stats_cache.load_stats(key, expect=meta).meta["inception_sha256"] == inc.file_digest(standin)
    # an entry whose stored facts do not match its key is not used (recomputed by the caller)
    with pytest.warns(UserWarning, match="inception_sha256 differ"):
        assert stats_cache.load_stats(key, expect={**meta, "inception_sha256": "0" * 64}) is None
    # the protocols never share entries
    clean = Evaluator(inception=standin, num_workers=0, progress=False, mode="clean")
    assert stats_cache.cache_key(source.content_key(), clean.protocol())[0] != key


def test_one_image_is_a_one_line_error(tmp_path, standin, data, capsys):
    one = save_sizes(tmp_path / "one", [(32, 32)], seed=0)
    for args in (["--data", str(data), "--images", str(one)], ["--data", str(one), "--images", str(data)]):
        code = run_fid(*args, "--inception", str(standin), "--outdir", str(tmp_path), "--no-cache")
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"{one} has 1 image" in err and "at least 2" in err and "Traceback" not in err
    with pytest.raises(UserError, match="has 1 image"):
        folder_fid(one, data, inception=standin, num_workers=0, use_cache=False)


def test_default_workers_stay_within_the_usable_cores(monkeypatch, standin):
    assert 1 <= features.default_workers() <= min(4, features.usable_cores())
    monkeypatch.setattr(features, "usable_cores", lambda: 1)
    assert features.default_workers() == 1
    assert Evaluator(inception=standin, progress=False).extractor.num_workers == 1
    assert Evaluator(inception=standin, progress=False, num_workers=3).extractor.num_workers == 3


def test_folder_images_mirror_any_size(tmp_path):
    a = save_sizes(tmp_path / "a", [(5, 7), (9, 4)], seed=0)
    plain, mirrored = features.FolderImages(a), features.FolderImages(a, xflip=True)
    assert len(mirrored) == 2 * len(plain) == 4
    for i in range(2):
        np.testing.assert_array_equal(mirrored.image(i), plain.image(i))
        np.testing.assert_array_equal(mirrored.image(i + 2), plain.image(i)[:, ::-1])
    assert mirrored.content_key() != plain.content_key()  # cached separately
