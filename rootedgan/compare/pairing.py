"""The paired design of a comparison (README, "Comparing losses"), recorded by each run and checked across
arms: every run of a seed gets the same ``--model.seed`` (a step's draws are a function of ``(seed, rank,
step)``) and ``--data.seed``, and the metric callbacks have their own ``seed``. :class:`PairingRecorder`
writes digests of the first batches, of the latents the steps drew in them (read, never drawn: the run is
unchanged) and of the evaluation latents to ``pairing.json``; :func:`check_pairing` compares them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch

from rootedgan.fileio import atomic_open
from rootedgan.metrics.features import LATENT_CHUNK, chunk_latents
from rootedgan.runs import run_dir

PAIRING_FILE = "pairing.json"
FIELDS = ("data", "latents", "evaluation")


def _update(h: Any, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    h.update(f"{t.dtype}:{tuple(t.shape)}:".encode())
    h.update(t.numpy().tobytes())


class _RecordingRandomness:
    """Wraps a step's randomness source; hashes every latent it hands out (same values, no extra draws)."""

    def __init__(self, inner: Any, digest: Any) -> None:
        self._inner = inner
        self._digest = digest

    def _record(self, label: str, z: torch.Tensor) -> torch.Tensor:
        self._digest.update(label.encode())
        _update(self._digest, z)
        return z

    def latents(self, phase: str, n: int, z_dim: int, device: torch.device) -> torch.Tensor:
        return self._record(phase, self._inner.latents(phase, n, z_dim, device))

    def mixing_latents(self, phase: str, z: torch.Tensor) -> torch.Tensor:
        return self._record(f"{phase}/mixing", self._inner.mixing_latents(phase, z))

    def __getattr__(self, name: str) -> Any:  # step, labels, mixing_cutoff, pl_noise, noise_mode, rank, ...
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("_inner", "_digest"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._inner, name, value)


def evaluation_latents(callback: Any, z_dim: int) -> dict[str, Any] | None:
    """What a metric callback evaluates on: its class, ``seed``, ``num_gen`` and the digest of the latents
    :func:`rootedgan.metrics.features.generated_uint8` draws for them (None for other callbacks)."""
    seed, num_gen = getattr(callback, "seed", None), getattr(callback, "num_gen", None)
    if not isinstance(seed, int) or not isinstance(num_gen, int):
        return None
    h = hashlib.sha256()
    for chunk in range((num_gen + LATENT_CHUNK - 1) // LATENT_CHUNK):
        size = min(LATENT_CHUNK, num_gen - chunk * LATENT_CHUNK)
        _update(h, chunk_latents(seed, chunk, z_dim)[:size])
    return {"callback": type(callback).__name__, "seed": seed, "num_gen": num_gen, "latents": h.hexdigest()}


class PairingRecorder(L.Callback):
    """Writes ``pairing.json`` (module docstring) after the first ``steps`` training steps (real batches)."""

    def __init__(self, steps: int = 4) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"PairingRecorder: steps must be >= 1, got {steps}")
        self.steps = steps
        self._data = hashlib.sha256()
        self._latents = hashlib.sha256()
        self._seen = 0
        self._start_step: int | None = None
        self._wrapped: _RecordingRandomness | None = None
        self._done = False

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        if self._done:
            return
        if self._start_step is None:
            self._start_step = int(getattr(module, "step_idx", 0))
        # wrapped here, after the module's own on_train_start has set its source up (e.g. the rank)
        if self._wrapped is None and hasattr(module, "randomness"):
            self._wrapped = _RecordingRandomness(module.randomness, self._latents)
            module.randomness = self._wrapped
        for item in batch if isinstance(batch, (list, tuple)) else [batch]:
            if isinstance(item, torch.Tensor):
                _update(self._data, item)

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        if self._done:
            return
        self._seen += 1
        if self._seen >= self.steps or trainer.should_stop:
            self._finish(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        if not self._done and self._seen:
            self._finish(trainer, module)

    def _finish(self, trainer: L.Trainer, module: Any) -> None:
        self._done = True
        if self._wrapped is not None and module.randomness is self._wrapped:
            module.randomness = self._wrapped._inner
        z_dim = int(getattr(getattr(module, "G_ema", None), "z_dim", 0) or 0)
        evals = [e for cb in trainer.callbacks if cb is not self and (e := evaluation_latents(cb, z_dim))]
        record = {
            "steps": self._seen,
            "first_step": self._start_step,
            "data": self._data.hexdigest(),
            "latents": self._latents.hexdigest(),
            "evaluation": evals,
        }
        if trainer.is_global_zero:
            out = run_dir(trainer)
            out.mkdir(parents=True, exist_ok=True)
            with atomic_open(out / PAIRING_FILE, "w") as fh:
                json.dump(record, fh, indent=1)


def read_pairing(log_dir: str | Path) -> dict[str, Any] | None:
    """A run's ``pairing.json`` (None when it has none)."""
    try:
        return json.loads((Path(log_dir) / PAIRING_FILE).read_text())
    except (OSError, ValueError):
        return None


def check_pairing(records: Mapping[str, Mapping[int, Mapping[str, Any] | None]]) -> dict[str, Any]:
    """Compare ``records[arm][seed]`` (``pairing.json`` contents, None if missing) across arms, per seed.

    Returns ``{"paired": bool, "seeds": n, "arms": n, "missing": ["arm/seedS", ...], "mismatches":
    [{"seed", "field", "arms": {arm: value}}], "text": one sentence}``. ``paired`` is True only when
    every run has a record and, for each seed, every field of :data:`FIELDS` is equal across arms.
    """
    seeds = sorted({s for by_seed in records.values() for s in by_seed})
    missing = [f"{arm}/seed{s}" for arm, by_seed in records.items() for s in seeds if not by_seed.get(s)]
    mismatches = []
    for seed in seeds:
        present = {arm: by_seed[seed] for arm, by_seed in records.items() if by_seed.get(seed)}
        for field in FIELDS:
            values = {arm: rec.get(field) for arm, rec in present.items()}
            if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
                mismatches.append({"seed": seed, "field": field, "arms": values})
    steps = sorted({int(r.get("steps", 0)) for by_seed in records.values() for r in by_seed.values() if r})
    paired = not missing and not mismatches and bool(seeds)
    arms = len(records)
    if paired:
        text = (
            f"Pairing verified: for each of the {len(seeds)} seeds, all {arms} arms saw the same data "
            f"(first {min(steps)} batches), drew the same training latents (first {min(steps)} steps) and "
            "were evaluated on the same latents."
        )
    else:
        parts = [f"no pairing record for {', '.join(missing)}"] if missing else []
        if mismatches:
            parts.append(
                "differences: " + ", ".join(f"seed {m['seed']} {m['field']}" for m in mismatches[:10])
            )
        text = "Pairing NOT verified: " + "; ".join(p for p in parts if p) + "."
    digests = {arm: {str(s): r for s, r in by_seed.items()} for arm, by_seed in records.items()}
    return {
        "paired": paired,
        "seeds": len(seeds),
        "arms": arms,
        "missing": missing,
        "mismatches": mismatches,
        "text": text,
        "digests": digests,
    }
