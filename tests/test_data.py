"""Tests for rootedgan.data: image folders/zips, geometry and channel rules, labels, DataModule."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from rootedgan.data import DatasetError, ImageDataModule, ImageDataset, uint8_to_float
from rootedgan.errors import UserError


def solid(color: tuple[int, int, int], size: int = 8) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def random_rgb(seed: int, w: int = 8, h: int = 8) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, [h, w, 3], dtype=np.uint8))


def write(root: Path, rel: str, img: Image.Image) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def zip_folder(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    return dest


def chw(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def make_set(root: Path, n: int, size: int = 8) -> list[Image.Image]:
    images = [random_rgb(i, size, size) for i in range(n)]
    for i, img in enumerate(images):
        write(root, f"img{i:03d}.png", img)
    return images


# ---------------------------------------------------------------------------------------------------
# Sources and order


@pytest.fixture()
def tree(tmp_path: Path) -> tuple[Path, dict[str, Image.Image]]:
    """A nested folder with every lossless format, plus files that must be ignored."""
    root = tmp_path / "data"
    images = {
        "b.png": random_rgb(1),
        "a/c.bmp": random_rgb(2),
        "a/b/d.tif": random_rgb(3),
        "a/e.webp": random_rgb(4),
        "Z.PNG": random_rgb(5),
    }
    for rel, img in images.items():
        if rel.endswith(".webp"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            img.save(root / rel, lossless=True)
        else:
            write(root, rel, img)
    write(root, "a/f.gif", Image.new("P", (8, 8), 7))
    write(root, "a/g.JPEG", solid((200, 40, 90)))
    write(root, ".hidden.png", random_rgb(9))
    write(root, ".cache/x.png", random_rgb(10))
    (root / "notes.txt").write_text("not an image")
    return root, images


EXPECTED_ORDER = ["Z.PNG", "a/b/d.tif", "a/c.bmp", "a/e.webp", "a/f.gif", "a/g.JPEG", "b.png"]


def test_folder_recursive_sorted(tree: tuple[Path, dict[str, Image.Image]]) -> None:
    root, images = tree
    ds = ImageDataset(root)
    assert ds.names == EXPECTED_ORDER
    assert len(ds) == 7 and ds.resolution == 8 and ds.image_shape == (3, 8, 8) and not ds.is_zip
    for i, name in enumerate(ds.names):
        img, label = ds[i]
        assert img.dtype == torch.uint8 and img.shape == (3, 8, 8)
        assert label.dtype == torch.float32 and label.shape == (0,)
        if name in images:
            assert torch.equal(img, chw(images[name])), name
    gif = Image.open(root / "a/f.gif").convert("RGB")
    assert torch.equal(ds[EXPECTED_ORDER.index("a/f.gif")][0], chw(gif))
    jpeg = ds[EXPECTED_ORDER.index("a/g.JPEG")][0].int()
    assert (jpeg - torch.tensor([200, 40, 90])[:, None, None]).abs().max() <= 3


def test_zip_matches_folder(tree: tuple[Path, dict[str, Image.Image]], tmp_path: Path) -> None:
    root, _ = tree
    folder_ds = ImageDataset(root)
    archive = zip_folder(root, tmp_path / "data.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("__MACOSX/._b.png", b"resource fork")
        zf.writestr(".git/x.png", b"hidden")
    zip_ds = ImageDataset(archive)
    assert zip_ds.is_zip and zip_ds.names == EXPECTED_ORDER
    for i in range(len(folder_ds)):
        assert torch.equal(zip_ds[i][0], folder_ds[i][0])


def test_with_xflip_is_a_copy_with_its_own_zip_handle(
    tree: tuple[Path, dict[str, Image.Image]], tmp_path: Path
) -> None:
    root, _ = tree
    base = ImageDataset(zip_folder(root, tmp_path / "data.zip"))
    first = base[0][0]  # opens base's zip handle
    flipped = base.with_xflip(True)
    assert not base.xflip and len(base) == base.num_images  # the original is unchanged
    assert flipped.xflip and len(flipped) == 2 * base.num_images
    assert torch.equal(flipped[0][0], first)
    assert torch.equal(flipped[base.num_images][0], first.flip(-1))  # the mirrored copy of image 0
    flipped.close()
    assert torch.equal(base[0][0], first)  # closing the copy's handle leaves the original's open


def test_zip_detected_by_content(tmp_path: Path) -> None:
    make_set(tmp_path / "src", 3)
    archive = zip_folder(tmp_path / "src", tmp_path / "images.dat")
    ds = ImageDataset(archive)
    assert ds.is_zip and len(ds) == 3
    not_zip = tmp_path / "fake.zip"
    not_zip.write_bytes(b"definitely not a zip")
    with pytest.raises(DatasetError, match="neither a folder nor a zip"):
        ImageDataset(not_zip)


def test_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does-not-exist"):
        ImageDataset(tmp_path / "does-not-exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    write(empty, ".hidden.png", solid((1, 2, 3)))
    with pytest.raises(DatasetError, match=r"no images \(png, jpg.*found under .*empty"):
        ImageDataset(empty)
    assert issubclass(DatasetError, UserError)


def test_bad_arguments(tmp_path: Path) -> None:
    make_set(tmp_path, 1)
    for kwargs in ({"resolution": 12}, {"resolution": 2}, {"channels": 2}, {"on_error": "ignore"}):
        with pytest.raises(DatasetError):
            ImageDataset(tmp_path, **kwargs)


# ---------------------------------------------------------------------------------------------------
# Geometry


def banded(w: int, h: int) -> tuple[Image.Image, Image.Image]:
    """An image whose center square is a random pattern and whose 2-pixel margins are pure red/blue."""
    s = min(w, h)
    center = random_rgb(42, s, s)
    arr = np.zeros([h, w, 3], np.uint8)
    if w > h:
        arr[:, :2], arr[:, -2:] = (255, 0, 0), (0, 0, 255)
        arr[:, 2:-2] = np.asarray(center)
    else:
        arr[:2], arr[-2:] = (255, 0, 0), (0, 0, 255)
        arr[2:-2] = np.asarray(center)
    return Image.fromarray(arr), center


@pytest.mark.parametrize("wh", [(12, 8), (8, 12)])
def test_center_crop_then_resize(tmp_path: Path, wh: tuple[int, int]) -> None:
    img, center = banded(*wh)
    write(tmp_path, "x.png", img)
    exact = ImageDataset(tmp_path, resolution=8)[0][0]
    assert exact.shape == (3, 8, 8)
    assert torch.equal(exact, chw(center))  # the red/blue bands are cropped away exactly
    down = ImageDataset(tmp_path, resolution=4)[0][0]
    assert torch.equal(down, chw(center.resize((4, 4), Image.Resampling.LANCZOS)))
    up = ImageDataset(tmp_path, resolution=16)[0][0]
    assert torch.equal(up, chw(center.resize((16, 16), Image.Resampling.LANCZOS)))


def test_native_resolution_rules(tmp_path: Path) -> None:
    write(tmp_path / "rect", "a.png", random_rgb(0, 12, 8))
    with pytest.raises(DatasetError, match=r"a\.png.*12x8"):
        ImageDataset(tmp_path / "rect")
    write(tmp_path / "mixed", "a.png", random_rgb(0, 8, 8))
    write(tmp_path / "mixed", "b.png", random_rgb(1, 16, 16))
    with pytest.raises(DatasetError, match=r"b\.png.*16x16"):
        ImageDataset(tmp_path / "mixed")
    ds = ImageDataset(tmp_path / "mixed", resolution=8)
    assert [tuple(ds[i][0].shape) for i in range(2)] == [(3, 8, 8), (3, 8, 8)]


# ---------------------------------------------------------------------------------------------------
# Channels


def test_grayscale_and_alpha_to_rgb(tmp_path: Path) -> None:
    rs = np.random.RandomState(0)
    gray = rs.randint(0, 256, [8, 8], dtype=np.uint8)
    rgb = rs.randint(0, 256, [8, 8, 3], dtype=np.uint8)
    alpha = rs.randint(0, 256, [8, 8], dtype=np.uint8)
    gray16 = rs.randint(0, 65536, [8, 8]).astype(np.uint16)
    write(tmp_path, "0_l.png", Image.fromarray(gray))
    write(tmp_path, "1_la.png", Image.fromarray(np.stack([gray, alpha], -1)))
    write(tmp_path, "2_rgba.png", Image.fromarray(np.dstack([rgb, alpha])))
    write(tmp_path, "3_i16.png", Image.fromarray(gray16))
    write(tmp_path, "4_p.png", Image.fromarray(rgb).quantize(16))
    ds = ImageDataset(tmp_path)
    rep = torch.from_numpy(gray).expand(3, 8, 8)
    assert torch.equal(ds[0][0], rep)
    assert torch.equal(ds[1][0], rep)  # alpha dropped, gray replicated
    assert torch.equal(ds[2][0], torch.from_numpy(rgb).permute(2, 0, 1))  # alpha dropped, colours kept
    assert torch.equal(ds[3][0], torch.from_numpy((gray16 >> 8).astype(np.uint8)).expand(3, 8, 8))
    assert torch.equal(ds[4][0], chw(Image.open(tmp_path / "4_p.png").convert("RGB")))


def test_channels_one(tmp_path: Path) -> None:
    rgb = random_rgb(3)
    write(tmp_path, "a.png", rgb)
    write(tmp_path, "b.png", Image.fromarray(np.dstack([np.asarray(rgb), np.full([8, 8], 9, np.uint8)])))
    ds = ImageDataset(tmp_path, channels=1)
    assert ds.image_shape == (1, 8, 8)
    expected = torch.from_numpy(np.array(rgb.convert("L")))[None]
    assert torch.equal(ds[0][0], expected) and torch.equal(ds[1][0], expected)


# ---------------------------------------------------------------------------------------------------
# xflip and max_images


def test_xflip_doubles_and_mirrors(tmp_path: Path) -> None:
    make_set(tmp_path, 3)
    plain = ImageDataset(tmp_path)
    ds = ImageDataset(tmp_path, xflip=True)
    assert len(ds) == 6 and ds.num_images == 3
    for i in range(3):
        assert torch.equal(ds[i][0], plain[i][0])
        assert torch.equal(ds[i + 3][0], plain[i][0].flip(-1))
        assert torch.equal(ds[i + 3][0][:, :, 0], plain[i][0][:, :, -1])
    with pytest.raises(IndexError):
        ds[6]


def test_max_images_nvidia_rule(tmp_path: Path) -> None:
    make_set(tmp_path, 10)
    all_names = [f"img{i:03d}.png" for i in range(10)]
    for seed in (0, 3, 123):
        order = list(range(10))
        np.random.RandomState(seed).shuffle(order)
        expected = [all_names[i] for i in sorted(order[:4])]
        ds = ImageDataset(tmp_path, max_images=4, seed=seed)
        assert ds.names == expected
    assert ImageDataset(tmp_path, max_images=50).names == all_names
    assert len(ImageDataset(tmp_path, max_images=4, xflip=True)) == 8


# ---------------------------------------------------------------------------------------------------
# Labels


def write_labels(root: Path, labels: object) -> None:
    (root / "dataset.json").write_text(json.dumps({"labels": labels}))


def test_labels_one_hot_and_vectors(tmp_path: Path) -> None:
    make_set(tmp_path, 3)
    write_labels(tmp_path, [["img000.png", 2], ["img001.png", 0], ["img002.png", 4]])
    ds = ImageDataset(tmp_path, use_labels=True)
    assert ds.c_dim == 5 and ds.has_labels and ds.label_shape == (5,)
    label = ds[2][1]
    assert label.dtype == torch.float32 and torch.equal(label, torch.tensor([0, 0, 0, 0, 1.0]))
    assert ds[0][1].argmax() == 2 and ds[1][1].argmax() == 0

    flipped = ImageDataset(tmp_path, use_labels=True, xflip=True)
    assert torch.equal(flipped[3][1], flipped[0][1])

    unlabelled = ImageDataset(tmp_path)
    assert unlabelled.c_dim == 0 and not unlabelled.has_labels and unlabelled[0][1].shape == (0,)

    write_labels(tmp_path, [[f"img{i:03d}.png", [0.5, i]] for i in range(3)])
    vec = ImageDataset(tmp_path, use_labels=True)
    assert vec.c_dim == 2 and torch.equal(vec[1][1], torch.tensor([0.5, 1.0]))


def test_labels_in_zip(tmp_path: Path) -> None:
    make_set(tmp_path / "src", 2)
    write_labels(tmp_path / "src", [["img000.png", 1], ["img001.png", 0]])
    ds = ImageDataset(zip_folder(tmp_path / "src", tmp_path / "d.zip"), use_labels=True)
    assert ds.c_dim == 2 and ds[0][1].tolist() == [0.0, 1.0]


def test_label_errors(tmp_path: Path) -> None:
    make_set(tmp_path, 3)
    with pytest.raises(DatasetError, match="no dataset.json"):
        ImageDataset(tmp_path, use_labels=True)
    write_labels(tmp_path, [["img000.png", 1], ["img002.png", 0]])
    with pytest.raises(DatasetError, match=r"no label for 1 image.*img001\.png"):
        ImageDataset(tmp_path, use_labels=True)
    assert ImageDataset(tmp_path).c_dim == 0  # labels ignored without use_labels
    write_labels(tmp_path, None)
    with pytest.raises(DatasetError, match="null"):
        ImageDataset(tmp_path, use_labels=True)
    write_labels(tmp_path, [["img000.png", 1], ["img001.png", [0.5]], ["img002.png", 0]])
    with pytest.raises(DatasetError, match="img001.png"):
        ImageDataset(tmp_path, use_labels=True)


# ---------------------------------------------------------------------------------------------------
# Corrupt files


def add_corrupt(root: Path) -> None:
    (root / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    good = root / "img000.png"
    (root / "truncated.png").write_bytes(good.read_bytes()[:60])


def test_corrupt_raise(tmp_path: Path) -> None:
    make_set(tmp_path, 2)
    add_corrupt(tmp_path)
    ds = ImageDataset(tmp_path, resolution=8)
    assert ds.names == ["garbage.png", "img000.png", "img001.png", "truncated.png"]
    with pytest.raises(DatasetError, match=r"garbage\.png.*" + str(tmp_path.name)):
        ds[0]
    with pytest.raises(DatasetError, match=r"truncated\.png"):
        ds[3]
    # Without a resolution, the header scan in the constructor already finds the bad file.
    with pytest.raises(DatasetError, match=r"garbage\.png"):
        ImageDataset(tmp_path)


def test_corrupt_skip(tmp_path: Path) -> None:
    make_set(tmp_path, 2)
    add_corrupt(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image\(s\) of 4.*garbage\.png") as rec:
        ds = ImageDataset(tmp_path, on_error="skip")
    assert len([w for w in rec if "unreadable" in str(w.message)]) == 1
    assert ds.skipped == ["garbage.png", "truncated.png"]
    assert ds.names == ["img000.png", "img001.png"] and ds[1][0].shape == (3, 8, 8)

    zipped = zip_folder(tmp_path, tmp_path.parent / f"{tmp_path.name}.zip")
    with pytest.warns(UserWarning, match="skipped 2"):
        zip_ds = ImageDataset(zipped, on_error="skip")
    assert zip_ds.skipped == ds.skipped and torch.equal(zip_ds[0][0], ds[0][0])

    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.jpg").write_bytes(b"nope")
    with pytest.raises(DatasetError, match="none of the 1 images"):
        ImageDataset(only_bad, on_error="skip")


# ---------------------------------------------------------------------------------------------------
# Workers and identity


def test_dataloader_workers_reopen_zip(tmp_path: Path) -> None:
    images = make_set(tmp_path / "src", 8)
    ds = ImageDataset(zip_folder(tmp_path / "src", tmp_path / "d.zip"), xflip=True)
    assert torch.equal(ds[0][0], chw(images[0]))  # main process now holds an open handle
    pickle.loads(pickle.dumps(ds))  # picklable, handle not included
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batches = torch.cat([b[0] for b in loader])
    expected = torch.stack([ds[i][0] for i in range(len(ds))])
    assert batches.shape == (16, 3, 8, 8) and torch.equal(batches, expected)


def test_content_key(tmp_path: Path) -> None:
    make_set(tmp_path, 3)
    key = ImageDataset(tmp_path).content_key()
    assert len(key) == 64 and key == ImageDataset(tmp_path).content_key()
    assert ImageDataset(tmp_path, xflip=True).content_key() != key
    assert ImageDataset(tmp_path, resolution=4).content_key() != key
    assert ImageDataset(tmp_path, channels=1).content_key() != key
    assert ImageDataset(tmp_path, max_images=2).content_key() != key
    arr = np.asarray(random_rgb(2)).copy()
    arr[0, 0, 0] ^= 1
    Image.fromarray(arr).save(tmp_path / "img002.png")
    assert ImageDataset(tmp_path).content_key() != key


def test_uint8_to_float() -> None:
    x = torch.tensor([0, 255, 128], dtype=torch.uint8)
    y = uint8_to_float(x)
    assert y.dtype == torch.float32
    assert torch.allclose(y, torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]), atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# DataModule


def attach(dm: ImageDataModule, **model: object) -> None:
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(**model))  # type: ignore[assignment]


def test_datamodule_batches(tmp_path: Path) -> None:
    make_set(tmp_path, 5, size=16)
    dm = ImageDataModule(str(tmp_path), resolution=8, batch_size=4, num_workers=0, xflip=True)
    dm.setup("fit")
    imgs, labels = next(iter(dm.train_dataloader()))
    assert imgs.shape == (4, 3, 8, 8) and imgs.dtype == torch.uint8
    assert labels.shape == (4, 0) and labels.dtype == torch.float32
    # endless and seeded: the first batches of two loaders are identical
    order = [
        torch.cat([b[0] for b, _ in zip(dm.train_dataloader(), range(5), strict=False)]) for _ in range(2)
    ]
    assert torch.equal(order[0], order[1])


def test_resumable_sampler_passes_ranks_and_resume() -> None:
    import itertools

    from rootedgan.data import ResumableShuffleSampler

    stream = list(itertools.islice(iter(ResumableShuffleSampler(7, seed=3)), 21))
    for p in range(3):  # every pass is a permutation, and passes differ
        assert sorted(stream[7 * p : 7 * p + 7]) == list(range(7))
    assert stream[:7] != stream[7:14]
    # two ranks interleave the same global stream
    r0 = list(itertools.islice(iter(ResumableShuffleSampler(7, seed=3, rank=0, world=2)), 10))
    r1 = list(itertools.islice(iter(ResumableShuffleSampler(7, seed=3, rank=1, world=2)), 10))
    assert r0 == stream[0:20:2] and r1 == stream[1:20:2]
    # resuming after 4 samples per rank continues the stream exactly
    resumed = list(itertools.islice(iter(ResumableShuffleSampler(7, seed=3, rank=1, world=2, start=4)), 6))
    assert resumed == r1[4:10]
    assert list(itertools.islice(iter(ResumableShuffleSampler(7, seed=4)), 7)) != stream[:7]


def test_datamodule_takes_model_geometry(tmp_path: Path) -> None:
    make_set(tmp_path, 4, size=16)
    write_labels(tmp_path, [[f"img{i:03d}.png", i % 3] for i in range(4)])
    dm = ImageDataModule(str(tmp_path), batch_size=2, num_workers=0, use_labels=True)
    attach(dm, img_resolution=8, img_channels=3, c_dim=3)
    dm.setup("fit")
    assert dm.dataset is not None and dm.dataset.image_shape == (3, 8, 8) and dm.dataset.c_dim == 3
    imgs, labels = next(iter(dm.train_dataloader()))
    assert imgs.shape == (2, 3, 8, 8) and labels.shape == (2, 3)

    conflict = ImageDataModule(str(tmp_path), resolution=16, num_workers=0)
    attach(conflict, img_resolution=8, img_channels=3, c_dim=0)
    with pytest.raises(DatasetError, match="16.*8"):
        conflict.setup("fit")


def test_datamodule_label_checks(tmp_path: Path) -> None:
    make_set(tmp_path, 4)
    dm = ImageDataModule(str(tmp_path), num_workers=0)
    attach(dm, img_resolution=8, img_channels=3, c_dim=10)
    with pytest.raises(DatasetError, match=r"c_dim=10.*data.use_labels: true.*dataset.json"):
        dm.setup("fit")

    write_labels(tmp_path, [[f"img{i:03d}.png", i] for i in range(4)])
    dm = ImageDataModule(str(tmp_path), num_workers=0, use_labels=True)
    attach(dm, img_resolution=8, img_channels=3, c_dim=10)
    with pytest.raises(DatasetError, match=r"c_dim=4.*c_dim=10"):
        dm.setup("fit")


def test_datamodule_too_few_images(tmp_path: Path) -> None:
    make_set(tmp_path, 3)
    dm = ImageDataModule(str(tmp_path), batch_size=8, num_workers=0)
    dm.setup("fit")
    with pytest.raises(DatasetError, match=r"only 3 training image.*batch_size=8.*at most 3"):
        dm.train_dataloader()
