"""Data-parallel runs: ``torchrun --nproc_per_node=2 -m mmcl run`` with gloo on the loopback
address gives the same results as one process with the same global batch, and resumes."""
from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch

from test_resume import assert_same_run, cli_run, fork_run, run_outputs, small_overrides

TORCHRUN = Path(sys.executable).with_name("torchrun")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_close_nested(a, b, tol):
    """Equal structure, equal None positions, numbers within tol."""
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (a, b)
        for x, y in zip(a, b):
            assert_close_nested(x, y, tol)
    elif a is None or b is None:
        assert a is b, (a, b)
    else:
        assert abs(a - b) <= tol, (a, b)


def torchrun(run_dir, overrides, *args, nproc=2, kill_at=None, timeout=180):
    launcher = [str(TORCHRUN), "--nnodes=1", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
                f"--master_port={free_port()}", "-m", "mmcl"]
    env = {"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "MMCL_DIST_TIMEOUT_S": "60"}
    if kill_at:
        env["MMCL_KILL_AT"] = kill_at
    return cli_run(run_dir, overrides, *args, env_extra=env, timeout=timeout, launcher=launcher)


def one_and_two_processes(tmp_path, overrides):
    """The same run in one process and under torchrun with two: both must succeed. Returns
    (stderr of the two-process run, run_outputs of one, run_outputs of two)."""
    one = fork_run(tmp_path / "one", overrides)
    assert one.returncode == 0, one.stderr
    two = torchrun(tmp_path / "two", overrides)
    assert two.returncode == 0, two.stderr[-4000:]
    return two.stderr, run_outputs(tmp_path / "one"), run_outputs(tmp_path / "two")


@pytest.mark.skipif(not TORCHRUN.exists() or not torch.distributed.is_gloo_available(),
                    reason="needs torchrun and the gloo backend")
def test_two_gloo_processes_match_one_process_and_resume(fake_stamps, tmp_path):
    root, classes = fake_stamps
    # Batches of 5 from task 1's 16 training samples: the last batch has one row, so rank 1
    # runs nothing in that step; other batches split unevenly (3 + 2, with memory 5 + 4).
    o = small_overrides(root, classes, tmp_path / "cache", **{"train.batch_size": 5})
    stderr, (r1, l1, t1), (r2, l2, t2) = one_and_two_processes(tmp_path, o)
    assert "2 processes" in stderr
    assert "models differ" not in stderr  # the ranks' replicas stayed identical
    # Same accuracy matrix, same frozen experts, same usage (counts summed over ranks).
    assert_close_nested(r2["accuracy_matrix"], r1["accuracy_matrix"], 1e-9)
    assert r2["frozen_experts"] == r1["frozen_experts"]
    assert_close_nested(r2["expert_usage"], r1["expert_usage"], 1e-6)
    assert r2["memory_size"] == r1["memory_size"]
    for a, b in zip(l1, l2):  # the loss terms saw the whole batch on every rank
        assert b["train_losses"] == pytest.approx(a["train_losses"], rel=1e-4, abs=1e-6)
    # The weights differ only by floating-point summation order.
    assert t1.keys() == t2.keys()
    for k in t1:
        if t1[k].is_floating_point():
            torch.testing.assert_close(t2[k], t1[k], rtol=1e-3, atol=1e-4, msg=k)
        else:
            assert torch.equal(t1[k], t2[k]), k
    # Only rank 0 wrote: one run folder, no stray temporary files.
    assert not list((tmp_path / "two").rglob("*.tmp"))

    # SIGKILL rank 0 mid-epoch (torchrun then stops rank 1); the same command resumes, with
    # the checkpoint read by rank 0 and sent to rank 1, and ends as the uninterrupted run.
    killed = tmp_path / "two_killed"
    proc = torchrun(killed, o, kill_at="point=step,task=2,epoch=1,step=2,rank=0")
    assert proc.returncode != 0
    assert not (killed / "results.json").exists()
    proc = torchrun(killed, o)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resuming" in proc.stderr and "(before task 2)" in proc.stderr
    assert_same_run(tmp_path / "two", killed)


@pytest.mark.skipif(not TORCHRUN.exists() or not torch.distributed.is_gloo_available(),
                    reason="needs torchrun and the gloo backend")
def test_prompt_method_in_two_processes_matches_one(fake_stamps, tmp_path):
    """L2P's prompts and its key term (computed on the whole batch by every rank, scaled by
    1 / world size) give the one-process result."""
    root, classes = fake_stamps
    o = small_overrides(root, classes, tmp_path / "cache", **{"train.batch_size": 5, "method.name": "l2p"})
    _, (r1, l1, t1), (r2, l2, t2) = one_and_two_processes(tmp_path, o)
    assert_close_nested(r2["accuracy_matrix"], r1["accuracy_matrix"], 1e-9)
    for a, b in zip(l1, l2):
        assert set(a["train_losses"]) == {"cls", "key"}
        assert b["train_losses"] == pytest.approx(a["train_losses"], rel=1e-4, abs=1e-6)
    assert any(k.startswith("model.prompter.") for k in t1)
    for k in t1:
        if t1[k].is_floating_point():
            torch.testing.assert_close(t2[k], t1[k], rtol=1e-3, atol=1e-4, msg=k)


@pytest.mark.skipif(not TORCHRUN.exists() or not torch.distributed.is_gloo_available(),
                    reason="needs torchrun and the gloo backend")
def test_masked_modalities_and_dropout_in_two_processes_match_one(fake_stamps, tmp_path):
    """Samples missing speech (on_missing=mask keeps the stamp lacking a recording) and modality
    dropout drawn for the whole batch: two ranks give the one-process run, robustness table included."""
    root, classes = fake_stamps
    o = small_overrides(root, classes, tmp_path / "cache", **{
        "train.batch_size": 5, "data.on_missing": "mask", "train.modality_dropout.image": 0.3,
        "train.modality_dropout.speech": 0.3})
    _, (r1, l1, _), (r2, l2, _) = one_and_two_processes(tmp_path, o)
    assert_close_nested(r2["accuracy_matrix"], r1["accuracy_matrix"], 1e-9)
    assert r2["frozen_experts"] == r1["frozen_experts"]
    assert r2["modality_robustness"] == r1["modality_robustness"]
    assert r1["modality_robustness"]["alone"]["speech"]["samples"] < r1["modality_robustness"]["samples"]
    for a, b in zip(l1, l2):
        assert b["train_losses"] == pytest.approx(a["train_losses"], rel=1e-4, abs=1e-6)


def test_shards_drawing_the_whole_batch_noise_route_as_one_forward(fake_stamps, tmp_path):
    """The model's side of a data-parallel step, in one process: rows run in two shards, each
    with its slice of the whole batch's gate noise and usage counting left to the caller, give
    the rows, the usage counts and the RNG state of one forward over the batch."""
    from mmcl.model.mmencoder import noise_rows
    from test_chunks import experiment

    exp = experiment(fake_stamps, tmp_path / "cache", tmp_path)
    model = exp.model
    model.train()
    idx = torch.as_tensor(exp.method.scenario.tasks[0].train[:7])
    cuts = ((0, 4), (4, 7))
    whole_batch = exp.method.fetch(idx)
    shard_batches = [exp.method.fetch(idx[s:e]) for s, e in cuts]

    for a in model.adapters:
        a.reset_usage()
    torch.manual_seed(5)
    whole = model(whole_batch)
    after_whole = torch.randn(1)
    usage_whole = [a.usage_count.clone() for a in model.adapters]

    for a in model.adapters:
        a.reset_usage()
    torch.manual_seed(5)
    noise = model.draw_routing_noise(len(idx))
    assert noise is not None  # noisy gating in training mode
    parts = [model(b, noise=noise_rows(noise, slice(s, e)), count_usage=False)
             for b, (s, e) in zip(shard_batches, cuts)]
    after_shards = torch.randn(1)
    assert all(a.usage_count.sum() == 0 for a in model.adapters)  # left to the caller
    blocks = range(len(model.adapters))
    model.add_usage([sum(p.usage[b] for p in parts) for b in blocks],
                    [sum(p.routings[b] for p in parts) for b in blocks])

    assert torch.equal(after_whole, after_shards)
    torch.testing.assert_close(torch.cat([p.logits for p in parts]), whole.logits, atol=1e-5, rtol=1e-4)
    for a, u in zip(model.adapters, usage_whole):
        assert torch.equal(a.usage_count, u) and u.sum() > 0


def test_min_max_in_one_process_returns_copies():
    from mmcl.distributed import Dist

    t = torch.tensor([1.5, -2.0], dtype=torch.float64)
    lo, hi = Dist().min_max(t)
    assert torch.equal(lo, t) and torch.equal(hi, t)
    lo += 1
    assert torch.equal(hi, t) and t[0] == 1.5
