"""The finetune application end to end on CPU: CLI smoke run, exact resume, phase counts, the
non-finite guard, FreezeD, the EMA rule, two-process DDP (gloo) and readable config errors."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import SMOKE

from rootedgan.checkpoints import load_network, save_network
from rootedgan.cli import main as cli_main
from rootedgan.data import ImageDataModule
from rootedgan.training.losses import Rooted
from rootedgan.training.module import (
    FinetuneModule,
    NonFiniteTrainingError,
    d_layers_from_input,
    finite_output,
)
from rootedgan.training.snapshots import NetworkSnapshot

REPO = Path(__file__).resolve().parents[1]


def fit(root: Path, data: Path, ckpt: str | None = None, callbacks=None, **model_kwargs) -> tuple:
    kwargs = dict(reg=dict(r1_interval=2, pl_interval=2), ema=dict(kimg=0.01), seed=1)
    kwargs.update(model_kwargs)
    module = FinetuneModule(**kwargs)
    datamodule = ImageDataModule(str(data), batch_size=4, num_workers=0)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=-1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, use_distributed_sampler=False,
        default_root_dir=str(root), callbacks=callbacks or [],
    )  # fmt: skip
    trainer.fit(module, datamodule, ckpt_path=ckpt)
    return module, trainer


def test_cli_smoke_finetune_writes_snapshots_logs_and_resume_checkpoint(tmp_path, shapes, tiny32):
    code = cli_main(
        ["finetune", "--config", SMOKE, "--network", tiny32,
         "--data.path", str(shapes), "--trainer.default_root_dir", str(tmp_path),
         "--trainer.enable_progress_bar", "false"]
    )  # fmt: skip
    assert code == 0
    run = next(tmp_path.glob("lightning_logs/version_*"))
    for name in ["config.yaml", "fakes_init.png", "reals.png", "checkpoints/last.ckpt", "metrics.csv"]:
        assert (run / name).exists(), name
    snapshots = sorted(run.glob("network-snapshot-*.safetensors"))
    assert snapshots
    nets = load_network(str(snapshots[-1]))
    assert nets["meta"]["format"] == "native"
    provenance = nets["meta"].get("meta", nets["meta"])
    assert "rooted:2" in json.dumps(provenance)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    losses = [float(r["Loss/G/loss"]) for r in rows if r.get("Loss/G/loss")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert float(rows[-1]["kimg"]) >= 0.064
    # the snapshot drives `generate`
    out = tmp_path / "gen"
    assert (
        cli_main(["generate", "--network", str(snapshots[-1]), "--seeds", "0-3", "--outdir", str(out)]) == 0
    )
    assert len(list(out.glob("seed*.png"))) == 4


def test_resume_is_exact(tmp_path, shapes, tiny32):
    """2 + 2 steps from a checkpoint == 4 steps straight: weights, G_ema, pl_mean, counters, optimizers."""
    snap = dict(snap_kimg=0, grid_seeds=4)
    full, full_trainer = fit(tmp_path / "a", shapes, network=tiny32, total_kimg=0.016,
                             callbacks=[NetworkSnapshot(**snap)])  # fmt: skip
    fit(tmp_path / "b", shapes, network=tiny32, total_kimg=0.008, callbacks=[NetworkSnapshot(**snap)])
    ckpt = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    resumed, resumed_trainer = fit(tmp_path / "c", shapes, ckpt=str(ckpt), network=tiny32, total_kimg=0.016,
                                   callbacks=[NetworkSnapshot(**snap)])  # fmt: skip
    assert int(full.step_idx) == int(resumed.step_idx) == 4
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for opt_a, opt_b in zip(full_trainer.optimizers, resumed_trainer.optimizers, strict=True):
        for sa, sb in zip(
            opt_a.state_dict()["state"].values(), opt_b.state_dict()["state"].values(), strict=True
        ):
            assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert full.phase_counts == resumed.phase_counts


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (dict(reg=dict(pl_interval=2, r1_interval=4)), dict(Gmain=8, Greg=4, Dmain=8, Dreg=2)),
        (dict(reg=dict(pl_weight=0.0, r1_gamma=0.0)), dict(Gmain=8, Greg=0, Dmain=8, Dreg=0)),
    ],
)
def test_phase_counts(tmp_path, shapes, tiny32, overrides, expected):
    module, _ = fit(tmp_path, shapes, network=tiny32, total_kimg=0.032, **overrides)
    assert module.phase_counts == expected
    assert int(module.cur_nimg) == 32


class NaNGeneratorLoss(Rooted):
    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return super().generator(fake_logits) * float("nan")


def test_nonfinite_steps_are_skipped_counted_and_stop_training(tmp_path, shapes, tiny32):
    module = FinetuneModule(
        network=tiny32, reg=dict(pl_weight=0.0), guard=dict(max_bad_steps=3), total_kimg=10.0
    )
    module.adv_loss = NaNGeneratorLoss(k=2.0)
    g_before = copy.deepcopy(module.G.state_dict())
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=-1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False, use_distributed_sampler=False, default_root_dir=str(tmp_path),
    )  # fmt: skip
    with pytest.raises(NonFiniteTrainingError, match="3 consecutive") as err:
        trainer.fit(module, ImageDataModule(str(shapes), batch_size=4, num_workers=0))
    assert "network-lastgood.safetensors" in str(err.value)
    assert int(module.bad_phases) == 3 and int(module.step_idx) == 3
    for key, value in module.G.state_dict().items():  # no bad update reached G
        if key.endswith("w_avg"):
            continue
        assert torch.equal(value, g_before[key]), key
    saved = load_network(str(tmp_path / "network-lastgood.safetensors"))
    assert torch.equal(
        saved["G"].state_dict()["synthesis.b32.conv1.weight"], g_before["synthesis.b32.conv1.weight"]
    )


def _trainer(root) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", max_epochs=-1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False, use_distributed_sampler=False, default_root_dir=str(root),
    )  # fmt: skip


def test_a_skipped_step_leaves_w_avg_and_pl_mean_finite(tmp_path, shapes, tiny32):
    """The running statistics updated inside the forward passes are guarded like the weights, so the
    "last good" weights and every later snapshot keep a finite w_avg."""
    module = FinetuneModule(network=tiny32, guard=dict(max_bad_steps=2), total_kimg=10.0)
    module.adv_loss = NaNGeneratorLoss(k=2.0)
    mapping_forward = module.G.mapping.forward

    def poisoned(*args, **kwargs):  # a forward pass that went non-finite, as with a huge learning rate
        out = mapping_forward(*args, **kwargs)
        module.G.mapping.w_avg.fill_(float("nan"))
        return out

    module.G.mapping.forward = poisoned
    w_avg_before = module.G.mapping.w_avg.clone()
    with pytest.raises(NonFiniteTrainingError):
        _trainer(tmp_path).fit(module, ImageDataModule(str(shapes), batch_size=4, num_workers=0))
    assert torch.equal(module.G.mapping.w_avg, w_avg_before)
    assert torch.isfinite(module.pl_mean)
    saved = load_network(str(tmp_path / "network-lastgood.safetensors"))
    for net in ("G", "G_ema"):
        assert torch.isfinite(saved[net].mapping.w_avg).all(), net


def test_last_good_is_the_newest_weights_that_make_finite_images(tmp_path, tiny32):
    """'Last good' is checked on G_ema's images, not only on w_avg: weights that make non-finite images are
    replaced by the newest snapshot that makes finite ones, and with none of those nothing is saved."""
    module = FinetuneModule(network=tiny32)
    module._run_dir = tmp_path
    lastgood = tmp_path / "network-lastgood.safetensors"
    snapshot = tmp_path / "network-snapshot-000004.safetensors"
    save_network(snapshot, G=module.G, D=module.D, G_ema=module.G_ema)
    assert "no bad update" in module._save_last_good() and finite_output(load_network(str(lastgood))["G_ema"])
    with torch.no_grad():
        module.G_ema.synthesis.b32.torgb.weight[0, 0] = float("nan")  # w_avg stays finite
    assert not finite_output(module.G_ema) and torch.isfinite(module.G_ema.mapping.w_avg).all()
    assert snapshot.name in module._save_last_good()
    assert lastgood.read_bytes() == snapshot.read_bytes()
    snapshot.unlink()
    lastgood.unlink()
    assert "none saved" in module._save_last_good() and not lastgood.exists()


class EveryOtherStepNaNLoss(Rooted):
    """G's loss is NaN on every second call: never 2 bad steps in a row, half of the Gmain phases bad."""

    calls = 0

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        EveryOtherStepNaNLoss.calls += 1
        scale = float("nan") if EveryOtherStepNaNLoss.calls % 2 == 0 else 1.0
        return super().generator(fake_logits) * scale


