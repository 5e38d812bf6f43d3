"""Finding and loading the Inception file offline, and importing clean-fid without a usable torchvision."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.standins import make_standin_inception
from rootedgan.errors import DownloadError, UserError
from rootedgan.metrics import inception as inc
from rootedgan.metrics.inception import (
    INCEPTION_URL,
    load_inception,
    locate_inception,
    resolve_inception,
    tf1_bilinear_resize,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def no_inception_anywhere(tmp_path, monkeypatch) -> Path:
    """An empty rootedgan cache, no env var, and clean-fid's /tmp location moved to an empty folder."""
    monkeypatch.setenv("ROOTEDGAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(inc.INCEPTION_ENV, raising=False)
    monkeypatch.setattr(inc, "CLEANFID_INCEPTION_PATH", tmp_path / "tmp" / inc.INCEPTION_FILENAME)
    return tmp_path


def test_missing_inception_says_where_to_get_it_and_where_to_put_it(no_inception_anywhere):
    with pytest.raises(UserError) as info:
        resolve_inception(download=False)
    msg = str(info.value)
    assert INCEPTION_URL in msg
    assert "--inception" in msg and inc.INCEPTION_ENV in msg
    assert str(no_inception_anywhere / "cache" / "networks" / inc.INCEPTION_FILENAME) in msg
    assert str(no_inception_anywhere / "tmp" / inc.INCEPTION_FILENAME) in msg


def test_failed_download_is_a_user_error_not_a_traceback(no_inception_anywhere, monkeypatch):
    import rootedgan.checkpoints.download as download

    def offline(url, *args, **kwargs):
        raise DownloadError(f"could not download {url}: the host name does not resolve (offline?)")

    monkeypatch.setattr(download, "download", offline)
    with pytest.raises(UserError, match="could not be downloaded.*does not resolve") as info:
        resolve_inception()
    assert INCEPTION_URL in str(info.value) and info.value.__cause__ is None


def test_lookup_order_explicit_env_cache_then_cleanfid_tmp(no_inception_anywhere, monkeypatch):
    tmp = no_inception_anywhere
    cleanfid_copy = make_standin_inception(tmp / "tmp" / inc.INCEPTION_FILENAME)
    assert resolve_inception(download=False) == cleanfid_copy
    cached = make_standin_inception(tmp / "cache" / "networks" / inc.INCEPTION_FILENAME)
    assert resolve_inception(download=False) == cached
    env_copy = make_standin_inception(tmp / "env.pt")
    monkeypatch.setenv(inc.INCEPTION_ENV, str(env_copy))
    assert resolve_inception(download=False) == env_copy
    explicit = make_standin_inception(tmp / "explicit.pt")
    assert resolve_inception(explicit, download=False) == explicit
    # and where each came from, for the line printed before an evaluation
    assert locate_inception(explicit, download=False).origin == "given explicitly"
    assert locate_inception(download=False) == (env_copy, f"from ${inc.INCEPTION_ENV}")
    monkeypatch.delenv(inc.INCEPTION_ENV)
    assert locate_inception(download=False) == (cached, "found in rootedgan's cache")
    cached.unlink()
    assert locate_inception(download=False) == (cleanfid_copy, "found in clean-fid's cache")
    net = load_inception(download=False)
    first, warning = net.describe().splitlines()  # a stand-in: the second line says it is not NVIDIA's
    assert first == f"{cleanfid_copy} (sha256 {net.digest}, found in clean-fid's cache)"
    assert warning.startswith("WARNING: NOT NVIDIA's Inception")
    monkeypatch.setenv(inc.INCEPTION_ENV, str(env_copy))
    with pytest.raises(UserError, match="does not exist"):
        resolve_inception(tmp / "nope.pt")
    monkeypatch.setenv(inc.INCEPTION_ENV, str(tmp / "missing.pt"))
    with pytest.raises(UserError, match=f"{inc.INCEPTION_ENV}=.*does not exist"):
        resolve_inception(download=False)


def test_load_inception_calls_layers_like_cleanfid_and_rejects_other_files(tmp_path):
    path = make_standin_inception(tmp_path / "inc.pt")
    net = load_inception(path)
    x = torch.rand(2, 3, 299, 299) * 255
    feats = net(x)
    assert feats.shape == (2, 2048) and feats.dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        script = torch.jit.load(str(path))
    torch.testing.assert_close(feats, script.layers((x - 128) / 128).view(2, 2048), rtol=0, atol=0)
    assert (feats >= 0).all() and 0.05 < float(feats.mean()) < 5  # Inception-like pool features
    assert len(net.digest) == 64
    with pytest.raises(ValueError, match="299"):
        net(torch.rand(1, 3, 32, 32))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torchscript file")
    with pytest.raises(UserError, match="cannot load the Inception torchscript"):
        load_inception(bad)


def tf1_resize_reference(img: np.ndarray, size: int) -> np.ndarray:
    """TensorFlow 1's resize_bilinear(align_corners=False, half_pixel_centers=False), written out in numpy:
    output row/column i reads the input at i * in / size, the next pixel clamped to the last one."""

    def axis(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.arange(size) * (n_in / size)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    y0, y1, fy = axis(img.shape[0])
    x0, x1, fx = axis(img.shape[1])
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bottom = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (400, 320), (299, 299)])
def test_tf1_bilinear_resize_is_tensorflow_1s_resize(shape):
    img = np.random.RandomState(0).uniform(0, 255, shape)
    ours = tf1_bilinear_resize(torch.from_numpy(img)[None, None], 299)[0, 0].numpy()
    np.testing.assert_allclose(ours, tf1_resize_reference(img, 299), rtol=0, atol=1e-9 * 255)


