"""`convert` / `generate` given a run's Lightning ``last.ckpt`` name the network snapshot to use instead."""

from __future__ import annotations

import fractions

import pytest
import torch

from rootedgan.checkpoints import lightning_checkpoint_message, load_network
from rootedgan.cli import main as cli_main
from rootedgan.errors import CheckpointError
from rootedgan.runs import newest_snapshot


def lightning_like(path, hyper_parameters=None) -> None:
    """What ``trainer.save_checkpoint`` writes (the keys Lightning 2.x uses), with a tiny state dict."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "epoch": 0,
            "global_step": 12,
            "pytorch-lightning_version": "2.5.0",
            "state_dict": {"G.mapping.fc0.weight": torch.zeros(2, 2)},
            "loops": {},
            "callbacks": {},
            "optimizer_states": [],
            "lr_schedulers": [],
            "hparams_name": "kwargs",
            "hyper_parameters": hyper_parameters or {"loss": "rooted"},
        },
        path,
    )


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "runs" / "00000-demo"
    lightning_like(run / "checkpoints" / "last.ckpt")
    for name in (
        "network-snapshot-000004.safetensors",
        "network-snapshot-000010.safetensors",
        "network-snapshot-000010.500.safetensors",
        "network-snapshot-000010.500.adapter.safetensors",
        "network-snapshot-000009.safetensors",
    ):
        (run / name).write_bytes(b"")
    return run


def test_newest_snapshot_is_by_kimg(run, tmp_path):
    assert newest_snapshot(run) == run / "network-snapshot-000010.500.safetensors"
    assert newest_snapshot(tmp_path) is None
    assert newest_snapshot(tmp_path / "missing") is None


@pytest.mark.parametrize("command", ["convert", "generate"])
def test_cli_names_the_snapshot_to_use(run, tmp_path, capsys, command):
    ckpt = run / "checkpoints" / "last.ckpt"
    if command == "convert":
        argv = ["convert", str(ckpt), str(tmp_path / "out.safetensors")]
    else:
        argv = ["generate", "--network", str(ckpt), "--seeds", "0", "--outdir", str(tmp_path / "out")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "Lightning training checkpoint" in err and "--ckpt_path" in err
    assert str(run / "network-snapshot-000010.500.safetensors") in err
    assert "rosinality" not in err


def test_without_snapshots_says_so(tmp_path):
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    lightning_like(ckpt)
    with pytest.raises(CheckpointError) as info:
        load_network(ckpt)
    assert "holds no network-snapshot-*.safetensors" in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_a_checkpoint_weights_only_cannot_read_still_gets_the_hint(run):
    ckpt = run / "checkpoints" / "kimg000010.ckpt"
    lightning_like(ckpt, hyper_parameters={"ratio": fractions.Fraction(1, 3)})  # not on torch's allow-list
    with pytest.raises(CheckpointError) as info:
        load_network(ckpt)
    assert str(info.value) == lightning_checkpoint_message(ckpt)
    assert "network-snapshot-000010.500.safetensors" in str(info.value)


def test_a_plain_torch_file_keeps_its_message(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="not a rosinality StyleGAN2 checkpoint"):
        load_network(path)
