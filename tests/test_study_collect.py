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

    lines = collect.landscape_table(values)
    row = next(line for line in lines if line.startswith("| `rooted-k2` | 4 |"))
    assert f"{frac['rooted-k2'].mean():.3g} [" in row
    diff_row = next(line for line in lines if line.startswith("| `rooted-k2` |") and "p = " in line)
    diffs = frac["rooted-k2"] - frac["logistic"]
    larger = int((diffs > 0).sum())
    assert diff_row.split(" | ")[1].startswith(f"{diffs.mean():.3g} [")
    assert f"larger on {larger}/4" in diff_row.split(" | ")[1]
    assert "larger on 0/3" in diff_row.split(" | ")[3]  # pl_mu_min: seeds 0-2 only, equal values
    assert not any(line.startswith("| `logistic` |") and "p = " in line for line in lines)
