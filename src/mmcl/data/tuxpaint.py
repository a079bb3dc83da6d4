"""Tux Paint stamps: a small real data set with paired image, text and human speech.

Layout under the root (Debian package ``tuxpaint-stamps-default``)::

    animals/mammals/bears/bear.png          the stamp's image (RGBA)
    animals/mammals/bears/bear.txt          English first line, then ``fr.utf8=...`` lines
    animals/mammals/bears/bear_desc_fr.ogg  a person reading the description (one per language)

A stamp's class is its first two folder levels under the root (``animals/mammals``); a stamp
directly in a top-level folder takes that folder (``clothes``). One sample is one
(stamp, language) pair: the stamp's image, its text in that language and the spoken
description in that language. The image is stored once per stamp and shared by its samples,
unless ``data.tuxpaint.image_shifts`` gives each language its own image transformation
(mmcl.data.image_shifts): then one image row per (stamp, shift).

Which stamps and classes (the presets' construction, docs in README.md):

- a stamp needs NAME.png, NAME.txt and a recording NAME_desc_<lang>.ogg in every language of
  ``data.tuxpaint.languages``; with ``data.tuxpaint.partial_languages`` in at least one, and it
  gives one sample per language it has a recording in;
- the classes are ``data.classes``, or, when that is empty, every class folder with at least
  ``data.tuxpaint.min_stamps`` such stamps, by name;
- ``data.tuxpaint.max_stamps_per_class`` keeps a class's first stamps by path.

A stamp lacking its description file or a language's recording is left out, except with
``data.on_missing=mask``: then it is kept (it needs its image) with that modality masked.
"""
from __future__ import annotations

