"""`mmcl compare` (mmcl.compare.compare_runs & co.) and benchmarks/compare_tuxpaint.py."""
import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from mmcl.cli import main
from mmcl.compare import COMPARE_CSV_COLUMNS, compare_runs, format_comparison_markdown, skipped_runs, write_comparison
from test_end_to_end import tiny_overrides

REPO = Path(__file__).resolve().parent.parent

# acc_last of cma: 0.70, 0.72, 0.77 -> mean 73.00 %, std sqrt(((-3)^2 + (-1)^2 + 4^2) / 2) = sqrt(13)
CMA = {"acc_last": [0.70, 0.72, 0.77], "acc_avg_incremental": [0.80, 0.80, 0.80],
       "forgetting": [0.10, 0.20, 0.30], "bwt": [-0.10, -0.20, -0.30], "time": [10.0, 20.0, 60.0]}
FT = {"acc_last": [0.30, 0.40, 0.50], "acc_avg_incremental": [0.60, 0.62, 0.64],
      "forgetting": [0.50, 0.50, 0.50], "bwt": [-0.5, -0.5, -0.5], "time": [5.0, 5.0, 5.0]}


def _write_run(root, name, method, seed, vals, i, preset="tuxpaint"):
    d = root / name
    d.mkdir(parents=True)
    metrics = {k: vals[k][i] for k in ("acc_last", "acc_avg_incremental", "forgetting", "bwt")}
    (d / "results.json").write_text(json.dumps({
        "name": name, "preset": preset, "method": method, "seed": seed, "metrics": metrics,
        "train_time_s": vals["time"][i], "config": {"method": {"name": method}}}))
    return d


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for s in range(3):
        _write_run(root, f"tuxpaint-cma-s{s}", "cma", s, CMA, s)
        _write_run(root, f"tuxpaint-finetune-s{s}", "finetune", s, FT, s)
    unfinished = root / "tuxpaint-cma-s3"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("method:\n  name: cma\n")
    return root


def test_compare_runs_means_stds_and_grouping(runs):
    rows = compare_runs([runs])
    assert [(r["variant"], r["preset"], r["method"], r["n_seeds"]) for r in rows] == \
        [("cma", "tuxpaint", "cma", 3), ("finetune", "tuxpaint", "finetune", 3)]
    cma, ft = rows
    assert sorted(cma["seeds"]) == [0, 1, 2]
    assert cma["acc_last_mean"] == pytest.approx(0.73)
    assert cma["acc_last_std"] == pytest.approx(math.sqrt(13) / 100)
    assert cma["acc_avg_incremental_std"] == pytest.approx(0.0)
    assert cma["forgetting_mean"] == pytest.approx(0.2) and cma["forgetting_std"] == pytest.approx(0.1)
    assert cma["bwt_mean"] == pytest.approx(-0.2)
    assert cma["train_time_s_mean"] == pytest.approx(30.0)
    assert ft["acc_last_mean"] == pytest.approx(0.4) and ft["acc_last_std"] == pytest.approx(0.1)
    assert ft["acc_avg_incremental_mean"] == pytest.approx(0.62)
    assert ft["acc_avg_incremental_std"] == pytest.approx(0.02)
    assert skipped_runs([runs]) == [runs / "tuxpaint-cma-s3"]

    md = format_comparison_markdown(rows, skipped_runs([runs]))
    assert "| cma | tuxpaint | 3 | 73.00 ± 3.61 | 80.00 ± 0.00 | 20.00 ± 10.00 | -20.00 ± 10.00 | 30.0 |" in md
    assert "| finetune | tuxpaint | 3 | 40.00 ± 10.00 | 62.00 ± 2.00 |" in md
    assert "Skipped" in md and str(runs / "tuxpaint-cma-s3") in md


