"""Prompt methods (l2p, dualprompt, codaprompt): prompts in every modality's frozen encoder."""
from __future__ import annotations

import json

import pytest
import torch

import mmcl
from mmcl.config import build_config
from mmcl.engine import Experiment
from mmcl.io import load_checkpoint
from mmcl.model.prompts import inject, orthogonal_rows
from test_end_to_end import tiny_overrides

PROMPTS = ["l2p", "dualprompt", "codaprompt"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("prompts-cache")


def small(fake_stamps, cache, out, **extra):
    """Two tasks, all three modalities (CNN: additive prompts; LSTM and transformer: prepended)."""
    root, classes = fake_stamps
    return tiny_overrides(root, classes, cache, out, **{
        "data.tuxpaint.languages": ["fr", "es"], "scenario.num_tasks": 2, "train.batch_size": 6,
        "run.device": "cpu", "method.codaprompt.components": 3, **extra})


def experiment(fake_stamps, cache, tmp_path, method, **extra) -> Experiment:
    return Experiment(build_config("tuxpaint", small(fake_stamps, cache, tmp_path / "runs",
                                                     **{"method.name": method, **extra})))


def encoder_state(exp):
    return {k: v.clone() for k, v in exp.model.encoders.state_dict().items()}


@pytest.mark.parametrize("method", PROMPTS)
def test_prompt_method_runs_two_tasks_and_leaves_encoders_unchanged(method, fake_stamps, cache, tmp_path):
    exp = experiment(fake_stamps, cache, tmp_path, method, **{"run.name": method})
    before = encoder_state(exp)
    prompts_before = {k: v.clone() for k, v in exp.model.prompter.state_dict().items()}
    results = exp.run()
    after = exp.model.encoders.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in exp.model.encoders.parameters())
    # the prompts did train
    changed = [k for k, v in exp.model.prompter.state_dict().items() if not torch.equal(v, prompts_before[k])]
    assert changed
    R = results["accuracy_matrix"]
    assert len(R) == 2 and all(0.0 <= a <= 1.0 for a in (R[0][0], R[1][0], R[1][1]))
    run_dir = exp.run_dir
    tensors, _ = load_checkpoint(run_dir / "checkpoints" / "final")
    assert any(k.startswith("model.prompter.") for k in tensors)
    assert not any(k.startswith("model.adapters.") for k in tensors)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = {"l2p": {"cls", "key"}, "dualprompt": {"cls", "key"}, "codaprompt": {"cls"}}[method]
    assert set(lines[1]["train_losses"]) == expected


def test_prompts_enter_every_kind_of_encoder(fake_stamps, cache, tmp_path):
    exp = experiment(fake_stamps, cache, tmp_path, "l2p")
    batch = exp.method.fetch(torch.arange(4))
    for m, enc in exp.model.encoders.items():
        tokens, mask = batch[m]["tokens"], batch[m].get("mask")
        plain, _ = enc.forward_block(1, tokens, mask)
        d = tokens.shape[-1]
        zero = torch.zeros(4, 3, d)
        some = torch.randn(4, 3, d, generator=torch.Generator().manual_seed(0))
        out_some, mask_some, carried = inject(enc, 1, some, tokens, mask)
        assert out_some.shape == plain.shape and carried == 0  # removed again after the block
        assert not torch.allclose(out_some, plain, atol=1e-5), m  # the prompt steers the block
        if enc.prompt_mode == "add":
            out_zero, _, _ = inject(enc, 1, zero, tokens, mask)
            assert torch.allclose(out_zero, plain, atol=1e-6)  # zero shift = no prompt
        else:
            kept, kmask, carried = inject(enc, 1, some, tokens, mask, persist=True)
            assert carried == 3 and kept.shape[1] == tokens.shape[1] + 3
            if mask is not None:
                assert kmask[:, :3].all() and torch.equal(kmask[:, 3:], mask)
    assert {enc.prompt_mode for enc in exp.model.encoders.values()} == {"add", "prepend"}


