"""Data: Tux Paint discovery, splits, the prepared cache and batches (fake stamp tree)."""
from __future__ import annotations

import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FAKE_CLASSES, LANGUAGES, make_stamp_tree
from mmcl.config import build_config
from mmcl.data import DataError, PreparedData, TuxPaint, media, prepare, split_samples
from mmcl.data import tuxpaint as tp
from mmcl.data.tuxpaint import TUXPAINT_LANGUAGES
from mmcl.settings import TUXPAINT_CLASSES

REAL_ROOT = Path("/usr/share/tuxpaint/stamps")


# -- a tiny fake encoder with the BlockEncoder interface ------------------------------------------
class FakeEncoder:
    """preprocess + prefix for one modality, tiny and deterministic; counts preprocess calls."""

    def __init__(self, modality: str, image_size: int = 16, max_tokens: int = 12,
                 sample_rate: int = 16000, dim: int = 8, version: str = "v1"):
        self.modality, self.image_size, self.max_tokens = modality, image_size, max_tokens
        self.hop = sample_rate // 100  # 10 ms frames, as the real log-mel
        self.dim, self.version = dim, version
        self.input_keys = {"image": ("image",), "text": ("text_ids", "text_mask"),
                           "speech": ("speech", "speech_mask")}[modality]
        g = torch.Generator().manual_seed(0)
        self.proj = torch.randn({"image": 3, "text": 1, "speech": 40}[modality], dim, generator=g)
        self.calls = 0

    def identity(self) -> str:
        return f"fake-{self.modality}-{self.image_size}-{self.max_tokens}-{self.version}"

    def preprocess(self, raws: list) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.modality == "image":
            s = self.image_size
            out = []
            for im in raws:  # nearest-neighbour resize
                ys = np.arange(s) * im.shape[0] // s
                xs = np.arange(s) * im.shape[1] // s
                out.append(torch.from_numpy(im[ys][:, xs]).permute(2, 0, 1))
            return {"image": torch.stack(out)}
        if self.modality == "text":
            ids = [[ord(c) % 97 + 1 for c in t][: self.max_tokens] for t in raws]
            n = max(len(i) for i in ids)
            t_ids = torch.zeros(len(ids), n, dtype=torch.long)
            for r, i in enumerate(ids):
                t_ids[r, : len(i)] = torch.tensor(i)
            return {"text_ids": t_ids, "text_mask": t_ids > 0}
        frames = [torch.from_numpy(w[: len(w) // self.hop * self.hop]).reshape(-1, self.hop) for w in raws]
        n = max(f.shape[0] for f in frames)
        feats = torch.zeros(len(frames), n, 40)
        mask = torch.zeros(len(frames), n, dtype=torch.bool)
        for r, f in enumerate(frames):
            feats[r, : f.shape[0]] = f[:, :40].abs()
            mask[r, : f.shape[0]] = True
        return {"speech": feats, "speech_mask": mask}

    def prefix(self, inputs):
        if self.modality == "image":
            x = inputs["image"].float() / 255  # (B, 3, S, S) -> 4 x 4 patches of 3 channels
            x = torch.nn.functional.avg_pool2d(x, self.image_size // 4)
            return x.flatten(2).transpose(1, 2) @ self.proj, None
        if self.modality == "text":
            return inputs["text_ids"].float().unsqueeze(-1) @ self.proj, inputs["text_mask"]
        return inputs["speech"] @ self.proj, inputs["speech_mask"]


def make_cfg(root, cache, classes=FAKE_CLASSES, **over):
    d = {"data.root": str(root), "data.cache_dir": str(cache), "data.classes": list(classes),
         "data.image_size": 16, "data.max_text_tokens": 32, "data.max_speech_seconds": 0.4}
    own = ("languages", "max_stamps_per_class")  # the data set's own section
    d.update({f"data.tuxpaint.{k}" if k in own else f"data.{k}": v for k, v in over.items()})
    return build_config(overrides=d)


def fake_encoders(cfg, version="v1"):
    return {m: FakeEncoder(m, cfg.data.image_size, cfg.data.max_text_tokens, cfg.data.sample_rate,
                           version=version) for m in cfg.data.modalities}


# -- discovery ----------------------------------------------------------------------------------
def test_discovery_classes_distractors_and_texts(fake_stamps, tmp_path):
    root, classes = fake_stamps
    ds = TuxPaint(make_cfg(root, tmp_path).data)
    found = ds.discover()
    assert list(found) == classes
    # 6 per class; town/houses also has the stamp whose ro line is missing (kept: English fallback)
    assert {c: len(s) for c, s in found.items()} == {
        "animals/mammals": 6, "food/fruit": 6, "clothes": 6, "town/houses": 7}
    # the deeper subfolder belongs to its two-level class
    assert "animals/mammals/sub/animals_mammals_5" in found["animals/mammals"]
    every = [s for stamps in found.values() for s in stamps]
    for skipped in ("svg_only", "missing_lang", "letter_a", "hat"):
        assert not any(s.endswith("/" + skipped) for s in every), skipped

    records, sources = ds.index()
    assert len(records) == 25 * 6 and len(sources["image"]) == 25
    assert len(sources["text"]) == len(sources["speech"]) == len(records)
    by_stamp = defaultdict(list)
    for r in records:
        by_stamp[r["stamp"]].append(r)
        assert classes[r["label"]] == r["class_name"]
        assert LANGUAGES[r["domain"]] == r["language"]
        assert sources["speech"][r["rows"]["speech"]] == f"{r['stamp']}_desc_{r['language']}.ogg"
    # one image row per stamp, shared by its 6 languages
    for stamp, rs in by_stamp.items():
        assert len(rs) == 6 and len({r["rows"]["image"] for r in rs}) == 1
        assert sources["image"][rs[0]["rows"]["image"]] == f"{stamp}.png"
    # texts come from each language's line; the missing one falls back to English and is counted
    r_fr = next(r for r in records if r["stamp"] == "food/fruit/food_fruit_0" and r["language"] == "fr")
    assert sources["text"][r_fr["rows"]["text"]] == "Un a food fruit 0."
    r_ro = next(r for r in records if r["stamp"].endswith("no_ro_text") and r["language"] == "ro")
    assert sources["text"][r_ro["rows"]["text"]] == "A no ro text."
    assert ds.text_fallbacks == ["town/houses/no_ro_text:ro"]


def test_discovery_cap_languages_and_errors(fake_stamps, tmp_path):
    root, classes = fake_stamps
    capped = TuxPaint(make_cfg(root, tmp_path, max_stamps_per_class=2).data).discover()
    assert all(len(s) == 2 and s == sorted(s) for s in capped.values())
    # with fewer languages, the stamp missing only the last language's recording is usable
    two = TuxPaint(make_cfg(root, tmp_path, languages=["fr", "ru"]).data).discover()
    assert any(s.endswith("/missing_lang") for s in two["animals/mammals"])
    with pytest.raises(DataError, match="symbols/alphabet.*did you mean 'symbols/alphabets'"):
        TuxPaint(make_cfg(root, tmp_path, classes=["clothes", "symbols/alphabet"]).data).discover()
    with pytest.raises(DataError, match="apt-get install tuxpaint-stamps-default.*MMCL_TUXPAINT_ROOT"):
        TuxPaint(make_cfg(tmp_path / "nowhere", tmp_path).data).discover()


def test_decoders(fake_stamps):
    root, _ = fake_stamps
    png = root / "animals/mammals/animals_mammals_0.png"
    img = media.decode_png(str(png))
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert (img[0, 0] == 255).all()  # transparent corner composited on white
    assert img[img.shape[0] // 2, img.shape[1] // 2].max() < 255  # the shape's colour
    for k in (1, 2):  # palette and grey+alpha PNGs convert too
        assert media.decode_png(str(root / f"animals/mammals/animals_mammals_{k}.png")).shape[2] == 3
    ogg = root / "animals/mammals/animals_mammals_1_desc_fr.ogg"  # k=1: a stereo file
    wave = media.decode_ogg(str(ogg), 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - int((0.5 + 0.01) * 16000)) < 400  # resampled 44.1 kHz -> 16 kHz
    assert 0.1 < np.abs(wave).max() < 1.0
    assert len(media.decode_ogg(str(ogg), 16000, max_seconds=0.25)) == 4000


def test_corrupt_files_name_the_file(fake_stamps, tmp_path):
    root = tmp_path / "stamps"
    shutil.copytree(fake_stamps[0] / "clothes", root / "clothes")
    bad_png = root / "clothes/clothes_3.png"
    bad_png.write_bytes(bad_png.read_bytes()[:60])  # truncated
    with pytest.raises(DataError, match=f"{bad_png}.*reinstall"):
        media.decode_png(str(bad_png))
    bad_ogg = root / "clothes/clothes_4_desc_ru.ogg"
    bad_ogg.write_bytes(b"OggS" + b"\x00 not vorbis " * 30)  # a broken page
    with pytest.raises(DataError, match=str(bad_ogg)):
        media.decode_ogg(str(bad_ogg), 16000)
    # through prepare, with the decoding pool: the worker's error reaches the caller
    cfg = make_cfg(root, tmp_path / "cache", classes=["clothes"], modalities=["speech"])
    with pytest.raises(DataError, match=str(bad_ogg)):
        prepare(cfg, fake_encoders(cfg), progress=False, workers=2)
    cfg = make_cfg(root, tmp_path / "cache", classes=["clothes"], modalities=["image"])
    with pytest.raises(DataError, match=str(bad_png)):
        prepare(cfg, fake_encoders(cfg), progress=False, workers=0)


# -- splits -------------------------------------------------------------------------------------
def _records(n_per_class: dict[str, int], languages: int = 6) -> list[dict]:
    recs = []
    for label, (cls, n) in enumerate(n_per_class.items()):
        for s in range(n):
            for d in range(languages):
                recs.append({"index": len(recs), "stamp": f"{cls}/s{s}", "class_name": cls,
                             "label": label, "language": str(d), "domain": d})
    return recs


def test_split_by_stamp_stratified_and_seeded():
    sizes = {"a": 65, "b": 41, "c": 11, "d": 3, "e": 2, "f": 1}
    recs = _records(sizes)
    s0 = split_samples(recs, [0.7, 0.1, 0.2], seed=0)
    assert set(s0) == {"train", "val", "test"}
    allidx = np.concatenate(list(s0.values()))
    assert sorted(allidx.tolist()) == list(range(len(recs)))  # a partition
    stamp_of = {r["index"]: r["stamp"] for r in recs}
    stamps = {k: {stamp_of[i] for i in v} for k, v in s0.items()}
    assert not (stamps["train"] & stamps["val"] or stamps["train"] & stamps["test"]
                or stamps["val"] & stamps["test"])
    for k, v in stamps.items():  # every language of a stamp goes with it
        assert len(s0[k]) == 6 * len(v)
    per = {k: Counter(s.split("/")[0] for s in v) for k, v in stamps.items()}
    for cls in ("a", "b", "c", "d"):  # >= 3 stamps: present in every split
        assert all(per[k][cls] >= 1 for k in per), cls
    assert (per["train"]["a"], per["val"]["a"], per["test"]["a"]) == (46, 6, 13)
    assert (per["train"]["c"], per["val"]["c"], per["test"]["c"]) == (8, 1, 2)
    assert per["train"]["f"] == 1
    again = split_samples(recs, [0.7, 0.1, 0.2], seed=0)
    assert all(np.array_equal(again[k], s0[k]) for k in s0)
    s1 = split_samples(recs, [0.7, 0.1, 0.2], seed=1)
    assert not np.array_equal(s1["test"], s0["test"])
    assert {k: len(v) for k, v in s1.items()} == {k: len(v) for k, v in s0.items()}
    # a class's split does not depend on which other classes are present
    only_c = split_samples(_records({"c": 11}), [0.7, 0.1, 0.2], seed=0)
    assert {k: len(v) for k, v in only_c.items()} == {"train": 48, "val": 6, "test": 12}
    no_val = split_samples(recs, [0.8, 0.0, 0.2], seed=0)
    assert len(no_val["val"]) == 0


# -- prepare and batches ------------------------------------------------------------------------
def test_prepare_caches_and_second_call_decodes_nothing(fake_stamps, tmp_path, monkeypatch):
    root, classes = fake_stamps
    cfg = make_cfg(root, tmp_path)
    encs = fake_encoders(cfg)
    data = prepare(cfg, encs, progress=False, workers=2)
    assert isinstance(data, PreparedData)
    folder = data.folder
    assert folder.parent == tmp_path / "tuxpaint"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["inputs_image.safetensors", "inputs_speech.safetensors",
                     "inputs_text.safetensors", "prefix_image.safetensors",
                     "prefix_speech.safetensors", "prefix_text.safetensors", "records.json"]
    assert len(data) == 150 and data.classes == classes and data.domains == LANGUAGES
    assert data.tensors["image"]["tokens"].shape == (25, 16, 8)  # one image row per stamp
    assert data.tensors["image"]["tokens"].dtype == torch.float16
    assert data.tensors["speech"]["mask"].shape[0] == 150
    assert data.info["text_fallbacks"] == ["town/houses/no_ro_text:ro"]
    assert data.labels.tolist() == [r["label"] for r in data.records]

    # second call: everything comes from the cache; decoding or preprocessing would fail
    def boom(*a, **k):
        raise AssertionError("decoded again")
    monkeypatch.setattr(tp, "decode_png", boom)
    monkeypatch.setattr(tp, "decode_ogg", boom)
    monkeypatch.setattr(TuxPaint, "index", boom)
    encs2 = fake_encoders(cfg)
    again = prepare(cfg, encs2, progress=False)
    assert again.folder == folder and all(e.calls == 0 for e in encs2.values())
    for m in data.modalities:
        for k, v in data.tensors[m].items():
            assert torch.equal(v, again.tensors[m][k])

    # settings that change inputs, and encoder identities, get their own cache folder
    monkeypatch.undo()
    other = prepare(make_cfg(root, tmp_path, image_size=8), fake_encoders(make_cfg(root, tmp_path, image_size=8)),
                    progress=False, workers=0)
    assert other.folder != folder
    v2 = prepare(cfg, fake_encoders(cfg, version="v2"), progress=False, workers=0)
    assert v2.folder != folder
    # the split seed does not: splits are computed at load time
    assert not np.array_equal(again.split(0)["test"], again.split(1)["test"])


def test_prepare_resumes_missing_files_and_skips_unused_modalities(fake_stamps, tmp_path):
    root, _ = fake_stamps
    cfg = make_cfg(root, tmp_path, modalities=["text"], cache_prefix=False)
    data = prepare(cfg, fake_encoders(cfg), progress=False)
    assert sorted(p.name for p in data.folder.iterdir()) == ["inputs_text.safetensors", "records.json"]
    assert not any(p.name.startswith(".") for p in data.folder.iterdir())  # no temporaries left
    b = data.batch(torch.arange(4))
    assert set(b) == {"text", "label", "domain", "index"}
    assert set(b["text"]) == {"text_ids", "text_mask", "present"}  # present: the modality mask
    # turning on the prefix cache computes only the prefix, from the cached inputs
    cfg2 = make_cfg(root, tmp_path, modalities=["text"], cache_prefix=True)
    encs = fake_encoders(cfg2)
    data2 = prepare(cfg2, encs, progress=False)
    assert data2.folder == data.folder and encs["text"].calls == 0
    assert (data.folder / "prefix_text.safetensors").exists()


def test_batch_shapes_and_trimming(fake_stamps, tmp_path):
    root, _ = fake_stamps
    cfg = make_cfg(root, tmp_path)
    data = prepare(cfg, fake_encoders(cfg), progress=False, workers=0)
    idx = torch.tensor([0, 7, 30, 149])
    b = data.batch(idx)
    assert b["index"].tolist() == idx.tolist()
    assert b["label"].tolist() == [data.records[i]["label"] for i in idx]
    assert b["domain"].tolist() == [data.records[i]["domain"] for i in idx]
    assert b["image"]["tokens"].shape == (4, 16, 8) and b["image"]["tokens"].dtype == torch.float32
    assert b["image"]["mask"] is None
    for m in ("text", "speech"):
        tok, mask = b[m]["tokens"], b[m]["mask"]
        assert tok.dtype == torch.float32 and mask.dtype == torch.bool
        assert tok.shape[:2] == mask.shape and tok.shape[0] == 4
        assert mask[:, -1].any()  # trimmed: the last column holds a valid token
        full = data.tensors[m]["mask"][data.rows[m][idx]]
        assert mask.sum() == full.sum()  # nothing valid was cut
    # speech is cut to max_speech_seconds = 0.4 s -> 40 frames of 10 ms
    assert data.tensors["speech"]["mask"].shape[1] == 40
    # a batch of short texts is shorter than the padded store
    lengths = data.tensors["text"]["mask"].sum(1)
    short = torch.nonzero(lengths[data.rows["text"]] < lengths.max()).flatten()[:8]
    assert data.batch(short)["text"]["tokens"].shape[1] < data.tensors["text"]["tokens"].shape[1]
    # the cached prefix equals the encoder's prefix on the stored inputs
    enc = FakeEncoder("text", max_tokens=32)
    from safetensors.torch import load_file
    inputs = load_file(str(data.folder / "inputs_text.safetensors"))
    rows = data.rows["text"][idx]
    ref, _ = enc.prefix({k: v[rows] for k, v in inputs.items()})
    n = b["text"]["tokens"].shape[1]
    assert torch.allclose(b["text"]["tokens"], ref[:, :n].half().float())
    # inputs-only store: the encoder's keys, padded modalities trimmed
    cfg2 = make_cfg(root, tmp_path, cache_prefix=False)
    raw = prepare(cfg2, fake_encoders(cfg2), progress=False).batch(idx)
    assert raw["image"]["image"].shape == (4, 3, 16, 16) and raw["image"]["image"].dtype == torch.uint8
    assert raw["speech"]["speech"].shape[2] == 40
    assert raw["speech"]["speech"].shape[1] == raw["speech"]["speech_mask"].shape[1]
    assert raw["text"]["text_ids"].dtype == torch.long


def test_make_stamp_tree_variant(tmp_path):
    classes = ["animals/birds", "food/vegetables", "symbols/music", "plants/flowers",
               "hobbies/music", "seasonal/easter", "household", "sports"]
    root = make_stamp_tree(tmp_path / "s8", classes=classes, stamps_per_class=3, languages=["fr", "es"],
                           seconds=0.1, distractors=False)
    found = TuxPaint(make_cfg(root, tmp_path, classes=classes, languages=["fr", "es"]).data).discover()
    assert {c: len(s) for c, s in found.items()} == {c: 3 for c in classes}


# -- the real stamps ----------------------------------------------------------------------------
REAL_COUNTS = {
    "animals/mammals": 65, "food/fruit": 41, "animals/birds": 36, "town/houses": 32,
    "symbols/money": 26, "plants/flowers": 24, "town/roadsigns": 20, "food/vegetables": 18,
    "seasonal/christmas": 16, "seasonal/halloween": 16, "animals/insects": 14,
    "symbols/music": 12, "symbols/chess": 12, "clothes": 11, "hobbies/music": 11,
    "seasonal/easter": 11,
}


@pytest.mark.skipif(not REAL_ROOT.is_dir(), reason="Tux Paint stamps not installed")
def test_real_stamps_counts(tmp_path):
    cfg = build_config(overrides={"data.root": str(REAL_ROOT), "data.cache_dir": str(tmp_path)})
    assert cfg.data.classes == TUXPAINT_CLASSES and cfg.data.tuxpaint.languages == TUXPAINT_LANGUAGES
    ds = TuxPaint(cfg.data)
    records, sources = ds.index()
    per_class = Counter(r["class_name"] for r in records if r["domain"] == 0)
    assert dict(per_class) == REAL_COUNTS
    assert len(sources["image"]) == 365 and len(records) == 2190
    assert all(sources["text"])
    splits = split_samples(records, cfg.data.split, seed=0)
    assert sum(len(v) for v in splits.values()) == 2190
    # one real file of each kind decodes
    assert media.decode_png(str(REAL_ROOT / sources["image"][0])).shape[2] == 3
    assert media.decode_ogg(str(REAL_ROOT / sources["speech"][0]), 16000).size > 1000


def test_cache_files_are_memory_mapped_and_equal_to_safetensors(tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    from mmcl.data.cache import load_tensors
    maps, memmap = [], np.memmap

    def recorded(*a, **k):
        maps.append(memmap(*a, **k))
        return maps[-1]
    monkeypatch.setattr(np, "memmap", recorded)
    t = {"tokens": torch.randn(5, 7, 3).half(), "mask": torch.rand(5, 7) > 0.5, "empty": torch.zeros(0, 3),
         "ids": torch.arange(4), "pixels": torch.randint(0, 255, (2, 3, 4), dtype=torch.uint8)}
    path = tmp_path / "x.safetensors"
    save_file(t, str(path))
    got, ref = load_tensors(path), load_file(str(path))
    for k in t:
        assert got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k])
    # served from maps of the file (paged in by the OS), not read whole
    assert got["tokens"].data_ptr() in {m.ctypes.data for m in maps} and len(maps) == 4
    got["tokens"][0] = 0  # copy-on-write: the file is never changed
    assert torch.equal(load_file(str(path))["tokens"], t["tokens"])
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=f"cannot read cached file {path}.*prepare again"):
        load_tensors(path)


def test_tuxpaint_root_from_option_env_or_prepare_root(fake_stamps, tmp_path, monkeypatch, capsys):
    from mmcl.cli import main as cli_main
    root, classes = fake_stamps
    monkeypatch.delenv("MMCL_TUXPAINT_ROOT", raising=False)
    cfg = make_cfg("", tmp_path / "cache")
    assert TuxPaint(cfg.data).root == Path("/usr/share/tuxpaint/stamps")  # nothing given: the package's place
    # `mmcl prepare tuxpaint --root DIR` is remembered for later runs without data.root
    args = [f"data.cache_dir={tmp_path / 'cache'}", f"data.classes=[{','.join(classes)}]",
            "data.image_size=16", "encoders.image.source=random", "encoders.text.source=random",
            "encoders.speech.source=random", "encoders.text.width=16", "encoders.speech.width=16"]
    assert cli_main(["prepare", "tuxpaint", *args, "--root", str(root), "--workers", "1"]) == 0
    assert TuxPaint(cfg.data).root == root.resolve()
    monkeypatch.setenv("MMCL_TUXPAINT_ROOT", str(tmp_path / "elsewhere"))  # the variable wins over it
    assert TuxPaint(cfg.data).root == tmp_path / "elsewhere"
    assert TuxPaint(make_cfg(root, tmp_path / "cache").data).root == root  # and data.root over both


def test_to_device_is_the_methods_one_batch_mover():
    """mmcl.data.to_device: nested dicts followed, None masks and other values kept, tensors
    moved non-blocking by default; the methods use this very function."""
    from mmcl.data import to_device
    from mmcl.methods import base, prompting

    calls = []

    class Recorded(torch.Tensor):
        def to(self, *a, **k):
            calls.append(k.get("non_blocking"))
            return super().to(*a, **k)

    t = torch.arange(4.0).as_subclass(Recorded)
    batch = {"image": {"tokens": t, "mask": None}, "label": t, "name": "x", "n": 3}
    out = to_device(batch, "cpu")
    assert out.keys() == batch.keys() and out["image"].keys() == {"tokens", "mask"}
    assert out["image"]["mask"] is None and out["name"] == "x" and out["n"] == 3
    assert torch.equal(out["label"], torch.arange(4.0)) and calls == [True, True]
    to_device(batch, "cpu", non_blocking=False)
    assert calls[2:] == [False, False]
    assert base.to_device is to_device and prompting.to_device is to_device
