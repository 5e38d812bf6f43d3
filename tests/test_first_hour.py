"""The first hour of a StyleGAN user: the right torch installed, NVIDIA's flag names understood, the run
folder said, logs a person can follow, clean help, offline trials that say their numbers mean nothing."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml

from rootedgan.cli import main as cli_main
from rootedgan.training.nvidia_flags import translate

REPO = Path(__file__).resolve().parents[1]


def _make_install(tmp_path: Path, **variables: str) -> str:
    """The commands `make install` would run (dry run), with only tmp_path and the system on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_INDEX", "TORCH_SPEC", "MAKEFLAGS")}
    env["PATH"] = f"{tmp_path}:/usr/local/bin:/usr/bin:/bin"
    args = [
        "make",
        "-n",
        "-B",
        "install",
        f"VENV={tmp_path / 'venv'}",
        *(f"{k}={v}" for k, v in variables.items()),
    ]
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout


def test_make_picks_the_cpu_torch_without_a_gpu_and_pypis_with_one(tmp_path):
    no_gpu = _make_install(tmp_path)
    # PyTorch's CPU index first, PyPI's default only when that index cannot be reached
    assert '--index-url https://download.pytorch.org/whl/cpu "torch" || ' in no_gpu
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
    fake.chmod(0o755)
    gpu = _make_install(tmp_path)
    assert "--index-url" not in gpu and '-m pip install --quiet "torch"' in gpu
    own = _make_install(tmp_path, TORCH_INDEX="https://example.org/simple", TORCH_SPEC="torch==2.13.0")
    assert '--index-url https://example.org/simple "torch==2.13.0"' in own


def test_nvidia_train_flags_become_ours_and_the_mapping_is_printed(tiny32, capsys):
    argv = ["finetune", "--resume", tiny32, "--data", "faces.zip", "--outdir", "runs/x", "--cfg", "paper256",
            "--gpus", "2", "--kimg", "500", "--mirror", "1", "--aug", "noaug", "--gamma", "0.5",
            "--print_config"]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        cli_main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--batch 64 (global) -> --data.batch_size 32 per device x 2" in out
    assert "--resume" in out and "-> --model.network" in out
    cfg = yaml.safe_load(out[out.index("# lightning") :])
    model, data, trainer = cfg["model"], cfg["data"], cfg["trainer"]
    assert model["network"] == tiny32 and model["total_kimg"] == 500 and model["augment"]["kind"] == "none"
    assert model["optim"]["g_lr"] == 0.0025 and model["ema"]["kimg"] == 20.0
    assert model["reg"]["r1_gamma"] == 0.5  # --gamma after --cfg: the later one wins, as in NVIDIA's
    assert data["path"] == "faces.zip" and data["xflip"] is True and data["batch_size"] == 32
    assert str(trainer["devices"]) == "2" and trainer["default_root_dir"] == "runs/x"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--metrics", "fid50k_full"], "has no rootedgan equivalent: add rootedgan.metrics.FIDCallback"),
        (["--batch", "33", "--gpus", "2"], "--batch 33 (global) does not divide over --gpus 2"),
        (["--cfg", "auto"], "--cfg auto: use one of stylegan2, paper256"),
        (["--mirror", "maybe"], "--mirror takes a boolean"),
        (["--cfg", "stylegan3-t"], "--cfg stylegan3-t: rootedgan trains StyleGAN2 networks"),
        (
            ["--batch-gpu", "8"],
            "--batch-gpu (NVIDIA's train.py) has no rootedgan equivalent: there is no gradient",
        ),
        (
            ["--cbase=16384"],
            "--cbase (NVIDIA's train.py) has no rootedgan equivalent: the architecture comes",
        ),
    ],
)
def test_nvidia_flags_without_an_equivalent_are_one_line(capsys, argv, message):
    assert cli_main(["finetune", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_stylegan3_learning_rates_and_tick_translate():
    argv, applied = translate(["--glr", "0.0025", "--dlr=0.002", "--tick", "1"])
    assert argv == [
        "--model.optim.g_lr",
        "0.0025",
        "--model.optim.d_lr",
        "0.002",
        "--progress.tick_kimg",
        "1",
    ]
    assert applied[1] == "--dlr 0.002 -> --model.optim.d_lr 0.002"


def test_translation_keeps_our_own_options_and_their_order():
    argv, applied = translate(["--config", "c.yaml", "--kimg=10", "--model.loss", "rooted", "--seed", "3"])
    assert argv == ["--config", "c.yaml", "--model.total_kimg", "10", "--model.loss", "rooted",
                    "--model.seed", "3", "--data.seed", "3"]  # fmt: skip
    assert applied == ["--kimg 10 -> --model.total_kimg 10", "--seed 3 -> --model.seed 3 --data.seed 3"]


def test_dataset_tool_flags_work(tmp_path, shapes, capsys):
    dest = tmp_path / "out.zip"
    argv = ["dataset", "--source", str(shapes), "--dest", str(dest), "--resolution", "32x32"]
    assert cli_main(argv) == 0 and zipfile.ZipFile(dest).namelist()[0] == "00000/img00000000.png"
    assert cli_main(["dataset", str(shapes), str(tmp_path / "b.zip"), "--width", "32", "--height", "16"]) == 2
    assert "one square size" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["--version"])
    assert (
        exc.value.code == 0
        and capsys.readouterr().out.strip() == f"rootedgan {__import__('rootedgan').__version__}"
    )


def test_help_reads_clean(capsys):
    with pytest.raises(SystemExit):
        cli_main(["finetune", "--help"])
    text = capsys.readouterr().out
    for markup in ("(module docstring)", "``", ":mod:", ":class:", ":func:", ":meth:"):
        assert markup not in text, markup
