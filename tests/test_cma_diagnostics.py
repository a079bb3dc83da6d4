"""benchmarks/cma_diagnostics.py summarises the runs' routing and training diagnostics per task."""
import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "cma_diagnostics", Path(__file__).parent.parent / "benchmarks" / "cma_diagnostics.py")
diag = importlib.util.module_from_spec(spec)
spec.loader.exec_module(diag)


def write(folder, name, seed, frozen, share, cls):
    d = folder / f"p-{name}-s{seed}"
    d.mkdir(parents=True)
    cell = {"uniform_p": 0.0, "class_p": 0.0, "frozen_share": share}
    (d / "results.json").write_text(json.dumps({
        "name": f"p-{name}-s{seed}", "preset": "p", "method": "cma", "seed": seed,
        "accuracy_matrix": [[0.9, None], [0.5, 0.8]],
        "frozen_experts": [[list(range(f)), [0]] for f in frozen],
        "routing_diagnostics": [[{**cell, "frozen_share": 0.0}] * 2, [cell, {**cell, "frozen_share": share / 2}]],
        "gate_scales": [[[0.02, 0.71], [0.05, 0.72]]] * 2,
        "train_losses": [{"cls": cls, "align": 2.0}, {"cls": cls + 1, "align": 2.5, "distil": 0.1}],
        "grad_norms": [{"experts": 0.1, "projections": 2.0}] * 2}))


def test_rows_give_ranges_over_seeds_and_blocks_and_means_of_losses(tmp_path):
    write(tmp_path, "cma", 0, frozen=[3, 6], share=0.8, cls=0.2)
    write(tmp_path, "cma", 1, frozen=[4, 9], share=0.6, cls=0.4)
    d = tmp_path / "p-er-s0"                       # no adapters: left out
    d.mkdir()
    (d / "results.json").write_text(json.dumps({"name": "p-er-s0", "preset": "p", "method": "er", "seed": 0,
                                                "accuracy_matrix": [[0.9, None], [0.5, 0.8]]}))
    groups = diag.load_groups([tmp_path])
    rows = diag.task_rows({s: e["results"] for s, e in groups[("p", "cma")].items()})
    assert [r["frozen"] for r in rows] == ["1-4", "1-9"]          # block 2 froze one expert
    assert rows[0]["frozen_share"] == "" and rows[1]["frozen_share"] == "0.30-0.80"
    assert rows[0]["clean_std"] == "0.02-0.05" and rows[1]["noise_std"] == "0.71-0.72"
    assert rows[0]["loss_cls"] == "0.30" and rows[1]["loss_cls"] == "1.30" and rows[0]["loss_distil"] == ""
    text = diag.markdown(str(tmp_path))
    assert "## cma (p, seeds 0, 1)" in text and "## er" not in text
    assert "| 2 | 1-9 | 0.30-0.80 |" in text


def test_accuracy_per_task_covers_every_variant_final_row_and_diagonal(tmp_path):
    for seed, (first, second) in enumerate([(0.5, 0.8), (0.7, 0.6)]):
        d = tmp_path / f"p-er-s{seed}"
        d.mkdir()
        (d / "results.json").write_text(json.dumps({
            "name": d.name, "preset": "p", "method": "er", "seed": seed,
            "accuracy_matrix": [[0.9 - 0.1 * seed, None], [first, second]]}))
    text = diag.markdown(str(tmp_path))
    # final: task 1 mean(0.5, 0.7), task 2 mean(0.8, 0.6); just learnt: mean(0.9, 0.8), mean(0.8, 0.6)
    assert "- er (p, 2 seeds): final 60.0, 70.0 / just learnt 85.0, 70.0" in text
