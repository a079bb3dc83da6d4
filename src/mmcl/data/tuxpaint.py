"""Tux Paint stamps: a small real data set with paired image, text and human speech.

Layout under the root (Debian package ``tuxpaint-stamps-default``)::

    animals/mammals/bears/bear.png          the stamp's image (RGBA)
    animals/mammals/bears/bear.txt          English first line, then ``fr.utf8=...`` lines
    animals/mammals/bears/bear_desc_fr.ogg  a person reading the description (one per language)

A stamp's class is its first two folder levels under the root (``animals/mammals``); a stamp
directly in a top-level folder takes that folder (``clothes``). One sample is one
(stamp, language) pair: the stamp's image, its text in that language and the spoken
description in that language. The image is stored once per stamp and shared by its samples.

A stamp lacking its description file or a language's recording is left out, except with
``data.on_missing=mask``: then it is kept (it needs its image) with that modality masked.
"""
from __future__ import annotations

import functools
import logging
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmcl.data.errors import DataError
from mmcl.data.media import REINSTALL_HINT, decode_ogg, decode_png, file_problem
from mmcl.data.roots import dataset_root
from mmcl.data.splitting import split_samples
from mmcl.registry import register_dataset
from mmcl.settings import check_names, setting

log = logging.getLogger(__name__)

TUXPAINT_LANGUAGES = ["fr", "ru", "ro", "ca", "bg", "es"]

INSTALL_HINT = ("Install them with `sudo apt-get install tuxpaint-stamps-default` (Debian/Ubuntu), "
                "or point data.root (or the environment variable MMCL_TUXPAINT_ROOT) at a copy of "
                "Tux Paint's stamps/ folder.")
# This data set's advice for a missing and a corrupt file is the decoders' default
# (mmcl.data.media.MISSING_HINT, REINSTALL_HINT).


