"""`rootedgan compare` as a study: bootstrap CIs and paired tests against closed forms and scipy, areas and
spikes, per-run/per-arm summaries, the lr choice, the grid plan, the two-stage run (resumable, parallel)
with fake runs, and the paired design recorded by real runs."""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from conftest import SMOKE

from rootedgan.cli import main as cli_main
from rootedgan.compare import (
    Curve,
    arm_statistics,
    auc,
    bootstrap_ci,
    check_pairing,
    ci_band,
    paired_difference,
    paired_statistics,
    plan_runs,
    run_all,
    run_summary,
    select_learning_rates,
    sign_flip_p,
    spikes,
)
from rootedgan.compare import runner as runner_mod
from rootedgan.compare import study as study_mod
from rootedgan.compare.bootstrap import bootstrap_means
from rootedgan.compare.pairing import _RecordingRandomness
from rootedgan.compare.runner import RunResult, base_learning_rates, parse_lrs
from rootedgan.errors import UserError
from rootedgan.training.randomness import SeededRandomness

REPO = Path(__file__).resolve().parents[1]

# -- bootstrap, paired differences, sign-flip test -------------------------------------------------


def exact_bootstrap_means(values: list[float]) -> np.ndarray:
    """Every one of the n^n equally likely resamples' means (the exact bootstrap distribution)."""
    n = len(values)
    return np.array([np.mean([values[i] for i in idx]) for idx in itertools.product(range(n), repeat=n)])


def test_bootstrap_ci_matches_the_exact_bootstrap_distribution_and_scipy():
    sample = [1.0, 2.0, 4.0, 8.5]
    ci = bootstrap_ci(sample)
    assert ci["mean"] == pytest.approx(np.mean(sample)) and ci["n"] == 4
    assert ci["std"] == pytest.approx(np.std(sample, ddof=1))
    exact = exact_bootstrap_means(sample)  # 256 resamples
    lo, hi = np.quantile(exact, [0.025, 0.975])
    # 10k Monte Carlo resamples: the percentile bounds land within a small step of the exact ones
    assert ci["lo"] == pytest.approx(lo, abs=0.2) and ci["hi"] == pytest.approx(hi, abs=0.2)
    ref = scipy.stats.bootstrap(
        (np.array(sample),), np.mean, method="percentile", n_resamples=10_000, random_state=1
    ).confidence_interval
    assert ci["lo"] == pytest.approx(ref.low, abs=0.3) and ci["hi"] == pytest.approx(ref.high, abs=0.3)
    assert bootstrap_ci(sample) == ci  # seeded: the same data give the same interval


def test_bootstrap_spread_matches_the_closed_form():
    """The bootstrap variance of the mean is the plug-in variance / n: sum (x - mean)^2 / n^2."""
    x = np.random.default_rng(3).normal(5.0, 2.0, size=12)
    means = bootstrap_means(x, n_resamples=40_000, seed=7)
    assert means.mean() == pytest.approx(x.mean(), abs=0.02)
    assert means.std() == pytest.approx(np.sqrt(x.var(ddof=0) / len(x)), rel=0.03)
    columns = bootstrap_means(np.stack([x, 2 * x + 1], axis=1), n_resamples=1000, seed=7)
    np.testing.assert_allclose(columns[:, 1], 2 * columns[:, 0] + 1)  # columns share the resamples


def test_bootstrap_ci_edge_cases():
    same = bootstrap_ci([3.0, 3.0, 3.0])
    assert same["lo"] == same["hi"] == same["mean"] == 3.0
    one = bootstrap_ci([2.0])
    assert one["mean"] == 2.0 and np.isnan(one["lo"]) and np.isnan(one["std"])
    assert np.isnan(bootstrap_ci([])["mean"])
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_ci([1.0, float("nan")])


