"""Seeds, latents, labels, devices and images of a generator as NVIDIA's tools define them: the library side
of ``generate``, ``style-mixing``, ``project``, ``fid`` and the snapshot grids. Seed ``s`` is
``numpy.random.RandomState(s).randn(1, z_dim)``, as in NVIDIA's ``generate.py``, so a seed gives the same
image as NVIDIA's tools on the same network.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from rootedgan.checkpoints import load_network
from rootedgan.errors import UserError
from rootedgan.imaging import make_grid, to_uint8
from stylegan_ops._impl import requested_impl


def derive_seed(seed: int, stream: int = 0, index: int = 0) -> int:
    """The one seed formula: the seed of item ``index`` of ``stream`` under the user's ``seed`` (training
    steps on a rank, evaluation chunks, data epochs, landscape steps), distinct for every triple in
    practice."""
    return (int(seed) * 1_000_003 + int(stream) * 7_919 + int(index)) % (2**63 - 1)


MAX_SEEDS = 1_000_000  # one run writes at most this many images (latents are made batch by batch)


def parse_seeds(spec: str, max_count: int = MAX_SEEDS) -> list[int]:
    """``'0-3,10'`` -> ``[0, 1, 2, 3, 10]`` (ranges inclusive, order kept); at most ``max_count`` seeds,
    each in ``[0, 2**32)`` (NVIDIA's RandomState seeds). Counted before any list is made."""
    ranges: list[range] = []
    total = 0
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi if sep else lo)
            if last < first:
                raise ValueError
        except ValueError:
            raise UserError(f"cannot parse seeds {spec!r}: use numbers and ranges like 0-63,100") from None
        if first < 0 or last >= 2**32:
            raise UserError(f"seeds must be in [0, 2**32), got {part!r}")
        total += last - first + 1
        if total > max_count:
            raise UserError(
                f"--seeds {spec!r} asks for more than {max_count} images; split it into several runs"
            )
        ranges.append(range(first, last + 1))
    if not ranges:
        raise UserError("no seeds given")
    return [seed for r in ranges for seed in r]


def check_ops_setting() -> None:
    """A bad ``STYLEGAN_OPS_IMPL`` is a one-line error before any work (not at the first forward pass)."""
    requested_impl()  # raises stylegan_ops' ImplSettingError, which the CLI prints as one line


def check_truncation(psi: float, cutoff: int | None = None) -> None:
    """One-line errors for a truncation psi that is not a finite number or a negative cutoff."""
    if isinstance(psi, bool) or not isinstance(psi, int | float) or not math.isfinite(psi):
        raise UserError(f"--trunc must be a finite number, got {psi!r}")
    if cutoff is not None and cutoff < 0:
        raise UserError(f"--trunc-cutoff must be >= 0, got {cutoff}")


def seed_latents(seeds: Sequence[int], z_dim: int) -> np.ndarray:
    """``[len(seeds), z_dim]`` float32 latents, one ``RandomState(seed).randn(1, z_dim)`` per seed."""
    return np.concatenate([np.random.RandomState(s).randn(1, z_dim) for s in seeds]).astype(np.float32)


def class_labels(c_dim: int, class_idx: int | None, count: int) -> torch.Tensor:
    """One-hot ``[count, c_dim]`` labels (``[count, 0]`` for unconditional networks)."""
    if c_dim == 0:
        if class_idx is not None:
            raise UserError("--class was given but the network is unconditional")
        return torch.zeros([count, 0])
    if class_idx is None:
        raise UserError(f"the network is conditional ({c_dim} classes): pass --class N")
    if not 0 <= class_idx < c_dim:
        raise UserError(f"--class must be in [0, {c_dim}), got {class_idx}")
    c = torch.zeros([count, c_dim])
    c[:, class_idx] = 1
    return c


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


def load_generator(
    network: str | os.PathLike[str], which: str = "G_ema", base: str | os.PathLike[str] | None = None
) -> torch.nn.Module:
    """Generator ``which`` of a checkpoint (:func:`rootedgan.checkpoints.load_network`, ``base`` for an
    adapter), else its G_ema or G; a :class:`UserError` when it holds none."""
    nets = load_network(network, base=base)
    G = nets.get(which) or nets.get("G_ema") or nets.get("G")
    if G is None:
        raise UserError(f"{network} holds no generator")
    return G


