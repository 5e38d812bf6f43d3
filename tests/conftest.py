"""Shared pytest set-up: the `gpu` marker skips without CUDA; fixtures made outside this project
(NVIDIA's and rosinality's own code) under tests/fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # bench/ (test scaffolding such as bench.synthetic_data) importable
    sys.path.insert(0, str(REPO_ROOT))
FIXTURES = REPO_ROOT / "tests" / "fixtures"
#: The tests' tiny finetune configs (NVIDIA's 32 px fixture network, 8 steps on the CPU).
SMOKE = str(REPO_ROOT / "tests" / "configs" / "smoke.yaml")
SMOKE_ORTHOGONAL = str(REPO_ROOT / "tests" / "configs" / "smoke-orthogonal.yaml")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    reason = "needs a CUDA device (torch.cuda.is_available() is False on this machine)"
    skip_gpu = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def nvidia_fixture_dir() -> Path:
    path = FIXTURES / "nvidia"
    assert (path / "tiny32.pkl").exists(), f"NVIDIA fixture missing from the repository: {path}"
    return path


@pytest.fixture(scope="session")
def tiny32(nvidia_fixture_dir: Path) -> str:
    """NVIDIA's tiny 32x32 network pickle (path as a string)."""
    return str(nvidia_fixture_dir / "tiny32.pkl")


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32-image, 32x32 generated shapes data set (read-only for the tests that share it)."""
    from bench.synthetic_data import make_shapes_dataset

    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), count=32, resolution=32)


@pytest.fixture(scope="session")
def rosinality_fixture_dir() -> Path:
    path = FIXTURES / "rosinality"
    assert (path / "tiny32.pt").exists(), f"rosinality fixture missing from the repository: {path}"
    return path


def fit_batches(module: L.LightningModule, batches: list, **trainer_kwargs) -> L.Trainer:
    """Train ``module`` on the CPU over a fixed list of ``(images, labels)`` batches, one epoch, with no
    logger, checkpoint, progress bar or summary (the plain loop the step tests need)."""
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    return trainer