def test_a_run_with_many_skipped_phases_ends_as_failed(tmp_path, shapes, tiny32):
    module = FinetuneModule(network=tiny32, reg=dict(pl_weight=0.0, r1_gamma=0.0), total_kimg=0.016)
    module.adv_loss = EveryOtherStepNaNLoss(k=2.0)
    with pytest.raises(NonFiniteTrainingError, match=r"diverged: 2 of 8 phases \(25%\)"):
        _trainer(tmp_path).fit(module, ImageDataModule(str(shapes), batch_size=4, num_workers=0))
    assert int(module.step_idx) == 4  # trained to the end: no run of max_bad_steps bad steps


def test_freeze_d_keeps_input_side_layers(tmp_path, shapes, tiny32):
    module = FinetuneModule(network=tiny32, freeze_d=3, total_kimg=0.008)
    frozen_layers = d_layers_from_input(module.D)[:3]
    before = {id(p): p.detach().clone() for layer in frozen_layers for p in layer.parameters()}
    trained_before = module.D.b4.fc.weight.detach().clone()
    fit_module = module
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=-1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False, use_distributed_sampler=False, default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(fit_module, ImageDataModule(str(shapes), batch_size=4, num_workers=0))
    for layer in frozen_layers:
        for p in layer.parameters():
            assert torch.equal(p, before[id(p)])
    assert not torch.equal(module.D.b4.fc.weight, trained_before)
    assert len(module.d_frozen) == sum(len(list(layer.parameters())) for layer in frozen_layers)