def test_standin_resizes_inside_its_forward_like_nvidias_file(tmp_path):
    """The stand-in's forward(img, return_features=True) takes images of any size in [0, 255] (what
    clean-fid's legacy_tensorflow mode calls); its layers take 299x299 in [-1, 1] (the clean mode)."""
    path = make_standin_inception(tmp_path / "inc.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        script = torch.jit.load(str(path))
    img = torch.randint(0, 256, (2, 3, 40, 90), dtype=torch.uint8)
    feats = script(img.float(), return_features=True)
    resized = tf1_bilinear_resize(img.to(torch.float64), 299).float()
    torch.testing.assert_close(feats, script.layers((resized - 128) / 128), rtol=1e-5, atol=1e-5)
    net = load_inception(path, resize_inside=True)
    torch.testing.assert_close(net(img), feats, rtol=0, atol=0)  # uint8 in: cast to float32 first
    assert net(torch.rand(1, 3, 17, 23) * 255).shape == (1, 2048)
    with pytest.raises(UserError, match="float32"):
        load_inception(path, resize_inside=True, dtype=torch.bfloat16)


SCENARIOS = {
    # torchvision whose C extension does not match torch: clean-fid still imports, with the stand-in
    "broken": """
        import os, tempfile
        site = tempfile.mkdtemp()
        os.makedirs(os.path.join(site, "torchvision", "models"))
        with open(os.path.join(site, "torchvision", "__init__.py"), "w") as fh:
            fh.write("from torchvision import models\\n"
                     "raise RuntimeError('operator torchvision::nms does not exist')\\n")
        open(os.path.join(site, "torchvision", "models", "__init__.py"), "w").close()
        sys.path.insert(0, site)
        fid = import_cleanfid()
        assert torchvision_is_standin(), "stand-in expected"
        import torchvision
        assert torchvision.transforms.ToTensor()(np.ones((2, 3, 3), np.uint8)).shape == (3, 2, 3)
        try:
            torchvision.models.inception_v3()
        except UserError as err:
            assert "legacy" in str(err)
        else:
            raise AssertionError("inception_v3 should refuse")
        print("OK")
    """,
    # a working torchvision is never replaced
    "working": """
        tv = types.ModuleType("torchvision"); tv.__version__ = "9.9"; tv.__path__ = []
        models = types.ModuleType("torchvision.models"); models.__path__ = []
        inception = types.ModuleType("torchvision.models.inception")
        for n in ("InceptionA", "InceptionC", "InceptionE"):
            setattr(inception, n, type(n, (torch.nn.Module,), {}))
        transforms = types.ModuleType("torchvision.transforms"); transforms.ToTensor = object
        tv.models, models.inception, tv.transforms = models, inception, transforms
        sys.modules.update({"torchvision": tv, "torchvision.models": models,
                            "torchvision.models.inception": inception, "torchvision.transforms": transforms})
        import_cleanfid()
        assert not torchvision_is_standin() and sys.modules["torchvision"] is tv
        print("OK")
    """,
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_import_cleanfid_torchvision_scenarios(scenario):
    pytest.importorskip("cleanfid")
    head = """
        import importlib.abc, sys, types
        import numpy as np
        import torch
        from rootedgan.errors import UserError
        from rootedgan.metrics._cleanfid_import import import_cleanfid, torchvision_is_standin
    """
    code = textwrap.dedent(head) + textwrap.dedent(SCENARIOS[scenario])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-2000:]


def test_missing_cleanfid_is_a_clear_error(monkeypatch):
    from rootedgan.metrics._cleanfid_import import import_cleanfid

    monkeypatch.delitem(sys.modules, "cleanfid.fid", raising=False)
    monkeypatch.setitem(sys.modules, "cleanfid", None)  # makes `import cleanfid` fail
    with pytest.raises(UserError, match="pip install clean-fid"):
        import_cleanfid()
