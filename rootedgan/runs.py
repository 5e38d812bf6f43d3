"""The run folder of a finetune, ``<default_root_dir>/lightning_logs/version_N/``, in one place: its version,
the kimg schedule and names of its snapshots, discovery of runs and their logs, and the one writer of
NVIDIA-style ``metric-*.jsonl`` records.

``KKKKKK`` in ``network-snapshot-KKKKKK.safetensors`` and ``fakesKKKKKK.png`` is the whole kimg as in
NVIDIA's runs; with a ``snap_kimg`` that is not a whole number it is ``KKKKKK.III`` (kimg and the remaining
images), so snapshots less than 1 kimg apart do not overwrite each other (names still sort in training
order).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from rootedgan.errors import UserError

LOGS = "lightning_logs"
RUN_RECORD = "run.json"  # written by rootedgan.compare.runner next to a finished run's logs
_VERSION_RX = re.compile(r"version_(\d+)")
_SNAPSHOT_RX = re.compile(r"network-snapshot-(\d+)(?:\.(\d+))?\.safetensors")


def claim_version(root: str | os.PathLike[str], env_var: str = "ROOTEDGAN_RUN_VERSION") -> int:
    """Create ``root/lightning_logs/version_N`` for a new run and return N: the first free number after the
    highest one there, claimed with an exclusive ``mkdir``, so two runs started at once never share a
    folder. The launching process hands N to its DDP ranks (started with ``LOCAL_RANK`` set) through
    ``env_var``, so that all ranks write to the one folder."""
    logs = Path(root) / LOGS
    handed = os.environ.get(env_var, "")
    if os.environ.get("LOCAL_RANK") not in (None, "0") and handed.startswith(f"{logs.resolve()}::"):
        return int(handed.rsplit("::", 1)[1])
    logs.mkdir(parents=True, exist_ok=True)
    version = max((_version_number(p) for p in logs.iterdir()), default=-1) + 1
    while True:
        try:
            (logs / f"version_{version}").mkdir()
            break
        except FileExistsError:
            version += 1
    os.environ[env_var] = f"{logs.resolve()}::{version}"
    return version


def run_dir(trainer: Any) -> Path:
    """Where a run's artifacts go: the logger's version directory, else ``default_root_dir``.

    Collective under DDP (``trainer.log_dir`` broadcasts from rank 0): call it on every rank.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)


class KimgSchedule:
    """Fires at every multiple of ``every_kimg`` thousand images (``0``: never), at most once per call.

    The next multiple is kept as an integer count, so long runs with a fractional interval do not drift;
    a tolerance of 1e-9 kimg absorbs the rounding of ``nimg / 1000``.
    """

    def __init__(self, every_kimg: float) -> None:
        self.every_kimg = float(every_kimg)
        self._next: int | None = None  # index of the next multiple of every_kimg

    def _index(self, cur_kimg: float) -> int:
        return math.floor(cur_kimg / self.every_kimg + 1e-9) + 1

    def start(self, cur_kimg: float) -> None:
        """Arm the schedule at the first multiple after ``cur_kimg`` (a fresh run or a resume)."""
        self._next = self._index(cur_kimg) if self.every_kimg else None

    def due(self, cur_kimg: float) -> bool:
        """True once ``cur_kimg`` has reached the next multiple; then arms the one after ``cur_kimg``."""
        if self._next is None or cur_kimg < self._next * self.every_kimg - 1e-9:
            return False
        self._next = self._index(cur_kimg)
        return True


def snapshot_tag(cur_nimg: int, snap_kimg: float) -> str:
    """The ``KKKKKK`` (``000012``) or ``KKKKKK.III`` (``000000.250``) in snapshot and grid names."""
    kimg, rest = divmod(int(cur_nimg), 1000)
    return f"{kimg:06d}" if float(snap_kimg).is_integer() else f"{kimg:06d}.{rest:03d}"


def snapshot_path(out: Path, cur_nimg: int) -> Path | None:
    """The snapshot written at ``cur_nimg`` in ``out`` under either naming, or None."""
    kimg, rest = divmod(int(cur_nimg), 1000)
    for tag in (f"{kimg:06d}.{rest:03d}", f"{kimg:06d}"):
        path = out / f"network-snapshot-{tag}.safetensors"
        if path.exists():
            return path
    return None


def newest_snapshot(run: str | os.PathLike[str]) -> Path | None:
    """The newest ``network-snapshot-KKKKKK[.III].safetensors`` of a run folder (by kimg), else None.
    Adapter files (``*.adapter.safetensors``) are left out: the plain snapshot next to each loads alone."""
    try:
        entries = list(Path(run).iterdir())
    except OSError:
        return None
    found = [
        ((int(m.group(1)), int(m.group(2) or 0)), entry)
        for entry in entries
        if (m := _SNAPSHOT_RX.fullmatch(entry.name)) and entry.is_file()
    ]
    return max(found)[1] if found else None


def _has_logs(folder: Path) -> bool:
    return (folder / "metrics.csv").is_file() or any(folder.glob("metric-*.jsonl"))


def _version_number(path: Path) -> int:
    match = _VERSION_RX.fullmatch(path.name)
    return int(match.group(1)) if match else -1


def log_dirs(root: str | os.PathLike[str]) -> list[Path]:
    """The folders holding a run's logs, oldest first: ``root`` itself when it has a ``metrics.csv`` or
    ``metric-*.jsonl``, else its ``lightning_logs/version_*`` folders."""
    root = Path(root)
    if _has_logs(root):
        return [root]
    versions = [p for p in (root / LOGS).glob("version_*") if p.is_dir() and _version_number(p) >= 0]
    return sorted(versions, key=_version_number)


def latest_run(root: str | os.PathLike[str]) -> Path:
    """The newest ``lightning_logs/version_*`` folder under ``root``."""
    runs = log_dirs(root)
    if not runs:
        raise UserError(f"no run found under {Path(root) / LOGS}")
    return runs[-1]


def run_log_dir(root: str | os.PathLike[str]) -> Path:
    """The log folder of a run: the one its ``run.json`` names, else the newest one with logs."""
    root = Path(root)
    record_path = root / RUN_RECORD
    if record_path.is_file():
        try:
            named = json.loads(record_path.read_text()).get("log_dir")
        except ValueError:
            named = None
        if named and (root / named).is_dir():
            return root / named
    candidates = [d for d in log_dirs(root) if _has_logs(d)]
    if not candidates:
        raise UserError(
            f"no logs in {root}: expected lightning_logs/version_*/metrics.csv (Lightning's CSV logger) "
            "or metric-*.jsonl files from rootedgan.metrics.FIDCallback"
        )
    return candidates[-1]


def append_metric_record(folder: str | os.PathLike[str], name: str, record: dict[str, Any]) -> Path:
    """Append one evaluation as a JSON line to ``folder/metric-<name>.jsonl`` (NVIDIA's file per metric)."""
    path = Path(folder) / f"metric-{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    return path
