"""TensorFlow-era StyleGAN2 pickles: read safely and converted as NVIDIA's legacy.py converts them.

The fixtures are written here from our own tiny networks, the way NVIDIA's TensorFlow code pickled its
``(G, D, Gs)`` (``dnnlib.tflib.network.Network.__getstate__``: version, name, static_kwargs, components,
build_module_src, build_func_name, variables as (name, numpy array)); the globals carry the names those
files carry (``dnnlib.tflib.network.Network``, ``numpy.core.multiarray._reconstruct``, ...). The round trip
must give back the networks' outputs; where NVIDIA's code is at hand (the ignored ``.ref/``), its own
``legacy.load_network_pkl`` must give the same tensors as ours.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rootedgan.checkpoints import convert_network, load_network, tf_legacy
from rootedgan.errors import CheckpointError, UnsafeCheckpointError
from rootedgan.networks import Discriminator, Generator

REPO = Path(__file__).resolve().parents[1]
NVIDIA_REF = REPO / ".ref" / "stylegan2-ada-pytorch"

# ----------------------------------------------------------------------------------------------------------
# Writing TensorFlow-era pickles from our networks (the inverse of NVIDIA's conversion).

_RECONSTRUCT = np.ndarray(0).__reduce__()[0]  # numpy's array rebuilder (numpy._core.multiarray in numpy 2)
_SCALAR = np.float32(0).__reduce__()[0]  # numpy's scalar rebuilder


class TFNetworkOut:
    """Pickles like ``dnnlib.tflib.network.Network``: ``NEWOBJ`` of the class, ``BUILD`` with its state."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def __getstate__(self) -> dict:
        return self.state


class TFEraPickler(pickle._Pickler):
    """The pure-Python pickler, writing our stand-ins under the global names TensorFlow-era files carry."""

    NAMES = {
        id(TFNetworkOut): ("dnnlib.tflib.network", "Network"),
        id(_RECONSTRUCT): ("numpy.core.multiarray", "_reconstruct"),
        id(_SCALAR): ("numpy.core.multiarray", "scalar"),
    }

    def save_global(self, obj, name=None):
        target = self.NAMES.get(id(obj))
        if target is None:
            return super().save_global(obj, name)
        module, qualname = target
        if self.proto >= 4:
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
        self.memoize(obj)
        return None


def tf_dumps(obj, protocol: int) -> bytes:
    buf = io.BytesIO()
    TFEraPickler(buf, protocol).dump(obj)
    return buf.getvalue()


def _np(t: torch.Tensor) -> np.ndarray:
    return np.array(t.detach().cpu().numpy(), dtype=np.float32, order="C")


def _tf_conv(w: torch.Tensor, flip: bool = False) -> np.ndarray:
    """torch ``[out, in, kh, kw]`` -> TensorFlow ``[kh, kw, in, out]`` (flipped for transposed convs)."""
    a = _np(w).transpose(2, 3, 1, 0)
    return np.ascontiguousarray(a[::-1, ::-1] if flip else a)


def _tf_layer(layer: torch.nn.Module, prefix: str, flip: bool = False, noise: bool = False) -> list:
    """A modulated conv layer's TensorFlow variables, in the order TensorFlow created them."""
    out = [(f"{prefix}/weight", _tf_conv(layer.weight, flip))]
    out += [(f"{prefix}/mod_weight", _np(layer.affine.weight).T.copy())]
    out += [(f"{prefix}/mod_bias", _np(layer.affine.bias) - 1)]
    if noise:
        out += [(f"{prefix}/noise_strength", _np(layer.noise_strength)[()])]  # 0-d: a numpy scalar
    return out + [(f"{prefix}/bias", _np(layer.bias))]


