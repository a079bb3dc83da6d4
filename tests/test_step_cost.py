"""benchmarks/step_cost.py runs end to end at the tiny synthetic scale and writes its figures."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "step_cost.py"


@pytest.fixture(scope="module")
def step_cost():
    spec = importlib.util.spec_from_file_location("step_cost", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_step_cost_measures_every_mode(step_cost, tmp_path, capsys):
    out = tmp_path / "sc.json"
    assert step_cost.main(["--scales", "tiny", "--reps", "1", "--warmup", "0", "--batch", "2",
                           "--threads", "1", "--peak-tflops", "1.0", "--out", str(out)]) == 0
    r = json.loads(out.read_text())["results"][0]
    assert r["rows"] == 4 and r["current_rows"] == 2  # current + memory rows at task 2
    for k in ("forward", "floor", "method", "predict", "dense", "prefix", "load"):
        assert r[f"{k}_ms_per_sample"] > 0
    assert r["method/floor"] == pytest.approx(r["method"] / r["floor"])
    assert "method/floor" in capsys.readouterr().out
    # the ViT/AST step's matmul FLOPs are counted -> achieved TFLOP/s and share of the given peak
    assert r["method_flops"] > 1e6
    assert r["method_tflop_per_s"] == pytest.approx(r["method_flops"] / r["method"] / 1e12)
    assert r["method_share_of_peak"] == pytest.approx(r["method_tflop_per_s"] / 1.0)


def test_step_cost_stream_covers_ten_tasks(step_cost, tmp_path):
    out = tmp_path / "stream.json"
    assert step_cost.main(["--stream", "--stream-steps", "1", "--threads", "1", "--out", str(out)]) == 0
    s = json.loads(out.read_text())["stream"]
    assert [t["task"] for t in s["tasks"]] == list(range(1, 11))
    assert s["tasks"][-1]["memory"] == 200  # the memory filled up and stayed within its size


def test_decode_cost_times_a_clip(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("decode_cost", SCRIPT.parent / "decode_cost.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "dc.json"
    assert mod.main(["--seconds", "1", "--width", "64", "--height", "48", "--reps", "1", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["video_s"] > 0 and r["audio_s"] > 0 and r["clip"]["frames"] == 8
    assert "frames" in capsys.readouterr().out
