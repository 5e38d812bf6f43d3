"""`rootedgan compare`: statistics against numpy and closed forms, log parsing against a real run's
metrics.csv, the end-to-end command (three outputs), skipping finished runs, failures and bad options."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import SMOKE
from PIL import Image

from bench.standins import make_standin_inception
from rootedgan.cli import main as cli_main
from rootedgan.compare import (
    Curve,
    band,
    collect_run,
    crossing_kimg,
    read_metric_jsonl,
    read_metrics_csv,
    render_markdown,
    summarize,
)
from rootedgan.compare import runner as runner_mod
from rootedgan.compare.runner import RunResult, finished_record, parse_losses, plan_runs, run_all
from rootedgan.errors import UserError

REPO = Path(__file__).resolve().parents[1]
BATCH = 8  # configs/smoke.yaml data.batch_size
KIMG = 0.04  # 5 steps of 8 images
METRIC = "metrics/fid16_full"  # FIDCallback with num_gen 16


def line(a: float, b: float, kimg: list[float]) -> Curve:
    k = np.array(kimg, dtype=np.float64)
    return Curve(k, a + b * k)


# -- statistics ------------------------------------------------------------------------------------


def test_band_on_ragged_grids_is_exact_for_linear_curves():
    # seeds logged at different kimg; linear interpolation reproduces a line exactly, so the band at
    # every common kimg equals numpy's mean / sample std of the lines' values there
    params = [(10.0, -2.0), (12.0, -3.0), (9.0, -1.0)]
    grids = [[0, 1, 2, 3, 4], [0.5, 1.5, 2.5, 3.5], [0.25, 1, 2, 3, 3.75]]
    curves = [line(a, b, g) for (a, b), g in zip(params, grids, strict=True)]
    result = band(curves)
    expected_grid = np.array([0.5, 1, 1.5, 2, 2.5, 3, 3.5])  # union inside [0.5, 3.5]
    np.testing.assert_allclose(result.kimg, expected_grid)
    values = np.array([[a + b * k for k in expected_grid] for a, b in params])
    np.testing.assert_allclose(result.mean, values.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(result.std, values.std(axis=0, ddof=1), rtol=1e-12)
    assert result.n == 3
    single = band(curves[:1])
    assert single.n == 1 and np.isnan(single.std).all()
    np.testing.assert_allclose(single.mean, curves[0].value)


def test_crossing_is_interpolated_between_logged_points():
    curve = Curve(np.array([0.0, 1.0, 2.0, 3.0]), np.array([10.0, 8.0, 4.0, 5.0]))
    assert crossing_kimg(curve, 6.0) == pytest.approx(1.5)  # 8 -> 4 between kimg 1 and 2
    assert crossing_kimg(curve, 10.0) == 0.0  # already there at the first point
    assert crossing_kimg(curve, 4.0) == pytest.approx(2.0)
    assert crossing_kimg(curve, 3.9) is None
    rising = Curve(np.array([0.0, 1.0, 2.0]), np.array([0.0, 0.2, 0.6]))
    assert crossing_kimg(rising, 0.5, lower_is_better=False) == pytest.approx(1.75)
    assert crossing_kimg(rising, 0.7, lower_is_better=False) is None


def test_summarize_against_numpy():
    curves = {
        "logistic": {
            0: Curve(np.array([0.0, 1.0, 2.0]), np.array([100.0, 60.0, 50.0])),
            1: Curve(np.array([0.0, 1.0, 2.0]), np.array([100.0, 70.0, 54.0])),
        },
        "rooted:2": {
            0: Curve(np.array([0.0, 0.5, 2.0]), np.array([100.0, 40.0, 45.0])),
            1: Curve(np.array([0.0, 1.0, 2.5]), np.array([100.0, 80.0, 60.0])),
        },
    }
    summary = summarize(curves, wall_s={"logistic": [10.0, 12.0], "rooted:2": [11.0, 13.0]})
    threshold = np.mean([50.0, 54.0])  # the baseline's (first loss's) final mean
    assert summary["threshold"]["value"] == pytest.approx(threshold)
    assert summary["threshold"]["baseline"] == "logistic"
    rooted = summary["losses"]["rooted:2"]
    assert rooted["final"]["mean"] == pytest.approx(np.mean([45.0, 60.0]))
    assert rooted["final"]["std"] == pytest.approx(np.std([45.0, 60.0], ddof=1))
    assert rooted["best"]["values"] == [40.0, 60.0]
    assert rooted["best_kimg"]["values"] == [0.5, 2.5]
    assert rooted["final_kimg"]["values"] == [2.0, 2.5]
    # seed 0 reaches 52 between (0, 100) and (0.5, 40); seed 1 never gets below 60
    seed0 = 0.0 + (threshold - 100.0) / (40.0 - 100.0) * 0.5
    assert rooted["kimg_to_threshold"]["values"][0] == pytest.approx(seed0)
    assert rooted["kimg_to_threshold"]["values"][1] is None
    assert (rooted["kimg_to_threshold"]["reached"], rooted["kimg_to_threshold"]["n"]) == (1, 2)
    assert rooted["kimg_to_threshold"]["mean"] == pytest.approx(seed0)
    logistic = summary["losses"]["logistic"]
    # the baseline's own seeds: seed 0 ends below its final mean (crosses 60 -> 50), seed 1 above it
    crossings = logistic["kimg_to_threshold"]["values"]
    assert crossings[0] == pytest.approx(1.0 + (threshold - 60.0) / (50.0 - 60.0)) and crossings[1] is None
    assert logistic["wall_s"]["mean"] == pytest.approx(11.0)
    assert logistic["wall_s"]["std"] == pytest.approx(np.std([10.0, 12.0], ddof=1))

    given = summarize(curves, threshold=59.0)
    assert given["threshold"]["rule"] == "given"
    assert given["losses"]["rooted:2"]["kimg_to_threshold"]["reached"] == 1
    higher = summarize(curves, lower_is_better=False)
    assert higher["losses"]["logistic"]["best"]["values"] == [100.0, 100.0]

    text = render_markdown(
        summary, "metrics/fid1k_digits", {"config": "c.yaml", "kimg": 2.0, "seeds": [0, 1]}
    )
    assert "`metrics/fid1k_digits`" in text and "lower is better" in text
    assert f"T = {threshold:.4g}" in text and "(1/2)" in text and "`logistic`" in text
    assert "mean final value of the baseline `logistic`" in text


# -- log parsing -----------------------------------------------------------------------------------


def test_csv_rows_without_kimg_are_placed_by_step_and_jsonl_takes_precedence(tmp_path):
    run = tmp_path / "lightning_logs" / "version_0"
    run.mkdir(parents=True)
    rows = [
        {"step": "1", "kimg": "0.016", "Loss/G/loss": "1.5", "metrics/fid10_full": ""},
        {"step": "3", "kimg": "", "Loss/G/loss": "", "metrics/fid10_full": "42.0"},  # FID written directly
        {"step": "5", "kimg": "0.048", "Loss/G/loss": "1.25", "metrics/fid10_full": ""},
        {"step": "7", "kimg": "", "Loss/G/loss": "", "metrics/fid10_full": "40.0"},  # beyond the known steps
    ]
    with open(run / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    curves = read_metrics_csv(run / "metrics.csv")
    np.testing.assert_allclose(curves["Loss/G/loss"].kimg, [0.016, 0.048])
    np.testing.assert_allclose(curves["metrics/fid10_full"].kimg, [0.032, 0.064])  # 0.008 kimg per step
    np.testing.assert_allclose(curves["metrics/fid10_full"].value, [42.0, 40.0])
    assert "step" not in curves and "kimg" not in curves
    records = [
        {"results": {"fid10_full": 41.0}, "metric": "fid10_full", "kimg": 0.0},
        {"results": {"fid10_full": 39.0}, "metric": "fid10_full", "kimg": 0.048},
    ]
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"results": {"fid10_f'  # truncated last line
    (run / "metric-fid10_full.jsonl").write_text(text)
    (run / "metric-digits.jsonl").write_text(json.dumps({"kimg": 0.5, "metrics/fid1k_digits": 3.0}) + "\n")
    collected = collect_run(tmp_path)
    np.testing.assert_allclose(collected["metrics/fid10_full"].kimg, [0.0, 0.048])
    np.testing.assert_allclose(collected["metrics/fid10_full"].value, [41.0, 39.0])
    np.testing.assert_allclose(collected["metrics/fid1k_digits"].value, [3.0])
    assert read_metric_jsonl(run / "metric-digits.jsonl").keys() == {"metrics/fid1k_digits"}
    with pytest.raises(UserError, match="no logs"):
        collect_run(tmp_path / "empty")


# -- the command end to end ----------------------------------------------------------------------


def compare_argv(out: Path, shapes: Path, tiny32: Path, losses: str, *options: str) -> list[str]:
    return ["compare", "--config", SMOKE, "--losses", losses, "--kimg", str(KIMG), "--seeds", "0",
            "--out", str(out), "--quiet", *options,
            "--", "--model.network", str(tiny32), "--data.path", str(shapes)]  # fmt: skip


@pytest.fixture(scope="module")
def compared(tmp_path_factory, shapes, nvidia_fixture_dir) -> tuple[Path, list]:
    """A real comparison: 2 losses x 1 seed, FID (stand-in Inception, 16 images) at the start and the end."""
    tmp = tmp_path_factory.mktemp("compare")
    standin = make_standin_inception(tmp / "standin.pt")
    fid_config = tmp / "fid.yaml"
    fid_config.write_text(
        "trainer:\n  callbacks:\n    - class_path: rootedgan.metrics.FIDCallback\n      init_args: "
        f"{{every_kimg: 0, num_gen: 16, inception: {standin}, num_workers: 0, batch_size: 16}}\n"
    )
    out = tmp / "out"
    argv = compare_argv(out, shapes, nvidia_fixture_dir / "tiny32.pkl", "logistic,rooted:4")
    argv += ["--config", str(fid_config)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROOTEDGAN_CACHE", str(tmp / "cache"))
        assert cli_main(argv) == 0
    return out, argv


def test_compare_end_to_end_writes_figure_table_and_json(compared):
    out, _ = compared
    record = json.loads((out / "compare.json").read_text())
    # no --metric: the first metrics/* key, the FID callback's, named with its sample count
    assert record["metric"] == METRIC and record["losses"] == ["logistic", "rooted:4"]
    assert [(r["loss"], r["status"]) for r in record["runs"]] == [("logistic", "ok"), ("rooted:4", "ok")]
    assert "--model.loss rooted:4" in record["runs"][1]["command"] and "torch" in record["versions"]
    for loss, folder in [("logistic", "logistic"), ("rooted:4", "rooted-k4")]:
        log_dir = next((out / folder / "seed0").glob("lightning_logs/version_*"))
        assert (out / folder / "seed0" / "finetune.log").stat().st_size > 0
        evaluations = [
            json.loads(x) for x in (log_dir / f"metric-{METRIC[8:]}.jsonl").read_text().splitlines()
        ]
        # NVIDIA's record fields: no GPU here; the final evaluation names the snapshot it measured
        assert [e["num_gpus"] for e in evaluations] == [0, 0]
        assert (log_dir / evaluations[-1]["snapshot_pkl"]).is_file()
        curve = record["curves"][loss]["0"][METRIC]
        assert curve["kimg"] == pytest.approx([0.0, KIMG])  # at the start and at the end
        assert curve["value"] == pytest.approx([e["results"][METRIC[8:]] for e in evaluations])
        summary = record["summary"]["losses"][loss]
        assert summary["start"]["mean"] == pytest.approx(curve["value"][0])
        assert summary["final"]["mean"] == pytest.approx(curve["value"][-1])
        assert summary["best"]["mean"] == pytest.approx(min(curve["value"]))
        assert summary["wall_s"]["n"] == 1 and summary["wall_s"]["mean"] > 0
        rows = list(csv.DictReader(open(log_dir / "metrics.csv")))
        g_losses = [(float(r["kimg"]), float(r["Loss/G/loss"])) for r in rows if r["Loss/G/loss"]]
        assert record["curves"][loss]["0"]["Loss/G/loss"]["value"] == pytest.approx([v for _, v in g_losses])
    with Image.open(out / "compare.png") as img:
        assert img.format == "PNG" and img.size[0] > 600
    text = (out / "compare.md").read_text()
    assert f"`{METRIC}`" in text and "`rooted:4`" in text and "compare.png" in text


def test_real_metrics_csv_is_parsed_with_its_sparse_rows(compared):
    out, _ = compared
    log_dir = next((out / "logistic" / "seed0").glob("lightning_logs/version_*"))
    rows = list(csv.DictReader(open(log_dir / "metrics.csv")))
    curves = read_metrics_csv(log_dir / "metrics.csv")
    train_keys = [k for k in rows[0] if k not in ("step", "epoch", "kimg") and not k.startswith("metrics/")]
    assert "Loss/G/loss" in train_keys
    for key in train_keys:  # training rows carry their kimg
        expected = sorted((float(r["kimg"]), float(r[key])) for r in rows if r[key] and r["kimg"])
        np.testing.assert_allclose(curves[key].kimg, [k for k, _ in expected], err_msg=key)
        np.testing.assert_allclose(curves[key].value, [v for _, v in expected], err_msg=key)
    # the FID rows are sparse and carry no kimg: placed by their step, within one batch of the exact
    # kimg the callback's jsonl records (which collect_run uses instead)
    fid_rows = [r for r in rows if r[METRIC]]
    assert fid_rows and all(not r["kimg"] for r in fid_rows)
    exact = read_metric_jsonl(log_dir / f"metric-{METRIC[8:]}.jsonl")[METRIC]
    np.testing.assert_allclose(curves[METRIC].value, exact.value)
    assert np.abs(curves[METRIC].kimg - exact.kimg).max() <= BATCH / 1000 + 1e-9
    np.testing.assert_allclose(collect_run(out / "logistic" / "seed0")[METRIC].kimg, exact.kimg)


def test_finished_runs_are_skipped_and_another_metric_needs_no_rerun(compared, capsys):
    out, argv = compared
    records = sorted(out.glob("*/seed0/run.json"))
    before = {p: p.read_text() for p in records}
    versions = sorted(out.glob("*/seed0/lightning_logs/version_*"))
    assert cli_main([*argv[: argv.index("--")], "--metric", "Loss/G/loss", *argv[argv.index("--") :]]) == 0
    assert capsys.readouterr().out.count("finished earlier") == 2
    assert {p: p.read_text() for p in records} == before
    assert sorted(out.glob("*/seed0/lightning_logs/version_*")) == versions
    record = json.loads((out / "compare.json").read_text())
    assert [r["status"] for r in record["runs"]] == ["skipped", "skipped"]
    assert record["metric"] == "Loss/G/loss" and "`Loss/G/loss`" in (out / "compare.md").read_text()


def test_skip_needs_the_same_arguments_and_force_reruns(tmp_path, monkeypatch):
    specs = plan_runs("c.yaml", ["logistic", "rooted"], [0, 1], tmp_path, kimg=1.0)
    assert [s.run_dir.relative_to(tmp_path).as_posix() for s in specs] == [
        "logistic/seed0", "logistic/seed1", "rooted/seed0", "rooted/seed1"]  # fmt: skip
    args = specs[0].args
    assert args[args.index("--model.seed") + 1] == args[args.index("--data.seed") + 1] == "0"
    assert args[args.index("--model.total_kimg") + 1] == "1"
    record = {"status": "ok", "args": list(specs[0].args), "cwd": os.getcwd(), "returncode": 0, "wall_s": 3.0}
    specs[0].run_dir.mkdir(parents=True)
    (specs[0].run_dir / "run.json").write_text(json.dumps(record))
    assert finished_record(specs[0]) == record
    other = plan_runs("c.yaml", ["logistic"], [0], tmp_path, kimg=2.0)[0]  # same folder, other budget
    assert finished_record(other) is None

    executed = []

    def fake_execute(spec, echo=True, threads=None):
        executed.append(spec.name)
        status = "failed" if spec.name == "logistic/seed1" else "ok"
        return RunResult(spec, status, 1 if status == "failed" else 0, 1.0, spec.run_dir / "finetune.log")

    monkeypatch.setattr(runner_mod, "execute", fake_execute)
    results = run_all(specs, echo=False, say=lambda msg: None)
    assert executed == ["logistic/seed1", "rooted/seed0", "rooted/seed1"]  # continues after a failure
    assert [r.status for r in results] == ["skipped", "failed", "ok", "ok"]
    executed.clear()
    run_all(specs, force=True, echo=False, say=lambda msg: None)
    assert executed == [s.name for s in specs]


def test_failing_run_is_reported_and_exits_nonzero(tmp_path, shapes, nvidia_fixture_dir, capsys):
    out = tmp_path / "cmp"
    argv = compare_argv(out, shapes, nvidia_fixture_dir / "tiny32.pkl", "logistic", "--metric", "Loss/G/loss")
    argv += ["--model.guard.max_bad_steps", "0"]  # rejected by FinetuneModule: the finetune exits 2
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert "run logistic/seed0 failed with exit status 2" in err
    assert "max_bad_steps must be an integer >= 1" in err  # the log's last lines are shown
    assert "no report written" in err
    assert not (out / "logistic" / "seed0" / "run.json").exists()
    assert not (out / "compare.md").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "smoke.yaml logs no quality metric, so there would be nothing to compare (nothing was trained)"),
        (["--model.no_such_option", "1"], "finetune settings are not valid (nothing was trained)"),
    ],
)
def test_compare_checks_the_runs_settings_before_training(
    tmp_path, shapes, nvidia_fixture_dir, capsys, extra, message
):
    out = tmp_path / "cmp"
    argv = compare_argv(out, shapes, nvidia_fixture_dir / "tiny32.pkl", "logistic,rooted") + extra
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (["--losses", "logistic,softmax"], "unknown loss 'softmax'"),
        (["--losses", "rooted:1"], "k > 1"),
        (["--losses", "rooted:x"], "cannot read 'x'"),
        (["--losses", "logistic,logistic"], "more than once"),
        (["--losses", " , "], "empty"),
        (["--seeds", "2-1"], "cannot parse seeds"),
        (["--threshold", "soon"], "--threshold"),
        (["--kimg", "0"], "--kimg must be > 0"),
    ],
)
def test_bad_options_fail_before_any_run(tmp_path, capsys, options, message):
    out = tmp_path / "cmp"
    argv = ["compare", "--config", SMOKE, "--out", str(out), *options]
    assert cli_main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_config_and_parse_losses():
    with pytest.raises(UserError, match="no such file"):
        _run_compare(["--config", "no/such.yaml"])
    assert parse_losses("logistic, rooted:2 ,rooted:4") == ["logistic", "rooted:2", "rooted:4"]


def _run_compare(options: list[str]) -> int:
    import argparse

    from rootedgan.commands import compare

    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    return compare.run(parser.parse_args(options))


def test_default_metric_names_the_missing_metric():
    from rootedgan.compare import default_metric, select

    runs = {
        "logistic": {0: {"Loss/G/loss": line(1, 0, [0, 1])}},
        "rooted": {0: {"Loss/G/loss": line(2, 0, [0, 1])}},
    }
    with pytest.raises(UserError, match="no quality metric.*Loss/G/loss"):
        default_metric(runs)
    runs["rooted"][0]["metrics/fid1k_full"] = line(3, 0, [0, 1])
    with pytest.raises(UserError, match="logistic/seed0"):
        select(runs, "metrics/fid1k_full")
    runs["logistic"][0]["metrics/fid1k_full"] = line(4, 0, [0, 1])
    assert default_metric(runs) == "metrics/fid1k_full"
    assert math.isnan(summarize(select(runs, "metrics/fid1k_full"))["losses"]["logistic"]["final"]["std"])
