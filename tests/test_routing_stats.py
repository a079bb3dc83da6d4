"""Routing diagnostics on constructed count tables, and the routing options of cma."""
from __future__ import annotations

import math

import pytest
import torch

from mmcl import losses, routing_stats


def test_chi2_survival_matches_tabulated_critical_values():
    assert routing_stats.chi2_sf(3.841, 1) == pytest.approx(0.05, abs=1e-4)
    assert routing_stats.chi2_sf(16.919, 9) == pytest.approx(0.05, abs=1e-4)
    assert routing_stats.chi2_sf(27.877, 9) == pytest.approx(0.001, abs=2e-5)
    assert routing_stats.chi2_sf(0.0, 4) == 1.0


def test_uniform_counts_are_not_rejected_and_skewed_ones_are():
    gen = torch.Generator().manual_seed(0)
    uniform = torch.bincount(torch.randint(0, 10, (4000,), generator=gen), minlength=10)
    assert routing_stats.uniformity(uniform)["p"] > 0.001
    skewed = torch.tensor([900, 700, 400, 400, 400, 300, 300, 300, 200, 100])
    u = routing_stats.uniformity(skewed)
    assert u["p"] < 1e-6 and u["df"] == 9
    # the statistic by hand
    e = skewed.sum().item() / 10
    assert u["chi2"] == pytest.approx(float(((skewed - e) ** 2 / e).sum()))
    assert math.isnan(routing_stats.uniformity(torch.zeros(10))["p"])


def test_class_dependent_routing_is_detected_and_independent_routing_is_not():
    gen = torch.Generator().manual_seed(1)
    independent = torch.zeros(4, 10)
    for c in range(4):
        independent[c] = torch.bincount(torch.randint(0, 10, (600,), generator=gen), minlength=10)
    d = routing_stats.class_dependence(independent)
    assert d["p"] > 0.001 and d["df"] == 27
    assert d["mi"] < 3 * d["mi_random"]  # near the value expected without dependence
    dependent = torch.zeros(4, 10)
    for c in range(4):  # each class prefers its own two experts
        dependent[c] = torch.bincount(torch.randint(0, 10, (300,), generator=gen), minlength=10)
        dependent[c, 2 * c] += 150
        dependent[c, 2 * c + 1] += 150
    d = routing_stats.class_dependence(dependent)
    assert d["p"] < 1e-10 and d["mi"] > 10 * d["mi_random"]
    # G by hand on a 2x2 table
    t = torch.tensor([[30.0, 10.0], [10.0, 30.0]])
    exp = t.sum(1, keepdim=True) * t.sum(0, keepdim=True) / t.sum()
    g = float(2 * (t * torch.log(t / exp)).sum())
    assert routing_stats.class_dependence(t)["g"] == pytest.approx(g)
    # rows and columns without counts are left out (an absent class, an unused expert)
    padded = torch.zeros(3, 3)
    padded[:2, :2] = t
    assert routing_stats.class_dependence(padded)["df"] == 1


def test_frozen_share_per_class():
    t = torch.tensor([[8.0, 2.0, 0.0], [0.0, 5.0, 5.0]])
    s = routing_stats.frozen_choice_share(t, [0])
    assert s["all"] == pytest.approx(8 / 20) and s["by_class"] == [pytest.approx(0.8), 0.0]
    summary = routing_stats.summarize_block(t.sum(0), t, [0])
    assert summary["frozen_share"] == pytest.approx(0.4) and summary["class_df"] == 2


