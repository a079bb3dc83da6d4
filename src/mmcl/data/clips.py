"""What the paper's benchmarks share (mmcl.data.ave, kinetics_sounds, uestc_mmea, samsemo: one
file each; docs/datasets.md has the layouts, the sources and what is unverified).

Each data set lists its samples (``items``: id, label, split, domain, one source per modality)
from the release's own list files, or from the split lists shipped in ``mmcl/data/splits``
(AV-CIL's AVE and Kinetics-Sounds splits); ``ClipDataset`` turns them into the records and
sources that ``mmcl.data.prepared.prepare`` decodes once. A missing file is found while
indexing, an unreadable one while decoding: ``data.on_missing=fail`` stops with the path,
``skip`` leaves the sample out and counts it (listed in the log and the run's data info),
``mask`` keeps the sample with that modality masked (counted and listed the same way).
"""
from __future__ import annotations

import csv
import difflib
import functools
import gzip
import io
import logging
import os
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from mmcl.data.errors import DataError
from mmcl.data.media import decode_clip, decode_ogg
from mmcl.data.roots import dataset_root
from mmcl.data.splitting import split_samples
from mmcl.settings import MODALITY_TYPES

log = logging.getLogger(__name__)


def shipped_split(name: str) -> list[dict]:
    """Rows of a split list shipped in mmcl/data/splits (csv or csv.gz)."""
    res = resources.files("mmcl.data") / "splits" / name
    raw = res.read_bytes()
    text = gzip.decompress(raw).decode("utf-8") if name.endswith(".gz") else raw.decode("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def listed_or_seeded_split(records: list[dict], fractions, seed: int):
    """Samples whose record names a split (the release's lists) keep it; the others (e.g. a
    language without a list) are split by the seed, stratified by class, groups kept together."""
    import numpy as np
    listed = [r for r in records if r.get("split")]
    rest = [r for r in records if not r.get("split")]
    out = {s: [r["index"] for r in listed if r["split"] == s] for s in ("train", "val", "test")}
    if rest:
        for s, idx in split_samples(rest, fractions, seed).items():
            out[s].extend(int(i) for i in idx)
    return {s: np.array(sorted(v), dtype=np.int64) for s, v in out.items()}


class ClipDataset:
    """Shared logic; subclasses set ``modalities``, ``CLASSES``, ``ENV``, ``LAYOUT`` and
    implement ``items()`` and ``decoder(modality)``."""

    modalities: tuple[str, ...] = ()
    CLASSES: tuple[str, ...] = ()
    DOMAINS: tuple[str, ...] = ("all",)
    ENV = ""
    LAYOUT = ""
    FRAME_PATTERN = ""  # frame folders: only the image files whose name holds this
    split_samples = staticmethod(lambda records, fractions, seed: listed_or_seeded_split(records, fractions, seed))

    def __init__(self, data):
        self.data = data
        name = self.registered_name
        root = dataset_root(data, name, self.ENV)
        if not root:
            raise DataError(f"where is {name}? Prepare it once with `mmcl prepare {name} --root DIR` "
                            f"(DIR holds {self.LAYOUT}), or set data.root=DIR or ${self.ENV}.")
        self.root = Path(os.path.expanduser(root))
        if not self.root.is_dir():
            raise DataError(f"{name}: data.root {self.root} is not a folder (expected {self.LAYOUT})")
        self.skipped: list[str] = []
        self.left_out: dict[str, int] = {}

    # -- what the data set is ----------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.data.classes) or list(self.CLASSES)

    @property
    def domains(self) -> list[str]:
        return list(self.DOMAINS)

    def settings(self) -> dict:
        d = self.data
        return {"root": str(self.root.resolve()), "classes": self.classes, "domains": self.domains,
                "image_size": d.image_size, "video_frames": d.video_frames, "sample_rate": d.sample_rate,
                "max_speech_seconds": d.max_speech_seconds, "max_text_tokens": d.max_text_tokens,
                "lists": self.list_stamps()}
        # data.on_missing is not in the key: with skip, a missing file's sample stays indexed and
        # its decoding fails like a corrupt file's (left out, listed), so switching fail -> skip
        # reuses everything already decoded.

    def list_stamps(self) -> list[str]:
        """Size + mtime of the list files read (a changed list re-indexes)."""
        return []

    def info(self) -> dict:
        return {"root": str(self.root), "missing_files": list(self.skipped), "left_out": dict(self.left_out)}

    # -- indexing ----------------------------------------------------------------------------
    def items(self) -> list[dict]:
        """[{id, label (class name), split ('' = by seed), domain, group, files: {mod: source}}]"""
        raise NotImplementedError

    def existing(self, candidates, what: str, item: str) -> str:
        """The first existing path among candidates. None exists: data.on_missing=fail stops
        here naming them; skip lists it and returns the first (its decoding then fails, and
        the sample is left out of every split like one with a corrupt file)."""
        for c in candidates:
            if c is not None and os.path.exists(c):
                return str(c)
        first = next(c for c in candidates if c is not None)
        if self.data.on_missing in ("skip", "mask"):
            self.skipped.append(f"{item}: {what} {first}")
            return str(first)
        tried = ", ".join(str(c) for c in candidates if c is not None)
        raise DataError(f"{self.registered_name}: {what} of {item} is missing (looked for {tried}). "
                        f"Restore it, or run with data.on_missing=skip to leave such samples out (mask: keep "
                        "them with that modality masked).")

    def index(self) -> tuple[list[dict], dict[str, list]]:
        classes = self.classes
        class_id = {c: i for i, c in enumerate(classes)}
        unknown = [c for c in classes if c not in self.CLASSES] if self.CLASSES else []
        if unknown:
            near = difflib.get_close_matches(unknown[0], self.CLASSES, n=1)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            raise DataError(f"data.classes: '{unknown[0]}' is not a class of {self.registered_name}.{hint} "
                            f"Its classes: {', '.join(self.CLASSES)}")
        domain_id = {d: i for i, d in enumerate(self.domains)}
        mods = list(self.data.modalities)
        records, sources = [], {m: [] for m in mods}
        self.skipped = []
        for it in self.items():
            if it["label"] not in class_id or it["domain"] not in domain_id:
                continue  # data.classes / data.domains select a subset
            files = it["files"]
            i = len(records)
            for m in mods:
                sources[m].append(files[m])
            records.append({"index": i, "id": it["id"], "label": class_id[it["label"]],
                            "class_name": it["label"], "domain": domain_id[it["domain"]],
                            "stamp": it.get("group") or it["id"], "split": it.get("split", ""),
                            "rows": {m: i for m in mods}})
        if self.skipped:
            fate = "keep that modality masked" if self.data.on_missing == "mask" else "will be left out"
            log.warning("%s: %d file(s) missing, their samples %s (data.on_missing=%s), e.g. %s",
                        self.registered_name, len(self.skipped), fate, self.data.on_missing, self.skipped[0])
        if not records:
            raise DataError(f"{self.registered_name}: no usable samples under {self.root} for classes "
                            f"{classes[:4]}... (expected {self.LAYOUT})")
        return records, sources

    def hints(self) -> tuple[str, str]:
        """(missing, corrupt) advice; with data.on_missing=skip already set, the sample is left
        out, and the advice only says how to get it back."""
        if self.data.on_missing == "mask":
            return ("The sample keeps that modality masked; restore the file to use it.",
                    f"The file is corrupt or unreadable; the sample keeps that modality masked. Replace the file "
                    f"from the {self.registered_name} release to use it.")
        if self.data.on_missing == "skip":
            return ("The sample is left out; restore the file to use it.",
                    f"The file is corrupt or unreadable; the sample is left out. Replace the file from the "
                    f"{self.registered_name} release to use it.")
        return ("Restore it, or run with data.on_missing=skip to leave the sample out.",
                f"The file is corrupt or unreadable: replace it from the {self.registered_name} release, "
                "or run with data.on_missing=skip to leave the sample out (counted).")

    def decoder(self, modality: str) -> Callable | None:
        """By the modality's input type: video files or frame folders (only image names holding
        FRAME_PATTERN), audio (a file's audio track), text (the source is the text itself);
        sensors by the data set's own ``sensor_decoder``."""
        if modality not in self.modalities:
            raise DataError(f"{self.registered_name} has no modality '{modality}' (it has "
                            f"{', '.join(self.modalities)}); fix data.modalities")
        kind = MODALITY_TYPES[modality]
        if kind == "video":
            return functools.partial(decode_clip, frames=self.data.video_frames, hints=self.hints(),
                                     pattern=self.FRAME_PATTERN)
        if kind == "audio":
            return functools.partial(decode_ogg, sample_rate=self.data.sample_rate,
                                     max_seconds=self.data.max_speech_seconds, hints=self.hints())
        if kind == "text":
            return None
        return self.sensor_decoder(modality)

    def sensor_decoder(self, modality: str) -> Callable:
        raise NotImplementedError


def _video_lookup(folders: list[Path], kinetics_names: bool = False) -> dict[str, str]:
    """{video id: path} of the video files in folders (first folder wins). With kinetics_names,
    '<ytid>_<start>_<end>.mp4' is found under its 11-character YouTube id as well."""
    found: dict[str, str] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for f in sorted(os.listdir(folder)):
            stem, ext = os.path.splitext(f)
            if ext.lower() not in (".mp4", ".mkv", ".webm", ".avi", ".mov"):
                continue
            found.setdefault(stem, str(folder / f))
            if kinetics_names and re.fullmatch(r".{11}_\d+_\d+", stem):
                found.setdefault(stem[:11], str(folder / f))
    return found


# -- video + audio from a shipped split list (AVE, Kinetics-Sounds) ----------------------------
class AudioVisualList(ClipDataset):
    """A shipped list (video_id, split, label) + a folder of videos; audio from a wav beside
    them (audios/<id>.wav) when there is one, else the video's own audio track."""

    modalities = ("video", "audio")
    SPLIT_FILE = ""
    VIDEO_FOLDERS: tuple[str, ...] = ()
    KINETICS_NAMES = False

    def list_stamps(self) -> list[str]:
        import hashlib
        raw = (resources.files("mmcl.data") / "splits" / self.SPLIT_FILE).read_bytes()
        return [f"{self.SPLIT_FILE}:{hashlib.sha256(raw).hexdigest()[:16]}"]

    def items(self) -> list[dict]:
        videos = _video_lookup([self.root / f for f in self.VIDEO_FOLDERS], self.KINETICS_NAMES)
        wavs = [self.root / "audios", self.root / "audio"]
        out = []
        for row in shipped_split(self.SPLIT_FILE):
            vid = row["video_id"]
            if row["label"] not in self.classes:
                continue
            files = {}
            wav = next((str(w / f"{vid}.wav") for w in wavs if (w / f"{vid}.wav").is_file()), None)
            if "video" in self.data.modalities or wav is None:
                video = self.existing([videos.get(vid) or self.root / self.VIDEO_FOLDERS[0] / f"{vid}.mp4"],
                                      "video", vid)
                files["video"] = video
            files["audio"] = wav or files["video"]
            out.append({"id": vid, "label": row["label"], "split": row["split"], "domain": "all",
                        "files": files})
        return out
