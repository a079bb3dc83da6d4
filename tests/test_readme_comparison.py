"""benchmarks/readme_comparison.py builds the README's per-preset tables from the files
`mmcl compare --reference` writes, and splices them between the README's markers."""
import importlib.util
import json
from pathlib import Path

import pytest

from mmcl.cli import main as mmcl_main

spec = importlib.util.spec_from_file_location(
    "readme_comparison", Path(__file__).parent.parent / "benchmarks" / "readme_comparison.py")
rc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rc)

CMA = {"method": {"name": "cma"}, "model": {"adapters": True}, "freeze": {"enabled": True},
       "loss": {"align_kind": "joint"}}


def run(root, name, method, seed, acc, forgetting, config=None):
    d = root / f"p-{name}-s{seed}"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({
        "name": d.name, "preset": "p", "method": method, "seed": seed, "train_time_s": 10.0,
        "metrics": {"acc_last": acc, "acc_avg_incremental": acc + 0.1, "forgetting": forgetting, "bwt": -forgetting},
        "config": config or {"method": {"name": method}}}))


@pytest.fixture
def prefix(tmp_path):
    runs = tmp_path / "runs"
    for s in range(5):
        run(runs, "cma", "cma", s, 0.60 + 0.01 * s, 0.20, CMA)
        run(runs, "er", "er", s, 0.70 + 0.011 * s, 0.15)            # clearly above cma
        run(runs, "lwf", "lwf", s, 0.20 + 0.012 * s, 0.80)          # clearly below
        run(runs, "no-adapters", "cma", s, 0.60 + (0.02 if s % 2 else -0.02), 0.20,
            {**CMA, "model": {"adapters": False}})                   # within noise
    out = tmp_path / "res" / "comparison_p"
    assert mmcl_main(["compare", str(runs), "--reference", "cma", "--out", str(out)]) == 0
    return out


def test_tables_order_rows_mark_intervals_and_name_the_baselines_that_break_a_claim(prefix):
    body = rc.build([prefix])
    lines = body.splitlines()
    assert lines[0] == "#### p"
    first_table = [ln.split(" | ")[0].lstrip("| ") for ln in lines[4:8]]
    # the reference, its ablation, then the others by acc_last
    assert first_table == ["**cma**", "no-adapters", "er", "lwf"]
    # 4 rows x 5 seeds at train_time_s 10.0: 200 s
    assert "Compute: 20 runs, 0.06 h of training summed over them (train_time_s)." in lines
    er = next(ln for ln in lines if ln.startswith("| er | 5 |") and "[" in ln)
    assert "**+10.20** *" in er and "| **-5.00** * |" in er  # er − cma: 0.1 + 0.001 s; forgetting -0.05
    na = next(ln for ln in lines if ln.startswith("| no-adapters | 5 |") and "[" in ln)
    assert "*" not in na                                            # interval contains 0
    above = next(ln for ln in lines if ln.startswith("| the method above every baseline"))
    assert "**does not hold** (against er)" in above
    adapters = next(ln for ln in lines if ln.startswith("| adapters above no adapters"))
    assert "**inconclusive**" in adapters and "| no-adapters | 5 |" in adapters
    pairwise = next(ln for ln in lines if ln.startswith("| joint-representation alignment"))
    assert "not measured" in pairwise


def test_splice_replaces_only_between_the_markers_and_errors_name_the_file(prefix, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{rc.BEGIN}\nold table\n{rc.END}\nexplanations\n")
    assert rc.main([str(prefix), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(f"intro\n{rc.BEGIN}\n#### p\n") and text.endswith(f"{rc.END}\nexplanations\n")
    assert "old table" not in text
    assert rc.main([str(prefix), "--readme", str(readme)]) == 0 and readme.read_text() == text  # idempotent
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n")
    assert rc.main([str(prefix), "--readme", str(bare)]) == 1
    assert bare.read_text() == "no markers\n"
    with pytest.raises(FileNotFoundError, match="comparison_q.csv"):
        rc.build([prefix.with_name("comparison_q")])