def test_paired_difference_by_hand_and_sign_flip_against_scipy():
    arm = {0: 10.0, 1: 12.0, 2: 9.0, 3: 11.0, 4: 7.0, 9: 1.0}  # seed 9 has no baseline: not a pair
    base = {0: 11.0, 1: 12.5, 2: 9.5, 3: 13.0, 4: 6.0, 5: 3.0}
    d = paired_difference(arm, base)
    diffs = [-1.0, -0.5, -0.5, -2.0, 1.0]
    assert d["seeds"] == [0, 1, 2, 3, 4] and d["values"] == diffs
    assert d["mean"] == pytest.approx(np.mean(diffs)) and d["better"] == 4
    assert (d["lo"], d["hi"]) == (bootstrap_ci(diffs)["lo"], bootstrap_ci(diffs)["hi"])
    # the exact sign-flip p by enumeration, and scipy's paired ("samples") permutation test
    observed = abs(np.mean(diffs))
    flips = [abs(np.mean(np.array(s) * diffs)) for s in itertools.product([-1, 1], repeat=5)]
    assert d["p_sign_flip"] == pytest.approx(np.mean(np.array(flips) >= observed - 1e-12))
    x = np.array([arm[s] for s in d["seeds"]])
    y = np.array([base[s] for s in d["seeds"]])
    ref = scipy.stats.permutation_test(
        (x, y), lambda a, b: np.mean(a - b), permutation_type="samples", n_resamples=np.inf
    )
    assert d["p_sign_flip"] == pytest.approx(ref.pvalue)
    assert paired_difference(arm, base, lower_is_better=False)["better"] == 1
    assert sign_flip_p([1.0] * 5) == pytest.approx(2 / 32)  # the smallest p with 5 pairs
    assert sign_flip_p([1.0] * 20) < 1e-3  # Monte Carlo above 16 pairs


def test_ci_band_is_the_pointwise_bootstrap_of_the_mean():
    kimg = np.array([0.0, 1.0, 2.0])
    offsets = [0.0, 1.0, 3.0, 4.0]
    curves = [Curve(kimg, 10 - kimg + o) for o in offsets]
    b = ci_band(curves)
    ci = bootstrap_ci(offsets)
    np.testing.assert_allclose(b["mean"], 10 - kimg + np.mean(offsets))
    np.testing.assert_allclose(b["lo"], 10 - kimg + ci["lo"])
    np.testing.assert_allclose(b["hi"], 10 - kimg + ci["hi"])


# -- areas, spikes, per-run and per-arm summaries ---------------------------------------------------


def test_auc_against_closed_forms():
    line = Curve(np.array([0.0, 1.0, 2.5, 4.0]), np.array([10.0, 8.0, 5.0, 2.0]))  # 10 - 2k
    assert auc(line) == pytest.approx(10 * 4 - 4**2)
    assert auc(line, 1.0, 2.0) == pytest.approx(10 - (4 - 1))  # inside: interpolated ends
    # a run that stopped at kimg 2 is continued at its last value to the planned end
    short = Curve(np.array([0.0, 2.0]), np.array([10.0, 6.0]))
    assert auc(short, 0.0, 4.0) == pytest.approx(16 + 2 * 6)
    assert np.isnan(auc(Curve(np.array([0.0, 1.0]), np.array([1.0, np.nan]))))
    with pytest.raises(ValueError):
        auc(line, 3.0, 1.0)


def test_spikes_are_measured_above_the_loss_floor():
    values = np.full(40, 0.7)
    values[[20, 33]] = [9.0, 20.0]
    values[25] = np.nan
    curve = Curve(np.arange(40.0), values)
    np.testing.assert_array_equal(spikes(curve), [20, 33])  # 9 and 20 > 10 x 0.7
    rooted = Curve(np.arange(40.0), values + 2.0)  # a rooted:2 G loss: the same excess above k = 2
    assert len(spikes(rooted)) == 0  # 11 and 22 < 10 x 2.7: the offset hides the spikes
    np.testing.assert_array_equal(spikes(rooted, floor=2.0), [20, 33])
    assert len(spikes(Curve(np.arange(4.0), np.array([1.0, 1.0, 1.0, 50.0])))) == 0  # too little history


def synthetic_run(final: float, spike_at: int | None = None, nan_at: int | None = None) -> dict[str, Curve]:
    kimg = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    metric = np.array([100.0, 60.0, 40.0, 30.0, final])
    steps = np.arange(1, 101) * 0.04
    g = np.full(100, 0.8)
    d = np.full(100, 1.3)
    if spike_at is not None:
        g[spike_at] = 50.0
    if nan_at is not None:
        d[nan_at] = np.nan
    return {
        "metrics/fid": Curve(kimg, metric),
        "Loss/G/loss": Curve(steps, g),
        "Loss/D/loss": Curve(steps, d),
    }