def tf_generator(G: Generator, name: str, flavour: str, static_kwargs: dict) -> TFNetworkOut:
    """A TensorFlow ``G_main`` network (``G_mapping`` and ``G_synthesis`` components) holding G's weights."""
    version = 4 if flavour == "stylegan2" else 5
    mapping = []
    if G.c_dim:
        mapping += [("LabelEmbed/weight", _np(G.mapping.embed.weight).T.copy())]
        mapping += [("LabelEmbed/bias", _np(G.mapping.embed.bias))]
    for i in range(G.mapping.num_layers):
        fc = getattr(G.mapping, f"fc{i}")
        mapping += [(f"Dense{i}/weight", _np(fc.weight).T.copy()), (f"Dense{i}/bias", _np(fc.bias))]
    synthesis = []
    blocks = [getattr(G.synthesis, f"b{r}") for r in G.synthesis.block_resolutions]
    index = 0
    for block in blocks:
        for conv in ("conv0", "conv1"):
            if hasattr(block, conv):
                synthesis.append((f"noise{index}", _np(getattr(block, conv).noise_const)[None, None].copy()))
                index += 1
    for block in blocks:
        r = block.resolution
        if r == 4:
            synthesis.append(("4x4/Const/const", _np(block.const)[None].copy()))
            synthesis += _tf_layer(block.conv1, "4x4/Conv", noise=True)
        else:
            synthesis += _tf_layer(block.conv0, f"{r}x{r}/Conv0_up", flip=True, noise=True)
            synthesis += _tf_layer(block.conv1, f"{r}x{r}/Conv1", noise=True)
            if hasattr(block, "skip"):
                synthesis.append((f"{r}x{r}/Skip/weight", _tf_conv(block.skip.weight, flip=True)))
        if hasattr(block, "torgb"):
            synthesis += _tf_layer(block.torgb, f"{r}x{r}/ToRGB")

    def network(net_name: str, func: str, variables: list, components: dict, kwargs: dict) -> TFNetworkOut:
        state = {
            "version": version,
            "name": net_name,
            "static_kwargs": kwargs,
            "components": components,
            "build_module_src": "raise RuntimeError('NVIDIA source code would be here; never run')\n",
            "build_func_name": func,
            "variables": variables,
        }
        if version >= 5:
            state.update(input_shapes=[[None, G.z_dim]], output_shapes=[[None, 3, 32, 32]],
                         input_names=["latents_in"], output_names=["images_out"])  # fmt: skip
        return TFNetworkOut(state)

    synth_func = "G_synthesis_stylegan2" if flavour == "stylegan2" else "G_synthesis"
    own = [("lod", np.float32(0))] if flavour == "stylegan2" else []
    own += [("dlatent_avg", _np(G.mapping.w_avg))]
    components = {
        "synthesis": network("G_synthesis", synth_func, synthesis, {}, {}),
        "mapping": network("G_mapping", "G_mapping", mapping, {}, {}),
    }
    return network(name, "G_main", own, components, static_kwargs)


def tf_discriminator(D: Discriminator, flavour: str, static_kwargs: dict) -> TFNetworkOut:
    """A TensorFlow discriminator network holding D's weights."""
    variables = []
    if D.c_dim:
        variables += [("LabelEmbed/weight", _np(D.mapping.embed.weight).T.copy())]
        variables += [("LabelEmbed/bias", _np(D.mapping.embed.bias))]
        for i in range(D.mapping.num_layers):
            fc = getattr(D.mapping, f"fc{i}")
            variables += [(f"Mapping{i}/weight", _np(fc.weight).T.copy()), (f"Mapping{i}/bias", _np(fc.bias))]
    for r in D.block_resolutions:
        block = getattr(D, f"b{r}")
        if hasattr(block, "fromrgb"):
            variables += [(f"{r}x{r}/FromRGB/weight", _tf_conv(block.fromrgb.weight))]
            variables += [(f"{r}x{r}/FromRGB/bias", _np(block.fromrgb.bias))]
        for i, scope in ((0, "Conv0"), (1, "Conv1_down")):
            conv = getattr(block, f"conv{i}")
            variables += [(f"{r}x{r}/{scope}/weight", _tf_conv(conv.weight))]
            variables += [(f"{r}x{r}/{scope}/bias", _np(conv.bias))]
        if hasattr(block, "skip"):
            variables += [(f"{r}x{r}/Skip/weight", _tf_conv(block.skip.weight))]
    b4 = D.b4
    if hasattr(b4, "fromrgb"):
        variables += [
            ("4x4/FromRGB/weight", _tf_conv(b4.fromrgb.weight)),
            ("4x4/FromRGB/bias", _np(b4.fromrgb.bias)),
        ]
    variables += [("4x4/Conv/weight", _tf_conv(b4.conv.weight)), ("4x4/Conv/bias", _np(b4.conv.bias))]
    variables += [("4x4/Dense0/weight", _np(b4.fc.weight).T.copy()), ("4x4/Dense0/bias", _np(b4.fc.bias))]
    variables += [("Output/weight", _np(b4.out.weight).T.copy()), ("Output/bias", _np(b4.out.bias))]
    state = {
        "version": 4 if flavour == "stylegan2" else 5,
        "name": "D",
        "static_kwargs": static_kwargs,
        "components": {},
        "build_module_src": "raise RuntimeError('never run')\n",
        "build_func_name": "D_stylegan2" if flavour == "stylegan2" else "D_main",
        "variables": variables,
    }
    return TFNetworkOut(state)


