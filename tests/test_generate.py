"""`rootedgan generate`: NVIDIA's seed convention and PNG rule, grids, and bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rootedgan.cli import main as cli_main
from rootedgan.imaging import make_grid, parse_grid
from rootedgan.sampling import parse_seeds, seed_latents


def nvidia_png(img: np.ndarray) -> np.ndarray:
    """NVIDIA's rule for one [C, H, W] image in [-1, 1]: (img * 127.5 + 128).clamp(0, 255) -> uint8 HWC."""
    return np.clip(img * 127.5 + 128, 0, 255).astype(np.uint8).transpose(1, 2, 0)


@pytest.mark.parametrize("trunc,key", [(1.0, "G_ema_img_psi1"), (0.7, "G_ema_img_psi07")])
def test_seed_123_reproduces_nvidia_reference_image(tmp_path, nvidia_fixture_dir, trunc, key):
    """The reference z is RandomState(123).randn(4, 64): its first row is seed 123's latent."""
    ref = np.load(nvidia_fixture_dir / "tiny32.ref.npz")
    np.testing.assert_array_equal(seed_latents([123], 64)[0], ref["z"][0].astype(np.float32))
    code = cli_main(
        ["generate", "--network", str(nvidia_fixture_dir / "tiny32.pkl"), "--seeds", "123",
         "--trunc", str(trunc), "--outdir", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    got = np.asarray(Image.open(tmp_path / "seed0123.png"))
    expected = nvidia_png(ref[key][0])
    assert got.shape == (32, 32, 3)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # at most a rounding step
    assert (got == expected).mean() > 0.99


def test_grid_has_the_right_size_and_tiles(tmp_path, nvidia_fixture_dir):
    code = cli_main(
        ["generate", "--network", str(nvidia_fixture_dir / "tiny32.pkl"), "--seeds", "0-5",
         "--grid", "2x3", "--outdir", str(tmp_path / "g"), "--batch", "4"]
    )  # fmt: skip
    assert code == 0
    grid = np.asarray(Image.open(tmp_path / "g" / "grid.png"))
    assert grid.shape == (2 * 32, 3 * 32, 3)
    cli_main(["generate", "--network", str(nvidia_fixture_dir / "tiny32.pkl"), "--seeds", "4",
              "--outdir", str(tmp_path / "single")])  # fmt: skip
    single = np.asarray(Image.open(tmp_path / "single" / "seed0004.png"))
    np.testing.assert_array_equal(grid[32:64, 32:64], single)  # seed 4 is row 1, column 1


def test_seed_parsing_and_grid_helpers():
    assert parse_seeds("0-3,10, 7") == [0, 1, 2, 3, 10, 7]
    assert parse_grid("auto", 10) == (2, 5)
    assert parse_grid("auto", 32) == (4, 8)
    assert parse_grid("auto", 16) == (4, 4)
    assert parse_grid("auto", 7) == (3, 3)  # prime: partial last row
    assert parse_grid("2x5", 10) == (2, 5)
    tiles = np.arange(2 * 2 * 2 * 1).reshape(2, 2, 2, 1).astype(np.uint8)
    assert make_grid(tiles, 1, 3).shape == (2, 6, 1)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--seeds", "a-b"], "cannot parse seeds"),
        (["--seeds", "0-3", "--grid", "3"], "--grid"),
        (["--seeds", "0", "--class", "2"], "unconditional"),
        pytest.param(
            ["--seeds", "0", "--device", "cuda:0"],
            "CUDA",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message"),
        ),  # fmt: skip
    ],
)
def test_generate_bad_arguments(tmp_path, nvidia_fixture_dir, capsys, args, message):
    code = cli_main(
        ["generate", "--network", str(nvidia_fixture_dir / "tiny32.pkl"), "--outdir", str(tmp_path), *args]
    )
    assert code == 2
    assert message in capsys.readouterr().err


def test_generate_unwritable_outdir(tmp_path, nvidia_fixture_dir, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = cli_main(["generate", "--network", str(nvidia_fixture_dir / "tiny32.pkl"), "--seeds", "0",
                     "--outdir", str(blocker / "sub")])  # fmt: skip
    assert code == 2
    assert "cannot write to output directory" in capsys.readouterr().err
