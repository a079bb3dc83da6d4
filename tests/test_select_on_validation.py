"""benchmarks/select_on_validation.py ranks variants on validation accuracy only, over the
seeds every variant finished."""
import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "select_on_validation", Path(__file__).parent.parent / "benchmarks" / "select_on_validation.py")
sel = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sel)


def write(folder, name, seed, val, test, diag=None):
    d = folder / f"{name}-s{seed}"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({
        "seed": seed, "val_accuracy": [0.9, val], "accuracy_matrix": [[test]], "train_time_s": 10.0,
        "routing_diagnostics": diag or []}))


def test_ranking_uses_validation_on_shared_seeds_only(tmp_path):
    cell = {"uniform_p": 1e-5, "class_p": 1e-9}
    for s, (va, vb) in enumerate([(0.70, 0.60), (0.72, 0.64)]):
        write(tmp_path, "tuxpaint-a", s, va, test=0.1, diag=[[cell, {"uniform_p": 0.5, "class_p": 1e-9}]])
        write(tmp_path, "tuxpaint-b", s, vb, test=0.99)   # better on test: must not matter
    write(tmp_path, "tuxpaint-c", 0, 0.99, test=0.99)     # cut after seed 0: ranked apart, on its own seed
    seeds, rows = sel.rank(sel.load_runs(tmp_path))
    assert seeds == [0, 1]
    assert [r["variant"] for r in rows] == ["tuxpaint-a", "tuxpaint-b", "tuxpaint-c"]
    assert rows[2]["seeds"] == [0] and "tuxpaint-c (cut: seeds [0] only)" in sel.markdown(seeds, rows, "x")
    assert rows[0]["mean"] == 0.71 and rows[1]["val"] == [0.60, 0.64]
    assert rows[0]["routing_cells"] == [(1, 2), (1, 2)] and rows[1]["routing_cells"] == []
    assert "| tuxpaint-a | 71.00 |" in sel.markdown(seeds, rows, str(tmp_path))
