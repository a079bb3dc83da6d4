"""Cached pooled frozen features (mmcl.data.features): served to every model without adapters
and prompts, with the same results as running the frozen blocks in every step."""
from __future__ import annotations

import json

import pytest
import torch

import mmcl
from mmcl.config import build_config
from mmcl.data.features import serve_features
from mmcl.engine import Experiment
from mmcl.io import load_checkpoint
from test_methods import small


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("features-cache")


@pytest.mark.parametrize("method", ["er", "ewc"])
def test_cached_features_give_the_uncached_results(method, fake_stamps, cache, tmp_path):
    out = {}
    for cached in (True, False):
        run_dir = tmp_path / f"{method}-{cached}"
        mmcl.run("tuxpaint", small(fake_stamps, cache, tmp_path / "runs", **{
            "method.name": method, "model.cached_features": cached, "data.modalities": ["image", "text", "speech"]}),
            run_dir=run_dir)
        out[cached] = json.loads((run_dir / "results.json").read_text()), load_checkpoint(
            run_dir / "checkpoints" / "final")[0]
    (res_c, state_c), (res_u, state_u) = out[True], out[False]
    assert res_c["accuracy_matrix"] == res_u["accuracy_matrix"]
    assert res_c["val_accuracy"] == res_u["val_accuracy"]
    learned = [k for k in state_c if k.startswith("model.")]
    assert learned and set(learned) == {k for k in state_u if k.startswith("model.")}
    for k in learned:  # the trained weights agree up to rounding
        torch.testing.assert_close(state_c[k], state_u[k], rtol=1e-4, atol=1e-5)
    folder = next(p for p in cache.glob("tuxpaint/*") if p.is_dir())  # (not the cache lock file)
    assert {p.name for p in folder.glob("pooled_*")} == {f"pooled_prefix_{m}.safetensors"
                                                          for m in ("image", "text", "speech")}


def test_served_batches_hold_the_pooled_features_of_the_frozen_blocks(fake_stamps, cache, tmp_path):
    exp = Experiment(build_config("tuxpaint", small(fake_stamps, cache, tmp_path / "runs", **{"method.name": "er"})))
    idx = torch.arange(0, len(exp.data), 3)
    direct = exp.model.pooled_features(exp.data.batch(idx))  # frozen blocks run here
    serve_features(exp.cfg, exp.model, exp.data, exp.dist, exp.device)
    served = exp.data.batch(idx)
    assert set(served["image"]) == {"pooled", "present"}
    for m, v in exp.model.pooled_features(served).items():
        torch.testing.assert_close(v, direct[m], rtol=1e-5, atol=1e-5)


def test_models_that_need_tokens_are_not_served_features(fake_stamps, cache, tmp_path):
    for method, extra in (("cma", {}), ("er", {"model.adapters": True}), ("l2p", {}),
                          ("er", {"model.cached_features": False})):
        exp = Experiment(build_config("tuxpaint", small(fake_stamps, cache, tmp_path / "runs",
                                                        **{"method.name": method, **extra})))
        serve_features(exp.cfg, exp.model, exp.data, exp.dist, exp.device)
        assert exp.data.features is None, (method, extra)
        batch = exp.data.batch(torch.arange(2))
        assert "pooled" not in batch["image"]
