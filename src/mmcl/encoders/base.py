"""One block-wise interface for every frozen pre-trained encoder.

An encoder turns a modality's prepared input into tokens ``(batch, N, D)`` with a validity
mask ``(batch, N)`` (bool, True = real token; None when every token is real), in B blocks.
The adapters between blocks only ever see tokens and masks: they never reach into encoder
internals.

    tokens, mask = enc.prefix(inputs)          # tokenizer + block 1 (cacheable: frozen, exact)
    for b in range(1, enc.num_blocks):
        tokens, mask = enc.forward_block(b, tokens, mask)

``inputs`` is the dict of tensors the data set prepared for this modality (its keys are
``enc.input_keys``), with a leading batch dimension.

Encoders are frozen by construction: all parameters have requires_grad=False and the module
stays in eval mode whatever ``train()`` is called with.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def split_layers(n_layers: int, n_blocks: int, what: str = "encoder") -> list[list[int]]:
    """Split layer indices 0..n_layers-1 into n_blocks contiguous, near-equal groups."""
    if not 1 <= n_blocks <= n_layers:
        raise ValueError(f"model.blocks={n_blocks} must be between 1 and the {n_layers} layers of {what}")
    return [list(map(int, g)) for g in np.array_split(np.arange(n_layers), n_blocks)]


class BlockEncoder(nn.Module):
    """Base class: subclasses set ``modality``, ``input_keys``, ``dims`` and implement
    ``prefix`` and ``forward_block``."""

    modality: str = ""
    input_keys: tuple[str, ...] = ()
    # How prompt methods (l2p, dualprompt, codaprompt) insert prompts into a block's input:
    # "prepend" tokens to the sequence (transformers, recurrent encoders) or "add" them to every
    # token (convolutional encoders, whose token grid cannot grow). See mmcl.model.prompts.
    prompt_mode: str = "prepend"
    # An encoder without public pre-trained weights may ask to be trained on task 1 and then
    # frozen (the engine runs mmcl.encoders.fit for it); its settings set these two.
    fit_on_first_task: bool = False
    fit_epochs: int = 0

    def __init__(self, num_blocks: int):
        super().__init__()
        self.num_blocks = num_blocks
        self.dims: list[int] = []  # token width after each block (len == num_blocks)

    # -- the interface ------------------------------------------------------------------------
    def prefix(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokenizer + block 1: prepared inputs -> tokens after block 1."""
        raise NotImplementedError

    def forward_block(self, b: int, tokens: torch.Tensor, mask: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Block b (1 <= b < num_blocks, 0-indexed) on the tokens after block b-1."""
        raise NotImplementedError

    def identity(self) -> str:
        """A string that changes whenever the prefix output would (cache key)."""
        raise NotImplementedError

    @torch.no_grad()
    def randomize_weights(self, seed: int) -> None:
        """A weak encoder (encoders.<m>.random_weights): every weight replaced by a seeded random
        draw, the architecture kept. Convolutions and linear layers get He (variance-preserving)
        normal weights and zero biases, so the random features neither vanish nor explode over
        the frozen depth (PyTorch's default initialisation shrinks the variance about six-fold
        per ReLU layer: after a few dozen layers, below what the fp16 prefix cache holds); every
        other submodule with ``reset_parameters`` (normalisation, embedding, recurrent layers)
        re-initialises itself, running statistics included; any other parameter (a
        transformer's class token or position table) is drawn from N(0, 0.02^2). The identity
        (the cache key) says so."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif module is not self and callable(getattr(module, "reset_parameters", None)):
                    module.reset_parameters()
                else:
                    for p in module.parameters(recurse=False):
                        p.normal_(0.0, 0.02)
        self._stamp = f"{getattr(self, '_stamp', '')}|random-weights:{seed}"

    # -- frozen by construction ---------------------------------------------------------------
    def freeze(self) -> BlockEncoder:
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> BlockEncoder:  # noqa: ARG002 - always eval
        return super().train(False)

    def pooled(self, item: dict, groups: int = 1) -> torch.Tensor:
        """A modality's batch entry (cached prefix ``tokens`` + ``mask``, or the encoder's
        inputs) -> the frozen model's pooled last-block features (batch, D), no adapters."""
        tokens, mask = (item["tokens"], item.get("mask")) if "tokens" in item else self.prefix(item)
        for b in range(1, self.num_blocks):
            tokens, mask = self.run_block(b, tokens, mask, groups)
        return masked_mean(tokens, mask)

    def run_block(self, b: int, tokens: torch.Tensor, mask: torch.Tensor | None, groups: int = 1
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``forward_block`` with the rows run in up to ``groups`` groups of similar length, each
        trimmed to its longest row, so padded positions are not computed (they come back as
        zeros). Exact for the real tokens because every encoder here computes each sample
        alone and ignores padding (masked attention, unidirectional LSTM, no mask at all)."""
        parts = length_groups(mask, groups)
        if parts is None:
            return self.forward_block(b, tokens, mask)
        lengths, order = parts
        N = tokens.shape[1]
        if len(order) == 1:  # one group: trim the trailing padding only, no reordering
            n = max(int(lengths.max()), 1)
            out, _ = self.forward_block(b, tokens[:, :n], mask[:, :n])
            return F.pad(out, (0, 0, 0, N - n)), mask
        outs = []
        for idx in order:
            n = max(int(lengths[idx[0]]), 1)
            out, _ = self.forward_block(b, tokens[idx, :n], mask[idx, :n])
            outs.append(F.pad(out, (0, 0, 0, N - n)))
        return torch.cat(outs)[torch.argsort(torch.cat(order))], mask

    def forward(self, inputs):  # full pass without adapters (features, probes)
        tokens, mask = self.prefix(inputs)
        for b in range(1, self.num_blocks):
            tokens, mask = self.forward_block(b, tokens, mask)
        return tokens, mask


def valid_lengths(mask: torch.Tensor) -> torch.Tensor:
    """(R, N) bool -> (R,) long: one past the last valid position (0 for an all-padding row)."""
    n = mask.shape[1]
    pos = torch.arange(1, n + 1, device=mask.device).expand_as(mask)
    return (pos * mask).amax(dim=1) if n else torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over valid tokens: (B, N, D), (B, N) -> (B, D)."""
    if mask is None:
        return tokens.mean(dim=1)
    w = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * w).sum(1) / w.sum(1).clamp_min(1.0)


def length_groups(mask: torch.Tensor | None, k: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None:
    """Rows of a padded batch in up to k groups of similar length: -> (valid_lengths(mask), the
    groups' row indices, longest rows first, cut by cut_sizes), or None when there is nothing
    to skip (k <= 1, no mask, no padding, one row). Lengths count to the last valid position,
    so trimming a group to its longest row keeps every valid token wherever the padding is."""
    if k <= 1 or mask is None or mask.shape[0] < 2 or bool(mask.all()):
        return None
    lengths = valid_lengths(mask)
    order = torch.argsort(lengths, descending=True, stable=True)
    return lengths, order.split(cut_sizes(lengths[order].tolist(), k))


def cut_sizes(lengths: list[int], k: int) -> list[int]:
    """Sizes of at most k consecutive groups of ``lengths`` (sorted in decreasing order) that
    minimise the padded work sum_groups (group size x its first, longest, length)."""
    n = len(lengths)
    ln = np.asarray(lengths, dtype=np.float64)
    start, end = np.arange(n)[:, None], np.arange(n + 1)[None, :]
    best = np.full(n + 1, np.inf)  # best[j]: least work for the first j rows in g groups
    best[0] = 0.0
    cuts, totals = [], []
    for _ in range(min(k, n)):
        # a last group of rows [i, j) costs ln[i] * (j - i) on top of best[i] with one group fewer
        cand = np.where(start < end, best[:n, None] + ln[:, None] * (end - start), np.inf)
        cuts.append(cand.argmin(0))
        best = cand.min(0)
        totals.append(best[n])
    groups = int(np.argmin(totals)) + 1
    sizes, j = [], n
    for g in range(groups, 0, -1):
        i = int(cuts[g - 1][j])
        sizes.append(j - i)
        j = i
    return sizes[::-1]
