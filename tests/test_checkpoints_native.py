"""The native .safetensors format: round trips, atomic writes, errors, and the `convert` command."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest
import torch

from rootedgan.checkpoints import convert_network, detect_format, load_network, records, save_network
from rootedgan.checkpoints import native as native_mod
from rootedgan.checkpoints.nvidia import read_nvidia_pickle
from rootedgan.errors import CheckpointError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NV_PKL = FIXTURES / "nvidia" / "tiny32.pkl"
ROS_PT = FIXTURES / "rosinality" / "tiny32.pt"


needs_nv = pytest.mark.skipif(not NV_PKL.exists(), reason=f"NVIDIA fixture not found at {NV_PKL}")
needs_ros = pytest.mark.skipif(not ROS_PT.exists(), reason=f"rosinality fixture not found at {ROS_PT}")

META = {"finetuned_from": "ffhq256", "loss": {"name": "rooted", "k": 2.0}, "kimg": 12.5, "tags": ["a", "b"]}


def small_nets():
    from rootedgan.networks import Discriminator, Generator

    torch.manual_seed(0)
    g_kwargs = dict(
        z_dim=16,
        c_dim=0,
        w_dim=16,
        img_resolution=16,
        img_channels=3,
        mapping_kwargs={"num_layers": 2},
        synthesis_kwargs={"channel_base": 256, "channel_max": 32, "num_fp16_res": 0},
    )
    G = Generator(**g_kwargs)
    G_ema = Generator(**g_kwargs)
    with torch.no_grad():
        for p in G_ema.parameters():
            p.add_(0.01)
    D = Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=256, channel_max=32)
    return G, D, G_ema


def assert_same_module(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert a.init_kwargs == b.init_kwargs


def test_save_load_round_trip(tmp_path):
    G, D, G_ema = small_nets()
    path = save_network(tmp_path / "net.safetensors", G=G, D=D, G_ema=G_ema, meta=META)
    assert detect_format(path) == "safetensors"
    out = load_network(path)
    for name, net in (("G", G), ("D", D), ("G_ema", G_ema)):
        assert_same_module(net, out[name])
        assert not out[name].training
    meta = out["meta"]
    assert meta["format"] == "native" and meta["source"] == str(path)
    assert {k: meta[k] for k in META} == META
    assert meta["init_kwargs"]["G"] == json.loads(json.dumps(G.init_kwargs))
    assert meta["init_kwargs"]["D"] == json.loads(json.dumps(D.init_kwargs))


def test_file_layout(tmp_path):
    """Tensor names and string metadata as documented (checked with safetensors directly)."""
    from safetensors import safe_open

    rec = records.NetworkRecord("Generator", {"z_dim": 4}, {"a.weight": torch.ones(2, 2)})
    path = native_mod.save_records(tmp_path / "x.safetensors", {"G_ema": rec}, {"kimg": 1})
    with safe_open(str(path), framework="pt") as f:
        md = f.metadata()
        assert list(f.keys()) == ["G_ema.a.weight"]
    assert md["format"] == "rootedgan-native" and md["format_version"] == "1"
    assert json.loads(md["init_kwargs"]) == {"G_ema": {"z_dim": 4}}
    assert json.loads(md["meta"]) == {"kimg": 1}
    recs, meta = native_mod.read_native(path)
    assert recs["G"] is None and recs["D"] is None and meta == {"kimg": 1}
    assert torch.equal(recs["G_ema"].state_dict["a.weight"], torch.ones(2, 2))


@needs_nv
def test_records_round_trip_without_building(tmp_path):
    recs, _ = read_nvidia_pickle(NV_PKL)
    path = native_mod.save_records(tmp_path / "nv.safetensors", recs, META)
    again, meta = native_mod.read_native(path)
    assert meta == META
    for name in ("G", "D", "G_ema"):
        assert again[name].init_kwargs == recs[name].init_kwargs
        assert again[name].kind == recs[name].kind
        for key, value in recs[name].state_dict.items():
            assert torch.equal(value, again[name].state_dict[key])


def test_generator_required(tmp_path):
    with pytest.raises(CheckpointError, match="generator"):
        save_network(tmp_path / "x.safetensors", D=torch.nn.Linear(1, 1))


def _existing_checkpoint(tmp_path: Path) -> tuple[Path, bytes]:
    rec = records.NetworkRecord("Generator", {"z_dim": 4}, {"w": torch.zeros(3)})
    path = native_mod.save_records(tmp_path / "ckpt.safetensors", {"G": rec}, {"v": 1})
    return path, path.read_bytes()


def test_atomic_write_failure_mid_write(tmp_path, monkeypatch):
    path, before = _existing_checkpoint(tmp_path)

    def write_half_then_fail(f, data, chunk_size=1 << 24):
        f.write(bytes(memoryview(data)[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(native_mod, "write_chunks", write_half_then_fail)
    rec = records.NetworkRecord("Generator", {"z_dim": 4}, {"w": torch.ones(1000)})
    with pytest.raises(CheckpointError, match="No space left on device") as info:
        native_mod.save_records(path, {"G": rec}, {"v": 2})
    assert str(path) in str(info.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_atomic_write_failure_at_rename(tmp_path, monkeypatch):
    path, before = _existing_checkpoint(tmp_path)

    def failing_replace(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(records.os, "replace", failing_replace)
    rec = records.NetworkRecord("Generator", {"z_dim": 4}, {"w": torch.ones(3)})
    with pytest.raises(CheckpointError):
        native_mod.save_records(path, {"G": rec}, {"v": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_interrupt_leaves_no_temp_file(tmp_path, monkeypatch):
    path, before = _existing_checkpoint(tmp_path)

    def interrupted(f, data, chunk_size=1 << 24):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(native_mod, "write_chunks", interrupted)
    rec = records.NetworkRecord("Generator", {"z_dim": 4}, {"w": torch.ones(3)})
    with pytest.raises(KeyboardInterrupt):
        native_mod.save_records(path, {"G": rec})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_unwritable_destination(tmp_path):
    rec = records.NetworkRecord("Generator", {"z_dim": 4}, {"w": torch.zeros(3)})
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(CheckpointError, match="cannot write") as info:
        native_mod.save_records(not_a_dir / "out.safetensors", {"G": rec})
    assert "out.safetensors" in str(info.value)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder(tmp_path):
    rec = records.NetworkRecord("Generator", {"z_dim": 4}, {"w": torch.zeros(3)})
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="[Pp]ermission denied"):
            native_mod.save_records(folder / "out.safetensors", {"G": rec})
    finally:
        folder.chmod(0o700)


def test_creates_missing_parent_folders(tmp_path):
    rec = records.NetworkRecord("Generator", {"z_dim": 4}, {"w": torch.zeros(3)})
    path = native_mod.save_records(tmp_path / "a" / "b" / "out.safetensors", {"G": rec})
    assert path.is_file()


def test_foreign_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"encoder.weight": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a rootedgan checkpoint"):
        load_network(path)


def test_newer_format_version(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "future.safetensors"
    md = {"format": "rootedgan-native", "format_version": "2", "init_kwargs": "{}", "meta": "{}"}
    save_file({"G.w": torch.zeros(2)}, str(path), metadata=md)
    with pytest.raises(CheckpointError, match="version"):
        load_network(path)


# ----------------------------------------------------------------------------------------------------------
# `rootedgan convert`.


def cli_main(argv: list[str]) -> int:
    """``rootedgan.cli.main`` limited to the command modules that exist (others are written in parallel)."""
    from rootedgan import cli

    commands = {}
    for name, module in cli.COMMANDS.items():
        try:
            importlib.import_module(f"rootedgan.commands.{module}")
        except ModuleNotFoundError:
            continue
        commands[name] = module
    saved = dict(cli.COMMANDS)
    cli.COMMANDS.clear()
    cli.COMMANDS.update(commands)
    try:
        return cli.main(argv)
    finally:
        cli.COMMANDS.clear()
        cli.COMMANDS.update(saved)


@needs_nv
def test_convert_cli_nvidia_to_native_and_rosinality(tmp_path, capsys):
    original = load_network(NV_PKL)
    out_native = tmp_path / "tiny.safetensors"
    assert cli_main(["convert", str(NV_PKL), str(out_native)]) == 0
    printed = capsys.readouterr().out
    assert str(out_native) in printed and "native" in printed
    native = load_network(out_native)
    for name in ("G", "D", "G_ema"):
        assert_same_module(original[name], native[name])
    assert native["meta"]["converted_from"] == {"format": "nvidia-pkl", "source": str(NV_PKL)}

    out_ros = tmp_path / "tiny.pt"
    assert cli_main(["convert", str(out_native), str(out_ros)]) == 0
    assert "conv_clamp" in capsys.readouterr().out  # the note about what rosinality cannot keep
    ros = load_network(out_ros)
    assert ros["meta"]["format"] == "rosinality-pt"
    for name in ("D", "G_ema"):
        a, b = original[name].state_dict(), ros[name].state_dict()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}.{key}"


@needs_ros
def test_convert_rosinality_round_trip(tmp_path):
    original = load_network(ROS_PT)
    native_path = tmp_path / "r.safetensors"
    back_path = tmp_path / "r.pt"
    convert_network(ROS_PT, native_path)
    result = convert_network(native_path, back_path)
    assert result["format"] == "rosinality" and result["source_format"] == "native"
    back = load_network(back_path)
    for name in ("G", "D", "G_ema"):
        assert_same_module(original[name], back[name])
    raw_a = torch.load(ROS_PT, weights_only=False)
    raw_b = torch.load(back_path, weights_only=False)
    for name in ("g", "d", "g_ema"):
        assert set(raw_a[name]) == set(raw_b[name])
        for key in raw_a[name]:
            assert torch.equal(raw_a[name][key], raw_b[name][key]), f"{name}.{key}"


@needs_nv
def test_convert_cli_refuses_pkl_output(tmp_path, capsys):
    assert cli_main(["convert", str(NV_PKL), str(tmp_path / "out.pkl")]) == 2
    err = capsys.readouterr().err
    assert "non-commercial" in err and "Traceback" not in err
    assert not (tmp_path / "out.pkl").exists()


@needs_nv
def test_convert_cli_unknown_suffix_and_explicit_format(tmp_path, capsys):
    assert cli_main(["convert", str(NV_PKL), str(tmp_path / "out.bin")]) == 2
    assert "--format" in capsys.readouterr().err
    out = tmp_path / "out.bin"
    assert cli_main(["convert", str(NV_PKL), str(out), "--format", "native"]) == 0
    assert detect_format(out) == "safetensors"


def test_convert_cli_missing_input(tmp_path, capsys):
    assert cli_main(["convert", str(tmp_path / "missing.pkl"), str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_atomic_writes_get_plain_file_permissions(tmp_path):
    import os

    from rootedgan.fileio import atomic_open

    old = os.umask(0o027)
    try:
        with atomic_open(tmp_path / "a.bin") as fh:
            fh.write(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o640  # 0666 minus the umask, not mkstemp's 0600