import functools
import logging
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mmcl.data.errors import DataError
from mmcl.data.image_shifts import SHIFTS, shift_image
from mmcl.data.media import REINSTALL_HINT, decode_ogg, decode_png, file_problem
from mmcl.data.roots import dataset_root
from mmcl.data.splitting import split_samples
from mmcl.registry import register_dataset
from mmcl.settings import ConfigError, check_names, setting

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
    max_stamps_per_class: int = setting("cap on stamps per class (0: all; the first ones by path)", 0, minimum=0)
    partial_languages: bool = setting("keep a stamp that has a recording in only some of data.tuxpaint.languages "
                                      "(at least one): one sample per language it has; false: a stamp needs "
                                      "every language", False)
    min_stamps: int = setting("with data.classes empty: the classes are every stamp folder with at least this "
                              "many usable stamps (sorted by name)", 9, minimum=1)
    image_shifts: list[str] = setting("one fixed image transformation per language, in the order of "
                                      "data.tuxpaint.languages, so the image shifts with the domain: "
                                      + ", ".join(SHIFTS) + " (mmcl.data.image_shifts); empty: the "
                                      "stamp's own image in every language", factory=list)


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
        if cfg.data.classes:  # empty: chosen by data.tuxpaint.min_stamps
            check_names("data.classes", cfg.data.classes, example="[animals/mammals,food/fruit]")
        own = cfg.data.tuxpaint
        check_names("data.tuxpaint.languages", own.languages, example="[fr,ru]")
        shifts = list(own.image_shifts)
        if shifts and len(shifts) != len(own.languages):
            raise ConfigError(f"config key 'data.tuxpaint.image_shifts' has {len(shifts)} shift(s) for the "
                              f"{len(own.languages)} languages of data.tuxpaint.languages={list(own.languages)}: "
                              "give one per language (none: unchanged), or [] for no shift")
        for name in shifts:
            if name not in SHIFTS:
                import difflib
                near = difflib.get_close_matches(str(name), list(SHIFTS), n=1, cutoff=0.5)
                hint = f" Did you mean '{near[0]}'?" if near else ""
                raise ConfigError(f"config key 'data.tuxpaint.image_shifts': unknown shift '{name}'.{hint} "
                                  f"Known: {', '.join(SHIFTS)}")

    def __init__(self, data):
        self.data = data
        self.section = data.tuxpaint  # this data set's own settings (data.tuxpaint.*)
        root = dataset_root(data, "tuxpaint", "MMCL_TUXPAINT_ROOT") or "/usr/share/tuxpaint/stamps"
        self.root = Path(os.path.expanduser(root))
        self.text_fallbacks: list[str] = []  # "stamp:lang" that used the English line
        self.masked: list[str] = []  # "stamp:lang" kept with text or speech masked (on_missing=mask)
        self._walked: _Walk | None = None

    @property
    def classes(self) -> list[str]:
        """data.classes, or (when empty) every class folder with at least data.tuxpaint.min_stamps
        usable stamps, by name (walks the root once)."""
        if self.data.classes:
            return list(self.data.classes)
        walk = self._walk()
        need = self.section.min_stamps
        chosen = sorted(c for c, stamps in walk.usable.items() if len(stamps) >= need)
        if not chosen:
            most = max(walk.usable.items(), key=lambda kv: len(kv[1]), default=None)
            if most is None:
                raise DataError(self._empty_classes_message([], walk))
            raise DataError(f"no class folder under {self.root} has data.tuxpaint.min_stamps={need} usable "
                            f"stamps (the most: '{most[0]}' with {len(most[1])}). Lower data.tuxpaint.min_stamps "
                            "or list data.classes.")
        return chosen

    @property
    def shifts(self) -> list[str | None]:
        """The image shift of each domain (None for every domain without data.tuxpaint.image_shifts)."""
        return list(self.section.image_shifts) or [None] * len(self.section.languages)

    @property
    def domains(self) -> list[str]:
        """One per language; with an image shift other than none, 'lang+shift' (e.g. 'ru+grayscale')."""
        return [lang if shift in (None, "none") else f"{lang}+{shift}"
                for lang, shift in zip(self.section.languages, self.shifts)]

    def info(self) -> dict:
        """Notes stored with the prepared data (after ``index``)."""
        out = {"text_fallbacks": list(self.text_fallbacks)}
        if self.masked:
            out["masked_samples"] = list(self.masked)
        return out

    def settings(self) -> dict:
        """Everything in the config that changes the prepared inputs (the cache key). The keys
        added after the first release appear only when they differ from their defaults, so that
        caches prepared before them stay valid (and a cache never serves other stamps, classes
        or image shifts than it was prepared with)."""
        d, own = self.data, self.section
        out = {"root": str(self.root.resolve()), "classes": list(d.classes),
               "languages": list(own.languages), "image_size": d.image_size,
               "max_text_tokens": d.max_text_tokens, "max_speech_seconds": d.max_speech_seconds,
               "sample_rate": d.sample_rate, "max_stamps_per_class": own.max_stamps_per_class}
        if not d.classes:
            out["min_stamps"] = own.min_stamps
        if own.partial_languages:
            out["partial_languages"] = True
        if own.image_shifts:
            out["image_shifts"] = list(own.image_shifts)
        if d.on_missing == "mask":  # stamps lacking files are indexed then
            out["on_missing"] = "mask"
        return out

    def _walk(self) -> _Walk:
        """Walk the root once (cached): every class folder's usable stamps and what the others lack."""
        if self._walked is not None:
            return self._walked
        if not self.root.is_dir():
            raise DataError(f"Tux Paint stamps not found at {self.root} (data.root). {INSTALL_HINT}")
        languages = list(self.section.languages)
        partial = self.section.partial_languages
        walk = _Walk()
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
                    walk.heard.add(lang[:-4])
            for f in sorted(files):
                if not f.endswith(".png"):
                    continue
                stem = f[:-4]
                walk.pngs[cls] += 1
                recorded = [lang for lang in languages if f"{stem}_desc_{lang}.ogg" in names]
                need = [f"{stem}.txt"] + [f"{stem}_desc_{lang}.ogg" for lang in languages]
                absent = [n for n in need if n not in names]
                masking = self.data.on_missing == "mask"  # keep it; index masks what it lacks
                if masking and not partial:
                    recorded = list(languages)
                if not masking and (f"{stem}.txt" not in names or not recorded or (absent and not partial)) \
                        or masking and not recorded:
                    walk.skipped[cls] += 1
                    walk.lacking.setdefault(cls, (rel / absent[0]).as_posix())
                    continue
                walk.usable[cls].append(((rel / stem).as_posix(), recorded))
        self._walked = walk
        return walk

    def _stamps(self) -> dict[str, list[tuple[str, list[str]]]]:
        """{class: [(stamp, its recorded languages of data.tuxpaint.languages)]}, capped, for the classes."""
        walk, classes = self._walk(), self.classes
        empty = [c for c in classes if not walk.usable.get(c)]
        if empty:
            raise DataError(self._empty_classes_message(empty, walk))
        skipped = sum(walk.skipped[c] for c in classes)
        if skipped:
            rule = "in none of" if self.section.partial_languages else "lacking a description or a recording in"
            log.info("tuxpaint: left out %d stamp(s) of the classes %s data.tuxpaint.languages (e.g. no %s)",
                     skipped, rule, next(walk.lacking[c] for c in classes if c in walk.lacking))
        cap = self.section.max_stamps_per_class
        out = {}
        for c in classes:
            stamps = sorted(walk.usable[c])
            out[c] = stamps[:cap] if cap > 0 else stamps
        return out

    def discover(self) -> dict[str, list[str]]:
        """{class: sorted stamp paths relative to the root, without extension} for the classes.

        Stamps lacking a file (SVG-only stamps, stamps without NAME.txt or without a
        recording for one of data.tuxpaint.languages, or for all of them with
        data.tuxpaint.partial_languages) are left out, unless data.on_missing=mask keeps those
        with an image (their missing text or speech masked). A listed class left without stamps
        is an error naming the class, the closest class folder that has stamps, and what its
        stamps lack."""
        return {c: [stamp for stamp, _ in stamps] for c, stamps in self._stamps().items()}

    def _empty_classes_message(self, empty, walk: _Walk) -> str:
        import difflib
        pngs, lacking = walk.pngs, walk.lacking
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
        every = "a language" if self.section.partial_languages else "every language"
        msg = (f"no usable stamps under {self.root} for {len(empty)} class(es) in data.classes: "
               f"{'; '.join(parts)}. A stamp needs NAME.png, NAME.txt and NAME_desc_<lang>.ogg for "
               f"{every} in data.tuxpaint.languages={list(self.section.languages)}.")
        unheard = [lang for lang in self.section.languages if lang not in walk.heard]
        if unheard:
            return msg + (f" No stamp has a recording in {', '.join(repr(x) for x in unheard)}: fix "
                          f"data.tuxpaint.languages (languages with recordings: "
                          f"{', '.join(sorted(walk.heard)) or 'none'}).")
        usable = sorted(walk.usable)
        return msg + (f" Fix data.classes (a class is a stamp folder, at most two levels deep; "
                      f"with usable stamps: {', '.join(usable) or 'none'}).")

    def index(self) -> tuple[list[dict], dict[str, list]]:
        """Walk the root -> (records, sources): sources[modality][row] is what ``decoder``
        turns into that row's raw item (a path relative to the root, or the text itself; with
        image shifts an image source is [path, shift])."""
        languages, shifts = list(self.section.languages), self.shifts
        records: list[dict] = []
        sources: dict[str, list] = {"image": [], "text": [], "speech": []}
        self.text_fallbacks = []
        masking = self.data.on_missing == "mask"  # _walk kept stamps lacking files: mask those
        self.masked = []
        for label, (cls, stamps) in enumerate(self._stamps().items()):
            for stamp, recorded in stamps:
                has_text = not masking or os.path.isfile(self.root / f"{stamp}.txt")
                english, texts = read_descriptions(str(self.root / f"{stamp}.txt")) if has_text else ("", {})
                image_rows: dict[str | None, int] = {}  # shift -> this stamp's image row
                for domain, lang in enumerate(languages):
                    if lang not in recorded:
                        continue  # data.tuxpaint.partial_languages: no recording, no sample
                    shift = shifts[domain]
                    if shift not in image_rows:
                        image_rows[shift] = len(sources["image"])
                        sources["image"].append(f"{stamp}.png" if shift is None else [f"{stamp}.png", shift])
                    text = texts.get(lang, "")
                    if lang == "en":
                        text = english  # English is the first line, there is no en.utf8 line
                    elif not text and has_text:
                        self.text_fallbacks.append(f"{stamp}:{lang}")
                        text = english
                    rows = {"image": image_rows[shift], "text": -1, "speech": -1}  # -1: missing, masked
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
            if self.section.image_shifts:
                return functools.partial(_decode_shifted, root, self.data.image_size)
            return functools.partial(_decode_under, "image", root)
        if modality == "speech":
            return functools.partial(_decode_under, "speech", root, sample_rate=self.data.sample_rate,
                                     max_seconds=self.data.max_speech_seconds)
        if modality == "text":
            return None
        raise DataError(f"tuxpaint has no modality '{modality}' (it has {', '.join(self.modalities)})")


@dataclass
class _Walk:
    """What one walk of the stamp tree found, per class folder (listed or not)."""
    usable: dict = field(default_factory=lambda: defaultdict(list))   # class -> [(stamp, recorded languages)]
    pngs: dict = field(default_factory=lambda: defaultdict(int))      # class -> stamps with an image
    skipped: dict = field(default_factory=lambda: defaultdict(int))   # class -> stamps left out
    lacking: dict = field(default_factory=dict)  # class -> one stamp left out: a file it lacks
    heard: set = field(default_factory=set)      # languages with at least one recording


def _decode_under(modality: str, root: str, rel: str, **kw):
    # The decoder is looked up at call time (not bound in the partial) so tests can patch it
    # here (mmcl.data.tuxpaint.decode_png / decode_ogg).
    fn = decode_png if modality == "image" else decode_ogg
    return fn(os.path.join(root, rel), **kw)


def _decode_shifted(root: str, size: int, source):
    """[path, shift] -> the stamp's image, resized to size x size and shifted (mmcl.data.image_shifts)."""
    rel, shift = source
    return shift_image(_decode_under("image", root, rel), shift, size)
