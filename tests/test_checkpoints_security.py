"""The loader never runs code from a file, and bad files give clear errors, never stack traces."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from rootedgan.checkpoints import load_network
from rootedgan.checkpoints.nvidia import read_nvidia_pickle
from rootedgan.errors import CheckpointError, UnsafeCheckpointError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NV_PKL = FIXTURES / "nvidia" / "tiny32.pkl"
ROS_PT = FIXTURES / "rosinality" / "tiny32.pt"
PLACEHOLDER = b"# embedded module source removed: this file holds weights and structure only\n"

needs_nv = pytest.mark.skipif(not NV_PKL.exists(), reason=f"NVIDIA fixture not found at {NV_PKL}")
needs_ros = pytest.mark.skipif(not ROS_PT.exists(), reason=f"rosinality fixture not found at {ROS_PT}")


# ----------------------------------------------------------------------------------------------------------
# Payloads.


class SystemPayload:
    """Unpickling this runs ``os.system("touch SENTINEL")``."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


class ExecPayload(SystemPayload):
    def __reduce__(self):
        return builtins.exec, (f"open({str(self.sentinel)!r}, 'w').close()",)


class PopenPayload(SystemPayload):
    def __reduce__(self):
        return subprocess.Popen, (["touch", str(self.sentinel)],)


PAYLOADS = [SystemPayload, ExecPayload, PopenPayload]


@pytest.fixture
def persistence(monkeypatch):
    """A stand-in ``torch_utils.persistence`` module so that tests can pickle NVIDIA-style objects."""
    pkg = types.ModuleType("torch_utils")
    mod = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # never called: we only pickle with it
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

    return Persistent


def _write(tmp_path: Path, obj, name: str = "evil.pkl") -> Path:
    path = tmp_path / name
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


# ----------------------------------------------------------------------------------------------------------
# Malicious pickles.


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.__name__)
def test_payload_at_top_level_is_refused(tmp_path, payload):
    sentinel = tmp_path / "SENTINEL"
    path = _write(tmp_path, {"G": payload(sentinel), "D": None})
    with pytest.raises(UnsafeCheckpointError) as info:
        load_network(path)
    msg = str(info.value)
    assert "not loaded" in msg and str(path) in msg
    assert any(name in msg for name in ("posix.system", "builtins.exec", "subprocess.Popen"))
    assert not sentinel.exists()


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.__name__)
def test_payload_inside_persistent_state_is_refused(tmp_path, persistence, payload):
    sentinel = tmp_path / "SENTINEL"
    meta = {
        "type": "class",
        "version": 6,
        "module_src": "",
        "class_name": "Generator",
        "state": {"_parameters": {}, "_buffers": {}, "_modules": {}, "evil": payload(sentinel)},
    }
    path = _write(tmp_path, {"G": persistence(meta), "G_ema": None, "D": None})
    with pytest.raises(UnsafeCheckpointError):
        read_nvidia_pickle(path)
    with pytest.raises(UnsafeCheckpointError):
        load_network(path)
    assert not sentinel.exists()


class StorageBomb:
    """An NVIDIA-style storage whose nested torch.save archive carries a payload."""

    def __init__(self, archive: bytes) -> None:
        self.archive = archive

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.archive,)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_payload_inside_nested_storage_archive_is_refused(tmp_path, zip_format):
    sentinel = tmp_path / "SENTINEL"
    buf = io.BytesIO()
    torch.save(SystemPayload(sentinel), buf, _use_new_zipfile_serialization=zip_format)
    path = _write(tmp_path, {"G": StorageBomb(buf.getvalue())})
    with pytest.raises(CheckpointError) as info:
        load_network(path)
    assert "not loaded" in str(info.value) or "corrupt" in str(info.value)
    assert not sentinel.exists()


def test_object_dtypes_and_persistent_ids_are_refused(tmp_path):
    with pytest.raises(UnsafeCheckpointError):
        load_network(_write(tmp_path, {"G": np.dtype(object)}, "dtype.pkl"))
    persid = tmp_path / "persid.pkl"
    persid.write_bytes(b"\x80\x04Pfoo\n.")
    with pytest.raises(UnsafeCheckpointError):
        load_network(persid)


@needs_nv
def test_module_src_is_never_executed(tmp_path, monkeypatch):
    sentinel_name = "PWNED"
    code = f"import os; os.system('touch {sentinel_name}'); open('{sentinel_name}2', 'w').close()\n"
    code = code[:-1].ljust(len(PLACEHOLDER) - 1, "#") + "\n"
    data = NV_PKL.read_bytes()
    assert data.count(PLACEHOLDER) == 1 and len(code.encode()) == len(PLACEHOLDER)
    path = tmp_path / "module_src.pkl"
    path.write_bytes(data.replace(PLACEHOLDER, code.encode()))
    monkeypatch.chdir(tmp_path)
    recs, _ = read_nvidia_pickle(path)
    assert recs["G"] is not None
    load_network(path)
    assert not (tmp_path / sentinel_name).exists()
    assert not (tmp_path / f"{sentinel_name}2").exists()


