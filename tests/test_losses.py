"""Losses against float64 closed forms; regularizers against hand-computed values on tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rootedgan.errors import SettingError
from rootedgan.training.losses import (
    DEFAULT_LOSS,
    DEFAULT_ROOT,
    Logistic,
    Rooted,
    RootedStepLogistic,
    capped_fraction,
    lazy_regularization,
    logistic,
    make_loss,
    path_length,
    path_length_penalty,
    r1_penalty,
    rooted,
    rooted_cap,
    rooted_slope,
)


def softplus64(u: np.ndarray) -> np.ndarray:
    return np.maximum(u, 0) + np.log1p(np.exp(-np.abs(u)))


def sigmoid64(u: np.ndarray) -> np.ndarray:
    return np.where(u >= 0, 1 / (1 + np.exp(-np.abs(u))), np.exp(-np.abs(u)) / (1 + np.exp(-np.abs(u))))


def rooted_closed_form(u: np.ndarray, k: float, max_grad: float) -> tuple[np.ndarray, np.ndarray]:
    """(value, derivative) in float64 of the defined loss: rooted below the cap, its tangent above."""
    cap = rooted_cap(k, max_grad)
    inside = np.minimum(u, cap)
    value = k * np.exp(softplus64(inside) / k) + max_grad * np.maximum(u - cap, 0)
    grad = np.where(u > cap, max_grad, np.exp(softplus64(inside) / k) * sigmoid64(inside))
    return value, grad


LOGITS = np.unique(
    np.concatenate([np.linspace(-1e4, 1e4, 2001), np.linspace(-40, 40, 801), [-1e4, -88.8, 88.8, 1e4]])
)


@pytest.mark.parametrize("k", [1.5, 2.0, 4.0, 16.0])
def test_rooted_value_and_gradient_fp32_match_float64_closed_form(k):
    u = torch.tensor(LOGITS, dtype=torch.float32, requires_grad=True)
    value = rooted(u, k=k)
    value.sum().backward()
    exp_value, exp_grad = rooted_closed_form(u.detach().double().numpy(), k, 1e6)
    assert torch.isfinite(value).all() and torch.isfinite(u.grad).all()
    np.testing.assert_allclose(value.detach().double().numpy(), exp_value, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(u.grad.double().numpy(), exp_grad, rtol=2e-5, atol=1e-30)


@pytest.mark.parametrize("k", [2.0, 4.0])
def test_rooted_bf16_is_finite_and_close(k):
    u = torch.tensor(LOGITS, dtype=torch.bfloat16, requires_grad=True)
    value = rooted(u, k=k)
    assert value.dtype == torch.float32  # computed in float32
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(u.grad.float()).all()
    exp_value, exp_grad = rooted_closed_form(u.detach().double().numpy(), k, 1e6)
    np.testing.assert_allclose(value.detach().double().numpy(), exp_value, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(u.grad.double().numpy(), exp_grad, rtol=1e-2, atol=1e-30)  # bf16 grad storage


def test_rooted_is_continuous_and_convex_at_the_cap():
    k = 2.0
    cap = rooted_cap(k, 1e6)
    u = torch.tensor([cap - 1e-3, cap, cap + 1e-3], dtype=torch.float64, requires_grad=True)
    v = rooted(u, k=k)
    (g,) = torch.autograd.grad(v.sum(), u)
    v = v.detach()
    assert abs(float(g[0]) - 1e6) / 1e6 < 1e-3 and float(g[2]) == 1e6
    assert float(v[2] - v[1]) == pytest.approx(1e6 * 1e-3, rel=1e-3)
    # slope of the exact rooted equals max_grad at the cap
    sp = softplus64(np.array([cap]))
    assert math.isclose(float((np.exp(sp / k) * sigmoid64(np.array([cap])))[0]), 1e6, rel_tol=1e-9)


def test_rooted_without_cap_overflows_as_in_the_paper():
    u = torch.tensor([400.0])
    assert torch.isinf(rooted(u, k=2.0, max_grad=None)).all()


def test_rooted_tends_to_softplus_and_bounds_it():
    u = torch.linspace(-20, 20, 401, dtype=torch.float64)
    sp = logistic(u)
    gaps = [(rooted(u, k=k, subtract_k=True) - sp).abs().max().item() for k in (2, 8, 64, 4096)]
    assert all(a > b for a, b in zip(gaps, gaps[1:], strict=False))  # shrinks as k grows
    assert gaps[-1] < 0.1
    for k in (1.5, 2, 8):  # k * (exp(s/k) - 1) >= s
        assert (rooted(u, k=k, subtract_k=True) >= sp - 1e-12).all()
    torch.testing.assert_close(rooted(u, k=3.0) - 3.0, rooted(u, k=3.0, subtract_k=True))


@pytest.mark.parametrize("k", [1.0, 0.5, 0.0, -2.0, float("nan")])
def test_rooted_rejects_bad_roots(k):
    with pytest.raises(ValueError, match="k > 1"):
        rooted(torch.zeros(3), k=k)
    with pytest.raises(SettingError, match="k > 1"):
        Rooted(k=k)
    with pytest.raises(SettingError, match="k > 1"):
        make_loss({"name": "rooted", "k": k})


def test_logistic_is_finite_over_the_range():
    u = torch.tensor(LOGITS, dtype=torch.float32, requires_grad=True)
    v = logistic(u)
    v.sum().backward()
    np.testing.assert_allclose(
        v.detach().double().numpy(), softplus64(LOGITS.astype(np.float32)), rtol=1e-6, atol=1e-30
    )
    np.testing.assert_allclose(
        u.grad.double().numpy(), sigmoid64(LOGITS.astype(np.float32)), rtol=1e-5, atol=1e-30
    )


def test_adversarial_loss_objectives_and_parsing():
    logits = torch.tensor([-3.0, 0.0, 2.0])
    loss = make_loss("rooted:4")
    assert loss == Rooted(k=4.0) == make_loss({"name": "rooted", "k": 4}) and loss.label == "rooted:4"
    assert make_loss(loss.spec()) == loss and make_loss(loss) is loss
    torch.testing.assert_close(loss.generator(logits), rooted(-logits, k=4.0))
    torch.testing.assert_close(loss.discriminator_fake(logits), rooted(logits, k=4.0))
    torch.testing.assert_close(loss.discriminator_real(logits), rooted(-logits, k=4.0))
    lg = make_loss("logistic")
    assert lg == Logistic() == make_loss("logistic")
    assert make_loss(None) == make_loss(DEFAULT_LOSS) == Rooted(k=20.0)  # the default: rooted, k = 20
    torch.testing.assert_close(lg.generator(logits), torch.nn.functional.softplus(-logits))
    with pytest.raises(SettingError, match="unknown loss"):
        make_loss("hinge")
    with pytest.raises(SettingError, match="rooted:two"):
        make_loss("rooted:two")
    with pytest.raises(SettingError, match="has no setting kk"):
        make_loss({"name": "rooted", "kk": 2})
    with pytest.raises(SettingError, match="only the rooted loss takes a root"):
        make_loss("logistic:4")
    assert float(capped_fraction(torch.tensor([0.0, 100.0]), 2.0)) == 0.5


def test_scaled_loss_is_the_base_times_the_constant():
    logits = torch.tensor([-3.0, 0.0, 2.0])
    for spec, base in [("logistic*2", "logistic"), ("rooted:4*0.5", "rooted:4")]:
        scaled, plain = make_loss(spec), make_loss(base)
        c = scaled.scale
        assert scaled.label == spec and c in (2.0, 0.5)
        torch.testing.assert_close(scaled.generator(logits), c * plain.generator(logits))
        torch.testing.assert_close(scaled.discriminator_fake(logits), c * plain.discriminator_fake(logits))
        torch.testing.assert_close(scaled.discriminator_real(logits), c * plain.discriminator_real(logits))
    assert make_loss("rooted:4*0.5").lower_bound() == 2.0
    assert make_loss("logistic*3").lower_bound() == 0.0
    for bad in ("logistic*0", "logistic*-1", "logistic*nan", "logistic*x", "rooted*rooted:2"):
        with pytest.raises(SettingError):
            make_loss(bad)


def test_adam_cancels_a_constant_loss_scale():
    """Why logistic*C is no step-size control: Adam's update (beta1 = 0, StyleGAN's) is the same for the
    gradient g and C * g, up to eps."""
    torch.manual_seed(0)
    grads = [torch.randn(5) for _ in range(20)]
    finals = []
    for c in (1.0, 8.0):
        w = torch.zeros(5, requires_grad=True)
        opt = torch.optim.Adam([w], lr=0.01, betas=(0.0, 0.99), eps=1e-8)
        for g in grads:
            opt.zero_grad()
            (c * (g * w).sum()).backward()
            opt.step()
        finals.append(w.detach().clone())
    torch.testing.assert_close(finals[0], finals[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("k", [2.0, 20.0])
def test_matched_logistic_has_rooted_total_gradient_and_logistic_weights(k):
    """logistic*rooted:K: per batch the same sum of per-sample gradients as rooted:K, in logistic's
    proportions (closed forms: rooted' = exp(softplus(u)/k) sigmoid(u), logistic' = sigmoid(u))."""
    u64 = np.array([-4.0, -1.0, 0.0, 0.5, 3.0, 9.0])
    matched = make_loss(f"logistic*rooted:{k:g}")
    assert matched == RootedStepLogistic(k=k) and matched.label == f"logistic*rooted:{k:g}"
    assert matched.lower_bound() == 0
    u = torch.tensor(u64, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(matched.discriminator_fake(u).sum(), u)  # discriminator_fake: phi(u)
    rooted_grad = np.exp(softplus64(u64) / k) * sigmoid64(u64)
    expected = sigmoid64(u64) * rooted_grad.sum() / sigmoid64(u64).sum()
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(rooted_slope(torch.tensor(u64), k).numpy(), rooted_grad, rtol=1e-12)
    # the factor is a constant of the batch: the value is softplus times it
    factor = rooted_grad.sum() / sigmoid64(u64).sum()
    np.testing.assert_allclose(matched.discriminator_fake(u).detach().numpy(), factor * softplus64(u64))


def test_rooted_slope_is_the_autograd_derivative_and_max_grad_above_the_cap():
    u = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(rooted(u, k=2.0).sum(), u)
    np.testing.assert_allclose(rooted_slope(u.detach(), 2.0).numpy(), grad.numpy(), rtol=1e-7, atol=1e-300)


# -- regularizers -----------------------------------------------------------------------------


def test_r1_penalty_linear_discriminator():
    """D(x) = <w, x>: grad_x D = w for every sample, so the penalty is ||w||^2 and d/dw = 2w."""
    torch.manual_seed(0)
    w = torch.randn(3, 4, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    logits = (x * w).flatten(1).sum(1, keepdim=True)
    penalty = r1_penalty(x, logits)
    torch.testing.assert_close(penalty, w.detach().square().sum().expand(5))
    penalty.sum().backward()
    torch.testing.assert_close(w.grad, 5 * 2 * w.detach())


def test_r1_penalty_quadratic_discriminator():
    """D(x) = a * sum(x^2): grad = 2 a x, penalty = 4 a^2 ||x||^2."""
    a = 0.7
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    penalty = r1_penalty(x, (a * x.square()).flatten(1).sum(1))
    torch.testing.assert_close(penalty, 4 * a * a * x.detach().square().flatten(1).sum(1))


def test_path_length_linear_generator():
    """img = A w (per w slot): J^T y = A^T y, computed by hand with the same noise."""
    torch.manual_seed(1)
    n, num_ws, w_dim, h = 3, 2, 5, 4
    A = torch.randn(h * h, w_dim, dtype=torch.float64)
    ws = torch.randn(n, num_ws, w_dim, dtype=torch.float64, requires_grad=True)
    img = (ws @ A.T).sum(1).reshape(n, 1, h, h)
    torch.manual_seed(7)
    lengths = path_length(img, ws)
    torch.manual_seed(7)
    y = torch.randn_like(img) / h
    jt_y = (y.reshape(n, h * h) @ A).unsqueeze(1).expand(n, num_ws, w_dim)
    torch.testing.assert_close(lengths, jt_y.square().sum(2).mean(1).sqrt())


def test_path_length_penalty_and_mean_update():
    lengths = torch.tensor([1.0, 2.0, 3.0])
    penalty, new_mean = path_length_penalty(lengths, torch.tensor(0.0), decay=0.01)
    assert float(new_mean) == pytest.approx(0.02)
    torch.testing.assert_close(penalty, (lengths - 0.02).square())


def test_lazy_regularization_rescaling():
    lr, betas = lazy_regularization(0.0025, (0.0, 0.99), 16)
    assert lr == pytest.approx(0.0025 * 16 / 17)
    assert betas == pytest.approx((0.0, 0.99 ** (16 / 17)))
    assert lazy_regularization(0.002, (0.0, 0.99), 0) == (0.002, (0.0, 0.99))


def test_one_default_root_everywhere():
    """The root's default is defined once: the primitive, the loss class and the short form agree."""
    u = torch.linspace(-5, 5, 11)
    torch.testing.assert_close(rooted(u), rooted(u, k=DEFAULT_ROOT))
    assert make_loss("rooted") == Rooted() and Rooted().k == DEFAULT_ROOT == 20.0
    assert make_loss("logistic*rooted") == RootedStepLogistic(k=DEFAULT_ROOT)
