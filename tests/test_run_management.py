"""A long run a person can trust and follow: resume keeps the settings given now (except those that
define the run), extends a finished run, never trains a finished one further; only last.ckpt plus the
snapshots are kept; progress as NVIDIA-style tick lines on redirected output and in log.txt; metrics.csv
always; metric callbacks check their inputs at start; the finetune command's help and errors."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SMOKE

from rootedgan.checkpoints import load_network
from rootedgan.cli import main as cli_main
from rootedgan.metrics import FIDCallback

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def finetune(root: Path, data: Path, network: str, *extra: str) -> int:
    return cli_main(
        ["finetune", "--config", SMOKE, "--network", network,
         "--data.path", str(data), "--trainer.default_root_dir", str(root), *extra]
    )  # fmt: skip


def runs(root: Path) -> list[Path]:
    return sorted(root.glob("lightning_logs/version_*"), key=lambda p: int(p.name.split("_")[1]))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, shapes, tiny32) -> Path:
    root = tmp_path_factory.mktemp("runs")
    assert finetune(root, shapes, tiny32) == 0
    return root


def test_only_last_ckpt_and_snapshots_are_kept(first_run):
    run = runs(first_run)[0]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]
    assert sorted(p.name for p in run.glob("network-snapshot-*")) == [
        "network-snapshot-000000.032.safetensors",
        "network-snapshot-000000.064.safetensors",
    ]


def test_metrics_csv_and_log_txt_are_written(first_run):
    run = runs(first_run)[0]
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert rows and any(r.get("Loss/G/loss") for r in rows)
    log = (run / "log.txt").read_text()
    assert log.startswith("batch: 8 per device x 1 device(s) = 8 images a step\n")
    assert f"run folder: {run}\n" in log and f"; outputs in {run}\n" in log  # where, at start and end
    assert "training starting at kimg 0.000 of 0.064; tick lines every 0.005 kimg" in log
    ticks = [line.split()[1] for line in log.splitlines() if line.startswith("tick ")]
    assert ticks == [str(i) for i in range(1, 9)]  # a short run still gets ~10 ticks, numbered in order
    assert "sec/kimg" in log and "done: kimg 0.064" in log
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return
    assert list(run.glob("events.out.tfevents.*")), "TensorBoard is installed but logged nothing"


def test_resume_extends_a_finished_run_with_the_setting_given_now(
    tmp_path, first_run, shapes, tiny32, capsys
):
    ckpt = runs(first_run)[0] / "checkpoints" / "last.ckpt"
    code = finetune(tmp_path, shapes, tiny32, "--ckpt_path", str(ckpt), "--model.total_kimg", "0.096")
    assert code == 0
    out = capsys.readouterr().out
    assert "changed on resume: model.total_kimg: 0.064 -> 0.096" in out
    run = runs(tmp_path)[0]
    assert sorted(p.name for p in run.glob("network-snapshot-*")) == [
        "network-snapshot-000000.096.safetensors"
    ]
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert int(saved["state_dict"]["cur_nimg"]) == 96 and saved["hyper_parameters"]["total_kimg"] == 0.096


def test_a_new_learning_rate_and_betas_reach_the_optimizers_on_resume(
    tmp_path, first_run, shapes, tiny32, capsys
):
    """What resume prints as changed is what the optimizers use (with the lazy-regularization rescale:
    the smoke config regularizes G every 2 steps, D every 4), read back from the new last.ckpt."""
    ckpt = runs(first_run)[0] / "checkpoints" / "last.ckpt"
    new = ["--model.optim.g_lr", "0.0005", "--model.optim.d_lr", "0.0004", "--model.optim.betas", "[0.5,0.9]"]
    assert (
        finetune(tmp_path, shapes, tiny32, "--ckpt_path", str(ckpt), "--model.total_kimg", "0.08", *new) == 0
    )
    assert "changed on resume: model.optim.g_lr: 0.002 -> 0.0005" in capsys.readouterr().out
    saved = torch.load(runs(tmp_path)[0] / "checkpoints" / "last.ckpt", weights_only=True)
    for state, lr, c in zip(saved["optimizer_states"], (0.0005, 0.0004), (2 / 3, 4 / 5), strict=True):
        group = state["param_groups"][0]
        assert group["lr"] == pytest.approx(lr * c)
        assert group["betas"] == pytest.approx((0.5**c, 0.9**c))
    assert saved["hyper_parameters"]["optim"]["g_lr"] == 0.0005


def test_resuming_a_finished_run_says_what_to_raise_and_creates_no_folder(
    tmp_path, first_run, shapes, tiny32, capsys
):
    ckpt = runs(first_run)[0] / "checkpoints" / "last.ckpt"
    before = sorted(p.name for p in runs(first_run)[0].iterdir())
    assert finetune(tmp_path, shapes, tiny32, "--ckpt_path", str(ckpt)) == 0
    out = capsys.readouterr().out
    assert "the run is finished (kimg 0.064 of model.total_kimg 0.064)" in out
    assert "--model.total_kimg 0.128" in out
    assert not runs(tmp_path) and sorted(p.name for p in runs(first_run)[0].iterdir()) == before


KILLED_AT_THE_FINAL_SNAPSHOT = """
import os, signal, sys
import rootedgan.training.snapshots as snapshots
write = snapshots.save_network
def killed(path, **kwargs):  # kill -9 once last.ckpt is written, before the final snapshot is
    if path.name == "network-snapshot-000000.064.safetensors":
        os.kill(os.getpid(), signal.SIGKILL)
    return write(path, **kwargs)
