"""`mmcl sweep` (mmcl.sweep): the plan, run names, a killed sweep that resumes, --jobs, and a
2-job sweep through submitit's local executor; all on the generated stamp tree."""
import json
import os

import pytest
import yaml

from mmcl.cli import main
from mmcl.naming import run_name
from mmcl.sweep import SpecError, available_cores, load_spec, plan
from test_end_to_end import tiny_overrides


def write_spec(path, **spec):
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_plan_names_order_and_overrides(tmp_path):
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text(yaml.safe_dump({"methods": {"er": {"train.lr": 0.5}}}))
    spec = load_spec(write_spec(
        tmp_path / "s.yaml", out_dir=str(tmp_path / "runs"),
        presets=["tuxpaint", {"tuxpaint-dil": {"train.epochs": 1}}],
        seeds=[0, 1], methods=["er"], variants={"no-freeze": {"freeze.enabled": False}},
        overrides={"run.progress": "never"}, grid={"memory.size": [10, 20]}, tuned="tuned.yaml"))
    runs = plan(spec)
    assert len(runs) == 2 * 2 * 2 * 2 and [r.seed for r in runs[:8]] == [0] * 8   # seed-major
    names = [r.name for r in runs]
    assert len(set(names)) == len(names)
    assert names[0] == "tuxpaint-er-memory.size=10-s0"
    assert "tuxpaint-dil-no-freeze-memory.size=20-s1" in names
    nf = next(r for r in runs if r.name == "tuxpaint-dil-no-freeze-memory.size=20-s1")
    assert {"method.name=cma", "freeze.enabled=false", "memory.size=20", "run.seed=1", "train.epochs=1"} \
        <= set(nf.overrides)
    er = runs[0]
    assert "train.lr=0.5" in er.overrides and not any(o.startswith("train.lr") for o in nf.overrides)
    (tmp_path / "runs" / names[0]).mkdir(parents=True)
    (tmp_path / "runs" / names[0] / "results.json").write_text("{}")
    assert [r.status for r in plan(spec)][:2] == ["done", "todo"]


def test_spec_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(SpecError, match=r"s.yaml: unknown key\(s\) seed"):
        load_spec(write_spec(tmp_path / "s.yaml", presets=["tuxpaint"], seed=[0], methods=["er"]))
    with pytest.raises(SpecError, match="'seeds' must be a non-empty list of integers"):
        load_spec(write_spec(tmp_path / "s.yaml", presets=["tuxpaint"], seeds=["a"], methods=["er"]))
    with pytest.raises(SpecError, match="grid.train.epochs must be a non-empty list"):
        load_spec(write_spec(tmp_path / "s.yaml", presets=["tuxpaint"], seeds=[0], methods=["er"],
                             grid={"train.epochs": 3}))
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")


def test_run_name_leaves_out_keys_that_do_not_change_results():
    assert run_name("tuxpaint", "cma", 2, {"model.adapters": "false", "run.threads": "1", "method.name": "cma"}) \
        == "tuxpaint-cma-model.adapters=false-s2"
    long = run_name("tuxpaint", "cma", 0, {f"k{i}.key": "x" * 20 for i in range(10)})
    other = run_name("tuxpaint", "cma", 0, {f"k{i}.key": "y" * 20 for i in range(10)})
    assert len(long) <= 120 and long != other and long.endswith("-s0")


def test_plain_run_default_name_includes_overrides(fake_stamps, tmp_path):
    root, classes = fake_stamps
    o = tiny_overrides(root, classes, tmp_path / "cache", tmp_path / "out",
                       **{"scenario.num_tasks": 2, "train.epochs": 1, "run.threads": 1, "model.adapters": False})
    assert main(["run", "tuxpaint", *[f"{k}={json.dumps(v)}" for k, v in o.items()]]) == 0
    names = [p.name for p in (tmp_path / "out").iterdir()]
    args = {k: json.dumps(v) for k, v in o.items()}
    assert names == [run_name("tuxpaint", "cma", 0, args)]
    assert names[0] != run_name("tuxpaint", "cma", 0, {**args, "model.adapters": "true"})
    assert names[0] == run_name("tuxpaint", "cma", 0, {**args, "run.threads": "2"})


