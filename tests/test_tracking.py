"""TensorBoard event files of a tiny run, read back with tensorboard's own reader; the stored
representations and the t-SNE figure; W&B as a no-op when absent; the rerun of a finished run."""
import json
import sys
import types

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mmcl.cli import main
from mmcl.config import build_config
from mmcl.representations import load_representations, stored_tasks
from mmcl.tracking import Tracker
from test_end_to_end import tiny_overrides


def _args(o):
    return [f"{k}={json.dumps(v)}" for k, v in o.items()]


@pytest.fixture(scope="module")
def tiny_run(fake_stamps, tmp_path_factory):
    """A 2-task cma run with TensorBoard on and representations after both tasks."""
    root, classes = fake_stamps
    tmp = tmp_path_factory.mktemp("tracked")
    o = tiny_overrides(root, classes, tmp / "cache", tmp / "runs", **{
        "scenario.num_tasks": 2, "train.epochs": 1, "report.tsne_after": [1, -1]})
    assert main(["run", "tuxpaint", *_args(o)]) == 0
    # (the default run name carries the overrides that change results)
    (run_dir,) = (tmp / "runs").glob("tuxpaint-cma*-s0")
    return run_dir, o


def _events(run_dir):
    ea = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    ea.Reload()
    return ea


def test_event_files_hold_the_expected_tags(tiny_run):
    run_dir, _ = tiny_run
    ea = _events(run_dir)
    tags = ea.Tags()
    scalars = set(tags["scalars"])
    for tag in ("train/loss/cls", "train/loss/align", "train/loss/balance", "train/loss_total", "train/lr",
                "eval/accuracy/task1", "eval/accuracy/task2", "eval/seen_accuracy", "eval/val_accuracy",
                "task/train_loss/cls", "experts/block1/frozen", "method/memory_size",
                "metrics/acc_last", "metrics/forgetting", "metrics/bwt"):
        assert tag in scalars, tag
    assert "train/loss/distil" in scalars  # a term that only exists from task 2 on
    hists = set(tags["histograms"])
    blocks = build_config("tuxpaint").model.blocks
    for b in range(1, blocks + 1):  # numbered from 1, as the log and the report
        assert f"experts/block{b}/usage" in hists and f"routing/block{b}" in hists
    assert "experts/block0/usage" not in hists
    assert "config/text_summary" in tags["tensors"]

    results = json.loads((run_dir / "results.json").read_text())
    steps = [e.step for e in ea.Scalars("train/loss_total")]
    assert steps == list(range(1, len(steps) + 1))  # one per step, global across tasks
    acc = ea.Scalars("eval/seen_accuracy")
    assert [round(e.value, 6) for e in acc] == [round(r["seen_accuracy"], 6) for r in
                                                map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]
    assert acc[-1].step == steps[-1]
    assert ea.Scalars("metrics/acc_last")[0].value == pytest.approx(results["metrics"]["acc_last"])
    # The cosine schedule restarts every task: lr falls within a task.
    lr = [e.value for e in ea.Scalars("train/lr")]
    assert lr[0] == pytest.approx(results["config"]["train"]["lr"]) and lr[1] < lr[0]
    # The usage histogram's buckets are the experts' shares of the last task.
    h = ea.Histograms("experts/block1/usage")[-1].histogram_value
    assert list(h.bucket) == pytest.approx(results["expert_usage"][-1][0], abs=1e-6)
    assert len(h.bucket) == results["config"]["adapter"]["num_experts"]


def test_representations_stored_after_the_chosen_tasks(tiny_run):
    run_dir, _ = tiny_run
    arrays = load_representations(run_dir)
    assert stored_tasks(arrays) == [1, 2]
    results = json.loads((run_dir / "results.json").read_text())
    n1, n2 = results["task_sizes"][0], sum(results["task_sizes"])
    assert arrays["after1.joint"].shape == (n1, 16) and arrays["after2.joint"].shape == (n2, 16)
    for m in ("image", "text", "speech"):
        assert arrays[f"after2.{m}"].shape == (n2, 16)
    assert sorted(set(arrays["after2.task"].tolist())) == [1, 2]
    assert list(arrays["modalities"]) == ["image", "text", "speech"]
    task1_classes = set(results["tasks"][0]["classes"])
    assert {str(arrays["classes"][c]) for c in arrays["after1.label"]} == task1_classes