def test_ema_rule(tiny32):
    module = FinetuneModule(network=tiny32, ema=dict(kimg=0.1, rampup=None))
    with torch.no_grad():
        for p in module.G.parameters():
            p.fill_(1.0)
        for p in module.G_ema.parameters():
            p.fill_(0.0)
    module._update_ema(global_batch=50, cur_nimg=0)
    beta = 0.5 ** (50 / 100)  # half-life of ema_kimg * 1000 images
    p = next(module.G_ema.parameters())
    torch.testing.assert_close(p, torch.full_like(p, 1 - beta))


def test_ema_rampup_reads_the_images_before_the_batch(tiny32):
    """NVIDIA's ramp-up: half-life min(ema_kimg * 1000, cur_nimg * ema_rampup) with cur_nimg counted
    before the current batch (its training loop updates G_ema, then adds the batch)."""
    module = FinetuneModule(network=tiny32, ema=dict(kimg=0.1, rampup=0.05))
    with torch.no_grad():
        for p in module.G.parameters():
            p.fill_(1.0)
        for p in module.G_ema.parameters():
            p.fill_(0.0)
    module._update_ema(global_batch=50, cur_nimg=1000)  # half-life min(100, 1000 * 0.05) = 50 images
    p = next(module.G_ema.parameters())
    torch.testing.assert_close(p, torch.full_like(p, 1 - 0.5 ** (50 / 50)))


def test_two_process_ddp_keeps_ranks_identical(tmp_path, shapes, tiny32):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable, "-m", "rootedgan.cli", "finetune", "--config", SMOKE,
        "--network", tiny32, "--data.path", str(shapes), "--data.batch_size", "4",
        "--trainer.devices", "2", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(next(tmp_path.glob("lightning_logs/version_*/ddp_consistency.json")).read_text())
    assert record["world_size"] == 2 and record["step"] == 8
    assert record["checksums"][0] == record["checksums"][1]
    # and training moved the weights away from the pretrained ones
    start = FinetuneModule(network=tiny32)
    start_sum = sum(float(t.double().sum() + t.double().abs().sum()) for t in start.state_dict().values())
    assert record["checksums"][0] != pytest.approx(start_sum, rel=1e-9)