snapshots.save_network = killed
from rootedgan.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_snapshot_lost_to_kill_9_is_written_on_resume(tmp_path, shapes, tiny32, capsys):
    """kill -9 between last.ckpt and its snapshot (the final one) loses nothing: resuming the finished run
    writes the snapshot from the checkpoint's weights into the run's folder, and creates no other folder."""
    root = tmp_path / "runs"
    args = ["finetune", "--config", SMOKE, "--network", tiny32, "--data.path", str(shapes),
            "--trainer.default_root_dir", str(root)]  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", KILLED_AT_THE_FINAL_SNAPSHOT, *args], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    run = runs(root)[0]
    final = run / "network-snapshot-000000.064.safetensors"
    assert not final.exists() and (run / "checkpoints" / "last.ckpt").exists()
    assert finetune(root, shapes, tiny32, "--ckpt_path", str(run / "checkpoints" / "last.ckpt")) == 0
    assert "was missing" in capsys.readouterr().out and len(runs(root)) == 1
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key, value in load_network(str(final))["G_ema"].state_dict().items():
        assert torch.equal(value, ckpt[f"G_ema.{key}"]), key


CLAIM = """
import sys, time
from pathlib import Path
from rootedgan.runs import claim_version
Path(sys.argv[3]).touch()
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
print(claim_version(sys.argv[1]))
"""


def test_runs_started_together_never_share_a_version_folder(tmp_path):
    """Two processes claim a version at the same moment, 8 times: every claim gets its own folder."""
    claimed = []
    for round_ in range(8):
        go, ready = tmp_path / f"go{round_}", [tmp_path / f"ready{round_}.{i}" for i in range(2)]
        procs = [
            subprocess.Popen([sys.executable, "-c", CLAIM, str(tmp_path), str(go), str(flag)],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "LOCAL_RANK": "0"})
            for flag in ready
        ]  # fmt: skip
        deadline = time.monotonic() + 120
        while not all(f.exists() for f in ready) and time.monotonic() < deadline:
            time.sleep(0.01)  # both have imported rootedgan and wait for the signal
        go.touch()
        claimed += [int(p.communicate(timeout=120)[0]) for p in procs]
    folders = sorted(int(p.name.split("_")[1]) for p in (tmp_path / "lightning_logs").iterdir())
    assert sorted(claimed) == folders == list(range(16))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--model.loss", "logistic"], "model.loss is rooted:2 in the checkpoint but logistic now"),
        (["--model.loss", "rooted:4"], "model.loss is rooted:2 in the checkpoint but rooted:4 now"),
        (["--model.seed", "7"], "model.seed is 0 in the checkpoint but 7 now"),
        (["--model.optim.g_optimizer", "golden"], "model.optim.g_optimizer is 'adam' in the checkpoint"),
    ],
)
def test_resume_refuses_a_setting_that_defines_the_run(
    tmp_path, first_run, shapes, tiny32, capsys, override, message
):
    ckpt = runs(first_run)[0] / "checkpoints" / "last.ckpt"
    assert finetune(tmp_path, shapes, tiny32, "--ckpt_path", str(ckpt), *override) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not runs(tmp_path)  # refused before anything was written