def test_run_summary_and_arm_statistics():
    s = run_summary(synthetic_run(25.0, spike_at=60, nan_at=70), "metrics/fid", targets=[50, 20], span=(0, 4))
    assert s["final"] == 25.0 and s["best"] == 25.0 and s["best_kimg"] == 4.0 and s["start"] == 100.0
    area = (100 + 60) / 2 + (60 + 40) / 2 + (40 + 30) / 2 + (30 + 25) / 2
    assert s["auc"] == pytest.approx(area) and s["auc_mean"] == pytest.approx(area / 4)
    assert s["to_target"] == {"50": pytest.approx(1.5), "20": None}
    assert s["spikes"]["G"] == 1 and s["spikes"]["D"] == 0 and s["spikes"]["steps"] == 1
    assert s["spikes"]["max_G"] == 50.0 and s["nonfinite"]["phases"] == 1
    summaries = {
        seed: run_summary(synthetic_run(f), "metrics/fid", targets=[50, 20], span=(0, 4))
        for seed, f in enumerate([25.0, 15.0, 35.0])
    }
    stats = arm_statistics(summaries, targets=[50, 20])
    assert stats["values"]["final"]["mean"] == pytest.approx(25.0)
    assert stats["values"]["final"]["lo"] < 25.0 < stats["values"]["final"]["hi"]
    reach = stats["to_target"]["20"]  # only seed 1 (final 15) reaches 20; the others count as 4 kimg
    assert reach["reached"] == 1 and reach["censored"]
    crossing = 3.0 + (20 - 30) / (15 - 30)
    assert reach["mean"] == pytest.approx((crossing + 4 + 4) / 3)
    base = {seed: run_summary(synthetic_run(30.0), "metrics/fid", span=(0, 4)) for seed in range(3)}
    paired = paired_statistics(summaries, base)
    assert paired["final"]["values"] == pytest.approx([-5.0, -15.0, 5.0]) and paired["final"]["better"] == 2


def test_select_learning_rates_on_tuning_seeds():
    def runs(*values):
        return {seed: (None if v is None else {"auc_mean": v}) for seed, v in enumerate(values)}

    choice = select_learning_rates(
        {
            "logistic": {0.5: runs(10.0, 12.0), 1.0: runs(9.0, 11.0)},
            "rooted:2": {0.5: runs(10.0, 10.0), 1.0: runs(5.0, None)},  # lr 1 is best but failed once
            "rooted:4": {0.5: runs(8.0, 8.0), 1.0: runs(8.0, 8.0)},  # tie: the larger lr
            "broken": {0.5: runs(None, None), 1.0: runs(7.0, None)},
        }
    )
    assert choice["logistic"]["lr"] == 1.0 and choice["logistic"]["means"] == {"0.5": 11.0, "1": 10.0}
    assert choice["rooted:2"]["lr"] == 0.5 and choice["rooted:2"]["failed"] == {"0.5": 0, "1": 1}
    assert choice["rooted:4"]["lr"] == 1.0
    assert choice["broken"]["lr"] == 1.0 and not choice["broken"]["eligible"]
    higher = select_learning_rates({"x": {0.5: runs(1.0, 1.0), 1.0: runs(2.0, 2.0)}}, lower_is_better=False)
    assert higher["x"]["lr"] == 1.0


# -- the grid: planning, learning rates, parallel and resumable runs ----------------------------------


