"""Your own data: a manifest (CSV or JSONL), one row per sample.

Columns (JSONL: keys):

- ``label``   class name (required);
- one column per modality in ``data.modalities``: ``image`` (an image file Pillow reads),
  ``speech`` / ``audio`` (an audio file PyAV reads: wav, ogg, flac, mp3, or the audio track of a
  video), ``video`` (a video file, or a folder of frame images), ``accel`` / ``gyro`` (a text
  table, one row per sample time, 3 columns x y z, comma or space separated, header lines
  skipped), ``text`` (the text itself). File paths are relative to the manifest's folder, or
  absolute;
- ``domain``  optional: the sample's domain (one task per domain in domain-incremental runs);
- ``split``   optional: train / val / test. Without it the samples are split by the seed with
  ``data.split``, stratified by class, keeping the rows of one ``group`` together;
- ``group``   optional: rows that must stay in one split (e.g. clips of the same video).

``data.classes`` empty (the ``manifest`` preset) = every label in the manifest, sorted; a list
= those classes, and a row whose label is not in it is an error naming the row. ``data.domains``
empty = every domain in order of first appearance; a list = only rows of those domains.
A missing modality: leave its cell empty (JSONL: null or "", or no key in that row; the first
row must have every column); that sample has the modality masked (docs/method.md, "Missing
modalities"). A row whose every modality cell is empty is an error naming the row.
Missing files are found while indexing: ``data.on_missing=fail`` (default) stops with the file
and row, ``skip`` leaves those rows out and reports how many, ``mask`` keeps them with that
modality masked (a file that cannot be decoded: the same, when it is decoded).
"""
from __future__ import annotations

import csv
import difflib
import functools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from mmcl.data.errors import DataError
from mmcl.data.media import decode_clip, decode_ogg, decode_png, decode_sensor_table
from mmcl.data.splitting import split_samples
from mmcl.encoders.weights import file_stamp
from mmcl.registry import register_dataset
from mmcl.settings import MODALITY_TYPES

log = logging.getLogger(__name__)

MODALITIES = tuple(MODALITY_TYPES)
HINTS = ("Restore the file, fix its path in the manifest (paths are relative to the manifest's "
         "folder), or run with data.on_missing=skip to leave such rows out.",
         "The file is corrupt or unreadable: replace it, or remove its row from the manifest.")
# With data.on_missing=skip already set: the row is left out; say only how to get it back.
SKIP_HINTS = ("The row is left out; restore the file or fix its path in the manifest (paths are relative "
              "to the manifest's folder) to use it.",
              "The file is corrupt or unreadable; the row is left out. Replace the file to use it.")
# With data.on_missing=mask: the row stays with that modality masked.
MASK_HINTS = ("The row keeps that modality masked; restore the file or fix its path in the manifest to use it.",
              "The file is corrupt or unreadable; the row keeps that modality masked. Replace the file to use it.")


