"""Missing modalities are explicit masks, end to end (issue 17): manifests with empty cells and
missing files, masks reaching the adapters, the fusion and the losses (a masked modality's
content changes no output), modality dropout, the robustness table, weak encoders."""
from __future__ import annotations

import json

import pytest
import torch

import mmcl
from mmcl import evaluation, losses
from mmcl.config import build_config
from mmcl.data.batches import drop_modalities, presence
from mmcl.data.errors import DataError
from mmcl.engine import Experiment
from mmcl.model.adapter import CrossModalityAdapter
from mmcl.results import robustness_table
from test_manifest import overrides, write_csv, write_tree

MODS = ("image", "text", "speech")


def holey_rows(root, n_per_class=6):
    """The manifest tree with a share of the rows missing each modality (an empty cell): row i
    misses image when i % 5 == 1, text when i % 5 == 2, speech when i % 5 == 3."""
    rows = write_tree(root, n_per_class=n_per_class, domains=("a",))
    for i, r in enumerate(rows):
        gap = {1: "image", 2: "text", 3: "speech"}.get(i % 5)
        if gap:
            r[gap] = ""
    return rows


@pytest.fixture(scope="module")
def holey(tmp_path_factory):
    """(manifest, tmp folder, rows): 24 samples of 4 classes, a fifth missing each modality."""
    tmp = tmp_path_factory.mktemp("holey")
    rows = holey_rows(tmp / "data")
    return write_csv(tmp / "data" / "s.csv", rows), tmp, rows


def experiment(holey, **extra):
    manifest, tmp, _ = holey
    return Experiment(build_config("manifest", overrides(manifest, tmp, **extra)))


# -- the data: masks from empty cells and missing files ----------------------------------------
def test_empty_cells_are_masked_modalities_carried_by_every_batch(holey):
    exp = experiment(holey)
    _, _, rows = holey
    assert len(exp.data) == len(rows)  # nothing dropped
    for k, m in enumerate(MODS, 1):
        want = torch.tensor([i % 5 != k for i in range(len(rows))])
        assert torch.equal(exp.data.present[m], want), m
    b = exp.data.batch(torch.arange(len(rows)))
    assert all(torch.equal(b[m]["present"], exp.data.present[m]) for m in MODS)
    assert exp.data.info["empty_cells"] == {m: sum(1 for i in range(len(rows)) if i % 5 == k)
                                            for k, m in enumerate(MODS, 1)}
    # no cached row stands for a missing cell: each modality holds one row per sample that has it
    for m in MODS:
        assert exp.data.num_rows(m) == int(exp.data.present[m].sum())


def test_a_row_without_any_modality_is_an_error_naming_it(tmp_path):
    rows = write_tree(tmp_path / "data", n_per_class=2, domains=("a",))
    for m in MODS:
        rows[3][m] = ""
    manifest = write_csv(tmp_path / "data" / "s.csv", rows)
    with pytest.raises(DataError, match=r"row 4: no modality \(image, text, speech\).*at least one"):
        Experiment(build_config("manifest", overrides(manifest, tmp_path)))


def test_on_missing_mask_keeps_a_sample_whose_file_is_missing(tmp_path):
    rows = write_tree(tmp_path / "data", n_per_class=3, domains=("a",))
    manifest = write_csv(tmp_path / "data" / "s.csv", rows)
    (tmp_path / "data" / rows[4]["speech"]).unlink()
    with pytest.raises(DataError, match=r"row 5: speech file .* is missing.*on_missing=mask"):
        Experiment(build_config("manifest", overrides(manifest, tmp_path)))
    skip = Experiment(build_config("manifest", overrides(manifest, tmp_path, **{"data.on_missing": "skip"})))
    assert len(skip.data) == len(rows) - 1
    mask = Experiment(build_config("manifest", overrides(manifest, tmp_path, **{"data.on_missing": "mask"})))
    assert len(mask.data) == len(rows)
    assert mask.data.present["speech"].tolist() == [i != 4 for i in range(len(rows))]
    assert mask.data.present["image"].all() and mask.data.info["masked_files"][0].startswith("row 5: speech")


def test_on_missing_mask_keeps_an_unreadable_file_masked(tmp_path):
    rows = write_tree(tmp_path / "data", n_per_class=3, domains=("a",))
    (tmp_path / "data" / rows[2]["image"]).write_bytes(b"not an image at all")
    manifest = write_csv(tmp_path / "data" / "s.csv", rows)
    exp = Experiment(build_config("manifest", overrides(manifest, tmp_path, **{"data.on_missing": "mask"})))
    assert exp.data.present["image"].tolist() == [i != 2 for i in range(len(rows))]
    assert not exp.data.excluded and "cannot decode image" in exp.data.unreadable[0]
    assert sum(len(v) for v in exp.data.split(0).values()) == len(rows)  # the sample stays in its split