def read_descriptions(path: str) -> tuple[str, dict[str, str]]:
    """NAME.txt -> (English first line, {language: text}) from its ``lang.utf8=text`` lines."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"stamp description {path} is not UTF-8 text ({e}). {REINSTALL_HINT}") from e
    except OSError as e:
        raise file_problem(path, "stamp description", e) from e
    english = lines[0].strip() if lines else ""
    texts: dict[str, str] = {}
    for line in lines[1:]:
        key, sep, value = line.partition("=")
        if sep and key.strip().endswith(".utf8"):
            lang = key.strip()[: -len(".utf8")]
            texts.setdefault(lang, value.strip())  # first occurrence wins, as in Tux Paint
    return english, texts


# -- the data set ---------------------------------------------------------------------------------
@dataclass
class TuxPaintSettings:
    languages: list[str] = setting("languages: one sample per stamp and language (domain-incremental: one "
                                   "domain per language)", factory=lambda: list(TUXPAINT_LANGUAGES))
    max_stamps_per_class: int = setting("cap on stamps per class (0: all); for quick experiments", 0, minimum=0)


@register_dataset("tuxpaint", settings=TuxPaintSettings,
                  former_keys={"languages": "languages", "max_stamps_per_class": "max_stamps_per_class"})
class TuxPaint:
    """Tux Paint stamps: image + text + human speech per (stamp, language); real, offline."""

    modalities = ("image", "text", "speech")
    split_samples = staticmethod(split_samples)

    @classmethod
    def check_config(cls, cfg) -> None:
        """The classes and languages are lists of distinct names (the stamps' folders decide
        whether they exist, at preparation)."""
        check_names("data.classes", cfg.data.classes, example="[animals/mammals,food/fruit]")
        check_names("data.tuxpaint.languages", cfg.data.tuxpaint.languages, example="[fr,ru]")

    def __init__(self, data):
        self.data = data
        self.section = data.tuxpaint  # this data set's own settings (data.tuxpaint.*)
        root = dataset_root(data, "tuxpaint", "MMCL_TUXPAINT_ROOT") or "/usr/share/tuxpaint/stamps"
        self.root = Path(os.path.expanduser(root))
        self.text_fallbacks: list[str] = []  # "stamp:lang" that used the English line
        self.masked: list[str] = []  # "stamp:lang" kept with text or speech masked (on_missing=mask)

    @property
    def classes(self) -> list[str]:
        return list(self.data.classes)

    @property
    def domains(self) -> list[str]:
        return list(self.section.languages)

    def info(self) -> dict:
        """Notes stored with the prepared data (after ``index``)."""
        out = {"text_fallbacks": list(self.text_fallbacks)}
        if self.masked:
            out["masked_samples"] = list(self.masked)
        return out

    def settings(self) -> dict:
        """Everything in the config that changes the prepared inputs (the cache key)."""
        d = self.data
        return {"root": str(self.root.resolve()), "classes": list(d.classes),
                "languages": list(self.section.languages), "image_size": d.image_size,
                "max_text_tokens": d.max_text_tokens, "max_speech_seconds": d.max_speech_seconds,
                "sample_rate": d.sample_rate, "max_stamps_per_class": self.section.max_stamps_per_class,
                # (only with mask: stamps lacking files are indexed then; the other values share a cache)
                **({"on_missing": "mask"} if d.on_missing == "mask" else {})}

    def discover(self) -> dict[str, list[str]]:
        """{class: sorted stamp paths relative to the root, without extension} for data.classes.

        Stamps lacking a file (SVG-only stamps, stamps without NAME.txt or without a
        recording for one of data.tuxpaint.languages) are left out, unless data.on_missing=mask
        keeps those with an image (their missing text or speech masked). A listed class left
        without stamps is an error naming the class, the closest class folder that has stamps,
        and what its stamps lack."""
        if not self.root.is_dir():
            raise DataError(f"Tux Paint stamps not found at {self.root} (data.root). {INSTALL_HINT}")
        languages = list(self.section.languages)
        wanted = set(self.data.classes)
        found: dict[str, list[str]] = defaultdict(list)
        pngs: dict[str, int] = defaultdict(int)  # class -> stamps with an image, usable or not
        lacking: dict[str, str] = {}  # class -> one stamp left out and the file it lacks
        heard: set[str] = set()  # languages with at least one recording
        usable: set[str] = set()  # classes (listed or not) with at least one usable stamp
        skipped = 0
        for folder, dirs, files in os.walk(self.root):
            dirs.sort()
            rel = Path(folder).relative_to(self.root)
            if not rel.parts:
                continue  # stamps right under the root have no class
            cls = "/".join(rel.parts[:2])
            names = set(files)
            for f in files:
                stem, sep, lang = f.rpartition("_desc_")
                if sep and lang.endswith(".ogg"):
                    heard.add(lang[:-4])
            for f in sorted(files):
                if not f.endswith(".png"):
                    continue
                stem = f[:-4]
                pngs[cls] += 1
                need = [f"{stem}.txt"] + [f"{stem}_desc_{lang}.ogg" for lang in languages]
                absent = [n for n in need if n not in names]
                if absent and self.data.on_missing != "mask":
                    if cls in wanted:
                        skipped += 1
                        lacking.setdefault(cls, (rel / absent[0]).as_posix())
                    continue
                usable.add(cls)
                if cls in wanted:
                    found[cls].append((rel / stem).as_posix())
        empty = [c for c in self.data.classes if not found.get(c)]
        if empty:
            raise DataError(self._empty_classes_message(empty, usable, pngs, lacking, heard))
        if skipped:
            log.info("tuxpaint: left out %d stamp(s) of data.classes lacking a description or a "
                     "recording in data.tuxpaint.languages (e.g. no %s)", skipped, next(iter(lacking.values())))
        cap = self.section.max_stamps_per_class
        return {c: sorted(found[c])[:cap] if cap > 0 else sorted(found[c]) for c in self.data.classes}

    def _empty_classes_message(self, empty, usable, pngs, lacking, heard) -> str:
        import difflib
        with_stamps = sorted(c for c, n in pngs.items() if n)
        if not with_stamps:
            return (f"no Tux Paint stamps (NAME.png files in class folders) under {self.root} "
                    f"(data.root). {INSTALL_HINT}")
        parts = []
        for c in empty:
            if pngs.get(c):
                parts.append(f"'{c}' has {pngs[c]} stamp(s), but none has every file it needs "
                             f"(e.g. there is no {lacking[c]})")
            else:
                near = difflib.get_close_matches(c, [x for x in with_stamps if x != c], n=1, cutoff=0.6)
                parts.append(f"'{c}' has no stamps" + (f" (did you mean '{near[0]}'?)" if near else ""))
        msg = (f"no usable stamps under {self.root} for {len(empty)} class(es) in data.classes: "
               f"{'; '.join(parts)}. A stamp needs NAME.png, NAME.txt and NAME_desc_<lang>.ogg for "
               f"every language in data.tuxpaint.languages={list(self.section.languages)}.")
        unheard = [lang for lang in self.section.languages if lang not in heard]
        if unheard:
            return msg + (f" No stamp has a recording in {', '.join(repr(x) for x in unheard)}: fix "
                          f"data.tuxpaint.languages (languages with recordings: {', '.join(sorted(heard)) or 'none'}).")
        return msg + (f" Fix data.classes (a class is a stamp folder, at most two levels deep; "
                      f"with usable stamps: {', '.join(sorted(usable)) or 'none'}).")

    def index(self) -> tuple[list[dict], dict[str, list]]:
        """Walk the root -> (records, sources): sources[modality][row] is what ``decoder``
        turns into that row's raw item (a path relative to the root, or the text itself)."""
        languages = list(self.section.languages)
        records: list[dict] = []
        sources: dict[str, list] = {"image": [], "text": [], "speech": []}
        self.text_fallbacks = []
        masking = self.data.on_missing == "mask"  # discover kept stamps lacking files: mask those
        self.masked = []
        for label, (cls, stamps) in enumerate(self.discover().items()):
            for stamp in stamps:
                has_text = not masking or os.path.isfile(self.root / f"{stamp}.txt")
                english, texts = read_descriptions(str(self.root / f"{stamp}.txt")) if has_text else ("", {})
                image_row = len(sources["image"])
                sources["image"].append(f"{stamp}.png")
                for domain, lang in enumerate(languages):
                    text = texts.get(lang, "")
                    if lang == "en":
                        text = english  # English is the first line, there is no en.utf8 line
                    elif not text and has_text:
                        self.text_fallbacks.append(f"{stamp}:{lang}")
                        text = english
                    rows = {"image": image_row, "text": -1, "speech": -1}  # -1: missing, masked
                    if has_text:
                        rows["text"] = len(sources["text"])
                        sources["text"].append(text)
                    speech = f"{stamp}_desc_{lang}.ogg"
                    if not masking or os.path.isfile(self.root / speech):
                        rows["speech"] = len(sources["speech"])
                        sources["speech"].append(speech)
                    if -1 in rows.values():
                        self.masked.append(f"{stamp}:{lang}")
                    records.append({"index": len(records), "stamp": stamp, "class_name": cls, "label": label,
                                    "language": lang, "domain": domain, "rows": rows})
        if self.masked:
            log.warning("tuxpaint: %d sample(s) lack a description or a recording; kept with it masked "
                        "(data.on_missing=mask), e.g. %s", len(self.masked), self.masked[0])
        if self.text_fallbacks:
            log.info("tuxpaint: %d text(s) have no line in their language and use the English one: %s",
                     len(self.text_fallbacks), ", ".join(self.text_fallbacks))
        return records, sources

    def decoder(self, modality: str) -> Callable | None:
        """The function that turns one source of ``modality`` into its raw item (None: the
        source is the raw item). A partial of a module-level function, so a pool can pickle it."""
        root = str(self.root)
        if modality == "image":
            return functools.partial(_decode_under, "image", root)
        if modality == "speech":
            return functools.partial(_decode_under, "speech", root, sample_rate=self.data.sample_rate,
                                     max_seconds=self.data.max_speech_seconds)
        if modality == "text":
            return None
        raise DataError(f"tuxpaint has no modality '{modality}' (it has {', '.join(self.modalities)})")


def _decode_under(modality: str, root: str, rel: str, **kw):
    # The decoder is looked up at call time (not bound in the partial) so tests can patch it
    # here (mmcl.data.tuxpaint.decode_png / decode_ogg).
    fn = decode_png if modality == "image" else decode_ogg
    return fn(os.path.join(root, rel), **kw)
