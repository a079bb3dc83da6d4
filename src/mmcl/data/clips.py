"""The paper's benchmarks, read from their official release layouts: AVE, Kinetics-Sounds,
UESTC-MMEA-CL and SAMSEMO (docs/datasets.md has the layouts, the sources and what is unverified).

Each data set lists its samples (``items``: id, label, split, domain, one source per modality)
from the release's own list files, or from the split lists shipped in ``mmcl/data/splits``
(AV-CIL's AVE and Kinetics-Sounds splits); ``ClipDataset`` turns them into the records and
sources that ``mmcl.data.prepared.prepare`` decodes once. A missing file is found while
indexing, an unreadable one while decoding: ``data.on_missing=fail`` stops with the path,
``skip`` leaves the sample out and counts it (listed in the log and the run's data info).
"""
from __future__ import annotations

import csv
import difflib
import functools
import gzip
import io
import json
import logging
import os
import re
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from mmcl.data.manifest import manifest_split
from mmcl.data.media import decode_frame_folder, decode_video, median_filter, read_numeric_table
from mmcl.data.prepared import DataError
from mmcl.data.tuxpaint import decode_ogg
from mmcl.encoders._weights import file_stamp
from mmcl.registry import register_dataset

log = logging.getLogger(__name__)

ROOTS_FILE = "roots.json"  # in data.cache_dir: the root each data set was prepared from


def remembered_root(cache_dir: str, dataset: str) -> str:
    try:
        roots = json.loads((Path(os.path.expanduser(cache_dir)) / ROOTS_FILE).read_text(encoding="utf-8"))
        return str(roots.get(dataset, "")) if isinstance(roots, dict) else ""
    except (OSError, ValueError):
        return ""


def remember_root(cache_dir: str, dataset: str, root: str) -> None:
    """``mmcl prepare <preset> --root DIR`` records DIR, so ``mmcl run <preset>`` finds it."""
    from mmcl.data.prepared import _atomic_write_json
    folder = Path(os.path.expanduser(cache_dir))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ROOTS_FILE
    try:
        roots = json.loads(path.read_text(encoding="utf-8"))
        roots = roots if isinstance(roots, dict) else {}
    except (OSError, ValueError):
        roots = {}
    roots[dataset] = str(Path(os.path.expanduser(root)).resolve())
    _atomic_write_json(path, roots)


def shipped_split(name: str) -> list[dict]:
    """Rows of a split list shipped in mmcl/data/splits (csv or csv.gz)."""
    res = resources.files("mmcl.data") / "splits" / name
    raw = res.read_bytes()
    text = gzip.decompress(raw).decode("utf-8") if name.endswith(".gz") else raw.decode("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


class ClipDataset:
    """Shared logic; subclasses set ``modalities``, ``CLASSES``, ``ENV``, ``LAYOUT`` and
    implement ``items()`` and ``decoder(modality)``."""

    modalities: tuple[str, ...] = ()
    CLASSES: tuple[str, ...] = ()
    DOMAINS: tuple[str, ...] = ("all",)
    ENV = ""
    LAYOUT = ""
    split_samples = staticmethod(lambda records, fractions, seed: manifest_split(records, fractions, seed))

    def __init__(self, data):
        self.data = data
        name = self.registered_name
        root = data.root or os.environ.get(self.ENV, "") or remembered_root(data.cache_dir, name)
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
                "on_missing": d.on_missing, "lists": self.list_stamps()}

    def list_stamps(self) -> list[str]:
        """Size + mtime of the list files read (a changed list re-indexes)."""
        return []

    def info(self) -> dict:
        return {"root": str(self.root), "missing_files": list(self.skipped), "left_out": dict(self.left_out)}

    # -- indexing ----------------------------------------------------------------------------
    def items(self) -> list[dict]:
        """[{id, label (class name), split ('' = by seed), domain, group, files: {mod: source}}]"""
        raise NotImplementedError

    def existing(self, candidates, what: str, item: str) -> str | None:
        """The first existing path among candidates; a missing file -> error or skipped."""
        for c in candidates:
            if c is not None and os.path.exists(c):
                return str(c)
        first = next(c for c in candidates if c is not None)
        if self.data.on_missing == "skip":
            self.skipped.append(f"{item}: {what} {first}")
            return None
        tried = ", ".join(str(c) for c in candidates if c is not None)
        raise DataError(f"{self.registered_name}: {what} of {item} is missing (looked for {tried}). "
                        f"Restore it, or run with data.on_missing=skip to leave such samples out.")

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
            if any(files.get(m) is None for m in mods):
                continue  # a missing file, skipped (on_missing=skip) and listed
            i = len(records)
            for m in mods:
                sources[m].append(files[m])
            records.append({"index": i, "id": it["id"], "label": class_id[it["label"]],
                            "class_name": it["label"], "domain": domain_id[it["domain"]],
                            "stamp": it.get("group") or it["id"], "split": it.get("split", ""),
                            "rows": {m: i for m in mods}})
        if self.skipped:
            log.warning("%s: %d sample(s) left out for missing files (data.on_missing=skip), e.g. %s",
                        self.registered_name, len(self.skipped), self.skipped[0])
        if not records:
            raise DataError(f"{self.registered_name}: no usable samples under {self.root} for classes "
                            f"{classes[:4]}... (expected {self.LAYOUT})")
        return records, sources

    def _unknown_modality(self, modality):
        return DataError(f"{self.registered_name} has no modality '{modality}' (it has "
                         f"{', '.join(self.modalities)}); fix data.modalities")

    def hints(self) -> tuple[str, str]:
        return (f"Restore it, or run with data.on_missing=skip to leave the sample out.",
                f"The file is corrupt or unreadable: replace it from the {self.registered_name} release, "
                "or run with data.on_missing=skip to leave the sample out (counted).")

    def video_decoder(self) -> Callable:
        return functools.partial(_decode_clip, frames=self.data.video_frames, hints=self.hints())

    def audio_decoder(self) -> Callable:
        return functools.partial(decode_ogg, sample_rate=self.data.sample_rate,
                                 max_seconds=self.data.max_speech_seconds, hints=self.hints())


