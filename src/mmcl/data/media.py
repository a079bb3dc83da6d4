"""Decoding of video clips and inertial-sensor recordings (module-level functions: picklable for
the preparation pool). Images and audio: ``decode_png`` / ``decode_ogg`` in mmcl.data.tuxpaint
(PyAV reads the audio track of a video file too).

Every failure is a DataError naming the file (``file_problem``), so preparation can stop with
the path, or (``data.on_missing=skip``) leave the sample out and count it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mmcl.data.prepared import DataError
from mmcl.data.tuxpaint import file_problem

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


def frame_positions(n: int, frames: int) -> np.ndarray:
    """``frames`` indices spread evenly over 0..n-1, first and last included [C] (AV-CIL's
    16-frame sampling also keeps both ends); repeats when the clip is shorter than ``frames``."""
    if n <= 0:
        raise ValueError("no frames")
    return np.round(np.linspace(0, n - 1, frames)).astype(np.int64)


def decode_video(path: str, frames: int, hints: tuple[str, str] | None = None) -> np.ndarray:
    """A video file -> (frames, H, W, 3) uint8 RGB, sampled evenly over the whole clip. Only the
    picked frames are kept when the container states its frame count; otherwise (or when the
    stated count is wrong) ``decode_video_all`` picks from every decoded frame."""
    import av
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            n = int(stream.frames or 0)  # from the container; 0 or wrong for some files
            if n == 0:
                return decode_video_all(path, frames, hints)
            want = frame_positions(n, frames).tolist()
            wanted, kept, count = set(want), {}, 0
            for frame in container.decode(stream):
                if count in wanted:
                    kept[count] = frame.to_ndarray(format="rgb24")
                count += 1
        if count != n:
            return decode_video_all(path, frames, hints)
        return np.stack([kept[i] for i in want])
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as e:
        raise file_problem(path, "video", e, hints) from e


def decode_video_all(path: str, frames: int, hints: tuple[str, str] | None = None) -> np.ndarray:
    """As decode_video, keeping every decoded frame (YUV, converted only when picked): for files
    whose frame count is not known."""
    import av
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            decoded = list(container.decode(stream))
            return np.stack([decoded[i].to_ndarray(format="rgb24") for i in frame_positions(len(decoded), frames)])
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as e:
        raise file_problem(path, "video", e, hints) from e


def decode_frame_folder(path: str, frames: int, hints: tuple[str, str] | None = None,
                        pattern: str = "") -> np.ndarray:
    """A folder of extracted frames (image files, sorted by name; ``pattern``: only names that
    contain it) -> (frames, H, W, 3) uint8 RGB, sampled evenly."""
    from PIL import Image
    folder = Path(path)
    if not folder.is_dir():
        raise file_problem(path, "frame folder", FileNotFoundError(path), hints)
    names = sorted((f for f in os.listdir(folder) if f.lower().endswith(FRAME_SUFFIXES) and pattern in f),
                   key=_natural)
    if not names:
        raise DataError(f"frame folder {path} has no frame images (*.jpg, *.png). "
                        f"{(hints or ('', ''))[1]}".rstrip())
    out = []
    for i in frame_positions(len(names), frames):
        f = folder / names[i]
        try:
            with Image.open(f) as im:
                out.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        except (OSError, ValueError, SyntaxError) as e:
            raise file_problem(str(f), "frame", e, hints) from e
    if len({a.shape for a in out}) > 1:
        raise DataError(f"frame folder {path}: frames differ in size ({sorted({a.shape for a in out})})")
    return np.stack(out)


def _natural(name: str):
    """'image_10.jpg' after 'image_9.jpg'."""
    import re
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def read_numeric_table(path: str, columns: int, hints: tuple[str, str] | None = None) -> np.ndarray:
    """A comma- or whitespace-separated text table (header lines without numbers are skipped;
    an empty comma field is an error) -> float64 (rows, columns): the first ``columns`` values."""
    rows = []
    try:
        with open(path, encoding="utf-8-sig", errors="strict") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = [p.strip() for p in line.split(",")] if "," in line else line.split()
                if "" in parts:
                    raise ValueError(f"line {n} has an empty field: {line.strip()[:60]!r}")
                try:
                    values = [float(p) for p in parts]
                except ValueError:
                    if rows:  # text after numbers: a damaged file, not a header
                        raise ValueError(f"line {n} is not numeric: {line.strip()[:60]!r}") from None
                    continue
                if len(values) < columns:
                    raise ValueError(f"line {n} has {len(values)} values, expected at least {columns}")
                rows.append(values[:columns])
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise file_problem(path, "sensor", e, hints) from e
    if not rows:
        raise DataError(f"sensor file {path} has no numeric rows. {(hints or ('', ''))[1]}".rstrip())
    table = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(table).all():
        raise DataError(f"sensor file {path} holds non-finite values (NaN or inf). {(hints or ('', ''))[1]}".rstrip())
    return table


def median_filter(x: np.ndarray, kernel: int) -> np.ndarray:
    """Per-column running median over rows, edges zero-padded (as scipy.signal.medfilt)."""
    if kernel <= 1:
        return x
    half = kernel // 2
    padded = np.pad(x, ((half, half), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel, axis=0)
    return np.median(windows, axis=-1)


def decode_sensor_table(path: str, hints: tuple[str, str] | None = None) -> np.ndarray:
    """A 3-axis sensor recording as a text table (first 3 numeric columns) -> (T, 3) float32."""
    return read_numeric_table(path, 3, hints).astype(np.float32)
