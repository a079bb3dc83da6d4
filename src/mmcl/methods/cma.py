"""The paper's method (arXiv 2511.06723): cross-modality adapters with expert freezing,
representation alignment and knowledge preservation over a rehearsal memory."""
from __future__ import annotations

import logging

import torch
from torch import Tensor

from mmcl import losses, routing_stats
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
        self.counts_history: list[list[list[int]]] = []    # task -> block -> the counts the rule used
        self.by_class_history: list[list[list[list[int]]]] = []  # task -> block -> class -> expert
        self.diagnostics_history: list[list[dict]] = []    # task -> block -> routing_stats.summarize_block
        self.scales_history: list[list[list[float]]] = []  # task -> block -> [clean logit std, noise std]
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
        clean = None
        if self.model.adapters and (self.cfg.adapter.diagnostics or self.cfg.freeze.usage == "clean"):
            clean = self.clean_routing(self.scenario.tasks[t].train)
        self._freeze_experts(t, clean)
        if self.cfg.memory.size > 0:
            self._update_memory(t)

    @torch.no_grad()
    def clean_routing(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Noise-free routing (eval mode) of samples ``idx``, one class at a time: the choice
        counts (blocks, classes, E) by output class, and (blocks, 2) the mean clean gate-logit
        std and noise std. Every rank of a data-parallel run computes all of it (same result)."""
        model, was = self.model, self.model.training
        model.eval()
        targets = self.targets(idx).cpu()
        E = model.adapters[0].num_experts
        table = torch.zeros(len(model.adapters), model.classifier.num_classes, E, dtype=torch.float64)
        scales, n_batches = torch.zeros(len(model.adapters), 2, dtype=torch.float64), 0
        bs = self.cfg.eval.batch_size
        for c in targets.unique().tolist():
            rows = idx[targets == c]
            for s in range(0, len(rows), bs):
                out = model(self.fetch(rows[s:s + bs]))
                for b, u in enumerate(out.usage):
                    table[b, c] += u.double().cpu()
                scales += torch.stack(out.scales).double().cpu()
                n_batches += 1
        model.train(was)
        return table, scales / max(1, n_batches)

    def _experts_to_freeze(self, share: Tensor, frozen: Tensor) -> list[int]:
        fc, E = self.cfg.freeze, share.numel()
        if fc.rule == "relative":
            return torch.nonzero(share > fc.relative / E).flatten().tolist()
        if fc.rule == "top":
            order = [int(e) for e in torch.argsort(share, descending=True, stable=True)
                     if not frozen[e] and share[e] > 0]
            return order[:fc.top]
        return torch.nonzero(share > fc.threshold).flatten().tolist()

    def _freeze_experts(self, t: int, clean: tuple[Tensor, Tensor] | None = None) -> None:
        usage, frozen, counts, by_class, diag = [], [], [], [], []
        diagnose = clean is not None and self.cfg.adapter.diagnostics  # clean usage alone needs no tables
        for b, adapter in enumerate(self.model.adapters):
            before = torch.nonzero(adapter.frozen).flatten().tolist()
            if self.cfg.freeze.usage == "clean":
                c = clean[0][b].sum(0)
                share = (c / c.sum().clamp_min(1)).float()
            else:
                c, share = adapter.usage_count.cpu(), adapter.usage_share()
            usage.append([round(float(x), 6) for x in share])
            counts.append([int(round(float(x))) for x in c])
            if diagnose:
                by_class.append(clean[0][b].round().long().tolist())
                diag.append(routing_stats.summarize_block(c, clean[0][b], before))
            if self.cfg.freeze.enabled:
                adapter.freeze_experts(self._experts_to_freeze(share, adapter.frozen))
                if bool(adapter.frozen.all()):
                    log.warning("block %d: all %d experts are frozen after task %d; its adapter has no "
                                "plasticity left (raise freeze.threshold or adapter.num_experts)",
                                b + 1, adapter.num_experts, t + 1)
            frozen.append(torch.nonzero(adapter.frozen).flatten().tolist())
        if self.model.adapters:
            self.usage_history.append(usage)
            self.frozen_history.append(frozen)
            self.counts_history.append(counts)
            if diagnose:
                self.by_class_history.append(by_class)
                self.diagnostics_history.append(diag)
                self.scales_history.append([[round(float(x), 6) for x in s] for s in clean[1]])
                log.info("task %d: routing uniform-test p %s, class-dependence p %s", t + 1,
                         " ".join(f"{d['uniform_p']:.2g}" for d in diag), " ".join(
                             f"{d['class_p']:.2g}" if d["class_p"] is not None else "-" for d in diag))
            log.info("task %d: frozen experts (numbered from 1) per block: %s", t + 1,
                     "; ".join(f"block {b + 1}: {', '.join(str(e + 1) for e in ids) or 'none'}"
                               for b, ids in enumerate(frozen)))

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
        out, target = self.forward_batch(all_idx, len(idx))
        n = len(idx)
        terms = {"cls": self.replay_classification(out.logits, target, n)}
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
            groups = target if lw.align_negatives == "other_class" else None
            mods = self.model.modalities
            terms["align"] = lw.align * losses.alignment(
                [out.z_mod[m] for m in mods], out.z_joint, lw.align_kind, lw.align_tau, lw.align_detach_joint,
                groups, None if out.present is None else [out.present[m] for m in mods])
        if self.model.adapters and cfg.adapter.balance_weight:
            terms["balance"] = cfg.adapter.balance_weight * out.balance
        return terms

    # -- checkpoints ----------------------------------------------------------------------------
    def stores(self):
        return {"memory": self.memory}

    def state(self):
        meta, tensors = super().state()
        meta.update(usage_history=self.usage_history, frozen_history=self.frozen_history,
                    counts_history=self.counts_history, by_class_history=self.by_class_history,
                    diagnostics_history=self.diagnostics_history, scales_history=self.scales_history)
        if self.current_old_logits is not None:
            tensors["current_old_logits"] = self.current_old_logits
        return meta, tensors

    def load_state(self, meta, tensors):
        super().load_state(meta, tensors)
        self.usage_history = meta["usage_history"]
        self.frozen_history = meta["frozen_history"]
        for name in ("counts_history", "by_class_history", "diagnostics_history", "scales_history"):
            setattr(self, name, meta.get(name, []))  # (absent in checkpoints of earlier releases)
        self.current_old_logits = tensors.get("current_old_logits")
        for adapter in self.model.adapters:
            adapter.apply_frozen()

    def summary(self) -> dict:
        return {"expert_usage": self.usage_history, "frozen_experts": self.frozen_history,
                "expert_usage_counts": self.counts_history, "expert_usage_by_class": self.by_class_history,
                "routing_diagnostics": self.diagnostics_history, "gate_scales": self.scales_history,
                "memory_size": len(self.memory)}

    def task_record(self) -> dict:
        """The last task's routing for its metrics.jsonl line."""
        names = {"expert_usage": self.usage_history, "frozen_experts": self.frozen_history,
                 "expert_usage_counts": self.counts_history, "routing_diagnostics": self.diagnostics_history,
                 "gate_scales": self.scales_history}
        return {k: v[-1] for k, v in names.items() if v}
