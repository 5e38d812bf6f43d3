"""Fetch network files by URL (or NVIDIA shortcut name) into the cache laid out in :func:`cache_path` (README,
"Security"): a download goes to ``NAME.part``, resumes with an HTTP ``Range`` request and is renamed when
complete; a failure is a :class:`~rootedgan.errors.DownloadError` naming the path to place the file at."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

from rootedgan.errors import DownloadError

CACHE_ENV = "ROOTEDGAN_CACHE"
DEFAULT_CACHE = "~/.cache/rootedgan"
_CHUNK = 1 << 20
_URL_RX = re.compile(r"^(https?|file)://", re.IGNORECASE)

_ADA = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained"
_TL = f"{_ADA}/transfer-learning-source-nets"
_SG2 = "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/versions/1/files"


class KnownNetwork(NamedTuple):
    """A public NVIDIA network: where it lives and (when known) its sha256."""

    url: str
    sha256: str | None = None
    description: str = ""


# Shortcut names -> NVIDIA's public StyleGAN2(-ADA) PyTorch pickles. No public source we found states NVIDIA's
# sha256 for them (nor for vgg16.pt / the Inception file): a download is checked for completeness only (its
# length against Content-Length); see docs/tools.md, "Download checksums".
NVIDIA_NETWORKS: dict[str, KnownNetwork] = {
    name: KnownNetwork(url, None, description)
    for name, url, description in [
        ("ffhq256", f"{_TL}/ffhq-res256-mirror-paper256-noaug.pkl", "FFHQ 256, paper256 config"),
        ("ffhq512", f"{_TL}/ffhq-res512-mirror-stylegan2-noaug.pkl", "FFHQ 512, config F"),
        ("ffhq1024", f"{_TL}/ffhq-res1024-mirror-stylegan2-noaug.pkl", "FFHQ 1024, config F"),
        (
            "celebahq256",
            f"{_TL}/celebahq-res256-mirror-paper256-kimg100000-ada-target0.5.pkl",
            "CelebA-HQ 256",
        ),
        ("lsundog256", f"{_TL}/lsundog-res256-paper256-kimg100000-noaug.pkl", "LSUN Dog 256"),
        ("ffhq", f"{_ADA}/ffhq.pkl", "FFHQ 1024 trained with ADA"),
        ("metfaces", f"{_ADA}/metfaces.pkl", "MetFaces 1024 (ADA, from FFHQ)"),
        ("afhqcat", f"{_ADA}/afhqcat.pkl", "AFHQ Cat 512 (ADA)"),
        ("afhqdog", f"{_ADA}/afhqdog.pkl", "AFHQ Dog 512 (ADA)"),
        ("afhqwild", f"{_ADA}/afhqwild.pkl", "AFHQ Wild 512 (ADA)"),
        ("brecahad", f"{_ADA}/brecahad.pkl", "BreCaHAD 512 (ADA)"),
        ("cifar10", f"{_ADA}/cifar10.pkl", "CIFAR-10 32, conditional (ADA)"),
        ("stylegan2-ffhq-256", f"{_SG2}/stylegan2-ffhq-256x256.pkl", "StyleGAN2 FFHQ 256"),
        ("stylegan2-ffhq-512", f"{_SG2}/stylegan2-ffhq-512x512.pkl", "StyleGAN2 FFHQ 512"),
        ("stylegan2-ffhq-1024", f"{_SG2}/stylegan2-ffhq-1024x1024.pkl", "StyleGAN2 FFHQ 1024"),
        ("stylegan2-metfaces-1024", f"{_SG2}/stylegan2-metfaces-1024x1024.pkl", "StyleGAN2 MetFaces 1024"),
        ("stylegan2-afhqv2-512", f"{_SG2}/stylegan2-afhqv2-512x512.pkl", "StyleGAN2 AFHQv2 512"),
        ("stylegan2-celebahq-256", f"{_SG2}/stylegan2-celebahq-256x256.pkl", "StyleGAN2 CelebA-HQ 256"),
        ("stylegan2-lsundog-256", f"{_SG2}/stylegan2-lsundog-256x256.pkl", "StyleGAN2 LSUN Dog"),
    ]
}


# NVIDIA's FID Inception torchscript (rootedgan.metrics.inception downloads it; its docs name its place).
_INCEPTION_URL = f"{_ADA}/metrics/inception-2015-12-05.pt"
# NVIDIA's VGG16 LPIPS torchscript (the distance of `rootedgan project`, rootedgan.tools.projector).
VGG16_URL = f"{_ADA}/metrics/vgg16.pt"


def _fixed_names() -> dict[str, str]:
    """Known public URLs -> their plain cache name (the shortcut networks, the Inception and VGG16 files)."""
    urls = [_INCEPTION_URL, VGG16_URL, *(known.url for known in NVIDIA_NETWORKS.values())]
    return {url: url_file_name(url) for url in urls if url_file_name(url)}


def is_url(text: str | os.PathLike[str]) -> bool:
    """Whether ``text`` is an http(s):// or file:// URL."""
    return isinstance(text, str) and bool(_URL_RX.match(text))


