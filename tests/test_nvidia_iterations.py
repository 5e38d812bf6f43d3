"""Our training step against NVIDIA's own: 4 iterations of stylegan2-ada-pytorch's training loop.

``tests/fixtures/nvidia/tiny32.train4.npz`` was written by NVIDIA's code (its README says exactly how):
4 iterations from ``tiny32.pkl`` with every random draw stored. The real ``FinetuneModule.training_step``
runs here through a Lightning ``Trainer`` with those draws (``ReplayRandomness``) and must end with
NVIDIA's G, D, G_ema, ``pl_mean`` and Adam step counts, for the logistic loss and for the rooted loss as
the paper's authors wrote it (``k * (1 + e^u) ** (1 / k)``, k = 2).
"""

from __future__ import annotations

import ast

import numpy as np
import pytest
import torch
from conftest import fit_batches

from rootedgan.training.module import FinetuneModule
from rootedgan.training.randomness import ReplayRandomness

# Tolerances: what rounding alone does, measured with NVIDIA's own code re-run on the stored draws
# (bench/nvidia_iterations.py). Adam divides each gradient element by its running RMS, so an element whose
# gradient is ~1e-8 (Adam's eps) turns rounding noise into a visible fraction of a step (lr * 2/3 = 1.3e-3),
# and rounding depends on the CPU's instruction set (the kernels oneDNN and ATen pick). On the instruction
# set a variant was written with, NVIDIA's code and ours land >= 99.99 % within 1e-6 of it (max 2.1e-5).
# On another one NVIDIA's own code does not: on AVX2 its logistic half (written with AVX-512) is matched for
# 98.87 % of G's elements (D up to 4.2e-5), and with SSE4.1 kernels (ONEDNN_MAX_CPU_ISA=SSE41,
# ATEN_CPU_CAPABILITY=default) for 44 % (up to 6.8e-4; rooted D up to 8.9e-4). So the tight tolerance
# applies on the fixture's instruction set and the measured cross-CPU bound elsewhere, where ours still
# matches NVIDIA's code run on the same machine (the benchmark); test_the_iterations_move_the_weights shows
# both are far below what a step moves.
FIXTURE_ISA = {"logistic": "AVX512", "rooted": "AVX2"}  # torch.backends.cpu.get_cpu_capability() of each half
CLOSE = 1e-6
SAME_ISA = (5e-5, 0.999)  # (max |diff|, share within CLOSE)
OTHER_ISA = (2e-3, 0.40)  # NVIDIA's own code across instruction sets: 8.9e-4 and 0.44 at worst
MAX_ABS = SAME_ISA[0]


@pytest.fixture(scope="module")
def train4(nvidia_fixture_dir) -> dict[str, np.ndarray]:
    with np.load(nvidia_fixture_dir / "tiny32.train4.npz") as data:
        return {k: data[k] for k in data.files}


def _run_nvidia_recipe(tiny32: str, train4: dict[str, np.ndarray], loss: str) -> FinetuneModule:
    settings = ast.literal_eval(str(train4["settings"]))
    module = FinetuneModule(
        network=tiny32,
        loss=loss,
        optim=dict(g_lr=settings["lr"], d_lr=settings["lr"], betas=settings["betas"]),
        reg=dict(
            r1_gamma=settings["r1_gamma"],
            r1_interval=settings["D_reg_interval"],
            pl_weight=settings["pl_weight"],
            pl_interval=settings["G_reg_interval"],
            pl_batch_shrink=settings["pl_batch_shrink"],
            pl_decay=settings["pl_decay"],
            style_mixing_prob=settings["style_mixing_prob"],
        ),
        ema=dict(kimg=settings["ema_kimg"], rampup=settings["ema_rampup"]),
        total_kimg=1000.0,
    )
    module.randomness = ReplayRandomness(train4, noise_mode=settings["noise_mode"])
    real = torch.from_numpy(train4["real"])
    batches = [(img, torch.zeros([img.shape[0], 0])) for img in real]
    fit_batches(module, batches)
    return module


def _adam_steps(opt: torch.optim.Optimizer) -> set[int]:
    return {int(state["step"]) for state in opt.state.values()}


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "loss"), [("logistic", "logistic"), ("rooted", "rooted:2")])
def test_training_step_reproduces_nvidia_iterations(tiny32, train4, variant, loss):
    isa = torch.backends.cpu.get_cpu_capability()
    max_abs, close_share = SAME_ISA if isa == FIXTURE_ISA[variant] else OTHER_ISA
    module = _run_nvidia_recipe(tiny32, train4, loss)

    assert int(module.step_idx) == 4
    opt_g, opt_d = module.trainer.optimizers
    # Every parameter that received a gradient in every phase took NVIDIA's number of Adam steps.
    assert max(_adam_steps(opt_g)) == int(train4[f"{variant}/G_adam_steps"]) == 6
    assert max(_adam_steps(opt_d)) == int(train4[f"{variant}/D_adam_steps"]) == 6
    assert module.phase_counts == {"Gmain": 4, "Greg": 2, "Dmain": 4, "Dreg": 2}
    assert float(module.pl_mean) == pytest.approx(float(train4[f"{variant}/pl_mean"]), rel=1e-5, abs=1e-8)

    for net in ("G", "D", "G_ema"):
        ours = getattr(module, net).state_dict()
        prefix = f"{variant}/{net}/"
        keys = [k[len(prefix) :] for k in train4 if k.startswith(prefix)]
        assert sorted(keys) == sorted(ours), f"{net}: state_dict keys differ from NVIDIA's"
        diff = torch.cat(
            [(ours[k].float() - torch.from_numpy(train4[prefix + k])).abs().flatten() for k in keys]
        )
        worst, close = diff.max().item(), (diff <= CLOSE).double().mean().item()
        print(
            f"{variant} {net} ({isa}; fixture {FIXTURE_ISA[variant]}): max |ours - NVIDIA| {worst:.3g}, "
            f"{100 * close:.3f}% of elements within {CLOSE:g}"
        )
        assert worst <= max_abs, f"{net} differs from NVIDIA's by up to {worst:.3g}"
        assert close >= close_share, f"only {close:.4%} of {net}'s elements are within {CLOSE:g} of NVIDIA's"


@pytest.mark.slow
def test_the_iterations_move_the_weights(tiny32, train4):
    """The comparison above is meaningful: 4 iterations change G, D and G_ema far beyond the tolerance,
    and the rooted and logistic runs end in different places."""
    from rootedgan.checkpoints import load_network

    start = load_network(tiny32)
    for net in ("G", "D", "G_ema"):
        before = start[net].state_dict()
        moved = max(
            (torch.from_numpy(train4[f"logistic/{net}/{k}"]).float() - v.float()).abs().max().item()
            for k, v in before.items()
        )
        assert moved > 100 * MAX_ABS, f"{net} barely moved ({moved:.3g}): the fixture cannot tell steps apart"
    rooted_vs_logistic = max(
        np.abs(train4[f"rooted/D/{k}"] - train4[f"logistic/D/{k}"]).max() for k in start["D"].state_dict()
    )
    assert rooted_vs_logistic > 100 * MAX_ABS
