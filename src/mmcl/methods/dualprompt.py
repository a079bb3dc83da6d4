"""DualPrompt."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcl.methods.prompting import PROMPT_DEFAULTS, PROMPT_FORMER_KEYS, PromptMethod, PromptSettings
from mmcl.model.prompts import Prompter
from mmcl.registry import register_method
from mmcl.settings import setting


class DualPrompter(Prompter):
    """Per modality: a G(eneral)-prompt shared by all tasks at the first method.dualprompt.g_blocks
    prompted blocks, and one E(xpert)-prompt per task with its key at the later blocks. Training
    uses the current task's E-prompt; evaluation picks, per sample, the E-prompt whose key is
    closest to the query among the tasks seen so far. Prompts are prefix-style: inserted at a
    block's input and removed after it."""

    persist = False

    def __init__(self, encoders, cfg, num_tasks: int):
        super().__init__(encoders)
        mc = cfg.method.dualprompt
        blocks = self.blocks
        n_g = int(mc.g_blocks)
        if not 0 <= n_g <= len(blocks):
            raise ValueError(f"method.dualprompt.g_blocks={n_g} must be between 0 and the {len(blocks)} "
                             f"prompted blocks (model.blocks - 1)")
        self.g_blocks, self.e_blocks = blocks[:n_g], blocks[n_g:]
        self.num_tasks, self.seen = num_tasks, 1
        self.train_task = 0
        g = torch.Generator().manual_seed(cfg.run.seed + 2)
        lg, le = int(mc.g_length), int(mc.e_length)
        self.g = nn.ParameterDict({f"{m}_{b}": nn.Parameter(self.init_values((lg, self.in_dims[m][b]), g, m))
                                   for m in self.modalities for b in self.g_blocks})
        # e[m.b][t]: task t's E-prompt at block b; keys[m][t]
        self.e = nn.ModuleDict({f"{m}_{b}": nn.ParameterList(
            [nn.Parameter(self.init_values((le, self.in_dims[m][b]), g, m)) for _ in range(num_tasks)])
            for m in self.modalities for b in self.e_blocks})
        self.keys = nn.ModuleDict({m: nn.ParameterList(
            [nn.Parameter(torch.rand(self.query_dims[m], generator=g) * 2 - 1) for _ in range(num_tasks)])
            for m in self.modalities})

    def similarity(self, m: str, q: Tensor, upto: int) -> Tensor:
        keys = torch.stack(list(self.keys[m][:upto]))
        return F.normalize(q.to(keys.dtype), dim=-1) @ F.normalize(keys, dim=-1).t()  # (rows, upto)

    def forward(self, batch):
        queries = self.query(batch)
        out = {}
        for m in self.modalities:
            q = queries[m]
            if self.training:
                task = torch.full((q.shape[0],), self.train_task, dtype=torch.long, device=q.device)
            else:
                task = self.similarity(m, q, self.seen).argmax(1)
            self.last_selection[m] = task.detach()
            rows = {}
            for b in self.g_blocks:
                p = self.g[f"{m}_{b}"]
                rows[b] = p.unsqueeze(0).expand(q.shape[0], *p.shape)
            for b in self.e_blocks:
                rows[b] = torch.stack(list(self.e[f"{m}_{b}"]))[task]  # (rows, le, D)
            out[m] = rows
        return out


@dataclass
class DualPromptSettings(PromptSettings):
    pull: float = setting("weight of the key-query matching term mean(1 - cos(query, key))", 0.1, minimum=0.0)
    g_length: int = setting("tokens of the shared G-prompt", 5, minimum=1)
    e_length: int = setting("tokens of each task's E-prompt", 20, minimum=1)
    g_blocks: int = setting("prompted blocks that get the G-prompt (the first ones; the later ones get E-prompts). "
                            "Block 1 is cached and never prompted", 1, minimum=0)


@register_method("dualprompt", settings=DualPromptSettings, defaults=PROMPT_DEFAULTS,
                 former_keys={**PROMPT_FORMER_KEYS, "prompt_pull": "pull", "dualprompt_g_length": "g_length",
                              "dualprompt_e_length": "e_length", "dualprompt_g_blocks": "g_blocks"})
class DualPrompt(PromptMethod):
    """DualPrompt: a shared G-prompt in early blocks and task-specific E-prompts chosen by key matching in later blocks, in every modality's frozen encoder (Wang et al., ECCV 2022).

    Rehearsal-free. With model.blocks=3 the G-prompt (length method.dualprompt.g_length) enters
    block 2 and the E-prompts (length method.dualprompt.e_length) block 3, prefix-style (block
    1 is cached). In training task t uses its own E-prompt and its key is pulled towards the
    queries (method.dualprompt.pull * mean(1 - cos)); at evaluation each sample takes the E-prompt
    of the closest key among the tasks seen so far. Loss: cross-entropy over the current task's
    classes (method.dualprompt.train_mask) + the key term. Trains the G-prompts, task t's E-prompts
    and key, the projections, fusion and classifier.
    """

    # mmcl tune: searched beside train.lr (mmcl.tune.COMMON_SPACE), the same number of trials for every method.
    search_space = {"method.dualprompt.pull": {"low": 0.01, "high": 1.0, "log": True}}

    def make_prompter(self):
        return DualPrompter(dict(self.model.encoders), self.cfg, self.num_tasks)

    def start_task(self, t):
        self.model.prompter.train_task = t
        self.model.prompter.seen = t + 1

    def trainable_prompts(self, t):
        pr = self.model.prompter
        return [*pr.g.values(), *(pl[t] for pl in pr.e.values()), *(pl[t] for pl in pr.keys.values())]

    def key_loss(self, queries):
        w = self.settings.pull
        if not w:
            return None
        pr, t = self.model.prompter, self.task
        total = 0.0
        for m, q in queries.items():
            total = total + (1 - F.cosine_similarity(q, pr.keys[m][t].unsqueeze(0), dim=-1)).mean()
        return w * total

    def load_state(self, meta, tensors):
        super().load_state(meta, tensors)
        if self.task >= 0:
            self.start_task(self.task)
