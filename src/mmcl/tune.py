"""``mmcl tune``: the same tuning budget for every method, on validation accuracy only (Optuna).

Every method gets ``trials`` trials of the same sampler (TPE, seeded) over its search space:
``COMMON_SPACE`` (the learning rate, shared by all) plus the ``search_space`` its class declares
beside its code (mmcl/methods/<name>.py; e.g. EWC's penalty weight). A trial is one run of the
preset with the suggested settings on each of ``seeds``; its objective is the mean over the seeds of
the validation accuracy on all classes seen after the last task (``val_accuracy[-1]`` of
results.json), since one seed's accuracy moves by points with the seed alone. Test accuracy is
never read. Each method's study is stored in ``STUDY_DIR/<method>.db`` (SQLite) and its trial
runs in ``STUDY_DIR/<method>/<settings hash>/`` (``.../s<seed>/`` with several seeds), so a
killed tuning resumes: finished trials count, an interrupted one is marked failed and its
settings are tried again (its run resumes from its checkpoint). The chosen settings are written
as a YAML (``methods: {<method>: {key: value}}``) that ``mmcl run --tuned FILE`` and a sweep spec's ``tuned:`` take.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from mmcl.naming import format_value

__all__ = ["COMMON_SPACE", "search_space", "suggest", "tune", "write_tuned"]

log = logging.getLogger("mmcl")

# Shared by every method: one learning rate range for all.
COMMON_SPACE: dict[str, dict] = {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}}


def search_space(method: str) -> dict[str, dict]:
    """COMMON_SPACE plus the method class's ``search_space`` ({key: {low, high[, log]}} or
    {key: {choices: [...]}})."""
    from mmcl import plugins, registry
    plugins.load_all()
    cls = registry.get("method", method)
    return {**COMMON_SPACE, **dict(getattr(cls, "search_space", {}) or {})}


def suggest(trial, space: dict[str, dict]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, dom in space.items():
        if "choices" in dom:
            out[key] = trial.suggest_categorical(key, list(dom["choices"]))
        elif isinstance(dom["low"], int) and isinstance(dom["high"], int) and not dom.get("log"):
            out[key] = trial.suggest_int(key, dom["low"], dom["high"])
        else:
            out[key] = trial.suggest_float(key, float(dom["low"]), float(dom["high"]), log=bool(dom.get("log")))
    return out


def _trial_dir(study_dir: Path, method: str, params: dict) -> Path:
    h = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return study_dir / method / h


def tune(preset: str, methods: Sequence[str], trials: int, study_dir: str | Path,
         overrides: Sequence[str] = (), seeds: Sequence[int] = (0,)) -> dict[str, dict]:
    """Run what is missing of ``trials`` trials per method; returns {method: best settings}."""
    seeds = [int(s) for s in seeds] or [0]
    try:
        import optuna
    except ImportError:
        raise RuntimeError("mmcl tune needs optuna: pip install 'mmcl[tune]'") from None
    from optuna.trial import TrialState

    from mmcl.api import run

    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    best: dict[str, dict] = {}
    for method in methods:
        space = search_space(method)
        study = optuna.create_study(study_name=method, storage=f"sqlite:///{study_dir / (method + '.db')}",
                                    load_if_exists=True, direction="maximize",
                                    sampler=optuna.samplers.TPESampler(seed=seeds[0]))
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # left by a killed tuning
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(t.params)
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

        def objective(trial, method=method, space=space):
            params = suggest(trial, space)
            values = []
            for seed in seeds:
                over = [*overrides, f"method.name={method}", f"run.seed={seed}",
                        *(f"{k}={format_value(v)}" for k, v in params.items())]
                folder = _trial_dir(study_dir, method, params)
                results = run(preset, over, run_dir=folder / f"s{seed}" if len(seeds) > 1 else folder)
                val = results.get("val_accuracy") or []
                if not val or val[-1] is None:
                    raise RuntimeError(f"trial {trial.number} of {method}, seed {seed}: no val_accuracy in its "
                                       "results.json")
                values.append(float(val[-1]))
                trial.set_user_attr(f"val_s{seed}", values[-1])
            return sum(values) / len(values)

        left = max(0, trials - done)
        log.info("tune %s: %d of %d trials done, %d to run (space: %s)", method, done, trials, left,
                 ", ".join(space))
        if left:
            study.optimize(objective, n_trials=left, catch=(RuntimeError, ValueError))
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if complete:
            best[method] = dict(max(complete, key=lambda t: t.value).params)
            log.info("tune %s: best val_accuracy %.4f with %s", method, study.best_value, best[method])
    return best


def write_tuned(best: dict[str, dict], path: str | Path, preset: str, trials: int, overrides: Sequence[str],
                seeds: Sequence[int] = (0,)) -> Path:
    from mmcl.io import atomic_write_text
    text = ("# Written by `mmcl tune`: the settings with the best validation accuracy (val_accuracy after\n"
            f"# the last task, mean over seeds {', '.join(map(str, seeds))}) of {trials} trials per method "
            f"on preset {preset}"
            + (f" with {' '.join(overrides)}" if overrides else "") + ".\n"
            "# Use with `mmcl run PRESET --tuned THIS_FILE` or `tuned: THIS_FILE` in a sweep spec.\n")
    path = Path(path)
    atomic_write_text(path, text + yaml.safe_dump({"methods": best}, sort_keys=True))
    return path
