"""Length-sorted chunking (model.length_chunks): the same results as one padded batch."""
from __future__ import annotations

import itertools

import pytest
import torch

from mmcl.config import build_config
from mmcl.encoders.base import cut_sizes, valid_lengths
from mmcl.engine import Experiment
from mmcl.model.mmencoder import length_chunks
from test_end_to_end import tiny_overrides


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("chunks-cache")


def ragged_batch(method, rows: int = 12):
    """A training batch whose speech (and text) rows have very different lengths, with
    garbage in the padding: only the masks say what is real."""
    idx = torch.as_tensor(method.scenario.tasks[0].train[:rows])
    batch = method.fetch(idx)
    g = torch.Generator().manual_seed(3)
    for m in ("speech", "text"):
        x = batch[m]
        n = x["tokens"].shape[1]
        lengths = torch.randint(1, n + 1, (rows,), generator=g)
        lengths[0] = n
        x["mask"] = torch.arange(n)[None, :] < lengths[:, None]
        x["mask"][1, :2] = False  # one row padded on the left too: trimming must keep its end
        x["mask"][1, 2:4] = True
        pad = ~x["mask"]
        x["tokens"] = torch.where(pad[..., None], 100 * torch.randn(x["tokens"].shape, generator=g), x["tokens"])
    return batch


def experiment(fake_stamps, cache, tmp_path, **extra):
    root, classes = fake_stamps
    cfg = build_config("tuxpaint", tiny_overrides(root, classes, cache, tmp_path / "runs", **{
        "data.tuxpaint.languages": ["fr", "es"], "scenario.num_tasks": 2, "run.device": "cpu",
        "model.length_chunks": 1, **extra}))
    exp = Experiment(cfg)
    exp.method.begin_task(0)
    with torch.no_grad():  # non-zero up projections and gates, as after some training
        for a in exp.model.adapters:
            for m in a.modalities:
                a.up[m].weight.normal_(std=0.5)
                a.gate[m].weight.normal_()
                a.gate_noise[m].weight.normal_(std=0.1)
    return exp


def test_chunks_sort_by_the_most_padded_modality_and_trim_each_group(fake_stamps, cache, tmp_path):
    exp = experiment(fake_stamps, cache, tmp_path)
    batch = ragged_batch(exp.method)
    parts = length_chunks(batch, exp.model.modalities, 3)
    assert parts is not None and 2 <= len(parts) <= 3
    rows = torch.cat([idx for idx, _ in parts])
    assert sorted(rows.tolist()) == list(range(12))
    lengths = valid_lengths(batch["speech"]["mask"])
    assert lengths[rows].tolist() == sorted(lengths.tolist(), reverse=True)  # longest first
    for idx, sub in parts:
        for m in ("speech", "text"):
            mask = sub[m]["mask"]
            assert sub[m]["tokens"].shape[1] == mask.shape[1] == int(valid_lengths(batch[m]["mask"][idx]).max())
            assert int(mask.sum()) == int(batch[m]["mask"][idx].sum())  # no valid token dropped
            assert torch.equal(sub[m]["tokens"][mask], batch[m]["tokens"][idx][:, :mask.shape[1]][mask])
        assert torch.equal(sub["image"]["tokens"], batch["image"]["tokens"][idx])
        assert torch.equal(sub["label"], batch["label"][idx])
    assert parts[-1][1]["speech"]["tokens"].shape[1] < batch["speech"]["tokens"].shape[1]
    # Nothing to gain: k = 1, or no padding anywhere.
    assert length_chunks(batch, exp.model.modalities, 1) is None
    full = {k: dict(v) if isinstance(v, dict) else v for k, v in batch.items()}
    for m in ("speech", "text"):
        full[m]["mask"] = torch.ones_like(full[m]["mask"])
    assert length_chunks(full, exp.model.modalities, 3) is None