def _decode_clip(source: str, frames: int, hints, pattern: str = ""):
    """A video file, or a folder of extracted frames."""
    if os.path.isdir(source):
        return decode_frame_folder(source, frames, hints, pattern)
    return decode_video(source, frames, hints)


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


# -- AVE and Kinetics-Sounds: video + audio, AV-CIL's split lists ----------------------------------
AVE_CLASSES = (
    "Acoustic guitar", "Cat", "Fixed-wing aircraft, airplane", "Frying (food)", "Ukulele", "Helicopter",
    "Mandolin", "Bus", "Train horn", "Male speech, man speaking", "Clock", "Race car, auto racing",
    "Toilet flush", "Female speech, woman speaking", "Violin, fiddle", "Chainsaw", "Flute", "Church bell",
    "Motorcycle", "Banjo", "Rodents, rats, mice", "Truck", "Bark", "Baby cry, infant cry", "Horse",
    "Accordion", "Shofar", "Goat")
KS_CLASSES = (
    "playing drums", "bowling", "shoveling snow", "playing harmonica", "tickling", "chopping wood",
    "dribbling basketball", "laughing", "playing organ", "playing xylophone", "playing keyboard",
    "playing accordion", "ripping paper", "tapping pen", "playing piano", "playing saxophone",
    "blowing out candles", "playing trumpet", "tap dancing", "playing trombone", "singing",
    "playing bass guitar", "shuffling cards", "blowing nose", "playing guitar", "playing violin",
    "playing bagpipes", "stomping grapes", "playing clarinet", "tapping guitar")


class AudioVisualList(ClipDataset):
    """A shipped list (video_id, split, label) + a folder of videos; audio from a wav beside
    them (audios/<id>.wav) when there is one, else the video's own audio track."""

    modalities = ("video", "audio")
    SPLIT_FILE = ""
    VIDEO_FOLDERS: tuple[str, ...] = ()
    KINETICS_NAMES = False

    def items(self) -> list[dict]:
        videos = _video_lookup([self.root / f for f in self.VIDEO_FOLDERS], self.KINETICS_NAMES)
        wavs = [self.root / "audios", self.root / "audio"]
        out = []
        for row in shipped_split(self.SPLIT_FILE):
            vid = row["video_id"]
            if row["label"] not in self.classes:
                continue
            video = self.existing([videos.get(vid) or self.root / self.VIDEO_FOLDERS[0] / f"{vid}.mp4"],
                                  "video", vid)
            audio = next((str(w / f"{vid}.wav") for w in wavs if (w / f"{vid}.wav").is_file()), video)
            out.append({"id": vid, "label": row["label"], "split": row["split"], "domain": "all",
                        "files": {"video": video, "audio": audio}})
        return out

    def decoder(self, modality: str) -> Callable | None:
        if modality == "video":
            return self.video_decoder()
        if modality == "audio":
            return self.audio_decoder()
        raise self._unknown_modality(modality)


