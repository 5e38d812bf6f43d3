"""`rootedgan project` (NVIDIA's projector into W) and `rootedgan generate --projected-w`.

The VGG16 LPIPS network is NVIDIA's download; these tests use a tiny torchscript with its interface
(:func:`bench.standins.make_standin_vgg16`), the real download code against a faked server, and the
NVIDIA fixture network (32x32).
"""

from __future__ import annotations

import io
import socket
import sys
import types
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from bench.standins import make_standin_vgg16
from rootedgan.checkpoints import load_network
from rootedgan.cli import main as cli_main
from rootedgan.errors import UserError
from rootedgan.imaging import to_uint8
from rootedgan.tools import projector


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    return make_standin_vgg16(tmp_path_factory.mktemp("vgg") / "standin-vgg16.pt")


@pytest.fixture(scope="module")
def G(tiny32):
    return load_network(tiny32)["G_ema"]


@pytest.fixture(scope="module")
def target(G):
    """An image G can make: the synthesis of seed 5's w (as uint8 [3, 32, 32])."""
    z = torch.from_numpy(np.random.RandomState(5).randn(1, G.z_dim).astype(np.float32))
    with torch.no_grad():
        img = G.synthesis(G.mapping(z, None), noise_mode="const")
    return torch.from_numpy(to_uint8(img)[0]).permute(2, 0, 1).contiguous()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOTEDGAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(projector.VGG16_ENV, raising=False)
    return tmp_path / "cache" / "networks"


# ----------------------------------------------------------------------------------------------------------
# The pieces.


def test_standin_has_the_vgg16_interface(vgg_file):
    vgg = projector.load_vgg16(vgg_file)
    a = torch.rand(2, 3, 32, 32) * 255
    b = torch.rand(2, 3, 32, 32) * 255
    feats = vgg(a, resize_images=False, return_lpips=True)
    assert feats.ndim == 2 and feats.shape[0] == 2
    assert torch.all(projector.lpips_distance(vgg, a, a) == 0)
    assert torch.all(projector.lpips_distance(vgg, a, b) > 0)
    big = torch.rand(1, 3, 512, 512) * 255  # larger than 256: area-downsampled first, as NVIDIA's projector
    small = torch.nn.functional.interpolate(big, size=(256, 256), mode="area")
    assert torch.equal(projector.lpips_features(vgg, big), projector.lpips_features(vgg, small))


def test_noise_regularization_penalises_structure():
    gen = torch.Generator().manual_seed(0)
    white = [torch.randn(32, 32, generator=gen), torch.randn(8, 8, generator=gen)]
    smooth = [torch.ones(32, 32), torch.ones(8, 8)]
    assert projector.noise_regularization(smooth) > 100 * projector.noise_regularization(white)
    # 32x32 -> scales 32, 16, 8; 8x8 -> one scale; two shifts each, each (mean of ones)^2 = 1
    assert projector.noise_regularization(smooth).item() == pytest.approx(2 * 3 + 2 * 1)


def test_learning_rate_schedule_is_nvidias():
    lr = [projector._learning_rate(s, 1000, 0.1, 0.25, 0.05) for s in range(1000)]
    assert lr[0] == 0 and lr[25] == pytest.approx(0.05) and lr[50] == pytest.approx(0.1)
    assert lr[500] == pytest.approx(0.1) and lr[875] == pytest.approx(0.05) and lr[-1] < 1e-4


def test_projection_moves_toward_the_target(G, target, vgg_file):
    vgg = projector.load_vgg16(vgg_file)
    noise_before = {k: v.clone() for k, v in G.state_dict().items() if "noise_const" in k}
    result = projector.project(G, target, vgg, num_steps=30, w_avg_samples=500, seed=1)
    assert result.w_steps.shape == (30, G.num_ws, G.w_dim)
    assert torch.equal(result.w_steps[:, :1].expand_as(result.w_steps), result.w_steps)  # one w, all layers
    assert result.w.shape == (1, G.num_ws, G.w_dim)
    assert result.dist[-1] < 0.5 * result.dist[0]
    assert all(np.isfinite(result.loss))
    for key, value in G.state_dict().items():  # the network itself is untouched (a copy is optimised)
        if key in noise_before:
            assert torch.equal(value, noise_before[key])
    once = projector.project(G, target, vgg, num_steps=5, w_avg_samples=500, seed=1)
    again = projector.project(G, target, vgg, num_steps=5, w_avg_samples=500, seed=1)
    assert torch.equal(once.w_steps, again.w_steps)  # a seed gives the same projection
    other = projector.project(G, target, vgg, num_steps=5, w_avg_samples=500, seed=2)
    assert not torch.equal(other.w_steps, again.w_steps)


def test_project_checks_its_inputs(G, target, vgg_file):
    vgg = projector.load_vgg16(vgg_file)
    with pytest.raises(UserError, match="num-steps"):
        projector.project(G, target, vgg, num_steps=0)
    with pytest.raises(UserError, match=r"\[3, 32, 32\]"):
        projector.project(G, target[:, :16], vgg, num_steps=1)


