"""Downloading networks into the cache: progress, cache hits, resume, checksums, and offline errors."""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
from pathlib import Path

import pytest

from rootedgan.checkpoints import download as dl
from rootedgan.checkpoints import load_network, resolve_source
from rootedgan.errors import DownloadError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
FIXTURES = Path(__file__).resolve().parent / "fixtures"


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    requests: list[tuple[str, str | None]] = []
    support_range = True
    cut_next: int | None = None  # send only this many bytes of the next body, then hang up

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        type(self).requests.append((self.path, rng))
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        if rng and self.support_range:
            match = re.match(r"bytes=(\d+)-$", rng)
            start = int(match.group(1)) if match else 0
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = type(self).cut_next
        if cut is not None:
            type(self).cut_next = None
            body = body[:cut]
            self.close_connection = True
        self.wfile.write(body)


@pytest.fixture
def server():
    attrs = {"files": {}, "requests": [], "support_range": True, "cut_next": None}
    handler = type("Handler", (_Handler,), attrs)
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
    return root / "networks"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cache_location(cache, monkeypatch):
    assert dl.cache_dir() == cache
    url = "https://host/a/b/net%20work.pkl?x=1"
    # keyed by the full URL: <cache>/<hash of the URL>/<its file name>
    assert dl.cache_path(url) == cache / hashlib.sha256(url.encode()).hexdigest()[:16] / "net_work.pkl"
    assert dl.cache_path(url) != dl.cache_path("https://host/a/c/net%20work.pkl?x=1")
    monkeypatch.delenv(dl.CACHE_ENV)
    assert dl.cache_dir() == Path("~/.cache/rootedgan/networks").expanduser()


def test_download_and_cache_hit(server, cache):
    handler, base = server
    handler.files["/nets/a.pkl"] = PAYLOAD
    url = f"{base}/nets/a.pkl"
    path = dl.download(url, sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    assert path == dl.cache_path(url) and path.name == "a.pkl" and path.read_bytes() == PAYLOAD
    assert not path.with_name("a.pkl.part").exists()
    assert len(handler.requests) == 1
    assert dl.download(url, progress=False) == path  # cached: no request
    assert len(handler.requests) == 1


def test_cached_file_needs_no_network(cache):
    url = f"http://127.0.0.1:{closed_port()}/x.pkl"
    dl.cache_path(url).parent.mkdir(parents=True)
    dl.cache_path(url).write_bytes(b"cached")
    assert dl.download(url, progress=False).read_bytes() == b"cached"


def test_resume_partial_download(server, cache):
    handler, base = server
    handler.files["/b.pkl"] = PAYLOAD
    part = dl.cache_path(f"{base}/b.pkl").with_name("b.pkl.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:300_000])
    path = dl.download(f"{base}/b.pkl", sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    assert path.read_bytes() == PAYLOAD
    assert handler.requests == [("/b.pkl", "bytes=300000-")]


def test_interrupted_transfer_then_resume(server, cache):
    handler, base = server
    handler.files["/i.pkl"] = PAYLOAD
    handler.cut_next = 400_000
    url = f"{base}/i.pkl"
    with pytest.raises(DownloadError, match="run again to resume") as info:
        dl.download(url, progress=False)
    dest = dl.cache_path(url)
    assert str(dest) in str(info.value)
    assert dest.with_name("i.pkl.part").stat().st_size == 400_000 and not dest.exists()
    assert (
        dl.download(url, sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False).read_bytes() == PAYLOAD
    )
    assert handler.requests[-1] == ("/i.pkl", "bytes=400000-")


def test_partial_restarts_when_server_ignores_range(server, cache):
    handler, base = server
    handler.support_range = False
    handler.files["/c.pkl"] = PAYLOAD
    part = dl.cache_path(f"{base}/c.pkl").with_name("c.pkl.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage" * 10)
    assert dl.download(f"{base}/c.pkl", progress=False).read_bytes() == PAYLOAD


def test_oversized_partial_restarts(server, cache):
    handler, base = server
    handler.files["/d.pkl"] = PAYLOAD[:1000]
    part = dl.cache_path(f"{base}/d.pkl").with_name("d.pkl.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 5000)  # longer than the file: 416, start over
    assert dl.download(f"{base}/d.pkl", progress=False).read_bytes() == PAYLOAD[:1000]


def test_checksum_mismatch(server, cache):
    handler, base = server
    handler.files["/e.pkl"] = PAYLOAD
    url = f"{base}/e.pkl"
    with pytest.raises(DownloadError, match="checksum mismatch") as info:
        dl.download(url, sha256="0" * 64, progress=False)
    dest = dl.cache_path(url)
    assert str(dest) in str(info.value)
    assert not dest.exists() and not dest.with_name("e.pkl.part").exists()


def test_http_error(server, cache):
    _, base = server
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        dl.download(f"{base}/missing.pkl", progress=False)
    assert f"{base}/missing.pkl" in str(info.value)
    assert str(dl.cache_path(f"{base}/missing.pkl")) in str(info.value)


def test_unreachable_url(cache):
    url = f"http://127.0.0.1:{closed_port()}/x.pkl"
    with pytest.raises(DownloadError) as info:
        dl.download(url, progress=False)
    msg = str(info.value)
    assert url in msg and str(dl.cache_path(url)) in msg and "place it at" in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no urllib trace attached


def test_unresolvable_host(cache, monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)  # DNS failure, deterministic and instant
    url = "http://no-such-host.invalid/net.pkl"
    with pytest.raises(DownloadError, match="Name or service not known") as info:
        dl.download(url, progress=False, timeout=5)
    assert url in str(info.value) and str(dl.cache_path(url)) in str(info.value)


def test_file_url(tmp_path, cache):
    src = tmp_path / "local.pkl"
    src.write_bytes(PAYLOAD[:1234])
    path = dl.download(src.as_uri(), progress=False)
    assert path == dl.cache_path(src.as_uri()) and path.read_bytes() == PAYLOAD[:1234]


def test_shortcut_names():
    known = dl.NVIDIA_NETWORKS["ffhq256"]
    assert known.url.endswith("transfer-learning-source-nets/ffhq-res256-mirror-paper256-noaug.pkl")
    assert known.url.startswith("https://")
    assert dl.resolve("ffhq256") is known
    assert dl.resolve("not-a-name") is None
    with pytest.raises(DownloadError, match="known network name"):
        dl.fetch("not-a-name")


def test_shortcut_name_offline_error_names_cache_path(cache, monkeypatch):
    port = closed_port()
    monkeypatch.setitem(dl.NVIDIA_NETWORKS, "tinytest", dl.KnownNetwork(f"http://127.0.0.1:{port}/tiny.pkl"))
    with pytest.raises(DownloadError) as info:
        resolve_source("tinytest", progress=False)
    assert str(dl.cache_path(f"http://127.0.0.1:{port}/tiny.pkl")) in str(info.value)


def test_load_network_from_url(server, cache):
    pkl = FIXTURES / "nvidia" / "tiny32.pkl"
    if not pkl.exists():
        pytest.skip("NVIDIA fixture not found")
    try:
        import rootedgan.networks  # noqa: F401
    except ImportError:
        pytest.skip("rootedgan.networks is not there yet")
    handler, base = server
    handler.files["/tiny32.pkl"] = pkl.read_bytes()
    url = f"{base}/tiny32.pkl"
    out = load_network(url)
    assert out["meta"]["source"] == url and out["meta"]["local_path"] == str(dl.cache_path(url))
    assert out["G_ema"] is not None
