"""rosinality checkpoints: conversion to our networks, rosinality's outputs, and the inverse conversion."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rootedgan.checkpoints import detect_format, load_network
from rootedgan.checkpoints import rosinality as ros
from rootedgan.checkpoints.nvidia import read_nvidia_pickle
from rootedgan.errors import CheckpointError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PT = FIXTURES / "rosinality" / "tiny32.pt"
REF = FIXTURES / "rosinality" / "tiny32.ref.npz"
NV_PKL = FIXTURES / "nvidia" / "tiny32.pkl"

pytestmark = pytest.mark.skipif(not PT.exists(), reason=f"rosinality fixture not found at {PT}")


@pytest.fixture(scope="module")
def ckpt():
    return ros.torch_load(PT)


@pytest.fixture(scope="module")
def records(ckpt):
    return ros.read_rosinality(ckpt, str(PT))


@pytest.fixture(scope="module")
def loaded():
    return load_network(PT)


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(REF))


def test_detected_by_content(ckpt):
    assert detect_format(PT) == "torch-zip"
    assert ros.is_rosinality(ckpt)
    assert isinstance(ckpt["args"], argparse.Namespace)


def test_architecture_inferred_from_shapes(records):
    recs, meta = records
    g = recs["G_ema"].init_kwargs
    assert (g["z_dim"], g["w_dim"], g["c_dim"], g["img_resolution"], g["img_channels"]) == (64, 64, 0, 32, 3)
    assert g["mapping_kwargs"] == {"num_layers": 2}
    syn = g["synthesis_kwargs"]
    assert syn["conv_clamp"] is None and syn["num_fp16_res"] == 0
    for r in (4, 8, 16, 32):  # the fixture's widths are all 32
        assert min(syn["channel_base"] // r, syn["channel_max"]) == 32
    d = recs["D"].init_kwargs
    assert d["architecture"] == "resnet" and d["conv_clamp"] is None and d["num_fp16_res"] == 0
    assert d["epilogue_kwargs"] == {"mbstd_group_size": 4, "mbstd_num_channels": 1}
    assert recs["G"].init_kwargs == g
    assert meta["args"]["size"] == 32
    json.dumps(meta)


def test_keys_match_nvidia_layout(records):
    """Same key set as NVIDIA's networks (from the NVIDIA fixture, which has the same depth)."""
    if not NV_PKL.exists():
        pytest.skip("NVIDIA fixture not found")
    nv, _ = read_nvidia_pickle(NV_PKL)
    recs, _ = records
    assert set(recs["G_ema"].state_dict) == set(nv["G_ema"].state_dict)
    assert set(recs["D"].state_dict) == set(nv["D"].state_dict)


def test_latent_avg_becomes_w_avg(records, ckpt):
    recs, _ = records
    for name in ("G", "G_ema"):
        torch.testing.assert_close(recs[name].state_dict["mapping.w_avg"], ckpt["latent_avg"])


def test_channel_inference():
    standard = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128}
    assert ros.infer_channel_params(standard) == (32768, 512)
    assert ros.infer_channel_params({4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128}) == (16384, 512)
    assert ros.infer_channel_params({4: 64, 8: 64, 16: 64, 32: 32}) == (1024, 64)
    with pytest.raises(CheckpointError, match="channel widths"):
        ros.infer_channel_params({4: 512, 8: 100, 16: 512})


def _close(actual: torch.Tensor, expected: np.ndarray) -> None:
    torch.testing.assert_close(actual, torch.from_numpy(expected).float(), rtol=0, atol=1e-4)


@torch.no_grad()
def test_reproduces_rosinality_outputs(loaded, ref):
    z = torch.from_numpy(ref["z"]).float()
    c = torch.zeros([z.shape[0], 0])
    G, D, G_ema = loaded["G"], loaded["D"], loaded["G_ema"]
    torch.testing.assert_close(G_ema.mapping.w_avg, torch.from_numpy(ref["latent_avg"]).float())
    img = G_ema(z, c, truncation_psi=1, noise_mode="const")
    _close(img, ref["g_ema_img"])
    _close(G_ema(z, c, truncation_psi=0.7, noise_mode="const"), ref["g_ema_img_trunc07"])
    _close(G(z, c, truncation_psi=1, noise_mode="const"), ref["g_img"])
    _close(D(img, c), ref["d_logits_on_g_ema_img"])
    _close(D(torch.from_numpy(ref["real"]).float(), c), ref["d_logits_on_real"])
    meta = loaded["meta"]
    assert meta["format"] == "rosinality-pt" and meta["source"] == str(PT)
    assert set(meta["init_kwargs"]) == {"G", "D", "G_ema"}


