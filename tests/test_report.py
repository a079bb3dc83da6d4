"""Report writing: figures are valid PNGs, md/html carry the metrics and definitions."""
import errno
import html
import json
import os
import stat

import pytest
from PIL import Image

import mmcl.io
from mmcl.io import WriteError
from mmcl.metrics import DEFINITIONS, summarize
from mmcl.report import format_metrics_table, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _results(T=3, with_usage=True):
    R_full = [[0.9, None, None], [0.8, 0.85, None], [0.7, 0.8, 0.9]]
    R = [row[:T] for row in R_full[:T]]
    sizes = [88, 92, 90][:T]
    res = {
        "name": f"tuxpaint-cma-s0-t{T}", "preset": "tuxpaint", "method": "cma", "seed": 0,
        "scenario": "class",
        "tasks": [{"classes": ["food/fruit", "animals/birds"], "domain": None},
                  {"classes": ["town/houses", "symbols/money"], "domain": None},
                  {"classes": ["clothes", "symbols/chess"], "domain": None}][:T],
        "accuracy_matrix": R,
        "task_sizes": sizes,
        "val_accuracy": [0.9, 0.82, 0.8][:T],
        "metrics": summarize(R, sizes),
        "task_time_s": [12.3, 14.1, 15.0][:T], "train_time_s": 41.4,
        "finished": "2026-11-26T21:00:00",
        "config": {"freeze": {"enabled": True, "threshold": 0.1}, "train": {"epochs": 3}},
    }
    if with_usage:
        usage, frozen = [], []
        for t in range(T):
            blocks = []
            for b in range(2):
                shares = [0.02 + 0.01 * ((e + t + b) % 5) for e in range(10)]
                shares[(t + b) % 10] += 0.2
                total = sum(shares)
                blocks.append([s / total for s in shares])
            usage.append(blocks)
            frozen.append([[(t + b) % 10 for b in range(1)], [] if t == 0 else [(t + 1) % 10]])
        res["expert_usage"], res["frozen_experts"] = usage, frozen
    return res


def _write(tmp_path, res):
    (tmp_path / "results.json").write_text(json.dumps(res))
    return write_report(tmp_path)


def _check_png(path, min_size=(300, 250)):
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert w >= min_size[0] and h >= min_size[1]
        assert w <= 4000 and h <= 4000


def test_write_report_full(tmp_path):
    res = _results()
    paths = _write(tmp_path, res)
    names = [p.name for p in paths]
    assert names == ["accuracy_matrix.png", "expert_usage.png", "report.md", "report.html"]
    for p in paths:
        assert p.parent == tmp_path and p.is_file()
    _check_png(tmp_path / "accuracy_matrix.png")
    _check_png(tmp_path / "expert_usage.png")
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names + ["results.json"])

    m = res["metrics"]
    # acc_last = (88*0.7 + 92*0.8 + 90*0.9) / 270 = (61.6 + 73.6 + 81) / 270 = 216.2 / 270
    assert m["acc_last"] == pytest.approx(216.2 / 270)
    md = (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    for key in ("acc_last", "acc_avg_incremental", "acc_mean_final", "forgetting", "bwt"):
        value = f"{100 * m[key]:.2f}%"
        assert value in md and value in page, key
        assert DEFINITIONS[key] in md, key
        assert html.escape(DEFINITIONS[key]) in page, key
    assert "80.07%" in md  # 216.2 / 270 = 0.800740...
    for text in ("tuxpaint-cma-s0-t3", "tuxpaint", "cma", "2026-11-26T21:00:00", "41.4 s",
                 "12.3 s", "food/fruit", "85.00"):
        assert text in md and text in page, text
    assert "![" in md and "(accuracy_matrix.png)" in md and "(expert_usage.png)" in md
    assert '<img src="accuracy_matrix.png"' in page and '<img src="expert_usage.png"' in page
    assert page.lstrip().startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page and "http://" not in page and "https://" not in page
    # frozen experts of task 2, block 2 (index 1): expert id (1 + 1) % 10 = 2, shown as expert 3;
    # blocks and experts are numbered from 1, as in the log
    assert "b2: 3" in md and "block 1: frozen experts" in md
    assert "block 0" not in md and "b0:" not in md


def test_write_report_overwrites(tmp_path):
    _write(tmp_path, _results())
    res = _results()
    res["name"] = "renamed-run"
    _write(tmp_path, res)
    assert "renamed-run" in (tmp_path / "report.md").read_text()


def test_report_files_get_the_mode_open_gives(tmp_path, monkeypatch):
    """Written through mmcl.io: 0o666 & ~umask, as open() gives (the report used to force 0o644)."""
    monkeypatch.setattr(mmcl.io, "_UMASK", 0o002)  # the umask as mmcl.io read it at import
    written = _write(tmp_path, _results())
    assert {p.name for p in written} >= {"report.md", "report.html", "accuracy_matrix.png"}
    for p in written:
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o664, p.name


def test_report_write_failure_keeps_the_old_report(tmp_path, monkeypatch):
    """Disk full while rewriting a report: WriteError names the file, the old files stay whole."""
    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    written = _write(tmp_path, _results())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(os, "fsync", disk_full)  # the disk fills up as the first file is flushed
    res = _results()
    res["name"] = "renamed-run"
    with pytest.raises(WriteError, match=rf"cannot write {tmp_path}/\S+: no space left on device") as e:
        _write(tmp_path, res)
    assert any(str(p) in str(e.value) for p in written)
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "results.json"}
    assert after == {k: v for k, v in before.items() if k != "results.json"}  # no temporary file either