@pytest.mark.parametrize("expert", ["cross_attention", "channel_token_map"])
def test_chunked_forward_and_gradients_equal_the_padded_batch(expert, fake_stamps, cache, tmp_path):
    exp = experiment(fake_stamps, cache, tmp_path, **{"adapter.expert": expert})
    model, batch = exp.model, ragged_batch(exp.method)
    assert length_chunks(batch, model.modalities, 4) is not None

    model.eval()
    with torch.no_grad():
        model.length_chunks = 1
        one = model(batch)
        model.length_chunks = 4
        four = model(batch)
    torch.testing.assert_close(four.logits, one.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(four.z_joint, one.z_joint, atol=1e-5, rtol=1e-4)

    model.train()  # noisy routing: the noise is drawn once for the batch, so the same choices
    params = [p for p in model.parameters() if p.requires_grad]
    results = []
    for k in (1, 4):
        model.length_chunks = k
        for a in model.adapters:
            a.reset_usage()
        torch.manual_seed(11)
        out = model(batch)
        loss = out.logits.square().mean() + out.z_joint.square().mean() + out.balance
        grads = torch.autograd.grad(loss, params, allow_unused=True)  # unchosen experts
        results.append((out, grads, [a.usage_count.clone() for a in model.adapters]))
        after = torch.randn(1)  # the RNG advanced by the same draws
        results[-1] += (after,)
    (o1, g1, u1, r1), (o4, g4, u4, r4) = results
    assert torch.equal(r1, r4)
    torch.testing.assert_close(o4.logits, o1.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(o4.balance, o1.balance, atol=1e-5, rtol=1e-4)
    assert [c.tolist() for c in o4.usage] == [c.tolist() for c in o1.usage]
    assert o4.routings == o1.routings
    for a, b in zip(u1, u4):
        assert torch.equal(a, b) and a.sum() > 0
    assert sum(g is not None for g in g1) > len(params) // 2
    for a, b in zip(g1, g4):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-3)


def test_cut_sizes_minimise_padded_work():
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        n = int(torch.randint(1, 9, (1,), generator=g))
        lengths = sorted(torch.randint(1, 50, (n,), generator=g).tolist(), reverse=True)
        for k in (1, 2, 3):
            sizes = cut_sizes(lengths, k)
            assert sum(sizes) == n and 1 <= len(sizes) <= k and min(sizes) >= 1

            def work(sz):
                starts = [sum(sz[:i]) for i in range(len(sz))]
                return sum(s * lengths[a] for s, a in zip(sz, starts))

            best = min(work([b - a for a, b in zip((0,) + cuts, cuts + (n,))])
                       for c in range(min(k, n)) for cuts in itertools.combinations(range(1, n), c))
            assert work(sizes) == best


def test_encoder_blocks_run_in_length_groups_equal_one_padded_call(fake_stamps, cache, tmp_path):
    exp = experiment(fake_stamps, cache, tmp_path)
    batch = ragged_batch(exp.method)
    for m in ("speech", "text"):  # GE2E LSTM and a BERT-style transformer
        enc, x = exp.model.encoders[m], batch[m]
        tokens = x["tokens"].clone().requires_grad_(True)
        one, mask = enc.forward_block(1, tokens, x["mask"])
        grouped, mask2 = enc.run_block(1, tokens, x["mask"], 3)
        assert mask2 is x["mask"] and grouped.shape == one.shape
        valid = x["mask"][..., None]
        torch.testing.assert_close(grouped * valid, one * valid, atol=1e-5, rtol=1e-4)
        shortest = int(valid_lengths(x["mask"]).argmin())
        assert not grouped[shortest, -1].any() and one[shortest, -1].any()  # padding skipped
        g1, = torch.autograd.grad((one * valid).square().sum(), tokens)
        g3, = torch.autograd.grad((grouped * valid).square().sum(), tokens)
        torch.testing.assert_close(g3, g1, atol=1e-5, rtol=1e-4)