def cache_dir() -> Path:
    """The folder downloaded networks are kept in: ``$ROOTEDGAN_CACHE/networks`` (default under ~/.cache)."""
    root = os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return Path(root).expanduser() / "networks"


def url_file_name(url: str) -> str:
    """The file name of ``url``'s path, made safe for any file system (``''`` when it has none)."""
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")


def cache_path(url: str, cache: str | os.PathLike[str] | None = None) -> Path:
    """Where ``url`` is (or will be) cached: ``<cache>/<hash of the URL>/<the URL's file name>``, or
    ``<cache>/<file name>`` for NVIDIA's known public URLs (module docstring)."""
    root = Path(cache).expanduser() if cache is not None else cache_dir()
    fixed = _fixed_names().get(url)
    if fixed is not None:
        return root / fixed
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]  # the full URL's hash: its cache folder
    return root / key / (url_file_name(url) or f"network-{key}")


def resolve(name_or_url: str) -> KnownNetwork | None:
    """The known network for a shortcut name (``ffhq256``, ...) or URL, else None."""
    if name_or_url in NVIDIA_NETWORKS:
        return NVIDIA_NETWORKS[name_or_url]
    if not is_url(name_or_url):
        return None
    return next((k for k in NVIDIA_NETWORKS.values() if k.url == name_or_url), KnownNetwork(name_or_url))


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file (streamed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _error(url: str, dest: Path, reason: str) -> DownloadError:
    return DownloadError(
        f"could not download {url}: {reason}. If this machine is offline, fetch the file elsewhere and "
        f"place it at {dest} (the network cache; set {CACHE_ENV} to move it), then run again."
    )


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(reason, socket.gaierror):
        return f"the host name does not resolve (offline? {reason.strerror or reason})"
    if isinstance(reason, ConnectionError | TimeoutError | socket.timeout):
        return f"cannot connect ({reason.strerror or reason})" if isinstance(reason, OSError) else str(reason)
    if isinstance(reason, OSError):
        return reason.strerror or str(reason)
    return f"{type(err).__name__}: {err}" if reason is err else str(reason)


def _open(url: str, offset: int, timeout: float) -> tuple[Any, int]:
    """Open ``url`` asking for bytes from ``offset``; returns (response, offset the body starts at)."""
    headers = {"User-Agent": "rootedgan"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # range not satisfiable: start over
            err.close()
            return _open(url, 0, timeout)
        raise
    status = getattr(resp, "status", None) or 200
    if offset and status == 206:
        match = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == offset:
            return resp, offset
        resp.close()
        return _open(url, 0, timeout)  # an unexpected range: start over
    return resp, 0


def download(
    url: str,
    sha256: str | None = None,
    cache: str | os.PathLike[str] | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download ``url`` into the cache unless it is there (module docstring) and return the cached path; a
    ``sha256`` mismatch deletes the download, or is an error for a file already cached."""
    from filelock import FileLock

    dest = cache_path(url, cache)
    if dest.is_file():
        _check_cached(url, dest, sha256)
        return dest
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() == "file":
        local = Path(urllib.request.url2pathname(parts.path))
        if local.exists() and not local.is_file():
            raise _error(url, dest, f"{local} is not a regular file (a folder, FIFO, device or socket)")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _error(
            url, dest, f"cannot create the cache folder {dest.parent} ({err.strerror or err})"
        ) from None
    part = dest.with_name(dest.name + ".part")
    lock = FileLock(str(dest.with_name(dest.name + ".lock")))
    try:
        lock.acquire()
    except OSError as err:
        raise _error(url, dest, f"cannot write in the cache folder {dest.parent} ({err})") from None
    try:
        if dest.is_file():  # another process finished it while we waited
            _check_cached(url, dest, sha256)
            return dest
        _transfer(url, dest, part, sha256, progress, timeout)
    finally:
        lock.release()
    return dest


def _sha256_mismatch(path: Path, sha256: str | None) -> str | None:
    """The file's sha256 when it differs from the expected one (None when it matches or none is known)."""
    got = sha256_of(path) if sha256 is not None else None
    return got if got is not None and got.lower() != sha256.lower() else None


def _check_cached(url: str, dest: Path, sha256: str | None) -> None:
    """A cached file must match the known checksum; it is left alone (it may have been placed by hand)."""
    got = _sha256_mismatch(dest, sha256)
    if got is not None:
        raise DownloadError(
            f"the cached file {dest} for {url} has sha256 {got}, expected {sha256}: delete it to download "
            "it again (or place the right file there)"
        )


def _transfer(url: str, dest: Path, part: Path, sha256: str | None, progress: bool, timeout: float) -> None:
    """Fetch ``url`` into ``part`` (resuming it), check it, and rename it to ``dest``."""
    from tqdm.auto import tqdm

    offset = part.stat().st_size if part.is_file() else 0
    try:
        resp, offset = _open(url, offset, timeout)
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as err:
        raise _error(url, dest, _reason(err)) from None
    with contextlib.closing(resp):
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        try:
            f = open(part, "ab" if offset else "wb")
        except OSError as err:
            raise _error(url, dest, f"cannot write {part} ({err.strerror or err})") from None
        bar_args = dict(unit="B", unit_scale=True, unit_divisor=1024, disable=not progress, leave=False)
        try:
            with f, tqdm(total=total, initial=offset, desc=dest.name, **bar_args) as bar:
                while block := resp.read(_CHUNK):
                    f.write(block)
                    bar.update(len(block))
        except (OSError, http.client.HTTPException) as err:
            raise _error(
                url, dest, f"the transfer was interrupted ({_reason(err)}); run again to resume from {part}"
            ) from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise _error(url, dest, f"the transfer ended after {size} of {total} bytes; run again to resume")
    got = _sha256_mismatch(part, sha256)
    if got is not None:
        part.unlink(missing_ok=True)
        raise _error(url, dest, f"checksum mismatch (sha256 {got}, expected {sha256}); the file was deleted")
    os.replace(part, dest)


def fetch(name_or_url: str, cache: str | os.PathLike[str] | None = None, progress: bool = True) -> Path:
    """Download a shortcut name or URL (with its known checksum) and return the cached path."""
    known = resolve(name_or_url)
    if known is None:
        names = ", ".join(sorted(NVIDIA_NETWORKS))
        raise DownloadError(f"{name_or_url!r} is neither a URL nor a known network name ({names})")
    return download(known.url, known.sha256, cache=cache, progress=progress)