def test_tuxpaint_with_on_missing_mask_keeps_a_stamp_lacking_a_recording(fake_stamps, tmp_path):
    from test_end_to_end import tiny_overrides
    root, classes = fake_stamps
    o = tiny_overrides(root, classes, tmp_path / "cache", tmp_path / "runs")
    plain = Experiment(build_config("tuxpaint", o))
    masked = Experiment(build_config("tuxpaint", {**o, "data.on_missing": "mask"}))
    stamp = [i for i, r in enumerate(masked.data.records) if r["stamp"].endswith("missing_lang")]
    assert not any(r["stamp"].endswith("missing_lang") for r in plain.data.records)
    assert len(stamp) == 6 and len(masked.data) == len(plain.data) + 6
    gone = [i for i in stamp if masked.data.records[i]["language"] == "es"]  # (its last language has no ogg)
    assert masked.data.present["speech"].logical_not().nonzero().flatten().tolist() == gone
    assert masked.data.present["image"].all() and masked.data.present["text"].all()
    assert masked.data.folder != plain.data.folder  # another index, another cache


# -- the model: a masked modality's content changes no output ----------------------------------
def fill(batch, rows_of, value):
    """A copy of the batch whose masked rows' tokens hold ``value`` (a tensor maker)."""
    out = {k: ({kk: vv.clone() if isinstance(vv, torch.Tensor) else vv for kk, vv in v.items()}
               if isinstance(v, dict) else v) for k, v in batch.items()}
    for m, rows in rows_of.items():
        t = out[m]["tokens"]
        t[rows] = value(t[rows].shape)
    return out


@pytest.mark.parametrize("expert", ["cross_attention", "channel_token_map"])
def test_a_masked_modalitys_content_changes_no_output(holey, expert):
    exp = experiment(holey, **{"adapter.expert": expert, "model.length_chunks": 1})
    model, method = exp.model, exp.method
    method.begin_task(0)
    idx = torch.arange(len(exp.data))
    batch = method.fetch(idx)
    absent = {m: torch.nonzero(~batch[m]["present"]).flatten() for m in MODS}
    assert all(len(r) for r in absent.values())
    g = torch.Generator().manual_seed(0)
    zeros = fill(batch, absent, torch.zeros)
    garbage = fill(batch, absent, lambda s: 100 * torch.randn(s, generator=g))
    for train in (False, True):
        model.train(train)
        noise = model.draw_routing_noise(len(idx)) if train else None
        a, b = model(zeros, noise=noise), model(garbage, noise=noise)
        assert torch.equal(a.logits, b.logits) and torch.equal(a.z_joint, b.z_joint)
        for m in MODS:
            keep = batch[m]["present"]
            assert torch.equal(a.z_mod[m][keep], b.z_mod[m][keep]) and torch.isnan(a.z_mod[m][~keep]).all()
        assert torch.equal(a.stats, b.stats) and float(a.balance.detach()) == float(b.balance.detach())
        assert all(torch.equal(u, v) for u, v in zip(a.usage, b.usage)) and a.routings == b.routings
        # the masked pairs are not routed: each block routes the present (sample, modality) pairs only
        assert a.routings == [int(sum(batch[m]["present"].sum() for m in MODS))] * len(model.adapters)
        pres = [a.present[m] for m in MODS]
        for kind in losses.ALIGN_KINDS:
            la = losses.alignment([a.z_mod[m] for m in MODS], a.z_joint, kind, present=pres)
            lb = losses.alignment([b.z_mod[m] for m in MODS], b.z_joint, kind, present=pres)
            assert torch.isfinite(la) and torch.equal(la, lb), kind
    # the check has teeth: unmasked, the same garbage changes the outputs
    model.eval()
    for m in MODS:
        zeros[m]["present"][:] = True
        garbage[m]["present"][:] = True
    assert not torch.equal(model(zeros).logits, model(garbage).logits)


def test_a_masked_modality_changes_nothing_in_a_model_without_adapters(holey):
    exp = experiment(holey, **{"method.name": "er", "model.length_chunks": 1})
    exp.method.begin_task(0)
    batch = exp.method.fetch(torch.arange(len(exp.data)))
    absent = {m: torch.nonzero(~batch[m]["present"]).flatten() for m in MODS}
    a = exp.model(fill(batch, absent, torch.zeros))
    b = exp.model(fill(batch, absent, lambda s: 50 * torch.rand(s) - 25))
    assert torch.equal(a.logits, b.logits) and torch.equal(a.z_joint, b.z_joint)


