"""The callback that writes a run's snapshots, sample grids and resume checkpoints every ``snap_kimg``
thousand images and at the end (names and folders: :mod:`rootedgan.runs`).

* ``network-snapshot-KKKKKK.safetensors``: native checkpoint (G, D, G_ema + provenance), loadable by
  ``load_network`` / ``rootedgan generate``; written atomically on rank 0 (orthogonal mode: merged plain
  weights, plus ``network-snapshot-KKKKKK.adapter.safetensors`` with only the rotations and a reference to
  the base checkpoint);
* ``fakesKKKKKK.png``: NVIDIA-style grid of G_ema on fixed seeds (``fakes_init.png`` before training,
  ``reals.png`` once);
* ``checkpoints/last.ckpt`` (and ``checkpoints/kimgKKKKKK.ckpt`` with ``keep_checkpoints``): a Lightning
  checkpoint to resume from with ``--ckpt_path``.

Progress is counted in images, not Lightning steps: with several optimizers Lightning's ``global_step``
advances 2 to 4 times per batch, which makes ``ModelCheckpoint(every_n_train_steps=...)`` erratic.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from rootedgan.checkpoints import save_network
from rootedgan.errors import UserError
from rootedgan.imaging import make_grid, parse_grid, save_image_atomic, to_uint8
from rootedgan.runs import KimgSchedule, run_dir, snapshot_path, snapshot_tag
from rootedgan.sampling import class_labels, seed_latents


class NetworkSnapshot(L.Callback):
    """Snapshot, sample grid and resume checkpoint every ``snap_kimg`` thousand images (module docstring)."""

    def __init__(
        self,
        snap_kimg: float = 50.0,
        grid_seeds: int = 32,
        grid: str = "auto",
        truncation_psi: float = 1.0,
        save_final: bool = True,
        keep_checkpoints: bool = False,
    ) -> None:
        """
        Args:
            snap_kimg: interval between snapshots in thousands of real images (0: only at the end).
            grid_seeds: number of fixed latents (seeds 0..N-1, NVIDIA's convention) in each grid.
            grid: ``ROWSxCOLS`` or ``auto``.
            truncation_psi: truncation for the grids.
            save_final: also snapshot when training ends.
            keep_checkpoints: keep a Lightning checkpoint per snapshot, not only ``last.ckpt``.
        """
        super().__init__()
        if not snap_kimg >= 0:
            raise UserError(f"snapshot.snap_kimg must be >= 0 (0: only at the end), got {snap_kimg}")
        if grid_seeds < 1:
            raise UserError(f"snapshot.grid_seeds must be >= 1, got {grid_seeds}")
        self.snap_kimg, self.grid_seeds, self.grid = snap_kimg, grid_seeds, grid
        self.truncation_psi, self.save_final = truncation_psi, save_final
        self.keep_checkpoints = keep_checkpoints
        self._schedule = KimgSchedule(snap_kimg)
        self._out: Path | None = None
        self._last_snapshot_nimg: int | None = None  # same on every rank: decides collective saves

    def _grid(self, module: Any) -> np.ndarray:
        G = module.G_ema
        z = torch.from_numpy(seed_latents(range(self.grid_seeds), G.z_dim)).to(module.device)
        c = class_labels(G.c_dim, 0 if G.c_dim else None, len(z)).to(module.device)
        with torch.no_grad():
            images = [
                G(z[i : i + 8], c[i : i + 8], truncation_psi=self.truncation_psi, noise_mode="const")
                for i in range(0, len(z), 8)
            ]
        rows, cols = parse_grid(self.grid, self.grid_seeds)
        return make_grid(to_uint8(torch.cat(images)), rows, cols)

    def _snapshot(self, trainer: L.Trainer, module: Any) -> None:
        out, tag = self._out or run_dir(trainer), snapshot_tag(int(module.cur_nimg), self.snap_kimg)
        self._last_snapshot_nimg = int(module.cur_nimg)
        try:
            # Lightning checkpoints are collective: every rank calls, rank 0 writes.
            trainer.save_checkpoint(out / "checkpoints" / "last.ckpt", weights_only=False)
            if self.keep_checkpoints:
                trainer.save_checkpoint(out / "checkpoints" / f"kimg{tag}.ckpt", weights_only=False)
            if trainer.is_global_zero:
                self.write_files(module, out, tag)
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise UserError(
                f"disk full while writing the kimg {tag} snapshot in {out} ({err.strerror}); the files "
                f"written before are intact (each write is atomic). Free space, then resume with --ckpt_path "
                f"{out / 'checkpoints' / 'last.ckpt'}"
            ) from None

    def write_files(self, module: Any, out: Path, tag: str) -> Path:
        """``network-snapshot-TAG.safetensors`` (orthogonal mode: merged weights, plus the adapter file) and
        ``fakesTAG.png`` of ``module`` in ``out``; returns the snapshot's path."""
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"network-snapshot-{tag}.safetensors"
        save_network(path, **module.export_networks(), meta=module.provenance())
        module.save_adapter(out / f"network-snapshot-{tag}.adapter.safetensors")  # orthogonal mode only
        save_image_atomic(self._grid(module), out / f"fakes{tag}.png")
        return path

    def recover(self, module: Any, ckpt_path: str | Path) -> Path | None:
        """Write the snapshot of a resumed checkpoint's weights into the checkpoint's run folder when it is
        not there (a run killed after writing ``last.ckpt`` and before its snapshot, the final one
        included); returns its path, or None when nothing was missing."""
        ckpt = Path(ckpt_path).expanduser()
        folder = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        nimg = int(module.cur_nimg)
        if nimg == 0 or snapshot_path(folder, nimg) is not None:
            return None
        path = self.write_files(module, folder, snapshot_tag(nimg, self.snap_kimg))
        print(f"  wrote {path}: the snapshot of kimg {nimg / 1000:g} was missing (an interrupted write)")
        return path

    def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
        if trainer.ckpt_path and trainer.is_global_zero:
            self.recover(module, trainer.ckpt_path)
        self._schedule.start(module.cur_kimg)
        # A resumed run already has its snapshot at this point (last.ckpt is written with one): the final
        # snapshot is only written when this session trained at least one step.
        self._last_snapshot_nimg = int(module.cur_nimg)
        out = self._out = run_dir(trainer)  # on every rank: it is a collective
        if trainer.is_global_zero and module.cur_nimg == 0:
            out.mkdir(parents=True, exist_ok=True)
            save_image_atomic(self._grid(module), out / "fakes_init.png")
            dataset = getattr(trainer.train_dataloader, "dataset", None)
            if dataset is not None and len(dataset) > 0:
                count = min(len(dataset), self.grid_seeds)
                reals = torch.stack([torch.as_tensor(dataset[i][0]) for i in range(count)])
                rows, cols = parse_grid(self.grid, count)
                images = reals.permute(0, 2, 3, 1).cpu().numpy()
                save_image_atomic(make_grid(images, rows, cols), out / "reals.png")

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        if self._schedule.due(module.cur_kimg):
            self._snapshot(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        if self.save_final and self._last_snapshot_nimg != int(module.cur_nimg):
            self._snapshot(trainer, module)
