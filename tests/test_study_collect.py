"""docs/study/collect.py: the Study 2 landscape measures per arm and paired against logistic, checked against
numpy on synthetic landscape summaries (the layout `rootedgan landscape` writes)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

COLLECT = Path(__file__).resolve().parents[1] / "docs" / "study" / "collect.py"


@pytest.fixture(scope="module")
def collect():
    spec = importlib.util.spec_from_file_location("study_collect", COLLECT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _probe(study: Path, arm: str, seed: int, **summary) -> None:
    folder = study / "landscape" / f"{arm}-seed{seed}"
    folder.mkdir(parents=True)
    (folder / "landscape.json").write_text(json.dumps({"runs": {f"run ({arm})": {"summary": summary}}}))


def test_landscape_values_and_table_match_numpy(collect, tmp_path):
    rng = np.random.default_rng(0)
    frac = {"logistic": rng.uniform(0, 1, 4), "rooted-k2": rng.uniform(0, 1, 4)}
    for arm, values in frac.items():
        for seed, v in enumerate(values):
            # seed 3 of rooted-k2: a measure the probe could not compute
            mu = None if (arm, seed) == ("rooted-k2", 3) else float(seed + 1)
            _probe(
                tmp_path,
                arm,
                seed,
                feasible_fraction=float(v),
                holds_alpha1_beta0=seed % 2 == 0,
                pl_mu_min=mu,
                cos_median=0.01 * seed,
            )
    values = collect.landscape_values(tmp_path)
    assert sorted(values) == ["logistic", "rooted-k2"]
    assert values["rooted-k2"]["feasible_fraction"] == dict(enumerate(frac["rooted-k2"].tolist()))
    assert sorted(values["rooted-k2"]["pl_mu_min"]) == [0, 1, 2]  # seed 3 left out, not counted as 0
    assert values["logistic"]["holds_alpha1_beta0"] == {0: 1.0, 1: 0.0, 2: 1.0, 3: 0.0}

    lines = collect.measure_table(values, collect.LANDSCAPE_MEASURES)
    row = next(line for line in lines if line.startswith("| `rooted-k2` | 4 |"))
    assert f"{frac['rooted-k2'].mean():.3g} [" in row
    diff_row = next(line for line in lines if line.startswith("| `rooted-k2` |") and "p = " in line)
    diffs = frac["rooted-k2"] - frac["logistic"]
    larger = int((diffs > 0).sum())
    assert diff_row.split(" | ")[1].startswith(f"{diffs.mean():.3g} [")
    assert f"larger on {larger}/4" in diff_row.split(" | ")[1]
    assert "larger on 0/3" in diff_row.split(" | ")[3]  # pl_mu_min: seeds 0-2 only, equal values
    assert not any(line.startswith("| `logistic` |") and "p = " in line for line in lines)


def _ada_run(root: Path, name: str, p: list[float], rt: list[float], target: float = 0.5) -> str:
    """A run folder as `rootedgan finetune` leaves it: an older version with other values, and the last one
    (version_10: the versions are ordered by number, not by name) whose metrics.csv has empty cells between
    the ADA adjustments, as Lightning's CSV logger writes them."""
    run = root / name
    for version, scale in (("version_2", 9.0), ("version_10", 1.0)):
        folder = run / "lightning_logs" / version
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(f"model:\n  augment:\n    kind: ada\n    ada_target: {target}\n")
        lines = ["step,kimg,Loss/G/loss,Progress/augment_p,Progress/ada_rt"]
        for i, (pi, ri) in enumerate(zip(p, rt, strict=True)):
            lines += [
                f"{2 * i},{0.064 * i},1.0,,",
                f"{2 * i + 1},{0.064 * i + 0.032},,{pi * scale},{ri * scale}",
            ]
        (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    return str(run)


def test_ada_values_and_table_match_numpy(collect, tmp_path):
    rng = np.random.default_rng(1)
    p = {arm: rng.uniform(0, 0.2, (3, 5)) for arm in ("logistic", "rooted:2")}
    rt = {arm: rng.uniform(0.3, 0.9, (3, 5)) for arm in ("logistic", "rooted:2")}
    runs = [
        {"arm": arm, "seed": s, "run_dir": _ada_run(tmp_path, f"{arm}-{s}", p[arm][s], rt[arm][s])}
        for arm in p
        for s in range(3)
    ]
    no_ada = tmp_path / "no-ada" / "lightning_logs" / "version_0"
    no_ada.mkdir(parents=True)
    (no_ada / "metrics.csv").write_text("step,kimg,Loss/G/loss\n0,0.0,1.0\n")
    runs.append({"arm": "plain", "seed": 0, "run_dir": str(no_ada.parents[1])})
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "compare.json").write_text(json.dumps({"runs": runs}))

    values = collect.ada_values(tmp_path)
    assert sorted(values) == ["logistic", "rooted:2"]  # the run without ADA is left out
    for arm in p:
        assert values[arm]["p_peak"] == pytest.approx(dict(enumerate(p[arm].max(axis=1))))
        assert values[arm]["rt_above_target"] == pytest.approx(dict(enumerate((rt[arm] > 0.5).mean(axis=1))))
    lines = collect.measure_table(values, collect.ADA_MEASURES)
    diff_row = next(line for line in lines if line.startswith("| `rooted:2` |") and "p = " in line)
    diffs = p["rooted:2"].max(axis=1) - p["logistic"].max(axis=1)
    assert diff_row.split(" | ")[1].startswith(f"{diffs.mean():.3g} [")
    runs.append(
        {"arm": "logistic", "seed": 9, "run_dir": str(tmp_path / "never-started")}
    )  # no logs: left out
    (tmp_path / "eval" / "compare.json").write_text(json.dumps({"runs": runs}))
    assert collect.ada_values(tmp_path) == values
    assert collect.ada_values(tmp_path / "missing") == {}