# The two kinds of TensorFlow pickles NVIDIA's converter reads. Sizes: 32x32 RGB, z = w = 32, channels 32.
FLAVOURS = {
    # NVIDIA's stylegan2 (Python 3.6, pickle.HIGHEST_PROTOCOL = 4): unconditional, G skip / D resnet.
    "stylegan2": dict(
        protocol=4,
        c_dim=0,
        G_kwargs=dict(mapping_kwargs=dict(num_layers=2),
                      synthesis_kwargs=dict(channel_base=512, channel_max=32)),
        D_kwargs=dict(channel_base=512, channel_max=32, epilogue_kwargs=dict(mbstd_group_size=None)),
        G_static=dict(num_channels=3, resolution=32, label_size=0, latent_size=32, dlatent_size=32,
                      fmap_base=256, fmap_max=32, mapping_layers=2),
        D_static=dict(num_channels=3, resolution=32, label_size=0, fmap_base=256, fmap_max=32),
    ),
    # stylegan2-ada TensorFlow (Python 3.7, default protocol 3): conditional, G resnet / D skip, clamping.
    "stylegan2-ada": dict(
        protocol=3,
        c_dim=3,
        G_kwargs=dict(
            mapping_kwargs=dict(num_layers=2),
            synthesis_kwargs=dict(channel_base=512, channel_max=32, architecture="resnet", conv_clamp=256),
        ),
        D_kwargs=dict(channel_base=512, channel_max=32, architecture="skip", conv_clamp=256,
                      mapping_kwargs=dict(num_layers=0), epilogue_kwargs=dict(mbstd_group_size=2)),
        G_static=dict(num_channels=3, resolution=32, label_size=3, latent_size=32, dlatent_size=32,
                      fmap_base=256, fmap_max=32, mapping_layers=2, architecture="resnet", num_fp16_res=0,
                      conv_clamp=256, truncation_psi=0.5, style_mixing_prob=0.9),
        D_static=dict(num_channels=3, resolution=32, label_size=3, fmap_base=256, fmap_max=32,
                      architecture="skip", num_fp16_res=0, conv_clamp=256, mbstd_group_size=2),
    ),
}  # fmt: skip


def _perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter and buffer (but the fixed filters) moved off its initial value, reproducibly."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if "resample_filter" in name:
                continue
            t.add_(torch.randn(t.shape, generator=gen) * 0.2)
    return module.eval()


def make_networks(flavour: str):
    spec = FLAVOURS[flavour]
    torch.manual_seed(0)
    common = dict(z_dim=32, c_dim=spec["c_dim"], w_dim=32, img_resolution=32, img_channels=3)
    G = _perturbed(Generator(**common, **spec["G_kwargs"]), 1)
    G_ema = _perturbed(Generator(**common, **spec["G_kwargs"]), 2)
    D = _perturbed(
        Discriminator(c_dim=spec["c_dim"], img_resolution=32, img_channels=3, **spec["D_kwargs"]), 3
    )
    return G, D, G_ema


def write_tf_pickle(path: Path, flavour: str, nets=None, edit=None) -> tuple:
    """Write ``(G, D, Gs)`` as NVIDIA's TensorFlow code pickled it; ``edit(g, d, gs)`` may alter states."""
    spec = FLAVOURS[flavour]
    G, D, G_ema = nets or make_networks(flavour)
    tf_g = tf_generator(G, "G", flavour, dict(spec["G_static"]))
    tf_d = tf_discriminator(D, flavour, dict(spec["D_static"]))
    tf_gs = tf_generator(G_ema, "Gs", flavour, dict(spec["G_static"]))
    if edit is not None:
        edit(tf_g, tf_d, tf_gs)
    path.write_bytes(tf_dumps((tf_g, tf_d, tf_gs), spec["protocol"]))
    return G, D, G_ema