def test_grid_plan_scales_the_config_learning_rates(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  optim: {g_lr: 0.003, d_lr: 0.002}\n")
    assert base_learning_rates(config) == (0.003, 0.002)
    assert base_learning_rates(config, ["--model.optim.g_lr=0.004", "--x", "1"]) == (0.004, 0.002)
    other = tmp_path / "o.yaml"
    other.write_text("model:\n  optim:\n    d_lr: 0.001\n")
    assert base_learning_rates(config, ["--config", str(other)]) == (0.003, 0.001)
    specs = plan_runs(config, ["logistic", "rooted:2"], [7, 8], tmp_path / "out", kimg=2.0,
                      lrs=[0.5, 1.0], extra=["--data.batch_size", "8"])  # fmt: skip
    assert [s.name for s in specs] == [
        f"{loss}@lr{lr}/seed{seed}"
        for loss in ("logistic", "rooted:2")
        for lr in ("0.5", "1")
        for seed in (7, 8)
    ]
    assert specs[0].run_dir == tmp_path / "out" / "logistic" / "lr0.5" / "seed7"
    args = list(specs[0].args)
    assert args[-4:] == ["--model.optim.g_lr", "0.0015", "--model.optim.d_lr", "0.001"]  # after extra
    extra_at = args.index("--data.batch_size")
    assert args.index("--trainer.callbacks+=rootedgan.compare.pairing.PairingRecorder") > extra_at
    assert args[args.index("--model.seed") + 1] == args[args.index("--data.seed") + 1] == "7"
    # the same seed: the same arguments in every arm except the loss and the learning rates
    a, b = list(specs[1].args), list(specs[7].args)
    differ = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    assert [a[i - 1] for i in differ] == ["--model.loss", "--trainer.default_root_dir", "--model.optim.g_lr",
                                          "--model.optim.d_lr"]  # fmt: skip
    assert plan_runs(config, ["logistic*2"], [0], tmp_path)[0].run_dir.parts[-2] == "logistic-x2"
    assert parse_lrs("0.25, 0.5,1") == [0.25, 0.5, 1.0] and parse_lrs(None) is None
    for bad, message in [("0.5,x", "cannot read"), ("0,1", "> 0"), ("1,1", "more than once")]:
        with pytest.raises(UserError, match=message):
            parse_lrs(bad)


def test_run_all_runs_jobs_at_a_time_in_spec_order(tmp_path, monkeypatch):
    specs = plan_runs("c.yaml", ["logistic", "rooted"], [0, 1, 2], tmp_path, kimg=1.0)
    running, peak, seen_threads = [0], [0], set()
    lock = threading.Lock()

    def fake_execute(spec, echo=True, threads=None):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            seen_threads.add(threads)
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return RunResult(spec, "ok", 0, 0.05, spec.run_dir / "finetune.log")

    monkeypatch.setattr(runner_mod, "execute", fake_execute)
    results = run_all(specs, echo=False, say=lambda msg: None, jobs=2, threads=1)
    assert [r.spec.name for r in results] == [s.name for s in specs]
    assert peak[0] == 2 and seen_threads == {1}
    assert runner_mod.run_env(1)["OMP_NUM_THREADS"] == "1"


def fake_finetune(spec, echo=True, threads=None, tail_lines=20):
    """Writes what a digits run would log (a metric jsonl, metrics.csv, pairing.json, run.json): the final
    value depends on the loss and the lr multiplier, so the lr choice is known in advance."""
    quality = {"logistic": 40.0, "rooted:2": 45.0}[spec.loss]
    lr = spec.lr or 1.0
    final = quality + {0.5: 5.0, 1.0: 0.0}[lr] + (spec.seed % 3)
    log_dir = spec.run_dir / "lightning_logs" / "version_0"
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "metric-digits.jsonl", "w") as fh:
        for k, v in [(0.0, 100.0), (0.5, 60.0), (1.0, final)]:
            fh.write(json.dumps({"kimg": k, "metrics/fid2k_digits": v}) + "\n")
    rows = ["step,kimg,Loss/G/loss,Loss/D/loss"] + [f"{i},{0.1 * (i + 1):.1f},0.8,1.3" for i in range(10)]
    (log_dir / "metrics.csv").write_text("\n".join(rows) + "\n")
    pairing = {"steps": 4, "data": f"d{spec.seed}", "latents": f"z{spec.seed}", "evaluation": []}
    (log_dir / "pairing.json").write_text(json.dumps(pairing))
    record = {"status": "ok", "args": list(spec.args), "cwd": os.getcwd(), "returncode": 0, "wall_s": 1.0,
              "log_dir": "lightning_logs/version_0"}  # fmt: skip
    (spec.run_dir / "run.json").write_text(json.dumps(record))
    return RunResult(spec, "ok", 0, 1.0, spec.run_dir / "finetune.log")


