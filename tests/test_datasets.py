"""The paper's benchmarks from their official layouts (AVE, Kinetics-Sounds, UESTC-MMEA-CL,
SAMSEMO): small trees written here (mp4 with PyAV, wav with soundfile, sensor CSVs, TSV),
prepared and trained on with tiny random encoders; bad files give errors naming them."""
from __future__ import annotations

import csv
import json

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

import mmcl
from mmcl.cli import main as cli_main
from mmcl.config import build_config
from mmcl.data.clips import shipped_split
from mmcl.data.errors import DataError
from mmcl.data.media import decode_video, frame_positions, median_filter
from mmcl.data.prepared import prepare
from mmcl.data.uestc_mmea import decode_uestc_imu
from mmcl.encoders import build_encoder

SR = 16000

# Short recordings for the imu encoders of both sensor slots.
SMALL_IMU = {f"encoders.{m}.imu.{k}": v for m in ("accel", "gyro") for k, v in (("length", 48), ("window", 8))}


def write_mp4(path, n_frames=12, level=0, seconds=1.0, audio=True, size=(40, 48)):
    """A real H.264/MPEG-4 clip: frame i is filled with level + 10 i; a tone whose pitch
    depends on level."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        v = c.add_stream("mpeg4", rate=10)
        v.height, v.width = size
        v.pix_fmt = "yuv420p"
        a = None
        if audio:
            a = c.add_stream("aac", rate=SR)
            a.layout = "mono"
        for i in range(n_frames):
            img = np.full((*size, 3), (level + 10 * i) % 250, np.uint8)
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is not None:
            t = np.arange(int(seconds * SR)) / SR
            sig = (0.3 * np.sin(2 * np.pi * (200 + 3 * level) * t)).astype(np.float32)
            for s in range(0, len(sig), 1024):
                fr = av.AudioFrame.from_ndarray(sig[None, s:s + 1024], format="fltp", layout="mono")
                fr.sample_rate = SR
                for p in a.encode(fr):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)
    return path


def tiny(tmp_path, **extra):
    return {"data.cache_dir": str(tmp_path / "cache"), "data.image_size": 32, "data.video_frames": 4,
            "data.max_speech_seconds": 0.5, **SMALL_IMU,
            "encoders.video.source": "random", "encoders.video.width": 32, "encoders.video.layers": 2,
            "encoders.audio.source": "random", "encoders.audio.width": 32, "encoders.audio.layers": 2,
            "encoders.accel.width": 32, "encoders.accel.layers": 2,
            "encoders.gyro.width": 32, "encoders.gyro.layers": 2,
            "encoders.text.source": "random", "encoders.text.width": 16,
            "model.blocks": 2, "model.dim_z": 16, "model.head_hidden": 16, "adapter.dim": 8,
            "adapter.context_tokens": 4, "train.epochs": 1, "train.batch_size": 8, "memory.size": 8,
            "memory.batch_size": 4, "eval.batch_size": 32, "run.out_dir": str(tmp_path / "runs"),
            "run.progress": "never", **extra}


def kept_ids(data):
    """Ids of the samples the splits use (not left out for a missing or unreadable file)."""
    return sorted(data.records[i]["id"] for i in np.concatenate(list(data.split(0).values())))


def prepared(preset, overrides):
    cfg = build_config(preset, overrides)
    return cfg, prepare(cfg, {m: build_encoder(m, cfg) for m in cfg.data.modalities}, progress=False, workers=1)


# -- decoding ------------------------------------------------------------------------------------
def test_video_frames_sampled_evenly_and_audio_track(tmp_path):
    path = write_mp4(tmp_path / "clip.mp4", n_frames=20)
    frames = decode_video(str(path), 4)
    assert frames.shape == (4, 40, 48, 3) and frames.dtype == np.uint8
    assert list(frame_positions(20, 4)) == [0, 6, 13, 19]
    # frame i is grey level 10 i: the picked frames are 0, 6, 13, 19 (codec error a few levels)
    np.testing.assert_allclose(frames[:, 20, 24].mean(axis=1), [0, 60, 130, 190], atol=6)
    assert list(frame_positions(2, 4)) == [0, 0, 1, 1]  # short clips repeat frames


def test_uestc_imu_follows_the_official_preprocessing(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(-3000, 3000, size=(40, 6))
    path = tmp_path / "clip.csv"
    np.savetxt(path, raw, delimiter=",", fmt="%d")
    acc = decode_uestc_imu(str(path), "accel")
    want = median_filter(raw[:, :3] / 8192.0, 5)
    np.testing.assert_allclose(acc, (want - [0.0352, 0.3717, -0.7944]) / [0.1836, 0.4058, 0.2219], rtol=1e-5)
    gyro = decode_uestc_imu(str(path), "gyro")
    g = median_filter(raw[:, 3:] / 16.4, 5)
    g = g - g.mean(0)
    angle = np.array([g[0] + np.trapezoid(g[: i + 1], axis=0) for i in range(len(g))])
    np.testing.assert_allclose(gyro, (angle - [78.5445, -2.1253, -6.6940]) / [352.5285, 181.1698, 286.6291],
                               rtol=1e-5, atol=1e-6)
    # scipy.signal.medfilt's definition: zero padding at the ends
    x = np.array([[5.0], [1.0], [4.0], [2.0], [3.0]])
    assert median_filter(x, 3)[:, 0].tolist() == [1.0, 4.0, 2.0, 3.0, 2.0]


# -- AVE ------------------------------------------------------------------------------------------
def ave_tree(root, classes=("Cat", "Goat"), per_split=(4, 1, 1)):
    """mp4s for the first few ids of each class and split in the shipped AV-CIL list."""
    rows = shipped_split("ave.csv")
    written = []
    for k, cls in enumerate(classes):
        for split, n in zip(("train", "val", "test"), per_split):
            ids = [r["video_id"] for r in rows if r["label"] == cls and r["split"] == split][:n]
            for vid in ids:
                write_mp4(root / "AVE" / f"{vid}.mp4", level=40 * k)
                written.append((vid, split, cls))
    return written


def test_ave_prepares_and_trains_from_the_release_layout(tmp_path, caplog):
    written = ave_tree(tmp_path / "AVE_Dataset")
    vid0 = written[0][0]
    (tmp_path / "AVE_Dataset" / "audios").mkdir()
    sf.write(tmp_path / "AVE_Dataset" / "audios" / f"{vid0}.wav", np.zeros(SR, np.float32), SR)
    o = tiny(tmp_path, **{"data.root": str(tmp_path / "AVE_Dataset"), "data.classes": ["Cat", "Goat"],
                          "scenario.num_tasks": 2, "data.on_missing": "skip"})
    cfg, data = prepared("ave", o)
    # every listed video of the two classes is indexed; those not in the tree are left out (skip)
    assert kept_ids(data) == sorted(v for v, _, _ in written) and len(written) == 12
    assert {r["id"]: (r["split"], r["class_name"]) for r in data.records if r["id"] in kept_ids(data)} == \
        {v: (s, c) for v, s, c in written}
    missing = len(data) - len(written)
    assert missing > 100 and len(data.info["missing_files"]) == missing == len(data.excluded)
    assert len(data.unreadable) == missing  # each missing mp4 counted once (video and its audio track)
    # on_missing=skip is set: the messages of the left-out samples do not advise setting it
    assert all("on_missing" not in m and "left out" in m for m in data.unreadable), data.unreadable[0]
    splits = data.split(0)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [8, 2, 2]  # the shipped split, not the seed's
    i0 = next(r["index"] for r in data.records if r["id"] == vid0)
    assert data.meta["sources"]["audio"][i0].endswith(f"audios/{vid0}.wav")  # the separate wav wins
    results = mmcl.run("ave", o, run_dir=tmp_path / "run")
    assert [len(t["classes"]) for t in results["tasks"]] == [1, 1]
    # without skip, the first missing video of the list stops indexing, by name
    with pytest.raises(DataError, match=r"video of .* is missing \(looked for .*\.mp4\).*on_missing=skip"):
        prepared("ave", {**o, "data.on_missing": "fail", "data.cache_dir": str(tmp_path / "c2")})


def trim_ave_list_to_tree(monkeypatch, written) -> list[dict]:
    """The shipped AVE list reduced to the videos the test wrote (so on_missing=fail finds them all)."""
    import mmcl.data.clips as clips
    have = {v for v, _, _ in written}
    rows = [r for r in shipped_split("ave.csv") if r["video_id"] in have]
    monkeypatch.setattr(clips, "shipped_split", lambda name: rows)
    return rows


def test_corrupt_video_is_named_or_skipped_and_counted(tmp_path, monkeypatch):
    written = ave_tree(tmp_path / "AVE_Dataset")
    bad = tmp_path / "AVE_Dataset" / "AVE" / f"{written[3][0]}.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    o = tiny(tmp_path, **{"data.root": str(tmp_path / "AVE_Dataset"), "data.classes": ["Cat", "Goat"],
                          "scenario.num_tasks": 2})
    with monkeypatch.context() as m:
        trim_ave_list_to_tree(m, written)
        with pytest.raises(DataError, match=f"cannot decode video {bad}: .*on_missing=skip"):
            prepared("ave", {**o, "data.on_missing": "fail", "data.cache_dir": o["data.cache_dir"] + "-fail"})
    cfg, data = prepared("ave", {**o, "data.on_missing": "skip"})
    # the corrupt file is left out with the missing ones; its video and audio track count once
    assert kept_ids(data) == sorted(v for v, _, _ in written if v != written[3][0])
    assert len([m for m in data.unreadable if str(bad) in m]) == 1
    assert "on_missing" not in next(m for m in data.unreadable if str(bad) in m)
    listed = json.loads((data.folder / "unreadable_video.json").read_text())
    assert sum(str(bad) in m for m in listed.values()) == 1


# -- Kinetics-Sounds ------------------------------------------------------------------------------
def test_kinetics_sounds_reads_kinetics_file_names(tmp_path):
    rows = shipped_split("kinetics_sounds.csv.gz")
    assert len(rows) == 23125 and {r["split"] for r in rows} == {"train", "val", "test"}
    written = []
    for k, cls in enumerate(("tapping pen", "bowling")):
        for split, n in (("train", 4), ("val", 1), ("test", 1)):
            for r in [r for r in rows if r["label"] == cls and r["split"] == split][:n]:
                write_mp4(tmp_path / "ks" / "videos" / f"{r['video_id']}_000010_000020.mp4", level=60 * k)
                written.append(r["video_id"])
    o = tiny(tmp_path, **{"data.classes": ["tapping pen", "bowling"], "scenario.num_tasks": 2,
                          "data.on_missing": "skip"})
    # `mmcl prepare --root` remembers the folder; `mmcl run` then finds it without data.root
    args = [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in o.items()]
    # (options and key=value overrides in any order)
    assert cli_main(["prepare", "kinetics-sounds", "--root", str(tmp_path / "ks"), *args[:2], "--workers", "1",
                     *args[2:]]) == 0
    results = mmcl.run("kinetics-sounds", o, run_dir=tmp_path / "run")
    assert len(results["accuracy_matrix"]) == 2
    cfg, data = prepared("kinetics-sounds", o)
    assert kept_ids(data) == sorted(written)


# -- UESTC-MMEA-CL --------------------------------------------------------------------------------
def uestc_tree(root, labels=(0, 1), per_split=(4, 1, 1)):
    rng = np.random.default_rng(1)
    folders = {0: "1_upstairs", 1: "2_downstairs", 2: "3_drinking"}
    lines = {"train": [], "val": [], "test": []}
    for label in labels:
        folder = folders[label]
        for split, n in zip(lines, per_split):
            for k in range(n):
                clip = f"{folder}_2022_05_05_16_{label:02d}_{len(lines[split]) + 10 * k:02d}_{split}"
                frames = 10 + k
                if k % 2:  # frame folders (as the official code reads them) and mp4 files, both
                    d = root / "video" / folder / clip
                    d.mkdir(parents=True)
                    for i in range(frames):
                        Image.fromarray(np.full((30, 40, 3), 20 * label + i, np.uint8)).save(d / f"img_{i:06d}.jpg")
                else:
                    write_mp4(root / "video" / folder / f"{clip}.mp4", n_frames=frames, level=50 * label, audio=False)
                imu = rng.integers(-2000, 2000, size=(frames + 1, 6)) + 500 * label
                (root / "sensor" / folder).mkdir(parents=True, exist_ok=True)
                np.savetxt(root / "sensor" / folder / f"{clip}.csv", imu, delimiter=",", fmt="%d")
                lines[split].append(f"yourdataset_path/data/{folder}/{clip} {frames} {frames + 1} {label}")
    for split, ls in lines.items():
        (root / f"mydataset_{split}.txt").write_text("\n".join(ls))  # no final newline, as shipped
    return lines


def test_uestc_mmea_prepares_and_trains(tmp_path):
    uestc_tree(tmp_path / "uestc")
    o = tiny(tmp_path, **{"data.root": str(tmp_path / "uestc"), "data.classes": ["upstairs", "downstairs"],
                          "scenario.num_tasks": 2})
    cfg, data = prepared("uestc-mmea", o)
    assert len(data) == 12 and data.classes == ["upstairs", "downstairs"]
    assert [len(v) for v in data.split(0).values()] == [8, 2, 2]
    assert set(data.tensors) == {"video", "accel", "gyro"}
    results = mmcl.run("uestc-mmea", o, run_dir=tmp_path / "run")
    assert len(results["accuracy_matrix"]) == 2
    # a label outside the 32 classes, by file and line
    path = tmp_path / "uestc" / "mydataset_val.txt"
    path.write_text(path.read_text() + "\nyourdataset_path/data/40_flying/x 10 11 39")
    with pytest.raises(DataError, match=r"mydataset_val.txt, line 3: label 39 is outside the 32 classes"):
        prepared("uestc-mmea", {**o, "data.cache_dir": str(tmp_path / "c2")})


# -- SAMSEMO --------------------------------------------------------------------------------------
def samsemo_tree(root, langs=("EN", "DE"), n=6):
    rows = []
    emotions = ["happiness", "sadness"]
    for lang in langs:
        for _split in ("train", "valid", "test"):
            (root / "splits").mkdir(parents=True, exist_ok=True)
        ids = {"train": [], "valid": [], "test": []}
        for k in range(n):
            for e, emo in enumerate(emotions):
                uid = f"{lang.lower()}movie{k:04d}x_{e}"
                d = root / lang / uid
                d.mkdir(parents=True)
                for i in range(5):
                    Image.fromarray(np.full((36, 48, 3), 100 * e + i, np.uint8)).save(d / f"image_{i}.jpg")
                t = np.arange(SR // 2) / SR
                sf.write(d / "audio.wav", (0.2 * np.sin(2 * np.pi * (220 + 200 * e) * t)).astype(np.float32), SR)
                rows.append({"utterance_id": uid, "movie_title": f"movie{k}", "language": lang,
                             "aggregated_emotions": emo.capitalize(), "transcript": f"I feel {emo} {k}"})
                ids["test" if k == 0 else "valid" if k == 1 else "train"].append(uid)
        for split, v in ids.items():
            (root / "splits" / f"{split}_split_{lang}.txt").write_text("".join(u + "\n" for u in v))
    rows.append({"utterance_id": "enmixed_0", "movie_title": "m", "language": "EN",
                 "aggregated_emotions": "['Happiness', 'Sadness']", "transcript": "both"})
    with open(root / "samsemo.tsv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    return rows


def test_samsemo_domain_incremental_by_language(tmp_path):
    samsemo_tree(tmp_path / "sam")
    o = tiny(tmp_path, **{"data.root": str(tmp_path / "sam"), "data.classes": ["happiness", "sadness"],
                          "data.domains": ["EN", "DE"], "scenario.num_tasks": 2})
    cfg, data = prepared("samsemo", o)
    assert len(data) == 24 and data.domains == ["EN", "DE"]
    assert data.info["left_out"]["several listed emotions"] == 1  # multi_label=drop
    assert [len(v) for v in data.split(0).values()] == [16, 4, 4]  # the shipped split lists
    results = mmcl.run("samsemo", o, run_dir=tmp_path / "run")
    assert len(results["accuracy_matrix"]) == 2
    # multi_label is part of the cache key: 'first' keeps the mixed utterance as 'happiness'
    splits = tmp_path / "sam" / "splits" / "train_split_EN.txt"
    splits.write_text(splits.read_text() + "enmixed_0\n")
    (tmp_path / "sam" / "EN" / "enmixed_0").mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((36, 48, 3), np.uint8)).save(tmp_path / "sam" / "EN" / "enmixed_0" / f"image_{i}.jpg")
    sf.write(tmp_path / "sam" / "EN" / "enmixed_0" / "audio.wav", np.zeros(SR // 4, np.float32), SR)
    _, first = prepared("samsemo", {**o, "data.samsemo.multi_label": "first"})
    assert len(first) == 25 and first.info["left_out"]["several listed emotions"] == 0
    mixed = next(r for r in first.records if r["id"] == "enmixed_0")
    assert mixed["class_name"] == "happiness" and mixed["split"] == "train"
    _, dropped = prepared("samsemo", o)
    assert len(dropped) == 24


def test_samsemo_missing_audio_and_unknown_emotion_are_named(tmp_path):
    rows = samsemo_tree(tmp_path / "sam")
    o = tiny(tmp_path, **{"data.root": str(tmp_path / "sam"), "data.classes": ["happiness", "sadness"],
                          "data.domains": ["EN", "DE"], "scenario.num_tasks": 2})
    wav = tmp_path / "sam" / "DE" / rows[-2]["utterance_id"] / "audio.wav"
    wav.unlink()
    with pytest.raises(DataError, match=f"audio.wav of {rows[-2]['utterance_id']} is missing .*{wav}"):
        prepared("samsemo", o)
    _, data = prepared("samsemo", {**o, "data.on_missing": "skip"})
    assert len(kept_ids(data)) == 23 and rows[-2]["utterance_id"] not in kept_ids(data)
    assert any(str(wav) in m for m in data.info["missing_files"])
    tsv = tmp_path / "sam" / "samsemo.tsv"
    tsv.write_text(tsv.read_text().replace("Sadness\tI feel sadness 3", "Boredom\tI feel sadness 3", 1))
    with pytest.raises(DataError, match=r"samsemo.tsv, line \d+ \(\w+\): emotion 'boredom' is not one of"):
        prepared("samsemo", {**o, "data.cache_dir": str(tmp_path / "c2"), "data.on_missing": "skip"})


def test_dataset_root_is_asked_for(tmp_path, monkeypatch):
    monkeypatch.delenv("MMCL_AVE_ROOT", raising=False)
    with pytest.raises(DataError, match=r"mmcl prepare ave --root DIR.*MMCL_AVE_ROOT"):
        prepared("ave", tiny(tmp_path))


def test_imu_encoder_fitted_on_task_1_then_frozen(tmp_path, caplog):
    import logging

    from mmcl.config import ConfigError
    from mmcl.engine import Experiment
    uestc_tree(tmp_path / "uestc")
    o = tiny(tmp_path, **{"data.root": str(tmp_path / "uestc"), "data.classes": ["upstairs", "downstairs"],
                          "scenario.num_tasks": 1, "data.modalities": ["video", "accel"],
                          "encoders.accel.imu.fit": "first_task", "encoders.accel.imu.fit_epochs": 5,
                          "train.lr": 0.01})
    cfg = build_config("uestc-mmea", o)
    random_weights = {k: v.clone() for k, v in build_encoder("accel", cfg).state_dict().items()}
    exp = Experiment(cfg, tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="mmcl"):
        exp.run()
    enc = exp.model.encoders["accel"]
    assert all(not p.requires_grad for p in enc.parameters())  # frozen again
    assert any(not torch_equal(v, random_weights[k]) for k, v in enc.state_dict().items())
    losses = [line for line in caplog.messages if "fitted the accel encoder" in line]
    assert losses and (tmp_path / "run" / "fitted_accel.safetensors").exists()
    epoch_losses = [float(x) for x in losses[0].split("per epoch")[1].split()]
    assert len(epoch_losses) == 5 and epoch_losses[-1] < epoch_losses[0]
    # the data are served with the fitted encoder's prefix
    import torch
    with torch.no_grad():
        want, _ = enc.prefix({k: v[:3] for k, v in exp.data.inputs("accel").items()})
    torch.testing.assert_close(exp.data.tensors["accel"]["tokens"][:3].float(), want, rtol=2e-3, atol=2e-3)
    # a new session in the same run folder reloads the fitted weights (no refit)
    again = Experiment(cfg, tmp_path / "run")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mmcl"):
        again._fit_encoders()
    assert any("loaded the accel encoder fitted on task 1" in m for m in caplog.messages)
    for k, v in again.model.encoders["accel"].state_dict().items():
        assert torch_equal(v, enc.state_dict()[k])
    with pytest.raises(ConfigError, match="unknown config key 'encoders.video.fit'"):
        build_config("uestc-mmea", {**o, "encoders.video.fit": "first_task"})


def torch_equal(a, b):
    import torch
    return torch.equal(a.cpu(), b.cpu())


def test_interrupted_preparation_resumes_from_saved_parts(tmp_path, monkeypatch):
    import mmcl.data.clips as clips
    import mmcl.data.pipeline as pipeline
    import mmcl.data.prepared as prep
    written = ave_tree(tmp_path / "AVE_Dataset")
    have = {v for v, _, _ in written}
    rows = trim_ave_list_to_tree(monkeypatch, written)
    bad = tmp_path / "AVE_Dataset" / "AVE" / f"{rows[5]['video_id']}.mp4"  # in the second part
    bad.write_bytes(b"not a video" * 20)
    o = tiny(tmp_path, **{"data.root": str(tmp_path / "AVE_Dataset"), "data.classes": ["Cat", "Goat"],
                          "scenario.num_tasks": 2, "data.on_missing": "skip"})
    cfg = build_config("ave", o)
    encoders = {m: build_encoder(m, cfg) for m in cfg.data.modalities}
    monkeypatch.setattr(pipeline, "SHARD_ROWS", 4)
    decoded, real, interrupt = [], clips.decode_clip, [True]

    def counting(source, *a, **k):
        decoded.append(source)
        if len(decoded) == 10 and interrupt and interrupt.pop():
            raise KeyboardInterrupt  # Ctrl-C in the middle of the third part (once)
        return real(source, *a, **k)
    monkeypatch.setattr(clips, "decode_clip", counting)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, encoders, progress=False, workers=1, chunk_size=2)
    folder = prep.cache_folder(cfg, encoders)
    assert sorted(p.name for p in (folder / "parts").iterdir()) == [
        "video-000000000.safetensors", "video-000000004.safetensors", "video-000000004.unreadable.json"]
    decoded.clear()
    data = prepare(cfg, encoders, progress=False, workers=1, chunk_size=2)
    assert len(decoded) == 4  # only the third part is decoded again
    assert not (folder / "parts").exists()  # merged, then removed
    assert kept_ids(data) == sorted(have - {rows[5]["video_id"]})  # the bad file's list survived the resume
    monkeypatch.setattr(clips, "decode_clip", real)
    _, whole = prepared("ave", {**o, "data.cache_dir": str(tmp_path / "fresh")})
    for k, v in whole.tensors["video"].items():  # resumed == prepared in one go
        assert torch_equal(v, data.tensors["video"][k])
    assert whole.excluded == data.excluded


def test_sensor_tables_bom_headers_and_empty_fields(tmp_path):
    from mmcl.data.media import read_numeric_table
    path = tmp_path / "imu.csv"
    path.write_text("\ufeffx,y,z\n1,2,3\n4,5,6\n", encoding="utf-8")
    assert read_numeric_table(str(path), 3).tolist() == [[1, 2, 3], [4, 5, 6]]  # BOM + header skipped
    path.write_text("1 2 3 9\n4 5 6 9\n")
    assert read_numeric_table(str(path), 3).shape == (2, 3)  # whitespace, first 3 columns
    path.write_text("1,2,3\n4,,5\n")
    with pytest.raises(DataError, match=r"cannot decode sensor .*imu.csv: line 2 has an empty field"):
        read_numeric_table(str(path), 3)


def test_samsemo_languages_without_split_lists_are_split_by_the_seed(tmp_path):
    samsemo_tree(tmp_path / "sam")
    for f in (tmp_path / "sam" / "splits").glob("*_DE.txt"):
        f.unlink()
    o = tiny(tmp_path, **{"data.root": str(tmp_path / "sam"), "data.classes": ["happiness", "sadness"],
                          "data.domains": ["EN", "DE"], "scenario.num_tasks": 2})
    _, data = prepared("samsemo", o)
    splits = data.split(0)
    where = {data.records[i]["id"]: s for s, idx in splits.items() for i in idx}
    assert len(where) == 24
    en = {r["id"]: r["split"] for r in data.records if r["domain"] == 0}
    assert all(where[i] == s for i, s in en.items())  # EN: the shipped lists
    de = [data.records[i] for i in range(len(data)) if data.records[i]["domain"] == 1]
    assert all(not r["split"] for r in de) and {where[r["id"]] for r in de} == {"train", "val", "test"}
    movies = {}
    for r in de:  # one movie's utterances stay in one split
        movies.setdefault(r["stamp"], set()).add(where[r["id"]])
    assert all(len(v) == 1 for v in movies.values())