def test_one_seed_std_is_na_and_group_by_method(tmp_path):
    root = tmp_path / "r"
    _write_run(root, "tuxpaint-cma-s0", "cma", 0, CMA, 0)
    _write_run(root, "tuxpaint-no-freeze-s0", "cma", 0, CMA, 1)
    _write_run(root, "tuxpaint-dil-cma-s0", "cma", 0, CMA, 2, preset="tuxpaint-dil")
    rows = compare_runs([root])
    assert {(r["preset"], r["variant"]) for r in rows} == \
        {("tuxpaint", "cma"), ("tuxpaint", "no-freeze"), ("tuxpaint-dil", "cma")}
    md = format_comparison_markdown(rows)
    assert "70.00 ± n/a" in md
    by_method = compare_runs([root], group_by="method")
    assert sorted((r["preset"], r["variant"], r["n_seeds"]) for r in by_method) == \
        [("tuxpaint", "cma", 2), ("tuxpaint-dil", "cma", 1)]


def test_csv_columns_and_values(runs, tmp_path):
    paths = write_comparison(compare_runs([runs]), tmp_path / "out" / "cmp", skipped_runs([runs]), header="# T")
    assert [p.name for p in paths] == ["cmp.md", "cmp.csv"]
    assert paths[0].read_text().startswith("# T\n")
    with open(paths[1], newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == COMPARE_CSV_COLUMNS
    assert table[0]["variant"] == "cma" and table[0]["n_seeds"] == "3" and table[0]["seeds"] == "0 1 2"
    assert table[0]["acc_last_mean"] == "73.00" and table[0]["acc_last_std"] == "3.61"
    assert table[0]["train_time_s_mean"] == "30.0"
    assert table[1]["bwt_mean"] == "-50.00"


def test_cli_compare_writes_both_files(runs, tmp_path, capsys):
    prefix = tmp_path / "res" / "table"
    assert main(["compare", str(runs), "--out", str(prefix)]) == 0
    out = capsys.readouterr().out
    assert "| cma | tuxpaint | 3 |" in out and "tuxpaint-cma-s3" in out
    assert (tmp_path / "res" / "table.md").read_text().count("| tuxpaint |") == 2
    assert (tmp_path / "res" / "table.csv").read_text().splitlines()[0].startswith("variant,preset,method")
    # explicit run folders, one unfinished, grouped by method
    dirs = [str(runs / f"tuxpaint-cma-s{s}") for s in range(4)]
    assert main(["compare", *dirs, "--out", str(prefix), "--group-by", "method"]) == 0
    assert "tuxpaint-cma-s3" in capsys.readouterr().out
    assert main(["compare", str(runs / "tuxpaint-cma-s3"), "--out", str(tmp_path / "none")]) == 1
    assert not (tmp_path / "none.md").exists()


# ---------------------------------------------------------------------------------------------
# benchmarks/compare_tuxpaint.py
def _script():
    spec = importlib.util.spec_from_file_location("compare_tuxpaint", REPO / "benchmarks" / "compare_tuxpaint.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["compare_tuxpaint"] = mod  # dataclasses look the module up while it executes
    spec.loader.exec_module(mod)
    return mod


def test_script_plan_skips_finished_runs_and_lists_missing_methods(tmp_path):
    ct = _script()
    (tmp_path / "tuxpaint-cma-s0").mkdir()
    (tmp_path / "tuxpaint-cma-s0" / "results.json").write_text("{}")
    (tmp_path / "tuxpaint-cma-s1").mkdir()  # unfinished: run again (mmcl resumes it)
    jobs = ct.plan(["tuxpaint", "tuxpaint-dil"], ["cma", "finetune", "no-freeze"], [0, 1], tmp_path,
                   registered=lambda m: m == "cma")
    status = {j.run_dir.name: j.status for j in jobs}
    assert status["tuxpaint-cma-s0"] == "done"
    assert status["tuxpaint-cma-s1"] == "todo"
    assert status["tuxpaint-finetune-s0"] == "missing"
    assert status["tuxpaint-dil-no-freeze-s1"] == "todo"
    assert len(jobs) == 12 and [j.seed for j in jobs[:6]] == [0] * 6  # seed-major
    dil = next(j for j in jobs if j.run_dir.name == "tuxpaint-dil-no-freeze-s1")
    assert "freeze.enabled=false" in dil.overrides and "data.tuxpaint.languages=[fr,ru,es]" in dil.overrides
    assert "scenario.num_tasks=3" in dil.overrides and "train.epochs=1" in dil.overrides
    assert dil.command[-2:] == ["--run-dir", str(tmp_path / "tuxpaint-dil-no-freeze-s1")]
    full = ct.plan(["tuxpaint"], ["cma"], [0], tmp_path, quick=False, registered=lambda m: True)
    assert not any(o.startswith("train.epochs") for o in full[0].overrides)
    # to run: tuxpaint cma-s1 and no-freeze x 2 seeds; tuxpaint-dil cma and no-freeze x 2 seeds
    assert ct.estimate_s(jobs, True) == 3 * ct.EST_S[("tuxpaint", True)] + 4 * ct.EST_S[("tuxpaint-dil", True)]
    # the variants map onto the right methods and overrides
    assert ct.VARIANTS["no_adapter"] == ("cma", {"model.adapters": False})
    assert ct.VARIANTS["pairwise-contrastive"][1] == {"loss.align_kind": "pairwise_infonce"}


def test_script_dry_run_with_unregistered_method(tmp_path, capsys):
    ct = _script()
    rc = ct.main(["--dry-run", "--presets", "tuxpaint", "--seeds", "0", "--runs-dir", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "estimated time" in out and "used for every method alike" in out
    assert "[todo] " in out and "tuxpaint-cma-s0" in out and "tuxpaint-no-freeze-s0" in out
    assert not list(tmp_path.iterdir())  # a dry run makes nothing
    ct.VARIANTS["not-yet"] = ("not_a_registered_method", {})
    try:
        ct.main(["--dry-run", "--variants", "cma", "not-yet", "--seeds", "0", "--runs-dir", str(tmp_path)])
    finally:
        del ct.VARIANTS["not-yet"]
    out = capsys.readouterr().out
    assert "[missing]" in out and "not-yet (method 'not_a_registered_method')" in out


def test_script_end_to_end_on_the_fixture(fake_stamps, tmp_path, capsys):
    root, classes = fake_stamps
    o = tiny_overrides(root, classes, tmp_path / "cache", tmp_path / "unused",
                       **{"scenario.num_tasks": 2, "train.epochs": 1, "run.threads": 1})
    extra = [f"--extra={k}={json.dumps(v)}" for k, v in o.items()]
    ct = _script()
    args = ["--presets", "tuxpaint", "--seeds", "0", "--variants", "no-freeze", "--runs-dir", str(tmp_path / "runs"),
            "--out", str(tmp_path / "res" / "cmp"), *extra]
    assert ct.main(args) == 0, (tmp_path / "runs" / ".tuxpaint-no-freeze-s0.log").read_text()
    results = json.loads((tmp_path / "runs" / "tuxpaint-no-freeze-s0" / "results.json").read_text())
    assert results["config"]["freeze"]["enabled"] is False
    assert results["config"]["data"]["tuxpaint"]["max_stamps_per_class"] == 10
    md = (tmp_path / "res" / "cmp.md").read_text()
    assert "Command: `python benchmarks/compare_tuxpaint.py" in md and "Date: " in md
    assert "used for every method alike" in md and "| no-freeze | tuxpaint | 1 |" in md
    assert (tmp_path / "res" / "cmp.csv").read_text().count("\n") == 2
    # a second call finds the run done and runs nothing
    capsys.readouterr()
    assert ct.main(args) == 0
    assert "0 to run, 1 already done" in capsys.readouterr().out


def test_script_every_planned_run_has_a_valid_config(tmp_path):
    from mmcl.config import build_config
    ct = _script()
    jobs = ct.plan(ct.PRESETS, list(ct.VARIANTS), [0], tmp_path)
    for j in jobs:
        if j.status != "missing":
            cfg = build_config(j.preset, j.overrides)
            assert cfg.method.name == j.method and cfg.train.epochs == 1
            if j.preset == "tuxpaint-dil":
                assert list(cfg.data.tuxpaint.languages) == ["fr", "ru", "es"] and cfg.scenario.num_tasks == 3
