"""The one atomic-writer family (mmcl.io): bytes, text, JSON, safetensors and the report's files
all get the permissions open() gives, and a failed write raises WriteError naming the file and
leaves its previous version (and no temporary file)."""
from __future__ import annotations

import errno
import json
import os
import stat

import pytest
import torch

import mmcl.io as mio
from mmcl.io import WriteError, atomic_save_tensors, atomic_write, atomic_write_bytes, atomic_write_text, write_json


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def disk_full(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def umask_002(monkeypatch):
    """The umask as the writers read it at import, set to one whose open() mode (0o664) differs
    from the usual 0o644."""
    monkeypatch.setattr(mio, "_UMASK", 0o002)
    return 0o666 & ~0o002


def test_every_writer_gives_the_mode_open_gives(tmp_path, umask_002):
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "t.txt", "héllo\n")
    write_json(tmp_path / "j.json", {"a": [1, 2]})
    atomic_save_tensors(tmp_path / "x.safetensors", {"w": torch.arange(6).reshape(2, 3).t()})
    assert atomic_write(tmp_path / "cb.txt", lambda f: f.write("via a callback"), "w") == tmp_path / "cb.txt"
    for name in ("b.bin", "t.txt", "j.json", "x.safetensors", "cb.txt"):
        assert mode(tmp_path / name) == umask_002, name
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "cb.txt").read_text(encoding="utf-8") == "via a callback"
    from safetensors.torch import load_file
    assert torch.equal(load_file(str(tmp_path / "x.safetensors"))["w"], torch.arange(6).reshape(2, 3).t())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "cb.txt", "j.json", "t.txt", "x.safetensors"]


def test_default_mode_follows_the_process_umask(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    atomic_write_text(tmp_path / "t.txt", "x")
    assert mode(tmp_path / "t.txt") == 0o666 & ~umask


def test_compact_json_is_what_json_dumps_writes(tmp_path):
    obj = {"ö": [1.5, None, "x"], "b": {"c": True}}
    write_json(tmp_path / "c.json", obj, compact=True)
    assert (tmp_path / "c.json").read_bytes() == json.dumps(obj, ensure_ascii=False).encode("utf-8")
    write_json(tmp_path / "i.json", obj)
    assert (tmp_path / "i.json").read_text(encoding="utf-8").endswith("}\n")


def test_failed_write_keeps_the_old_file_and_names_it(tmp_path):
    path = tmp_path / "notes.txt"
    atomic_write_text(path, "old")

    def half_then_full(f):
        f.write("new, but only ha")
        disk_full()
    with pytest.raises(WriteError, match=rf"cannot write {path}: no space left on device \(the disk is full\)"
                                         r".*previous version"):
        atomic_write(path, half_then_full, "w")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # no temporary file left

    def interrupted(f):
        f.write("new, but only ha")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):  # not an OSError: passed on as it is, still cleaned up
        atomic_write(path, interrupted, "w")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_failed_tensor_save_keeps_the_old_file(tmp_path, monkeypatch):
    import safetensors.torch
    path = tmp_path / "x.safetensors"
    atomic_save_tensors(path, {"w": torch.ones(2)})
    before = path.read_bytes()
    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(WriteError, match=rf"cannot write {path}: no space left"):
        atomic_save_tensors(path, {"w": torch.zeros(2)})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]