def test_fusion_averages_the_present_modalities_into_the_missing_slots(holey):
    exp = experiment(holey)
    model = exp.model
    z = {m: torch.randn(3, model.classifier.dim) for m in MODS}
    present = {"image": torch.tensor([True, True, False]), "text": torch.tensor([True, False, False]),
               "speech": torch.tensor([True, True, True])}
    joint, z_out = model.fuse(z, present)
    mean1 = (z["image"][1] + z["speech"][1]) / 2
    want = model.fusion(torch.stack([
        torch.cat([z["image"][0], z["text"][0], z["speech"][0]]),
        torch.cat([z["image"][1], mean1, z["speech"][1]]),
        torch.cat([z["speech"][2]] * 3)]))
    torch.testing.assert_close(joint, want)
    assert torch.isnan(z_out["text"][1:]).all() and not torch.isnan(z_out["text"][0]).any()
    with pytest.raises(ValueError, match=r"sample\(s\) 7 have no modality"):
        model.fuse(z, {m: torch.tensor([True, True, False]) for m in MODS}, torch.tensor([5, 6, 7]))


def test_the_adapter_leaves_masked_modalities_out_of_context_and_gates():
    torch.manual_seed(0)
    widths = {"a": 6, "b": 5, "c": 4}
    ad = CrossModalityAdapter(widths, num_experts=4, top_k=2, dim=8, context_tokens=3, gate_init_std=0.5).eval()
    for lin in ad.up.values():
        torch.nn.init.normal_(lin.weight)
    B = 5
    tokens = {m: torch.randn(B, 7, w) for m, w in widths.items()}
    masks = {m: None for m in widths}
    present = {"a": torch.tensor([True, True, True, False, True]), "b": torch.tensor([True, False, True, True, False]),
               "c": torch.tensor([False, False, True, True, False])}
    other = {m: t.clone() for m, t in tokens.items()}
    for m in widths:
        other[m][~present[m]] = 1e3 * torch.randn_like(other[m][~present[m]])
    for pool in (False, True):
        x, rx = ad(tokens, masks, pool=pool, present=present)
        y, ry = ad(other, masks, pool=pool, present=present)
        for m in widths:
            assert torch.equal(x[m][present[m]], y[m][present[m]])
        assert torch.equal(rx.stats, ry.stats) and rx.routings == int(sum(p.sum() for p in present.values()))
    # row 4 has only "a": it takes its own tokens as context, as a one-modality adapter would
    alone = CrossModalityAdapter({"a": 6}, num_experts=4, top_k=2, dim=8, context_tokens=3).eval()
    alone.load_state_dict({k: v for k, v in ad.state_dict().items()
                           if not any(k.startswith(f"{p}.{m}.") for p in ("down", "up", "gate", "gate_noise")
                                      for m in "bc")})
    solo, _ = alone({"a": tokens["a"][4:5]}, {"a": None})
    mixed, _ = ad(tokens, masks, present=present)
    torch.testing.assert_close(mixed["a"][4:5], solo["a"])


def test_alignment_over_complete_masks_is_the_plain_alignment():
    g = torch.Generator().manual_seed(1)
    z = [torch.randn(6, 4, generator=g) for _ in range(3)]
    joint = torch.randn(6, 4, generator=g)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    full = [torch.ones(6, dtype=torch.bool)] * 3
    for kind in losses.ALIGN_KINDS:
        for gr in (None, groups):
            torch.testing.assert_close(losses.alignment(z, joint, kind, groups=gr, present=full),
                                       losses.alignment(z, joint, kind, groups=gr))
    # a masked pair is neither a query nor anything else: a NaN there changes nothing
    present = [torch.tensor([True, False, True, True, True, True])] * 3
    bad = [t.clone() for t in z]
    for t in bad:
        t[1] = float("nan")
    for kind in losses.ALIGN_KINDS:
        assert torch.equal(losses.alignment(bad, joint, kind, present=present),
                           losses.alignment(z, joint, kind, present=present))


# -- modality dropout --------------------------------------------------------------------------
def test_modality_dropout_masks_by_probability_and_keeps_one_modality(holey):
    exp = experiment(holey, **{"train.modality_dropout.image": 1.0, "train.modality_dropout.text": 0.5})
    idx = torch.arange(len(exp.data)).repeat(20)
    keep = exp.method.modality_dropout(idx)
    has = exp.data.present_matrix(idx)
    assert (keep & has).any(1).all()  # every row keeps a modality it has
    # image (p = 1) stays only where it is the row's last modality left
    kept_image = keep[:, 0] & has[:, 0]
    assert not (kept_image & (keep[:, 1:] & has[:, 1:]).any(1)).any()
    assert keep[:, 2].all()  # speech: p = 0
    share = float(keep[:, 1][has[:, 1] & has[:, 2]].float().mean())
    assert 0.4 < share < 0.6
    assert experiment(holey).method.modality_dropout(idx) is None  # nothing set: nothing drawn
    exp.method.begin_task(0)
    out, _ = exp.method.forward_batch(idx[:8])  # the training forward applies it
    assert out.present is not None and int(out.present["image"].sum()) < int(exp.data.present["image"][:8].sum())


