"""A prepared data set in memory (``mmcl.data.prepared.prepare`` returns one): its records and,
per modality, the cached tensors; ``batch(idx)`` gathers samples, ``split(seed)`` gives the
train/val/test indices.

A sample may miss a modality: its record's row for it is -1 (a manifest's empty cell, a file
missing with data.on_missing=mask), or the row's file could not be read (data.on_missing=mask).
``present[m]`` (bool, one per sample) says which samples have modality m; every batch carries
it as ``batch[m]["present"]``, and the model, the losses and the memory leave a masked
modality out (docs/method.md, "Missing modalities"). A masked modality's entry in a batch holds
the tensors of a stand-in row, never read for anything: nothing is a silent zero tensor."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcl.data.cache import load_tensors, read_records, read_unreadable
from mmcl.data.errors import DataError
from mmcl.data.pipeline import mask_key, prepare_prefix
from mmcl.encoders.base import valid_lengths

log = logging.getLogger(__name__)


class PreparedData:
    """A prepared data set in memory: records, labels, domains and per modality the cached
    tensors (block-1 prefix tokens, or the encoder's inputs). ``batch(idx)`` gathers samples."""

    def __init__(self, meta: dict, tensors: dict[str, dict[str, torch.Tensor]],
                 use_prefix: bool, split_fn: Callable, fractions: Sequence[float] = (0.7, 0.1, 0.2),
                 folder: Path | None = None):
        self.folder = folder
        self.meta = meta
        self.records: list[dict] = meta["records"]
        self.classes: list[str] = list(meta["classes"])
        self.domains: list[str] = list(meta["domains"])
        self.info: dict = meta.get("info", {})
        self.modalities = list(tensors)
        self.use_prefix = use_prefix
        self.tensors = tensors
        self.fractions = list(fractions)
        self._split_fn = split_fn
        self.timings: dict[str, float] = {}
        self.features: dict[str, torch.Tensor] | None = None  # served pooled features (serve_features)
        self.excluded: set[int] = set()  # samples with an unreadable file (exclude_unreadable)
        self.unreadable: list[str] = []
        self.labels = torch.tensor([r["label"] for r in self.records], dtype=torch.long)
        self.domain_ids = torch.tensor([r["domain"] for r in self.records], dtype=torch.long)
        # sample index -> row of each modality's tensors (an image row is shared by languages);
        # -1: the sample has no such modality
        rows = {m: torch.tensor([r["rows"].get(m, -1) for r in self.records], dtype=torch.long)
                for m in self.modalities}
        self.present: dict[str, torch.Tensor] = {m: r >= 0 for m, r in rows.items()}
        self.rows = {m: r.clamp_min(0) for m, r in rows.items()}  # a masked sample reads a stand-in row
        self.check_present()
        # Per-row valid lengths let batch() trim padding to the longest sample it holds.
        self._lengths: dict[str, torch.Tensor | None] = {}
        self._trim_keys: dict[str, set[str]] = {}
        for m in tensors:
            self._index_lengths(m)

    def _index_lengths(self, m: str) -> None:
        ts = self.tensors[m]
        n_rows = next(iter(ts.values())).shape[0]
        if int(self.rows[m].max()) >= n_rows:
            raise DataError(f"cached {m} tensors in {self.folder} have {n_rows} rows, fewer than "
                            f"records.json refers to: delete {self.folder} and prepare again")
        mkey = mask_key(ts)
        if mkey is None:
            self._lengths[m], self._trim_keys[m] = None, set()
            return
        n = ts[mkey].shape[1]
        self._lengths[m] = valid_lengths(ts[mkey])
        self._trim_keys[m] = {k for k, v in ts.items() if v.dim() >= 2 and v.shape[1] == n}

    def inputs(self, m: str) -> dict[str, torch.Tensor]:
        """The encoder inputs of modality m for every row (from the cache when prefixes are served)."""
        if not self.use_prefix:
            return self.tensors[m]
        if self.folder is None:
            raise DataError(f"no cache folder to read the {m} inputs from")
        return load_tensors(self.folder / f"inputs_{m}.safetensors")

    def reencode(self, m: str, enc, chunk: int = 256) -> None:
        """After enc changed (encoders.<m>.fit): recompute m's cached prefix tokens in memory."""
        self.features = None  # computed with the old encoder
        if self.use_prefix:
            self.tensors[m] = prepare_prefix(enc, self.inputs(m), m, chunk, show=False)
            self._index_lengths(m)

    @classmethod
    def from_folder(cls, folder: str | Path, modalities: Iterable[str], use_prefix: bool,
                    split_fn: Callable, fractions: Sequence[float] = (0.7, 0.1, 0.2),
                    mask_unreadable: bool = False) -> PreparedData:
        """The prepared data of a cache folder. Samples using a file that could not be read are
        left out of every split, or with ``mask_unreadable`` (data.on_missing=mask) keep that
        modality masked."""
        folder = Path(folder)
        meta = read_records(folder / "records.json")
        kind = "prefix" if use_prefix else "inputs"
        tensors = {}
        for m in modalities:
            path = folder / f"{kind}_{m}.safetensors"
            if not path.exists():
                raise DataError(f"{path} is missing: run prepare (mmcl prepare) for this config")
            tensors[m] = load_tensors(path)
        unreadable = {m: read_unreadable(folder / f"unreadable_{m}.json") for m in modalities}
        out = cls(meta, tensors, use_prefix, split_fn, fractions, folder)
        out.exclude_unreadable(unreadable, mask=mask_unreadable)
        return out

    def describe(self, i: int) -> str:
        """Sample i as a person finds it: its manifest row, its id or its stamp."""
        r = self.records[i]
        if "row" in r:
            return f"manifest row {r['row']}"
        if "id" in r:
            return f"sample {r['id']}"
        if "stamp" in r:
            return f"stamp {r['stamp']}" + (f" ({r['language']})" if r.get("language") else "")
        return f"sample {i}"

    def check_present(self) -> None:
        """A sample without any modality is an error naming it (and how many more there are)."""
        if not self.present:
            return
        none = ~torch.stack(list(self.present.values())).any(0)
        if bool(none.any()):
            bad = torch.nonzero(none).flatten().tolist()
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise DataError(f"{self.describe(bad[0])}{more} has no modality left ({', '.join(self.modalities)} all "
                            "missing or unreadable): a sample needs at least one. Restore its files, or run with "
                            "data.on_missing=skip to leave such samples out.")

    def present_matrix(self, idx) -> torch.Tensor:
        """(len(idx), modalities) bool: which of the samples idx have which modality."""
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        return torch.stack([self.present[m].index_select(0, idx) for m in self.modalities], 1)

    def exclude_unreadable(self, unreadable: dict[str, dict[int, str]], mask: bool = False) -> None:
        """Leave out of every split the samples that use an unreadable file ({modality: {row:
        message}}, from preparation with data.on_missing=skip or mask); with ``mask``, keep them
        with that modality masked instead. Logs the count and the files."""
        seen: dict[str, str] = {}  # one file read for two modalities (accel + gyro, a video's audio) counts once
        for m, rows in unreadable.items():
            sources = self.meta.get("sources", {}).get(m, [])
            for r, msg in rows.items():
                seen.setdefault(str(sources[r]) if r < len(sources) else f"{m}:{r}", msg)
        self.unreadable = list(seen.values())
        bad = set()
        for m, rows in unreadable.items():
            if m in self.rows and rows:
                hit = torch.isin(self.rows[m], torch.tensor(sorted(rows), dtype=torch.long)) & self.present[m]
                if mask:
                    self.present[m] = self.present[m] & ~hit
                bad.update(int(i) for i in torch.nonzero(hit).flatten())
        if mask:
            self.check_present()
            if bad:
                log.warning("%d sample(s) keep a modality masked: %d file(s) could not be read (data.on_missing="
                            "mask); e.g. %s", len(bad), len(self.unreadable), self.unreadable[0])
            return
        self.excluded = bad
        if bad:
            log.warning("%d sample(s) left out: %d file(s) could not be read (data.on_missing=skip); e.g. %s",
                        len(bad), len(self.unreadable), self.unreadable[0])

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def batch(self, idx) -> dict[str, Any]:
        """Samples idx -> {mod: {"tokens": float32 (b, N, D), "mask": bool (b, N) or None}}
        (prefix cached) or {mod: {input key: tensor}}, or {mod: {"pooled": float32 (b, D)}}
        while ``serve_features`` is on, each with "present": bool (b,) (False: the sample misses
        the modality, whose tensors in that row are a stand-in's), plus "label", "domain",
        "index". Token-masked modalities are trimmed to the longest valid sample in the batch."""
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        out: dict[str, Any] = {}
        for m in self.modalities:
            rows = self.rows[m].index_select(0, idx)
            if self.features is not None:
                out[m] = {"pooled": self.features[m].index_select(0, rows).float()}
            else:
                out[m] = self.row_item(m, rows)
            out[m]["present"] = self.present[m].index_select(0, idx)
        out["label"] = self.labels.index_select(0, idx)
        out["domain"] = self.domain_ids.index_select(0, idx)
        out["index"] = idx.clone()
        return out

    def row_item(self, m: str, rows: torch.Tensor) -> dict[str, Any]:
        """Modality m's cached tensors of ``rows`` (rows of its tensors, not sample indices), as
        one entry of ``batch``: trimmed to the longest valid row, prefix tokens as float32."""
        lengths = self._lengths[m]
        n = max(int(lengths.index_select(0, rows).max()), 1) if lengths is not None and len(rows) else None
        item = {}
        for k, t in self.tensors[m].items():
            if n is not None and k in self._trim_keys[m]:
                t = t[:, :n]  # slice the view first: only b x n rows are copied
            v = t.index_select(0, rows)
            item[k] = v.float() if k == "tokens" else v
        if self.use_prefix:
            item.setdefault("mask", None)  # the encoder gave none: every token is real
        return item

    def num_rows(self, m: str) -> int:
        return next(iter(self.tensors[m].values())).shape[0]

    def serve_features(self, features: dict[str, torch.Tensor] | None) -> None:
        """Serve {modality: (rows, D)} pooled frozen features (mmcl.data.features) instead of the
        cached tensors from now on; None goes back to the tensors."""
        if features is not None:
            for m in self.modalities:
                if features[m].shape[0] != self.num_rows(m):
                    raise DataError(f"pooled {m} features have {features[m].shape[0]} rows, the cached "
                                    f"tensors {self.num_rows(m)}: delete {self.folder} and prepare again")
        self.features = features

    def split(self, seed: int, fractions: Sequence[float] | None = None) -> dict[str, np.ndarray]:
        """{"train", "val", "test"} -> sample indices, fixed by seed (the data set's rule)."""
        splits = self._split_fn(self.records, list(fractions or self.fractions), seed)
        if self.excluded:
            drop = np.fromiter(self.excluded, dtype=np.int64)
            splits = {k: v[~np.isin(v, drop)] for k, v in splits.items()}
        return splits

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for ts in self.tensors.values() for t in ts.values())
