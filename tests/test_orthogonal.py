"""Orthogonal finetuning (rootedgan.training.orthogonal): the parameterizations against closed forms and
independent oracles, hyperspherical energy, merging, COFT, adapters, convert --merge, and finetuning end to
end."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import SMOKE_ORTHOGONAL
from torch.nn.utils import parametrize

from rootedgan.checkpoints import load_network
from rootedgan.cli import main as cli_main
from rootedgan.data import ImageDataModule
from rootedgan.errors import CheckpointError, UserError
from rootedgan.networks.generator import SynthesisLayer
from rootedgan.training.adapter import base_reference, save_adapter
from rootedgan.training.module import FinetuneModule
from rootedgan.training.orthogonal import (
    OrthogonalConfig,
    OrthogonalRotation,
    apply_orthogonal,
    cayley,
    cayley_neumann,
    gram_schmidt,
    hyperspherical_energy,
    layer_stats,
    merge,
    rotations,
    skew_from_triu,
)
from rootedgan.training.snapshots import NetworkSnapshot

REPO = Path(__file__).resolve().parents[1]


def latents(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 64, generator=torch.Generator().manual_seed(seed)), torch.zeros(n, 0)


def randomize(net: torch.nn.Module, scale: float, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for rot in rotations(net).values():
            rot.q.copy_(torch.randn(rot.q.shape, generator=gen) * scale)
            if rot.magnitude is not None:
                rot.magnitude.copy_(1 + 0.1 * torch.randn(rot.magnitude.shape, generator=gen))


# -- the parameterizations ------------------------------------------------------------------------------


def test_exact_cayley_is_orthogonal_in_fp32_and_its_matrix_is_block_diagonal():
    rot = OrthogonalRotation((8, 4, 3, 3), block_size=12)
    with torch.no_grad():
        rot.q.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))  # far from the identity
    blocks = rot.blocks()
    assert blocks.dtype == torch.float32 and blocks.shape == (3, 12, 12)
    eye = torch.eye(12)
    assert (blocks.transpose(1, 2) @ blocks - eye).abs().max() < 1e-5
    assert torch.allclose(torch.linalg.det(blocks.double()), torch.ones(3, dtype=torch.float64), atol=1e-5)
    full = rot.matrix()
    assert (full.T @ full - torch.eye(36)).abs().max() < 1e-5
    assert torch.equal(full[:12, 12:], torch.zeros(12, 24))  # nothing off the diagonal blocks
    orth_err, _ = rot.errors()
    assert orth_err < 1e-5


def test_cayley_matches_the_textbook_formula_with_an_explicit_inverse():
    q = torch.randn(2, 15, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    skew = skew_from_triu(q, 6)
    assert torch.equal(skew, -skew.transpose(1, 2))
    eye = torch.eye(6, dtype=torch.float64)
    expected = (eye - skew) @ torch.linalg.inv(eye + skew)
    torch.testing.assert_close(cayley(skew), expected, rtol=0, atol=1e-12)


def test_neumann_agrees_with_exact_cayley_same_convention_with_the_right_order():
    gen = torch.Generator().manual_seed(3)
    direction = skew_from_triu(torch.randn(1, 28, dtype=torch.float64, generator=gen), 8)
    direction = direction / direction.norm()
    terms = 3
    errs = []
    for t in (1e-2, 5e-3):
        exact = cayley(t * direction)
        approx = cayley_neumann(t * direction, terms)
        errs.append(float((approx - exact).norm()))
        # same convention, not the transpose: R^T differs from R by ~4t, the approximation by O(t^(n+1))
        assert errs[-1] < 1e-3 * float((exact - exact.transpose(1, 2)).norm())
    # halving |Q| shrinks the error by 2^(n+1): the truncation error is O(|Q|^(n+1))
    assert errs[0] / errs[1] == pytest.approx(2 ** (terms + 1), rel=0.05)


@pytest.mark.parametrize("terms", [1, 2, 3, 4, 5, 6])
def test_neumann_orthogonality_error_has_order_n_plus_1_for_odd_and_2n_plus_2_for_even_terms(terms):
    """R_n = C (I - E), E = (-Q)^(n+1), C exact Cayley: R_n^T R_n - I = -(E + E^T) + E^T E, which is
    Q^(2n+2) - 2 Q^(n+1) for odd n and -Q^(2(n+1)) for even n (closed forms, checked to rounding), so
    halving Q shrinks the error by 2^(n+1) or 2^(2(n+1))."""
    gen = torch.Generator().manual_seed(5)
    q = skew_from_triu(torch.randn(2, 28, dtype=torch.float64, generator=gen), 8)
    q = 0.3 * q / torch.linalg.matrix_norm(q, ord=2).amax()
    eye = torch.eye(8, dtype=torch.float64)
    errs = []
    for scale in (1.0, 0.5):
        r = cayley_neumann(scale * q, terms)
        err = r.transpose(1, 2) @ r - eye
        qs = scale * q
        power = torch.linalg.matrix_power(qs, terms + 1)
        closed = power @ power - 2 * power if terms % 2 else -(power @ power)
        torch.testing.assert_close(err, closed, rtol=0, atol=1e-13)
        errs.append(float(err.norm()))
    order = terms + 1 if terms % 2 else 2 * (terms + 1)
    assert errs[0] / errs[1] == pytest.approx(2**order, rel=0.05)


def test_default_neumann_terms_is_even_and_more_orthogonal_than_five():
    assert OrthogonalConfig().neumann_terms == 4
    assert OrthogonalRotation((4, 16), block_size=8, parameterization="neumann").neumann_terms == 4
    gen = torch.Generator().manual_seed(1)
    q = skew_from_triu(torch.randn(4, 28, dtype=torch.float64, generator=gen), 8)
    q = 0.2 * q / torch.linalg.matrix_norm(q, ord=2).amax()
    eye = torch.eye(8, dtype=torch.float64)

    def error(n: int) -> float:
        r = cayley_neumann(q, n)
        return float((r.transpose(1, 2) @ r - eye).norm())

    assert error(4) < 1e-3 * error(5)  # order 10 against order 6
    assert error(2) < error(5)  # 5 terms are no better than 2


def test_unrolled_gram_schmidt_equals_qr_with_positive_diagonal_and_is_identity_at_zero():
    v = torch.eye(10, dtype=torch.float64) + 0.3 * torch.randn(3, 10, 10, dtype=torch.float64)
    q, r = torch.linalg.qr(v)
    expected = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    torch.testing.assert_close(gram_schmidt(v), expected, rtol=0, atol=1e-12)
    rot = OrthogonalRotation((4, 10), block_size=10, parameterization="gram_schmidt")
    assert torch.equal(rot.blocks(), torch.eye(10).unsqueeze(0))


@pytest.mark.parametrize("shared", [False, True])
def test_rotation_maps_each_filter_row_w_to_R_w_in_flattened_in_kh_kw_order(shared):
    weight = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    rot = OrthogonalRotation(weight.shape, block_size=6, shared=shared).double()
    with torch.no_grad():
        rot.q.normal_(0, 0.3)
    eye = torch.eye(6, dtype=torch.float64)
    blocks = [
        (eye - s) @ torch.linalg.inv(eye + s) for s in skew_from_triu(rot.q.detach(), 6).expand(6, -1, -1)
    ]
    big_r = torch.block_diag(*blocks)
    out = rot(weight)
    for j in range(5):  # every filter (row of W0 viewed [out, in*kh*kw]) is rotated by the same R
        torch.testing.assert_close(out[j].reshape(-1), big_r @ weight[j].reshape(-1), rtol=0, atol=1e-12)
    assert out.shape == weight.shape


# -- on the generator -----------------------------------------------------------------------------------


@pytest.mark.parametrize("parameterization", ["cayley", "neumann", "gram_schmidt"])
def test_identity_at_init_same_images(tiny32, parameterization):
    G = load_network(tiny32)["G_ema"]
    z, c = latents()
    before = G(z, c, noise_mode="const")
    cfg = OrthogonalConfig(
        layers=["synthesis.*.conv*", "synthesis.*.torgb", "mapping.fc1"],
        block_size=16,
        parameterization=parameterization,
        magnitude=True,
    )
    layers = apply_orthogonal(G, cfg)
    assert "synthesis.b4.conv1.affine" in layers and "synthesis.b32.torgb" in layers  # fnmatch * spans dots
    assert torch.equal(G(z, c, noise_mode="const"), before)
    rots = rotations(G)
    assert rots["synthesis.b8.conv0"].magnitude is None  # demodulated: a magnitude would cancel out
    assert rots["synthesis.b8.torgb"].magnitude is not None


def test_merged_equals_parametrized_and_keeps_the_nvidia_keys(tiny32):
    G = load_network(tiny32)["G"]
    keys = list(G.state_dict())
    w0 = G.synthesis.b16.conv0.weight.detach().clone()
    apply_orthogonal(G, OrthogonalConfig(layers=["synthesis.*.conv*", "synthesis.*.torgb"], magnitude=True))
    randomize(G, 0.05)
    z, c = latents()
    for fused in (True, False):  # both modulated-conv code paths see the rotated weight
        out = G(z, c, noise_mode="const", fused_modconv=fused)
        merged = merge(G)
        assert list(merged.state_dict()) == keys
        assert not any(parametrize.is_parametrized(m) for m in merged.modules())
        torch.testing.assert_close(
            merged(z, c, noise_mode="const", fused_modconv=fused), out, rtol=0, atol=1e-6
        )
    # G itself is untouched by merging, and the merged weight is W0 @ R^T
    assert parametrize.is_parametrized(G.synthesis.b16.conv0)
    big_r = rotations(G)["synthesis.b16.conv0"].matrix().detach()
    expected = (w0.reshape(w0.shape[0], -1) @ big_r.T).reshape(w0.shape)
    torch.testing.assert_close(merged.synthesis.b16.conv0.weight.detach(), expected, rtol=0, atol=1e-6)
    assert (out - load_network(tiny32)["G"](z, c, noise_mode="const")).abs().max() > 1e-2  # it did rotate


def test_rotation_keeps_each_layers_hyperspherical_energy(tiny32):
    G = load_network(tiny32)["G_ema"]
    apply_orthogonal(G, OrthogonalConfig(block_size=8))
    before = {k: v["he"] for k, v in layer_stats(G).items()}
    randomize(G, 0.2)
    after = layer_stats(G)
    for name, value in before.items():
        assert after[name]["rot_dist"] > 1.0
        assert float(after[name]["he"]) == pytest.approx(float(value), rel=1e-6)


# -- hyperspherical energy ------------------------------------------------------------------------------


@pytest.mark.parametrize("s", [0.0, 1.0, 2.0])
def test_hyperspherical_energy_known_values(s):
    antipodal = torch.tensor([[0.0, 3.0], [0.0, -0.5]])  # unit directions at distance 2; norms do not matter
    pair = -math.log(2.0) if s == 0 else 2.0 ** (-s)
    assert float(hyperspherical_energy(antipodal, s, "sum")) == pytest.approx(2 * pair)
    assert float(hyperspherical_energy(antipodal, s, "mean")) == pytest.approx(pair)
    n = 5  # an orthonormal basis: every pair at distance sqrt(2)
    basis = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))[0]
    pair = -0.5 * math.log(2.0) if s == 0 else 2.0 ** (-s / 2)
    assert float(hyperspherical_energy(basis, s, "sum")) == pytest.approx(n * (n - 1) * pair)
    assert float(hyperspherical_energy(basis.T * 7, s, "mean")) == pytest.approx(pair)


@pytest.mark.parametrize("s", [0.0, 1.0, 2.0])
def test_hyperspherical_energy_is_invariant_to_a_common_rotation(s):
    w = torch.randn(20, 3, 3, 3, dtype=torch.float64)
    rot = torch.linalg.qr(torch.randn(27, 27, dtype=torch.float64))[0]
    rotated = (w.reshape(20, -1) @ rot.T).reshape(w.shape)
    assert float(hyperspherical_energy(rotated, s)) == pytest.approx(
        float(hyperspherical_energy(w, s)), rel=1e-9
    )
    # an independent rotation of one neuron changes it
    other = w.reshape(20, -1).clone()
    other[0] = other[0] @ rot
    assert float(hyperspherical_energy(other, s)) != pytest.approx(
        float(hyperspherical_energy(w, s)), rel=1e-6
    )


def test_hyperspherical_energy_guards_coincident_neurons():
    w = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    assert float(hyperspherical_energy(w, 1.0, "sum", eps=1e-3)) == pytest.approx(2 * 1e3)
    with pytest.raises(ValueError, match="two neurons"):
        hyperspherical_energy(torch.ones(1, 3))


# -- COFT -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("parameterization", ["cayley", "gram_schmidt"])
def test_coft_projection_bounds_q_and_the_rotation(parameterization):
    rot = OrthogonalRotation((6, 24), block_size=8, shared=True, parameterization=parameterization)
    with torch.no_grad():
        rot.q.normal_(0, 1.0)
    eps = 0.3
    rot.project_(eps)
    assert float(rot.free_norm()) == pytest.approx(eps, rel=1e-6)  # shared block counted 3 times
    if parameterization == "cayley":
        _, dist = rot.errors()
        assert float(dist) <= 2 * eps * (1 + 1e-6)
    before = rot.q.detach().clone()
    rot.project_(10.0)  # inside the ball: unchanged
    assert torch.equal(rot.q, before)


def test_coft_eps_bounds_the_whole_layer_not_each_block():
    """Our eps bounds the layer's whole block-diagonal Q (rescaled as one), so a single block may use all of
    it; OFT/peft would cap each of the r blocks at eps / sqrt(r)."""
    rot = OrthogonalRotation((4, 32), block_size=8)  # 4 blocks
    with torch.no_grad():
        rot.q.zero_()
        rot.q[0].normal_(0, 1.0)  # all the rotation in block 0
    rot.project_(0.5)
    per_block = skew_from_triu(rot.q.detach(), 8).double().flatten(1).norm(dim=1)
    assert float(rot.free_norm()) == pytest.approx(0.5, rel=1e-6)
    assert float(per_block[0]) == pytest.approx(0.5, rel=1e-6)  # > 0.5 / sqrt(4): OFT's per-block cap
    assert float(per_block[1:].abs().max()) == 0.0


# -- configuration errors -------------------------------------------------------------------------------


def test_bad_settings_are_clear_user_errors(tiny32):
    G = load_network(tiny32)["G_ema"]
    with pytest.raises(UserError, match=r"block_size=7 .* fan-in 576 .*synthesis\.b4\.conv1"):
        apply_orthogonal(G, OrthogonalConfig(block_size=7))
    with pytest.raises(UserError, match="matches no weight layer"):
        apply_orthogonal(G, OrthogonalConfig(layers=["synthesis.*.nope"]))
    with pytest.raises(UserError, match="model.orthogonal has no setting blocksize"):
        OrthogonalConfig.from_any({"blocksize": 4})
    with pytest.raises(UserError, match="gram_schmidt"):
        OrthogonalConfig.from_any({"parameterization": "gram_schmidt", "block_size": 128})
    with pytest.raises(UserError, match="model.orthogonal must be a mapping"):
        FinetuneModule(network=tiny32, orthogonal="rotate")


# -- adapters and convert --merge -----------------------------------------------------------------------


@pytest.fixture
def adapter_setup(tmp_path, tiny32):
    """An adapter trained (here: randomized) on a copy of tiny32 that sits next to it, given by a relative
    name; and the expected merged G_ema."""
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(tiny32, folder / "base.pkl")
    nets = load_network(folder / "base.pkl")
    cfg = OrthogonalConfig(block_size=16, train_extra=["synthesis.*.bias"])
    for name in ("G", "G_ema"):
        apply_orthogonal(nets[name], cfg)
        randomize(nets[name], 0.05, seed=len(name))
    with torch.no_grad():
        nets["G_ema"].synthesis.b8.conv1.bias.add_(0.5)
        nets["G_ema"].mapping.w_avg.add_(1.0)
    base = base_reference(folder / "base.pkl")
    base["source"] = "base.pkl"  # as given in the config, relative
    path = save_adapter(folder / "a.adapter.safetensors", {"G": nets["G"], "G_ema": nets["G_ema"]}, cfg, base)
    z, c = latents()
    expected = nets["G_ema"](z, c, noise_mode="const", truncation_psi=0.7)
    return path, expected


def test_adapter_round_trip_finds_its_base_next_to_it(tmp_path, adapter_setup):
    path, expected = adapter_setup
    moved = tmp_path / "elsewhere"
    shutil.copytree(path.parent, moved)
    shutil.rmtree(path.parent)  # the recorded absolute path is gone; the relative one still works
    loaded = load_network(moved / path.name)
    assert loaded["meta"]["format"] == "adapter" and loaded["D"] is None
    G = loaded["G_ema"]
    assert not any(parametrize.is_parametrized(m) for m in G.modules())
    z, c = latents()
    assert torch.equal(G(z, c, noise_mode="const", truncation_psi=0.7), expected)  # incl. bias and w_avg
    assert (moved / path.name).stat().st_size < 0.2 * (moved / "base.pkl").stat().st_size


def test_adapter_refuses_a_wrong_base_and_accepts_an_override(
    tmp_path, adapter_setup, rosinality_fixture_dir
):
    path, expected = adapter_setup
    wrong = rosinality_fixture_dir / "tiny32.pt"
    with pytest.raises(CheckpointError, match="sha256|size"):
        load_network(path, base=wrong)
    (path.parent / "base.pkl").rename(tmp_path / "renamed.pkl")
    with pytest.raises(CheckpointError, match=r"base=PATH"):
        load_network(path)
    loaded = load_network(path, base=tmp_path / "renamed.pkl")
    z, c = latents()
    assert torch.equal(loaded["G_ema"](z, c, noise_mode="const", truncation_psi=0.7), expected)
    with pytest.raises(CheckpointError, match="only for orthogonal-finetuning adapters"):
        load_network(tmp_path / "renamed.pkl", base=wrong)


def test_convert_merge_writes_plain_checkpoints(tmp_path, adapter_setup, capsys):
    path, expected = adapter_setup
    out = tmp_path / "merged.safetensors"
    assert cli_main(["convert", str(path), str(out)]) == 2
    assert "--merge" in capsys.readouterr().err
    assert cli_main(["convert", str(path), str(out), "--merge"]) == 0
    z, c = latents()
    plain = load_network(out)
    assert plain["meta"]["format"] == "native"
    assert torch.equal(plain["G_ema"](z, c, noise_mode="const", truncation_psi=0.7), expected)
    assert cli_main(["convert", str(path), str(tmp_path / "merged.pt"), "--merge"]) == 0
    rosi = load_network(tmp_path / "merged.pt")["G_ema"]
    torch.testing.assert_close(rosi(z, c, noise_mode="const"), plain["G_ema"](z, c, noise_mode="const"))


# -- finetuning -----------------------------------------------------------------------------------------


def test_cli_orthogonal_smoke_finetune(tmp_path, shapes, tiny32):
    code = cli_main(
        ["finetune", "--config", SMOKE_ORTHOGONAL, "--network", tiny32,
         "--data.path", str(shapes), "--trainer.default_root_dir", str(tmp_path),
         "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1"]
    )  # fmt: skip
    assert code == 0
    run = next(tmp_path.glob("lightning_logs/version_*"))
    snapshot = sorted(run.glob("network-snapshot-*[0-9].safetensors"))[-1]
    adapter = snapshot.with_name(snapshot.name.replace(".safetensors", ".adapter.safetensors"))
    plain, pretrained = load_network(snapshot), load_network(tiny32)
    assert list(plain["G"].state_dict()) == list(pretrained["G"].state_dict())  # merged, NVIDIA keys
    z, c = latents()
    with pytest.raises(CheckpointError, match="base=PATH"):  # the recorded base path is never opened
        load_network(adapter)
    from_adapter = load_network(adapter, base=tiny32)["G_ema"](z, c, noise_mode="const")
    assert torch.equal(from_adapter, plain["G_ema"](z, c, noise_mode="const"))
    # only rotations trained: everything but the rotated conv weights is still the pretrained G
    changed = {
        k for k, v in plain["G"].state_dict().items() if not torch.equal(v, pretrained["G"].state_dict()[k])
    }
    assert changed and all(
        k.endswith((".conv0.weight", ".conv1.weight")) or k == "mapping.w_avg" for k in changed
    )
    assert not torch.equal(plain["D"].b32.conv0.weight, pretrained["D"].b32.conv0.weight)  # D trains as usual
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    he = [
        float(r["Orthogonal/he/synthesis.b16.conv0"])
        for r in rows
        if r.get("Orthogonal/he/synthesis.b16.conv0")
    ]
    he0 = float(layer_stats_of(pretrained["G"])["synthesis.b16.conv0"])
    assert len(he) >= 4 and all(v == pytest.approx(he0, rel=1e-6) for v in he)  # rotations keep HE
    dist = [float(r["Orthogonal/rot_dist_max"]) for r in rows if r.get("Orthogonal/rot_dist_max")]
    assert max(dist) > 0 and max(dist) <= 2 * 0.5 * (1 + 1e-6)  # COFT eps 0.5 in the config
    assert max(float(r["Orthogonal/orth_err_max"]) for r in rows if r.get("Orthogonal/orth_err_max")) < 1e-4


@torch.no_grad()
def layer_stats_of(G: torch.nn.Module) -> dict[str, float]:
    """Mean HE (s = 1) of every synthesis conv of a plain G, computed directly."""
    layers = {name: m for name, m in G.named_modules() if isinstance(m, SynthesisLayer)}
    return {name: float(hyperspherical_energy(m.weight, 1.0)) for name, m in layers.items()}


@pytest.mark.parametrize(
    "override,message",
    [
        (["--model.orthogonal.block_size", "7"], "block_size=7"),
        (["--model.orthogonal.layers", "[mapping.nope]"], "matches no weight layer"),
        (["--model.mode", "orthogonal"], "model.mode is gone: orthogonal finetuning is on when"),
    ],
)
def test_cli_rejects_bad_orthogonal_settings_readably(tmp_path, shapes, tiny32, capsys, override, message):
    args = ["finetune", "--config", SMOKE_ORTHOGONAL, "--network", tiny32,
            "--data.path", str(shapes), "--trainer.default_root_dir", str(tmp_path), *override]  # fmt: skip
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def fit(root: Path, data: Path, ckpt: str | None = None, **model_kwargs) -> tuple:
    kwargs = dict(reg=dict(r1_interval=2, pl_interval=2), ema=dict(kimg=0.01), seed=1, orthogonal={})
    kwargs.update(model_kwargs)
    module = FinetuneModule(**kwargs)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=-1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, use_distributed_sampler=False,
        default_root_dir=str(root), callbacks=[NetworkSnapshot(snap_kimg=0, grid_seeds=4)],
    )  # fmt: skip
    trainer.fit(module, ImageDataModule(str(data), batch_size=4, num_workers=0), ckpt_path=ckpt)
    return module, trainer


def test_orthogonal_resume_is_exact_and_coft_holds(tmp_path, shapes, tiny32):
    """2 + 2 steps from last.ckpt == 4 steps straight in orthogonal mode (Q, G_ema's EMA(Q), Adam state)."""
    orth = dict(block_size=16, eps=0.05, magnitude=True, layers=["synthesis.*.conv1", "synthesis.*.torgb"])
    full, full_trainer = fit(tmp_path / "a", shapes, network=tiny32, total_kimg=0.016, orthogonal=orth)
    fit(tmp_path / "b", shapes, network=tiny32, total_kimg=0.008, orthogonal=orth)
    ckpt = tmp_path / "b" / "checkpoints" / "last.ckpt"
    resumed, resumed_trainer = fit(tmp_path / "c", shapes, ckpt=str(ckpt), network=tiny32, total_kimg=0.016,
                                   orthogonal=orth)  # fmt: skip
    assert int(full.step_idx) == int(resumed.step_idx) == 4
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and any(".parametrizations.weight.0.q" in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for opt_a, opt_b in zip(full_trainer.optimizers, resumed_trainer.optimizers, strict=True):
        for sa, sb in zip(
            opt_a.state_dict()["state"].values(), opt_b.state_dict()["state"].values(), strict=True
        ):
            assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    # trainable: exactly the rotations and the torgb magnitudes, counted from the shapes
    expected = sum((m.weight.numel() // m.weight.shape[0]) // 16 * (16 * 15 // 2) for n, m in
                   load_network(tiny32)["G"].named_modules() if n.endswith((".conv1", ".torgb")))  # fmt: skip
    expected += sum(
        3 for n in a if n.endswith("torgb.parametrizations.weight.0.magnitude") and n.startswith("G.")
    )
    assert sum(p.numel() for p in full.g_params()) == expected
    for net in (full.G, full.G_ema):  # COFT after real optimizer steps (and for the EMA of Q)
        for rot in rotations(net).values():
            assert float(rot.free_norm()) <= 0.05 * (1 + 1e-6)
            assert float(rot.errors()[1]) <= 2 * 0.05 * (1 + 1e-6)
    assert max(float(r.free_norm()) for r in rotations(full.G).values()) == pytest.approx(0.05, rel=1e-4)


def test_settings_are_stored_as_plain_dicts_for_weights_only_checkpoints(tmp_path, tiny32):
    module = FinetuneModule(network=tiny32, orthogonal=OrthogonalConfig(block_size=16))
    assert module.orth is not None
    assert module.hparams["orthogonal"] == OrthogonalConfig(block_size=16).to_dict()
    torch.save({"hyper_parameters": dict(module.hparams)}, tmp_path / "h.pt")
    saved = torch.load(tmp_path / "h.pt", weights_only=True)["hyper_parameters"]
    assert saved["orthogonal"]["block_size"] == 16 and saved["optim"] == dict(module.hparams)["optim"]
    assert FinetuneModule(network=tiny32).orth is None