# ----------------------------------------------------------------------------------------------------------
# The commands.


def _target_png(tmp_path, target) -> str:
    path = tmp_path / "photo.png"
    big = Image.fromarray(target.permute(1, 2, 0).numpy()).resize((48, 40))  # not square: center-cropped
    big.save(path)
    return str(path)


def test_project_then_generate_projected_w(tmp_path, tiny32, target, vgg_file, capsys):
    out = tmp_path / "proj"
    argv = [
        "project",
        "--network",
        tiny32,
        "--target",
        _target_png(tmp_path, target),
        "--outdir",
        str(out),
        "--num-steps",
        "8",
        "--seed",
        "3",
        "--w-avg-samples",
        "500",
        "--vgg16",
        str(vgg_file),
    ]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert f"VGG16 LPIPS network: {vgg_file} (sha256 " in printed and "LPIPS distance" in printed
    with np.load(out / "projected_w.npz") as data:
        assert list(data) == ["w"]
        w = data["w"]
    assert w.shape == (1, 8, 64) and w.dtype == np.float32
    assert np.asarray(Image.open(out / "target.png")).shape == (32, 32, 3)
    assert not (out / "proj.mp4").exists() and not (out / "proj.gif").exists()

    gen = tmp_path / "gen"
    argv = [
        "generate",
        "--network",
        tiny32,
        "--projected-w",
        str(out / "projected_w.npz"),
        "--outdir",
        str(gen),
    ]
    assert cli_main(argv) == 0
    assert np.array_equal(
        np.asarray(Image.open(gen / "proj00.png")), np.asarray(Image.open(out / "proj.png"))
    )

    # several projections in one file, as a grid; --seeds is ignored with a note (NVIDIA's rule)
    projector.write_projected_w(tmp_path / "three.npz", np.concatenate([w, w * 0.5, w * 0]))
    argv = [
        "generate",
        "--network",
        tiny32,
        "--projected-w",
        str(tmp_path / "three.npz"),
        "--seeds",
        "0-3",
        "--outdir",
        str(gen),
        "--grid",
        "1x3",
    ]
    assert cli_main(argv) == 0
    assert "--seeds is ignored" in capsys.readouterr().out
    assert np.asarray(Image.open(gen / "grid.png")).shape == (32, 96, 3)


def test_generate_needs_seeds_or_projected_w(tmp_path, tiny32, capsys):
    assert cli_main(["generate", "--network", tiny32, "--outdir", str(tmp_path)]) == 2
    assert "--seeds" in capsys.readouterr().err


def _npz(path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: _npz(p, w=np.zeros([1, 7, 64], np.float32)), "has shape [1, 7, 64]"),
        (lambda p: _npz(p, v=np.zeros([1, 8, 64], np.float32)), "holds no array `w`"),
        (lambda p: _npz(p, w=np.full([1, 8, 64], np.nan, np.float32)), "NaN"),
        (lambda p: _npz(p, w=np.zeros([1, 8, 64], np.int32)), "not floating point"),
        (lambda p: _npz(p, w=np.array([object()] * 2)), "not floating point"),
        (lambda p: p.write_bytes(b"not a zip") and str(p), "not a readable .npz"),
    ],
    ids=["shape", "no-w", "nan", "int", "object", "garbage"],
)
def test_bad_projected_w_is_one_line(tmp_path, tiny32, capsys, make, message):
    path = make(tmp_path / "w.npz")
    assert cli_main(["generate", "--network", tiny32, "--projected-w", path, "--outdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_huge_declared_w_is_refused_before_reading(tmp_path):
    """A header claiming 10**9 vectors (data missing): refused from the header, nothing allocated."""
    import zipfile

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 8, 64)}
    )
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as archive:
        archive.writestr("w.npy", buf.getvalue())  # magic, version and header; no data
    with pytest.raises(UserError, match="1000000000 vectors"):
        projector.read_projected_w(tmp_path / "huge.npz", 8, 64)


def test_conditional_network_needs_a_class(tmp_path, target, vgg_file, capsys):
    from rootedgan.checkpoints import save_network
    from rootedgan.networks import Generator

    G = Generator(
        z_dim=16,
        c_dim=3,
        w_dim=16,
        img_resolution=32,
        img_channels=3,
        mapping_kwargs=dict(num_layers=1),
        synthesis_kwargs=dict(channel_base=256, channel_max=16),
    )
    net = save_network(tmp_path / "cond.safetensors", G_ema=G)
    argv = [
        "project",
        "--network",
        str(net),
        "--target",
        _target_png(tmp_path, target),
        "--outdir",
        str(tmp_path / "o"),
        "--vgg16",
        str(vgg_file),
    ]
    assert cli_main(argv) == 2
    assert "--class" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# The VGG16 download: the real downloader and cache, a faked server; offline is one line.


class _Response:
    def __init__(self, data: bytes) -> None:
        self.body = io.BytesIO(data)
        self.status = 200
        self.headers = {"Content-Length": str(len(data))}

    def read(self, n: int = -1) -> bytes:
        return self.body.read(n)

    def close(self) -> None:
        pass