def _inputs(c_dim: int, n: int = 4):
    z = torch.from_numpy(np.random.RandomState(123).randn(n, 32).astype(np.float32))
    c = torch.zeros([n, c_dim])
    if c_dim:
        c[torch.arange(n), torch.arange(n) % c_dim] = 1
    img = torch.from_numpy(np.random.RandomState(7).uniform(-1, 1, (n, 3, 32, 32)).astype(np.float32))
    return z, c, img


@torch.no_grad()
def _outputs(G, D, G_ema, c_dim: int) -> dict[str, torch.Tensor]:
    z, c, img = _inputs(c_dim)
    out = {
        "ws": G_ema.mapping(z, c),
        "G_ema_psi1": G_ema(z, c, noise_mode="const"),
        "G_ema_psi07": G_ema(z, c, truncation_psi=0.7, noise_mode="const"),
        "G_psi1": G(z, c, noise_mode="const"),
        "D_real": D(img, c),
    }
    out["D_fake"] = D(out["G_ema_psi1"], c)
    return out


# ----------------------------------------------------------------------------------------------------------
# The round trip.


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_round_trip_gives_back_the_outputs(tmp_path, flavour):
    path = tmp_path / f"{flavour}.pkl"
    G, D, G_ema = write_tf_pickle(path, flavour)
    loaded = load_network(path)
    assert loaded["meta"]["format"] == "nvidia-tf-pkl"
    assert loaded["meta"]["tensorflow"]["Gs"]["build_func_name"] == "G_main"
    json.dumps(loaded["meta"])
    c_dim = FLAVOURS[flavour]["c_dim"]
    for name, orig in (("G", G), ("D", D), ("G_ema", G_ema)):
        state = loaded[name].state_dict()
        assert set(state) == set(orig.state_dict())
        for key, value in orig.state_dict().items():
            diff = (state[key] - value).abs().max().item()
            # only `affine.bias` goes through float arithmetic (TensorFlow stores it minus one)
            assert diff <= (2e-7 if key.endswith("affine.bias") else 0.0), (name, key, diff)
    want = _outputs(G, D, G_ema, c_dim)
    got = _outputs(loaded["G"], loaded["D"], loaded["G_ema"], c_dim)
    for key, value in want.items():
        diff = (got[key] - value).abs().max().item()
        assert diff <= 1e-5, (key, diff)


def test_converted_kwargs_are_nvidias(tmp_path):
    path = tmp_path / "ada.pkl"
    write_tf_pickle(path, "stylegan2-ada")
    kwargs = load_network(path)["meta"]["init_kwargs"]
    assert kwargs["G"]["synthesis_kwargs"] == {
        "channel_base": 512, "channel_max": 32, "num_fp16_res": 0, "conv_clamp": 256,
        "architecture": "resnet", "resample_filter": [1, 3, 3, 1], "use_noise": True, "activation": "lrelu",
    }  # fmt: skip
    assert kwargs["G"]["mapping_kwargs"] == {
        "num_layers": 2, "embed_features": None, "layer_features": None, "activation": "lrelu",
        "lr_multiplier": 0.01, "w_avg_beta": 0.995,
    }  # fmt: skip
    assert kwargs["D"]["mapping_kwargs"]["num_layers"] == 0
    assert kwargs["D"]["epilogue_kwargs"] == {
        "mbstd_group_size": 2,
        "mbstd_num_channels": 1,
        "activation": "lrelu",
    }


