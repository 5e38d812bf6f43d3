"""FID/KID formulas and float64 statistics: closed forms, clean-fid's formulas, batching, files, names."""

from __future__ import annotations

import types
import warnings

import numpy as np
import pytest
import torch

from rootedgan.errors import UserError
from rootedgan.metrics import FeatureStats, GaussianStats, frechet_distance, kernel_inception_distance
from rootedgan.metrics._cleanfid_import import import_cleanfid, patch_sqrtm
from rootedgan.metrics.evaluator import format_time, metric_mode, metric_name, parse_metric


def random_rotation(dim: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.RandomState(seed).randn(dim, dim))
    return q * np.sign(np.diag(r))


def test_frechet_distance_of_diagonal_gaussians_is_closed_form():
    rng = np.random.RandomState(0)
    mu1, mu2 = rng.randn(8), rng.randn(8)
    a, b = rng.uniform(0.1, 3, 8), rng.uniform(0.1, 3, 8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_with_non_commuting_covariances():
    # S1 = s * R diag(a) R^T and S2 = Q diag(b) Q^T do not commute; with S1 = s * I the cross term is
    # tr sqrt(s * S2) = sqrt(s) * sum sqrt(b). A second closed form: S2 = S1 gives 0 besides the means.
    rng = np.random.RandomState(1)
    dim, s = 12, 2.5
    q = random_rotation(dim, 2)
    b = rng.uniform(0.2, 4, dim)
    s2 = q @ np.diag(b) @ q.T
    mu1, mu2 = rng.randn(dim), rng.randn(dim)
    expected = np.sum((mu1 - mu2) ** 2) + dim * s + b.sum() - 2 * np.sqrt(s) * np.sqrt(b).sum()
    assert frechet_distance(mu1, s * np.eye(dim), mu2, s2) == pytest.approx(expected, rel=1e-12)
    r = random_rotation(dim, 3)
    s1 = r @ np.diag(rng.uniform(0.1, 2, dim)) @ r.T
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-10)


def test_frechet_distance_matches_cleanfid_formula_and_handles_singular_covariances():
    pytest.importorskip("cleanfid")
    fid_module = import_cleanfid()
    rng = np.random.RandomState(4)
    x, y = rng.rand(200, 24), rng.rand(150, 24) * 1.3 + 0.1
    mu1, s1, mu2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # SciPy 1.16/1.17 deprecate sqrtm's disp
        ref = fid_module.frechet_distance(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-10)
    # fewer samples than dimensions: singular covariances, still finite and non-negative
    few = rng.rand(5, 24)
    value = frechet_distance(few.mean(0), np.cov(few, rowvar=False), mu2, s2)
    assert np.isfinite(value) and value > 0
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(mu1, s1, mu2[:3], s2[:3, :3])


def test_sqrtm_guard_accepts_disp_like_old_scipy():
    # SciPy >= 1.18 rejects sqrtm(..., disp=False), which clean-fid 0.1.35 passes: the guard gives
    # cleanfid.fid a linalg whose sqrtm accepts it. Forced here, so it is tested on any SciPy.
    import scipy.linalg

    fake = types.SimpleNamespace(linalg=scipy.linalg)
    assert patch_sqrtm(fake, force=True)
    a = np.array([[4.0, 1.0], [1.0, 3.0]])
    root, err = fake.linalg.sqrtm(a, disp=False)
    np.testing.assert_allclose(root @ root, a, rtol=1e-12)
    assert err < 1e-20
    np.testing.assert_allclose(fake.linalg.sqrtm(a), root)
    assert fake.linalg.inv is scipy.linalg.inv  # everything else is SciPy's own
    assert patch_sqrtm(fake)  # idempotent


