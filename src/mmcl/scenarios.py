"""Task streams: class-incremental (disjoint class groups, growing head) and
domain-incremental (one domain per task, all classes, fixed head)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmcl.settings import ConfigError


@dataclass
class Task:
    index: int                 # 0-indexed position in the stream
    classes: list[int]         # dataset labels introduced (class-IL) or covered (domain-IL)
    domain: int | None         # domain id (domain-IL) or None
    train: torch.Tensor        # sample indices
    val: torch.Tensor
    test: torch.Tensor


@dataclass
class Scenario:
    kind: str                          # "class" or "domain"
    tasks: list[Task]
    class_order: list[int]             # output position -> dataset label
    label_to_output: torch.Tensor      # dataset label -> output position (-1: unused)
    class_names: list[str]
    domain_names: list[str]

    def new_classes(self, t: int) -> int:
        """Output units added at task t (all classes at task 0 in domain-IL)."""
        if self.kind == "class":
            return len(self.tasks[t].classes)
        return len(self.class_order) if t == 0 else 0

    def seen_classes(self, t: int) -> int:
        if self.kind == "class":
            return sum(len(self.tasks[i].classes) for i in range(t + 1))
        return len(self.class_order)

    def describe(self) -> list[dict]:
        return [{"classes": [self.class_names[c] for c in task.classes],
                 "domain": None if task.domain is None else self.domain_names[task.domain],
                 "train": len(task.train), "val": len(task.val), "test": len(task.test)}
                for task in self.tasks]


class ScenarioError(ValueError):
    """A task stream that cannot be built from the data (an empty task, a class without
    training or test samples): names the task, its classes and what to change."""


def _class_list(names: list[str], labels) -> str:
    return ", ".join(f"'{names[c]}'" for c in labels)


def build_scenario(cfg, labels: torch.Tensor, domains: torch.Tensor, splits: dict[str, np.ndarray],
                   class_names: list[str], domain_names: list[str]) -> Scenario:
    """labels/domains: per-sample dataset label and domain id; splits: sample indices per split.

    Every task must have training and test samples for each of its classes (a class that is
    never trained cannot be learnt, one that is never tested cannot be scored): otherwise a
    ScenarioError names the task, the class and its sample counts per split."""
    sc = cfg.scenario
    n_classes = len(class_names)
    present = sorted(set(labels.tolist()))
    absent = [c for c in range(n_classes) if c not in set(present)]
    if absent:
        raise ScenarioError(f"class(es) {_class_list(class_names, absent)} have no samples in the "
                            "prepared data: remove them from data.classes")
    if sc.kind == "class":
        order = list(present)
        if sc.class_order == "seed":
            rng = np.random.default_rng(cfg.run.seed)
            order = [order[i] for i in rng.permutation(len(order))]
        if sc.num_tasks > len(order):
            raise ConfigError(f"scenario.num_tasks={sc.num_tasks} is more than the {len(order)} classes in "
                              f"data.classes ({', '.join(class_names)}): some tasks would have no class. "
                              f"Set scenario.num_tasks to at most {len(order)}, or add classes.")
        groups = [list(map(int, g)) for g in np.array_split(np.array(order), sc.num_tasks)]
        task_specs = [(g, None) for g in groups]
    else:
        doms = sorted(set(domains.tolist()))
        if sc.num_tasks > len(doms):
            raise ConfigError(f"scenario.num_tasks={sc.num_tasks} is more than the {len(doms)} domains "
                              f"({', '.join(domain_names[d] for d in doms)}; data.tuxpaint.languages for tuxpaint): "
                              f"some tasks would have no domain. Set scenario.num_tasks to at most "
                              f"{len(doms)}, or add domains.")
        order = list(present)
        task_specs = [(order, d) for d in doms[: sc.num_tasks]]
    label_to_output = torch.full((n_classes,), -1, dtype=torch.long)
    label_to_output[torch.tensor(order)] = torch.arange(len(order))
    split_idx = {split: torch.as_tensor(np.asarray(splits[split]), dtype=torch.long)
                 for split in ("train", "val", "test")}
    tasks = []
    for t, (cls, dom) in enumerate(task_specs):
        in_task = torch.isin(labels, torch.tensor(cls))
        if dom is not None:
            in_task &= domains == dom
        parts = {split: idx[in_task[idx]] for split, idx in split_idx.items()}
        _check_task(cfg, t, cls, dom, parts, labels, class_names, domain_names)
        tasks.append(Task(t, cls, dom, parts["train"], parts["val"], parts["test"]))
    return Scenario(sc.kind, tasks, order, label_to_output, class_names, domain_names)


def _check_task(cfg, t, cls, dom, parts, labels, class_names, domain_names) -> None:
    where = f"task {t + 1} (classes {_class_list(class_names, cls)}"
    where += f", domain '{domain_names[dom]}')" if dom is not None else ")"
    counts = {split: torch.bincount(labels[idx], minlength=len(class_names)) for split, idx in parts.items()}
    for split in ("train", "test"):
        empty = [c for c in cls if int(counts[split][c]) == 0]
        if not empty:
            continue
        detail = "; ".join(f"'{class_names[c]}': " + ", ".join(f"{int(counts[s][c])} {s}" for s in counts)
                           for c in empty)
        raise ScenarioError(
            f"{where}: {len(empty)} class(es) have no {split} samples ({detail}, with "
            f"data.split={list(cfg.data.split)}). Every class needs samples in train and test: give "
            "those classes more samples (tuxpaint: data.tuxpaint.max_stamps_per_class=0 or at least 3, since "
            "a stamp's samples stay in one split), change data.split, or remove them from data.classes.")
