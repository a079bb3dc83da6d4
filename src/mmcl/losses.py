"""The method's losses as pure functions of tensors (docs/method.md; the specification: METHOD.md section 5)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

ALIGN_KINDS = ("joint_infonce", "joint_cosine", "pairwise_infonce")


def classification(logits: Tensor, labels: Tensor) -> Tensor:
    """L_cls: cross-entropy over the classes the logits cover."""
    return F.cross_entropy(logits, labels)


def split_classification(logits: Tensor, labels: Tensor, n_current: int, first_new: int) -> Tensor:
    """Cross-entropy where the first ``n_current`` rows (the current task's samples, whose labels
    are all >= ``first_new``) are scored over the output units ``first_new:`` only and the other
    rows (memory) over every unit; the mean over all rows."""
    cur = F.cross_entropy(logits[:n_current, first_new:], labels[:n_current] - first_new, reduction="sum")
    mem = F.cross_entropy(logits[n_current:], labels[n_current:], reduction="sum") if len(labels) > n_current \
        else logits.new_zeros(())
    return (cur + mem) / max(1, len(labels))


def distillation(new_logits: Tensor, old_logits: Tensor, T: float = 2.0) -> Tensor:
    """L_distil = T^2 * mean_batch KL(softmax(old/T) || softmax(new/T)).

    ``new_logits`` must already be restricted to the old classes by the caller (same width as
    ``old_logits``). The T^2 factor keeps gradient magnitudes independent of T (Hinton et al.).
    """
    if new_logits.shape != old_logits.shape:
        raise ValueError(f"distillation: new_logits {tuple(new_logits.shape)} and old_logits "
                         f"{tuple(old_logits.shape)} differ; restrict new_logits to the old classes")
    if new_logits.numel() == 0:
        return new_logits.sum() * 0.0
    log_p_new = F.log_softmax(new_logits / T, dim=1)
    log_p_old = F.log_softmax(old_logits.detach() / T, dim=1)
    kl = (log_p_old.exp() * (log_p_old - log_p_new)).sum(dim=1)
    return (T * T) * kl.mean()


def _info_nce(query: Tensor, keys: Tensor, tau: float, groups: Tensor | None = None) -> Tensor:
    """InfoNCE with cosine similarity: row i of ``keys`` is the positive of query i, the other
    rows are negatives; with ``groups`` (B,) only rows of another group are negatives (rows of
    the same group, e.g. the same class, are neither pulled nor pushed). Mean over the batch."""
    q = F.normalize(query, dim=-1)
    k = F.normalize(keys, dim=-1)
    logits = q @ k.t() / tau
    target = torch.arange(q.shape[0], device=q.device)
    if groups is not None:
        same = groups.view(-1, 1) == groups.view(1, -1)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, target)


def alignment(z_mod: list[Tensor], z_joint: Tensor, kind: str = "joint_infonce", tau: float = 0.1,
              detach_joint: bool = True, groups: Tensor | None = None,
              present: list[Tensor] | None = None) -> Tensor:
    """L_align: pull each modality's representation toward the joint one.

    - ``joint_infonce``: for each modality k, InfoNCE with z_k as query, the same sample's
      z_joint as positive and the batch's other z_joint as negatives; mean over k.
    - ``joint_cosine``: mean over k and samples of 1 - cos(z_k, z_joint).
    - ``pairwise_infonce``: the conventional modality-to-modality contrastive loss (the
      paper's ablation): symmetric InfoNCE between every pair of modalities, z_joint unused.
    ``detach_joint`` stops gradients through z_joint (the joint is the anchor). ``groups``
    (B,): the InfoNCE kinds take only rows of another group as negatives (e.g. the class: a
    sample of the same class is not pushed away).

    ``present`` (one bool (B,) per modality; None: all present): a masked (sample, modality)
    pair takes no part. The joint kinds average over the present pairs (a masked z_k is
    neither a query nor anything else; every sample's z_joint, formed from its present
    modalities, stays a negative); ``pairwise_infonce`` contrasts modalities a and b over the
    samples that have both, averaged over the pairs that have any.
    """
    if kind not in ALIGN_KINDS:
        raise ValueError(f"alignment kind '{kind}' is not one of {', '.join(ALIGN_KINDS)}")
    if not z_mod:
        raise ValueError("alignment needs at least one modality representation")
    if present is not None:
        return _masked_alignment(z_mod, z_joint, kind, tau, detach_joint, groups, present)
    if kind == "pairwise_infonce":
        if len(z_mod) < 2:
            return z_mod[0].sum() * 0.0
        terms = []
        for a in range(len(z_mod)):
            for b in range(a + 1, len(z_mod)):
                terms.append(0.5 * (_info_nce(z_mod[a], z_mod[b], tau, groups)
                                    + _info_nce(z_mod[b], z_mod[a], tau, groups)))
        return torch.stack(terms).mean()
    anchor = z_joint.detach() if detach_joint else z_joint
    if kind == "joint_cosine":
        return torch.stack([(1 - F.cosine_similarity(z, anchor, dim=-1)).mean() for z in z_mod]).mean()
    return torch.stack([_info_nce(z, anchor, tau, groups) for z in z_mod]).mean()


def _masked_alignment(z_mod: list[Tensor], z_joint: Tensor, kind: str, tau: float, detach_joint: bool,
                      groups: Tensor | None, present: list[Tensor]) -> Tensor:
    """``alignment`` over the present (sample, modality) pairs only (see there)."""
    if kind == "pairwise_infonce":
        terms = []
        for a in range(len(z_mod)):
            for b in range(a + 1, len(z_mod)):
                both = present[a] & present[b]
                if int(both.sum()) < 1:
                    continue
                g = None if groups is None else groups[both]
                terms.append(0.5 * (_info_nce(z_mod[a][both], z_mod[b][both], tau, g)
                                    + _info_nce(z_mod[b][both], z_mod[a][both], tau, g)))
        return torch.stack(terms).mean() if terms else z_joint.sum() * 0.0
    anchor = z_joint.detach() if detach_joint else z_joint
    total, pairs = anchor.new_zeros(()), 0
    for z, p in zip(z_mod, present):
        rows = torch.nonzero(p).flatten()
        if not len(rows):
            continue
        if kind == "joint_cosine":
            total = total + (1 - F.cosine_similarity(z[rows], anchor[rows], dim=-1)).sum()
        else:  # queries: the present rows; keys: every sample's z_joint, the positive at the row's own index
            q = F.normalize(z[rows], dim=-1)
            logits = q @ F.normalize(anchor, dim=-1).t() / tau
            if groups is not None:
                same = groups[rows].view(-1, 1) == groups.view(1, -1)
                same[torch.arange(len(rows), device=same.device), rows] = False
                logits = logits.masked_fill(same, float("-inf"))
            total = total + F.cross_entropy(logits, rows, reduction="sum")
        pairs += len(rows)
    return total / max(1, pairs)


def similarity_distribution(z: Tensor, tau: float) -> Tensor:
    """log p_i(j) = log softmax_{j != i}(cos(z_i, z_j) / tau); the diagonal is excluded
    (its log-probability is set to 0 and must be masked by the caller)."""
    zn = F.normalize(z, dim=-1)
    sim = zn @ zn.t() / tau
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    return F.log_softmax(sim, dim=1).masked_fill(eye, 0.0)


def preservation(z_old: Tensor, z_new: Tensor, task: int, tau: float = 0.1) -> Tensor:
    """L_preserve = sqrt(task-1) * mean_i KL(p_i^old || p_i^new), with p_i the distribution of
    sample i's cosine similarities to the other samples of the batch at temperature tau.

    ``task`` is 1-indexed: the loss is zero on task 1. ``z_old`` are the stored joint
    representations under the previous parameters (no gradient), ``z_new`` the current ones.
    """
    if task < 1:
        raise ValueError(f"preservation: task is 1-indexed, got {task}")
    if z_old.shape != z_new.shape:
        raise ValueError(f"preservation: z_old {tuple(z_old.shape)} and z_new {tuple(z_new.shape)} differ")
    if task == 1 or z_new.shape[0] < 2:
        return z_new.sum() * 0.0
    log_p_old = similarity_distribution(z_old.detach().float(), tau)
    log_p_new = similarity_distribution(z_new.float(), tau)
    eye = torch.eye(z_new.shape[0], dtype=torch.bool, device=z_new.device)
    kl = (log_p_old.exp() * (log_p_old - log_p_new)).masked_fill(eye, 0.0).sum(dim=1)
    return math.sqrt(task - 1) * kl.mean()


def cv_squared(x: Tensor, eps: float = 1e-10) -> Tensor:
    """Squared coefficient of variation (variance / mean^2); 0 for one element."""
    x = x.float()
    if x.numel() <= 1:
        return x.sum() * 0.0
    return x.var() / (x.mean() ** 2 + eps)


def load_balance(importance: Tensor, load: Tensor) -> Tensor:
    """cv^2(importance) + cv^2(load) (Shazeer et al., 2017); the caller applies lambda_lb."""
    return cv_squared(importance) + cv_squared(load)
