"""The NVIDIA network pickle loader: structure of the fixture, and (the acceptance test) NVIDIA's outputs."""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from rootedgan.checkpoints import detect_format, load_network
from rootedgan.checkpoints.nvidia import read_nvidia_pickle

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "nvidia"
PKL = FIXTURES / "tiny32.pkl"
REF = FIXTURES / "tiny32.ref.npz"
KEYS = FIXTURES / "KEYS.txt"

pytestmark = pytest.mark.skipif(not PKL.exists(), reason=f"NVIDIA fixture not found at {PKL}")


def parse_keys() -> dict[str, tuple[dict, dict[str, tuple[int, ...]]]]:
    """KEYS.txt -> {"G": (init_kwargs, {key: shape}), "D": ...}."""
    out: dict[str, tuple[dict, dict[str, tuple[int, ...]]]] = {}
    current = None
    for line in KEYS.read_text().splitlines():
        if line.startswith("## "):
            name, _, rest = line[3:].partition(" ")
            kwargs = ast.literal_eval(rest.split("init_kwargs:", 1)[1].strip())
            current = out.setdefault(name, (kwargs, {}))
        elif line.strip():
            key, _, shape = line.partition(" ")
            assert current is not None
            current[1][key] = tuple(ast.literal_eval(shape))
    return out


@pytest.fixture(scope="module")
def records():
    return read_nvidia_pickle(PKL)


@pytest.fixture(scope="module")
def loaded():
    return load_network(PKL)


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(REF))


def test_detected_by_content(tmp_path):
    assert detect_format(PKL) == "nvidia-pkl"
    renamed = tmp_path / "network.safetensors"  # a misleading name must not matter
    renamed.write_bytes(PKL.read_bytes())
    assert detect_format(renamed) == "nvidia-pkl"


def test_state_dicts_match_keys_txt(records):
    recs, extra = records
    expected = parse_keys()
    for name, key in (("G", "G"), ("G_ema", "G"), ("D", "D")):
        kwargs, shapes = expected[key]
        rec = recs[name]
        assert rec is not None
        assert rec.kind == ("Discriminator" if key == "D" else "Generator")
        assert {k: tuple(v.shape) for k, v in rec.state_dict.items()} == shapes
        assert rec.init_kwargs == kwargs
        assert all(v.dtype == torch.float32 for v in rec.state_dict.values())
    assert extra == {"augment_pipe": None, "training_set_kwargs": None}


def test_g_and_g_ema_differ(records):
    recs, _ = records
    g, g_ema = recs["G"].state_dict, recs["G_ema"].state_dict
    differing = [k for k in g if not torch.equal(g[k], g_ema[k])]
    assert differing, "G and G_ema must be distinct tensors"
    assert "mapping.w_avg" in differing or any("weight" in k for k in differing)


def test_resample_filters_are_standard(records):
    recs, _ = records
    f = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1]))
    f = f / f.sum()
    for rec in recs.values():
        for key, value in rec.state_dict.items():
            if key.endswith("resample_filter"):
                torch.testing.assert_close(value, f)


def test_loaded_networks(loaded):
    from rootedgan.networks import Discriminator, Generator

    assert isinstance(loaded["G"], Generator) and isinstance(loaded["G_ema"], Generator)
    assert isinstance(loaded["D"], Discriminator)
    for name in ("G", "D", "G_ema"):
        net = loaded[name]
        assert not net.training
        assert all(p.requires_grad for p in net.parameters())  # the finetuner trains them
    meta = loaded["meta"]
    assert meta["format"] == "nvidia-pkl"
    assert meta["source"] == str(PKL)
    expected = parse_keys()
    assert meta["init_kwargs"]["G"] == expected["G"][0]
    assert meta["init_kwargs"]["D"] == expected["D"][0]
    json.dumps(meta)  # JSON-serialisable
    rebuilt = type(loaded["G"])(**loaded["G"].init_kwargs)
    rebuilt.load_state_dict(loaded["G"].state_dict())


def _close(actual: torch.Tensor, expected: np.ndarray) -> None:
    torch.testing.assert_close(actual, torch.from_numpy(expected).float(), rtol=0, atol=1e-4)


@torch.no_grad()
def test_reproduces_nvidia_outputs(loaded, ref):
    z = torch.from_numpy(ref["z"]).float()
    c = torch.from_numpy(ref["c"]).float()
    G, D, G_ema = loaded["G"], loaded["D"], loaded["G_ema"]
    _close(G_ema.mapping(z, c, truncation_psi=1), ref["ws"])
    img = G_ema(z, c, truncation_psi=1, noise_mode="const")
    _close(img, ref["G_ema_img_psi1"])
    _close(G_ema(z, c, truncation_psi=0.7, noise_mode="const"), ref["G_ema_img_psi07"])
    _close(G(z, c, truncation_psi=1, noise_mode="const"), ref["G_img_psi1"])
    _close(D(img, c), ref["D_logits_on_G_ema_img"])
    _close(D(torch.from_numpy(ref["real"]).float(), c), ref["D_logits_on_real"])