def test_report_tsne_draws_the_figure(tiny_run, capsys):
    run_dir, _ = tiny_run
    (run_dir / "tsne.png").unlink(missing_ok=True)
    assert main(["report", str(run_dir), "--tsne"]) == 0
    assert str(run_dir / "tsne.png") in capsys.readouterr().out
    with Image.open(run_dir / "tsne.png") as im:
        w, h = im.size
        assert w > 1000 and h > 2 * 500  # two stored tasks: two rows of two panels
        px = np.asarray(im.convert("RGB"))
    assert len(np.unique(px.reshape(-1, 3), axis=0)) > 20  # coloured points, not a blank canvas
    page = (run_dir / "report.html").read_text()
    assert 'src="tsne.png"' in page and "Representations (t-SNE)" in page


def test_report_tsne_without_representations_says_why(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps({"name": "x", "accuracy_matrix": [[0.5]], "task_sizes": [4]}))
    assert main(["report", str(tmp_path), "--tsne"]) == 1
    err = capsys.readouterr().err
    assert "representations.npz" in err and "report.tsne_after" in err
    assert main(["report", str(tmp_path)]) == 0  # without --tsne: the report, no figure
    assert not (tmp_path / "tsne.png").exists()


def test_finished_run_again_prints_its_table_and_report(tiny_run, capsys, caplog):
    run_dir, o = tiny_run
    before = sorted(p.name for p in (run_dir / "tb").iterdir())
    caplog.set_level("INFO", logger="mmcl")
    assert main(["run", "tuxpaint", *_args(o)]) == 0
    out = capsys.readouterr().out
    assert "after task" in out and "acc_last" in out  # the final table
    assert f"report: {run_dir / 'report.html'}" in out
    assert "already complete" in caplog.text and "report.html" in caplog.text
    assert sorted(p.name for p in (run_dir / "tb").iterdir()) == before  # no new event file


def test_tensorboard_off_writes_no_event_files(fake_stamps, tmp_path):
    root, classes = fake_stamps
    o = tiny_overrides(root, classes, tmp_path / "cache", tmp_path / "runs", **{
        "scenario.num_tasks": 1, "train.epochs": 1, "log.tensorboard": False, "report.tsne_after": []})
    assert main(["run", "tuxpaint", *_args(o)]) == 0
    (run_dir,) = (tmp_path / "runs").glob("tuxpaint-cma*-s0")
    assert (run_dir / "results.json").exists()
    assert not (run_dir / "tb").exists() and not (run_dir / "representations.npz").exists()


def test_wandb_absent_is_a_warning_and_nothing_else(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # an import of it fails, as when not installed
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "wandb" else object())
    cfg = build_config("tuxpaint", {"log.tensorboard": False, "log.wandb": True})
    tr = Tracker(cfg.log, tmp_path, "r", {})
    assert "wandb package is not installed" in caplog.text
    assert not tr.active
    tr.step(1, {"cls": 1.0}, 0.1)
    tr.task_end(1, {"accuracy": [0.5]}, {})
    tr.close()
    assert list(tmp_path.iterdir()) == []


def test_wandb_gets_the_same_values_when_installed(tmp_path, monkeypatch):
    logged, inits = [], []

    class FakeRun:
        def log(self, values, step):
            logged.append((step, dict(values)))

        def finish(self):
            logged.append("finished")

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: inits.append(kw) or FakeRun()
    fake.Histogram = lambda np_histogram: ("hist", list(np_histogram[0]))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())
    cfg = build_config("tuxpaint", {"log.tensorboard": False, "log.wandb": True, "log.wandb_project": "p"})
    tr = Tracker(cfg.log, tmp_path, "run-a", {"k": 1})
    tr.step(3, {"cls": 1.5, "align": 0.5}, 0.01)
    tr.task_end(3, {"task": 1, "accuracy": [0.75], "seen_accuracy": 0.75},
                {"expert_usage": [[[0.5, 0.5]]], "frozen_experts": [[[0]]], "memory_size": 12})
    tr.close()
    assert inits[0]["project"] == "p" and inits[0]["name"] == "run-a" and inits[0]["config"] == {"k": 1}
    assert logged[0] == (3, {"train/loss/cls": 1.5, "train/loss/align": 0.5, "train/loss_total": 2.0,
                             "train/lr": 0.01})
    flat = {k: v for item in logged[1:-1] for k, v in item[1].items()}
    assert flat["eval/accuracy/task1"] == 0.75 and flat["method/memory_size"] == 12.0
    assert flat["experts/block1/usage"] == ("hist", [0.5, 0.5]) and flat["experts/block1/frozen"] == 1.0
    assert logged[-1] == "finished"