def test_single_task_and_missing_optional_fields(tmp_path):
    res = {"name": "one", "preset": "tiny", "method": "finetune", "seed": 1,
           "accuracy_matrix": [[0.5]], "task_sizes": [10]}
    paths = _write(tmp_path, res)
    assert [p.name for p in paths] == ["accuracy_matrix.png", "report.md", "report.html"]
    _check_png(tmp_path / "accuracy_matrix.png", min_size=(200, 200))
    md = (tmp_path / "report.md").read_text()
    assert "50.00%" in md and "n/a" in md
    assert "(forgetting) | n/a |" in md and "(bwt) | n/a |" in md
    table = format_metrics_table(res)
    assert "50.00" in table
    assert any(line.startswith("forgetting") and line.endswith("n/a") for line in table.splitlines())
    assert any(line.startswith("bwt") and line.endswith("n/a") for line in table.splitlines())


def test_domain_scenario_task_labels(tmp_path):
    res = _results(T=2, with_usage=False)
    res["scenario"] = "domain"
    res["tasks"] = [{"classes": ["a", "b"], "domain": "fr"}, {"classes": ["a", "b"], "domain": "ru"}]
    _write(tmp_path, res)
    md = (tmp_path / "report.md").read_text()
    assert "domain fr" in md and "domain ru" in md
    assert not (tmp_path / "expert_usage.png").exists()


def test_format_metrics_table():
    res = _results()
    table = format_metrics_table(res)
    lines = table.splitlines()
    for value in ("90.00", "80.00", "85.00", "70.00"):
        assert value in table
    # matrix rows: the last row holds all three values, in order, plus the seen accuracy
    last = next(line for line in lines if line.startswith("T3"))
    assert last.split()[1:] == ["70.00", "80.00", "90.00", "80.07"]
    first = next(line for line in lines if line.startswith("T1"))
    assert first.split()[1:] == ["90.00", "90.00"]  # upper triangle blank
    # metric rows, percentages with two decimals, columns aligned (same line width)
    metric_lines = [line for line in lines if line.split() and line.split()[0] in
                    ("acc_last", "acc_avg_incremental", "acc_mean_final", "forgetting", "bwt")]
    assert len(metric_lines) == 5
    assert len({len(line) for line in metric_lines}) == 1
    assert "80.07%" in table


def test_metrics_recomputed_when_not_stored():
    res = _results(with_usage=False)
    del res["metrics"]
    assert "80.07%" in format_metrics_table(res)


def test_missing_results_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.json"):
        write_report(tmp_path)
