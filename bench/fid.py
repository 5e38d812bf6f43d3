"""FID throughput: our generator path vs clean-fid's ``compute_fid(gen=...)``, and the fast path's error.

    python bench/fid.py [--device auto|cpu|cuda] [--preset tiny32|tiny32x256|paper256] [--network PATH]
                        [--num-gen N] [--batch N] [--workers N] [--inception PATH]
                        [--out bench/results/fid.json]

Both sides run the same generator (``G_ema`` of ``--network``, or a preset: ``tiny32`` is NVIDIA's
32x32 test fixture; ``tiny32x256`` its images enlarged to 256x256, to time the resize and Inception
work of 256 px images on a CPU; ``paper256`` NVIDIA's ``--cfg=paper256`` 256x256 network with random
weights) on ``--num-gen`` latents, images rounded to uint8, and the same Inception file
(``--inception``; without one a small stand-in torchscript with the same interface is written, so
the times of the Inception network itself are not NVIDIA's and the FID values mean nothing; the
resize, generation and bookkeeping costs are the real ones). Cases:

* ``cleanfid``: ``cleanfid.fid.get_model_features(gen, ...)``, the per-image work of ``compute_fid(gen=...)``
  (generation, PIL resize of each image in the calling thread, Inception), on ``--device``;
* ``clean``: ours, exact (clean-fid's resize in ``--workers`` threads, float64 statistics);
* ``nvidia``: ours, NVIDIA's protocol (clean-fid's ``legacy_tensorflow``, rootedgan's default: the Inception
  file resizes inside, nothing on the CPU);
* ``fast``: ours, resize on ``--device`` with torch's antialiased bicubic (and ``fast-bf16``: Inception
  in bf16; on a CPU only with ``--bf16-on-cpu``, for its deviation: bf16 is slow there).

Reported: images/s of each case (median of ``--repeats`` runs after a warm-up batch), the time of the
Frechet distance on 2048x2048 statistics (ours: eigendecompositions in float64; clean-fid:
``scipy.linalg.sqrtm``), a projected FID-50k time (50,000 / rate + distance), and the deviation of the
fast path from the exact one on the same images: largest feature difference relative to the largest
feature, and the relative FID difference against a reference set of ``--num-gen`` shape images.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import machine_info, usable_cores, write_json  # noqa: E402
from bench.standins import make_random_inception_v3, make_standin_inception  # noqa: E402
from rootedgan.metrics import Evaluator, FolderImages  # noqa: E402
from rootedgan.metrics._cleanfid_import import import_cleanfid  # noqa: E402
from rootedgan.metrics.features import to_uint8_nchw  # noqa: E402
from rootedgan.metrics.stats import FeatureStats, frechet_distance  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "fid.json"
FIXTURE = REPO / "tests" / "fixtures" / "nvidia" / "tiny32.pkl"


class Upsampled(torch.nn.Module):
    """A generator whose images are enlarged ``factor`` times (nearest): 256 px images at 32 px cost."""

    def __init__(self, G: torch.nn.Module, factor: int) -> None:
        super().__init__()
        self.G = G
        self.factor = factor
        self.z_dim, self.c_dim = G.z_dim, G.c_dim
        self.img_resolution, self.img_channels = G.img_resolution * factor, G.img_channels

    def forward(self, z: torch.Tensor, c: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.nn.functional.interpolate(
            self.G(z, c, **kwargs), scale_factor=self.factor, mode="nearest"
        )


def build_generator(preset: str, network: str | None, device: torch.device) -> torch.nn.Module:
    """``G_ema`` of a checkpoint, or a preset network with random weights."""
    if network is not None:
        from rootedgan.checkpoints import load_network

        nets = load_network(network)
        G = nets.get("G_ema") or nets.get("G")
    elif preset in ("tiny32", "tiny32x256"):
        from rootedgan.checkpoints import load_network

        G = load_network(str(FIXTURE))["G_ema"]
        if preset == "tiny32x256":
            G = Upsampled(G, 8)
    else:
        from rootedgan.networks import Generator

        torch.manual_seed(0)
        synthesis = {"channel_base": 16384, "channel_max": 512, "num_fp16_res": 4, "conv_clamp": 256}
        G = Generator(
            z_dim=512, w_dim=512, c_dim=0, img_resolution=256, img_channels=3,
            mapping_kwargs={"num_layers": 8}, synthesis_kwargs=synthesis,
        )  # fmt: skip
    return G.eval().requires_grad_(False).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Any, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--preset", choices=["tiny32", "tiny32x256", "paper256"], default=None, help="default: by device"
    )
    parser.add_argument("--network", default=None, help="a checkpoint instead of a preset")
    parser.add_argument(
        "--num-gen", type=int, default=None, help="images per timed run (default 512 CPU / 4096 GPU)"
    )
    parser.add_argument("--batch", type=int, default=None, help="batch (default 32 CPU / 128 GPU)")
    parser.add_argument("--workers", type=int, default=usable_cores(), help="resize threads for ours")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median)")
    parser.add_argument(
        "--inception",
        default=None,
        help="NVIDIA's inception-2015-12-05.pt; 'random-v3': Inception-v3 of the real architecture with "
        "random weights (torchvision; real timings, meaningless values); default: a small stand-in",
    )
    parser.add_argument(
        "--ref-images",
        type=int,
        default=None,
        help="shape images of the reference set for the FID values (default min(--num-gen, 1000))",
    )
    parser.add_argument("--bf16-on-cpu", action="store_true", help="also run fast-bf16 on the CPU (slow)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    gpu = device.type == "cuda"
    preset = args.preset or ("paper256" if gpu else "tiny32")
    num_gen = args.num_gen or (4096 if gpu else 512)
    batch = args.batch or (128 if gpu else 32)
    tmp = Path(tempfile.mkdtemp(prefix="rootedgan-bench-fid-"))
    standin = "stand-in (a small network, not Inception)"
    if args.inception == "random-v3":
        try:
            inception = make_random_inception_v3(tmp / "inception-2015-12-05.pt")
            standin = "Inception-v3 architecture with random weights (real timings, meaningless FIDs)"
        except ImportError as err:
            print(f"random-v3: torchvision not importable ({err}); using the small stand-in instead")
            inception = make_standin_inception(tmp / "inception-2015-12-05.pt")
    elif args.inception:
        inception, standin = Path(args.inception), None
    else:
        inception = make_standin_inception(tmp / "inception-2015-12-05.pt")

    cleanfid = import_cleanfid()
    from cleanfid.inception_torchscript import InceptionV3W

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if inception.name != "inception-2015-12-05.pt":  # InceptionV3W wants that name in a folder
            link = tmp / "inception-2015-12-05.pt"
            link.symlink_to(inception.resolve())
            inception = link
        cf_model = InceptionV3W(str(inception.parent), download=False).to(device).eval()
    G = build_generator(preset, args.network, device)
    print(f"{preset if args.network is None else args.network}: {G.img_resolution}px, {num_gen} images, "
          f"batch {batch}, {device}, Inception: {standin or inception}")  # fmt: skip

    def gen(z: torch.Tensor) -> torch.Tensor:
        img = G(z.to(device), torch.zeros([len(z), G.c_dim], device=device), noise_mode="const")
        return to_uint8_nchw(img).float()

    def run_cleanfid() -> None:
        with torch.no_grad():
            cleanfid.get_model_features(
                gen, cf_model, mode="clean", z_dim=G.z_dim, num_gen=num_gen, batch_size=batch,
                device=device, verbose=False,
            )  # fmt: skip

    evaluators = {
        "clean": Evaluator(
            inception=inception,
            device=device,
            mode="clean",
            batch_size=batch,
            num_workers=args.workers,
            progress=False,
            use_cache=False,
        ),  # fmt: skip
        "fast": Evaluator(
            inception=inception,
            device=device,
            mode="fast",
            batch_size=batch,
            num_workers=args.workers,
            progress=False,
            use_cache=False,
        ),  # fmt: skip
    }
    # NVIDIA's protocol (clean-fid's legacy_tensorflow, rootedgan's default): no CPU resize at all
    evaluators["nvidia"] = Evaluator(
        inception=inception, device=device, mode="legacy_tensorflow", batch_size=batch,
        num_workers=args.workers, progress=False, use_cache=False,
    )  # fmt: skip
    if gpu or args.bf16_on_cpu:
        evaluators["fast-bf16"] = Evaluator(
            inception=inception, device=device, mode="fast", dtype=torch.bfloat16, batch_size=batch,
            num_workers=args.workers, progress=False, use_cache=False,
        )  # fmt: skip

    def run_ours(ev: Evaluator, keep: bool = False) -> Any:
        stats = FeatureStats(keep_features=keep).to(device)
        ev.extractor.generator_stats(G, num_gen, stats, noise_mode="const")
        return stats.compute()

    # warm-up (cuDNN autotuning, thread pools, first-call costs)
    with torch.no_grad():
        gen(torch.randn(batch, G.z_dim))
    for ev in evaluators.values():
        ev.extractor.generator_stats(G, min(batch, num_gen), FeatureStats().to(device), noise_mode="const")

    rows: dict[str, Any] = {}
    seconds = timed(run_cleanfid, device, args.repeats)
    rows["cleanfid"] = {"images_per_s": num_gen / seconds, "seconds": seconds}
    for name, ev in evaluators.items():
        seconds = timed(lambda ev=ev: run_ours(ev), device, args.repeats)
        rows[name] = {"images_per_s": num_gen / seconds, "seconds": seconds}

    # the Frechet distance on 2048-d statistics: ours vs clean-fid's sqrtm
    exact = run_ours(evaluators["clean"], keep=True)
    ref_dir = tmp / "reference"
    from bench.synthetic_data import make_shapes_dataset

    make_shapes_dataset(ref_dir, count=args.ref_images or min(num_gen, 1000), resolution=G.img_resolution)
    ref = evaluators["clean"].images_stats(FolderImages(ref_dir))
    start = time.perf_counter()
    fid_exact = frechet_distance(exact.mu, exact.sigma, ref.mu, ref.sigma, device=device)
    ours_fd = time.perf_counter() - start
    start = time.perf_counter()
    cleanfid_error = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fid_cleanfid = float(cleanfid.frechet_distance(exact.mu, exact.sigma, ref.mu, ref.sigma))
        except ValueError as err:  # sqrtm's imaginary part too large: random-weight features are degenerate
            fid_cleanfid, cleanfid_error = float("nan"), f"clean-fid's formula failed: {err}"
    cleanfid_fd = time.perf_counter() - start
    distance = {
        "ours_seconds": ours_fd, "cleanfid_sqrtm_seconds": cleanfid_fd,
        "fid_ours": fid_exact, "fid_cleanfid_formula": fid_cleanfid, "cleanfid_error": cleanfid_error,
        "relative_difference": None if cleanfid_error else abs(fid_exact - fid_cleanfid) / abs(fid_cleanfid),
    }  # fmt: skip
    for name, row in rows.items():
        fd = cleanfid_fd if name == "cleanfid" else ours_fd
        row["projected_fid50k_seconds"] = 50_000 / row["images_per_s"] + fd

    # deviation of the fast path(s) from the exact one, on the same images (NVIDIA's protocol is another
    # resize, not an approximation of the clean one: timed only)
    deviation = {}
    for name in [n for n in evaluators if n not in ("clean", "nvidia")]:
        approx = run_ours(evaluators[name], keep=True)
        ref_fast = evaluators[name].images_stats(FolderImages(ref_dir))
        fid_fast = frechet_distance(approx.mu, approx.sigma, ref_fast.mu, ref_fast.sigma, device=device)
        diff = np.abs(approx.features - exact.features)
        deviation[name] = {
            "max_feature_error_rel": float(diff.max() / np.abs(exact.features).max()),
            "mean_feature_error_rel": float(diff.mean() / np.abs(exact.features).mean()),
            "fid_exact": fid_exact,
            "fid_fast": fid_fast,
            "fid_relative_difference": abs(fid_fast - fid_exact) / fid_exact,
        }

    for name, row in rows.items():
        speedup = row["images_per_s"] / rows["cleanfid"]["images_per_s"]
        print(f"{name:10s} {row['images_per_s']:9.1f} img/s  x{speedup:5.2f} vs clean-fid   "
              f"projected FID-50k {row['projected_fid50k_seconds'] / 60:7.1f} min")  # fmt: skip
    agree = cleanfid_error or f"values differ by {distance['relative_difference']:.1e} relative"
    print(f"Frechet distance on 2048-d: ours {ours_fd:.2f} s, clean-fid sqrtm {cleanfid_fd:.2f} s ({agree})")
    for name, dev in deviation.items():
        print(f"{name}: features max rel error {dev['max_feature_error_rel']:.1e}, "
              f"FID {dev['fid_fast']:.6g} vs exact {dev['fid_exact']:.6g} "
              f"(rel {dev['fid_relative_difference']:.1e})")  # fmt: skip
    write_json(
        args.out,
        {
            "machine": machine_info(),
            "setup": {
                "generator": args.network or preset,
                "resolution": G.img_resolution,
                "num_gen": num_gen,
                "batch": batch,
                "workers": args.workers,
                "device": str(device),
                "inception": standin or str(inception),
            },  # fmt: skip
            "throughput": rows,
            "frechet_distance": distance,
            "fast_path_deviation": deviation,
            "gpu": None if gpu else "not measured: no GPU on this machine",
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
