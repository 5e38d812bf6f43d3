"""Train the demo's pretrained model (README, "The demo"): a small StyleGAN2 at 32x32 on the source digits
(0-4), from scratch, on a CPU, by :class:`~rootedgan.training.module.FinetuneModule` with the logistic loss
and NVIDIA's CIFAR-style settings (2 mapping layers, no path-length regularization or style mixing).
``python -m rootedgan.digits.pretrain`` reproduces ``assets/digits-source-G.safetensors`` (the same weights
on the same machine and library versions); the shipped file is a 40 kimg run resumed (exactly) to 70 kimg.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from rootedgan.checkpoints import save_network
from rootedgan.data import ImageDataModule
from rootedgan.digits import PRETRAINED, SOURCE_ZIP
from rootedgan.training.module import FinetuneModule
from rootedgan.training.snapshots import NetworkSnapshot

__all__ = ["G_KWARGS", "D_KWARGS", "TRAIN_SETTINGS", "pretrain", "main"]

_SHARED = dict(c_dim=0, img_resolution=32, img_channels=3)  # G's and D's, with their widths:
_WIDTHS = dict(channel_base=2048, channel_max=64, num_fp16_res=0, conv_clamp=None)
G_KWARGS: dict[str, Any] = dict(
    z_dim=64, w_dim=64, **_SHARED, mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(_WIDTHS)
)
D_KWARGS: dict[str, Any] = dict(**_SHARED, **_WIDTHS, epilogue_kwargs=dict(mbstd_group_size=4))
TRAIN_SETTINGS: dict[str, Any] = dict(
    loss="logistic",
    optim=dict(g_lr=0.0025, d_lr=0.0025),
    reg=dict(r1_gamma=0.05, r1_interval=16, pl_weight=0.0, style_mixing_prob=0.0),
    ema=dict(kimg=0.5, rampup=0.05),
)


def pretrain(
    out: Path,
    kimg: float = 70.0,
    batch_size: int = 32,
    seed: int = 0,
    data: Path = SOURCE_ZIP,
    run_dir: Path | None = None,
    progress: bool = True,
    resume: Path | None = None,
    r1_gamma: float | None = None,
    lr: float | None = None,
) -> Path:
    """Train from scratch on ``data`` for ``kimg`` thousand images and save G_ema + D to ``out``.

    ``resume``: a ``checkpoints/last.ckpt`` of an earlier, shorter run with the same settings; resume is
    exact, so the result equals one uninterrupted run of ``kimg``.
    """
    settings = copy.deepcopy(TRAIN_SETTINGS)
    if r1_gamma is not None:
        settings["reg"]["r1_gamma"] = r1_gamma
    if lr is not None:
        settings["optim"].update(g_lr=lr, d_lr=lr)
    L.seed_everything(seed, verbose=False)
    module = FinetuneModule(
        network=None,
        g_kwargs=copy.deepcopy(G_KWARGS),
        d_kwargs=copy.deepcopy(D_KWARGS),
        total_kimg=kimg,
        seed=seed,
        **settings,
    )
    datamodule = ImageDataModule(str(data), batch_size=batch_size, num_workers=0, xflip=False)
    root = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="digits-pretrain-"))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=-1,
        default_root_dir=str(root),
        logger=L.pytorch.loggers.CSVLogger(str(root)),
        callbacks=[NetworkSnapshot(snap_kimg=max(kimg / 6, 0.001), grid_seeds=32)],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        use_distributed_sampler=False,
        log_every_n_steps=10,
    )
    start = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    meta = {
        "what": "rootedgan digits demo: StyleGAN2 trained from scratch on UCI digits 0-4 (32x32)",
        "trained_by": "python -m rootedgan.digits.pretrain",
        "kimg": round(module.cur_kimg, 3),
        "batch_size": batch_size,
        "seed": seed,
        "settings": settings,
        "train_seconds": round(time.time() - start, 1),
        "torch": torch.__version__,
    }
    return save_network(out, D=module.D, G_ema=module.G_ema, meta=meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Train the digits demo's pretrained StyleGAN2 (source digits)."
    )
    parser.add_argument("--out", type=Path, default=PRETRAINED)
    parser.add_argument("--kimg", type=float, default=70.0)
    parser.add_argument("--batch", dest="batch_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", type=Path, help="where logs and grids go (default: a temp dir)")
    parser.add_argument("--resume", type=Path, help="continue from an earlier run's checkpoints/last.ckpt")
    parser.add_argument("--r1-gamma", type=float, help="override the R1 weight")
    parser.add_argument("--lr", type=float, help="override both learning rates")
    print(f"wrote {pretrain(**vars(parser.parse_args(argv)))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
