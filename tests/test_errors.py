"""Bad input gets a clear error through the real entry point (`mmcl.cli.main`): a non-zero exit
code and one message on stderr that names the file, key or value and says what to do, never
a traceback. One test (or more) per row of docs/errors.md."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_stamp_tree
from mmcl.cli import main
from mmcl.config import ConfigError, build_config
from mmcl.data import DataError, TuxPaint, media
from mmcl.data import tuxpaint as tp
from mmcl.encoders import build_encoder
from mmcl.scenarios import ScenarioError, build_scenario

CLASSES = ["clothes", "food/fruit"]
LANGS = ["fr", "es"]


@pytest.fixture
def stamps(tmp_path):
    """A private tree (tests here damage it): 2 classes x 3 stamps, 2 languages, 0.1 s clips."""
    return make_stamp_tree(tmp_path / "stamps", classes=CLASSES, stamps_per_class=3, languages=LANGS,
                           seconds=0.1, distractors=False)



def cache_folders(tmp_path) -> list:
    """The prepared cache folders (beside each lies its <key>.lock, the preparation lock)."""
    return sorted(p for p in (tmp_path / "cache" / "tuxpaint").iterdir() if p.is_dir())

def overrides(root, tmp_path, **extra) -> dict:
    """A tiny, fast config: tiny random encoders, 2 tasks of 1 class, 1 epoch."""
    o = {"data.root": str(root), "data.cache_dir": str(tmp_path / "cache"), "data.classes": CLASSES,
         "data.tuxpaint.languages": LANGS, "data.image_size": 32, "data.max_speech_seconds": 0.2,
         "encoders.image.source": "random", "encoders.text.source": "random",
         "encoders.speech.source": "random", "encoders.text.width": 16, "encoders.speech.width": 16,
         "model.dim_z": 16, "model.head_hidden": 16, "adapter.dim": 8, "adapter.context_tokens": 4,
         "scenario.num_tasks": 2, "train.epochs": 1, "train.batch_size": 8, "memory.size": 4,
         "memory.batch_size": 4, "run.out_dir": str(tmp_path / "runs"), "run.progress": "never"}
    o.update(extra)
    return o


def cli(capsys, command, preset, o: dict | None = None, raw: list[str] = ()) -> tuple[int, str]:
    """Run `mmcl COMMAND PRESET key=value...`; returns (exit code, stderr)."""
    args = [command, preset, *[f"{k}={json.dumps(v)}" for k, v in (o or {}).items()], *raw]
    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def one_line(err: str) -> str:
    """The error line (the CLI may log other lines before it)."""
    lines = [x for x in err.splitlines() if x.startswith("mmcl:")]
    assert lines, err
    return lines[-1]


# -- corrupt image ------------------------------------------------------------------------------
def test_corrupt_image_names_the_file_and_keeps_the_cache(stamps, tmp_path, capsys, monkeypatch):
    png = stamps / "clothes/clothes_1.png"
    good = png.read_bytes()
    png.write_bytes(good[:60])  # truncated
    code, err = cli(capsys, "run", "tuxpaint", overrides(stamps, tmp_path))
    assert code == 1
    msg = one_line(err)
    assert str(png) in msg and "reinstall" in msg
    assert "records.json" in msg  # removing the stamp instead also needs the index rebuilt
    # the index written before the failure is kept and complete; restoring the file is enough
    folders = cache_folders(tmp_path)
    assert len(folders) == 1 and (folders[0] / "records.json").exists()
    assert not [p for p in folders[0].iterdir() if p.name.startswith(".")]  # no temporaries
    png.write_bytes(good)
    code, err = cli(capsys, "prepare", "tuxpaint", overrides(stamps, tmp_path))
    assert code == 0, err


# -- corrupt or empty audio ---------------------------------------------------------------------
def test_corrupt_audio_keeps_what_was_prepared(stamps, tmp_path, capsys, monkeypatch):
    ogg = stamps / "clothes/clothes_2_desc_es.ogg"
    good = ogg.read_bytes()
    ogg.write_bytes(b"OggS" + b"\x00 not vorbis " * 30)
    code, err = cli(capsys, "prepare", "tuxpaint", overrides(stamps, tmp_path))
    assert code == 1
    msg = one_line(err)
    assert f"cannot decode audio {ogg}" in msg and "reinstall" in msg
    # image and text come before speech: their finished cache files are kept ...
    folder = cache_folders(tmp_path)[0]
    kept = {p.name for p in folder.iterdir()}
    assert {"records.json", "inputs_image.safetensors", "prefix_image.safetensors",
            "inputs_text.safetensors", "prefix_text.safetensors"} <= kept
    assert "inputs_speech.safetensors" not in kept
    # ... and reused once the file is fixed: no image is decoded again
    ogg.write_bytes(good)
    monkeypatch.setattr(tp, "decode_png", lambda *a, **k: pytest.fail("image decoded again"))
    code, err = cli(capsys, "prepare", "tuxpaint", overrides(stamps, tmp_path))
    assert code == 0, err


def test_empty_audio(stamps, tmp_path, capsys):
    ogg = stamps / "food/fruit/food_fruit_0_desc_fr.ogg"
    ogg.write_bytes(b"")
    code, err = cli(capsys, "prepare", "tuxpaint", overrides(stamps, tmp_path, **{"data.modalities": ["speech"]}))
    assert code == 1
    msg = one_line(err)
    assert f"audio file {ogg} is empty (0 bytes)" in msg and "reinstall" in msg
    # a valid Ogg file without a single sample
    import soundfile as sf
    silent = tmp_path / "no_samples.ogg"
    sf.write(str(silent), np.zeros(0, np.float32), 44100, format="OGG", subtype="VORBIS")
    with pytest.raises(DataError, match=f"{silent} is empty: it decodes to no samples.*reinstall"):
        media.decode_ogg(str(silent), 16000)


# -- missing modality file ----------------------------------------------------------------------
def test_missing_file_after_indexing(stamps, tmp_path, capsys, monkeypatch):
    """A recording that disappears between discovery and decoding names the file, and says to
    delete the cache folder too if the stamp is removed rather than restored."""
    gone = stamps / "clothes/clothes_1_desc_fr.ogg"
    index = TuxPaint.index

    def index_then_delete(self):
        out = index(self)
        gone.unlink()
        return out

    monkeypatch.setattr(TuxPaint, "index", index_then_delete)
    o = overrides(stamps, tmp_path, **{"data.modalities": ["speech"]})
    code, err = cli(capsys, "prepare", "tuxpaint", o)
    assert code == 1
    msg = one_line(err)
    assert f"audio file {gone} is missing" in msg and "Restore it" in msg
    folder = cache_folders(tmp_path)[0]
    assert f"delete {folder}" in msg
    # following the advice (remove the stamp, delete the cache folder) works
    monkeypatch.setattr(TuxPaint, "index", index)
    for p in gone.parent.glob("clothes_1*"):
        p.unlink()
    shutil.rmtree(folder)
    code, err = cli(capsys, "prepare", "tuxpaint", o)
    assert code == 0, err


def test_broken_symlink(stamps, tmp_path, capsys):
    png = stamps / "clothes/clothes_0.png"
    png.unlink()
    png.symlink_to(tmp_path / "elsewhere" / "clothes_0.png")
    code, err = cli(capsys, "prepare", "tuxpaint", overrides(stamps, tmp_path, **{"data.modalities": ["image"]}))
    assert code == 1
    msg = one_line(err)
    assert f"image file {png} is missing (a broken symbolic link to {tmp_path / 'elsewhere'}" in msg


def test_missing_description_and_discovery_rule(stamps, tmp_path):
    """Discovery leaves out stamps lacking a file (by design); reading a description that is
    gone names it."""
    (stamps / "clothes/clothes_2_desc_es.ogg").unlink()
    found = TuxPaint(build_config(overrides=overrides(stamps, tmp_path)).data).discover()
    assert "clothes/clothes_2" not in found["clothes"] and len(found["clothes"]) == 2
    with pytest.raises(DataError, match="stamp description .*nothing.txt is missing"):
        tp.read_descriptions(str(stamps / "nothing.txt"))


def test_missing_data_root(tmp_path, capsys):
    nowhere = tmp_path / "no_stamps_here"
    code, err = cli(capsys, "run", "tuxpaint", overrides(nowhere, tmp_path))
    assert code == 1
    msg = one_line(err)
    assert str(nowhere) in msg and "apt-get install tuxpaint-stamps-default" in msg
    assert "MMCL_TUXPAINT_ROOT" in msg and "data.root" in msg
    # a folder without any stamp gets the same advice
    nowhere.mkdir()
    code, err = cli(capsys, "run", "tuxpaint", overrides(nowhere, tmp_path))
    assert code == 1 and "no Tux Paint stamps" in err and "MMCL_TUXPAINT_ROOT" in err


# -- label not in the class list ----------------------------------------------------------------
def test_class_without_stamps_suggests_the_closest(stamps, tmp_path, capsys):
    wrong = overrides(stamps, tmp_path, **{"data.classes": ["clothes", "food/fruti"]})
    code, err = cli(capsys, "run", "tuxpaint", wrong)
    assert code == 1
    msg = one_line(err)
    assert "'food/fruti' has no stamps (did you mean 'food/fruit'?)" in msg
    assert "Fix data.classes" in msg and "clothes, food/fruit" in msg


def test_language_without_recordings(stamps, tmp_path):
    cfg = build_config(overrides=overrides(stamps, tmp_path, **{"data.tuxpaint.languages": ["fr", "de"]}))
    with pytest.raises(DataError, match=r"'clothes' has 3 stamp\(s\), but none.*clothes_0_desc_de\.ogg.*"
                                        r"No stamp has a recording in 'de': fix data.tuxpaint.languages"):
        TuxPaint(cfg.data).discover()


# -- empty task ---------------------------------------------------------------------------------
def test_more_tasks_than_classes_or_domains(stamps, tmp_path, capsys):
    code, err = cli(capsys, "run", "tuxpaint", overrides(stamps, tmp_path, **{"scenario.num_tasks": 3}))
    assert code == 2
    msg = one_line(err)
    assert "scenario.num_tasks=3" in msg and "2 classes" in msg and "at most 2" in msg
    code, err = cli(capsys, "run", "tuxpaint-dil", overrides(stamps, tmp_path, **{"scenario.num_tasks": 3}))
    assert code == 2
    assert "scenario.num_tasks=3" in err and "2 domains (fr, es" in err


def test_class_with_all_stamps_in_one_split(stamps, tmp_path, capsys):
    o = overrides(stamps, tmp_path, **{"data.tuxpaint.max_stamps_per_class": 1})  # 1 stamp: train only
    code, err = cli(capsys, "run", "tuxpaint", o)
    assert code == 1
    msg = one_line(err)
    assert "task 1 (classes '" in msg and "no test samples" in msg
    assert "2 train, 0 val, 0 test" in msg and "data.tuxpaint.max_stamps_per_class" in msg


def test_build_scenario_names_task_and_classes():
    cfg = build_config(overrides={"scenario.class_order": "given", "scenario.num_tasks": 2})
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    domains = torch.zeros(8, dtype=torch.long)
    names = ["a", "b", "c", "d"]
    ok = {"train": np.array([0, 2, 4, 6]), "val": np.array([], dtype=np.int64), "test": np.array([1, 3, 5, 7])}
    assert len(build_scenario(cfg, labels, domains, ok, names, ["x"]).tasks) == 2
    no_train_d = {"train": np.array([0, 2, 4]), "val": np.array([6]), "test": np.array([1, 3, 5, 7])}
    with pytest.raises(ScenarioError, match=r"task 2 \(classes 'c', 'd'\): 1 class\(es\) have no train "
                                            r"samples \('d': 0 train, 1 val, 1 test"):
        build_scenario(cfg, labels, domains, no_train_d, names, ["x"])
    with pytest.raises(ScenarioError, match="'e' have no samples"):
        build_scenario(cfg, labels, domains, ok, names + ["e"], ["x"])


# -- config keys, types, values, presets ---------------------------------------------------------
@pytest.mark.parametrize("arg, expected", [
    ("train.epoch=3", ["unknown config key 'train.epoch'", "Did you mean 'train.epochs'?"]),
    ("epochs=3", ["unknown config key 'epochs'", "'train.epochs'"]),
    ("data.clases=[clothes]", ["'data.clases'", "'data.classes'"]),
    ("train=5", ["'train' is a group of config keys", "train.epochs="]),
    ("train.epochs=abc", ["'train.epochs' expects a whole number, got 'abc'", "Example: train.epochs=3"]),
    ("train.epochs=2.5", ["'train.epochs' expects a whole number, got 2.5"]),
    ("train.lr=fast", ["'train.lr' expects a number, got 'fast'"]),
    ("run.save_checkpoint=maybe", ["'run.save_checkpoint' expects true or false"]),
    ("data.modalities=5", ["'data.modalities' expects a list of strings, got 5", "data.modalities=[image,text]"]),
    ("data.classes=clothes", ["'data.classes' expects a list of strings, got 'clothes'", "in brackets"]),
    ("data.classes=[a, b", ["cannot read the value of 'data.classes'", "expected ',' or ']'"]),
    ("train.epochs=", ["'train.epochs' expects a whole number, got nothing"]),
    ("train.precision=bf61", ["'train.precision' = 'bf61' is not one of fp32, bf16", "Did you mean 'bf16'?"]),
    ("data.modalities=[image,txt]", ["unknown value 'txt'", "Did you mean 'text'?"]),
    ("data.classes=[clothes,clothes]", ["lists 'clothes' twice"]),
    ("data.tuxpaint.languages=[]", ["'data.tuxpaint.languages' is empty"]),
    ("train.lr=0", ["'train.lr' must be greater than 0"]),
    ("memory.size=-1", ["'memory.size' must be at least 0"]),
    ("method.name=cmaa", ["method.name='cmaa' is not a registered method", "Did you mean 'cma'?"]),
    ("data.dataset=tuxpant", ["data.dataset='tuxpant' is not a registered dataset", "'tuxpaint'"]),
    ("encoders.image.kind=mobilenet", ["encoders.image.kind='mobilenet'", "Did you mean 'mobilenetv2'?"]),
    ("encoders.image.kind=ge2e", ["encoder 'ge2e' takes audio input, and modality 'image' is image", "mobilenetv2"]),
])
def test_bad_config_value_or_key(arg, expected, capsys, tmp_path):
    out = tmp_path / "runs"
    code, err = cli(capsys, "run", "tuxpaint", raw=[f"run.out_dir={out}", arg])
    assert code == 2
    msg = one_line(err)
    assert msg.startswith("mmcl: config error: ")
    for text in expected:
        assert text in msg
    assert not out.exists()  # nothing was written


def test_bad_preset(capsys, tmp_path):
    code, err = cli(capsys, "run", "tuxpant")
    assert code == 2 and "unknown preset 'tuxpant'. Did you mean 'tuxpaint'?" in err
    missing = tmp_path / "mine.yaml"
    code, err = cli(capsys, "run", str(missing))
    assert code == 2 and f"preset file {missing} does not exist" in err
    missing.write_text("train:\n  epochs: 3\n lr: 0.1\n")  # bad indentation
    code, err = cli(capsys, "run", str(missing))
    assert code == 2 and f"{missing} is not valid YAML" in err and "line 3" in err
    missing.write_text("train:\n  epochz: 3\n")
    code, err = cli(capsys, "run", str(missing))
    assert code == 2 and "'train.epochz' in " + str(missing) in err and "'train.epochs'" in err
    missing.write_text("train:\n  epochs: many\n")
    code, err = cli(capsys, "run", str(missing))
    assert code == 2 and "'train.epochs' expects a whole number, got 'many'" in err and str(missing) in err
    missing.write_text("train: 3\n")
    code, err = cli(capsys, "run", str(missing))
    assert code == 2 and "'train' is a group of config keys" in err
    missing.write_text("run:\n  progress: off\n")  # YAML reads unquoted off as false
    with pytest.raises(ConfigError, match="quote the value"):
        build_config(str(missing))


def test_python_api_values_are_checked_too():
    with pytest.raises(ConfigError, match="'train.epochs' expects a whole number, got 'three'"):
        build_config("tuxpaint", {"train.epochs": "three"})
    # what OmegaConf converts is accepted: numpy numbers, paths, numeric strings
    cfg = build_config("tuxpaint", {"train.epochs": np.int64(2), "data.root": Path("/some/where"),
                                    "train.lr": "0.01"})
    assert cfg.train.epochs == 2 and cfg.train.lr == 0.01 and cfg.data.root == "/some/where"


# -- encoders -----------------------------------------------------------------------------------
def test_hub_id_not_cached_fails_fast(stamps, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MMCL_DOWNLOAD", raising=False)
    o = overrides(stamps, tmp_path, **{"encoders.text.source": "some-org/some-model",
                                        "data.modalities": ["text"]})
    t0 = time.perf_counter()
    code, err = cli(capsys, "prepare", "tuxpaint", o)
    assert time.perf_counter() - t0 < 15  # the hub client alone would retry for ~20 s offline
    assert code == 1
    msg = one_line(err)
    assert "'some-org/some-model' is not in the local Hugging Face cache" in msg
    assert "MMCL_DOWNLOAD=1" in msg and "encoders.text.source=/path/to/folder" in msg


def test_hub_id_in_the_cache_loads_offline(tmp_path, monkeypatch):
    """A model already in the Hugging Face cache loads without network (and without asking)."""
    import huggingface_hub.constants

    from mmcl.encoders.hf_text import tiny_random_bert
    monkeypatch.delenv("MMCL_DOWNLOAD", raising=False)
    repo = tmp_path / "hub" / "models--some-org--tiny-bert"
    snapshot = repo / "snapshots" / ("c0ffee" * 6 + "c0ff")
    model, tokenizer = tiny_random_bert(16, 3)
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    enc = build_encoder("text", build_config(overrides={"encoders.text.source": "some-org/tiny-bert"}))
    assert enc.dims == [16, 16, 16]
    assert f"hub:some-org/tiny-bert@{snapshot.name}" in enc.identity()


def test_unusable_encoder_sources(tmp_path):
    not_a_model = tmp_path / "empty_folder"
    not_a_model.mkdir()
    with pytest.raises(ValueError, match=f"cannot load a transformers model from the folder {not_a_model}"
                                         ".*save_pretrained"):
        build_encoder("text", build_config(overrides={"encoders.text.source": str(not_a_model)}))
    garbage = tmp_path / "weights.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    for modality in ("image", "speech"):
        with pytest.raises(ValueError, match=f"{modality} encoder .*cannot read {garbage}.*"
                                             "not a weights-only PyTorch file"):
            build_encoder(modality, build_config(overrides={f"encoders.{modality}.source": str(garbage)}))


# -- the data cache -----------------------------------------------------------------------------
def test_cache_write_failure_keeps_complete_files(stamps, tmp_path, capsys, monkeypatch):
    """Disk full while writing the data cache: the file is named, the files already written are
    complete and kept, no temporary is left, and the next run prepares only what is missing."""
    import errno

    import safetensors.torch
    save_file = safetensors.torch.save_file

    def full_disk(tensors, filename, *a, **k):
        if "inputs_speech" in str(filename):
            with open(filename, "wb") as f:  # a partial temporary file, as a full disk leaves
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save_file(tensors, filename, *a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    o = overrides(stamps, tmp_path, **{"data.modalities": ["text", "speech"]})
    code, err = cli(capsys, "prepare", "tuxpaint", o)
    assert code == 1
    msg = one_line(err)
    folder = cache_folders(tmp_path)[0]
    assert f"cannot write the data cache file {folder / 'inputs_speech.safetensors'}" in msg
    assert "No space left on device" in msg and "data.cache_dir" in msg
    assert sorted(p.name for p in folder.iterdir()) == [
        "inputs_text.safetensors", "parts", "prefix_text.safetensors", "records.json"]
    # the decoded speech rows were saved as a part: the next run merges them, decoding nothing
    assert [p.name for p in (folder / "parts").iterdir()] == ["speech-000000000.safetensors"]
    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    monkeypatch.setattr(TuxPaint, "index", lambda self: pytest.fail("indexed again"))
    code, err = cli(capsys, "prepare", "tuxpaint", o)
    assert code == 0, err


def test_cache_folder_not_creatable_or_damaged(stamps, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    o = overrides(stamps, tmp_path, **{"data.cache_dir": str(blocker), "data.modalities": ["text"]})
    code, err = cli(capsys, "prepare", "tuxpaint", o)
    assert code == 1 and f"cannot create the data cache folder {blocker}" in err and "data.cache_dir" in err
    o = overrides(stamps, tmp_path, **{"data.modalities": ["text"]})
    assert cli(capsys, "prepare", "tuxpaint", o)[0] == 0
    records = cache_folders(tmp_path)[0] / "records.json"
    records.write_text('{"records": [')  # damaged by hand
    code, err = cli(capsys, "prepare", "tuxpaint", o)
    assert code == 1
    assert f"cannot read the prepared index {records}" in err and f"Delete the folder {records.parent}" in err


def test_left_out_stamps_are_logged(stamps, tmp_path, caplog):
    (stamps / "clothes/clothes_2_desc_es.ogg").unlink()
    with caplog.at_level("INFO", logger="mmcl.data.tuxpaint"):
        TuxPaint(build_config(overrides=overrides(stamps, tmp_path)).data).discover()
    assert "left out 1 stamp(s)" in caplog.text and "clothes/clothes_2_desc_es.ogg" in caplog.text