def test_inverse_reproduces_original_state_dicts(records, ckpt):
    """rosinality -> ours -> rosinality gives back every original tensor (blur kernels included)."""
    recs, meta = records
    back, _ = ros.to_rosinality(recs, meta)
    for name in ("g", "d", "g_ema"):
        assert set(back[name]) == set(ckpt[name]), name
        for key, value in ckpt[name].items():
            assert torch.equal(back[name][key], value), f"{name}.{key}"
    assert torch.equal(back["latent_avg"], ckpt["latent_avg"])
    assert vars(back["args"])["n_mlp"] == 2 and vars(back["args"])["size"] == 32


def _assert_same_records(a, b, skip: tuple[str, ...] = ()) -> None:
    for name in ("G", "D", "G_ema"):
        assert (a[name] is None) == (b[name] is None)
        if a[name] is None:
            continue
        assert set(a[name].state_dict) == set(b[name].state_dict), name
        for key, value in a[name].state_dict.items():
            if f"{name}.{key}" not in skip:
                assert torch.equal(value, b[name].state_dict[key]), f"{name}.{key}"


def test_round_trip_ours_rosinality_ours(records, tmp_path):
    recs, meta = records
    path = tmp_path / "again.pt"
    ros.save_rosinality(path, recs, meta)
    again, _ = ros.read_rosinality(ros.torch_load(path), str(path))
    _assert_same_records(recs, again)
    for name in ("G", "D", "G_ema"):
        assert again[name].init_kwargs == recs[name].init_kwargs


def test_round_trip_from_nvidia_pickle(tmp_path):
    if not NV_PKL.exists():
        pytest.skip("NVIDIA fixture not found")
    nv, _ = read_nvidia_pickle(NV_PKL)
    ckpt, notes = ros.to_rosinality(nv)
    assert any("conv_clamp" in n for n in notes)
    back, _ = ros.read_rosinality(ckpt, "memory")
    _assert_same_records(nv, back)  # in the fixture G and G_ema share w_avg, so nothing is lost
    # rosinality keeps one latent_avg (G_ema's): a G with its own w_avg loses it, with a note.
    g = nv["G"]
    g_own = type(g)(g.kind, g.init_kwargs, dict(g.state_dict))
    g_own.state_dict["mapping.w_avg"] = g.state_dict["mapping.w_avg"] + 1
    ckpt2, notes2 = ros.to_rosinality(dict(nv, G=g_own))
    assert any("w_avg" in n for n in notes2)
    torch.testing.assert_close(ckpt2["latent_avg"], nv["G_ema"].state_dict["mapping.w_avg"])
    for name in ("G", "D", "G_ema"):
        ours, theirs = dict(nv[name].init_kwargs), dict(back[name].init_kwargs)
        key = "synthesis_kwargs" if name != "D" else None
        if key:
            assert ours[key]["channel_base"] == theirs[key]["channel_base"]
            assert ours[key]["channel_max"] == theirs[key]["channel_max"]
            assert theirs[key]["conv_clamp"] is None


def test_legacy_torch_save_format(ckpt, tmp_path):
    """Old rosinality checkpoints predate torch's zip format."""
    path = tmp_path / "legacy.pt"
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    assert detect_format(path) == "torch-legacy"
    recs, _ = ros.read_rosinality(ros.torch_load(path), str(path))
    assert recs["G_ema"] is not None


def test_g_ema_only_without_latent_avg_estimates_w_avg(ckpt, tmp_path):
    path = tmp_path / "gema.pt"
    torch.save({"g_ema": ckpt["g_ema"], "args": ckpt["args"]}, path)
    out = load_network(path)
    assert out["G"] is None and out["D"] is None
    assert any("latent_avg" in n for n in out["meta"]["notes"])
    w_avg = out["G_ema"].mapping.w_avg
    assert torch.isfinite(w_avg).all() and w_avg.abs().sum() > 0
    # the estimate is the mean of mapped latents: close to the stored mean of 1000 of them
    assert (w_avg - ckpt["latent_avg"]).norm() < 0.25 * ckpt["latent_avg"].norm() + 1e-3


def test_unknown_keys_are_reported(ckpt):
    bad = dict(ckpt)
    bad["g"] = dict(ckpt["g"], **{"extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="extra.weight"):
        ros.read_rosinality(bad, "bad.pt")


def test_size_mismatch_with_args(ckpt):
    bad = dict(ckpt, args=argparse.Namespace(size=64))
    with pytest.raises(CheckpointError, match="size 64"):
        ros.read_rosinality(bad, "bad.pt")