def test_two_stage_study_picks_each_lr_on_tuning_seeds_and_resumes(tmp_path, monkeypatch, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  optim: {g_lr: 0.002, d_lr: 0.002}\n")
    calls = []
    monkeypatch.setattr(
        runner_mod, "execute", lambda spec, **kw: calls.append(spec.name) or fake_finetune(spec)
    )
    monkeypatch.setattr(study_mod, "preflight", lambda spec, metric: None)  # c.yaml is not a whole config
    out = tmp_path / "study"
    argv = ["compare", "--config", str(config), "--losses", "logistic,rooted:2", "--lrs", "0.5,1",
            "--tune-seeds", "100,101", "--seeds", "0-4", "--kimg", "1", "--targets", "50,41", "--jobs", "2",
            "--threads", "1", "--quiet", "--out", str(out)]  # fmt: skip
    assert cli_main(argv) == 0
    assert len(calls) == 2 * 2 * 2 + 2 * 5
    selection = json.loads((out / "selection.json").read_text())["losses"]
    assert selection["logistic"]["lr"] == 1.0 and selection["rooted:2"]["lr"] == 1.0
    record = json.loads((out / "eval" / "compare.json").read_text())
    analysis = record["analysis"]
    assert list(analysis["arms"]) == ["logistic", "rooted:2"] and analysis["primary"] == "auc_mean"
    assert record["arm_info"]["rooted:2"]["g_lr"] == pytest.approx(0.002)
    final = analysis["paired"]["rooted:2"]["final"]
    assert final["values"] == [5.0] * 5 and final["lo"] == final["hi"] == 5.0 and final["better"] == 0
    assert analysis["arms"]["logistic"]["to_target"]["41"]["reached"] == 4  # seed 2 ends at 40 + 2
    assert record["pairing"]["paired"] is True
    tune = json.loads((out / "tune" / "compare.json").read_text())
    assert tune["analysis"]["paired"]["rooted:2@lr0.5"]["vs"] == "logistic@lr0.5"  # same-lr baseline
    for name in ("compare.png", "forest.png", "compare.md", "runs.csv"):
        assert (out / "eval" / name).stat().st_size > 0
    text = (out / "eval" / "compare.md").read_text()
    assert "Pairing verified" in text and "kimg to 41" in text and "0.002 / 0.002" in text
    assert (
        "| `rooted:2` |" in (out / "selection.md").read_text()
        and "x1 |" in (out / "selection.md").read_text()
    )
    capsys.readouterr()
    calls.clear()
    assert cli_main(argv) == 0  # resumed: every run finished earlier
    assert calls == [] and capsys.readouterr().out.count("finished earlier") == 18


def test_study_options_are_checked_before_any_run(tmp_path, capsys):
    base = ["compare", "--config", SMOKE, "--out", str(tmp_path / "o")]
    for options, message in [
        (["--tune-seeds", "0,1", "--seeds", "1-3"], "must not overlap"),
        (["--lrs", "0.5,-1"], "> 0"),
        (["--targets", "a"], "--targets"),
        (["--jobs", "0"], "--jobs"),
        (["--losses", "logistic*0"], "scale"),
    ]:
        assert cli_main(base + options) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert cli_main(base + ["--lrs", "0.5,1", "--tune-seeds", "5", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("--model.optim.g_lr 0.001 ") == 2 and "then each loss at the lr chosen" in out


# -- the paired design ---------------------------------------------------------------------------------


def test_recording_randomness_hands_out_the_same_draws():
    """The recorder wraps the step's source: same latents, no extra draws (the RNG state after a step is
    the one of an unwrapped step), so a recorded run trains exactly as an unrecorded one."""
    import hashlib

    def draws(source):
        with source.step(3, torch.device("cpu")):
            z = source.latents("Gmain", 4, 8, torch.device("cpu"))
            z2 = source.mixing_latents("Gmain", z)
            noise = torch.randn(3)  # e.g. synthesis noise after the draws
        return z, z2, noise

    plain = draws(SeededRandomness(5))
    digest = hashlib.sha256()
    recorded = draws(_RecordingRandomness(SeededRandomness(5), digest))
    for a, b in zip(plain, recorded, strict=True):
        assert torch.equal(a, b)
    assert digest.hexdigest() != hashlib.sha256().hexdigest()


def test_check_pairing_finds_missing_records_and_differences():
    rec = {"steps": 4, "data": "a", "latents": "b", "evaluation": [{"seed": 0, "latents": "c"}]}
    assert check_pairing({"x": {0: rec, 1: {**rec, "data": "e"}}, "y": {0: rec, 1: {**rec, "data": "e"}}})[
        "paired"
    ]
    bad = check_pairing({"x": {0: rec, 1: rec}, "y": {0: {**rec, "latents": "q"}, 1: None}})
    assert not bad["paired"] and bad["missing"] == ["y/seed1"]
    assert [(m["seed"], m["field"]) for m in bad["mismatches"]] == [(0, "latents")]
    assert "NOT verified" in bad["text"]


def test_real_runs_of_two_arms_share_data_order_latents_and_evaluation_samples(
    tmp_path, shapes, nvidia_fixture_dir
):
    """Two arms (losses and learning rates differ) on seed 0, and one arm on seed 1, finetuned for real:
    the first batches' data, the training latents and the evaluation latents are identical across arms
    for a seed, and differ between seeds (so the check is not vacuous)."""
    from bench.standins import make_standin_inception

    standin = make_standin_inception(tmp_path / "standin.pt")
    fid = tmp_path / "fid.yaml"
    fid.write_text(
        "trainer:\n  callbacks:\n    - class_path: rootedgan.metrics.FIDCallback\n      init_args: "
        f"{{every_kimg: 0, num_gen: 16, inception: {standin}, num_workers: 0, batch_size: 16}}\n"
    )
    out = tmp_path / "cmp"
    common = ["--kimg", "0.032", "--out", str(out), "--quiet", "--jobs", "2", "--threads", "1", "--",
              "--model.network", str(nvidia_fixture_dir / "tiny32.pkl"), "--data.path", str(shapes),
              "--config", str(fid)]  # fmt: skip
    env = {"ROOTEDGAN_CACHE": str(tmp_path / "cache")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        argv = [
            "compare",
            "--config",
            SMOKE,
            "--losses",
            "logistic,rooted:2",
            "--lrs",
            "0.5,1",
            "--seeds",
            "0",
        ]
        assert cli_main(argv + common) == 0
        argv = ["compare", "--config", SMOKE, "--losses", "logistic", "--lrs", "1", "--seeds", "1"]
        assert cli_main(argv + common) == 0
    records = {}
    for arm_dir in [
        "logistic/lr0.5/seed0",
        "rooted-k2/lr1/seed0",
        "logistic/lr1/seed0",
        "logistic/lr1/seed1",
    ]:
        (log_dir,) = (out / arm_dir).glob("lightning_logs/version_*")
        records[arm_dir] = json.loads((log_dir / "pairing.json").read_text())
    a, b, c, other = records.values()
    assert a["steps"] == 4 and a["evaluation"][0]["callback"] == "FIDCallback"
    assert a["evaluation"][0]["num_gen"] == 16
    for field in ("data", "latents", "evaluation"):
        assert a[field] == b[field] == c[field], field
    assert other["data"] != a["data"] and other["latents"] != a["latents"]
    assert other["evaluation"] == a["evaluation"]  # evaluation latents do not depend on the run's seed
    record = json.loads((out / "compare.json").read_text())  # the seed-1 comparison: one arm
    assert record["pairing"] is None


def test_forest_colours_follow_the_better_side_of_each_panel():
    """Green only when the CI excludes 0 on the better side: a worse arm (FID up, later to a target) is red,
    whatever the panel's title says (a regression coloured every panel with "kimg" in its title green)."""
    from rootedgan.compare.report import ci_colour

    assert ci_colour(122.0, 219.0, lower_is_better=True) == "tab:red"  # FID worse on every resample
    assert ci_colour(-219.0, -122.0, lower_is_better=True) == "tab:green"
    assert ci_colour(0.5, 1.6, lower_is_better=True) == "tab:red"  # reaches the target later
    assert ci_colour(0.5, 1.6, lower_is_better=False) == "tab:green"  # a score that went up
    assert ci_colour(-11.0, 114.0, lower_is_better=True) == "0.2"  # CI contains 0
    assert ci_colour(float("nan"), float("nan"), lower_is_better=True) == "0.2"
