"""The run of ``rootedgan demo``: its finetune arguments (the packaged config and assets) and the figure of
G_ema's samples before and after finetuning."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from rootedgan.digits import PRETRAINED, TARGET_ZIP
from rootedgan.errors import UserError
from rootedgan.imaging import save_image_atomic

# shipped inside the package (configs/ in a checkout links here), so an installed wheel has it too
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def finetune_args(
    config: str | Path = DEMO_CONFIG, seed: int = 0, kimg: float | None = None, extra: Sequence[str] = ()
) -> list[str]:
    """``rootedgan finetune`` arguments of the demo: ``--config config`` first, then the packaged network
    and target digits, the seed, the length (default: the config's) and ``extra``."""
    config = Path(config)
    if not config.is_file():
        raise UserError(f"demo config {config} not found: pass --config PATH (the default is {DEMO_CONFIG})")
    for asset in (PRETRAINED, TARGET_ZIP):
        if not asset.is_file():
            raise UserError(f"demo asset {asset} is missing; reinstall rootedgan or check out the repository")
    argv = ["--config", str(config), "--model.network", str(PRETRAINED), "--data.path", str(TARGET_ZIP)]
    argv += ["--model.seed", str(seed)]
    if kimg is not None:
        argv += ["--model.total_kimg", str(kimg)]
    return argv + list(extra)


def before_after(run: Path, out: Path) -> Path | None:
    """Put ``fakes_init.png`` and the last ``fakesKKKKKK.png`` of ``run`` side by side in ``out``."""
    after = sorted(run.glob("fakes[0-9]*.png"))
    before = run / "fakes_init.png"
    if not after or not before.is_file():
        return None
    a = np.asarray(Image.open(before).convert("RGB"))
    b = np.asarray(Image.open(after[-1]).convert("RGB"))
    gap = np.full([a.shape[0], 8, 3], 255, dtype=np.uint8)
    save_image_atomic(np.concatenate([a, gap, b], axis=1), out)
    return out
