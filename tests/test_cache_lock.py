"""Concurrent preparation of one data set: the cache lock (mmcl.data.prepared.cache_lock)."""
import subprocess
import sys
from pathlib import Path

import torch
from filelock import FileLock

from mmcl.data.cache import load_tensors, read_records

SRC = str(Path(__file__).resolve().parent.parent / "src")


def prepare_cmd(root, classes, cache):
    args = [f"data.root={root}", f"data.cache_dir={cache}", f"data.classes=[{','.join(classes)}]",
            "data.image_size=16", "encoders.image.source=random", "encoders.text.source=random",
            "encoders.speech.source=random", "encoders.text.width=16", "encoders.speech.width=16"]
    return [sys.executable, "-m", "mmcl", "prepare", "tuxpaint", *args, "--workers", "1"]


def env():
    import os
    e = dict(os.environ)
    e["PYTHONPATH"] = SRC + os.pathsep + e.get("PYTHONPATH", "")
    return e


def test_two_concurrent_prepares_give_one_valid_cache(fake_stamps, tmp_path):
    root, classes = fake_stamps
    cache = tmp_path / "cache"
    procs = [subprocess.Popen(prepare_cmd(root, classes, cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env()) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    folders = [f for f in (cache / "tuxpaint").iterdir() if f.is_dir()]
    assert len(folders) == 1
    folder = folders[0]
    assert not (folder / "parts").exists() and not list(folder.glob("*.tmp*"))
    meta = read_records(folder / "records.json")
    for mod in ("image", "text", "speech"):
        tensors = load_tensors(folder / f"inputs_{mod}.safetensors")   # complete, readable
        assert all(t.shape[0] > 0 for t in tensors.values())
    assert len(meta["records"]) > 0
    n = [o.split("prepared ")[-1].split(" samples")[0] for o in outs]
    assert n[0] == n[1]


def test_a_prepare_waits_for_the_lock_holder(fake_stamps, tmp_path):
    """While another process holds the cache lock, prepare waits (and says so), then goes on."""
    root, classes = fake_stamps
    cache = tmp_path / "cache"
    first = subprocess.run(prepare_cmd(root, classes, cache), capture_output=True, text=True, env=env())
    assert first.returncode == 0, first.stderr
    folder = next(f for f in (cache / "tuxpaint").iterdir() if f.is_dir())
    before = load_tensors(folder / "inputs_image.safetensors")
    lock = FileLock(str(folder.with_name(folder.name + ".lock")))
    lock.acquire()
    try:
        second = subprocess.Popen(prepare_cmd(root, classes, cache), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env())
        waited = ""
        for line in second.stderr:          # blocks until the child says it waits for the lock
            waited += line
            if "waiting for another process that prepares tuxpaint" in line:
                break
        assert second.poll() is None, waited      # still waiting while the lock is held
    finally:
        lock.release()
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, waited + err
    assert "prepared " in out
    after = load_tensors(folder / "inputs_image.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
