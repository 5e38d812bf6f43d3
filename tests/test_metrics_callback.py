"""FID during finetuning (``FIDCallback``) and statistics combined over ``torch.distributed`` ranks."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from conftest import SMOKE
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from bench.standins import make_standin_inception
from rootedgan.data import ImageDataModule
from rootedgan.metrics import FIDCallback
from rootedgan.training.module import FinetuneModule

pytest.importorskip("cleanfid", reason="FID needs clean-fid (pip install clean-fid)")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    return make_standin_inception(tmp_path_factory.mktemp("inception") / "standin.pt")


@pytest.mark.filterwarnings("ignore:Using ModelCheckpoint with manual optimization")
def test_callback_logs_fid_every_n_kimg_and_modelcheckpoint_keeps_the_best(
    tmp_path, shapes, standin, nvidia_fixture_dir, monkeypatch
):
    monkeypatch.setenv("ROOTEDGAN_CACHE", str(tmp_path / "cache"))
    fid = FIDCallback(every_kimg=0.008, num_gen=16, inception=str(standin), batch_size=16, num_workers=0)
    assert fid.monitor == "metrics/fid16_full"
    best = ModelCheckpoint(
        dirpath=tmp_path / "best", monitor=fid.monitor, mode="min", save_top_k=1, every_n_train_steps=1,
        filename="best-fid",
    )  # fmt: skip
    module = FinetuneModule(
        network=str(nvidia_fixture_dir / "tiny32.pkl"),
        total_kimg=0.016,
        reg=dict(r1_interval=2, pl_interval=2),
        seed=1,
    )
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=-1, logger=CSVLogger(tmp_path, name="logs"),
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
        default_root_dir=str(tmp_path), callbacks=[fid, best],
    )  # fmt: skip
    trainer.fit(module, ImageDataModule(str(shapes), batch_size=4, num_workers=0, seed=1))

    # before training, after 8 and after 16 images (the end is not evaluated twice)
    assert [round(r["kimg"], 3) for r in fid.history] == [0.0, 0.008, 0.016]
    values = [r["results"]["fid16_full"] for r in fid.history]
    assert all(np.isfinite(values)) and all(v > 0 for v in values)
    run = Path(trainer.log_dir)
    lines = [json.loads(line) for line in (run / "metric-fid16_full.jsonl").read_text().splitlines()]
    assert [line["results"] for line in lines] == [r["results"] for r in fid.history]
    assert {"results", "metric", "total_time", "snapshot_pkl", "timestamp"} <= lines[0].keys()
    # NVIDIA's protocol by default, under NVIDIA's name; the protocol and Inception file in every record
    from rootedgan.metrics.inception import file_digest

    assert all(line["protocol"] == "legacy_tensorflow" for line in lines)
    assert all(line["inception_sha256"] == file_digest(standin) for line in lines)
    # logged in the loop for ModelCheckpoint (and in the logger; the start value straight to it)
    assert float(trainer.callback_metrics[fid.monitor]) == values[-1]  # float64, not rounded
    assert best.best_model_path.endswith("best-fid.ckpt") and Path(best.best_model_path).exists()
    assert float(best.best_model_score) == min(values[1:])
    with open(run / "metrics.csv") as fh:
        logged = [float(row[fid.monitor]) for row in csv.DictReader(fh) if row.get(fid.monitor)]
    assert logged == values
    # the reference statistics were cached once
    assert len(list((tmp_path / "cache" / "fid-stats").glob("*.npz"))) == 1


def test_callback_names_state_the_protocol():
    from rootedgan.errors import UserError

    assert FIDCallback(num_gen=50000).monitor == "metrics/fid50k_full"  # NVIDIA's protocol and name
    clean = FIDCallback(num_gen=16, mode="clean", kid=True)
    assert (clean.monitor, clean.kid_name) == ("metrics/clean_fid16_full", "clean_kid16_full")
    assert FIDCallback(num_gen=1000, mode="fast").monitor == "metrics/approx_clean_fid1k_full"
    with pytest.raises(ValueError, match="bf16 needs mode 'fast'"):
        FIDCallback(bf16=True)
    with pytest.raises(UserError, match="unknown FID protocol"):
        FIDCallback(mode="tensorflow")


DDP_SCRIPT = """
import os, sys
import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