def test_vgg16_is_downloaded_into_the_cache(cache, vgg_file, monkeypatch):
    served = []

    def urlopen(request, timeout=None):
        served.append(request.full_url)
        return _Response(vgg_file.read_bytes())

    monkeypatch.setattr("urllib.request.urlopen", urlopen)
    path = projector.resolve_vgg16()
    assert served == [projector.VGG16_URL]
    assert (
        projector.VGG16_URL
        == "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt"
    )
    assert path == cache / "vgg16.pt" and path.read_bytes() == vgg_file.read_bytes()
    assert projector.resolve_vgg16() == path and len(served) == 1  # cached: no second request
    projector.load_vgg16(path)


def test_offline_names_the_url_and_where_to_put_the_file(
    cache, tmp_path, tiny32, target, monkeypatch, capsys
):
    def offline(request, timeout=None):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr("urllib.request.urlopen", offline)
    argv = [
        "project",
        "--network",
        tiny32,
        "--target",
        _target_png(tmp_path, target),
        "--outdir",
        str(tmp_path / "o"),
        "--num-steps",
        "2",
    ]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert projector.VGG16_URL in err and str(cache / "vgg16.pt") in err
    assert "--vgg16 PATH" in err and "ROOTEDGAN_VGG16" in err and "offline" in err
    with pytest.raises(UserError, match="does not exist"):
        projector.resolve_vgg16(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------------------------------------
# --save-video: imageio when installed (MP4 with imageio-ffmpeg, else GIF), else one clear line.


def test_save_video_without_imageio_says_what_to_install(
    tmp_path, tiny32, target, vgg_file, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "imageio", None)
    monkeypatch.setitem(sys.modules, "imageio.v2", None)
    out = tmp_path / "o"
    argv = [
        "project",
        "--network",
        tiny32,
        "--target",
        _target_png(tmp_path, target),
        "--outdir",
        str(out),
        "--vgg16",
        str(vgg_file),
        "--save-video",
    ]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install imageio" in err and "imageio-ffmpeg" in err and len(err.splitlines()) == 1
    assert not (out / "projected_w.npz").exists()  # refused before the (long) projection


def _fake_imageio(monkeypatch, ffmpeg: bool) -> list:
    writers = []

    class Writer:
        def __init__(self, path, **kwargs):
            self.path, self.kwargs, self.frames, self.closed = path, kwargs, [], False
            writers.append(self)

        def append_data(self, frame):
            self.frames.append(np.array(frame))

        def close(self):
            self.closed = True

    imageio = types.ModuleType("imageio")
    imageio.__version__ = "2.38.1"
    v2 = types.ModuleType("imageio.v2")
    v2.get_writer = Writer
    imageio.v2 = v2
    monkeypatch.setitem(sys.modules, "imageio", imageio)
    monkeypatch.setitem(sys.modules, "imageio.v2", v2)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", types.ModuleType("imageio_ffmpeg") if ffmpeg else None)
    return writers


@pytest.mark.parametrize(("ffmpeg", "name"), [(True, "proj.mp4"), (False, "proj.gif")])
def test_save_video_frames(tmp_path, tiny32, target, vgg_file, monkeypatch, ffmpeg, name):
    writers = _fake_imageio(monkeypatch, ffmpeg)
    out = tmp_path / "o"
    argv = [
        "project",
        "--network",
        tiny32,
        "--target",
        _target_png(tmp_path, target),
        "--outdir",
        str(out),
        "--vgg16",
        str(vgg_file),
        "--num-steps",
        "4",
        "--w-avg-samples",
        "200",
        "--save-video=true",
    ]
    assert cli_main(argv) == 0
    (writer,) = writers
    assert writer.path == out / name and writer.closed
    assert len(writer.frames) == 4 and writer.frames[0].shape == (32, 64, 3)
    target_png = np.asarray(Image.open(out / "target.png"))
    assert all(np.array_equal(f[:, :32], target_png) for f in writer.frames)
    assert np.array_equal(writer.frames[-1][:, 32:], np.asarray(Image.open(out / "proj.png")))
    if ffmpeg:
        assert writer.kwargs == {"mode": "I", "fps": 10, "codec": "libx264", "bitrate": "16M"}
    else:
        assert writer.kwargs == {"mode": "I", "duration": 100.0, "loop": 0}


def test_save_video_with_real_imageio(tmp_path, tiny32, target, vgg_file):
    pytest.importorskip("imageio")
    out = tmp_path / "o"
    argv = [
        "project",
        "--network",
        tiny32,
        "--target",
        _target_png(tmp_path, target),
        "--outdir",
        str(out),
        "--vgg16",
        str(vgg_file),
        "--num-steps",
        "3",
        "--w-avg-samples",
        "200",
        "--save-video",
    ]
    assert cli_main(argv) == 0
    video = out / "proj.mp4" if (out / "proj.mp4").exists() else out / "proj.gif"
    assert video.stat().st_size > 0
