"""Safe checkpoints and the run's own bad inputs: truncated or tampered checkpoints, a full
disk while writing, a loss that becomes NaN or infinite, and no pickle on the load path."""
from __future__ import annotations

import errno
import json
import pickle
import shutil

import pytest
import torch

from mmcl.cli import main
from mmcl.config import build_config
from mmcl.engine import Experiment, TrainingError
from mmcl.io import (
    CheckpointError,
    CheckpointStore,
    CheckpointWriteError,
    WriteError,
    load_checkpoint,
    save_checkpoint,
    write_json,
)
from test_resume import mmcl_argv, small_overrides, strip_timing


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cfg_factory(fake_stamps, tmp_path_factory):
    root, classes = fake_stamps
    cache = tmp_path_factory.mktemp("ckpt-cache")

    def make(**extra):
        return build_config("tuxpaint", make.overrides(**extra))
    make.overrides = lambda **extra: small_overrides(root, classes, cache, **extra)
    return make


@pytest.fixture(scope="module")
def baseline(cfg_factory, tmp_path_factory):
    """An uninterrupted in-process run: (config, run folder, results without timings)."""
    before = torch.get_num_threads()
    cfg = cfg_factory()
    run_dir = tmp_path_factory.mktemp("ckpt") / "base"
    results = Experiment(cfg, run_dir).run()
    torch.set_num_threads(before)
    return cfg, run_dir, strip_timing(results)


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


def pointer(run_dir):
    return json.loads((run_dir / "checkpoints" / "latest.json").read_text())


# -- single checkpoint files --------------------------------------------------------------------
def test_truncated_or_tampered_checkpoint_is_a_clear_error(tmp_path):
    stem = tmp_path / "c"
    save_checkpoint(stem, {"w": torch.arange(6.0)}, {"note": "x"})
    tensors, meta = load_checkpoint(stem)
    assert torch.equal(tensors["w"], torch.arange(6.0)) and meta["note"] == "x"
    blob = stem.with_suffix(".safetensors").read_bytes()
    stem.with_suffix(".safetensors").write_bytes(blob[:-5])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(stem)
    stem.with_suffix(".safetensors").write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(stem)
    stem.with_suffix(".safetensors").write_bytes(blob)
    stem.with_suffix(".json").write_text(stem.with_suffix(".json").read_text()[:40])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(stem)