def test_device_argument(loaded):
    again = load_network(PKL, device="cpu")
    assert next(again["G"].parameters()).device.type == "cpu"
    for k, v in loaded["G_ema"].state_dict().items():
        assert torch.equal(v, again["G_ema"].state_dict()[k])


# ----------------------------------------------------------------------------------------------------------
# Older pickle protocols: stylegan2-ada-pytorch ran on Python 3.7, whose default pickle protocol is 3
# (sets and EasyDicts are then pickled through globals, not opcodes).


@pytest.fixture
def fake_nvidia_modules(monkeypatch):
    """Stand-ins for ``torch_utils.persistence`` and ``dnnlib.util.EasyDict`` so that tests can *write*
    NVIDIA-style pickles (reading never imports them)."""
    import sys
    import types

    modules = {name: types.ModuleType(name) for name in ("torch_utils", "torch_utils.persistence", "dnnlib")}
    modules["dnnlib.util"] = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("only for writing")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    modules["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    modules["dnnlib.util"].EasyDict = EasyDict
    for name, mod in modules.items():
        monkeypatch.setitem(sys.modules, name, mod)

    class Persistent:
        def __init__(self, meta):
            self.meta = meta

        def __reduce__(self):
            return _reconstruct_persistent_obj, (self.meta,)

    return Persistent, EasyDict


def _repickle_tree(obj, persistent_cls):
    """Our PersistentObject tree -> objects that pickle like NVIDIA's."""
    from rootedgan.checkpoints.nvidia import PersistentObject

    if isinstance(obj, PersistentObject):
        meta = dict(obj.meta)
        state = dict(meta["state"])
        state["_modules"] = {k: _repickle_tree(v, persistent_cls) for k, v in state["_modules"].items()}
        meta["state"] = state
        return persistent_cls(meta)
    return obj


@pytest.mark.parametrize("protocol", [2, 3, 5])
def test_older_pickle_protocols_and_aux_objects(tmp_path, fake_nvidia_modules, protocol):
    from rootedgan.checkpoints.nvidia import unpickle

    persistent_cls, easydict = fake_nvidia_modules
    data = unpickle(PKL)
    out = {k: _repickle_tree(v, persistent_cls) for k, v in data.items()}
    out["training_set_kwargs"] = easydict(
        class_name="training.dataset.ImageFolderDataset", path="~/datasets/ffhq.zip", resolution=32
    )
    augment_state = {"_parameters": {}, "_buffers": {"p": torch.zeros([])}, "_modules": {}}
    augment_state.update(_init_args=(), _init_kwargs=easydict(xflip=1, rotate90=1, xint=1))
    out["augment_pipe"] = persistent_cls(
        {"type": "class", "version": 6, "module_src": "", "class_name": "AugmentPipe", "state": augment_state}
    )
    path = tmp_path / f"proto{protocol}.pkl"
    path.write_bytes(pickle.dumps(out, protocol=protocol))
    recs, extra = read_nvidia_pickle(path)
    expected, _ = read_nvidia_pickle(PKL)
    for name in ("G", "D", "G_ema"):
        assert recs[name].init_kwargs == expected[name].init_kwargs
        for key, value in expected[name].state_dict.items():
            assert torch.equal(recs[name].state_dict[key], value)
    assert extra["training_set_kwargs"] == {
        "class_name": "training.dataset.ImageFolderDataset",
        "path": "~/datasets/ffhq.zip",
        "resolution": 32,
    }
    assert type(extra["training_set_kwargs"]) is dict
    assert extra["augment_pipe"] == {
        "class_name": "AugmentPipe",
        "init_kwargs": {"xflip": 1, "rotate90": 1, "xint": 1},
    }
    json.dumps(extra)


def test_positional_init_args_are_bound(tmp_path, fake_nvidia_modules):
    from rootedgan.checkpoints.nvidia import unpickle

    persistent_cls, _ = fake_nvidia_modules
    data = unpickle(PKL)
    g = _repickle_tree(data["G_ema"], persistent_cls)
    kwargs = dict(g.meta["state"]["_init_kwargs"])
    args = tuple(kwargs.pop(k) for k in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"))
    g.meta["state"] = dict(g.meta["state"], _init_args=args, _init_kwargs=kwargs)
    path = tmp_path / "args.pkl"
    path.write_bytes(pickle.dumps({"G_ema": g}, protocol=3))
    recs, _ = read_nvidia_pickle(path)
    assert recs["G_ema"].init_kwargs == parse_keys()["G"][0]
    assert recs["G"] is None and recs["D"] is None