def test_l2p_chooses_the_prompts_whose_keys_match_the_query(fake_stamps, cache, tmp_path):
    exp = experiment(fake_stamps, cache, tmp_path, "l2p", **{"method.l2p.pool": 6, "method.l2p.top_k": 2})
    pr = exp.model.prompter
    m = pr.modalities[0]
    dq = pr.query_dims[m]
    q = torch.randn(3, dq, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pr.keys[m].copy_(torch.randn(6, dq, generator=torch.Generator().manual_seed(2)))
        pr.keys[m][4] = q[0] * 5  # key 4 points exactly at sample 0's query, key 1 close to it
        pr.keys[m][1] = q[0] + 0.05 * pr.keys[m][1]
    chosen = pr.choose(m, q)
    assert set(chosen[0].tolist()) == {1, 4}
    sims = torch.nn.functional.cosine_similarity(q.unsqueeze(1), pr.keys[m].unsqueeze(0), dim=-1)
    assert torch.equal(chosen.sort(1).values, sims.topk(2, dim=1).indices.sort(1).values)
    # the key term is positive while the chosen keys are away from the query, zero at it
    others = [x for x in pr.modalities if x != m]
    away = {x: torch.randn(1, pr.query_dims[x]) for x in others}
    assert float(exp.method.key_loss({m: q[:1]}).detach()) > 0
    with torch.no_grad():
        pr.keys[m].copy_(q[0].expand(6, -1))
        for x in others:
            pr.keys[x].copy_(away[x].expand(pr.pool, -1) * 3)
    assert abs(float(exp.method.key_loss({m: q[:1], **away}))) < 1e-5


def test_query_table_equals_a_frozen_pass_without_prompts(fake_stamps, cache, tmp_path):
    exp = experiment(fake_stamps, cache, tmp_path, "codaprompt")
    idx = torch.tensor([3, 0, 7])
    batch = exp.method.fetch(idx)
    from_table = exp.method.queries(batch)
    computed = exp.method.queries({k: v for k, v in batch.items() if k != "index"})
    for m in from_table:
        assert torch.allclose(from_table[m], computed[m], atol=1e-5)


def test_dualprompt_trains_its_task_prompt_and_matches_keys_at_test(fake_stamps, cache, tmp_path):
    exp = experiment(fake_stamps, cache, tmp_path, "dualprompt", **{"train.epochs": 1})
    exp.train_task(0)
    exp.method.begin_task(1)
    pr = exp.model.prompter
    e_task0 = {k: v[0].detach().clone() for k, v in pr.e.items()}
    trainable = {id(p) for p in exp.method.trainable_parameters()}
    assert all(id(v[1]) in trainable and id(v[0]) not in trainable for v in pr.e.values())
    idx = exp.scenario.tasks[1].train[:6]
    pr.train()
    pr(exp.method.fetch(idx))
    assert all((s == 1).all() for s in pr.last_selection.values())  # training: the task's own prompt
    m = pr.modalities[0]
    q = exp.method.queries({"index": idx})[m]
    with torch.no_grad():  # make task 0's key the query of the first sample
        pr.keys[m][0].copy_(q[0])
        pr.keys[m][1].copy_(-q[0])
    pr.eval()
    pr(exp.method.fetch(idx))
    assert int(pr.last_selection[m][0]) == 0
    exp.train_task(1)
    assert all(torch.equal(pr.e[k][0], e_task0[k]) for k in e_task0)  # old E-prompts frozen


def test_codaprompt_freezes_old_components_and_starts_new_ones_orthogonal(fake_stamps, cache, tmp_path):
    exp = experiment(fake_stamps, cache, tmp_path, "codaprompt", **{"train.epochs": 1})
    exp.train_task(0)
    pr = exp.model.prompter
    old = {k: [x[0].detach().clone() for x in (pr.p[k], pr.k[k], pr.a[k])] for k in pr.p}
    exp.method.begin_task(1)
    for k in pr.k:
        new, prev = pr.k[k][1].detach(), pr.k[k][0].detach()
        assert (new @ prev.t()).abs().max() < 1e-4  # orthogonal to the trained task-0 keys
    exp.train_task(1)
    for k, (p0, k0, a0) in old.items():
        assert torch.equal(pr.p[k][0], p0) and torch.equal(pr.k[k][0], k0) and torch.equal(pr.a[k][0], a0)
    # the weights of a sample's prompt span both tasks' components now
    q = exp.method.queries({"index": exp.scenario.tasks[1].test[:2]})
    key = next(iter(pr.k))
    assert pr.weights(key, q[key.rsplit("_", 1)[0]]).shape == (2, 2 * pr.c)


def test_orthogonal_rows():
    old = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    new = orthogonal_rows(torch.randn(4, 8), old)
    assert (new @ old.t()).abs().max() < 1e-5
    assert torch.allclose(new @ new.t(), torch.eye(4), atol=1e-5)
    too_many = orthogonal_rows(torch.randn(5, 4), old[:, :4])  # only one row can be orthogonal
    assert torch.allclose(too_many.norm(dim=1), torch.ones(5))


def test_prompt_methods_refuse_adapters(fake_stamps, cache, tmp_path):
    with pytest.raises(ValueError, match="model.adapters=false"):
        experiment(fake_stamps, cache, tmp_path, "l2p", **{"model.adapters": True})


@pytest.mark.parametrize("method", ["l2p", "dualprompt"])
def test_prompt_method_runs_domain_incremental(method, fake_stamps, cache, tmp_path):
    o = small(fake_stamps, cache, tmp_path / "runs", **{"method.name": method, "train.epochs": 1})
    results = mmcl.run("tuxpaint-dil", o, run_dir=tmp_path / method)
    assert results["scenario"] == "domain"
    assert len(results["accuracy_matrix"]) == 2
