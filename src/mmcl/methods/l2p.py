"""Learning to Prompt (L2P)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcl.methods.prompting import PROMPT_DEFAULTS, PROMPT_FORMER_KEYS, PromptMethod, PromptSettings
from mmcl.model.prompts import Prompter
from mmcl.registry import register_method
from mmcl.settings import setting


class L2PPrompter(Prompter):
    """Per modality a pool of method.l2p.pool prompts (length method.l2p.length) with keys; each
    sample picks the method.l2p.top_k prompts whose keys are closest (cosine) to its query. The
    chosen prompts are prepended once, at the first prompted block, and travel through the
    remaining blocks (prompt tuning; ``persist``)."""

    persist = True

    def __init__(self, encoders, cfg):
        super().__init__(encoders)
        mc = cfg.method.l2p
        self.pool, self.length, self.top_k = int(mc.pool), int(mc.length), int(mc.top_k)
        if not 1 <= self.top_k <= self.pool:
            raise ValueError(f"method.l2p.top_k={self.top_k} must be between 1 and method.l2p.pool={self.pool}")
        g = torch.Generator().manual_seed(cfg.run.seed + 1)
        b = self.first_block
        self.prompts = nn.ParameterDict({m: nn.Parameter(self.init_values(
            (self.pool, self.length, self.in_dims[m][b]), g, m)) for m in self.modalities})
        self.keys = nn.ParameterDict({m: nn.Parameter(torch.rand(self.pool, self.query_dims[m], generator=g) * 2 - 1)
                                      for m in self.modalities})

    def similarity(self, m: str, q: Tensor) -> Tensor:
        return F.normalize(q, dim=-1) @ F.normalize(self.keys[m], dim=-1).t()  # (rows, pool)

    def choose(self, m: str, q: Tensor) -> Tensor:
        return self.similarity(m, q.to(self.keys[m].dtype)).topk(self.top_k, dim=1).indices  # (rows, top_k)

    def forward(self, batch):
        queries = self.query(batch)
        out = {}
        for m in self.modalities:
            chosen = self.choose(m, queries[m])
            self.last_selection[m] = chosen.detach()
            p = self.prompts[m][chosen]  # (rows, top_k, length, D)
            out[m] = {self.first_block: p.reshape(p.shape[0], -1, p.shape[-1])}
        return out


@dataclass
class L2PSettings(PromptSettings):
    pull: float = setting("weight of the key-query matching term sum(1 - cos(query, key))", 0.1, minimum=0.0)
    pool: int = setting("prompts in each modality's pool (M)", 10, minimum=1)
    length: int = setting("tokens per prompt (L)", 5, minimum=1)
    top_k: int = setting("prompts chosen per sample (N)", 5, minimum=1)


@register_method("l2p", settings=L2PSettings, defaults=PROMPT_DEFAULTS,
                 former_keys={**PROMPT_FORMER_KEYS, "prompt_pull": "pull", "l2p_pool": "pool", "l2p_length": "length",
                              "l2p_top_k": "top_k"})
class LearningToPrompt(PromptMethod):
    """Learning to Prompt: a shared pool of prompts chosen per sample by key-query matching, in every modality's frozen encoder (Wang et al., CVPR 2022).

    Rehearsal-free. The query of a sample is its frozen encoder's pooled output (no prompts);
    the top-k prompts of the modality's pool (cosine between query and keys) are prepended at
    the first prompted block (block 2: block 1 is cached) and removed before pooling. The loss
    is the cross-entropy over the current task's classes (old-class logits masked,
    method.l2p.train_mask) plus method.l2p.pull * sum over chosen keys of (1 - cos(query,
    key)), averaged over the batch and summed over modalities. The whole pool, the keys, the
    projections, fusion and classifier train in every task. Convolutional encoders get additive
    prompts (mmcl.model.prompts).
    """

    # mmcl tune: searched beside train.lr (mmcl.tune.COMMON_SPACE), the same number of trials for every method.
    search_space = {"method.l2p.pull": {"low": 0.01, "high": 1.0, "log": True}}

    def make_prompter(self):
        return L2PPrompter(dict(self.model.encoders), self.cfg)

    def trainable_prompts(self, t):
        return list(self.model.prompter.parameters())

    def key_loss(self, queries):
        w = self.settings.pull
        if not w:
            return None
        pr, total = self.model.prompter, 0.0
        for m, q in queries.items():
            sim = pr.similarity(m, q)
            total = total + (1 - sim.gather(1, sim.detach().topk(pr.top_k, dim=1).indices)).sum(1).mean()
        return w * total
