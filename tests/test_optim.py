"""mmcl.optim: parameter groups by name, the adapters' learning-rate multiplier and warm-up,
gradient norms per group."""
import math
from types import SimpleNamespace

import pytest
import torch

from mmcl.optim import group_grad_norms, group_of, make_optimizer, named_groups


def test_groups_follow_the_model_names():
    assert group_of("adapters.0.experts.3.q") == "experts"
    assert group_of("adapters.2.gate.image.weight") == "gates"
    assert group_of("adapters.2.gate_noise.text.weight") == "gates"
    assert group_of("adapters.1.down.speech.bias") == "adapter_projections"
    assert group_of("proj.image.0.weight") == "projections" and group_of("fusion.1.bias") == "projections"
    assert group_of("classifier.heads.0.weight") == "heads"
    assert group_of("prompter.keys") == "other"


def tiny_model():
    torch.manual_seed(0)
    m = torch.nn.Module()
    m.adapters = torch.nn.ModuleList([torch.nn.Module()])
    m.adapters[0].experts = torch.nn.Linear(3, 3)
    m.adapters[0].gate = torch.nn.Linear(3, 2)
    m.classifier = torch.nn.Linear(3, 2)
    return m


def cfg(schedule="cosine"):
    return SimpleNamespace(lr=0.1, weight_decay=0.0, schedule=schedule)


def test_plain_settings_keep_one_group_and_the_plain_scheduler():
    m = tiny_model()
    params = list(m.parameters())
    opt, sched = make_optimizer(params, named_groups(m, params), cfg(), {"experts": 1.0, "gates": 1.0}, 0.0, 10)
    assert len(opt.param_groups) == 1 and isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_adapter_multiplier_and_warmup(schedule):
    m = tiny_model()
    params = list(m.parameters())
    groups = named_groups(m, params)
    assert list(groups) == ["experts", "gates", "heads"]
    scales = {"experts": 0.5, "gates": 0.5}
    opt, sched = make_optimizer(params, groups, cfg(schedule), scales, 0.4, 10)   # warm-up: 4 of 10 steps
    lrs = []
    for _ in range(10):
        lrs.append({g["name"]: g["lr"] for g in opt.param_groups})
        opt.step()
        sched.step()
    shape = [0.5 * (1 + math.cos(math.pi * s / 10)) if schedule == "cosine" else 1.0 for s in range(10)]
    for s in range(10):
        assert lrs[s]["heads"] == pytest.approx(0.1 * shape[s])
        assert lrs[s]["experts"] == pytest.approx(0.1 * 0.5 * shape[s] * min(1.0, (s + 1) / 4))
        assert lrs[s]["gates"] == lrs[s]["experts"]


def test_group_grad_norms():
    m = tiny_model()
    groups = named_groups(m, list(m.parameters()))
    m.classifier(torch.ones(1, 3)).sum().backward()
    norms = group_grad_norms(groups)
    expected = torch.cat([p.grad.flatten() for p in m.classifier.parameters()]).norm()
    assert norms["heads"] == pytest.approx(float(expected)) and norms["experts"] == 0.0
