"""The paper's method (arXiv 2511.06723): cross-modality adapters with expert freezing,
representation alignment and knowledge preservation over a rehearsal memory."""
from __future__ import annotations

import logging

import torch
from torch import Tensor

from mmcl import losses
from mmcl.memory import RehearsalMemory
from mmcl.methods.base import Method
from mmcl.registry import register_method

log = logging.getLogger("mmcl")


@register_method("cma")
class CrossModalityAdapters(Method):
    """Cross-modality MoE adapters + L_cls, L_distil, L_align, L_preserve, expert freezing (Chee et al., ECAI 2025)."""

    # mmcl tune: searched beside train.lr (mmcl.tune.COMMON_SPACE), the same number of trials for every method.
    search_space = {"loss.distil": {"low": 0.1, "high": 10.0, "log": True}, "loss.align": {"low": 0.1, "high": 10.0, "log": True}, "loss.preserve": {"low": 0.1, "high": 10.0, "log": True}}

    def __init__(self, cfg, model, data, scenario, device):
        super().__init__(cfg, model, data, scenario, device)
        self.memory = RehearsalMemory(cfg.memory.size, cfg.memory.selection)
        self.usage_history: list[list[list[float]]] = []   # task -> block -> expert share
        self.frozen_history: list[list[list[int]]] = []    # task -> block -> frozen expert ids
        self.current_old_logits: Tensor | None = None      # distil.on_current targets, by sample

    # -- task boundaries ------------------------------------------------------------------------
    def begin_task(self, t: int) -> None:
        old_classes = self.scenario.seen_classes(t - 1) if t > 0 else 0
        super().begin_task(t)
        for adapter in self.model.adapters:
            adapter.reset_usage()
        self.current_old_logits = None
        if self.cfg.loss.distil_on_current and t > 0 and old_classes:
            # Old outputs of the current task's data, computed once before any update.
            self.current_old_logits = self.old_outputs_of_task(t)

    def end_task(self, t: int) -> None:
        self._freeze_experts(t)
        if self.cfg.memory.size > 0:
            self._update_memory(t)

    def _freeze_experts(self, t: int) -> None:
        usage, frozen = [], []
        for b, adapter in enumerate(self.model.adapters):
            share = adapter.usage_share()
            usage.append([round(float(x), 6) for x in share])
            if self.cfg.freeze.enabled:
                adapter.freeze_experts(torch.nonzero(share > self.cfg.freeze.threshold).flatten().tolist())
                if bool(adapter.frozen.all()):
                    log.warning("block %d: all %d experts are frozen after task %d; its adapter has no "
                                "plasticity left (raise freeze.threshold or adapter.num_experts)",
                                b + 1, adapter.num_experts, t + 1)
            frozen.append(torch.nonzero(adapter.frozen).flatten().tolist())
        if self.model.adapters:
            self.usage_history.append(usage)
            self.frozen_history.append(frozen)
            log.info("task %d: frozen experts per block %s", t + 1, frozen)

    def _update_memory(self, t: int) -> None:
        self.update_balanced_memory(self.memory, t)

    # -- training -------------------------------------------------------------------------------
    def training_step(self, idx: Tensor) -> dict[str, Tensor]:
        cfg, lw = self.cfg, self.cfg.loss
        use_memory = self.task > 0 and len(self.memory) > 0
        if use_memory:
            mem_idx, mem_pos = self.memory.sample(cfg.memory.batch_size, self.generator)
            all_idx = torch.cat([idx, mem_idx])
        else:
            all_idx = idx
        out, target = self.forward_batch(all_idx)
        n = len(idx)
        terms = {"cls": losses.classification(out.logits, target)}
        # L_distil: memory rows against their stored old logits, plus the current rows against
        # theirs when distil_on_current computed them (also without a memory).
        old_parts, new_parts = [], []
        if self.current_old_logits is not None:
            cur_old = self.current_old_logits[idx].to(self.device)
            old_parts.append(cur_old)
            new_parts.append(out.logits[:n, :cur_old.shape[1]])
        if use_memory:
            mem_old = self.memory.old_logits[mem_pos].to(self.device)
            old_parts.append(mem_old)
            new_parts.append(out.logits[n:, :mem_old.shape[1]])
        if lw.distil and old_parts:
            terms["distil"] = lw.distil * losses.distillation(torch.cat(new_parts), torch.cat(old_parts), lw.distil_T)
        if use_memory and lw.preserve:
            terms["preserve"] = lw.preserve * losses.preservation(
                self.memory.old_z[mem_pos].to(self.device), out.z_joint[n:], self.task + 1, lw.preserve_tau)
        if lw.align:
            terms["align"] = lw.align * losses.alignment(
                [out.z_mod[m] for m in self.model.modalities], out.z_joint, lw.align_kind, lw.align_tau,
                lw.align_detach_joint)
        if self.model.adapters and cfg.adapter.balance_weight:
            terms["balance"] = cfg.adapter.balance_weight * out.balance
        return terms

    # -- checkpoints ----------------------------------------------------------------------------
    def stores(self):
        return {"memory": self.memory}

    def state(self):
        meta, tensors = super().state()
        meta.update(usage_history=self.usage_history, frozen_history=self.frozen_history)
        if self.current_old_logits is not None:
            tensors["current_old_logits"] = self.current_old_logits
        return meta, tensors

    def load_state(self, meta, tensors):
        super().load_state(meta, tensors)
        self.usage_history = meta["usage_history"]
        self.frozen_history = meta["frozen_history"]
        self.current_old_logits = tensors.get("current_old_logits")
        for adapter in self.model.adapters:
            adapter.apply_frozen()

    def summary(self) -> dict:
        return {"expert_usage": self.usage_history, "frozen_experts": self.frozen_history,
                "memory_size": len(self.memory)}