def test_store_keeps_the_previous_checkpoint_and_falls_back_to_it(tmp_path):
    store = CheckpointStore(tmp_path)
    names = [store.save({"w": torch.full((3,), float(i))}, {"i": i}) for i in range(4)]
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.json")) == [f"{n}.json" for n in names[-2:]]
    assert json.loads(store.read_latest()[0])["i"] == 3
    # tamper with the newest JSON (valid JSON, other content): its recorded SHA-256 no longer matches
    newest = tmp_path / f"{names[-1]}.json"
    newest.write_text(newest.read_text().replace('"i": 3', '"i": 7'))
    meta_bytes, _, name = store.read_latest()
    assert name == names[-2] and json.loads(meta_bytes)["i"] == 2
    # both damaged: one clear error naming both and what to do
    (tmp_path / f"{names[-2]}.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(CheckpointError, match=r"no usable checkpoint(.|\n)*--fresh") as e:
        store.read_latest()
    assert names[-1] in str(e.value) and names[-2] in str(e.value)


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    good = store.save({"w": torch.ones(3)}, {"i": 0})

    def full(f, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("mmcl.io._write_file", full)
    with pytest.raises(CheckpointWriteError, match=rf"disk is full(.|\n)*previous checkpoint {good} is kept"):
        store.save({"w": torch.zeros(3)}, {"i": 1})
    with pytest.raises(WriteError, match="disk is full"):
        write_json(tmp_path / "x.json", {"a": 1})
    monkeypatch.undo()
    assert pointer_name(tmp_path) == good
    assert json.loads(store.read_latest()[0])["i"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000001.json", "ckpt-000001.safetensors",
                                                          "latest.json"]


def pointer_name(folder):
    return json.loads((folder / "latest.json").read_text())["latest"]["name"]


# -- whole runs -------------------------------------------------------------------------------
def test_damaged_newest_checkpoint_resumes_from_the_previous_one(baseline, tmp_path, one_thread, caplog):
    cfg, base_dir, base_results = baseline
    run_dir = copy_run(base_dir, tmp_path / "run")
    (run_dir / "results.json").unlink()
    newest = run_dir / "checkpoints" / f"{pointer(run_dir)['latest']['name']}.safetensors"
    newest.write_bytes(newest.read_bytes()[: len(newest.read_bytes()) // 2])  # truncated
    results = Experiment(cfg, run_dir).run()
    assert "truncated" in caplog.text and "trying the previous checkpoint" in caplog.text
    assert strip_timing(results) == {**base_results, "name": "run"}


def test_no_pickle_on_the_load_path(baseline, tmp_path, one_thread, monkeypatch):
    cfg, base_dir, base_results = baseline
    run_dir = copy_run(base_dir, tmp_path / "run")
    (run_dir / "results.json").unlink()
    ptr = pointer(run_dir)  # resume inside task 2 (optimiser, scheduler, memory, RNG states)
    write_json(run_dir / "checkpoints" / "latest.json", {**ptr, "latest": ptr["previous"], "previous": None})

    def forbidden(*a, **k):
        raise AssertionError("unpickling on the load path")
    for target in ("pickle.loads", "pickle.load", "torch.load"):
        monkeypatch.setattr(target, forbidden)

    class NoUnpickler:
        def __init__(self, *a, **k):
            forbidden()
    monkeypatch.setattr(pickle, "Unpickler", NoUnpickler)
    results = Experiment(cfg, run_dir).run()
    assert strip_timing(results) == {**base_results, "name": "run"}


def test_resume_with_another_config_is_refused(baseline, cfg_factory, tmp_path, one_thread):
    _, base_dir, _ = baseline
    run_dir = copy_run(base_dir, tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"train.lr: 0.001 in the checkpoint, 0.002 now(.|\n)*--fresh"):
        Experiment(cfg_factory(**{"train.lr": 0.002}), run_dir).run()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_naming_step_and_term_and_keeps_the_last_checkpoint(cfg_factory, tmp_path,
                                                                                  one_thread, bad):
    exp = Experiment(cfg_factory(), tmp_path / "run")
    inner = exp.method.training_step
    calls = {"n": 0}

    def poisoned(idx):
        terms = inner(idx)
        if exp.method.task == 1:
            calls["n"] += 1
            if calls["n"] == 2:
                terms["align"] = terms["align"] * bad
        return terms
    exp.method.training_step = poisoned
    with pytest.raises(TrainingError) as e:
        exp.run()
    msg = str(e.value)
    assert "task 2, epoch 1, step 2" in msg and "term(s) align" in msg
    good = pointer_name(tmp_path / "run" / "checkpoints")
    assert f"last good checkpoint ({good})" in msg
    tensors, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / good)
    assert meta["progress"]["task"] == 1 and not meta["progress"]["begun"]  # task 1 finished
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["task"] for x in lines] == [1]


def test_disk_full_during_a_run_is_a_clear_error_and_keeps_what_was_written(cfg_factory, tmp_path, one_thread,
                                                                            monkeypatch, capsys, caplog):
    import mmcl.engine as engine
    caplog.set_level("INFO", logger="mmcl")
    real_save = CheckpointStore.save

    def save_until_full(self, tensors, meta, before_switch=None):
        if meta["progress"]["task"] == 1 and meta["kind"] == "task":  # the checkpoint after task 1
            monkeypatch.setattr("mmcl.io._write_file", disk_full)
        return real_save(self, tensors, meta, before_switch)

    def disk_full(f, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(engine.CheckpointStore, "save", save_until_full)
    run_dir = tmp_path / "run"
    o = cfg_factory.overrides()
    rc = main(mmcl_argv(run_dir, o))
    err = capsys.readouterr().err
    assert rc == 1
    assert "no space left on device (the disk is full)" in err and "is kept" in err
    # the metrics of task 1 were written before the checkpoint and are still there
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["task"] for x in lines] == [1]
    # the previous checkpoint (end of task 1's last epoch) is intact and resumable
    monkeypatch.undo()
    meta_bytes, _, name = CheckpointStore(run_dir / "checkpoints").read_latest()
    assert json.loads(meta_bytes)["kind"] == "epoch"
    assert not list(run_dir.rglob("*.tmp"))
    assert main(mmcl_argv(run_dir, o)) == 0
    assert "resuming" in caplog.text
