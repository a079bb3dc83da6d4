"""`mmcl compare` (mmcl.compare.compare_runs & co.) and the sweep specs in benchmarks/sweeps."""
import csv
import json
import math
from pathlib import Path

import pytest

from mmcl.cli import main
from mmcl.compare import COMPARE_CSV_COLUMNS, compare_runs, format_comparison_markdown, skipped_runs, write_comparison

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


def test_benchmark_sweep_specs_plan_valid_configs():
    """Every run of the sweep specs in benchmarks/sweeps builds a valid config (the published
    comparison's variants map onto the right methods and overrides)."""
    from mmcl.config import build_config
    from mmcl.sweep import load_spec, plan
    specs = sorted((REPO / "benchmarks" / "sweeps").glob("*.yaml"))
    assert specs
    for path in specs:
        spec = load_spec(path)
        for r in plan(spec):
            if r.seed == spec["seeds"][0]:
                cfg = build_config(r.preset, r.overrides)
                assert cfg.method.name == spec["variants"][r.variant]["method.name"]
    quick = {r.name: r for r in plan(load_spec(REPO / "benchmarks" / "sweeps" / "compare_tuxpaint_quick.yaml"))}
    assert len(quick) == 114
    dil = build_config("tuxpaint-dil", quick["tuxpaint-dil-no-freeze-s1"].overrides)
    assert list(dil.data.tuxpaint.languages) == ["fr", "ru", "es"] and dil.scenario.num_tasks == 3
    assert dil.train.epochs == 1 and dil.freeze.enabled is False
    assert build_config("tuxpaint", quick["tuxpaint-pairwise-contrastive-s0"].overrides).loss.align_kind == \
        "pairwise_infonce"


def test_compare_averages_modality_robustness_over_the_runs_that_have_it(tmp_path):
    root = tmp_path / "runs"
    tables = [{"samples": 10, "accuracy": 0.8, "without": {"image": {"accuracy": 0.2, "samples": 10},
                                                             "text": {"accuracy": 0.7, "samples": 10}},
               "alone": {"image": {"accuracy": 0.6, "samples": 10}, "text": {"accuracy": None, "samples": 0}}},
              {"samples": 10, "accuracy": 0.6, "without": {"image": {"accuracy": 0.4, "samples": 10},
                                                             "text": {"accuracy": 0.5, "samples": 10}},
               "alone": {"image": {"accuracy": 0.4, "samples": 10}, "text": {"accuracy": 0.3, "samples": 10}}},
              None]
    for s, table in enumerate(tables):
        d = _write_run(root, f"tuxpaint-cma-s{s}", "cma", s, CMA, s)
        if table:
            res = json.loads((d / "results.json").read_text())
            (d / "results.json").write_text(json.dumps({**res, "modality_robustness": table}))
    _write_run(root, "tuxpaint-finetune-s0", "finetune", 0, FT, 0)
    rows = {r["variant"]: r for r in compare_runs([root])}
    rob = rows["cma"]["robustness"]
    assert rob["n"] == 2 and rob["accuracy"] == pytest.approx(0.7)
    assert rob["without"] == {"image": pytest.approx(0.3), "text": pytest.approx(0.6)}
    assert rob["alone"] == {"image": pytest.approx(0.5), "text": pytest.approx(0.3)}  # None left out
    assert rows["finetune"]["robustness"] is None
    md = format_comparison_markdown(list(rows.values()))
    line = next(x for x in md.splitlines() if x.startswith("| cma | tuxpaint | 2 |"))
    assert line.split(" | ")[3:] == ["70.00", "30.00", "60.00", "50.00", "30.00 |"]
    assert "finetune | tuxpaint | 1 | 30" in md and md.count("| finetune |") == 1  # no robustness row
