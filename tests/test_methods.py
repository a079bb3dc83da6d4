"""Baseline methods: tiny two-task runs of each, and the property that defines each one."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import mmcl
from mmcl.config import build_config, method_defaults
from mmcl.engine import Experiment, Interrupted
from mmcl.io import load_checkpoint, save_checkpoint
from mmcl.plugins import load_all
from mmcl.registry import REGISTRIES
from mmcl.resume import KILL_ENV
from test_end_to_end import tiny_overrides

BASELINES = ["finetune", "joint", "er", "lwf", "ewc", "derpp", "icarl"]
PROMPTS = ["l2p", "dualprompt", "codaprompt"]  # more in test_prompts.py


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("methods-cache")


def small(fake_stamps, cache, out, **extra):
    """Two tasks, two languages, image + speech: a few seconds per run."""
    root, classes = fake_stamps
    return tiny_overrides(root, classes, cache, out, **{
        "data.tuxpaint.languages": ["fr", "es"], "data.modalities": ["image", "speech"],
        "scenario.num_tasks": 2, "train.batch_size": 6, "memory.size": 8, "memory.batch_size": 4,
        "run.device": "cpu", **extra})


def experiment(fake_stamps, cache, tmp_path, method, **extra) -> Experiment:
    return Experiment(build_config("tuxpaint", small(fake_stamps, cache, tmp_path / "runs",
                                                     **{"method.name": method, **extra})))


@pytest.mark.parametrize("method", BASELINES)
def test_method_runs_two_tasks_end_to_end(method, fake_stamps, cache, tmp_path):
    run_dir = tmp_path / method
    results = mmcl.run("tuxpaint", small(fake_stamps, cache, tmp_path / "runs", **{"method.name": method}),
                       run_dir=run_dir)
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["method"] == results["method"] == method
    R = saved["accuracy_matrix"]
    assert len(R) == 2 and R[0][1] is None and all(0.0 <= a <= 1.0 for a in (R[0][0], R[1][0], R[1][1]))
    assert saved["config"]["model"]["adapters"] is False  # the method's YAML default
    tensors, meta = load_checkpoint(run_dir / "checkpoints" / "final")
    assert not any(k.startswith("model.adapters.") for k in tensors)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = {"finetune": {"cls"}, "joint": {"cls"}, "er": {"cls"}, "lwf": {"cls", "distil"},
                "ewc": {"cls", "ewc"}, "derpp": {"cls", "der", "der_cls"}, "icarl": {"cls", "distil"}}[method]
    assert set(lines[1]["train_losses"]) == expected
    if method == "derpp":  # the reservoir is used from the first task on
        assert set(lines[0]["train_losses"]) == expected


def test_registered_with_a_one_line_description_and_adapter_free_defaults():
    load_all()
    for name in BASELINES + PROMPTS:
        cls = REGISTRIES["method"][name]
        first = cls.__doc__.strip().splitlines()[0].rstrip(".")
        assert first.endswith(")") and "(" in first, f"{name}: no reference in '{first}'"
        assert method_defaults(name)["model"] == {"adapters": False}
    assert method_defaults("cma") == {}


def test_method_yaml_defaults_apply_and_can_be_overridden(tmp_path):
    assert build_config("tuxpaint").model.adapters is True
    assert build_config("tuxpaint", ["method.name=er"]).model.adapters is False
    assert build_config("tuxpaint", ["method.name=er", "model.adapters=true"]).model.adapters is True
    assert build_config("tuxpaint", {"method.name": "ewc", "memory.size": 50}).memory.size == 50
    # method.name from the preset selects the YAML too; the preset beats the method's YAML
    p = tmp_path / "mine.yaml"
    p.write_text("method:\n  name: lwf\n")
    assert build_config(str(p)).model.adapters is False
    p.write_text("method:\n  name: lwf\nmodel:\n  adapters: true\n")
    assert build_config(str(p)).model.adapters is True
    assert build_config(str(p), ["model.adapters=false"]).model.adapters is False
    # the override's method.name wins over the preset's
    assert build_config(str(p), ["method.name=cma"]).method.name == "cma"
    assert build_config("tuxpaint", ["method.name=icarl"]).memory.selection == "herding"


def test_joint_trains_on_every_task_seen_so_far(fake_stamps, cache, tmp_path):
    exp = experiment(fake_stamps, cache, tmp_path, "joint", **{"train.epochs": 1})
    seen = []
    inner = exp.method.training_step

    def counted(idx):
        seen.extend(idx.tolist())
        return inner(idx)

    exp.method.training_step = counted
    exp.train_task(0)
    t0 = exp.scenario.tasks[0].train.tolist()
    assert sorted(seen) == sorted(t0)
    seen.clear()
    exp.train_task(1)
    assert sorted(seen) == sorted(t0 + exp.scenario.tasks[1].train.tolist())
    assert exp.steps_per_epoch(1) == -(-len(seen) // exp.cfg.train.batch_size)


def test_ewc_penalty_is_zero_at_the_anchor_and_positive_away(fake_stamps, cache, tmp_path):
    exp = experiment(fake_stamps, cache, tmp_path, "ewc", **{"train.epochs": 1, "method.ewc.penalty": 10.0})
    m = exp.method
    assert float(m.penalty().detach()) == 0.0 and not m.fisher
    exp.train_task(0)
    assert m.fisher and set(m.fisher) == set(m.anchor)
    assert all((f >= 0).all() for f in m.fisher.values()) and any(f.sum() > 0 for f in m.fisher.values())
    assert float(m.penalty().detach()) == 0.0
    exp.method.begin_task(1)  # a new head: no Fisher for it, the penalty stays zero
    assert float(m.penalty().detach()) == 0.0
    name = max(m.fisher, key=lambda n: float(m.fisher[n].sum()))
    param = dict(exp.model.named_parameters())[name]
    with torch.no_grad():
        param += 0.1
    expected = 10.0 / 2 * float((m.fisher[name] * 0.01).sum())
    assert float(m.penalty().detach()) == pytest.approx(expected, rel=1e-4) and expected > 0
    terms = m.training_step(exp.scenario.tasks[1].train[:4])
    assert float(terms["ewc"].detach()) == pytest.approx(expected, rel=1e-4)
    # online EWC: the next Fisher is added to gamma * the old one
    old = {k: v.clone() for k, v in m.fisher.items()}
    new = m.fisher_diagonal(exp.scenario.tasks[1].train)
    m.end_task(1)
    assert torch.allclose(m.fisher[name], exp.cfg.method.ewc.gamma * old[name] + new[name])


def test_lwf_targets_are_the_previous_models_outputs(fake_stamps, cache, tmp_path):
    exp = experiment(fake_stamps, cache, tmp_path, "lwf", **{"train.epochs": 1})
    exp.train_task(0)
    m = exp.method
    train1 = exp.scenario.tasks[1].train
    before, _ = m.infer(train1)  # the model after task 1, before task 2 begins
    m.begin_task(1)
    assert m.old_logits.shape[1] == 2
    assert torch.allclose(m.old_logits[train1], before[:, :2], atol=1e-6)
    exp.model.eval()  # unchanged model: the distillation term vanishes
    terms = m.training_step(train1[:6])
    assert float(terms["distil"].detach()) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        exp.model.classifier.heads[0].bias += torch.tensor([1.0, -1.0])
    assert float(m.training_step(train1[:6])["distil"].detach()) > 1e-3


def test_derpp_stores_logits_at_insertion_and_matches_them(fake_stamps, cache, tmp_path):
    exp = experiment(fake_stamps, cache, tmp_path, "derpp", **{"train.epochs": 1})
    m = exp.method
    m.begin_task(0)
    exp.model.eval()  # (no update between the calls below: the model is unchanged)
    train = exp.scenario.tasks[0].train
    first = m.training_step(train[:6])
    assert set(first) == {"cls"} and len(m.buffer) == 6 and m.buffer.seen == 6
    logits, _ = m.infer(train[:6])
    assert torch.equal(m.buffer.indices, train[:6])
    assert torch.allclose(m.buffer.logits, logits, atol=1e-6)
    terms = m.training_step(train[6:12])
    assert float(terms["der"].detach()) == pytest.approx(0.0, abs=1e-10) and "der_cls" in terms
    # reservoir: never more than memory.size, every sample offered counted
    for s in range(12, len(train), 6):
        m.training_step(train[s:s + 6])
    assert len(m.buffer) == min(8, len(train)) and m.buffer.seen == len(train)
    # after the classifier grows, old rows keep their width and are matched on it only
    m.begin_task(1)
    terms = m.training_step(exp.scenario.tasks[1].train[:6])
    assert float(terms["der"].detach()) == pytest.approx(0.0, abs=1e-10)
    assert m.buffer.logits.shape[1] == 4 and set(m.buffer.widths.tolist()) <= {2, 4}


def test_icarl_predicts_by_nearest_class_mean(fake_stamps, cache, tmp_path):
    exp = experiment(fake_stamps, cache, tmp_path, "icarl", **{"train.epochs": 1})
    exp.train_task(0)
    m = exp.method
    # class means: mean of the exemplars' normalised z_joint, normalised
    z = F.normalize(m.memory.old_z, dim=1)
    targets = m.targets(m.memory.indices())
    for c in (0, 1):
        assert torch.allclose(m.class_means[c], F.normalize(z[targets == c].mean(0), dim=0), atol=1e-6)
    # a constructed case: two samples, means placed on their own representations, swapped
    idx = exp.scenario.tasks[0].test[:2]
    _, zs = m.infer(idx)
    m.class_means = F.normalize(zs[[1, 0]], dim=1)
    exp.model.eval()
    scores = m.predict(m.fetch(idx))
    assert scores.argmax(1).tolist() == [1, 0]
    zn = F.normalize(zs, dim=1)
    assert torch.allclose(scores, -torch.cdist(zn, m.class_means) ** 2, atol=1e-5)
    # a class without exemplars is never predicted
    m.class_means = torch.stack([m.class_means[0], torch.full_like(m.class_means[0], float("nan"))])
    assert m.predict(m.fetch(idx)).argmax(1).tolist() == [0, 0]


STATEFUL = ["er", "lwf", "ewc", "derpp", "icarl"]


@pytest.mark.parametrize("method", STATEFUL)
def test_state_round_trips_through_a_checkpoint(method, fake_stamps, cache, tmp_path):
    exp = experiment(fake_stamps, cache, tmp_path, method, **{"train.epochs": 1})
    exp.train_task(0)
    exp.method.begin_task(1)
    exp.method.training_step(exp.scenario.tasks[1].train[:6])
    meta, tensors = exp.method.state()
    save_checkpoint(tmp_path / "m", tensors, {"method": meta})
    loaded, lmeta = load_checkpoint(tmp_path / "m")
    other = type(exp.method)(exp.cfg, exp.model, exp.data, exp.scenario, exp.device)
    other.load_state(lmeta["method"], loaded)
    meta2, tensors2 = other.state()
    assert json.loads(json.dumps(meta2)) == lmeta["method"]
    assert tensors2.keys() == tensors.keys()
    for k in tensors:
        assert torch.equal(tensors2[k], tensors[k]), k


@pytest.mark.parametrize("method", ["lwf", "ewc", "derpp", "icarl", "l2p", "dualprompt", "codaprompt"])
def test_interrupted_run_resumes_bit_identically(method, fake_stamps, cache, tmp_path, monkeypatch):
    o = small(fake_stamps, cache, tmp_path / "runs", **{"method.name": method, "run.threads": 1})
    cfg = build_config("tuxpaint", o)
    whole = Experiment(cfg, tmp_path / "whole").run()
    monkeypatch.setenv(KILL_ENV, "point=step,task=2,epoch=1,step=2,signal=TERM")
    with pytest.raises(Interrupted):
        Experiment(cfg, tmp_path / "cut").run()
    monkeypatch.delenv(KILL_ENV)
    resumed = Experiment(cfg, tmp_path / "cut").run()
    assert resumed["accuracy_matrix"] == whole["accuracy_matrix"]
    a, _ = load_checkpoint(tmp_path / "whole" / "checkpoints" / "final")
    b, _ = load_checkpoint(tmp_path / "cut" / "checkpoints" / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", BASELINES)
def test_method_runs_domain_incremental(method, fake_stamps, cache, tmp_path):
    o = small(fake_stamps, cache, tmp_path / "runs", **{"method.name": method, "train.epochs": 1})
    results = mmcl.run("tuxpaint-dil", o, run_dir=tmp_path / method)
    assert results["scenario"] == "domain" and [t["domain"] for t in results["tasks"]] == ["fr", "es"]
    R = results["accuracy_matrix"]
    assert len(R) == 2 and all(0.0 <= a <= 1.0 for a in (R[0][0], R[1][0], R[1][1]))