def test_feature_stats_equal_numpy_mean_and_cov_in_float64_whatever_the_batching():
    feats = np.random.RandomState(5).rand(103, 16).astype(np.float32)
    stats = FeatureStats(dim=16, keep_features=True)
    for start in range(0, 103, 10):
        stats.update(torch.from_numpy(feats[start : start + 10]))
    out = stats.compute()
    assert out.count == 103 and out.mu.dtype == np.float64 and out.sigma.dtype == np.float64
    np.testing.assert_allclose(out.mu, feats.astype(np.float64).mean(0), rtol=1e-13)
    np.testing.assert_allclose(out.sigma, np.cov(feats, rowvar=False), rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(out.features, feats)
    with pytest.raises(ValueError, match=r"\[N, 16\]"):
        stats.update(torch.zeros(2, 3))


def test_kid_follows_cleanfid_kernel_distance_draw_for_draw():
    pytest.importorskip("cleanfid")
    fid_module = import_cleanfid()
    rng = np.random.RandomState(6)
    f1, f2 = rng.rand(40, 32), rng.rand(30, 32) + 0.2
    np.random.seed(11)
    ref = fid_module.kernel_distance(f1, f2, num_subsets=7, max_subset_size=25)
    ours = kernel_inception_distance(f1, f2, num_subsets=7, max_subset_size=25, seed=11)
    assert ours == pytest.approx(ref, rel=1e-12)
    # with the default subset count and size (100, 1000), as kid50k_full uses
    np.random.seed(0)
    assert kernel_inception_distance(f1, f2) == pytest.approx(fid_module.kernel_distance(f1, f2), rel=1e-12)


def test_gaussian_stats_files_round_trip_and_cleanfid_npz(tmp_path):
    feats = np.random.RandomState(7).rand(20, 8).astype(np.float32)
    stats = GaussianStats.from_features(feats, keep_features=True)
    stats.save(tmp_path / "s.npz", meta='{"mode": "clean", "inception_sha256": "ab"}')
    back = GaussianStats.load(tmp_path / "s.npz")
    assert back.meta == {"mode": "clean", "inception_sha256": "ab"}  # how it was made travels with it
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    np.testing.assert_array_equal(back.features, feats)
    assert back.count == 20
    # clean-fid's custom statistics: mu/sigma in one file, features in *_kid.npz
    np.savez(tmp_path / "cf.npz", mu=stats.mu, sigma=stats.sigma)
    np.savez(tmp_path / "cf_kid.npz", feats=feats)
    assert GaussianStats.load(tmp_path / "cf.npz").features is None
    assert GaussianStats.load(tmp_path / "cf.npz").meta is None
    np.testing.assert_allclose(GaussianStats.load(tmp_path / "cf_kid.npz").sigma, stats.sigma)


@pytest.mark.parametrize(
    "name,num_gen,expected",
    [
        ("fid50k_full", None, ("fid50k_full", "fid", 50000)),
        ("kid50k_full", None, ("kid50k_full", "kid", 50000)),
        ("FID10k_full", None, ("fid10k_full", "fid", 10000)),
        ("fid50k_full", 2500, ("fid2500_full", "fid", 2500)),
        ("fid1k_full", 64, ("fid64_full", "fid", 64)),
        ("fid300_full", None, ("fid300_full", "fid", 300)),
    ],
)
def test_metric_names(name, num_gen, expected):
    spec = parse_metric(name, num_gen)
    assert (spec.name, spec.kind, spec.num_gen) == expected
    assert spec.mode == "legacy_tensorflow"  # NVIDIA's names for NVIDIA's protocol (the default)


def test_metric_names_state_their_protocol():
    assert metric_name("fid", 50000) == "fid50k_full"
    assert metric_name("fid", 50000, "legacy_tensorflow") == "fid50k_full"
    assert metric_name("kid", 50000, "clean") == "clean_kid50k_full"
    assert metric_name("fid", 2500, "fast") == "approx_clean_fid2500_full"
    # the run's protocol renames an unprefixed name; a prefixed name selects (or must match) it
    assert parse_metric("fid50k_full", mode="clean").name == "clean_fid50k_full"
    spec = parse_metric("clean_kid10k_full")
    assert (spec.name, spec.kind, spec.num_gen, spec.mode) == ("clean_kid10k_full", "kid", 10000, "clean")
    assert parse_metric("approx_clean_fid1k_full", 64).name == "approx_clean_fid64_full"
    assert [metric_mode(n) for n in ("fid50k_full", "clean_fid50k_full", "approx_clean_kid1k_full")] == [
        None,
        "clean",
        "fast",
    ]
    with pytest.raises(UserError, match="clean protocol's, but this evaluation uses legacy_tensorflow"):
        parse_metric("clean_fid50k_full", mode="legacy_tensorflow")
    with pytest.raises(UserError, match="unknown FID protocol"):
        parse_metric("fid50k_full", mode="tensorflow")
    for bad in ["nvidia_fid50k_full", "clean_fid50k", "legacy_tensorflow_fid50k_full"]:
        with pytest.raises(UserError, match="unknown metric"):
            parse_metric(bad)


def test_metric_name_errors_and_formatting():
    for bad in ["is50k", "fid50k", "fid_full", "pr50k3_full"]:
        with pytest.raises(UserError, match="unknown metric"):
            parse_metric(bad)
    with pytest.raises(UserError, match="at least 2"):
        parse_metric("fid1_full")
    assert metric_name("kid", 1000) == "kid1k_full"
    assert [format_time(s) for s in (5, 75, 3725)] == ["5s", "1m 15s", "1h 02m 05s"]