def test_alignment_other_class_negatives_ignore_same_class_rows():
    torch.manual_seed(0)
    z = [torch.randn(6, 8)]
    joint = torch.randn(6, 8)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    base = losses.alignment(z, joint, "joint_infonce", 0.1, True, groups)
    # moving row 1's joint (same class as row 0) changes nothing for row 0's term, but it does
    # without groups
    moved = joint.clone()
    moved[1] = z[0][0] * 5
    def row0(j, g):
        q = torch.nn.functional.normalize(z[0], dim=-1)
        k = torch.nn.functional.normalize(j, dim=-1)
        logits = q @ k.t() / 0.1
        if g is not None:
            same = g.view(-1, 1) == g.view(1, -1)
            same.fill_diagonal_(False)
            logits = logits.masked_fill(same, float("-inf"))
        return torch.nn.functional.cross_entropy(logits[:1], torch.tensor([0]))
    assert row0(moved, groups) == pytest.approx(float(row0(joint, groups)))
    assert float(row0(moved, None)) != pytest.approx(float(row0(joint, None)))
    assert torch.isfinite(base)
    # all-distinct groups equal the plain loss
    plain = losses.alignment(z, joint, "joint_infonce", 0.1, True)
    distinct = losses.alignment(z, joint, "joint_infonce", 0.1, True, torch.arange(6))
    assert torch.allclose(plain, distinct)


# -- cma's diagnostics and routing options, on a tiny two-task run ------------------------------
import json  # noqa: E402

import mmcl  # noqa: E402
from test_methods import small  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("routing-cache")


