"""Task streams: class-incremental (disjoint class groups, growing head) and
domain-incremental (one domain per task, all classes, fixed head)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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


def build_scenario(cfg, labels: torch.Tensor, domains: torch.Tensor, splits: dict[str, np.ndarray],
                   class_names: list[str], domain_names: list[str]) -> Scenario:
    """labels/domains: per-sample dataset label and domain id; splits: sample indices per split."""
    sc = cfg.scenario
    n_classes = len(class_names)
    present = sorted(set(labels.tolist()))
    if sc.kind == "class":
        order = list(present)
        if sc.class_order == "seed":
            rng = np.random.default_rng(cfg.run.seed)
            order = [order[i] for i in rng.permutation(len(order))]
        if sc.num_tasks > len(order):
            raise ValueError(f"scenario.num_tasks={sc.num_tasks} is more than the {len(order)} classes")
        groups = [list(map(int, g)) for g in np.array_split(np.array(order), sc.num_tasks)]
        task_specs = [(g, None) for g in groups]
    else:
        doms = sorted(set(domains.tolist()))
        if sc.num_tasks > len(doms):
            raise ValueError(f"scenario.num_tasks={sc.num_tasks} is more than the {len(doms)} domains "
                             f"({', '.join(domain_names)})")
        order = list(present)
        task_specs = [(order, d) for d in doms[: sc.num_tasks]]
    label_to_output = torch.full((n_classes,), -1, dtype=torch.long)
    label_to_output[torch.tensor(order)] = torch.arange(len(order))
    tasks = []
    for t, (cls, dom) in enumerate(task_specs):
        in_task = torch.isin(labels, torch.tensor(cls))
        if dom is not None:
            in_task &= domains == dom
        parts = {}
        for split in ("train", "val", "test"):
            idx = torch.as_tensor(np.asarray(splits[split]), dtype=torch.long)
            parts[split] = idx[in_task[idx]]
        if len(parts["train"]) == 0 or len(parts["test"]) == 0:
            raise ValueError(f"task {t + 1} ({[class_names[c] for c in cls]}, domain "
                             f"{None if dom is None else domain_names[dom]}) has no training or test samples")
        tasks.append(Task(t, cls, dom, parts["train"], parts["val"], parts["test"]))
    return Scenario(sc.kind, tasks, order, label_to_output, class_names, domain_names)