class _RecordingUnpickler(tf_legacy.TFUnpickler):
    def __init__(self, f) -> None:
        super().__init__(f)
        self.seen: set[tuple[str, str]] = set()

    def find_class(self, module: str, name: str):
        self.seen.add((module, name))
        return super().find_class(module, name)


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_the_globals_a_tf_pickle_references(tmp_path, protocol):
    """Exactly the Network class and numpy's array and scalar rebuilders (TensorFlow returned 0-d variables as
    numpy scalars), plus _codecs.encode for protocol-2 bytes."""
    G, D, G_ema = make_networks("stylegan2")
    spec = FLAVOURS["stylegan2"]
    data = (
        tf_generator(G, "G", "stylegan2", spec["G_static"]),
        tf_discriminator(D, "stylegan2", spec["D_static"]),
        tf_generator(G_ema, "Gs", "stylegan2", spec["G_static"]),
    )
    unpickler = _RecordingUnpickler(io.BytesIO(tf_dumps(data, protocol)))
    result = unpickler.load()
    expected = {
        ("dnnlib.tflib.network", "Network"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
    }
    if protocol == 2:
        expected.add(("_codecs", "encode"))
    assert unpickler.seen == expected
    assert tf_legacy.is_tf_networks(result)
    assert isinstance(result[0].state["components"]["synthesis"], tf_legacy.TFNetwork)


def test_convert_cli_writes_native(tmp_path):
    from rootedgan.cli import main as cli_main

    path = tmp_path / "sg2.pkl"
    G, D, G_ema = write_tf_pickle(path, "stylegan2")
    out = tmp_path / "sg2.safetensors"
    assert cli_main(["convert", str(path), str(out)]) == 0
    native = load_network(out)
    assert native["meta"]["converted_from"]["format"] == "nvidia-tf-pkl"
    assert native["meta"]["tensorflow"]["G"]["static_kwargs"]["fmap_base"] == 256
    want, got = _outputs(G, D, G_ema, 0), _outputs(native["G"], native["D"], native["G_ema"], 0)
    for key in want:
        assert torch.allclose(got[key], want[key], atol=1e-5), key
    # NVIDIA's converter leaves the minibatch-std group to the whole batch when the pickle does not record
    # it (TensorFlow's default was 4), which rosinality's discriminator cannot express
    with pytest.raises(CheckpointError, match="minibatch-std"):
        convert_network(path, tmp_path / "sg2.pt")


# ----------------------------------------------------------------------------------------------------------
# Nothing from the file runs; what cannot be converted is refused in one line.


def test_build_module_src_is_never_executed(tmp_path, monkeypatch):
    marker = tmp_path / "PWNED"

    def edit(g, d, gs):
        for net in (g, d, gs, g.state["components"]["synthesis"]):
            net.state["build_module_src"] = (
                f"open({str(marker)!r}, 'w').close()\nimport os; os.system('touch {marker}2')\n"
            )

    path = tmp_path / "src.pkl"
    write_tf_pickle(path, "stylegan2", edit=edit)
    monkeypatch.chdir(tmp_path)
    load_network(path)
    assert not marker.exists() and not Path(f"{marker}2").exists()


def test_a_code_payload_inside_a_tf_pickle_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'PWNED'}",)

    def edit(g, d, gs):
        g.state["static_kwargs"]["fmap_base"] = Payload()

    path = tmp_path / "payload.pkl"
    write_tf_pickle(path, "stylegan2", edit=edit)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_network(path)
    assert "system" in str(info.value) and "allow-list" in str(info.value)
    assert not (tmp_path / "PWNED").exists()


def test_an_object_array_is_refused(tmp_path):
    raw = tf_dumps(np.array([1.5, 2.5], dtype=np.float32), 3)
    assert raw.count(b"f4") == 1
    path = tmp_path / "object.pkl"
    path.write_bytes(raw.replace(b"f4", b"O8"))  # numpy.dtype('O8'): an array of Python objects
    with pytest.raises(UnsafeCheckpointError) as info:
        tf_legacy.unpickle_tf(path)
    assert "'O8'" in str(info.value)