def run_cma(fake_stamps, cache, tmp_path, name, **extra):
    run_dir = tmp_path / name
    mmcl.run("tuxpaint", small(fake_stamps, cache, tmp_path / "runs", **{"method.name": "cma", **extra}),
             run_dir=run_dir)
    return json.loads((run_dir / "results.json").read_text()), [
        json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_cma_records_counts_by_class_tests_and_scales(fake_stamps, cache, tmp_path):
    res, lines = run_cma(fake_stamps, cache, tmp_path, "diag")
    counts, by_class, diag = res["expert_usage_counts"], res["expert_usage_by_class"], res["routing_diagnostics"]
    blocks, E = len(res["expert_usage"][0]), len(res["expert_usage"][0][0])
    assert len(counts) == len(by_class) == len(diag) == 2 and len(counts[0]) == blocks
    for t in range(2):
        for b in range(blocks):
            share = res["expert_usage"][t][b]
            c = counts[t][b]
            # the shares the freezing rule used are the recorded counts over top_k * routings
            assert sum(c) > 0 and share == pytest.approx([x / sum(c) for x in c], abs=1e-5)
            table = by_class[t][b]
            assert len(table[0]) == E
            # the clean pass routes each of the task's training rows once per modality, top-2
            d = diag[t][b]
            assert d["uniform_p"] == pytest.approx(routing_stats.uniformity(c)["p"])
            assert d["class_p"] is None or d["class_p"] == pytest.approx(
                routing_stats.class_dependence(table)["p"])
    n_train = sum(sum(row) for row in by_class[0][0]) / (2 * 2)  # 2 modalities, top-2
    assert n_train == int(n_train) and n_train > 0
    assert len(res["gate_scales"][0][0]) == 2
    assert lines[1]["routing_diagnostics"] == diag[1] and lines[0]["expert_usage_counts"] == counts[0]
    # frozen_share on task 2 refers to the experts frozen after task 1
    frozen1 = res["frozen_experts"][0]
    for b in range(blocks):
        t2 = by_class[1][b]
        total = sum(map(sum, t2))
        want = sum(row[e] for row in t2 for e in frozen1[b]) / total if frozen1[b] else 0.0
        assert diag[1][b]["frozen_share"] == pytest.approx(want)


def test_clean_usage_and_the_top_rule(fake_stamps, cache, tmp_path):
    res, _ = run_cma(fake_stamps, cache, tmp_path, "top", **{"freeze.usage": "clean", "freeze.rule": "top",
                                                              "freeze.top": 1})
    for b, c in enumerate(res["expert_usage_counts"][0]):
        table = res["expert_usage_by_class"][0][b]
        assert c == [sum(row[e] for row in table) for e in range(len(c))]  # counted on the clean pass
        assert res["frozen_experts"][0][b] == [max(range(len(c)), key=lambda e: (c[e], -e))]
    assert all(len(f) == 2 for f in res["frozen_experts"][1])  # one more per task


def test_diagnostics_can_be_turned_off(fake_stamps, cache, tmp_path):
    res, _ = run_cma(fake_stamps, cache, tmp_path, "off", **{"adapter.diagnostics": False})
    assert res["routing_diagnostics"] == [] and res["expert_usage_counts"]


def test_report_shows_the_routing_table(fake_stamps, cache, tmp_path):
    from mmcl.report import write_report
    res, lines = run_cma(fake_stamps, cache, tmp_path, "report")
    write_report(tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Routing diagnostics" in md and "p (class-independent)" in md
    # loss terms and gradient norms per parameter group, per task, in results.json and the report
    assert res["grad_norms"] == [line["grad_norms"] for line in lines]
    assert res["train_losses"] == [line["train_losses"] for line in lines]
    assert set(res["grad_norms"][0]) == {"experts", "gates", "adapter_projections", "projections", "heads"}
    assert res["grad_norms"][0]["experts"] > 0
    assert "## Loss terms and gradients" in md and "grad norm: gates" in md and "loss: cls" in md


def test_split_classification_by_hand():
    torch.manual_seed(0)
    logits, labels = torch.randn(5, 6), torch.tensor([4, 5, 4, 0, 2])
    got = losses.split_classification(logits, labels, 3, 4)
    F = torch.nn.functional
    want = (F.cross_entropy(logits[:3, 4:], labels[:3] - 4, reduction="sum")
            + F.cross_entropy(logits[3:], labels[3:], reduction="sum")) / 5
    assert got == pytest.approx(float(want))
    assert losses.split_classification(logits, labels, 5, 0) == pytest.approx(float(F.cross_entropy(logits, labels)))


def test_memory_rows_route_noise_free_and_the_rng_advances_alike(fake_stamps, cache, tmp_path):
    from test_methods import experiment
    exp = experiment(fake_stamps, cache, tmp_path, "cma", **{"adapter.memory_noise": False})
    m = exp.method
    m.begin_task(0)
    idx = exp.scenario.tasks[0].train[:8]
    exp.model.train()
    torch.manual_seed(5)
    out, _ = m.forward_batch(idx, 5)
    after_quiet = torch.get_rng_state()
    torch.manual_seed(5)
    noisy, _ = m.forward_batch(idx)  # every row with noise
    assert torch.equal(torch.get_rng_state(), after_quiet)
    exp.model.eval()
    with torch.no_grad():
        clean = exp.model(m.fetch(idx))
    exp.model.train()
    assert torch.allclose(out.logits[5:], clean.logits[5:], atol=1e-5)  # memory rows: no noise
    assert torch.allclose(out.logits[:5], noisy.logits[:5], atol=1e-6)  # current rows: the same noise


def test_gate_initialisation_and_noise_scale(fake_stamps, cache, tmp_path):
    from test_methods import experiment
    exp = experiment(fake_stamps, cache, tmp_path, "cma", **{"adapter.gate_init_std": 0.5, "adapter.noise_scale": 0.0})
    a = exp.model.adapters[0]
    w = next(iter(a.gate.values())).weight
    assert float(w.std()) == pytest.approx(0.5, rel=0.3)
    exp.model.train()
    assert not a.draws_noise  # a zero noise scale routes without noise, and draws none
    default = experiment(fake_stamps, cache, tmp_path, "cma").model.adapters[0]
    assert float(next(iter(default.gate.values())).weight.abs().sum()) == 0.0


@pytest.mark.parametrize("method", ["cma", "er"])
def test_replay_classification_counters_recency_only_when_asked(method, fake_stamps, cache, tmp_path):
    from test_methods import experiment
    F = torch.nn.functional
    on = experiment(fake_stamps, cache, tmp_path, method, **{"loss.cls_current": True}).method
    off = experiment(fake_stamps, cache, tmp_path, method).method
    torch.manual_seed(0)
    first = on.scenario.seen_classes(0)
    logits = torch.randn(6, on.scenario.seen_classes(1))
    target = torch.tensor([first, first + 1, first, 0, 1, first])
    for m in (on, off):
        m.task = 1
    assert on.replay_classification(logits, target, 3) == pytest.approx(
        float(losses.split_classification(logits, target, 3, first)))
    assert off.replay_classification(logits, target, 3) == pytest.approx(float(F.cross_entropy(logits, target)))
    on.task = 0  # the first task has no old classes: plain cross-entropy
    assert on.replay_classification(logits, target, 3) == pytest.approx(float(F.cross_entropy(logits, target)))
