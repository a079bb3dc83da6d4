"""Your own data: CSV / JSONL manifests, prepared and trained on; bad rows give clear errors."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

import mmcl
from mmcl.config import build_config
from mmcl.data.errors import DataError
from mmcl.engine import Experiment

CLASSES = ["cat", "dog", "owl", "fox"]


def write_tree(root, n_per_class=6, domains=("a", "b"), with_split=False):
    """Images (PNG/JPEG), audio (WAV/FLAC) and texts for 4 classes; returns the manifest rows."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(exist_ok=True)
    rows = []
    for c, name in enumerate(CLASSES):
        for k in range(n_per_class):
            ext = "png" if k % 2 else "jpg"
            img = np.full((24, 30, 3), 40 * c, np.uint8) + rng.integers(0, 30, (24, 30, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / "img" / f"{name}{k}.{ext}")
            for d in domains:
                t = np.arange(4000) / 16000
                wave = (0.2 * np.sin(2 * np.pi * (200 + 100 * c) * t)).astype(np.float32)
                aext = "wav" if d == "a" else "flac"
                sf.write(root / "audio" / f"{name}{k}_{d}.{aext}", wave, 16000)
                row = {"image": f"img/{name}{k}.{ext}", "speech": f"audio/{name}{k}_{d}.{aext}",
                       "text": f"a {name} number {k}", "label": name, "domain": d, "group": f"{name}{k}"}
                if with_split:
                    row["split"] = "test" if k == 0 else "val" if k == 1 else "train"
                rows.append(row)
    return rows


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def overrides(manifest, tmp_path, **extra):
    return {"data.manifest": str(manifest), "data.cache_dir": str(tmp_path / "cache"),
            "data.image_size": 32, "data.max_speech_seconds": 0.5,
            "encoders.image.source": "random", "encoders.text.source": "random",
            "encoders.speech.source": "random", "encoders.text.width": 16, "encoders.speech.width": 16,
            "model.dim_z": 16, "model.head_hidden": 16, "adapter.dim": 8, "adapter.context_tokens": 4,
            "train.epochs": 1, "train.batch_size": 8, "memory.size": 8, "memory.batch_size": 4,
            "eval.batch_size": 32, "run.out_dir": str(tmp_path / "runs"), "run.progress": "never", **extra}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_manifest_prepares_and_trains(fmt, tmp_path):
    rows = write_tree(tmp_path / "data")
    manifest = (write_csv if fmt == "csv" else write_jsonl)(tmp_path / "data" / f"samples.{fmt}", rows)
    results = mmcl.run("manifest", overrides(manifest, tmp_path), run_dir=tmp_path / "run")
    assert [len(t["classes"]) for t in results["tasks"]] == [2, 2]
    assert len(results["accuracy_matrix"]) == 2
    exp = Experiment(build_config("manifest", overrides(manifest, tmp_path)))
    assert exp.data.classes == sorted(CLASSES) and exp.data.domains == ["a", "b"]
    assert len(exp.data) == len(rows)
    # split by group: both domains of one image are in the same split
    splits = exp.data.split(0, [0.5, 0.25, 0.25])
    where = {}
    for name, idx in splits.items():
        for i in idx.tolist():
            where.setdefault(exp.data.records[i]["stamp"], set()).add(name)
    assert all(len(s) == 1 for s in where.values())


def test_split_column_and_domain_incremental(tmp_path):
    rows = write_tree(tmp_path / "data", with_split=True)
    manifest = write_csv(tmp_path / "data" / "samples.csv", rows)
    o = overrides(manifest, tmp_path, **{"scenario.kind": "domain"})
    exp = Experiment(build_config("manifest", o))
    splits = exp.data.split(0, [0.7, 0.1, 0.2])
    assert {exp.data.records[i]["split"] for i in splits["test"].tolist()} == {"test"}
    assert len(splits["test"]) == len(CLASSES) * 2  # k == 0, two domains
    results = exp.run()
    assert [t["domain"] for t in results["tasks"]] == ["a", "b"]


def test_manifest_errors_name_row_and_file(tmp_path):
    rows = write_tree(tmp_path / "data", n_per_class=4, domains=("a",))
    # a label outside the class list
    manifest = write_csv(tmp_path / "data" / "s.csv", rows)
    with pytest.raises(DataError, match=r"row 1: label 'cat' is not in the class list .*Did you mean 'cats'"):
        classes = {"data.classes": ["cats", "dog", "owl", "fox"]}
        Experiment(build_config("manifest", overrides(manifest, tmp_path, **classes)))
    # a missing audio file: named with its row; skip mode leaves it out
    (tmp_path / "data" / rows[5]["speech"]).unlink()
    with pytest.raises(DataError, match=r"row 6: speech file .*dog1_a.wav is missing"):
        Experiment(build_config("manifest", overrides(manifest, tmp_path)))
    exp = Experiment(build_config("manifest", overrides(manifest, tmp_path, **{"data.on_missing": "skip"})))
    assert len(exp.data) == len(rows) - 1 and exp.data.info["skipped_rows"][0].startswith("row 6: speech")
    # a corrupt image: named
    rows2 = write_tree(tmp_path / "data2", n_per_class=4, domains=("a",))
    (tmp_path / "data2" / rows2[2]["image"]).write_bytes(b"not an image at all")
    manifest2 = write_jsonl(tmp_path / "data2" / "s.jsonl", rows2)
    with pytest.raises(DataError, match=r"cannot decode image .*cat2.jpg"):
        Experiment(build_config("manifest", overrides(manifest2, tmp_path)))
    # a missing column and a missing manifest
    bad = write_csv(tmp_path / "data" / "nolabel.csv", [{k: v for k, v in r.items() if k != "label"} for r in rows])
    with pytest.raises(DataError, match="has no column label"):
        Experiment(build_config("manifest", overrides(bad, tmp_path)))
    with pytest.raises(DataError, match="does not exist"):
        Experiment(build_config("manifest", overrides(tmp_path / "nope.csv", tmp_path)))


def test_mmcl_prepare_caches_a_manifest_and_the_run_reuses_it(tmp_path, capsys):
    from mmcl.cli import main
    rows = write_tree(tmp_path / "data", n_per_class=4, domains=("a",))
    manifest = write_csv(tmp_path / "data" / "s.csv", rows)
    o = overrides(manifest, tmp_path)
    assert main(["prepare", "manifest", *[f"{k}={json.dumps(v)}" for k, v in o.items()]]) == 0
    cached = list((tmp_path / "cache" / "manifest").glob("*/prefix_*.safetensors"))
    assert sorted(p.name for p in cached) == ["prefix_image.safetensors", "prefix_speech.safetensors",
                                              "prefix_text.safetensors"]
    stamps = {p: p.stat().st_mtime_ns for p in cached}
    exp = Experiment(build_config("manifest", o))
    assert len(exp.data) == len(rows)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nothing prepared again


def test_manifest_with_video_and_sensor_columns(tmp_path):
    """video (an mp4, or a folder of frames) + accel (a CSV table) rows train end to end."""
    from test_datasets import write_mp4
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    rows = []
    for c, name in enumerate(CLASSES[:2]):
        for k in range(6):
            if k % 2:
                video = f"frames/{name}{k}"
                (root / video).mkdir(parents=True)
                for i in range(5):
                    Image.fromarray(np.full((24, 32, 3), 60 * c + i, np.uint8)).save(root / video / f"{i:06d}.jpg")
            else:
                video = f"video/{name}{k}.mp4"
                write_mp4(root / video, n_frames=6, level=60 * c, audio=False, size=(24, 32))
            (root / "imu").mkdir(exist_ok=True)
            table = rng.normal(size=(40 + k, 3)) + c
            np.savetxt(root / "imu" / f"{name}{k}.csv", table, delimiter=",", header="x,y,z", comments="")
            rows.append({"video": video, "accel": f"imu/{name}{k}.csv", "label": name, "group": f"{name}{k}"})
    manifest = write_csv(root / "clips.csv", rows)
    o = overrides(manifest, tmp_path, **{"data.modalities": ["video", "accel"], "data.video_frames": 3,
                                         "encoders.video.source": "random", "encoders.video.width": 32,
                                         "encoders.video.layers": 2, "encoders.accel.width": 32,
                                         "encoders.accel.layers": 2, "encoders.accel.imu.length": 48,
                                         "encoders.accel.imu.window": 8, "model.blocks": 2})
    results = mmcl.run("manifest", o, run_dir=tmp_path / "run")
    assert [len(t["classes"]) for t in results["tasks"]] == [1, 1]
    exp = Experiment(build_config("manifest", o))
    assert exp.data.tensors["video"]["tokens"].shape[0] == 12  # one row per clip
    inputs = exp.data.inputs("accel")["signal"]
    assert inputs.shape == (12, 48, 3)  # header line skipped, resampled to sensor_length
