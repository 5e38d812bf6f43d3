"""Tools NVIDIA users reach for: `rootedgan dataset` (a training zip in NVIDIA's layout) and
`rootedgan style-mixing` (NVIDIA's style-mixing figure)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from rootedgan.checkpoints import load_network
from rootedgan.cli import main as cli_main
from rootedgan.data import ImageDataset
from rootedgan.sampling import generate_images, seed_latents, style_mixing_grid


@pytest.fixture
def image_folder(tmp_path):
    src = tmp_path / "src"
    rng = np.random.RandomState(0)
    names = []
    for i, size in enumerate([(40, 40), (60, 40), (40, 72), (16, 16)]):
        arr = rng.randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        name = f"sub/im{i}.png"
        (src / "sub").mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(src / name)
        names.append(name)
    (src / "sub" / "broken.png").write_bytes(b"\x89PNG not really")
    labels = [[n, i % 3] for i, n in enumerate(names)] + [["sub/broken.png", 0]]
    (src / "dataset.json").write_text(json.dumps({"labels": labels}))
    return src


def test_dataset_writes_nvidias_layout_with_the_finetune_rules(image_folder, tmp_path, capsys):
    dest = tmp_path / "out.zip"
    assert cli_main(["dataset", str(image_folder), str(dest), "--resolution", "32", "--labels"]) == 0
    out = capsys.readouterr().out
    assert "4 images at 32x32, with labels" in out and "broken.png" in out
    with zipfile.ZipFile(dest) as zf:
        names = sorted(zf.namelist())
        meta = json.loads(zf.read("dataset.json"))
    assert names == ["00000/img00000000.png", "00000/img00000001.png", "00000/img00000002.png",
                     "00000/img00000003.png", "dataset.json"]  # fmt: skip
    assert [label for _, label in meta["labels"]] == [0, 1, 2, 0]
    # the zip holds exactly what finetune would have read from the folder
    source = ImageDataset(image_folder, resolution=32, use_labels=True, on_error="skip")
    packed = ImageDataset(dest, use_labels=True)
    assert packed.resolution == 32 and packed.num_images == source.num_images == 4
    for i in range(4):
        assert np.array_equal(packed.load_image(i), source.load_image(i))
    assert np.array_equal(packed.labels, source.labels)


def test_dataset_strict_stops_at_a_corrupt_image_naming_it(image_folder, tmp_path, capsys):
    dest = tmp_path / "out.zip"
    assert cli_main(["dataset", str(image_folder), str(dest), "--resolution", "32", "--strict"]) == 2
    assert "broken.png" in capsys.readouterr().err and not dest.exists()


def test_style_mixing_figure_matches_nvidias_rule(tiny32, tmp_path):
    G = load_network(tiny32)["G_ema"]
    rows, cols, styles = [1, 2], [3, 4, 5], [0, 1, 2]
    figure, images = style_mixing_grid(G, rows, cols, styles)
    assert figure.shape == (3 * 32, 4 * 32, 3)
    assert not figure[:32, :32].any()  # the empty corner
    plain = dict(generate_images(G, cols + rows, noise_mode="const"))
    for s in cols:
        assert np.array_equal(figure[:32, 32 * (cols.index(s) + 1) : 32 * (cols.index(s) + 2)], plain[s])
    z = torch.from_numpy(seed_latents([2, 4], G.z_dim))
    w_row, w_col = G.mapping(z, torch.zeros([2, 0]))
    mixed = w_row.clone()
    mixed[styles] = w_col[styles]
    want = G.synthesis(mixed[None], noise_mode="const")
    got = torch.from_numpy(images[(2, 4)]).permute(2, 0, 1).float()
    assert (got - (want[0] * 127.5 + 128).clamp(0, 255).floor()).abs().max() <= 1  # uint8 rounding
    assert not np.array_equal(images[(2, 4)], plain[2]) and not np.array_equal(images[(2, 4)], plain[4])


def test_style_mixing_cli_and_bad_layers(tiny32, tmp_path, capsys):
    out = tmp_path / "mix"
    assert cli_main(["style-mixing", "--network", tiny32, "--rows", "1,2", "--cols", "3", "--styles", "0-3",
                     "--outdir", str(out), "--save-cells"]) == 0  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["1-3.png", "2-3.png", "grid.png"]
    assert cli_main(["style-mixing", "--network", tiny32, "--rows", "1", "--cols", "3", "--styles", "0-99",
                     "--outdir", str(out)]) == 2  # fmt: skip
    assert "the network has layers 0-7" in capsys.readouterr().err
