"""Resume after a crash: tiny runs killed with a real SIGKILL (and stopped with SIGTERM /
SIGINT) at many points, resumed with the same command, end with the same results.json as an
uninterrupted run, to the bit."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmcl.io import load_checkpoint
from test_end_to_end import tiny_overrides

REPO = Path(__file__).resolve().parents[1]
# Wall-clock and environment fields: everything else must be identical.
TIMING_KEYS = {"task_time_s", "train_time_s", "prepare_time_s", "finished", "environment"}


def small_overrides(root, classes, cache, **extra):
    """tiny_overrides, smaller still: 2 languages, image + speech (no transformers import),
    2 tasks, batches of 6, one thread (bit-identical floats need the same thread count)."""
    o = tiny_overrides(root, classes, cache, "unused", **{
        "data.tuxpaint.languages": ["fr", "es"], "data.modalities": ["image", "speech"],
        "scenario.num_tasks": 2, "train.batch_size": 6,
        "memory.size": 8, "memory.batch_size": 4, "run.threads": 1, "run.device": "cpu"})
    o.update(extra)
    return o


def mmcl_argv(run_dir, overrides, *args) -> list[str]:
    return ["run", "tuxpaint", *[f"{k}={json.dumps(v)}" for k, v in overrides.items()],
            "--run-dir", str(run_dir), *args]


def cli_run(run_dir, overrides, *args, env_extra=None, timeout=180, launcher=None):
    """The real command, ``python -m mmcl run tuxpaint ... --run-dir RUN_DIR``, in a subprocess."""
    env = {k: v for k, v in os.environ.items() if k != "MMCL_KILL_AT"}
    env.update({"PYTHONUNBUFFERED": "1", **(env_extra or {})})
    cmd = (launcher or [sys.executable, "-m", "mmcl"]) + mmcl_argv(run_dir, overrides, *args)
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def fork_run(run_dir, overrides, *args, kill_at=None, timeout=120):
    """The same command in a process forked from a warm server (see _forkrun): no imports."""
    from _forkrun import run_forked
    return run_forked(mmcl_argv(run_dir, overrides, *args), {"MMCL_KILL_AT": kill_at or ""}, timeout,
                      log_dir=Path(run_dir).parent)


def strip_timing(obj):
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def run_outputs(run_dir: Path):
    results = json.loads((run_dir / "results.json").read_text())
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tensors, _ = load_checkpoint(run_dir / "checkpoints" / "final")
    return strip_timing(results), strip_timing(lines), tensors


def assert_same_run(a: Path, b: Path):
    ra, la, ta = run_outputs(a)
    rb, lb, tb = run_outputs(b)
    ra.pop("name"), rb.pop("name")
    assert la == lb, "metrics.jsonl differs"
    assert ra == rb, "results.json differs"
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"final checkpoint tensor {k} differs"


@pytest.fixture(scope="module")
def baseline(fake_stamps, tmp_path_factory):
    """An uninterrupted tiny run (its subprocess also prepares the shared cache)."""
    root, classes = fake_stamps
    base = tmp_path_factory.mktemp("resume")
    o = small_overrides(root, classes, base / "cache")
    proc = cli_run(base / "uninterrupted", o)
    assert proc.returncode == 0, proc.stderr
    return o, base / "uninterrupted"


# Each entry kills (or stops) the run at one point; the next command resumes and goes on to
# the next point. Every task has 2 epochs of 3 steps (17 training samples, batches of 6).
# (MMCL_KILL_AT spec, exit status, where this run must resume from: None = from scratch)
T1_STEP2 = "task 1, epoch 2, after step 2"
KILL_CHAIN = [
    ("point=step,task=1,epoch=1,step=3", -signal.SIGKILL, None),          # before any checkpoint
    ("point=step,task=1,epoch=2,step=2,signal=TERM", 128 + signal.SIGTERM, None),  # saves mid-epoch
    ("point=step,task=1,epoch=2,step=3", -signal.SIGKILL, T1_STEP2),      # mid-epoch, after a resume
    ("point=checkpoint,kind=epoch,task=1,epoch=2", -signal.SIGKILL, T1_STEP2),  # writing a checkpoint
    ("point=eval,task=1,after=1", -signal.SIGKILL, T1_STEP2),             # during evaluation
    ("point=task_end,task=1", -signal.SIGKILL, "task 1 trained, before its evaluation"),  # between tasks
    ("point=step,task=2,epoch=1,step=3,signal=INT", 128 + signal.SIGINT, "before task 2"),  # Ctrl-C
    ("point=step,task=2,epoch=2,step=1", -signal.SIGKILL, "task 2, start of epoch 2"),
    ("point=end_task,task=2", -signal.SIGKILL, "task 2, start of epoch 2"),  # after the memory update
    ("point=eval,task=2,after=2", -signal.SIGKILL, "task 2 trained, before its evaluation"),
]


def assert_resumed_from(log: str, where: str | None):
    if where is None:
        assert "resuming" not in log, log[-2000:]
    else:
        assert f"({where})" in log and "resuming" in log, f"expected a resume from {where}:\n{log[-2000:]}"


def test_killed_and_resumed_run_is_identical_to_an_uninterrupted_one(baseline, tmp_path):
    o, base_dir = baseline
    run_dir = tmp_path / "killed"
    for spec, want_rc, resumes_from in KILL_CHAIN:
        proc = fork_run(run_dir, o, kill_at=spec)
        assert proc.returncode == want_rc, f"{spec}: rc {proc.returncode}\n{proc.stderr[-3000:]}"
        assert_resumed_from(proc.stderr, resumes_from)
        if want_rc > 0:
            assert "checkpoint saved" in proc.stderr and "resume" in proc.stderr
        # metrics.jsonl never holds a duplicate or partial line
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["task"] for x in lines] == list(range(1, len(lines) + 1))
    assert not (run_dir / "results.json").exists()
    proc = cli_run(run_dir, o)  # the real command resumes the last one
    assert proc.returncode == 0, proc.stderr
    assert_resumed_from(proc.stderr, "task 2 trained, before its evaluation")
    assert_same_run(base_dir, run_dir)
    # Running the finished command again changes nothing; --fresh starts over, same numbers.
    before = (run_dir / "results.json").read_text()
    proc = fork_run(run_dir, o)
    assert proc.returncode == 0 and "already complete" in proc.stderr
    assert (run_dir / "results.json").read_text() == before
    proc = fork_run(run_dir, o, "--fresh")
    assert proc.returncode == 0, proc.stderr
    assert "resuming" not in proc.stderr
    assert_same_run(base_dir, run_dir)


def test_adapter_groups_warmup_and_gate_freezing_resume_identically(fake_stamps, tmp_path):
    """One optimiser group per parameter kind (adapter.lr_scale, adapter.warmup) and the frozen
    gate rows (freeze.scope=expert_gate) survive a kill inside task 2: same results, same
    gradient norms, same final tensors as an uninterrupted run."""
    root, classes = fake_stamps
    o = small_overrides(root, classes, tmp_path / "cache", **{
        "method.name": "cma", "adapter.lr_scale": 3.0, "adapter.warmup": 0.5, "freeze.scope": "expert_gate"})
    proc = fork_run(tmp_path / "whole", o)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = fork_run(tmp_path / "killed", o, kill_at="point=task_end,task=1")
    assert proc.returncode == -signal.SIGKILL
    after_task1 = json.loads((tmp_path / "killed" / "checkpoints" / "latest.json").read_text())
    task1, _ = load_checkpoint(tmp_path / "killed" / "checkpoints" / after_task1["latest"]["name"])
    proc = fork_run(tmp_path / "killed", o, kill_at="point=step,task=2,epoch=2,step=1")
    assert proc.returncode == -signal.SIGKILL
    proc = fork_run(tmp_path / "killed", o)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_resumed_from(proc.stderr, "task 2, start of epoch 2")
    assert_same_run(tmp_path / "whole", tmp_path / "killed")
    lines = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        g = line["grad_norms"]
        assert {"experts", "gates", "adapter_projections", "projections", "heads"} <= set(g)
        assert all(math.isfinite(v) and v > 0 for v in g.values()), g
    # the experts frozen after task 1 kept their gate rows (clean and noise) through task 2
    res = json.loads((tmp_path / "whole" / "results.json").read_text())
    final, _ = load_checkpoint(tmp_path / "whole" / "checkpoints" / "final")
    moved = False
    for b, ids in enumerate(res["frozen_experts"][0]):
        for m in ("image", "speech"):
            for kind in ("gate", "gate_noise"):
                key = f"model.adapters.{b}.{kind}.{m}.weight"
                assert torch.equal(task1[key][ids], final[key][ids]), key
                moved |= not torch.equal(task1[key], final[key])
    assert any(res["frozen_experts"][0]) and moved
