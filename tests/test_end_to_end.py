"""Tiny end-to-end runs of both presets on generated stamp trees with tiny random encoders."""
import json

import pytest
import torch
import yaml

import mmcl
from mmcl.cli import main
from mmcl.config import build_config, from_dict
from mmcl.engine import Experiment
from mmcl.io import load_checkpoint
from mmcl.naming import run_name


def tiny_overrides(root, classes, cache, out, **extra):
    o = {
        "data.root": str(root), "data.cache_dir": str(cache), "data.classes": list(classes),
        "data.image_size": 32, "data.max_speech_seconds": 0.5,
        "encoders.image.source": "random", "encoders.text.source": "random", "encoders.speech.source": "random",
        "encoders.text.width": 16, "encoders.speech.width": 16,
        "model.dim_z": 16, "model.head_hidden": 16, "adapter.dim": 8, "adapter.context_tokens": 4,
        "train.epochs": 2, "train.batch_size": 8, "memory.size": 12, "memory.batch_size": 6,
        "eval.batch_size": 32, "run.out_dir": str(out), "run.progress": "never",
    }
    o.update(extra)
    return o


def check_run_folder(run_dir, n_tasks):
    cfg = from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert cfg.scenario.num_tasks == n_tasks
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["task"] for x in lines] == list(range(1, n_tasks + 1))
    results = json.loads((run_dir / "results.json").read_text())
    R = results["accuracy_matrix"]
    assert len(R) == n_tasks
    for t in range(n_tasks):
        for i in range(n_tasks):
            if i <= t:
                assert 0.0 <= R[t][i] <= 1.0
            else:
                assert R[t][i] is None
    for key in ("acc_last", "acc_avg_incremental", "acc_mean_final", "forgetting", "bwt"):
        assert key in results["metrics"]
    assert results["metrics"]["acc_last"] == pytest.approx(
        sum(a * n for a, n in zip(R[-1], results["task_sizes"])) / sum(results["task_sizes"]))
    tensors, meta = load_checkpoint(run_dir / "checkpoints" / "final")
    assert any(k.startswith("model.adapters.") for k in tensors)
    assert not any(k.startswith("model.encoders.") for k in tensors)  # frozen encoders are not saved
    assert (run_dir / "accuracy_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "report.html").exists()
    return results


def test_class_incremental_run_writes_a_valid_run_folder(fake_stamps, tmp_path, capsys):
    root, classes = fake_stamps
    o = tiny_overrides(root, classes, tmp_path / "cache", tmp_path / "runs", **{"scenario.num_tasks": 2})
    args = ["run", "tuxpaint", *[f"{k}={json.dumps(v)}" for k, v in o.items()]]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "acc_last" in printed or "last" in printed
    # the default run name carries the overrides that change results (mmcl.naming.run_name)
    name = run_name("tuxpaint", "cma", 0, {k: json.dumps(v) for k, v in o.items()})
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [name]
    results = check_run_folder(tmp_path / "runs" / name, 2)
    assert results["scenario"] == "class"
    assert [len(t["classes"]) for t in results["tasks"]] == [2, 2]
    assert len(results["expert_usage"]) == 2 and len(results["expert_usage"][0]) == 3
    assert results["memory_size"] <= 12


def test_domain_incremental_run_writes_a_valid_run_folder(fake_stamps, tmp_path):
    root, classes = fake_stamps
    o = tiny_overrides(root, classes, tmp_path / "cache", tmp_path / "runs",
                       **{"data.tuxpaint.languages": ["fr", "ru", "es"], "scenario.num_tasks": 3})
    results = mmcl.run("tuxpaint-dil", o, run_dir=tmp_path / "dil")
    check_run_folder(tmp_path / "dil", 3)
    assert results["scenario"] == "domain"
    assert [t["domain"] for t in results["tasks"]] == ["fr", "ru", "es"]
    assert all(len(t["classes"]) == len(classes) for t in results["tasks"])


@pytest.fixture
def experiment(fake_stamps, tmp_path):
    root, classes = fake_stamps
    cfg = build_config("tuxpaint", tiny_overrides(root, classes, tmp_path / "cache", tmp_path / "runs",
                                                  **{"scenario.num_tasks": 2, "train.lr": 0.01}))
    return Experiment(cfg)


def test_frozen_experts_bit_identical_on_later_task(experiment):
    exp = experiment
    exp.train_task(0)
    adapters = exp.model.adapters
    frozen = {(b, e) for b, a in enumerate(adapters) for e in torch.nonzero(a.frozen).flatten().tolist()}
    assert frozen, "no expert crossed the 10 % threshold"
    assert len(frozen) < 10 * len(adapters)
    snap = {(b, e): [p.detach().clone() for p in adapters[b].experts[e].parameters()]
            for b in range(len(adapters)) for e in range(10)}
    exp.train_task(1)
    changed_unfrozen = 0
    for (b, e), before in snap.items():
        same = all(torch.equal(x, y) for x, y in zip(before, adapters[b].experts[e].parameters()))
        if (b, e) in frozen:
            assert same, f"frozen expert {e} of block {b + 1} changed"
        else:
            changed_unfrozen += not same
    assert changed_unfrozen > 0
    assert all(not p.requires_grad for b, e in frozen for p in adapters[b].experts[e].parameters())


def test_previous_model_never_runs_and_classifier_grows(experiment):
    exp = experiment
    exp.train_task(0)
    calls = {"n": 0}
    exp.model.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    steps = {"n": 0}
    inner = exp.method.training_step

    def counted(idx):
        before = calls["n"]
        out = inner(idx)
        assert calls["n"] - before == 1, "a training step ran the model more than once (old model?)"
        steps["n"] += 1
        assert set(out) >= {"cls", "distil", "align", "preserve", "balance"}
        return out

    exp.method.training_step = counted
    exp.train_task(1)
    assert steps["n"] > 0
    assert len(exp.model.classifier.heads) == 2
    assert exp.model.classifier.num_classes == 4
    mem = exp.method.memory
    assert 0 < len(mem) <= 12
    counts = [len(v) for v in mem.groups.values()]
    assert max(counts) - min(counts) <= 1 and len(mem.groups) == 4
    assert mem.old_logits.shape == (len(mem), 4) and mem.old_z.shape == (len(mem), 16)


def test_distil_on_current_works_without_memory(fake_stamps, tmp_path):
    root, classes = fake_stamps
    cfg = build_config("tuxpaint", tiny_overrides(root, classes, tmp_path / "cache", tmp_path / "runs", **{
        "scenario.num_tasks": 2, "memory.size": 0, "loss.distil_on_current": True, "train.epochs": 1}))
    exp = Experiment(cfg)
    exp.train_task(0)
    exp.method.begin_task(1)
    exp.model.train()
    terms = exp.method.training_step(exp.scenario.tasks[1].train[:4])
    assert "distil" in terms and "preserve" not in terms and float(terms["distil"].detach()) >= 0
