"""Decoding of the data sets' files (module-level functions: picklable for the preparation pool,
patchable in tests): images (``decode_png``), audio (``decode_ogg``; PyAV reads the audio track
of a video file too), video clips (``decode_clip``: a video file or a folder of frames) and
inertial-sensor recordings.

Every failure is a DataError naming the file (``file_problem``), so preparation can stop with
the path, or (``data.on_missing=skip``) leave the sample out and count it. ``hints`` = (what to
do about a missing file, about a corrupt one), the data set's own advice.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mmcl.data.errors import DataError

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")

# The advice when a caller gives no hints: the Tux Paint stamps' (whose decoders these were first).
REINSTALL_HINT = ("The file is corrupt or unreadable: reinstall the stamps "
                  "(`sudo apt-get install --reinstall tuxpaint-stamps-default`), or delete this "
                  "stamp's files to leave it out.")
MISSING_HINT = ("Restore it (`sudo apt-get install --reinstall tuxpaint-stamps-default`), or remove "
                "the whole stamp (its NAME.png, NAME.txt and NAME_desc_*.ogg files) to leave it out.")


def file_problem(path: str, kind: str, error: BaseException, hints: tuple[str, str] | None = None) -> DataError:
    """A DataError for a file that could not be read: missing (or a broken link), empty,
    unreadable or corrupt, each with what to do (``hints``: (missing, corrupt) advice; default
    MISSING_HINT and REINSTALL_HINT, the Tux Paint ones)."""
    missing_hint, corrupt_hint = hints or (MISSING_HINT, REINSTALL_HINT)
    if not os.path.exists(path):
        link = f" (a broken symbolic link to {os.readlink(path)})" if os.path.islink(path) else ""
        return DataError(f"{kind} file {path} is missing{link}. {missing_hint}")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return DataError(f"{kind} file {path} is empty (0 bytes). {corrupt_hint}")
    if not os.access(path, os.R_OK):
        return DataError(f"cannot read {kind} file {path}: permission denied. Make it readable "
                         "(chmod a+r), or copy the stamps to a folder you can read and set data.root.")
    return DataError(f"cannot decode {kind} {path}: {error}. {corrupt_hint}")


def decode_png(path: str, hints: tuple[str, str] | None = None) -> np.ndarray:
    """PNG (any format Pillow reads) -> HxWx3 uint8 RGB, transparency composited on white
    (stamps are drawn on paper)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.load()  # Pillow is lazy: force the decode here so truncation errors surface
            rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, rgba).convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three for bad files
        raise file_problem(path, "image", e, hints) from e
    return np.asarray(rgb, dtype=np.uint8).copy()


def decode_ogg(path: str, sample_rate: int, max_seconds: float = 0.0,
               hints: tuple[str, str] | None = None) -> np.ndarray:
    """Audio file -> mono float32 waveform at sample_rate, cut to max_seconds (0: no cut)."""
    import av
    limit = int(round(max_seconds * sample_rate)) if max_seconds > 0 else None
    pieces, have = [], 0
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise ValueError("no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1))
                    have += pieces[-1].size
                if limit is not None and have >= limit:
                    break  # enough audio: skip decoding the rest
            else:
                for out in resampler.resample(None):  # flush the resampler's tail
                    pieces.append(out.to_ndarray().reshape(-1))
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as e:
        raise file_problem(path, "audio", e, hints) from e
    corrupt_hint = (hints or (MISSING_HINT, REINSTALL_HINT))[1]
    wave = np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)
    if wave.size == 0:
        raise DataError(f"audio file {path} is empty: it decodes to no samples. {corrupt_hint}")
    if not np.isfinite(wave).all():
        raise DataError(f"audio file {path} decodes to non-finite samples (NaN or inf). {corrupt_hint}")
    return wave[:limit] if limit is not None else wave




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


def decode_clip(source: str, frames: int, hints, pattern: str = "") -> np.ndarray:
    """A video file (``decode_video``), or a folder of extracted frames (``decode_frame_folder``,
    only the image names holding ``pattern``) -> (frames, H, W, 3) uint8 RGB."""
    if os.path.isdir(source):
        return decode_frame_folder(source, frames, hints, pattern)
    return decode_video(source, frames, hints)


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
