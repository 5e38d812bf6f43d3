"""Landscape probe: generic core on toy problems, offline analysis, GAN replay and CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from rootedgan.tools import landscape as ls


def _sgd(losses, x0: np.ndarray, steps: int, lr, seed: int = 0):
    """SGD on randomly picked component losses; returns (iterates, picked losses)."""
    rng = np.random.default_rng(seed)
    x = torch.tensor(x0, dtype=torch.float64)
    iterates, picked = [], []
    for k in range(steps):
        fn = losses[int(rng.integers(len(losses)))]
        iterates.append(x.clone())
        picked.append(fn)
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(xr), xr)
        x = x - lr(k) * g
    return iterates, picked


# -- convex least squares ---------------------------------------------------------------------------


def test_least_squares_alpha1_beta0_holds():
    rng = np.random.default_rng(1)
    a = torch.tensor(rng.normal(size=(8, 3)))
    b = torch.tensor(rng.normal(size=8))
    x_star = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
    losses = [lambda x, ai=ai, bi=bi: 0.5 * (ai @ x - bi) ** 2 for ai, bi in zip(a, b, strict=True)]
    iterates, picked = _sgd(losses, np.array([2.0, -1.0, 0.5]), 60, lambda k: 0.1)
    iterates.append(x_star)
    picked.append(losses[0])
    log = ls.probe_trajectory(iterates, x_star, picked)
    T = ls.t_values(log.A, log.B, log.C, 1.0, 0.0)  # convexity of each f_i: T_k = A_k - B_k >= 0
    assert np.all(T >= -1e-10)
    assert np.all(ls.t_values(log.A, log.B, log.C, 1.0 + 1e-9, 1e-9) >= -1e-8)
    region = ls.feasible_region(log.A, log.B, log.C, [1.0 + 1e-9], [1e-9], margin=-1e-8)
    assert region[0, 0]
    assert log.B[-1] == 0 and log.A[-1] == 0 and np.isnan(log.cos[-1])
    assert np.all(log.C >= 0)


# -- the paper's two-point example ------------------------------------------------------------------

CENTERS = (np.array([0.0, 0.0]), np.array([1.0, 1.0]))


def _two_point_losses():
    def make(c: np.ndarray):
        ct = torch.tensor(c, dtype=torch.float64)
        return lambda x: ((x - ct) ** 2).sum() / (1 + ((x - ct) ** 2).sum())

    return [make(c) for c in CENTERS]


def _two_point_average(x: np.ndarray) -> float:
    return float(np.mean([np.sum((x - c) ** 2) / (1 + np.sum((x - c) ** 2)) for c in CENTERS]))


@pytest.fixture(scope="module")
def two_point_log() -> ls.LandscapeLog:
    losses = _two_point_losses()
    iterates, picked = _sgd(losses, np.array([0.6, 0.1]), 400, lambda k: 0.5 / (1 + k) ** 0.6, seed=3)
    # x_K: the minimizer of the average reached from where SGD ended (the average has two, on the diagonal).
    res = minimize(_two_point_average, iterates[-1].numpy(), tol=1e-14)
    x_k = torch.tensor(res.x)
    assert np.linalg.norm(res.x - iterates[-1].numpy()) < 0.1
    return ls.probe_trajectory(iterates, x_k, picked, f_lb=0.0)


def test_two_point_feasibility_pattern(two_point_log):
    log = two_point_log
    assert ls.t_values(log.A, log.B, log.C, 42.0, 41.0).min() >= 0
    assert ls.t_values(log.A, log.B, log.C, 1.0, 0.0).min() < 0  # not star-convex-like along the run
    assert ls.t_values(log.A, log.B, log.C, 42.0, 0.0).min() < 0
    region = ls.feasible_region(log.A, log.B, log.C, [42.0], [41.0])
    assert region[0, 0]


def test_two_point_42_41_holds_on_a_grid_around_the_minimizer():
    """T(42, 41) = A - f_i(x) + 42 f_i(x*): holds wherever |A| + f_i(x) < 42 min_i f_i(x*) ~ 2.0."""
    losses = _two_point_losses()
    x_star = torch.tensor(minimize(_two_point_average, np.array([0.3, 0.3]), tol=1e-14).x)
    pts = [
        torch.tensor([u, v], dtype=torch.float64)
        for u in np.linspace(-1, 2, 13)
        for v in np.linspace(-1, 2, 13)
    ]
    for fn in losses:
        log = ls.probe_trajectory(pts, x_star, [fn] * len(pts))
        assert ls.t_values(log.A, log.B, log.C, 42.0, 41.0).min() >= 0
        assert ls.t_values(log.A, log.B, log.C, 1.0, 0.0).min() < 0


# -- offline analysis -------------------------------------------------------------------------------


def _random_abc(seed: int = 0, n: int = 40):
    rng = np.random.default_rng(seed)
    C = rng.uniform(0.1, 2.0, n)
    B = rng.normal(0, 1, n)
    A = B * rng.uniform(0.5, 3.0, n) + rng.normal(0, 0.3, n)
    return A, B, C


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alpha_interval_matches_grid(seed):
    A, B, C = _random_abc(seed)
    alphas = np.linspace(0, 10, 401)
    betas = np.linspace(0, 10, 81)
    region = ls.feasible_region(A, B, C, alphas, betas)
    mint = ls.min_T_grid(A, B, C, alphas, betas)
    for j, beta in enumerate(betas):
        iv = ls.alpha_interval(A, B, C, beta)
        closed = np.array([iv.contains(a) for a in alphas])
        clear = np.abs(mint[:, j]) > 1e-9  # away from the boundary, rounding cannot flip a cell
        assert np.array_equal(closed[clear], region[clear, j])
        sm = ls.smallest_feasible_alpha(A, B, C, [beta])[0]
        if region[:, j].any():
            assert sm <= alphas[region[:, j]].min() + 1e-12
        elif not np.isnan(sm):
            assert sm > beta - 1e-12


def test_feasible_region_respects_alpha_gt_beta_gt_0():
    n = 20
    A, B, C = np.ones(n), np.zeros(n), np.ones(n)  # T >= 0 everywhere with beta >= 0
    grid = np.linspace(0, 5, 51)
    region = ls.feasible_region(A, B, C, grid, grid)
    al, be = np.meshgrid(grid, grid, indexing="ij")
    assert np.array_equal(region, (al > be) & (be > 0))
    assert not ls.alpha_interval(A, B, C, 0.0).contains(1.0)
    assert not ls.alpha_interval(A, B, C, 2.0).contains(2.0)
    assert ls.alpha_interval(A, B, C, 2.0).contains(2.5)


def test_pl_constants():
    mu = ls.pl_constants([4.0, 1.0, 3.0], [1.0, 0.0, 3.0])
    assert mu[0] == 2.0 and np.isnan(mu[1]) and mu[2] == 0.5


def test_json_round_trip_and_plot(tmp_path, two_point_log):
    log = two_point_log
    log.meta["name"] = "two-point"
    path = log.save(tmp_path / "log.json")
    back = ls.LandscapeLog.load(path)
    for key in ("A", "B", "C", "cos", "grad_sq"):
        np.testing.assert_array_equal(getattr(back, key), getattr(log, key))
    assert back.meta == log.meta
    json.loads(path.read_text())  # strict JSON
    summary = ls.summarize(log, ls.default_grid(50, 51), ls.default_grid(50, 51))
    assert summary["smallest_feasible_alpha"] is not None
    png = ls.plot_landscape({"a": log, "b": back}, tmp_path / "p.png", ls.default_grid(50, 51))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- GAN replay -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_snapshots(tmp_path_factory, nvidia_fixture_dir):
    from rootedgan.checkpoints import load_network, save_network

    nets = load_network(nvidia_fixture_dir / "tiny32.pkl")
    out = tmp_path_factory.mktemp("snaps")
    gen = torch.Generator().manual_seed(0)
    paths = []
    for k in range(3):
        with torch.no_grad():
            if k > 0:
                for p in nets["G"].parameters():
                    p.add_(1e-3 * torch.randn(p.shape, generator=gen))
        paths.append(save_network(out / f"network-snapshot-{k:06d}.safetensors", G=nets["G"], D=nets["D"]))
    return paths


def test_gan_replay_deterministic_and_final_point(tiny_snapshots):
    kw = dict(loss="rooted:2", seed=0, batch=2)
    log1 = ls.replay_generator_objective(tiny_snapshots, **kw)
    log2 = ls.replay_generator_objective(tiny_snapshots, **kw)
    for key in ("A", "B", "C"):
        np.testing.assert_array_equal(getattr(log1, key), getattr(log2, key))
    assert len(log1) == 3
    assert log1.B[-1] == 0 and log1.A[-1] == 0
    assert log1.meta["f_lb"] == 2.0 and np.all(log1.C > 0)  # rooted:2 is > k per sample
    assert np.all(np.isfinite(log1.A[:-1])) and np.all(np.abs(log1.cos[:-1]) <= 1 + 1e-9)


def test_cli_writes_json_and_png(tiny_snapshots, tmp_path):
    from rootedgan.cli import main

    pattern = str(tiny_snapshots[0].parent / "network-snapshot-*.safetensors")
    out = tmp_path / "out"
    rc = main(
        [
            "landscape",
            "--snapshots",
            pattern,
            "--loss",
            "rooted:2",
            "--batch",
            "2",
            "--seed",
            "0",
            "--out",
            str(out),
            "--compare",
            pattern,
            "--compare-loss",
            "logistic",
            "--grid",
            "21",
        ]
    )
    assert rc == 0
    report = json.loads((out / "landscape.json").read_text())
    assert len(report["runs"]) == 2
    for entry in report["runs"].values():
        assert {"feasible_cells", "smallest_feasible_alpha", "pl_mu_min", "pl_mu_median"} <= set(
            entry["summary"]
        )
        assert len(entry["log"]["A"]) == 3
    assert (out / "landscape.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_user_error_on_empty_glob(tmp_path, capsys):
    from rootedgan.cli import main

    rc = main(["landscape", "--snapshots", str(tmp_path / "none-*.safetensors"), "--out", str(tmp_path)])
    assert rc == 2
    assert "no snapshots match" in capsys.readouterr().err


@pytest.fixture(scope="module")
def recorded_snapshots(tmp_path_factory, tiny_snapshots):
    """The tiny snapshots again, with the metadata a training run writes: loss logistic; and rooted:4 with
    subtract_k."""
    from rootedgan.checkpoints import load_network, save_network

    out = {}
    for label, subtract_k in [("logistic", False), ("rooted:4", True)]:
        folder = tmp_path_factory.mktemp(label.replace(":", "-"))
        meta = {"loss": label, "hparams": {"loss": label, "subtract_k": subtract_k, "max_grad": 1e6}}
        out[label] = [
            save_network(folder / p.name, G=n["G"], D=n["D"], meta=meta)
            for p in tiny_snapshots
            for n in [load_network(p)]
        ]
    return out


def test_replay_takes_the_loss_recorded_in_the_snapshots(recorded_snapshots, tiny_snapshots):
    from rootedgan.errors import UserError

    logistic = ls.replay_generator_objective(recorded_snapshots["logistic"], seed=0, batch=2)
    assert logistic.meta["loss"] == "logistic" and logistic.meta["loss_source"] == "recorded in the snapshots"
    assert logistic.meta["f_lb"] == 0.0
    given = ls.replay_generator_objective(recorded_snapshots["logistic"], loss="logistic", seed=0, batch=2)
    np.testing.assert_array_equal(logistic.A, given.A)  # the same objective as naming it
    other = ls.replay_generator_objective(recorded_snapshots["logistic"], loss="rooted:2", seed=0, batch=2)
    assert other.meta["loss"] == "rooted:2" and other.meta["loss_recorded"] == "logistic"
    rooted = ls.replay_generator_objective(recorded_snapshots["rooted:4"], seed=0, batch=2)
    assert rooted.meta["loss"] == "rooted:4" and rooted.meta["f_lb"] == 0.0  # subtract_k recorded
    assert "D is frozen at the last snapshot" in rooted.meta["d_frozen"]
    with pytest.raises(UserError, match="records no training loss"):
        ls.replay_generator_objective(tiny_snapshots, seed=0, batch=2)  # files without metadata
    mixed = [recorded_snapshots["logistic"][0], recorded_snapshots["rooted:4"][-1]]
    with pytest.raises(UserError, match="different losses"):
        ls.replay_generator_objective(mixed, seed=0, batch=2)


def test_cli_states_the_frozen_d_and_the_loss_source(recorded_snapshots, tmp_path, capsys):
    from rootedgan.cli import main

    pattern = str(recorded_snapshots["logistic"][0].parent / "network-snapshot-*.safetensors")
    assert (
        main(["landscape", "--snapshots", pattern, "--batch", "2", "--grid", "11", "--out", str(tmp_path)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "run (logistic)" in printed and "(recorded in the snapshots)" in printed
    assert "D is frozen at the last snapshot" in printed
    report = json.loads((tmp_path / "landscape.json").read_text())
    assert "D is frozen at the last snapshot" in report["runs"]["run (logistic)"]["d_frozen"]
    assert "frozen" in report["d_frozen"]
