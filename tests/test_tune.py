"""`mmcl tune` (mmcl.tune): the same budget per method, validation accuracy only, a resumable
study, and the settings YAML that `mmcl run --tuned` and sweeps take."""
import json

import pytest
import yaml

from mmcl.cli import main
from mmcl.methods.ewc import OnlineEWC
from mmcl.tune import COMMON_SPACE, search_space
from test_end_to_end import tiny_overrides


def test_search_spaces_are_declared_beside_each_method():
    assert search_space("er") == COMMON_SPACE           # nothing of its own: the learning rate only
    ewc = search_space("ewc")
    assert set(ewc) == {"train.lr", "method.ewc.penalty", "method.ewc.gamma"}
    assert ewc["method.ewc.penalty"] == OnlineEWC.search_space["method.ewc.penalty"]
    assert {"loss.distil", "loss.align", "loss.preserve"} <= set(search_space("cma"))


def test_tune_resumes_and_writes_settings_that_run_takes(fake_stamps, tmp_path, capsys):
    pytest.importorskip("optuna")
    root, classes = fake_stamps
    o = tiny_overrides(root, classes, tmp_path / "cache", tmp_path / "unused",
                       **{"scenario.num_tasks": 2, "train.epochs": 1, "run.threads": 1})
    over = [f"{k}={json.dumps(v)}" for k, v in o.items()]
    study, out = tmp_path / "study", tmp_path / "tuned.yaml"
    args = ["tune", "tuxpaint", *over, "--methods", "er", "--study-dir", str(study), "--out", str(out)]
    assert main([*args, "--trials", "2"]) == 0
    assert (study / "er.db").is_file() and len(list((study / "er").iterdir())) == 2
    import optuna
    trials = optuna.load_study(study_name="er", storage=f"sqlite:///{study / 'er.db'}").trials
    vals = [json.loads((d / "results.json").read_text())["val_accuracy"][-1] for d in (study / "er").iterdir()]
    assert sorted(t.value for t in trials) == pytest.approx(sorted(vals))   # the objective: validation accuracy
    tuned = yaml.safe_load(out.read_text())["methods"]["er"]
    best = max(trials, key=lambda t: t.value)
    assert tuned == best.params and 1e-4 <= tuned["train.lr"] <= 1e-2
    # resumed with a budget of 3: one more trial, not three
    assert main([*args, "--trials", "3"]) == 0
    assert len(optuna.load_study(study_name="er", storage=f"sqlite:///{study / 'er.db'}").trials) == 3
    # mmcl run --tuned takes the method's entry; an override given on the command line wins
    run_dir = tmp_path / "run"
    assert main(["run", "tuxpaint", *over, "method.name=er", "--tuned", str(out), "--run-dir", str(run_dir)]) == 0
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    tuned = yaml.safe_load(out.read_text())["methods"]["er"]
    assert cfg["train"]["lr"] == pytest.approx(tuned["train.lr"])
    run2 = tmp_path / "run2"
    assert main(["run", "tuxpaint", *over, "method.name=er", "train.lr=0.005", "--tuned", str(out),
                 "--run-dir", str(run2)]) == 0
    assert yaml.safe_load((run2 / "config.yaml").read_text())["train"]["lr"] == pytest.approx(0.005)


def test_tune_objective_is_the_mean_over_seeds(fake_stamps, tmp_path):
    pytest.importorskip("optuna")
    import optuna
    root, classes = fake_stamps
    o = tiny_overrides(root, classes, tmp_path / "cache", tmp_path / "unused",
                       **{"scenario.num_tasks": 2, "train.epochs": 1, "run.threads": 1})
    over = [f"{k}={json.dumps(v)}" for k, v in o.items()]
    study, out = tmp_path / "study", tmp_path / "tuned.yaml"
    assert main(["tune", "tuxpaint", *over, "--methods", "er", "--study-dir", str(study), "--out", str(out),
                 "--trials", "1", "--seeds", "0", "1"]) == 0
    (trial_dir,) = list((study / "er").iterdir())
    vals = {s: json.loads((trial_dir / f"s{s}" / "results.json").read_text())["val_accuracy"][-1] for s in (0, 1)}
    seeds = {s: json.loads((trial_dir / f"s{s}" / "results.json").read_text())["seed"] for s in (0, 1)}
    assert seeds == {0: 0, 1: 1}
    (trial,) = optuna.load_study(study_name="er", storage=f"sqlite:///{study / 'er.db'}").trials
    assert trial.value == pytest.approx((vals[0] + vals[1]) / 2)
    assert trial.user_attrs == pytest.approx({"val_s0": vals[0], "val_s1": vals[1]})
    assert "mean over seeds 0, 1" in out.read_text()