def tiny_sweep(fake_stamps, tmp_path, seeds, **extra):
    root, classes = fake_stamps
    o = tiny_overrides(root, classes, tmp_path / "cache", tmp_path / "unused",
                       **{"scenario.num_tasks": 2, "train.epochs": 1, "model.adapters": False})
    return write_spec(tmp_path / "sweep.yaml", out_dir=str(tmp_path / "runs"), presets=["tuxpaint"], seeds=seeds,
                      methods=["er"], overrides=o, **extra)


def test_killed_sweep_resumes_and_skips_finished_runs(fake_stamps, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    assert main(["sweep", str(tiny_sweep(fake_stamps, tmp_path, [0]))]) == 0
    first = (runs / "tuxpaint-er-s0" / "results.json").read_text()
    spec = tiny_sweep(fake_stamps, tmp_path, [0, 1])
    # The run of seed 1 is killed (SIGKILL) after its first task's checkpoint: the sweep reports it.
    monkeypatch.setenv("MMCL_KILL_AT", "point=task_end,task=1")
    capsys.readouterr()
    assert main(["sweep", str(spec)]) == 1
    out = capsys.readouterr().out
    assert "1 done, 1 to make" in out and "tuxpaint-er-s1: failed" in out
    assert not (runs / "tuxpaint-er-s1" / "results.json").exists()
    assert (runs / "tuxpaint-er-s1" / "checkpoints" / "latest.json").is_file()
    monkeypatch.delenv("MMCL_KILL_AT")
    spec = tiny_sweep(fake_stamps, tmp_path, [0, 1, 2])  # and a new seed: two runs at a time
    assert main(["sweep", str(spec), "--jobs", "2"]) == 0
    assert "1 done, 2 to make" in capsys.readouterr().out
    assert (runs / "tuxpaint-er-s0" / "results.json").read_text() == first     # skipped, not rerun
    log = (runs / ".tuxpaint-er-s1.log").read_text()
    assert "resuming" in log and "from checkpoint" in log
    for s in (1, 2):  # each of the two jobs got half the cores, and as many torch threads
        res = json.loads((runs / f"tuxpaint-er-s{s}" / "results.json").read_text())
        assert res["environment"]["threads"] == max(1, len(available_cores()) // 2)
    assert main(["sweep", str(spec)]) == 0
    assert "3 done, 0 to make" in capsys.readouterr().out


def test_two_job_sweep_through_submitit_local_executor(fake_stamps, tmp_path):
    pytest.importorskip("submitit")
    spec = tiny_sweep(fake_stamps, tmp_path, [0, 1], resources={"timeout_min": 10, "cpus_per_task": 1})
    env_before = os.environ.get("PYTHONPATH")
    assert main(["sweep", str(spec), "--executor", "submitit-local"]) == 0, env_before
    for s in (0, 1):
        res = json.loads((tmp_path / "runs" / f"tuxpaint-er-s{s}" / "results.json").read_text())
        assert res["seed"] == s and res["environment"]["threads"] == 1
    assert list((tmp_path / "runs" / ".submitit").glob("*_0_log.out"))


def test_sigterm_stops_the_sweep_and_its_run_which_resume(fake_stamps, tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    spec = tiny_sweep(fake_stamps, tmp_path, [0, 1])
    o = yaml.safe_load(spec.read_text())
    o["overrides"]["train.epochs"] = 3
    spec.write_text(yaml.safe_dump(o))
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "mmcl", "sweep", str(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    latest = runs / "tuxpaint-er-s0" / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 300
    while not latest.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 143, out
    assert "stopped: 1 run(s) not started" in out
    assert not (runs / ".tuxpaint-er-s1.log").exists()           # the second run never started
    assert not (runs / "tuxpaint-er-s0" / "results.json").exists() and latest.exists()
    assert main(["sweep", str(spec)]) == 0
    assert "resuming" in (runs / ".tuxpaint-er-s0.log").read_text()
    assert (runs / "tuxpaint-er-s1" / "results.json").is_file()
