"""What the prompt methods (l2p, dualprompt, codaprompt) share: the frozen-query table, the
training loss with old-class logits masked, and which prompt parameters train in which task.

The prompts themselves live in a prompter module attached to the model (``model.prompter``,
see mmcl.model.prompts), so they are saved, loaded and moved with the model's learned state.
The model runs without cross-modality adapters and memory (PROMPT_DEFAULTS):
prompts in every modality's frozen encoder, then the same per-modality projections, late
fusion and classifier as every other baseline.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmcl import losses
from mmcl.data.batches import to_device
from mmcl.methods.base import ADAPTER_FREE, Method
from mmcl.settings import setting

# The prompt methods are rehearsal-free and prompt the frozen encoders instead of adapting them.
PROMPT_DEFAULTS = {**ADAPTER_FREE, "memory": {"size": 0}}
# Keys of the earlier release that every prompt method's section took over.
PROMPT_FORMER_KEYS = {"prompt_train_mask": "train_mask"}


@dataclass
class PromptSettings:
    """What every prompt method's settings section holds."""
    train_mask: bool = setting("in class-incremental tasks, train on the current task's classes only (old-class "
                               "logits masked), as the three papers do", True)


class PromptMethod(Method):
    """Base class; subclasses implement ``make_prompter``, ``trainable_prompts(t)`` and
    optionally ``key_loss(queries)``."""

    def __init__(self, cfg, model, data, scenario, device):
        super().__init__(cfg, model, data, scenario, device)
        if model.adapters:
            raise ValueError(f"method.name={cfg.method.name} inserts prompts into the frozen encoders and runs "
                             "without cross-modality adapters: set model.adapters=false")
        self.num_tasks = len(scenario.tasks)
        # Prompters draw their initial values from their own generators (seeded by run.seed).
        model.prompter = self.make_prompter().to(device)
        model.prompter.query = self.queries
        self._table: dict[str, Tensor] | None = None

    def make_prompter(self):
        raise NotImplementedError

    def on_encoders_changed(self) -> None:
        self._table = None  # the queries come from the frozen encoders: recompute them

    def trainable_prompts(self, t: int) -> list[torch.nn.Parameter]:
        """The prompter's parameters that train in task t (the others keep requires_grad=False)."""
        raise NotImplementedError

    def key_loss(self, queries: dict[str, Tensor]) -> Tensor | None:
        """A loss pulling the chosen keys towards the batch's queries (L2P, DualPrompt); the
        queries of the rows that have each modality (a masked modality's are left out)."""
        return None

    # -- queries: the frozen encoders' pooled output without prompts --------------------------
    @torch.no_grad()
    def frozen_features(self, batch: dict) -> dict[str, Tensor]:
        return {m: self.model.encoders[m].pooled(batch[m]).float() for m in self.model.modalities}

    @torch.no_grad()
    def query_table(self) -> dict[str, Tensor]:
        """Every sample's query, computed once (frozen encoders, no augmentation: exact)."""
        if self._table is None:
            rows: dict[str, list[Tensor]] = {m: [] for m in self.model.modalities}
            everything = torch.arange(len(self.data))
            bs = self.cfg.eval.batch_size
            for s in range(0, len(everything), bs):
                feats = self.frozen_features(to_device(self.data.batch(everything[s:s + bs]), self.device))
                for m, f in feats.items():
                    rows[m].append(f.cpu())
            self._table = {m: torch.cat(r) for m, r in rows.items()}
        return self._table

    def queries(self, batch: dict) -> dict[str, Tensor]:
        """batch -> {modality: (rows, Dq)}: from the table by sample index, or computed."""
        if "index" not in batch:
            return self.frozen_features(batch)
        table, idx = self.query_table(), batch["index"].cpu()
        return {m: t.index_select(0, idx).to(self.device) for m, t in table.items()}

    # -- the contract ---------------------------------------------------------------------------
    def begin_task(self, t: int) -> None:
        super().begin_task(t)
        self.query_table()
        self.start_task(t)
        self.set_trainable(t)

    def start_task(self, t: int) -> None:
        """Initialise what task t adds (before its parameters start to train)."""

    def set_trainable(self, t: int) -> None:
        train = {id(p) for p in self.trainable_prompts(t)}
        for p in self.model.prompter.parameters():
            p.requires_grad_(id(p) in train)

    def training_step(self, idx: Tensor) -> dict[str, Tensor]:
        out, target = self.forward_batch(idx)
        # As in L2P / DualPrompt / CODA-Prompt: train on the current task's classes only.
        logits = self.current_task_logits(out.logits) if self.settings.train_mask else out.logits
        terms = {"cls": losses.classification(logits, target)}
        queries = self.queries({"index": idx})
        if out.present is not None:  # a masked modality's query pulls no key
            queries = {m: q[out.present[m].to(q.device)] for m, q in queries.items()}
            queries = {m: q for m, q in queries.items() if len(q)}
        pull = self.key_loss(queries)
        if pull is not None:
            # Computed on the whole batch by every rank of a data-parallel run, whose gradients
            # are summed: its gradient is scaled so the sum is the one-process gradient, its
            # value (logged) is the one-process value.
            w = self.dist.world_size
            terms["key"] = pull if w == 1 else pull / w + (pull - pull / w).detach()
        return terms

    def load_state(self, meta, tensors):
        super().load_state(meta, tensors)
        if self.task >= 0:  # a resumed task does not call begin_task again
            self.set_trainable(self.task)

