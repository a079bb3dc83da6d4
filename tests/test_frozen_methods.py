"""The classifiers on frozen features (simplecil, ranpac), SLCA's classifier alignment and the
WA head correction (model.weight_align): the property that defines each, and two-task runs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mmcl
from mmcl.config import build_config, method_defaults
from mmcl.engine import Experiment
from mmcl.io import load_checkpoint
from mmcl.methods.ranpac import ridge_solution
from mmcl.methods.slca import class_statistics, sample_gaussian
from mmcl.model.mmencoder import GrowingClassifier
from mmcl.plugins import load_all
from mmcl.registry import REGISTRIES
from test_methods import small

NEW = ["simplecil", "ranpac", "slca"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("frozen-cache")


def experiment(fake_stamps, cache, tmp_path, method, **extra) -> Experiment:
    return Experiment(build_config("tuxpaint", small(fake_stamps, cache, tmp_path / "runs",
                                                     **{"method.name": method, **extra})))


@pytest.mark.parametrize("kind", ["class", "domain"])
@pytest.mark.parametrize("method", NEW)
def test_new_method_runs_two_tasks_end_to_end(method, kind, fake_stamps, cache, tmp_path):
    run_dir = tmp_path / method
    results = mmcl.run("tuxpaint", small(fake_stamps, cache, tmp_path / "runs", **{"method.name": method,
                                                                                     "scenario.kind": kind}),
                       run_dir=run_dir)
    saved = json.loads((run_dir / "results.json").read_text())
    R = saved["accuracy_matrix"]
    assert saved["method"] == results["method"] == method and saved["scenario"] == kind
    assert len(R) == 2 and R[0][1] is None and all(0.0 <= a <= 1.0 for a in (R[0][0], R[1][0], R[1][1]))
    assert saved["config"]["model"]["adapters"] is False
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert set(lines[1]["train_losses"]) == ({"cls"} if method == "slca" else set())


def test_registered_with_a_one_line_description_and_reference():
    load_all()
    for name in NEW:
        first = REGISTRIES["method"][name].__doc__.strip().splitlines()[0].rstrip(".")
        assert first.endswith(")") and "(" in first, f"{name}: no reference in '{first}'"
        assert method_defaults(name) == {"model": {"adapters": False}, "memory": {"size": 0}}


def test_simplecil_predicts_the_nearest_class_mean(fake_stamps, cache, tmp_path):
    exp = experiment(fake_stamps, cache, tmp_path, "simplecil")
    exp.run()
    m = exp.method
    test = torch.cat([task.test for task in exp.scenario.tasks])
    batch = m.fetch(test)
    f = F.normalize(m.batch_features(batch), dim=1)
    # the prototypes are the class means of every training sample's features
    train = torch.cat([task.train for task in exp.scenario.tasks])
    ft, yt = m.features(train), m.targets(train).cpu()
    means = torch.stack([ft[yt == c].mean(0) for c in range(exp.model.classifier.num_classes)])
    torch.testing.assert_close(m.prototypes()[:len(means)], means, rtol=1e-5, atol=1e-6)
    nearest = (f @ F.normalize(means, dim=1).T).argmax(1)
    assert torch.equal(m.predict(batch).argmax(1).cpu(), nearest)
    # a sample placed on a prototype is classified as that class
    for c in range(len(means)):
        fake = {mod: {"pooled": torch.zeros(1, 1)} for mod in exp.model.modalities}
        m.batch_features = lambda _b, c=c: means[c:c + 1]
        assert int(m.predict(fake).argmax(1)) == c


def test_ranpac_ridge_solution_is_the_closed_form_on_a_toy_problem():
    g = torch.Generator().manual_seed(0)
    H = torch.randn(40, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    Y = F.one_hot(y, 3).double()
    lam = 0.5
    # accumulated over two "tasks", as the method does
    G = H[:25].T @ H[:25] + H[25:].T @ H[25:]
    Q = H[:25].T @ Y[:25] + H[25:].T @ Y[25:]
    Hn, Yn = H.numpy(), Y.numpy()
    closed = np.linalg.inv(Hn.T @ Hn + lam * np.eye(6)) @ Hn.T @ Yn
    np.testing.assert_allclose(ridge_solution(G, Q, lam).numpy(), closed, rtol=1e-10, atol=1e-12)
    # the minimiser of ||H W - Y||^2 + lam ||W||^2: its gradient vanishes there
    W = ridge_solution(G, Q, lam)
    grad = H.T @ (H @ W - Y) + lam * W
    assert float(grad.abs().max()) < 1e-10


def test_ranpac_readout_is_the_ridge_solution_of_every_training_sample(fake_stamps, cache, tmp_path):
    exp = experiment(fake_stamps, cache, tmp_path, "ranpac", **{"method.ranpac.proj_dim": 64,
                                                                  "method.ranpac.ridge": 2.0})
    exp.run()
    m = exp.method
    train = torch.cat([task.train for task in exp.scenario.tasks])
    H = m.project(m.features(train)).double()
    Y = F.one_hot(m.targets(train).cpu(), m.num_outputs).double()
    expected = torch.linalg.inv(H.T @ H + 2.0 * torch.eye(64, dtype=torch.float64)) @ H.T @ Y
    torch.testing.assert_close(m.Wo.double(), expected, rtol=1e-3, atol=1e-4)
    batch = m.fetch(exp.scenario.tasks[0].test)
    torch.testing.assert_close(m.predict(batch).double(), (m.project(m.batch_features(batch)).double() @ expected),
                               rtol=1e-3, atol=1e-3)


def test_slca_samples_have_the_stored_mean_and_covariance():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(5, 5, generator=g, dtype=torch.float64)
    cov = A @ A.T
    cov[:, 4] = cov[4, :] = 0.0  # singular: one direction without variance
    mean = torch.randn(5, generator=g, dtype=torch.float64)
    x = sample_gaussian(mean, cov, 200_000, g).double()
    torch.testing.assert_close(x.mean(0), mean, atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.05 * float(cov.abs().max()), rtol=0)
    assert float(x[:, 4].std()) < 1e-6
    # the statistics the method stores
    z = torch.randn(30, 3, generator=g)
    y = torch.tensor([0, 2] * 15)
    classes, means, covs = class_statistics(z, y)
    assert classes.tolist() == [0, 2]
    torch.testing.assert_close(means[1], z[y == 2].double().mean(0))
    torch.testing.assert_close(covs[0], torch.cov(z[y == 0].double().T))


def test_slca_aligns_the_head_on_sampled_features(fake_stamps, cache, tmp_path):
    exp = experiment(fake_stamps, cache, tmp_path, "slca")
    calls = []
    original = exp.method.align_classifier
    exp.method.align_classifier = lambda: (calls.append(exp.method.task), original())
    exp.run()
    assert calls == [1]  # after task 2 only
    m = exp.method
    assert len(m.stat_classes) == exp.model.classifier.num_classes == len(m.means)
    z, y = m.sampled_features()
    assert len(z) == len(y) == len(m.stat_classes) * m.settings.ca_samples


def test_slca_slow_learner_slows_the_mlps_from_task_2_on(fake_stamps, cache, tmp_path):
    exp = experiment(fake_stamps, cache, tmp_path, "slca", **{"method.slca.slow_lr_scale": 0.0})
    lr, made, snapshots = exp.cfg.train.lr, [], []
    make = exp.make_optimizer

    def recording(steps):
        snapshots.append({n: p.detach().clone() for n, p in exp.model.named_parameters()
                          if n.startswith(("proj", "fusion", "classifier"))})
        made.append(make(steps))
        return made[-1]

    exp.make_optimizer = recording
    exp.run()
    first, second = ({g.get("name", "all"): g["initial_lr"] for g in opt.param_groups} for opt, _ in made)
    assert first == {"all": lr}                                    # task 1: every MLP at the full rate
    assert second["projections"] == 0.0 and second["heads"] == lr  # task 2: the slow learner
    after = dict(exp.model.named_parameters())
    mlps = [n for n in snapshots[1] if n.startswith(("proj", "fusion"))]
    assert mlps and all(torch.equal(after[n], snapshots[1][n]) for n in mlps)  # frozen by a scale of 0
    assert not torch.equal(after["classifier.heads.0.weight"], snapshots[1]["classifier.heads.0.weight"])
    assert not all(torch.equal(snapshots[0][n], snapshots[1][n]) for n in mlps)  # task 1 trained them


def test_weight_aligning_equalises_the_new_and_old_rows_mean_norm():
    head = GrowingClassifier(8)
    head.grow(3)
    head.grow(2)
    with torch.no_grad():
        head.heads[1].weight.mul_(5.0)
    z = torch.randn(4, 8)
    before = head(z)
    gamma = head.align_weights()
    old = head.heads[0].weight.norm(dim=1).mean()
    new = head.heads[1].weight.norm(dim=1).mean()
    torch.testing.assert_close(old, new)
    torch.testing.assert_close(head(z)[:, 3:], gamma * before[:, 3:])  # new logits scaled by gamma
    torch.testing.assert_close(head(z)[:, :3], before[:, :3])          # old ones untouched


def test_weight_aligning_in_a_run_and_where_it_is_refused(fake_stamps, cache, tmp_path):
    run_dir = tmp_path / "er-wa"
    mmcl.run("tuxpaint", small(fake_stamps, cache, tmp_path / "runs", **{"method.name": "er",
                                                                           "model.weight_align": True}),
             run_dir=run_dir)
    tensors, _ = load_checkpoint(run_dir / "checkpoints" / "final")
    w0, w1 = (tensors[f"model.classifier.heads.{i}.weight"] for i in (0, 1))
    torch.testing.assert_close(w0.norm(dim=1).mean(), w1.norm(dim=1).mean())
    with pytest.raises(ValueError, match="scenario.kind=class"):
        experiment(fake_stamps, cache, tmp_path, "er", **{"model.weight_align": True, "scenario.kind": "domain"})
    with pytest.raises(ValueError, match="method.name=simplecil does not predict with the growing classifier"):
        experiment(fake_stamps, cache, tmp_path, "simplecil", **{"model.weight_align": True})
    with pytest.raises(ValueError, match="set model.adapters=false"):
        experiment(fake_stamps, cache, tmp_path, "ranpac", **{"model.adapters": True})
