"""Splitting samples into train/val/test by the seed: stratified per class, the samples of one
group (a stamp, a video) kept together. The Tux Paint stamps' rule, which the other data sets
use for samples their release does not assign to a split."""
from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Stamps per split for a class of n: largest remainder, then at least one stamp in every
    split with a positive fraction when n allows (a class absent from val/test can't be scored)."""
    exact = [f * n for f in fractions]
    counts = [int(np.floor(x)) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])[: n - sum(counts)]:
        counts[i] += 1
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                counts[max(range(len(counts)), key=lambda j: counts[j])] -= 1
                counts[i] = 1
    return counts


def split_samples(records: list[dict], fractions: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    """Split sample indices into train/val/test by stamp, stratified per class.

    A stamp's samples (its languages) all go to one split, so no image is seen in training
    and tested. Each class is shuffled with its own generator seeded by (seed, class name):
    a class's split does not change when other classes are added or removed.
    """
    if len(fractions) != 3:
        raise ValueError(f"split fractions must be three (train, val, test), got {list(fractions)}")
    stamps_by_class: dict[str, set] = defaultdict(set)
    samples_by_stamp: dict[str, list[int]] = defaultdict(list)
    for r in records:
        stamps_by_class[r["class_name"]].add(r["stamp"])
        samples_by_stamp[r["stamp"]].append(r["index"])
    out: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    for cls in sorted(stamps_by_class):
        stamps = sorted(stamps_by_class[cls])
        rng = np.random.default_rng([seed, zlib.crc32(cls.encode())])
        order = [stamps[i] for i in rng.permutation(len(stamps))]
        start = 0
        for name, count in zip(SPLIT_NAMES, _split_counts(len(stamps), fractions)):
            for stamp in order[start:start + count]:
                out[name].extend(samples_by_stamp[stamp])
            start += count
    return {name: np.array(sorted(idx), dtype=np.int64) for name, idx in out.items()}