def test_tensorflow_pickle_names_the_converter(tmp_path, monkeypatch):
    mod = types.ModuleType("dnnlib.tflib.network")

    class Network:
        def __init__(self, name: str) -> None:
            self.name = name

    Network.__module__ = mod.__name__
    Network.__qualname__ = "Network"
    mod.Network = Network
    for name in ("dnnlib", "dnnlib.tflib"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    path = _write(tmp_path, (Network("G"), Network("D"), Network("Gs")), "tf.pkl")
    with pytest.raises(CheckpointError) as info:
        load_network(path)
    msg = str(info.value)
    assert "TensorFlow" in msg and "legacy.py" in msg and "stylegan2-ada-pytorch" in msg


# ----------------------------------------------------------------------------------------------------------
# Broken files.


def _truncations(data: bytes) -> list[int]:
    n = len(data)
    return sorted({1, 2, 7, 9, 100, 1000, n // 3, n // 2, n - 100, n - 1})


def _assert_truncated_error(path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        load_network(path)
    msg = str(info.value)
    assert "truncated" in msg or "corrupt" in msg, msg
    assert str(path) in msg


def _assert_truncations_fail(tmp_path: Path, data: bytes, suffix: str) -> None:
    for cut in _truncations(data):
        path = tmp_path / f"cut{cut}{suffix}"
        path.write_bytes(data[:cut])
        _assert_truncated_error(path)


@needs_nv
def test_truncated_nvidia_pickle(tmp_path):
    _assert_truncations_fail(tmp_path, NV_PKL.read_bytes(), ".pkl")


@needs_ros
def test_truncated_rosinality_checkpoint(tmp_path):
    _assert_truncations_fail(tmp_path, ROS_PT.read_bytes(), ".pt")


@needs_nv
def test_truncated_native_checkpoint(tmp_path):
    from rootedgan.checkpoints.native import save_records

    recs, _ = read_nvidia_pickle(NV_PKL)
    full = save_records(tmp_path / "full.safetensors", recs, {"note": "x"})
    _assert_truncations_fail(tmp_path, full.read_bytes(), ".safetensors")


def test_random_bytes_unknown_format(tmp_path):
    path = tmp_path / "random.pkl"
    path.write_bytes(b"\x00" + np.random.RandomState(0).bytes(4096))
    with pytest.raises(CheckpointError, match="unknown format"):
        load_network(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pkl"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_network(path)


def test_directory_path(tmp_path):
    with pytest.raises(CheckpointError, match="folder"):
        load_network(tmp_path)


def test_missing_path(tmp_path):
    path = tmp_path / "nope.pkl"
    with pytest.raises(CheckpointError, match="does not exist") as info:
        load_network(path)
    assert str(path) in str(info.value)


def test_torch_save_that_is_not_rosinality_lists_keys(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, path)
    with pytest.raises(CheckpointError) as info:
        load_network(path)
    msg = str(info.value)
    assert "not a rosinality" in msg and "'model'" in msg and "'epoch'" in msg


def test_torch_save_with_code_is_refused(tmp_path):
    sentinel = tmp_path / "SENTINEL"
    path = tmp_path / "evil.pt"
    torch.save({"g": SystemPayload(sentinel)}, path)
    with pytest.raises(UnsafeCheckpointError, match="not loaded"):
        load_network(path)
    assert not sentinel.exists()


def test_pickle_that_is_not_a_network(tmp_path):
    with pytest.raises(CheckpointError, match="no generator"):
        load_network(_write(tmp_path, {"weights": [1, 2, 3]}, "plain.pkl"))
    with pytest.raises(CheckpointError, match="not an NVIDIA network pickle"):
        load_network(_write(tmp_path, [1, 2, 3], "list.pkl"))


def test_stylegan3_is_refused_clearly(tmp_path, persistence):
    def obj(class_name, modules=None):
        state = {"_parameters": {}, "_buffers": {}, "_modules": modules or {}, "_init_kwargs": {}}
        return persistence(
            {"type": "class", "version": 6, "module_src": "", "class_name": class_name, "state": state}
        )

    g = obj("Generator", {"synthesis": obj("SynthesisNetwork", {"input": obj("SynthesisInput")})})
    path = _write(tmp_path, {"G": g, "G_ema": g, "D": None}, "sg3.pkl")
    with pytest.raises(CheckpointError, match="StyleGAN3 is not supported yet"):
        load_network(path)