@register_dataset("ave")
class AVE(AudioVisualList):
    """AVE: 28 audio-visual event classes, 10-s YouTube clips, AV-CIL's split (3294/391/394); video + audio."""

    CLASSES = AVE_CLASSES
    ENV = "MMCL_AVE_ROOT"
    LAYOUT = "AVE/<VideoID>.mp4 (the AVE_Dataset folder of the release; or the videos directly)"
    SPLIT_FILE = "ave.csv"
    VIDEO_FOLDERS = ("AVE", ".", "videos")


@register_dataset("kinetics-sounds")
class KineticsSounds(AudioVisualList):
    """Kinetics-Sounds: 30 Kinetics-400 classes with sound, AV-CIL's split (19220/1947/1958); video + audio."""

    CLASSES = KS_CLASSES
    ENV = "MMCL_KINETICS_SOUNDS_ROOT"
    LAYOUT = ("videos/<ytid>.mp4 (AV-CIL's raw_data/kinetics-sounds), or Kinetics files "
              "<ytid>_<start>_<end>.mp4 in videos/ or in the root")
    SPLIT_FILE = "kinetics_sounds.csv.gz"
    VIDEO_FOLDERS = ("videos", ".")
    KINETICS_NAMES = True


# -- UESTC-MMEA-CL: egocentric video + accelerometer + gyroscope ---------------------------------
UESTC_FOLDERS = (
    "1_upstairs", "2_downstairs", "3_drinking", "4_fall", "5_reading", "6_sweep_floor", "7_cut_fruits",
    "8_mop_floor", "9_writing", "10_wipe_table", "11_wash_hand", "12_standing", "13_play_phone",
    "14_type_pc", "15_eating", "16_cooking", "17_pick_up_phone", "18_drop_trush", "19_fold_clothes",
    "20_walking", "21_play_card", "22_brush_teeth", "23_wash_dish", "24_moving_sth", "25_type_phone",
    "26_chat", "27_open_close_door", "28_ride_bike", "29_sit_stand", "30_take_drop_sth", "31_shopping",
    "32_watch_TV")
# The official code's normalisation (Xu-Linfeng/UESTC_MMEA_CL_main, utils/mydata_manager.py, model.py)
IMU_SCALE = {"accel": 8192.0, "gyro": 16.4}
IMU_MEAN = {"accel": (0.0352, 0.3717, -0.7944), "gyro": (78.5445, -2.1253, -6.6940)}
IMU_STD = {"accel": (0.1836, 0.4058, 0.2219), "gyro": (352.5285, 181.1698, 286.6291)}


def decode_uestc_imu(path: str, part: str, hints=None) -> np.ndarray:
    """A UESTC-MMEA-CL sensor CSV (acc xyz, gyro xyz as raw counts per row) -> (T, 3) float32,
    as the official code prepares it: scaled to g (/8192) or deg/s (/16.4), median filter over 5
    rows; the gyroscope then has its mean removed and is integrated (cumulative trapezoid) into an
    angle; finally normalised with the official per-axis mean / std."""
    table = read_numeric_table(path, 6, hints)
    cols = slice(0, 3) if part == "accel" else slice(3, 6)
    x = median_filter(table[:, cols] / IMU_SCALE[part], 5)
    if part == "gyro":
        x = x - x.mean(axis=0, keepdims=True)
        steps = (x[1:] + x[:-1]) / 2.0
        x = np.concatenate([x[:1], x[:1] + np.cumsum(steps, axis=0)], axis=0)
    return ((x - np.asarray(IMU_MEAN[part])) / np.asarray(IMU_STD[part])).astype(np.float32)