# -- robustness evaluation ---------------------------------------------------------------------
def test_robustness_counts_the_samples_left_with_a_modality():
    present = {"a": torch.tensor([True, True, False, True]), "b": torch.tensor([True, False, True, True])}
    calls = []

    def score(idx, absent):
        calls.append((idx.tolist(), list(absent)))
        return 0.5

    out = evaluation.modality_robustness(score, present, torch.tensor([0, 1, 2]), ["a", "b"])
    assert out["samples"] == 3 and out["accuracy"] == 0.5
    assert out["without"] == {"a": {"accuracy": 0.5, "samples": 2}, "b": {"accuracy": 0.5, "samples": 2}}
    assert calls[1:] == [([0, 2], ["a"]), ([0, 1], ["b"]), ([0, 1], ["b"]), ([0, 2], ["a"])]
    one = evaluation.modality_robustness(score, {"a": torch.ones(2, dtype=torch.bool)}, torch.arange(2), ["a"])
    assert one["without"]["a"] == {"accuracy": None, "samples": 0} and one["alone"]["a"]["samples"] == 2


def test_drop_modalities_masks_every_row():
    batch = {"a": {"tokens": torch.zeros(3, 2, 1), "present": torch.tensor([True, False, True])},
             "b": {"tokens": torch.zeros(3, 2, 1)}}
    assert presence(batch, ["a", "b"])["b"].all()
    drop_modalities(batch, ["b"])
    assert not batch["b"]["present"].any()
    assert presence({"a": {"tokens": torch.zeros(2, 1)}}, ["a"]) is None


@pytest.mark.parametrize("method", ["cma", "simplecil", "l2p"])
def test_training_and_evaluation_with_holes_write_the_robustness_table(holey, tmp_path, method):
    manifest, tmp, _ = holey
    o = overrides(manifest, tmp, **{"method.name": method, "train.modality_dropout.speech": 0.3,
                                    "run.save_checkpoint": False, "report.tsne_after": []})
    results = mmcl.run("manifest", o, run_dir=tmp_path / "run")
    rob = results["modality_robustness"]
    assert rob["samples"] == sum(results["task_sizes"])
    assert set(rob["without"]) == set(rob["alone"]) == set(MODS)
    for m in MODS:
        for cond in ("without", "alone"):
            c = rob[cond][m]
            assert 0 < c["samples"] <= rob["samples"] and 0.0 <= c["accuracy"] <= 1.0
    assert rob["alone"]["image"]["samples"] < rob["samples"]  # the test samples missing an image don't count
    assert json.loads((tmp_path / "run" / "results.json").read_text())["modality_robustness"] == rob
    md = (tmp_path / "run" / "report.md").read_text()
    assert "## Modality robustness" in md and "| speech |" in md


def test_robustness_table_of_the_report():
    rob = {"samples": 10, "accuracy": 0.6,
           "without": {"image": {"accuracy": 0.4, "samples": 10}, "text": {"accuracy": 0.5, "samples": 9}},
           "alone": {"image": {"accuracy": 0.3, "samples": 8}, "text": {"accuracy": 0.2, "samples": 10}}}
    header, rows = robustness_table({"modality_robustness": rob})
    assert header[:3] == ["modality", "accuracy without it", "accuracy with it alone"]
    assert rows[0][1] == "60.00%" and rows[1] == ["image", "40.00%", "30.00% (8 samples)", ""]
    assert rows[2][1] == "50.00% (9 samples)"
    assert robustness_table({}) is None


# -- weak encoders -----------------------------------------------------------------------------
@pytest.mark.parametrize("slot", ["image", "text", "speech"])
def test_random_weights_keep_the_architecture_and_change_the_identity(slot):
    from mmcl.encoders import build_encoder
    o = {f"encoders.{m}.source": "random" for m in MODS} | {"encoders.text.width": 16, "encoders.speech.width": 16,
                                                             "data.image_size": 32}
    a = build_encoder(slot, build_config("tuxpaint", o))
    b = build_encoder(slot, build_config("tuxpaint", {**o, f"encoders.{slot}.random_weights": True}))
    c = build_encoder(slot, build_config("tuxpaint", {**o, f"encoders.{slot}.random_weights": True}))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)
    assert any(not torch.equal(sa[k], sb[k]) for k in sa)
    assert all(torch.equal(sb[k], v) for k, v in c.state_dict().items())  # the same weak encoder every time
    assert a.identity() != b.identity() and not any(p.requires_grad for p in b.parameters())
