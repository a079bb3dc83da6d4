"""The larger Tux Paint presets (tuxpaint-large, tuxpaint-large-12x2) and the every-modality-shifts
domain-incremental one (tuxpaint-shift) on generated stamp trees: class selection, splits by
stamp, the per-domain image shifts and the cache key."""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

import mmcl
from conftest import LANGUAGES, write_stamp
from mmcl.config import ConfigError, build_config
from mmcl.data import DataError, TuxPaint, cache_folder, split_samples
from mmcl.data.image_shifts import SHIFTS, shift_image
from mmcl.data.tuxpaint import TUXPAINT_LANGUAGES
from mmcl.scenarios import build_scenario
from test_end_to_end import check_run_folder, tiny_overrides

REAL_ROOT = Path("/usr/share/tuxpaint/stamps")
PRESET_LANGUAGES = ["fr", "ru", "ro"]  # tuxpaint-large's
SHIFT_DOMAINS = ["fr", "ru+edges", "ro+blur", "ca+silhouette", "bg+pixelate", "es+rotate90"]


def names_only_tree(root: Path, plan: dict[str, list]) -> Path:
    """A stamp tree of empty PNG / OGG files and real NAME.txt files (discovery and indexing read
    only names and texts). plan: {class: one entry per stamp: the languages recorded (a list), or
    'no_txt' (PNG and recordings, no text), or 'svg' (no PNG)}."""
    for cls, stamps in plan.items():
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for k, spec in enumerate(stamps):
            name = f"{cls.replace('/', '_')}_{k:02d}"
            langs = LANGUAGES if spec in ("no_txt", "svg") else spec
            (folder / (f"{name}.svg" if spec == "svg" else f"{name}.png")).write_bytes(b"")
            if spec != "no_txt":
                lines = [f"A {name}."] + [f"{lang}.utf8={lang} {name}" for lang in LANGUAGES]
                (folder / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
            for lang in langs:
                (folder / f"{name}_desc_{lang}.ogg").write_bytes(b"")
    return root


def large_cfg(root, cache, preset="tuxpaint-large", **over):
    return build_config(preset, {"data.root": str(root), "data.cache_dir": str(cache), **over})


@pytest.fixture(scope="module")
def selection_tree(tmp_path_factory):
    """Class folders around the preset's rule (at least 9 usable stamps, at most 32 kept)."""
    full = list(LANGUAGES)
    plan = {
        "animals/many": [full] * 40,                              # capped at 32
        "food/nine": [full] * 7 + [["fr"], ["ru", "bg"]],         # 9 with partial recordings: kept
        "household": [full] * 8 + [["bg", "es"]],                 # not in the preset's languages: 8
        "town/eight": [full] * 8,                                 # 8: left out
        "symbols/gaps": [full] * 7 + [[], "no_txt", "svg"],       # 7 usable (no recording / text / PNG)
        "clothes": [full] * 10,                                   # one level deep
        "clothes/hats": [full] * 9,                               # its own class
        "sports": [full] * 8 + [["da"]],                          # a language not in the preset: 8 usable
    }
    return names_only_tree(tmp_path_factory.mktemp("names"), plan)


def test_large_presets_select_classes_by_their_rule(selection_tree, tmp_path):
    for preset in ("tuxpaint-large", "tuxpaint-large-12x2"):
        cfg = large_cfg(selection_tree, tmp_path, preset)
        assert cfg.data.classes == [] and cfg.data.tuxpaint.languages == PRESET_LANGUAGES
        assert cfg.data.split == [0.5, 0.1, 0.4]
        ds = TuxPaint(cfg.data)
        assert ds.classes == ["animals/many", "clothes", "clothes/hats", "food/nine"]
        found = ds.discover()
        assert {c: len(s) for c, s in found.items()} == {"animals/many": 32, "clothes": 10,
                                                         "clothes/hats": 9, "food/nine": 9}
        assert found["animals/many"] == sorted(found["animals/many"])  # the first 32 by path
        assert found["animals/many"][-1].endswith("animals_many_31")
    assert build_config("tuxpaint-large").scenario.num_tasks == 6
    assert build_config("tuxpaint-large-12x2").scenario.num_tasks == 12
    # the rule is a setting; without partial languages the two partly recorded stamps go
    strict = TuxPaint(large_cfg(selection_tree, tmp_path, **{"data.tuxpaint.partial_languages": False}).data)
    assert strict.classes == ["animals/many", "clothes", "clothes/hats"]
    lower = TuxPaint(large_cfg(selection_tree, tmp_path, **{"data.tuxpaint.min_stamps": 7}).data)
    assert lower.classes == ["animals/many", "clothes", "clothes/hats", "food/nine", "household",
                             "sports", "symbols/gaps", "town/eight"]
    with pytest.raises(DataError, match="min_stamps=50.*'animals/many' with 40"):
        _ = TuxPaint(large_cfg(selection_tree, tmp_path, **{"data.tuxpaint.min_stamps": 50}).data).classes


def test_one_sample_per_recorded_language(selection_tree, tmp_path):
    ds = TuxPaint(large_cfg(selection_tree, tmp_path).data)
    records, sources = ds.index()
    by_stamp = defaultdict(list)
    for r in records:
        by_stamp[r["stamp"]].append(r)
    assert [r["language"] for r in by_stamp["food/nine/food_nine_07"]] == ["fr"]
    assert [r["language"] for r in by_stamp["food/nine/food_nine_08"]] == ["ru"]  # bg: not in the preset
    partial = {"food/nine/food_nine_07", "food/nine/food_nine_08"}
    assert all(len(rs) == 3 for s, rs in by_stamp.items() if s not in partial)
    for rs in by_stamp.values():  # domain = the language's position; one image row per stamp
        assert all(r["domain"] == PRESET_LANGUAGES.index(r["language"]) for r in rs)
        assert len({r["rows"]["image"] for r in rs}) == 1
    assert len(sources["image"]) == len(by_stamp) == 32 + 10 + 9 + 9
    assert len(records) == 3 * (32 + 10 + 9 + 7) + 1 + 1
    assert ds.classes == sorted({r["class_name"] for r in records})


def test_large_splits_by_stamp_and_tasks_from_the_seed(tmp_path):
    # 24 classes of 9 to 12 stamps: the preset's 6 x 4 and 12 x 2 streams
    plan = {f"group{c // 6}/class{c:02d}": [list(LANGUAGES)] * (9 + c % 4) for c in range(24)}
    root = names_only_tree(tmp_path / "stamps", plan)
    cfg = large_cfg(root, tmp_path)
    records, _ = TuxPaint(cfg.data).index()
    stamp_of = {r["index"]: r["stamp"] for r in records}
    labels = torch.tensor([r["label"] for r in records])
    domains = torch.tensor([r["domain"] for r in records])
    orders = []
    for seed in (0, 1):
        split = split_samples(records, cfg.data.split, seed)
        assert split_samples(records, cfg.data.split, seed)["test"].tolist() == split["test"].tolist()
        stamps = {k: {stamp_of[int(i)] for i in v} for k, v in split.items()}
        assert not (stamps["train"] & stamps["val"] or stamps["train"] & stamps["test"]
                    or stamps["val"] & stamps["test"])
        assert sum(len(v) for v in split.values()) == len(records)
        for k in ("train", "val", "test"):  # every class in every split
            assert len({r["class_name"] for r in records if r["index"] in set(split[k].tolist())}) == 24
        names = TuxPaint(cfg.data).classes
        for preset, n_tasks in (("tuxpaint-large", 6), ("tuxpaint-large-12x2", 12)):
            c = large_cfg(root, tmp_path, preset, **{"run.seed": seed})
            sc = build_scenario(c, labels, domains, split, names, PRESET_LANGUAGES)
            assert [len(t.classes) for t in sc.tasks] == [24 // n_tasks] * n_tasks
            assert sorted(sum((t.classes for t in sc.tasks), [])) == list(range(24))
            for t in sc.tasks:  # a stamp's samples are in one split of one task
                assert not ({stamp_of[int(i)] for i in t.train} & {stamp_of[int(i)] for i in t.test})
            if n_tasks == 6:
                orders.append(sc.class_order)
    assert orders[0] != orders[1]  # the class order from the seed, and the split too:
    assert split_samples(records, cfg.data.split, 0)["test"].tolist() != \
        split_samples(records, cfg.data.split, 1)["test"].tolist()


# -- the image shifts -----------------------------------------------------------------------------
def _picture(h=37, w=53) -> np.ndarray:
    """An asymmetric colour picture on white: every shift changes it."""
    a = np.full((h, w, 3), 255, np.uint8)
    a[5:20, 4:30] = (200, 30, 40)
    a[22:34, 30:50] = (20, 160, 60)
    a[8:12, 40:48] = (30, 40, 220)
    return a


def test_shifts_are_deterministic_and_differ():
    a = _picture()
    out = {name: shift_image(a, name, 32) for name in SHIFTS}
    for name, img in out.items():
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
        assert np.array_equal(img, shift_image(a.copy(), name, 32)), name  # same input, same pixels
    names = list(SHIFTS)
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            assert not np.array_equal(out[x], out[y]), (x, y)
    none = out["none"]
    assert np.array_equal(out["invert"], 255 - none)
    assert np.array_equal(out["rotate90"], np.rot90(none)) and np.array_equal(out["rotate180"], none[::-1, ::-1])
    assert np.array_equal(out["channel_swap"][..., 0], none[..., 2])
    g = out["grayscale"]
    assert np.array_equal(g[..., 0], g[..., 1]) and np.array_equal(g[..., 0], g[..., 2])
    e = out["edges"]
    assert e[0, 0, 0] == 255 and e.min() < 128  # white paper stays white, outlines are dark
    assert set(np.unique(out["silhouette"]).tolist()) == {0, 255} and out["silhouette"][0, 0, 0] == 255
    cells = out["pixelate"][::2, ::2]  # 16 x 16 cells of 2 x 2 pixels at 32
    assert np.array_equal(out["pixelate"], cells.repeat(2, axis=0).repeat(2, axis=1))
    with pytest.raises(ValueError, match="unknown image shift 'sepia'"):
        shift_image(a, "sepia", 32)


@pytest.fixture(scope="module")
def shift_tree(tmp_path_factory):
    """Two classes of 3 real stamps (PNG, text, short recordings) in the 6 languages."""
    root = tmp_path_factory.mktemp("shift")
    for cls in ("animals/mammals", "food/fruit"):
        for k in range(3):
            write_stamp(root / cls, f"{cls.replace('/', '_')}_{k}", cls, k, LANGUAGES, seconds=0.1)
    return root


def test_shift_preset_gives_each_domain_its_own_image(shift_tree, tmp_path):
    cfg = large_cfg(shift_tree, tmp_path, "tuxpaint-shift",
                    **{"data.classes": ["animals/mammals", "food/fruit"], "data.image_size": 24})
    assert cfg.scenario.kind == "domain" and cfg.data.modalities == ["image", "text", "speech"]
    ds = TuxPaint(cfg.data)
    assert ds.domains == SHIFT_DOMAINS
    records, sources = ds.index()
    assert len(records) == len(sources["image"]) == 2 * 3 * 6  # one image row per (stamp, domain)
    decode = ds.decoder("image")
    stamp = "animals/mammals/animals_mammals_1"
    rows = {r["domain"]: r["rows"]["image"] for r in records if r["stamp"] == stamp}
    images = {d: decode(sources["image"][row]) for d, row in rows.items()}
    assert [sources["image"][rows[d]] for d in range(6)] == [
        [f"{stamp}.png", s] for s in ("none", "edges", "blur", "silhouette", "pixelate", "rotate90")]
    for d, img in images.items():
        assert img.shape == (24, 24, 3)
        assert np.array_equal(img, decode(list(sources["image"][rows[d]]))), d  # same input and domain
        assert np.array_equal(img, TuxPaint(cfg.data).decoder("image")(sources["image"][rows[d]]))
    for d in range(6):
        for e in range(d + 1, 6):
            assert not np.array_equal(images[d], images[e]), (d, e)
    original = tuxpaint_image(shift_tree, stamp)
    assert np.array_equal(images[0], shift_image(original, "none", 24))


def tuxpaint_image(root, stamp):
    from mmcl.data.media import decode_png
    return decode_png(str(Path(root) / f"{stamp}.png"))


def test_shift_settings_are_checked(shift_tree, tmp_path):
    with pytest.raises(ConfigError, match="image_shifts' has 2 shift.*6 languages"):
        large_cfg(shift_tree, tmp_path, "tuxpaint-shift", **{"data.tuxpaint.image_shifts": ["none", "invert"]})
    with pytest.raises(ConfigError, match="unknown shift 'grayscal'. Did you mean 'grayscale'"):
        large_cfg(shift_tree, tmp_path, "tuxpaint-shift", **{"data.tuxpaint.languages": ["fr"],
                                                             "data.tuxpaint.image_shifts": ["grayscal"]})


class _Named:
    def __init__(self, name):
        self.name = name

    def identity(self):
        return self.name


def test_cache_key_holds_shifts_and_class_selection(shift_tree, tmp_path):
    enc = {m: _Named(m) for m in ("image", "text", "speech")}

    def folder(preset, **over):
        return cache_folder(large_cfg(shift_tree, tmp_path, preset, **over), enc)

    dil_with_image = folder("tuxpaint-dil", **{"data.modalities": ["image", "text", "speech"]})
    shift = folder("tuxpaint-shift")
    assert shift != dil_with_image
    other = ["none", "edges", "blur", "silhouette", "rotate90", "pixelate"]
    assert folder("tuxpaint-shift", **{"data.tuxpaint.image_shifts": other}) != shift
    assert folder("tuxpaint-shift", **{"data.image_size": 64}) != shift
    large = folder("tuxpaint-large")
    assert len({large, folder("tuxpaint-large", **{"data.tuxpaint.min_stamps": 8}),
                folder("tuxpaint-large", **{"data.tuxpaint.partial_languages": False}),
                folder("tuxpaint-large", **{"data.tuxpaint.max_stamps_per_class": 0})}) == 4
    assert folder("tuxpaint-large-12x2") == large  # the same data, other tasks
    # the settings added for these presets leave the older presets' cache keys as they were
    settings = TuxPaint(build_config("tuxpaint").data).settings()
    assert set(settings) == {"root", "classes", "languages", "image_size", "max_text_tokens",
                             "max_speech_seconds", "sample_rate", "max_stamps_per_class"}


# -- tiny end-to-end runs -------------------------------------------------------------------------
def test_tiny_runs_of_the_new_presets(fake_stamps, tmp_path):
    root, classes = fake_stamps
    o = tiny_overrides(root, [], tmp_path / "cache", tmp_path / "runs", **{
        "data.tuxpaint.min_stamps": 6, "scenario.num_tasks": 2, "train.epochs": 1})
    results = mmcl.run("tuxpaint-large", o, run_dir=tmp_path / "large")
    check_run_folder(tmp_path / "large", 2)
    assert sorted(sum((t["classes"] for t in results["tasks"]), [])) == sorted(classes)
    o = tiny_overrides(root, classes, tmp_path / "cache", tmp_path / "runs", **{
        "data.tuxpaint.languages": ["fr", "ru", "es"], "data.tuxpaint.image_shifts": ["none", "edges", "invert"],
        "scenario.num_tasks": 3, "train.epochs": 1})
    results = mmcl.run("tuxpaint-shift", o, run_dir=tmp_path / "shift")
    check_run_folder(tmp_path / "shift", 3)
    assert [t["domain"] for t in results["tasks"]] == ["fr", "ru+edges", "es+invert"]
    assert all(len(t["classes"]) == len(classes) for t in results["tasks"])


# -- the real stamps ----------------------------------------------------------------------------
@pytest.mark.skipif(not REAL_ROOT.is_dir(), reason="Tux Paint stamps not installed")
def test_real_sizes_of_the_new_presets(tmp_path):
    over = {"data.root": str(REAL_ROOT), "data.cache_dir": str(tmp_path)}
    ds = TuxPaint(build_config("tuxpaint-large", over).data)
    records, sources = ds.index()
    assert len(ds.classes) == 24 and len(sources["image"]) == 439 and len(records) == 1303
    assert "symbols/alphabets" in ds.classes and "town/cartoon" not in ds.classes  # 8 stamps: below 9
    per_class = Counter(r["class_name"] for r in {r["stamp"]: r for r in records}.values())
    assert min(per_class.values()) == 9 and max(per_class.values()) == 32
    split = split_samples(records, [0.5, 0.1, 0.4], 0)
    assert [len(split[k]) for k in ("train", "val", "test")] == [652, 126, 525]
    shift = TuxPaint(build_config("tuxpaint-shift", over).data)
    records, sources = shift.index()
    assert shift.section.languages == TUXPAINT_LANGUAGES and shift.domains == SHIFT_DOMAINS
    assert len(records) == len(sources["image"]) == 1710 and len({r["stamp"] for r in records}) == 285
    split = split_samples(records, [0.5, 0.1, 0.4], 0)
    assert [len(split[k]) for k in ("train", "val", "test")] == [864, 156, 690]
