"""Shared test fixtures: a small Tux Paint stamp tree in the real layout, generated here."""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

# Tiny models gain nothing from threads, and on a loaded machine OpenMP threads that spin
# against other processes made one end-to-end test 14x slower: one thread keeps the suite
# fast and its timing stable.
torch.set_num_threads(1)

LANGUAGES = ["fr", "ru", "ro", "ca", "bg", "es"]
FAKE_CLASSES = ["animals/mammals", "food/fruit", "clothes", "town/houses"]
SAMPLE_RATE = 44100  # as the real recordings
# A word per language so each language's text differs visibly (real files: translations).
_WORDS = {"fr": "Un", "ru": "Это", "ro": "O", "ca": "Una", "bg": "Това", "es": "Uno", "da": "En"}


def _class_seed(cls: str) -> int:
    return zlib.crc32(cls.encode())


def _write_png(path: Path, cls: str, k: int, mode: str = "RGBA") -> None:
    """A class-coloured shape (class-dependent: disc or box) on a transparent background."""
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(_class_seed(cls))
    colour = tuple(int(c) for c in rng.integers(0, 200, 3))
    w, h = 40 + 4 * (k % 3), 32 + 2 * (k % 4)  # real stamps differ in size too
    im = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(im)
    box = (4 + k % 5, 4, w - 4, h - 4 - k % 3)
    (draw.ellipse if _class_seed(cls) % 2 else draw.rectangle)(box, fill=colour + (255,))
    if mode != "RGBA":
        im = im.convert(mode)
    im.save(path)


def _write_ogg(path: Path, cls: str, k: int, lang: str, seconds: float, stereo: bool) -> None:
    """~seconds of a class-dependent tone plus a little noise, Ogg Vorbis at 44.1 kHz."""
    import soundfile as sf
    rng = np.random.default_rng([_class_seed(cls), k, zlib.crc32(lang.encode())])
    n = int(seconds * SAMPLE_RATE) + 441 * (k % 5)  # lengths differ between files
    t = np.arange(n) / SAMPLE_RATE
    freq = 200 + _class_seed(cls) % 800
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(n)
    wave = wave.astype(np.float32)
    sf.write(str(path), np.stack([wave, wave], 1) if stereo else wave, SAMPLE_RATE,
             format="OGG", subtype="VORBIS")


def _write_txt(path: Path, english: str, languages, skip_lang: str | None = None) -> None:
    lines = [english, "ach.utf8=" + english.lower()]  # an unrelated language first, as in reality
    for lang in sorted(languages):
        if lang != skip_lang:
            lines.append(f"{lang}.utf8={_WORDS.get(lang, lang)} {english.lower()}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_stamp(folder: Path, name: str, cls: str, k: int, languages, *, seconds: float = 0.5,
                image: str = "png", skip_ogg: str | None = None, skip_text: str | None = None,
                png_mode: str = "RGBA") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if image == "png":
        _write_png(folder / f"{name}.png", cls, k, png_mode)
    else:  # an SVG-only stamp, as 165 real ones are
        (folder / f"{name}.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    _write_txt(folder / f"{name}.txt", f"A {name.replace('_', ' ')}.", languages, skip_text)
    for lang in languages:
        if lang != skip_ogg:
            _write_ogg(folder / f"{name}_desc_{lang}.ogg", cls, k, lang, seconds, stereo=k % 2 == 1)


def make_stamp_tree(root: str | Path, classes=FAKE_CLASSES, stamps_per_class: int = 6,
                    languages=LANGUAGES, seconds: float = 0.5, distractors: bool = True) -> Path:
    """Write a stamp tree in Tux Paint's layout. Half of each two-level class's stamps sit in
    a deeper subfolder (``animals/mammals/sub/``), which belongs to the class. Returns root.

    Distractors (when enabled) that discovery must skip: an SVG-only stamp, a stamp missing one
    language's recording, a stamp in a class not listed (``symbols/alphabets``), a stamp in a
    sub-class of a one-level class (``clothes/hats`` is its own class), a ``.dat`` file and a
    sound effect ``NAME.ogg``. One stamp lacks its ``ro.utf8`` line (English fallback)."""
    root = Path(root)
    for cls in classes:
        for k in range(stamps_per_class):
            deep = "/" in cls and k >= stamps_per_class // 2
            folder = root / cls / "sub" if deep else root / cls
            name = f"{cls.replace('/', '_')}_{k}"
            write_stamp(folder, name, cls, k, languages, seconds=seconds,
                        png_mode="P" if k == 1 else "LA" if k == 2 else "RGBA")
    if distractors:
        first = root / classes[0]
        write_stamp(first, "svg_only", classes[0], 0, languages, seconds=0.1, image="svg")
        write_stamp(first, "missing_lang", classes[0], 0, languages, seconds=0.1,
                    skip_ogg=languages[-1])
        write_stamp(root / "symbols" / "alphabets", "letter_a", "symbols/alphabets", 0, languages,
                    seconds=0.1)
        write_stamp(root / "clothes" / "hats", "hat", "clothes/hats", 0, languages, seconds=0.1)
        (first / "data.dat").write_bytes(b"\x00\x01 not a stamp")
        _write_ogg(first / f"{classes[0].replace('/', '_')}_0.ogg", "fx", 0, "fx", 0.1, False)
        # A real quirk: some stamps have no line for a language; the English line stands in.
        last = classes[-1]
        folder = root / last
        write_stamp(folder, "no_ro_text", last, 0, languages, seconds=0.1, skip_text="ro")
    return root


@pytest.fixture(scope="session")
def fake_stamps(tmp_path_factory):
    """(root, classes): 4 classes x 6 stamps (+1 with a missing ro text), 6 languages."""
    root = make_stamp_tree(tmp_path_factory.mktemp("stamps"))
    return root, list(FAKE_CLASSES)
