"""SAMSEMO: emotion in movie utterances in five languages (video frames + audio + transcript),
domain-incremental by language; the release's samsemo.tsv and split lists."""
from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from mmcl.data.clips import ClipDataset
from mmcl.data.errors import DataError
from mmcl.encoders.weights import file_stamp
from mmcl.registry import register_dataset
from mmcl.settings import setting

log = logging.getLogger(__name__)

SAMSEMO_LANGUAGES = ("EN", "DE", "ES", "PL", "KO")
SAMSEMO_EMOTIONS = ("anger", "happiness", "sadness", "surprise", "neutral")
_ALL_EMOTIONS = SAMSEMO_EMOTIONS + ("fear", "disgust", "contempt", "other", "none")
_EMOTION_WORDS = {"angry": "anger", "happy": "happiness", "joy": "happiness", "sad": "sadness",
                  "surprised": "surprise", "neutrality": "neutral"}


def parse_emotions(cell: str) -> list[str]:
    """'happiness, surprise' / "['Happy', 'Surprise']" -> ['happiness', 'surprise']."""
    words = [w for w in re.split(r"[^a-zA-Z]+", str(cell or "").lower()) if w]
    out = []
    for w in words:
        w = _EMOTION_WORDS.get(w, w)
        if w not in out:
            out.append(w)
    return out


@dataclass
class SAMSEMOSettings:
    multi_label: str = setting("an utterance with several of data.classes among its aggregated emotions: 'drop' "
                               "(left out, counted) or 'first' (labelled with the first listed) [C]", "drop",
                               choices=("drop", "first"))


@register_dataset("samsemo", settings=SAMSEMOSettings, former_keys={"multi_label": "multi_label"})
class SAMSEMO(ClipDataset):
    """SAMSEMO: emotion of movie utterances in EN, DE, ES, PL, KO; video frames + audio + transcript."""

    modalities = ("video", "audio", "text")
    CLASSES = SAMSEMO_EMOTIONS
    ENV = "MMCL_SAMSEMO_ROOT"
    FRAME_PATTERN = "image"  # the utterance folder's image_<i>.jpg
    LAYOUT = ("samsemo.tsv, <LANG>/<utterance_id>/{audio.wav, image_*.jpg} (the unzipped data/<LANG>.zip), "
              "optional splits/{train,valid,test}_split_<LANG>.txt")

    @property
    def domains(self) -> list[str]:
        return list(self.data.domains) or list(SAMSEMO_LANGUAGES)

    @property
    def tsv(self) -> Path:
        return self.root / "samsemo.tsv"

    def list_stamps(self) -> list[str]:
        return [file_stamp(p) for p in [self.tsv, *sorted((self.root / "splits").glob("*.txt"))] if p.is_file()]

    def settings(self) -> dict:
        return {**super().settings(), "multi_label": self.data.samsemo.multi_label}

    def official_splits(self) -> dict[str, dict[str, str]]:
        """{LANG: {utterance id: train|val|test}} from splits/{train,valid,test}_split_<LANG>.txt;
        a language without such files is absent (its utterances are split by the seed)."""
        out: dict[str, dict[str, str]] = {}
        for split, name in (("train", "train"), ("val", "valid"), ("test", "test")):
            for path in sorted((self.root / "splits").glob(f"{name}_split_*.txt")):
                lang = path.stem.rsplit("_", 1)[-1].upper()
                for line in path.read_text(encoding="utf-8").splitlines():
                    if line.strip():
                        out.setdefault(lang, {}).setdefault(line.strip(), split)
        return out

    def items(self) -> list[dict]:
        if not self.tsv.is_file():
            raise DataError(f"samsemo: {self.tsv} is missing (expected {self.LAYOUT})")
        with open(self.tsv, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        need = ["utterance_id", "language", "aggregated_emotions"]
        text_col = next((c for c in ("transcript", "text") if rows and c in rows[0]), None)
        missing = [c for c in need if not rows or c not in rows[0]] + ([] if text_col else ["transcript"])
        if missing:
            raise DataError(f"samsemo: {self.tsv} has no column {', '.join(missing)} "
                            f"(columns: {', '.join(rows[0]) if rows else 'none'})")
        splits = self.official_splits()
        classes, rule = self.classes, self.data.samsemo.multi_label
        out = []
        self.left_out = {"no listed emotion": 0, "several listed emotions": 0, "not in the split lists": 0}
        for n, row in enumerate(rows, 2):
            uid, lang = row["utterance_id"].strip(), row["language"].strip().upper()
            if lang not in self.domains:
                continue
            emotions = parse_emotions(row["aggregated_emotions"])
            unknown = [e for e in emotions if e not in _ALL_EMOTIONS]
            if unknown:
                raise DataError(f"samsemo: {self.tsv}, line {n} ({uid}): emotion '{unknown[0]}' is not one "
                                f"of {', '.join(_ALL_EMOTIONS)}")
            listed = [e for e in emotions if e in classes]
            if not listed:
                self.left_out["no listed emotion"] += 1
                continue
            if len(listed) > 1 and rule == "drop":
                self.left_out["several listed emotions"] += 1
                continue
            lists = splits.get(lang)
            if lists is not None and uid not in lists:
                self.left_out["not in the split lists"] += 1
                continue
            files = {"text": row[text_col] or ""}
            if {"video", "audio"} & set(self.data.modalities):
                folder = self.existing([self.root / lang / uid, self.root / uid], "utterance folder", uid)
                if "video" in self.data.modalities:
                    files["video"] = folder
                if "audio" in self.data.modalities:
                    files["audio"] = self.existing([Path(folder) / "audio.wav"], "audio.wav", uid) \
                        if Path(folder).is_dir() else str(Path(folder) / "audio.wav")
            out.append({"id": uid, "label": listed[0], "split": (lists or {}).get(uid, ""), "domain": lang,
                        "group": row.get("movie_title") or uid, "files": files})
        if any(self.left_out.values()):
            log.info("samsemo: left out %s (data.samsemo.multi_label=%s)", self.left_out, rule)
        return out