@torch.no_grad()
def finite_images(img: torch.Tensor, written: int) -> torch.Tensor:
    """``img``, or a one-line error when it holds NaN or infinite values (a black PNG would hide it)."""
    if not torch.isfinite(img).all():
        raise UserError(
            f"the network makes non-finite images (its weights are broken, e.g. a diverged run's); "
            f"{written} images were written before this batch, none from it"
        )
    return img


def generate_images(
    G: torch.nn.Module,
    seeds: Sequence[int],
    truncation_psi: float = 1.0,
    truncation_cutoff: int | None = None,
    class_idx: int | None = None,
    noise_mode: str = "const",
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(seed, [H, W, C] uint8 image)`` for each seed, in order, computed in batches."""
    check_truncation(truncation_psi, truncation_cutoff)
    G = G.eval().to(device)
    with tqdm(total=len(seeds), desc="generate", unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(seeds), batch_size):
            z = torch.from_numpy(seed_latents(seeds[start : start + batch_size], G.z_dim)).to(device)
            c = class_labels(G.c_dim, class_idx, len(z)).to(device)
            img = finite_images(G(z, c, truncation_psi, truncation_cutoff, noise_mode=noise_mode), start)
            yield from zip(seeds[start : start + batch_size], to_uint8(img), strict=True)
            bar.update(len(z))


@torch.no_grad()
def synthesize_ws(
    G: torch.nn.Module,
    ws: torch.Tensor,
    noise_mode: str = "const",
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> Iterator[np.ndarray]:
    """``[H, W, C]`` uint8 images of ``G.synthesis`` for ``ws [N, num_ws, w_dim]``, in batches."""
    G = G.eval().to(device)
    for start in range(0, len(ws), batch_size):
        img = G.synthesis(ws[start : start + batch_size].to(device), noise_mode=noise_mode)
        yield from to_uint8(finite_images(img, start))


def parse_layers(spec: str, num_ws: int) -> list[int]:
    """``'0-6'`` / ``'0,1,8-13'`` -> layer indices, each in ``[0, num_ws)``."""
    try:
        layers = parse_seeds(spec)
    except UserError:
        raise UserError(f"cannot parse --styles {spec!r}: use layer numbers and ranges like 0-6") from None
    bad = [i for i in layers if not 0 <= i < num_ws]
    if bad:
        raise UserError(f"--styles {spec!r}: the network has layers 0-{num_ws - 1}, not {bad}")
    return sorted(set(layers))


@torch.no_grad()
def style_mixing_grid(
    G: torch.nn.Module,
    row_seeds: list[int],
    col_seeds: list[int],
    styles: list[int],
    truncation_psi: float = 1.0,
    noise_mode: str = "const",
    class_idx: int | None = None,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, dict[tuple[int, int], np.ndarray]]:
    """NVIDIA's style-mixing figure: ``(figure [H', W', C] uint8, {(row_seed, col_seed) or (seed, -1) /
    (-1, seed): image})``; cell (r, c) is row r's ``w`` with the ``styles`` layers of column c's."""
    G = G.eval().to(device)
    seeds = list(dict.fromkeys(row_seeds + col_seeds))
    z = torch.from_numpy(seed_latents(seeds, G.z_dim)).to(device)
    c = class_labels(G.c_dim, class_idx, len(seeds)).to(device)
    ws = G.mapping(z, c, truncation_psi=truncation_psi)
    w_of = dict(zip(seeds, ws, strict=True))

    def render(w: torch.Tensor) -> np.ndarray:
        return to_uint8(G.synthesis(w[None], noise_mode=noise_mode))[0]

    images = {(-1, s): render(w_of[s]) for s in col_seeds}
    for r in row_seeds:
        images[(r, -1)] = render(w_of[r])
        for s in col_seeds:
            w = w_of[r].clone()
            w[styles] = w_of[s][styles]
            images[(r, s)] = render(w)
    blank = np.zeros_like(images[(-1, col_seeds[0])])  # the top-left corner
    cells = [images.get((r, s), blank) for r in [-1, *row_seeds] for s in [-1, *col_seeds]]
    figure = make_grid(np.stack(cells), len(row_seeds) + 1, len(col_seeds) + 1)
    return figure, images
