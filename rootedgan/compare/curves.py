"""Curves (a logged quantity against kimg) read back from a finetune run's logs.

Lightning's ``metrics.csv`` has one column per logged key, rows sparse; a row without ``kimg`` (e.g. an FID
written straight to the logger) is placed by its ``step``, interpolated between the rows that have both
(extrapolated with the least-squares slope beyond them). The ``metrics/*`` curves of the evaluation
callbacks' ``metric-*.jsonl`` files (each record with its exact ``kimg``) replace the CSV's.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rootedgan.runs import run_log_dir

_NOT_CURVES = ("step", "epoch", "kimg")


@dataclass(frozen=True)
class Curve:
    """One quantity against training progress: ``kimg [T]`` strictly increasing, ``value [T]`` (float64)."""

    kimg: np.ndarray
    value: np.ndarray

    @classmethod
    def from_points(cls, points: Iterable[tuple[float, float]]) -> Curve:
        """Sorted by kimg; of several points at the same kimg the last one given wins."""
        by_kimg: dict[float, float] = {}
        for k, v in points:
            if math.isfinite(float(k)):
                by_kimg[float(k)] = float(v)
        kimg = np.array(sorted(by_kimg), dtype=np.float64)
        return cls(kimg, np.array([by_kimg[k] for k in kimg], dtype=np.float64))

    def __len__(self) -> int:
        return len(self.kimg)


def _float(cell: str | None) -> float | None:
    try:
        return float(cell)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # None, empty or not a number
        return None


def _step_to_kimg(steps: np.ndarray, kimgs: np.ndarray) -> Any:
    """A function step -> kimg from rows that logged both (None when no row did; with one step, it maps
    only that step)."""
    if len(steps) == 0:
        return None
    unique_steps, first = np.unique(steps, return_index=True)
    unique_kimg = kimgs[first]
    slope, intercept = np.polyfit(unique_steps, unique_kimg, 1) if len(unique_steps) > 1 else (None, None)

    def kimg_of(step: float) -> float | None:
        if unique_steps[0] <= step <= unique_steps[-1]:
            return float(np.interp(step, unique_steps, unique_kimg))
        return None if slope is None else float(slope * step + intercept)

    return kimg_of


def read_metrics_csv(path: str | Path) -> dict[str, Curve]:
    """Every logged key of a Lightning ``metrics.csv`` as a curve against kimg (module docstring)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    pairs = [(_float(r.get("step")), _float(r.get("kimg"))) for r in rows]
    known = [(s, k) for s, k in pairs if s is not None and k is not None]
    kimg_of = _step_to_kimg(np.array([s for s, _ in known]), np.array([k for _, k in known]))
    points: dict[str, list[tuple[float, float]]] = {}
    for row, (step, kimg) in zip(rows, pairs, strict=True):
        if kimg is None and step is not None and kimg_of is not None:
            kimg = kimg_of(step)
        if kimg is None:
            continue
        for key, cell in row.items():
            if key is None or key in _NOT_CURVES:
                continue
            value = _float(cell)
            if value is not None:
                points.setdefault(key, []).append((kimg, value))
    return {key: Curve.from_points(p) for key, p in points.items()}


def read_metric_jsonl(path: str | Path) -> dict[str, Curve]:
    """A ``metric-*.jsonl`` file as ``{key: Curve}``: NVIDIA's records ``{"results": {"fid50k_full": v},
    "kimg": k, ...}`` give ``metrics/fid50k_full``, flat ones ``{"kimg": k, "metrics/<name>": v, ...}`` (the
    digits callback) their ``metrics/*`` keys. A truncated last line (a run killed while writing) is skipped.
    """
    points: dict[str, list[tuple[float, float]]] = {}
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
            kimg = float(record["kimg"])
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(record.get("results"), dict):
            values = {f"metrics/{name}": v for name, v in record["results"].items()}
        else:
            values = {k: v for k, v in record.items() if k.startswith("metrics/")}
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                points.setdefault(key, []).append((kimg, float(value)))
    return {key: Curve.from_points(p) for key, p in points.items()}


def collect_run(run_dir: str | Path) -> dict[str, Curve]:
    """All curves of one run (its ``default_root_dir`` or a version folder, :func:`run_log_dir`):
    ``{logged key: Curve}``, the jsonl values taking precedence."""
    log_dir = run_log_dir(run_dir)
    csv_file = log_dir / "metrics.csv"
    curves = read_metrics_csv(csv_file) if csv_file.is_file() else {}
    for jsonl in sorted(log_dir.glob("metric-*.jsonl")):
        curves.update(read_metric_jsonl(jsonl))
    return curves
