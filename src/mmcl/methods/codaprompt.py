"""CODA-Prompt."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcl.methods.prompting import PROMPT_DEFAULTS, PROMPT_FORMER_KEYS, PromptMethod, PromptSettings
from mmcl.model.prompts import Prompter, orthogonal_rows
from mmcl.registry import register_method
from mmcl.settings import setting


class CodaPrompter(Prompter):
    """Per modality and prompted block: method.codaprompt.components new prompt components per task,
    each with a key and an attention vector. A sample's prompt is the weighted sum of the
    components of the tasks seen so far, with weights cos(query * attention_c, key_c)
    (end-to-end trainable, no selection). Prefix-style (removed after the block)."""

    persist = False

    def __init__(self, encoders, cfg, num_tasks: int):
        super().__init__(encoders)
        mc = cfg.method.codaprompt
        self.c, self.length, self.num_tasks = int(mc.components), int(mc.length), num_tasks
        self.seen = 1
        g = torch.Generator().manual_seed(cfg.run.seed + 3)
        self.p = nn.ModuleDict()
        self.k = nn.ModuleDict()
        self.a = nn.ModuleDict()
        for m in self.modalities:
            for b in self.blocks:
                key = f"{m}_{b}"
                d, dq = self.in_dims[m][b], self.query_dims[m]
                self.p[key] = nn.ParameterList([nn.Parameter(self.init_values((self.c, self.length, d), g, m))
                                                for _ in range(num_tasks)])
                self.k[key] = nn.ParameterList([nn.Parameter(torch.rand(self.c, dq, generator=g) * 2 - 1)
                                                for _ in range(num_tasks)])
                self.a[key] = nn.ParameterList([nn.Parameter(torch.rand(self.c, dq, generator=g) * 2 - 1)
                                                for _ in range(num_tasks)])

    @torch.no_grad()
    def orthogonalise(self, t: int) -> None:
        """Task t's new components, keys and attention vectors made orthonormal to each other and
        to the earlier tasks' (CODA-Prompt's Gram-Schmidt initialisation)."""
        for key in self.p:
            m = key.rsplit("_", 1)[0]
            lists = [self.k[key], self.a[key]] + ([] if self.add_mode[m] else [self.p[key]])
            for plist in lists:
                new = plist[t]
                old = torch.cat([x.reshape(self.c, -1) for x in plist[:t]]) if t else new.new_zeros(0, new[0].numel())
                new.copy_(orthogonal_rows(new.reshape(self.c, -1).float(), old.float()).reshape(new.shape))

    def weights(self, key: str, q: Tensor) -> Tensor:
        k = torch.cat(list(self.k[key][:self.seen]))
        a = torch.cat(list(self.a[key][:self.seen]))
        qa = F.normalize(q.to(k.dtype).unsqueeze(1) * a.unsqueeze(0), dim=-1)  # (rows, C, dq)
        return (qa * F.normalize(k, dim=-1).unsqueeze(0)).sum(-1)  # (rows, C)

    def forward(self, batch):
        queries = self.query(batch)
        out = {}
        for m in self.modalities:
            rows = {}
            for b in self.blocks:
                key = f"{m}_{b}"
                alpha = self.weights(key, queries[m])
                comps = torch.cat(list(self.p[key][:self.seen]))  # (C, length, D)
                rows[b] = torch.einsum("nc,cld->nld", alpha, comps)
            out[m] = rows
        return out


@dataclass
class CodaPromptSettings(PromptSettings):
    components: int = setting("prompt components added per task and per modality and block", 10, minimum=1)
    length: int = setting("tokens per component", 8, minimum=1)
    ortho: float = setting("weight of the orthogonality penalty (0: Gram-Schmidt initialisation only)", 0.0,
                           minimum=0.0)


@register_method("codaprompt", settings=CodaPromptSettings, defaults=PROMPT_DEFAULTS,
                 former_keys={**PROMPT_FORMER_KEYS, "coda_components": "components", "coda_length": "length",
                              "coda_ortho": "ortho"})
class CodaPrompt(PromptMethod):
    """CODA-Prompt: prompts assembled from a growing set of components weighted by attention-based key matching, in every modality's frozen encoder (Smith et al., CVPR 2023).

    Rehearsal-free. Each task adds method.codaprompt.components components (length
    method.codaprompt.length) with keys and attention vectors per modality and prompted block
    (blocks 2..B: block 1 is cached), initialised orthogonal to the earlier ones (Gram-Schmidt);
    only the new ones train, the earlier ones stay frozen. Prompts are prefix-style. Loss:
    cross-entropy over the current task's classes (method.codaprompt.train_mask) plus, when
    method.codaprompt.ortho > 0, the orthogonality penalty ||X X^T - I||^2 on the components, keys and
    attention vectors of the tasks seen so far.
    """

    # mmcl tune: searched beside train.lr (mmcl.tune.COMMON_SPACE), the same number of trials for every method.
    search_space = {"method.codaprompt.ortho": {"low": 0.0, "high": 1.0}}

    def make_prompter(self):
        return CodaPrompter(dict(self.model.encoders), self.cfg, self.num_tasks)

    def start_task(self, t):
        self.model.prompter.seen = t + 1
        self.model.prompter.orthogonalise(t)

    def trainable_prompts(self, t):
        pr = self.model.prompter
        return [plist[t] for group in (pr.p, pr.k, pr.a) for plist in group.values()]

    def key_loss(self, queries):
        w = self.settings.ortho
        if not w:
            return None
        pr, total = self.model.prompter, 0.0
        for group in (pr.p, pr.k, pr.a):
            for plist in group.values():
                x = torch.cat([p.reshape(pr.c, -1) for p in plist[:pr.seen]])
                gram = x @ x.t()
                total = total + ((gram - torch.eye(len(x), device=x.device)) ** 2).mean()
        return w * total

    def load_state(self, meta, tensors):
        super().load_state(meta, tensors)
        if self.task >= 0:
            self.model.prompter.seen = self.task + 1