@pytest.mark.parametrize(
    "override,message",
    [
        (["--model.loss", "rooted:1"], "k > 1"),
        (["--model.loss", "{{name: rooted, k: 0.5}}"], "k > 1"),
        (["--model.reg.r1_gamma", "-1"], "model.reg.r1_gamma must be"),
        (["--model.k", "4"], "model.k moved into model.loss"),
        (["--model.g_lr", "0.1"], "model.g_lr moved: use model.optim.g_lr"),
        (["--model.loss", "hinge"], "unknown loss"),
        (["--data.path", "/nonexistent/images"], "/nonexistent/images"),
        (["--data.batch_size", "1000"], "batch_size"),
        (["--model.freeze_d", "99"], "freeze_d"),
        (["--trainer.default_root_dir", "{blocked}/runs"], "cannot write to output directory"),
    ],
)
def test_cli_rejects_bad_settings_with_a_readable_error(tmp_path, shapes, tiny32, capsys, override, message):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    override = [arg.format(blocked=blocked) for arg in override]
    args = ["finetune", "--config", SMOKE, "--network", tiny32,
            "--data.path", str(shapes), "--trainer.default_root_dir", str(tmp_path), *override]  # fmt: skip
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_rejects_unknown_options(tmp_path, capsys):
    code = cli_main(
        [
            "finetune",
            "--config",
            SMOKE,
            "--model.no_such_option",
            "3",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown option --model.no_such_option" in err[0]


def test_bf16_mixed_precision_runs_finite(tmp_path, shapes, tiny32):
    module = FinetuneModule(network=tiny32, total_kimg=0.008, reg=dict(r1_interval=1, pl_interval=1))
    trainer = L.Trainer(
        accelerator="cpu", precision="bf16-mixed", max_epochs=-1, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, use_distributed_sampler=False,
        default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(module, ImageDataModule(str(shapes), batch_size=4, num_workers=0))
    assert int(module.bad_phases) == 0 and module.phase_counts == dict(Gmain=2, Greg=2, Dmain=2, Dreg=2)
    metrics = {k: float(v) for k, v in trainer.logged_metrics.items()}
    assert all(math.isfinite(v) for v in metrics.values())
    assert all(p.dtype == torch.float32 for p in module.G.parameters())  # master weights stay fp32


class _RecordingOptimizer:
    def __init__(self) -> None:
        self.steps = 0

    def step(self) -> None:
        self.steps += 1

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass


@pytest.mark.parametrize("with_scaler", [False, True])
@pytest.mark.parametrize("bad", ["grad", "loss"])
def test_finish_phase_with_and_without_a_grad_scaler(tiny32, monkeypatch, with_scaler, bad):
    """Without a scaler, an inf gradient or NaN loss skips the step and counts as bad. With fp16 loss
    scaling the scaler owns inf gradients (it must see opt.step() to lower its scale): only a bad loss
    counts, and the step call is always made."""
    module = FinetuneModule(network=tiny32)
    monkeypatch.setattr(module, "manual_backward", lambda loss: loss.backward())
    monkeypatch.setattr(module, "_grad_scaler", lambda: object() if with_scaler else None)
    param = torch.nn.Parameter(torch.ones(3))
    if bad == "grad":
        param.register_hook(lambda g: g * float("inf"))  # finite loss, infinite gradient
        loss = param.sum()
    else:
        loss = param.sum() * float("nan")
    opt = _RecordingOptimizer()
    finite = module._finish_phase("Gmain", loss, [param], opt)
    expect_bad = bad == "loss" or not with_scaler
    assert finite is not expect_bad
    assert int(module.bad_phases) == int(expect_bad)
    assert opt.steps == (1 if with_scaler or not expect_bad else 0)


def test_snapshot_tags_do_not_collide_below_one_kimg():
    from rootedgan.runs import snapshot_tag

    assert snapshot_tag(12_000, 50) == "000012" and snapshot_tag(12_480, 1.0) == "000012"  # NVIDIA's names
    tags = [snapshot_tag(n, 0.25) for n in (250, 500, 750, 1000, 1250)]
    assert tags == ["000000.250", "000000.500", "000000.750", "000001.000", "000001.250"]
    assert tags == sorted(tags)  # file names sort in training order
    assert snapshot_tag(3_008, 0) == "000003"  # only the final snapshot


def test_fractional_snap_kimg_keeps_every_snapshot(tmp_path, shapes, tiny32):
    from rootedgan.runs import snapshot_path

    run = tmp_path / "r"
    fit(
        run,
        shapes,
        network=tiny32,
        total_kimg=0.016,
        callbacks=[NetworkSnapshot(snap_kimg=0.004, grid_seeds=4)],
    )
    names = sorted(p.name for p in run.glob("network-snapshot-*.safetensors"))
    assert names == [f"network-snapshot-000000.{n:03d}.safetensors" for n in (4, 8, 12, 16)]
    assert len(list(run.glob("fakes000000.*.png"))) == 4
    assert snapshot_path(run, 8).name == "network-snapshot-000000.008.safetensors"
    assert snapshot_path(run, 9) is None


def test_kimg_schedule_fires_once_per_multiple_without_drift():
    from rootedgan.runs import KimgSchedule

    sched = KimgSchedule(0.004)
    sched.start(0.0)
    fired = [n for n in range(1, 40_001) if sched.due(n / 1000)]  # one image per step, 40 kimg
    assert fired == list(range(4, 40_001, 4))  # every multiple exactly, even after 10,000 intervals
    sched = KimgSchedule(1.0)
    sched.start(2.5)  # a resume in the middle of an interval: next at 3
    assert [k for k in (2.9, 3.0, 3.2, 5.7, 5.9, 6.0) if sched.due(k)] == [3.0, 5.7, 6.0]
    never = KimgSchedule(0)
    never.start(0.0)
    assert not any(never.due(k) for k in (1.0, 100.0))
