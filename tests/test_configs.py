"""Every shipped config resolves through the CLI, into the loss and settings it states, and presets carry
NVIDIA's values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rootedgan.cli import main as cli_main
from rootedgan.training.losses import make_loss
from rootedgan.training.resume import flat_settings

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "tests" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_resolves(config, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["finetune", "--config", str(config), "--print_config"])
    assert exc.value.code == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert make_loss(resolved["model"]["loss"]).name in ("rooted", "logistic")
    written = yaml.safe_load(config.read_text())["model"]
    settings = flat_settings(resolved["model"], "resolved")
    for section in ("optim", "reg", "ema", "augment"):  # every value the file states is the one resolved
        for key, value in (written.get(section) or {}).items():
            expected = list(value) if isinstance(value, (list, tuple)) else value
            assert settings[f"{section}.{key}"] == expected, f"{section}.{key}"
    assert resolved["trainer"]["use_distributed_sampler"] is False  # our sampler is rank-aware


def test_the_shipped_package_holds_only_user_configs():
    assert {c.stem for c in (REPO / "rootedgan" / "configs").glob("*.yaml")} == {
        "demo",
        "ffhq256-rooted",
        "metfaces-from-ffhq1024-rooted",
    }


@pytest.mark.parametrize(
    "name,expected",
    [
        ("ffhq256-rooted", {"optim.g_lr": 0.0025, "reg.r1_gamma": 1.0, "ema.kimg": 20.0, "batch_size": 64}),
        ("metfaces-from-ffhq1024-rooted", {"optim.g_lr": 0.002, "reg.r1_gamma": 2.0, "ema.kimg": 10.0}),
    ],
)
def test_presets_match_nvidia(name, expected):
    cfg = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    settings = {**flat_settings(cfg["model"], name), **cfg["data"]}
    for key, value in expected.items():
        assert settings[key] == value, key
    assert settings["optim.betas"] == [0.0, 0.99]
    assert settings["loss"] == make_loss("rooted:20").spec()