@pytest.mark.parametrize(
    ("ckpt", "message"),
    [
        ("http://127.0.0.1:9/evil.ckpt", "only local files are read"),
        ("missing.ckpt", "no such file"),
        (".", "not a regular file"),
    ],
)
def test_bad_ckpt_path_is_one_line(tmp_path, shapes, tiny32, capsys, ckpt, message):
    assert finetune(tmp_path, shapes, tiny32, "--ckpt_path", ckpt) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(_Payload.target),))


def test_a_checkpoint_that_carries_code_is_refused_and_the_code_never_runs(tmp_path, shapes, tiny32, capsys):
    _Payload.target = str(tmp_path / "pwned")
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "x": _Payload()}, evil)
    assert finetune(tmp_path / "run", shapes, tiny32, "--ckpt_path", str(evil)) == 2
    assert not (tmp_path / "pwned").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused, it is not a plain checkpoint" in err[0]


def test_progress_lines_on_redirected_output_and_no_tips(tmp_path, shapes, tiny32):
    config = SMOKE
    cmd = [sys.executable, "-m", "rootedgan.cli", "finetune", "--config", config, "--network", tiny32,
           "--data.path", str(shapes), "--trainer.default_root_dir", str(tmp_path),
           "--progress.tick_kimg", "0.032"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ticks = [line for line in proc.stdout.splitlines() if line.startswith("tick ")]
    assert [t.split()[1] for t in ticks] == ["1", "2"]
    assert all("sec/kimg" in t and "img/s" in t and " G " in t and " D " in t for t in ticks)
    assert "Tip:" not in proc.stdout + proc.stderr
    assert "eval mode" not in proc.stderr


def test_a_terminal_without_a_size_gets_tick_lines_not_a_bar():
    """A pseudo-terminal that reports no window size (some job runners) showed nothing at all."""
    import pty

    from rootedgan.training.progress import _nice, _sized_terminal

    parent, child = pty.openpty()
    try:
        with os.fdopen(child, "w", closefd=False) as stream:
            assert stream.isatty() and not _sized_terminal(stream)
    finally:
        os.close(parent)
        os.close(child)
    assert [_nice(x) for x in (0.4, 0.0064, 4.0, 1.5)] == [0.4, 0.005, 4.0, 1.0]


def test_fid_callback_checks_its_inputs_when_the_run_starts(tmp_path, shapes, tiny32):
    """Without at_start, a missing Inception file used to surface at the first evaluation, hours in."""
    from test_finetune import fit

    from rootedgan.errors import UserError

    called = []
    fid = FIDCallback(
        every_kimg=1, at_start=False, inception=str(tmp_path / "nope.pt"), download_inception=False
    )
    with pytest.raises(UserError, match="nope.pt"):
        fit(tmp_path, shapes, network=tiny32, total_kimg=0.008, callbacks=[fid, _CountSteps(called)])
    assert called == []  # no training step ran


class _CountSteps:
    """A callback counting training steps (Lightning duck-types callbacks through its base class)."""

    def __new__(cls, sink: list):
        import lightning as L

        class Counter(L.Callback):
            def on_train_batch_start(self, *args):
                sink.append(1)

        return Counter()


def test_help_lists_finetune_and_its_own_options(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    assert "finetune" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["finetune", "--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: rootedgan finetune")
    for option in (
        "--model.loss",
        "--data.path",
        "--snapshot.snap_kimg",
        "--progress.tick_kimg",
        "--ckpt_path",
    ):
        assert option in text
    assert "{fit,validate" not in text and "--model.network PATH" in text
    assert text.index("--model.loss") < text.index("--trainer.accelerator")  # ours first


def test_unknown_option_is_one_line_with_the_nearest_valid_one(tmp_path, shapes, tiny32, capsys):
    assert finetune(tmp_path, shapes, tiny32, "--model.reg.r1_gama", "3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "rootedgan finetune: error: unknown option --model.reg.r1_gama (did you mean --model.reg.r1_gamma or "
        "--model.reg.r1_interval?); `rootedgan finetune --help` lists them all"
    ]


def test_kill_9_keeps_the_metrics_logged_so_far(tmp_path, shapes, tiny32):
    """metrics.csv and log.txt are written as the run goes: a killed run keeps all but the last interval."""
    import signal

    config = SMOKE
    cmd = [sys.executable, "-m", "rootedgan.cli", "finetune", "--config", config, "--network", tiny32,
           "--data.path", str(shapes), "--trainer.default_root_dir", str(tmp_path),
           "--model.total_kimg", "10", "--trainer.log_every_n_steps", "2", "--progress.tick_kimg", "0.016",
           "--snapshot.snap_kimg", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        log = None
        while time.monotonic() < deadline:
            log = next(tmp_path.glob("lightning_logs/version_*/log.txt"), None)
            if log is not None and log.read_text().count("\ntick ") >= 4:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("no 4 tick lines within 300 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    rows = list(csv.DictReader(open(log.parent / "metrics.csv")))
    assert len([r for r in rows if r.get("Loss/G/loss")]) >= 3  # steps 2, 4, 6 at least (8 images a step)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model.total_kimg", "-1"], "model.total_kimg must be a finite number > 0, got -1.0"),
        (["--model.total_kimg", "0"], "model.total_kimg must be a finite number > 0, got 0.0"),
        (["--snapshot.snap_kimg", "-1"], "snapshot.snap_kimg must be >= 0"),
        (["--model.optim.g_lr", "nan"], 'Parser key "model.optim.g_lr": Expected a'),
        (["--model.optim.g_lr", "0"], "model.optim.g_lr must be a finite number > 0, got 0.0"),
        (["--model.reg.r1_interval", "1.5"], 'Parser key "model.reg.r1_interval"'),
        (["--model.augment.kind", "adb"], "model.augment.kind must be one of none, ada, fixed, diffaugment"),
    ],
)
def test_careless_settings_are_one_line(tmp_path, shapes, tiny32, capsys, extra, message):
    assert finetune(tmp_path, shapes, tiny32, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_gpu_accelerator_without_a_gpu_is_one_line(tmp_path, shapes, tiny32, capsys):
    assert finetune(tmp_path, shapes, tiny32, "--trainer.accelerator", "gpu") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use --trainer.accelerator cpu" in err[0]


def test_model_seed_and_data_seed_may_differ(tmp_path, shapes, tiny32):
    """model.seed drives the training randomness, data.seed the data order: Lightning used to refuse to
    merge the two `seed` hyperparameters."""
    assert finetune(tmp_path, shapes, tiny32, "--model.seed", "3", "--data.seed", "5") == 0


def test_checkpoint_writes_never_leave_a_partial_file(tmp_path, monkeypatch):
    from rootedgan.training.resume import SafeCheckpointIO, read_checkpoint, remove_stale_temp_files

    io_ = SafeCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io_.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)

    class DiskFull:
        def __init__(self, real):
            self.real = real

        def write(self, data):
            self.real.write(bytes(data)[:10])
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.real, name)

    import rootedgan.training.resume as resume

    real_open = resume.atomic_open

    def full_disk_open(path, mode="wb"):
        import contextlib

        @contextlib.contextmanager
        def cm():
            with real_open(path, mode) as fh:
                yield DiskFull(fh)

        return cm()

    monkeypatch.setattr(resume, "atomic_open", full_disk_open)
    with pytest.raises(OSError, match="No space left"):
        io_.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, target)
    assert torch.equal(read_checkpoint(target)["state_dict"]["w"], torch.ones(3))  # the good one survives
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # and no temp file is left
    stale = target.parent / ".last.ckpt.abc123.tmp"  # what a kill -9 mid-write leaves
    stale.write_bytes(b"partial")
    assert remove_stale_temp_files(target.parent, min_age_s=0) == [stale] and not stale.exists()


def test_disk_full_during_a_snapshot_is_one_line_and_keeps_last_ckpt(
    tmp_path, shapes, tiny32, capsys, monkeypatch
):
    """The second snapshot hits a full disk: one line that says how to go on, and the first snapshot's
    last.ckpt is intact (atomic writes)."""
    import errno

    import rootedgan.training.snapshots as ckpts

    real_save = ckpts.save_network
    calls = []

    def save_then_fill_the_disk(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(ckpts, "save_network", save_then_fill_the_disk)
    assert finetune(tmp_path, shapes, tiny32) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disk full while writing the kimg 000000.064 snapshot" in err[0]
    assert "resume with --ckpt_path" in err[0]
    ckpt = runs(tmp_path)[0] / "checkpoints" / "last.ckpt"
    assert int(torch.load(ckpt, weights_only=True)["state_dict"]["cur_nimg"]) in (32, 64)
