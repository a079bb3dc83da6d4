"""The optimiser of one task, and what the run records about its gradients.

Trainable parameters are named by what they are (``GROUPS``) from their place in MMModel, so
that a group can get its own learning-rate multiplier (``adapter.lr_scale``, SLCA's slow
learner), the adapters a warm-up (``adapter.warmup``), and every run records the gradient
norm of each group per task (issue 13: do the experts and gates learn at all?). The engine
calls these for any method; nothing here knows one.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

__all__ = ["ADAPTER_GROUPS", "GROUPS", "group_grad_norms", "group_of", "make_optimizer", "named_groups"]

GROUPS = ("experts", "gates", "adapter_projections", "projections", "heads", "other")
ADAPTER_GROUPS = frozenset({"experts", "gates", "adapter_projections"})


def group_of(name: str) -> str:
    """The group of an MMModel parameter from its name (``adapters.0.gate.image.weight`` -> gates)."""
    parts = name.split(".")
    if parts[0] == "adapters" and len(parts) > 2:
        return {"experts": "experts", "gate": "gates", "gate_noise": "gates"}.get(parts[2], "adapter_projections")
    if parts[0] in ("proj", "fusion"):
        return "projections"
    if parts[0] == "classifier":
        return "heads"
    return "other"   # prompts, fitted encoders, a method's own modules


def named_groups(model: nn.Module, params: Sequence[nn.Parameter]) -> dict[str, list[nn.Parameter]]:
    """``params`` split into GROUPS (in that order, empty groups left out); a parameter that is
    not the model's (a method's own) goes to 'other'."""
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, list[nn.Parameter]] = {}
    for p in params:
        out.setdefault(group_of(names[id(p)]) if id(p) in names else "other", []).append(p)
    return {g: out[g] for g in GROUPS if g in out}


def make_optimizer(params: Sequence[nn.Parameter], groups: dict[str, list[nn.Parameter]], train_cfg,
                   lr_scales: Mapping[str, float], warmup: float, steps: int):
    """AdamW + the per-task schedule. Without a learning-rate multiplier other than 1 or a
    warm-up: one parameter group and the plain schedulers, as every run before these keys (same
    numbers, same checkpoints). Otherwise one group per name; a group's learning rate is
    ``lr_scales[group]`` (1 if absent) x train.lr, and the adapter groups' rises linearly over
    the first ``warmup`` fraction of the task's steps, on top of the cosine or constant shape.
    The multipliers come from the method (``Method.lr_scales``: adapter.lr_scale for the
    adapters, a method's own, such as SLCA's slow learner, for the others)."""
    tc, steps = train_cfg, max(1, steps)
    scale = {g: float(lr_scales.get(g, 1.0)) for g in groups}
    if all(v == 1.0 for v in scale.values()) and not warmup:
        opt = torch.optim.AdamW(list(params), lr=tc.lr, weight_decay=tc.weight_decay)
        if tc.schedule == "cosine":
            return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    param_groups = [{"params": ps, "name": g, "lr": tc.lr * scale[g]} for g, ps in groups.items()]
    opt = torch.optim.AdamW(param_groups, lr=tc.lr, weight_decay=tc.weight_decay)
    warm = max(1, round(warmup * steps)) if warmup else 0

    def shape(step: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)) if tc.schedule == "cosine" else 1.0

    def factor(w: int):
        return lambda step: shape(step) * (min(1.0, (step + 1) / w) if w else 1.0)

    return opt, torch.optim.lr_scheduler.LambdaLR(
        opt, [factor(warm if g["name"] in ADAPTER_GROUPS else 0) for g in param_groups])


@torch.no_grad()
def group_grad_norms(groups: dict[str, list[nn.Parameter]]) -> dict[str, float]:
    """The L2 norm of each group's current gradients (parameters without one count 0), read
    back in one transfer (this runs every training step)."""
    norms = []
    for ps in groups.values():
        sq = [p.grad.detach().float().pow(2).sum() for p in ps if p.grad is not None]
        norms.append(torch.stack(sq).sum().sqrt() if sq else torch.zeros(()))
    if not norms:
        return {}
    device = norms[0].device
    return dict(zip(groups, torch.stack([n.to(device) for n in norms]).tolist()))
