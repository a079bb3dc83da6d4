"""Prompts for the frozen encoders (L2P, DualPrompt, CODA-Prompt), block-wise.

A prompter is a module the model calls once per forward with the batch; it returns, per
modality, the prompts to insert at the input of some blocks::

    {modality: {block b: Tensor (batch, P, D_b)}}        D_b = width of block b's input tokens

Blocks are counted as in :class:`~mmcl.encoders.base.BlockEncoder` (0-indexed). Block 0 is the
encoder's prefix (tokenizer + first layers), cached on disk at preparation time, so prompts
enter from block 1 on (the original methods insert them from the first transformer layer;
docs/baselines.md lists this deviation).

How a prompt enters a block depends on the encoder (``BlockEncoder.prompt_mode``):

- ``prepend`` (transformers, recurrent encoders): the P prompt vectors are prepended to the
  token sequence (valid in the mask). With ``persist=False`` (prefix-style, DualPrompt and
  CODA-Prompt) they are removed again after that block, so they only steer the block's real
  tokens; with ``persist=True`` (prompt tuning, L2P) they travel through the remaining blocks
  and are removed before pooling. Pooling never sees prompt tokens.
- ``add`` (convolutional encoders, whose tokens are a spatial grid that cannot grow): the mean
  of the P prompt vectors is added to every token, a per-channel shift of the block's input.

Queries: the prompt-selection query of a sample is its frozen encoder's pooled output without
prompts (as in L2P). Encoders are frozen and prepared inputs are not augmented, so the query is
a fixed function of the sample: the method computes it once per sample into a table and the
prompter looks it up by the batch's sample ``index`` (exactly what a second frozen pass would
give, at none of its cost).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def prompt_mode(encoder) -> str:
    return getattr(encoder, "prompt_mode", "prepend")


def inject(encoder, b: int, prompt: Tensor | None, tokens: Tensor, mask: Tensor | None,
           n_carried: int = 0, persist: bool = False) -> tuple[Tensor, Tensor | None, int]:
    """Run block b of ``encoder`` with ``prompt`` (batch, P, D) inserted -> (tokens, mask,
    prompt tokens still at the front of the sequence). ``n_carried`` prompt tokens from an
    earlier block may already lead the sequence (persist=True)."""
    if prompt is None:
        return (*encoder.forward_block(b, tokens, mask), n_carried)
    prompt = prompt.to(tokens.dtype)
    if prompt_mode(encoder) == "add":
        out, mask = encoder.forward_block(b, tokens + prompt.mean(1, keepdim=True), mask)
        return out, mask, n_carried
    p = prompt.shape[1]
    full_mask = None
    if mask is not None:
        full_mask = torch.cat([torch.ones(mask.shape[0], p, dtype=mask.dtype, device=mask.device), mask], 1)
    out, out_mask = encoder.forward_block(b, torch.cat([prompt, tokens], 1), full_mask)
    if persist:
        return out, out_mask, n_carried + p
    return out[:, p:], (None if out_mask is None else out_mask[:, p:]), n_carried


def strip(tokens: Tensor, mask: Tensor | None, n: int) -> tuple[Tensor, Tensor | None]:
    """Remove n leading prompt tokens before pooling."""
    if not n:
        return tokens, mask
    return tokens[:, n:], (None if mask is None else mask[:, n:])


def uniform_(shape, generator: torch.Generator) -> Tensor:
    """L2P's initialisation: U(-1, 1)."""
    return torch.rand(*shape, generator=generator) * 2 - 1


def orthogonal_rows(new: Tensor, old: Tensor) -> Tensor:
    """Gram-Schmidt: the rows of ``new`` (n, d) made orthonormal to each other and to the rows
    of ``old`` (m, d) (CODA-Prompt's initialisation of a task's new components). Rows beyond
    the d that can be orthogonal are only normalised."""
    basis: list[Tensor] = []

    def reduce(r: Tensor) -> Tensor:
        if len(basis) < r.shape[0]:
            for q in basis:
                r = r - (r @ q) * q
            if float(r.norm()) > 1e-6:
                basis.append(F.normalize(r, dim=0))
        return F.normalize(r, dim=0)

    for r in old:  # an orthonormal basis of the old rows' span
        reduce(r)
    out = [reduce(r) for r in new]
    return torch.stack(out) if out else new


class Prompter(nn.Module):
    """Base class: ``query`` is set by the method (batch -> {modality: (batch, Dq)});
    subclasses implement ``forward(batch)``."""

    persist = False

    def __init__(self, encoders: dict, first_block: int = 1):
        super().__init__()
        self.modalities = list(encoders)
        self.num_blocks = next(iter(encoders.values())).num_blocks
        self.first_block = first_block
        self.in_dims = {m: [e.dims[b - 1] if b > 0 else None for b in range(self.num_blocks)]
                        for m, e in encoders.items()}
        self.query_dims = {m: e.dims[-1] for m, e in encoders.items()}
        self.add_mode = {m: prompt_mode(e) == "add" for m, e in encoders.items()}
        self.query = None  # callable(batch) -> {modality: Tensor}
        self.last_selection: dict[str, Tensor] = {}  # modality -> chosen prompt ids (diagnostics, tests)

    @property
    def blocks(self) -> list[int]:
        return list(range(self.first_block, self.num_blocks))

    def init_values(self, shape, generator: torch.Generator, modality: str) -> Tensor:
        # A convolutional encoder gets additive prompts, which start at zero (no shift);
        # sequence prompts start as L2P's U(-1, 1).
        return torch.zeros(*shape) if self.add_mode[modality] else uniform_(shape, generator)
