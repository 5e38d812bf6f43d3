"""Every shipped config resolves through the CLI, and presets carry NVIDIA's values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rootedgan.cli import main as cli_main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_resolves(config, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["finetune", "--config", str(config), "--print_config"])
    assert exc.value.code == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["loss"] in ("rooted", "logistic")
    assert resolved["trainer"]["use_distributed_sampler"] is False  # our sampler is rank-aware


@pytest.mark.parametrize(
    "name,expected",
    [
        ("ffhq256-rooted", dict(g_lr=0.0025, r1_gamma=1.0, ema_kimg=20.0, batch_size=64, loss="rooted")),
        ("ffhq256-logistic", dict(g_lr=0.0025, r1_gamma=1.0, ema_kimg=20.0, batch_size=64, loss="logistic")),
        ("metfaces-from-ffhq1024-rooted", dict(g_lr=0.002, r1_gamma=2.0, ema_kimg=10.0, batch_size=32)),
    ],
)
def test_presets_match_nvidia(name, expected):
    cfg = yaml.safe_load((CONFIGS[0].parent / f"{name}.yaml").read_text())
    flat = {**cfg["model"], **cfg["data"]}
    for key, value in expected.items():
        assert flat[key] == value, key
    assert cfg["model"]["betas"] == [0.0, 0.99]