@register_dataset("uestc-mmea")
class UESTCMMEA(ClipDataset):
    """UESTC-MMEA-CL: 32 egocentric activities, official lists (4553/653/1316); video + accelerometer + gyroscope."""

    modalities = ("video", "accel", "gyro")
    CLASSES = tuple(f.split("_", 1)[1] for f in UESTC_FOLDERS)
    ENV = "MMCL_UESTC_MMEA_ROOT"
    LAYOUT = ("mydataset_{train,val,test}.txt (or train/val/test.txt), video/<N_class>/<clip>.mp4 "
              "or <clip>/ frame folders, sensor/<N_class>/<clip>.csv")
    SPLITS = (("train", "train"), ("val", "val"), ("test", "test"))

    def list_files(self) -> list[tuple[str, Path]]:
        out = []
        for split, name in self.SPLITS:
            for cand in (self.root / f"mydataset_{name}.txt", self.root / f"{name}.txt"):
                if cand.is_file():
                    out.append((split, cand))
                    break
            else:
                raise DataError(f"uestc-mmea: no {split} list under {self.root} (looked for "
                                f"mydataset_{name}.txt and {name}.txt; expected {self.LAYOUT})")
        return out

    def list_stamps(self) -> list[str]:
        return [file_stamp(p) for _, p in self.list_files()]

    def items(self) -> list[dict]:
        out = []
        for split, path in self.list_files():
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split()
                try:
                    clip_path, label = parts[0], int(parts[-1])
                except (IndexError, ValueError):
                    raise DataError(f"{path}, line {n}: expected '<clip path> <frames> <imu rows> <label>', "
                                    f"got {line.strip()[:80]!r}") from None
                if not 0 <= label < len(UESTC_FOLDERS):
                    raise DataError(f"{path}, line {n}: label {label} is outside the 32 classes (0-31)")
                folder = UESTC_FOLDERS[label]
                clip = clip_path.replace("\\", "/").rstrip("/").split("/")[-1]
                item = f"{folder}/{clip}"
                name = self.CLASSES[label]
                if name not in self.classes:
                    continue
                files = {}
                if "video" in self.data.modalities:
                    files["video"] = self.existing(
                        [self.root / "video" / folder / f"{clip}.mp4", self.root / "video" / folder / clip,
                         self.root / "data" / folder / clip], "video", item)
                if {"accel", "gyro"} & set(self.data.modalities):
                    imu = self.existing([self.root / "sensor" / folder / f"{clip}.csv",
                                         self.root / "gyro" / folder / f"{clip}.csv"], "sensor file", item)
                    files["accel"] = files["gyro"] = imu
                out.append({"id": item, "label": name, "split": split, "domain": "all", "files": files})
        return out

    def decoder(self, modality: str) -> Callable | None:
        if modality == "video":
            return self.video_decoder()
        if modality in ("accel", "gyro"):
            return functools.partial(decode_uestc_imu, part=modality, hints=self.hints())
        raise self._unknown_modality(modality)


# -- SAMSEMO: multilingual emotion (video frames + audio + transcript), one language per domain ----
SAMSEMO_LANGUAGES = ("EN", "DE", "ES", "PL", "KO")
SAMSEMO_EMOTIONS = ("anger", "happiness", "sadness", "surprise", "neutral")
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


@register_dataset("samsemo")
class SAMSEMO(ClipDataset):
    """SAMSEMO: emotion of movie utterances in EN, DE, ES, PL, KO; video frames + audio + transcript."""

    modalities = ("video", "audio", "text")
    CLASSES = SAMSEMO_EMOTIONS
    ENV = "MMCL_SAMSEMO_ROOT"
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

    def official_splits(self) -> dict[str, str]:
        """{utterance id: train|val|test} from splits/*_split_<LANG>.txt (empty: none shipped)."""
        out = {}
        for split, name in (("train", "train"), ("val", "valid"), ("test", "test")):
            for path in sorted((self.root / "splits").glob(f"{name}_split_*.txt")):
                for line in path.read_text(encoding="utf-8").splitlines():
                    if line.strip():
                        out.setdefault(line.strip(), split)
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
        classes, rule = self.classes, self.data.multi_label
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
            if splits and uid not in splits:
                self.left_out["not in the split lists"] += 1
                continue
            folder = self.existing([self.root / lang / uid, self.root / uid], "utterance folder", uid)
            files = {"text": row[text_col] or ""}
            if folder is not None:
                files["video"] = folder
                files["audio"] = self.existing([Path(folder) / "audio.wav"], "audio.wav", uid)
            out.append({"id": uid, "label": listed[0], "split": splits.get(uid, ""), "domain": lang,
                        "group": row.get("movie_title") or uid, "files": files})
        if any(self.left_out.values()):
            log.info("samsemo: left out %s (data.multi_label=%s)", self.left_out, rule)
        return out

    def decoder(self, modality: str) -> Callable | None:
        if modality == "video":
            return functools.partial(_decode_clip, frames=self.data.video_frames, hints=self.hints(),
                                     pattern="image")
        if modality == "audio":
            return self.audio_decoder()
        if modality == "text":
            return None
        raise self._unknown_modality(modality)


_ALL_EMOTIONS = SAMSEMO_EMOTIONS + ("fear", "disgust", "contempt", "other", "none")
