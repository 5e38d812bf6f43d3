"""Hostile and careless input: small files and options that must be refused in one line, quickly, without
fetching URLs, reading arbitrary paths, hanging or allocating gigabytes.

Every test bounds its own time (a SIGALRM that raises a BaseException, so no ``except Exception`` in the code
under test can swallow it) and uses small files; URLs point at a local http.server on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import os
import pickle
import resource
import shutil
import signal
import struct
import sys
import threading
import time
import types
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMOKE
from PIL import Image

from rootedgan.checkpoints import download as dl
from rootedgan.checkpoints import load_network
from rootedgan.cli import main as cli_main
from rootedgan.data import ImageDataset
from rootedgan.errors import CheckpointError, DownloadError, UserError
from rootedgan.metrics.features import FolderImages
from rootedgan.training.adapter import base_reference, save_adapter

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY32 = FIXTURES / "nvidia" / "tiny32.pkl"


# ----------------------------------------------------------------------------------------------------------
# Helpers: a time limit nothing can swallow, peak memory, a local web server, one-line errors.


class Hang(BaseException):
    """Raised by the alarm: a BaseException, so `except Exception` in the code under test lets it through."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def on_alarm(signum, frame):
        raise Hang(f"still running after {seconds} s (hang or unbounded work)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@contextlib.contextmanager
def bounded(seconds: float = 5.0, memory_mb: float = 300.0):
    """The block must finish within ``seconds`` and raise the peak RSS by less than ``memory_mb``."""
    before = peak_rss_mb()
    with time_limit(seconds):
        yield
    grown = peak_rss_mb() - before
    assert grown < memory_mb, f"peak memory grew by {grown:.0f} MB"


def one_line(text: str) -> str:
    text = str(text).strip()
    assert "\n" not in text, f"not one line: {text!r}"
    assert "Traceback" not in text
    return text


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    requests: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    handler = type("Handler", (_Handler,), {"files": {}, "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(dl.CACHE_ENV, str(root))
    return root


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------------------
# 1. An adapter's recorded base is never fetched or read from an arbitrary path.


@pytest.fixture(scope="module")
def adapter_parts():
    """The orthogonally parametrized G/G_ema of tiny32 and its config (built once: it takes a second)."""
    from rootedgan.training.orthogonal import OrthogonalConfig, apply_orthogonal

    nets = load_network(TINY32)
    cfg = OrthogonalConfig(block_size=16)
    for name in ("G", "G_ema"):
        apply_orthogonal(nets[name], cfg)
    return {"G": nets["G"], "G_ema": nets["G_ema"]}, cfg


def write_adapter(adapter_parts, folder: Path, **base) -> Path:
    nets, cfg = adapter_parts
    folder.mkdir(parents=True, exist_ok=True)
    return save_adapter(folder / "a.adapter.safetensors", nets, cfg, base)


def real_base(tmp_path: Path) -> dict:
    """The true size and sha256 of tiny32 (a copy outside the adapter's folder)."""
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    shutil.copy(TINY32, outside / "base.pkl")
    return base_reference(outside / "base.pkl")


def test_adapter_never_downloads_its_recorded_url(tmp_path, server, cache, adapter_parts):
    handler, url = server
    handler.files["/nets/base.pkl"] = TINY32.read_bytes()
    ref = real_base(tmp_path)
    path = write_adapter(adapter_parts, tmp_path / "run", **{**ref, "source": f"{url}/nets/base.pkl"})
    with bounded(), pytest.raises(UserError) as info:
        load_network(path)
    message = one_line(info.value)
    assert "base=" in message and "--base" in message
    assert handler.requests == []  # nothing was fetched
    assert not cache.exists() or not any(cache.rglob("*.pkl"))
    # What the user names explicitly (here the same URL) is used, checked by sha256.
    assert load_network(path, base=f"{url}/nets/base.pkl")["G_ema"] is not None
    assert handler.requests == ["/nets/base.pkl"]


def test_adapter_never_reads_a_recorded_file_url_or_path(tmp_path, cache, adapter_parts):
    secret = tmp_path / "private" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("do not copy me\n")
    ref = real_base(tmp_path)
    # A file:// source (the reviewer's file:///etc/passwd), and a local_path pointing at a real base
    # elsewhere: neither may be opened just because the adapter says so.
    path = write_adapter(
        adapter_parts, tmp_path / "run", **{**ref, "source": secret.as_uri(), "local_path": ref["local_path"]}
    )
    with bounded(), pytest.raises(UserError) as info:
        load_network(path)
    assert "base=" in one_line(info.value)
    assert not cache.exists() or not any(cache.rglob("secret*"))  # not copied into the cache
    # The same base next to the adapter, under the recorded name, is found and verified by sha256.
    shutil.copy(TINY32, path.parent / "base.pkl")
    assert load_network(path)["meta"]["adapter"]["base_path"] == str(path.parent / "base.pkl")
    (path.parent / "base.pkl").write_bytes(TINY32.read_bytes()[:-1] + b"\0")  # same size, other bytes
    with pytest.raises(CheckpointError, match="sha256"):
        load_network(path)


def test_adapter_with_dev_zero_or_fifo_base_does_not_hang(tmp_path, adapter_parts):
    ref = real_base(tmp_path)
    fifo = tmp_path / "fifo.pkl"
    os.mkfifo(fifo)
    for source in ("/dev/zero", str(fifo)):
        record = {"source": source, "sha256": ref["sha256"]}  # no size recorded: only the hash would tell
        path = write_adapter(adapter_parts, tmp_path / f"run-{len(source)}", **record)
        with bounded(), pytest.raises(UserError) as info:
            load_network(path)
        one_line(info.value)
        with bounded(), pytest.raises(UserError, match="not a regular file") as info:
            load_network(path, base=source)  # given by the user: refused as not a regular file
        one_line(info.value)


# ----------------------------------------------------------------------------------------------------------
# 2. The download cache is keyed by the full URL, and a known checksum is checked on a cache hit.


def test_download_cache_is_keyed_by_the_full_url(server):
    handler, url = server
    handler.files["/runA/network-snapshot-000100.pkl"] = b"run A" * 100
    handler.files["/runB/network-snapshot-000100.pkl"] = b"run B" * 100
    a = dl.download(f"{url}/runA/network-snapshot-000100.pkl", progress=False)
    b = dl.download(f"{url}/runB/network-snapshot-000100.pkl", progress=False)
    assert a != b and a.name == b.name == "network-snapshot-000100.pkl"
    assert a.read_bytes() == b"run A" * 100 and b.read_bytes() == b"run B" * 100
    assert dl.download(f"{url}/runA/network-snapshot-000100.pkl", progress=False) == a  # cache hit
    assert len(handler.requests) == 2


def test_cached_file_is_checked_against_a_known_sha256(server, monkeypatch):
    handler, url = server
    good = b"the real network" * 64
    handler.files["/known.pkl"] = good
    known = dl.KnownNetwork(f"{url}/known.pkl", hashlib.sha256(good).hexdigest())
    monkeypatch.setitem(dl.NVIDIA_NETWORKS, "knowntest", known)
    wrong = dl.cache_path(known.url)
    wrong.parent.mkdir(parents=True)
    wrong.write_bytes(b"something else")  # a stale or tampered cache entry
    with pytest.raises(DownloadError, match="sha256") as info:
        dl.fetch("knowntest", progress=False)
    one_line(info.value)
    wrong.unlink()
    assert dl.fetch("knowntest", progress=False).read_bytes() == good


# ----------------------------------------------------------------------------------------------------------
# 3. Shared-reference bombs in a pickle's metadata.


@pytest.fixture
def persistence(monkeypatch):
    """A stand-in ``torch_utils.persistence`` so that tests can write NVIDIA-style persistent objects."""
    pkg = types.ModuleType("torch_utils")
    mod = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # never called: only used for pickling
        raise AssertionError("not for loading")

    _reconstruct_persistent_obj.__module__ = mod.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    pkg.persistence = mod
    monkeypatch.setitem(sys.modules, "torch_utils", pkg)
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", mod)

    class Persistent:
        def __init__(self, meta):
            self.meta = meta

        def __reduce__(self):
            return _reconstruct_persistent_obj, (self.meta,)

    def make(class_name="Generator", init_kwargs=None, modules=None):
        state = {
            "_parameters": {},
            "_buffers": {},
            "_modules": modules or {},
            "_init_kwargs": init_kwargs or {},
        }
        return Persistent(
            {"type": "class", "version": 6, "module_src": "", "class_name": class_name, "state": state}
        )

    return make


def list_bomb(levels=40):
    x = [0]
    for _ in range(levels):
        x = [x, x]
    return x


def wide_bomb(levels=10, width=100):
    """Shallow (within any depth limit) but 100**10 values once expanded."""
    x = [0]
    for _ in range(levels):
        x = [x] * width
    return x


def dict_bomb(levels=40):
    x = {"leaf": 0}
    for _ in range(levels):
        x = {"l": x, "r": x}
    return x


@pytest.mark.parametrize(
    "where",
    [
        "training_set_kwargs-list",
        "training_set_kwargs-dict",
        "training_set_kwargs-wide",
        "init_kwargs",
        "modules",
    ],
)
def test_shared_reference_bombs_are_refused(tmp_path, persistence, where):
    if where == "init_kwargs":
        data = {"G_ema": persistence(init_kwargs={"z_dim": 64, "mapping_kwargs": dict_bomb()})}
    elif where == "modules":
        module = persistence("Conv2dLayer")
        for _ in range(40):
            module = persistence("Block", modules={"a": module, "b": module})
        data = {"G_ema": persistence(modules={"b4": module})}
    else:
        bomb = {"list": list_bomb, "dict": dict_bomb, "wide": wide_bomb}[where.rpartition("-")[2]]()
        data = {"G_ema": persistence(), "training_set_kwargs": {"path": "x.zip", "extra": bomb}}
    path = tmp_path / "bomb.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    assert path.stat().st_size < 4000  # a few hundred bytes to a few KB
    with bounded(seconds=3, memory_mb=200), pytest.raises(CheckpointError) as info:
        load_network(path)
    message = one_line(info.value)
    assert str(path) in message and "refused" in message


# ----------------------------------------------------------------------------------------------------------
# 4. Absurd constructor arguments are refused before anything is built.


def native_file(tmp_path: Path, kwargs: dict, name: str = "absurd.safetensors") -> Path:
    from safetensors.torch import save

    metadata = {
        "format": "rootedgan-native",
        "format_version": "1",
        "init_kwargs": json.dumps({"G_ema": kwargs}),
        "meta": "{}",
    }
    path = tmp_path / name
    path.write_bytes(save({"G_ema.mapping.w_avg": torch.zeros(4)}, metadata=metadata))
    return path


SANE = {"z_dim": 64, "c_dim": 0, "w_dim": 64, "img_resolution": 32, "img_channels": 3}


@pytest.mark.parametrize(
    "change",
    [
        {"z_dim": 65536, "w_dim": 65536},  # the reviewer's 447-byte file: 7.2 GB before
        {"img_resolution": 2**20},
        {"synthesis_kwargs": {"channel_base": 2**30, "channel_max": 2**20}},
        {"mapping_kwargs": {"num_layers": 10**6}},
        {"c_dim": 2**31},
        {"z_dim": -1},
        {"w_dim": -64},
        {"z_dim": None},
        {"w_dim": None},
        {"synthesis_kwargs": {"channel_base": 0}},
        {"z_dim": 64.5},
        {"synthesis_kwargs": {"conv_clamp": float("nan")}},
        {"z_dim": 512, "w_dim": 512, "img_resolution": 1024},  # sane, but not what the tensors hold
    ],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items())[:60],
)
def test_absurd_network_kwargs_are_refused_before_building(tmp_path, change):
    kwargs = {k: v for k, v in {**SANE, **change}.items() if v is not None}
    path = native_file(tmp_path, kwargs)
    assert path.stat().st_size < 1000
    with bounded(seconds=5, memory_mb=150), pytest.raises(CheckpointError) as info:
        load_network(path)
    message = one_line(info.value)
    assert str(path) in message
    assert len(message) < 1000


# ----------------------------------------------------------------------------------------------------------
# 5. FIFOs (and devices) as --network.


def test_fifo_as_network_is_refused(tmp_path, capsys):
    fifo = tmp_path / "net.pkl"
    os.mkfifo(fifo)
    with bounded(), pytest.raises(CheckpointError, match="not a regular file") as info:
        load_network(fifo)
    one_line(info.value)
    with bounded():
        code = cli_main(["generate", "--network", str(fifo), "--seeds", "0", "--outdir", str(tmp_path / "o")])
    assert code == 2
    assert "not a regular file" in one_line(capsys.readouterr().err)
    with bounded(), pytest.raises(CheckpointError, match="not a regular file"):
        load_network("/dev/zero")


# ----------------------------------------------------------------------------------------------------------
# 6. Zip members and images that would expand to gigabytes.


def png_bytes(size=8, seed=0) -> bytes:
    arr = np.random.RandomState(seed).randint(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory) -> Path:
    """A ~260 KB zip holding a 257 MiB zero-filled "PNG" (over the 256 MiB default) and a real image."""
    path = tmp_path_factory.mktemp("zipbomb") / "faces.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("imgs/big.png", "w", force_zip64=True) as fh:
            chunk = bytes(1 << 20)
            for _ in range(257):
                fh.write(chunk)
        zf.writestr("imgs/ok.png", png_bytes())
    assert path.stat().st_size < 1 << 20
    return path


def test_zip_member_over_the_size_limit_is_refused_unread(zip_bomb):
    ds = ImageDataset(zip_bomb, resolution=8)
    assert ds.names == ["imgs/big.png", "imgs/ok.png"]
    with bounded(seconds=3, memory_mb=100), pytest.raises(UserError) as info:
        ds[0]
    message = one_line(info.value)
    assert message.startswith("'imgs/big.png' in ") and "limit" in message and "max_image_mb" in message
    assert ds[1][0].shape == (3, 8, 8)
    with pytest.raises(UserError, match="imgs/big.png"):  # the limit is an option
        ImageDataset(zip_bomb, resolution=8, max_image_mb=0.5).content_key()
    images = FolderImages(zip_bomb)
    with bounded(seconds=3, memory_mb=100), pytest.raises(UserError) as info:
        images.image(0)
    message = one_line(info.value)
    assert message.startswith("'imgs/big.png' in ") and "limit" in message
    assert images.image(1).shape == (8, 8, 3)


def pixel_bomb_png(width: int, height: int) -> bytes:
    """A 1-bit grayscale PNG of zeros: a few KB on disk, ``width * height`` pixels decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_image_is_refused_before_decoding(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(pixel_bomb_png(9500, 9500))  # 90.25 M pixels > PIL's 89.5 M limit
    (folder / "ok.png").write_bytes(png_bytes())
    ds = ImageDataset(folder, resolution=8)
    with bounded(seconds=3, memory_mb=100), pytest.raises(UserError) as info:
        ds[0]
    message = one_line(info.value)
    assert message.startswith("'bomb.png' in ") and "pixels" in message
    with bounded(seconds=3, memory_mb=100), pytest.raises(UserError, match="pixels"):
        FolderImages(folder).image(0)


# ----------------------------------------------------------------------------------------------------------
# 7. dataset.json labels.


@pytest.mark.parametrize(
    "labels_json,problem",
    [
        ('{"labels": [["a.png", ' + "[" * 100_000 + "1" + "]" * 100_000 + '], ["b.png", [1]]]}', "nested"),
        ('{"labels": [["a.png", [NaN, 1.0]], ["b.png", [0.0, 1.0]]]}', "NaN"),
        ('{"labels": [["a.png", [Infinity, 1.0]], ["b.png", [0.0, 1.0]]]}', "Infinity"),
        ('{"labels": [["a.png", [1e999, 1.0]], ["b.png", [0.0, 1.0]]]}', "finite"),
        ('{"labels": [["a.png", 2000000000], ["b.png", 0]]}', "2000000000"),
        ('{"labels": [["a.png", 10000000000000000000000000], ["b.png", 0]]}', "too large"),
        ('{"labels": [["a.png", [[[[1]]]]], ["b.png", [[[[0]]]]]]}', "labels must be"),
    ],
    ids=["deep", "nan", "infinity", "overflow", "class-2e9", "class-1e25", "nested-lists"],
)
def test_hostile_dataset_json_is_a_one_line_error(tmp_path, labels_json, problem):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes(seed=1))
    (folder / "b.png").write_bytes(png_bytes(seed=2))
    (folder / "dataset.json").write_text(labels_json)
    with bounded(seconds=5, memory_mb=200), pytest.raises(UserError) as info:
        ImageDataset(folder, resolution=8, use_labels=True)
    message = one_line(info.value)
    assert message.startswith(f"dataset.json in {folder}") or message.startswith(
        f"cannot parse dataset.json in {folder}"
    )
    assert problem in message
    assert len(message) < 600


# ----------------------------------------------------------------------------------------------------------
# 8. Options: STYLEGAN_OPS_IMPL, --trunc, --seeds.


def test_bogus_ops_impl_is_one_line_from_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STYLEGAN_OPS_IMPL", "bogus")
    code = cli_main(["generate", "--network", str(TINY32), "--seeds", "0", "--outdir", str(tmp_path)])
    assert code == 2
    err = one_line(capsys.readouterr().err)
    assert "STYLEGAN_OPS_IMPL" in err and "bogus" in err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_non_finite_truncation_is_refused(tmp_path, capsys, value):
    code = cli_main(["generate", "--network", str(TINY32), "--seeds", "0", f"--trunc={value}",
                     "--outdir", str(tmp_path / "out")])  # fmt: skip
    assert code == 2
    assert "--trunc" in one_line(capsys.readouterr().err)
    assert not any((tmp_path / "out").glob("*.png"))


@pytest.mark.parametrize("seeds", ["0-4294967295", "0-999999,0-999999", "5-2000000"])
def test_huge_seed_range_is_refused_quickly(tmp_path, capsys, seeds):
    with bounded(seconds=3, memory_mb=100):
        code = cli_main(["generate", "--network", str(TINY32), "--seeds", seeds, "--outdir", str(tmp_path)])
    assert code == 2
    assert "seeds" in one_line(capsys.readouterr().err)


# ----------------------------------------------------------------------------------------------------------
# 9. A corrupt image read in a DataLoader worker.


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_corrupt_image_in_a_worker_names_the_file_first(tmp_path, as_zip):
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (folder / "ok.png").write_bytes(png_bytes())
    root = folder
    if as_zip:
        root = tmp_path / "data.zip"
        with zipfile.ZipFile(root, "w") as zf:
            zf.write(folder / "sub" / "bad.png", "sub/bad.png")
            zf.write(folder / "ok.png", "ok.png")
    ds = ImageDataset(root, resolution=8)
    assert ds.names == ["ok.png", "sub/bad.png"]
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, sampler=[1])
    start = time.time()
    with pytest.raises(UserError) as info:
        next(iter(loader))
    message = one_line(info.value)
    assert message.startswith(f"'sub/bad.png' in {root}: cannot read image")
    assert time.time() - start < 30


# -- round 2: resume checkpoints -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_ckpt(tmp_path_factory, shapes, tiny32) -> Path:
    root = tmp_path_factory.mktemp("finished")
    args = ["finetune", "--config", SMOKE, "--network", tiny32, "--data.path", str(shapes),
            "--trainer.default_root_dir", str(root)]  # fmt: skip
    assert cli_main(args) == 0
    return next(root.glob("lightning_logs/version_*/checkpoints/last.ckpt"))


def _crafted(tmp_path: Path, source: Path, change) -> Path:
    ckpt = torch.load(source, weights_only=True)
    change(ckpt)
    path = tmp_path / "crafted.ckpt"
    torch.save(ckpt, path)
    return path


def _bomb(depth: int = 30) -> list:
    node: list = []
    for _ in range(depth):
        node = [node, node]  # 2 ** depth leaves once expanded, a few hundred bytes pickled
    return node


def _set(path: str, value):
    def change(ckpt):
        *parents, leaf = path.split("/")
        target = ckpt
        for key in parents:
            target = target[int(key) if key.isdigit() else key]
        target[int(leaf) if leaf.isdigit() else leaf] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("hyper_parameters/loss", _bomb()), "once shared references are expanded"),
        (_set("loops", _bomb()), "once shared references are expanded"),
        (_set("hyper_parameters/optim/g_lr", "fast"), "model.optim.g_lr must be a finite number > 0"),
        (_set("hyper_parameters/reg", [1, 2]), "model.reg must be a mapping"),
        (_set("hyper_parameters/loss", {"name": "rooted", "k": "two"}), "k > 1"),
        (_set("state_dict/cur_nimg", torch.tensor(-5)), "counter cur_nimg"),
        (_set("state_dict/step_idx", torch.tensor(0.5)), "counter step_idx"),
        (_set("rootedgan_phase_counts", {"Gmain": -1}), "phase counts"),
        (_set("optimizer_states/0/state/0/exp_avg", torch.zeros(3)), "optimizer state exp_avg does not fit"),
        (_set("optimizer_states/1/state", {10**6: {}}), "optimizer state has an unknown entry"),
        (_set("optimizer_states", [{}]), "optimizer states are not G's and D's"),
        (_set("state_dict/G.mapping.fc0.weight", torch.zeros(2, 2)), "does not fit this config's networks"),
    ],
)
def test_crafted_resume_checkpoint_is_one_line(
    tmp_path, finished_ckpt, shapes, tiny32, capsys, change, message
):
    ckpt = _crafted(tmp_path, finished_ckpt, change)
    args = ["finetune", "--config", SMOKE, "--network", tiny32, "--data.path", str(shapes),
            "--trainer.default_root_dir", str(tmp_path / "r"), "--model.total_kimg", "0.08",
            "--ckpt_path", str(ckpt)]  # fmt: skip
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


# -- round 2: `rootedgan dataset` ------------------------------------------------------------------------


def test_dataset_into_a_folder_or_onto_a_full_disk_is_one_line(tmp_path, shapes, capsys, monkeypatch):
    folder = tmp_path / "out.zip"
    folder.mkdir()
    assert cli_main(["dataset", str(shapes), str(folder), "--resolution", "32"]) == 2
    assert "is a folder" in capsys.readouterr().err
    import errno
    import zipfile

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", full)
    dest = tmp_path / "data.zip"
    assert cli_main(["dataset", str(shapes), str(dest), "--resolution", "32"]) == 2
    lines = capsys.readouterr().err.splitlines()
    err = [line for line in lines if line.strip() and "%|" not in line]  # without the progress bar
    assert len(err) == 1 and "No space left on device); nothing was written" in err[0]
    assert not dest.exists() and not list(tmp_path.glob(".*.tmp"))


def test_dataset_prints_names_from_a_zip_escaped(tmp_path, shapes, capsys):
    import zipfile

    source = tmp_path / "src.zip"
    with zipfile.ZipFile(source, "w") as zf:
        for png in sorted(shapes.glob("*.png"))[:2]:
            zf.write(png, png.name)
        zf.writestr("evil\x1b]0;pwned\x07.png", b"not an image")
    assert cli_main(["dataset", str(source), str(tmp_path / "out.zip"), "--resolution", "32"]) == 0
    captured = capsys.readouterr()
    assert "\x1b" not in captured.out + captured.err and "\x07" not in captured.out + captured.err
    assert "evil\\x1b]0;pwned\\x07.png" in captured.out


# -- round 2: adapter settings ---------------------------------------------------------------------------


def _with_orthogonal(path: Path, change: dict) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = dict(f.metadata())
    metadata["orthogonal"] = json.dumps({**json.loads(metadata["orthogonal"]), **change})
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"neumann_terms": 10**9, "parameterization": "neumann"}, "neumann_terms must be an integer"),
        ({"layers": ["re:(a+)+$"]}, "can take exponential time"),
        ({"layers": ["re:(x)\\1"]}, "backreferences are not allowed"),
        ({"layers": "x" * 5000}, "1 to 256 characters"),
        ({"block_size": "16"}, "block_size must be an integer"),
        ({"eps": "small"}, "eps must be a finite number"),
        ({"shared": "yes"}, "shared must be true or false"),
    ],
)
def test_hostile_adapter_settings_are_refused_in_one_line(tmp_path, adapter_parts, change, message):
    ref = real_base(tmp_path)
    path = _with_orthogonal(write_adapter(adapter_parts, tmp_path / "run", **ref), change)
    with bounded(), pytest.raises(CheckpointError, match=message):
        load_network(path, base=tmp_path / "outside" / "base.pkl")


# -- round 2: statistics files, FID values, Inception identity ------------------------------------------


def _stats_file(tmp_path: Path, **arrays) -> Path:
    dim = 2048
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((16, dim)).astype(np.float32)
    base = {"mu": feats.mean(0).astype(np.float64), "sigma": np.cov(feats, rowvar=False), "feats": feats}
    path = tmp_path / "stats.npz"
    np.savez_compressed(path, **{**base, **arrays})
    return path


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"sigma": np.full((2048, 2048), np.nan)}, "NaN or infinite statistics"),
        ({"sigma": -np.eye(2048)}, "negative eigenvalues"),
        ({"sigma": np.triu(np.ones((2048, 2048)))}, "not symmetric"),
        ({"sigma": np.eye(16)}, "not Inception's"),
        ({"feats": np.zeros((1, 2048), np.float32)}, "KID features are"),
    ],
)
def test_broken_statistics_are_one_line_and_never_a_fid(tmp_path, capsys, arrays, message):
    from bench.standins import make_standin_inception

    standin = make_standin_inception(tmp_path / "inception.pt")
    stats = _stats_file(tmp_path, **arrays)
    argv = [
        "fid",
        "--data",
        str(stats),
        "--network",
        str(TINY32),
        "--metrics",
        "fid1k_full,kid1k_full",
        "--num-gen",
        "16",
        "--inception",
        str(standin),
        "--outdir",
        str(tmp_path / "out"),
        "--no-cache",
    ]
    with bounded(60, 2000):
        assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and not list((tmp_path / "out").glob("metric-*.jsonl"))


def test_a_statistics_decompression_bomb_is_refused_from_its_headers(tmp_path):
    from rootedgan.metrics import Evaluator

    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("sigma.npy", "w", force_zip64=True) as fh:  # 3 GiB of zeros, a few MB on disk
            np.lib.format.write_array_header_1_0(
                fh, {"descr": "<f8", "fortran_order": False, "shape": (3 << 27,)}
            )
            chunk = bytes(1 << 24)
            for _ in range(3 << 27 >> 21):
                fh.write(chunk)
    assert path.stat().st_size < 20 << 20
    with bounded(10, 200), pytest.raises(UserError, match="unpacks to 3.0 GiB"):
        Evaluator(announce=False).load_reference_file(path)


def test_non_finite_fid_is_an_error_and_records_nothing(tmp_path):
    from rootedgan.metrics import Evaluator
    from rootedgan.metrics.stats import GaussianStats

    good = GaussianStats(np.zeros(4), np.eye(4), 10)
    bad = GaussianStats(np.full(4, np.nan), np.eye(4), 10)
    with pytest.raises(UserError, match="FID came out nan"):
        Evaluator(announce=False).fid(good, bad)


def test_an_inception_file_planted_in_a_shared_folder_is_not_used(tmp_path, monkeypatch):
    from bench.standins import make_standin_inception
    from rootedgan.metrics import inception

    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    planted = make_standin_inception(shared / inception.INCEPTION_FILENAME)
    os.chown(planted, 65534, 65534)  # another user's file (the tests run as root in CI; skip otherwise)
    monkeypatch.setattr(inception, "CLEANFID_INCEPTION_PATH", planted)
    monkeypatch.setenv("ROOTEDGAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(inception.INCEPTION_ENV, raising=False)
    with pytest.raises(UserError, match="anyone can write to and belongs to user id 65534"):
        inception.locate_inception(download=False)


def test_a_stand_in_inception_says_loudly_its_fids_are_not_comparable(tmp_path):
    from bench.standins import make_standin_inception
    from rootedgan.metrics.inception import load_inception

    net = load_inception(make_standin_inception(tmp_path / "inception.pt"), download=False)
    assert "WARNING: NOT NVIDIA's Inception" in net.describe() and "not comparable" in net.label


# -- round 2: counts from input, non-finite images -------------------------------------------------------


def test_generate_refuses_a_network_that_makes_non_finite_images(tmp_path, capsys):
    from rootedgan.checkpoints import save_network

    nets = load_network(TINY32)
    with torch.no_grad():
        nets["G_ema"].synthesis.b32.torgb.weight.fill_(float("nan"))
    broken = save_network(tmp_path / "broken.safetensors", G_ema=nets["G_ema"])
    out = tmp_path / "out"
    assert cli_main(["generate", "--network", str(broken), "--seeds", "0-3", "--outdir", str(out)]) == 2
    assert "non-finite images" in capsys.readouterr().err and not list(out.glob("*.png"))


def test_counts_from_input_are_capped_with_an_option(tmp_path, capsys):
    num_ws = load_network(TINY32)["G_ema"].num_ws
    w = np.zeros((1001, num_ws, 64), np.float32)  # more projections than rendered by default
    np.savez(tmp_path / "projected_w.npz", w=w)
    argv = ["generate", "--network", str(TINY32), "--projected-w", str(tmp_path / "projected_w.npz"),
            "--outdir", str(tmp_path / "g")]  # fmt: skip
    with bounded(30, 500):
        assert cli_main(argv) == 2
    assert "at most 1000 are rendered (--max-images)" in capsys.readouterr().err
    rows = ["style-mixing", "--network", str(TINY32), "--rows", "0-99", "--cols", "0-99", "--outdir",
            str(tmp_path / "s")]  # fmt: skip
    assert cli_main(rows) == 2
    assert "more than --max-cells 1024" in capsys.readouterr().err
    project = ["project", "--network", str(TINY32), "--target", str(tmp_path / "none.png"), "--outdir",
               str(tmp_path / "p"), "--w-avg-samples", str(10**12)]  # fmt: skip
    assert cli_main(project) == 2
    assert "--w-avg-samples must be in [1, 1000000]" in capsys.readouterr().err