def _edit_static(key, value, which="G"):
    def edit(g, d, gs):
        {"G": g, "D": d}[which].state["static_kwargs"][key] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_edit_static("use_spectral_norm", True, "D"), "use_spectral_norm = True"),
        (_edit_static("fmap_base", "big"), "fmap_base = 'big' is not an integer"),
        (lambda g, d, gs: g.state.update(version=3), "StyleGAN1"),
        (
            lambda g, d, gs: (
                g.state["components"]["synthesis"]
                .state["variables"]
                .append(("ToRGB_lod1/weight", np.zeros([1, 1, 32, 3], np.float32)))
            ),
            "ToRGB_lod",
        ),
        (
            lambda g, d, gs: g.state["components"]["mapping"].state.update(
                variables=[
                    v for v in g.state["components"]["mapping"].state["variables"] if v[0] != "Dense1/bias"
                ]
            ),
            "no variable mapping/Dense1/bias",
        ),
        (
            lambda g, d, gs: d.state.update(
                variables=[(n, v[..., :-1] if n == "Output/weight" else v) for n, v in d.state["variables"]]
            ),
            "b4.out.weight has shape [0, 32]",
        ),
    ],
    ids=["unknown-setting", "bad-setting", "old-version", "lod-layers", "missing-variable", "wrong-shape"],
)
def test_unconvertible_tf_pickles_are_refused_in_one_line(tmp_path, edit, message):
    path = tmp_path / "bad.pkl"
    write_tf_pickle(path, "stylegan2", edit=edit)
    with pytest.raises(CheckpointError) as info:
        load_network(path)
    text = str(info.value)
    assert message in text and "\n" not in text and str(path) in text


def test_truncated_tf_pickle_is_one_line(tmp_path):
    path = tmp_path / "full.pkl"
    write_tf_pickle(path, "stylegan2")
    data = path.read_bytes()
    for cut in (40, len(data) // 2, len(data) - 1):
        short = tmp_path / f"cut{cut}.pkl"
        short.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as info:
            load_network(short)
        assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------------------
# Against NVIDIA's own converter (stylegan2-ada-pytorch legacy.py), where its code is at hand in .ref/.

_NVIDIA_SCRIPT = r"""
import sys, types, pickle
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
try:
    import click  # legacy.py's command line only
except ImportError:
    click = types.ModuleType("click")
    click.command = lambda *a, **k: (lambda f: f)
    click.option = lambda *a, **k: (lambda f: f)
    sys.modules["click"] = click
import legacy
with open(sys.argv[2], "rb") as f:
    data = legacy.load_network_pkl(f)
inputs = np.load(sys.argv[3])
z, c, img = (torch.from_numpy(inputs[k]) for k in ("z", "c", "img"))
out = {}
for name in ("G", "D", "G_ema"):
    for key, value in data[name].state_dict().items():
        out[f"{name}/{key}"] = value.detach().numpy()
with torch.no_grad():
    G, D, G_ema = data["G"], data["D"], data["G_ema"]
    out["ws"] = G_ema.mapping(z, c).numpy()
    out["G_ema_psi1"] = G_ema(z, c, noise_mode="const").numpy()
    out["G_ema_psi07"] = G_ema(z, c, truncation_psi=0.7, noise_mode="const").numpy()
    out["G_psi1"] = G(z, c, noise_mode="const").numpy()
    out["D_real"] = D(img, c).numpy()
    out["D_fake"] = D(torch.from_numpy(out["G_ema_psi1"]), c).numpy()
np.savez(sys.argv[4], **out)
"""


@pytest.mark.skipif(not (NVIDIA_REF / "legacy.py").exists(), reason=f"NVIDIA's code is not at {NVIDIA_REF}")
@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_equals_nvidias_legacy_conversion(tmp_path, flavour):
    path = tmp_path / f"{flavour}.pkl"
    write_tf_pickle(path, flavour)
    c_dim = FLAVOURS[flavour]["c_dim"]
    z, c, img = _inputs(c_dim)
    np.savez(tmp_path / "inputs.npz", z=z.numpy(), c=c.numpy(), img=img.numpy())
    script = tmp_path / "nvidia_convert.py"
    script.write_text(_NVIDIA_SCRIPT)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    run = subprocess.run(
        [sys.executable, str(script), str(NVIDIA_REF), str(path), str(tmp_path / "inputs.npz"),
         str(tmp_path / "nvidia.npz")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = dict(np.load(tmp_path / "nvidia.npz"))
    ours = load_network(path)
    for name in ("G", "D", "G_ema"):
        state = ours[name].state_dict()
        keys = {k.split("/", 1)[1] for k in theirs if k.startswith(f"{name}/")}
        assert keys == set(state)
        for key in keys:
            assert np.array_equal(state[key].numpy(), theirs[f"{name}/{key}"]), (name, key)  # bit for bit
    got = _outputs(ours["G"], ours["D"], ours["G_ema"], c_dim)
    for key, value in got.items():
        diff = np.abs(value.numpy() - theirs[key]).max()
        assert diff <= 1e-5, (key, diff)