def small_generator():
    from rootedgan.networks import Generator
    torch.manual_seed(3)
    return Generator(z_dim=16, w_dim=16, c_dim=0, img_resolution=16, img_channels=3,
                     mapping_kwargs={"num_layers": 1},
                     synthesis_kwargs={"channel_base": 256, "channel_max": 16}).eval()

def run(rank, world, out, standin, data, port):
    from rootedgan.data import ImageDataset
    from rootedgan.metrics import DatasetImages, Evaluator
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    ev = Evaluator(inception=standin, num_workers=0, progress=False, cache_dir=os.path.join(out, "cache"))
    source = DatasetImages(ImageDataset(data, xflip=True))
    ref = ev.reference_stats(source, keep_features=True)        # computed by both ranks, cached
    ref_again = ev.reference_stats(source, keep_features=True)  # read from the cache by rank 0, shared
    gen = ev.generator_stats(small_generator(), 300, keep_features=True)  # 2 latent chunks: 1 per rank
    fid, kid = ev.fid(ref, gen), ev.kid(ref, gen)
    np.savez(os.path.join(out, f"w{world}r{rank}.npz"), ref_mu=ref.mu, ref_sigma=ref.sigma,
             again_mu=ref_again.mu, mu=gen.mu, sigma=gen.sigma, feats=gen.features, fid=fid, kid=kid,
             count=gen.count)
    if world > 1:
        dist.destroy_process_group()

if __name__ == "__main__":
    out, standin, data, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    mp.spawn(run, args=(2, out, standin, data, port), nprocs=2)
"""


def test_two_ranks_combine_to_the_single_process_statistics(tmp_path, shapes, standin):
    script = tmp_path / "ddp_fid.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    port = 29500 + os.getpid() % 1000
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(standin), str(shapes), str(port)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    namespace: dict = {}
    exec(compile(textwrap.dedent(DDP_SCRIPT).split("if __name__")[0], "ddp_fid", "exec"), namespace)
    namespace["run"](0, 1, str(tmp_path), str(standin), str(shapes), port)  # the same, in one process
    single = np.load(tmp_path / "w1r0.npz")
    for rank in (0, 1):
        ddp = np.load(tmp_path / f"w2r{rank}.npz")
        assert int(ddp["count"]) == 300
        np.testing.assert_array_equal(ddp["feats"], single["feats"])  # the same images, in order
        np.testing.assert_allclose(ddp["mu"], single["mu"], rtol=1e-12)
        np.testing.assert_allclose(ddp["sigma"], single["sigma"], rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(ddp["ref_mu"], single["ref_mu"], rtol=1e-12)
        np.testing.assert_array_equal(ddp["again_mu"], ddp["ref_mu"])
        assert float(ddp["fid"]) == pytest.approx(float(single["fid"]), rel=1e-9)
        assert float(ddp["kid"]) == pytest.approx(float(single["kid"]), rel=1e-9)
    # both ranks report the identical value (computed on rank 0, broadcast)
    assert float(np.load(tmp_path / "w2r0.npz")["fid"]) == float(np.load(tmp_path / "w2r1.npz")["fid"])


@pytest.mark.slow
def test_callback_from_yaml_under_two_process_ddp(tmp_path, shapes, standin, nvidia_fixture_dir):
    config = tmp_path / "fid.yaml"
    config.write_text(
        textwrap.dedent(f"""
        trainer:
          callbacks:
            - class_path: rootedgan.metrics.FIDCallback
              init_args: {{every_kimg: 0.032, num_gen: 24, inception: {standin}, num_workers: 0,
                           batch_size: 8, at_start: false}}
        """)
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1", ROOTEDGAN_CACHE=str(tmp_path / "cache"))
    cmd = [
        sys.executable, "-m", "rootedgan.cli", "finetune", "--config", SMOKE,
        "--config", str(config), "--network", str(nvidia_fixture_dir / "tiny32.pkl"),
        "--data.path", str(shapes), "--data.batch_size", "4", "--trainer.devices", "2",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next(tmp_path.glob("lightning_logs/version_*"))
    lines = [json.loads(line) for line in (run / "metric-fid24_full.jsonl").read_text().splitlines()]
    assert [round(line["kimg"], 3) for line in lines] == [0.032, 0.064]  # written once (rank 0)
    # NVIDIA's num_gpus counts GPUs: 0 for two CPU processes
    assert all(line["num_gpus"] == 0 and line["results"]["fid24_full"] > 0 for line in lines)
    assert "metrics/fid24_full" in (run / "metrics.csv").read_text().splitlines()[0]
