"""Shared pytest set-up: the `gpu` marker skips without CUDA; fixture paths under ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"


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
    path = SHARED_FIXTURES / "nvidia"
    if not (path / "tiny32.pkl").exists():
        pytest.skip(f"NVIDIA fixture not found at {path}")
    return path


@pytest.fixture(scope="session")
def rosinality_fixture_dir() -> Path:
    path = SHARED_FIXTURES / "rosinality"
    if not (path / "tiny32.pt").exists():
        pytest.skip(f"rosinality fixture not found at {path}")
    return path
