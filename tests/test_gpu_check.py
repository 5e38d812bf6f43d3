"""The prepared GPU check (bench/gpu_check.py) runs end to end as a CPU rehearsal, so it cannot rot
between the sessions that have a GPU: every step either runs or says why it was skipped, and each
benchmark it drives writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu-check")
    # A budget no CPU reaches: the rehearsal checks code paths, and a busy machine must not skip any.
    cmd = [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--cpu-rehearsal", "--out", str(out),
           "--budget-s", "3600"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    return proc, out


def test_rehearsal_runs_every_step(rehearsal):
    proc, out = rehearsal
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    record = json.loads((out / "gpu_check.json").read_text())
    assert record["mode"] == "cpu-rehearsal"
    names = [s["name"] for s in record["steps"]]
    assert names == [
        "environment", "install", "ops_build", "pytest_gpu", "nvidia_train",
        "train", "train_1024", "fid", "ops_bench",
    ]  # fmt: skip
    for step in record["steps"]:
        assert step["status"] in ("ok", "skipped"), step
        if step["status"] == "skipped":
            assert step["reason"], f"{step['name']} skipped without a reason"
    by_name = {s["name"]: s for s in record["steps"]}
    assert by_name["ops_build"]["status"] == "skipped" and "CUDA" in by_name["ops_build"]["reason"]
    assert "gpu_check:" in (out / "gpu_check.log").read_text()


def test_rehearsal_measures_every_lever(rehearsal):
    _, out = rehearsal
    train = json.loads((out / "train-cpu-rehearsal.json").read_text())
    rows = train["results"]
    assert all("error" not in r for r in rows), [r.get("error") for r in rows]
    levers = {r["lever"] for r in rows}
    from bench.train import LEVERS

    assert levers == {None} | set(LEVERS)
    assert all("profile" in r for r in rows if r["lever"] is None)  # the baseline rows are profiled
    assert {(r["variant"], r["loss"]) for r in rows if r["lever"] is None} == {
        (v, loss) for v in ("fp16", "fp32") for loss in ("logistic", "rooted")
    }
    for name in ("ops-cpu-rehearsal.json", "fid-cpu-rehearsal.json"):
        assert json.loads((out / name).read_text())["machine"]["torch"]


def test_unknown_step_is_refused(tmp_path):
    cmd = [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(tmp_path), "--only", "warp"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown steps warp" in proc.stderr