def read_manifest(path: Path) -> list[dict]:
    """Rows of a .csv (header line) or .jsonl (one JSON object per line) manifest."""
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist (data.manifest)" if not path.exists()
                        else f"manifest {path} is not a file (data.manifest)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the manifest {path}: {e}") from e
    if path.suffix.lower() == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"manifest {path}, line {n}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise DataError(f"manifest {path}, line {n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
        return rows
    if path.suffix.lower() == ".csv":
        return [dict(r) for r in csv.DictReader(text.splitlines())]
    raise DataError(f"manifest {path}: unknown format '{path.suffix}' (use .csv or .jsonl)")


@register_dataset("manifest")
class Manifest:
    """Your own data: one row per sample in a CSV / JSONL manifest (paths per modality, label, optional domain / split / group)."""

    modalities = MODALITIES
    split_samples = staticmethod(lambda records, fractions, seed: manifest_split(records, fractions, seed))

    def __init__(self, data):
        self.data = data
        if not data.manifest:
            raise DataError("data.dataset=manifest needs data.manifest=/path/to/samples.csv (or .jsonl)")
        self.path = Path(os.path.expanduser(data.manifest)).resolve()
        self.base = self.path.parent
        self._rows: list[dict] | None = None
        self.skipped: list[str] = []
        self.masked: list[str] = []  # files missing with data.on_missing=mask
        self.empty_cells: dict[str, int] = {}

    def rows(self) -> list[dict]:
        if self._rows is None:
            self._rows = read_manifest(self.path)
            if not self._rows:
                raise DataError(f"manifest {self.path} has no rows")
            missing = [c for c in ("label", *self.data.modalities) if c not in self._rows[0]]
            if missing:
                raise DataError(f"manifest {self.path} has no column {', '.join(missing)} (columns: "
                                f"{', '.join(self._rows[0])}); data.modalities={list(self.data.modalities)} "
                                "needs one column per modality, and every manifest needs 'label'")
        return self._rows

    @property
    def classes(self) -> list[str]:
        return list(self.data.classes) or sorted({str(r["label"]) for r in self.rows()})

    @property
    def domains(self) -> list[str]:
        if self.data.domains:
            return list(self.data.domains)
        seen: dict[str, None] = {}
        for r in self.rows():
            seen.setdefault(str(r.get("domain") or "all"), None)
        return list(seen)

    def settings(self) -> dict:
        d = self.data
        self.rows()  # a missing or malformed manifest fails here, by name
        return {"manifest": file_stamp(self.path), "classes": self.classes, "domains": self.domains,
                "image_size": d.image_size, "max_text_tokens": d.max_text_tokens,
                "max_speech_seconds": d.max_speech_seconds, "sample_rate": d.sample_rate,
                "video_frames": d.video_frames, "on_missing": d.on_missing}

    def info(self) -> dict:
        return {"manifest": str(self.path), "skipped_rows": list(self.skipped), "masked_files": list(self.masked),
                "empty_cells": dict(self.empty_cells)}

    def _file(self, value, row_no: int, column: str) -> str | None:
        """The cell's file; None when it is missing and data.on_missing is skip or mask."""
        path = Path(os.path.expanduser(str(value)))
        path = path if path.is_absolute() else self.base / path
        if path.is_file() or (MODALITY_TYPES.get(column) == "video" and path.is_dir()):  # frame folder
            return str(path)
        if self.data.on_missing in ("skip", "mask"):
            (self.skipped if self.data.on_missing == "skip" else self.masked).append(f"row {row_no}: {column} {path}")
            return None
        raise DataError(f"manifest {self.path}, row {row_no}: {column} file {path} is missing. {HINTS[0]} Or "
                        "data.on_missing=mask to keep it with that modality masked; an empty cell is a missing "
                        "modality.")

    def _values(self, row: dict, n: int) -> dict[str, str] | None:
        """{modality: source} of the modalities row n has (an empty cell: missing); None when
        the row is left out (a missing file, data.on_missing=skip)."""
        values = {}
        for m in self.data.modalities:
            cell = row.get(m)
            if cell is None or str(cell).strip() == "":
                self.empty_cells[m] = self.empty_cells.get(m, 0) + 1
                continue
            v = str(cell) if m == "text" else self._file(cell, n, m)
            if v is None and self.data.on_missing == "skip":
                return None
            if v is not None:
                values[m] = v
        if not values:
            raise DataError(f"manifest {self.path}, row {n}: no modality ({', '.join(self.data.modalities)}): "
                            "every cell is empty or names a missing file; a sample needs at least one. Fill a "
                            "cell, or remove the row.")
        return values

    def index(self) -> tuple[list[dict], dict[str, list]]:
        classes, domains = self.classes, self.domains
        class_id = {c: i for i, c in enumerate(classes)}
        domain_id = {d: i for i, d in enumerate(domains)}
        records: list[dict] = []
        sources: dict[str, list] = {m: [] for m in self.data.modalities}
        self.skipped, self.masked, self.empty_cells = [], [], {}
        for n, row in enumerate(self.rows(), 1):
            label = str(row.get("label", "")).strip()
            if label not in class_id:
                near = difflib.get_close_matches(label, classes, n=1)
                hint = f" Did you mean '{near[0]}'?" if near else ""
                raise DataError(f"manifest {self.path}, row {n}: label '{label}' is not in the class list "
                                f"({', '.join(classes)}).{hint} Add it to data.classes, or leave "
                                "data.classes empty to take every label of the manifest.")
            domain = str(row.get("domain") or "all")
            if domain not in domain_id:
                continue  # data.domains selects domains
            split = str(row.get("split") or "").strip().lower()
            if split and split not in ("train", "val", "test"):
                raise DataError(f"manifest {self.path}, row {n}: split '{split}' must be train, val or test")
            values = self._values(row, n)
            if values is None:
                continue
            rows = {}
            for m in self.data.modalities:
                rows[m] = len(sources[m]) if m in values else -1  # -1: this sample has no m (masked)
                if m in values:
                    sources[m].append(values[m])
            records.append({"index": len(records), "row": n, "label": class_id[label], "class_name": label,
                            "domain": domain_id[domain], "stamp": str(row.get("group") or f"row{n}"),
                            "split": split, "rows": rows})
        if self.skipped:
            log.warning("manifest %s: %d row(s) left out for missing files (data.on_missing=skip): %s",
                        self.path, len(self.skipped), "; ".join(self.skipped[:5]))
        if self.masked:
            log.warning("manifest %s: %d missing file(s), their modality masked (data.on_missing=mask): %s",
                        self.path, len(self.masked), "; ".join(self.masked[:5]))
        if self.empty_cells:
            log.info("manifest %s: empty cells (a missing modality, masked): %s", self.path,
                     ", ".join(f"{m} {k}" for m, k in self.empty_cells.items()))
        if not records:
            raise DataError(f"manifest {self.path}: no usable rows (classes {classes}, domains {domains})")
        return records, sources

    def decoder(self, modality: str) -> Callable | None:
        kind = MODALITY_TYPES.get(modality)
        hints = {"skip": SKIP_HINTS, "mask": MASK_HINTS}.get(self.data.on_missing, HINTS)
        if kind == "image":
            return functools.partial(decode_png, hints=hints)
        if kind == "audio":
            return functools.partial(decode_ogg, sample_rate=self.data.sample_rate,
                                     max_seconds=self.data.max_speech_seconds, hints=hints)
        if kind == "video":
            return functools.partial(decode_clip, frames=self.data.video_frames, hints=hints)
        if kind == "sensor":
            return functools.partial(decode_sensor_table, hints=hints)
        if kind == "text":
            return None
        raise DataError(f"the manifest data set has no modality '{modality}' (it has {', '.join(MODALITIES)})")


def manifest_split(records: list[dict], fractions, seed: int):
    """The manifest's own split column when every row has one, else split by group with the seed."""
    import numpy as np
    if records and all(r.get("split") for r in records):
        return {s: np.array([r["index"] for r in records if r["split"] == s], dtype=np.int64)
                for s in ("train", "val", "test")}
    if any(r.get("split") for r in records):
        missing = [r["row"] for r in records if not r.get("split")][:5]
        raise DataError(f"the manifest's split column is empty in some rows (e.g. rows {missing}): "
                        "fill it in every row, or drop the column to split by the seed")
    return split_samples(records, fractions, seed)
