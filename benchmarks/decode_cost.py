"""Decoding cost of one video clip (what `mmcl prepare` spends per AVE / Kinetics-Sounds clip).

Writes a synthetic clip (H.264 video with a moving texture + AAC audio) with PyAV, then times
`decode_video` (picking data.video_frames frames) and the audio track resampled to 16 kHz, the
two decoders the benchmarks use. Prints seconds per clip (min of --reps) and writes JSON.

    .venv/bin/python benchmarks/decode_cost.py [--seconds 10 --width 640 --height 360 --fps 25 --frames 8]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from mmcl.data.media import decode_ogg, decode_video


def write_clip(path: str, seconds: float, width: int, height: int, fps: int) -> None:
    rng = np.random.default_rng(0)
    with av.open(path, "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        a = c.add_stream("aac", rate=44100)
        a.layout = "stereo"
        base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.roll(base, 4 * i, axis=1), format="rgb24")
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        sig = (0.2 * rng.standard_normal((2, int(seconds * 44100)))).astype(np.float32)
        for s in range(0, sig.shape[1], 1024):
            fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(sig[:, s:s + 1024]), format="fltp", layout="stereo")
            fr.sample_rate = 44100
            for p in a.encode(fr):
                c.mux(p)
        for p in a.encode():
            c.mux(p)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "decode_cost.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "clip.mp4")
        write_clip(path, args.seconds, args.width, args.height, args.fps)
        result = {"clip": vars(args) | {"mb": os.path.getsize(path) / 2**20}, "cpu_count": os.cpu_count()}
        for name, fn in (("video_s", lambda: decode_video(path, args.frames)),
                         ("audio_s", lambda: decode_ogg(path, 16000, args.seconds))):
            fn()
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            result[name] = min(times)
    print(f"{args.seconds:g}-s {args.width}x{args.height} clip: {args.frames} frames {result['video_s']:.3f} s, "
          f"audio {result['audio_s']:.3f} s per clip (one process)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
