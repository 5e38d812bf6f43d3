"""``rootedgan fid``: folders and networks against a data set, JSON lines, the statistics cache, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rootedgan.cli import main as cli_main
from rootedgan.metrics import Evaluator, folder_fid, make_standin_inception
from rootedgan.metrics import inception as inc
from rootedgan.networks import Generator
from rootedgan.synthetic_data import make_shapes_dataset

pytest.importorskip("cleanfid", reason="FID needs clean-fid (pip install clean-fid)")
NVIDIA_KEYS = {"results", "metric", "total_time", "total_time_str", "num_gpus", "snapshot_pkl", "timestamp"}


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
    assert record["snapshot_pkl"] == network and record["num_gen"] == 40 and record["mode"] == "clean"
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
