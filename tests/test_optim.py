"""The golden-ratio SGD preset: constants against their closed forms, and the optimizers it builds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rootedgan.errors import UserError
from rootedgan.training.module import FinetuneModule
from rootedgan.training.optim import GOLDEN_LR, GOLDEN_MOMENTUM, PHI, build_optimizer, describe


def test_golden_constants_satisfy_their_closed_forms():
    """Identities the constants must satisfy, derived independently of how optim.py computes them."""
    roots = np.roots([1.0, -1.0, -1.0])  # x^2 - x - 1 = 0
    assert PHI == pytest.approx(roots.max(), abs=1e-15)
    assert 1 / PHI == pytest.approx(PHI - 1, abs=1e-15)
    # momentum sqrt(2)/phi: its square is 2/phi^2 = 2(2 - phi) = 3 - sqrt 5
    assert GOLDEN_MOMENTUM**2 == pytest.approx(3 - math.sqrt(5), abs=1e-15)
    assert 0 < GOLDEN_MOMENTUM < 1
    # learning rate (1 - m)^2 = 1 - 2m + m^2 = 4 - sqrt 5 - 2 sqrt(3 - sqrt 5)
    assert GOLDEN_LR == pytest.approx(4 - math.sqrt(5) - 2 * math.sqrt(3 - math.sqrt(5)), abs=1e-15)
    assert math.sqrt(GOLDEN_LR) + GOLDEN_MOMENTUM == pytest.approx(1.0, abs=1e-15)
    # the rounded values reported for arXiv 2605.20009, to the digits reported
    assert round(GOLDEN_MOMENTUM, 3) == 0.874 and round(GOLDEN_LR, 3) == 0.016


def test_presets_build_the_right_optimizers():
    p = [torch.nn.Parameter(torch.zeros(3))]
    golden = build_optimizer("golden", p, lr=0.002)
    assert isinstance(golden, torch.optim.SGD)
    assert golden.param_groups[0]["lr"] == GOLDEN_LR and golden.param_groups[0]["momentum"] == GOLDEN_MOMENTUM
    lazy = build_optimizer("golden", p, lr=0.002, reg_interval=4)
    assert lazy.param_groups[0]["lr"] == pytest.approx(GOLDEN_LR * 4 / 5)
    assert lazy.param_groups[0]["momentum"] == pytest.approx(GOLDEN_MOMENTUM ** (4 / 5))
    adam = build_optimizer("adam", p, lr=0.002, betas=(0.0, 0.99), reg_interval=16)
    assert isinstance(adam, torch.optim.Adam)
    assert adam.param_groups[0]["lr"] == pytest.approx(0.002 * 16 / 17)
    assert adam.param_groups[0]["betas"] == pytest.approx((0.0, 0.99 ** (16 / 17)))
    assert describe(golden)["name"] == "golden" and "2605.20009" in describe(golden)["source"]
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("lion", p, lr=0.1)


def test_module_selects_the_preset_per_network(nvidia_fixture_dir):
    module = FinetuneModule(network=str(nvidia_fixture_dir / "tiny32.pkl"), optim=dict(g_optimizer="golden"))
    opt_g, opt_d = module.configure_optimizers()
    assert isinstance(opt_g, torch.optim.SGD) and isinstance(opt_d, torch.optim.Adam)
    assert opt_g.param_groups[0]["momentum"] == pytest.approx(GOLDEN_MOMENTUM ** (4 / 5))  # lazy pl, I=4
    with pytest.raises(UserError, match="d_optimizer"):
        FinetuneModule(network=str(nvidia_fixture_dir / "tiny32.pkl"), optim=dict(d_optimizer="rmsprop"))
