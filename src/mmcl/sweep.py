"""``mmcl sweep SPEC.yaml``: presets x methods-or-variants x override grid x seeds, each run its
own ``python -m mmcl run`` process in its own folder, resumable, on this machine (``--jobs N``)
or on a cluster through submitit (``--executor slurm``). The spec format is in docs/sweep.md.

``load_spec`` reads and checks a spec, ``plan`` lists its runs (seed-major, so a partial sweep
has every variant on its first seeds: paired comparisons need shared seeds), ``execute`` makes
one run (skipped when its results.json exists; an unfinished one resumes from its checkpoint
through ``mmcl run``'s own resume; a file lock keeps two sweeps off one run folder) and
``run_sweep`` runs the plan. A killed sweep started again skips what finished and resumes the
rest.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmcl.naming import format_value, run_name

__all__ = ["SPEC_KEYS", "SpecError", "SweepRun", "available_cores", "execute", "load_spec", "load_tuned",
           "plan", "run_sweep"]

log = logging.getLogger("mmcl")

SPEC_KEYS = {
    "out_dir": "folder of the run folders (relative to the current folder, as run.out_dir; default runs/<spec name>)",
    "presets": "list of presets (names or YAML paths), each optionally with its own overrides: {name: {key: value}}",
    "seeds": "list of seeds (run.seed)",
    "methods": "list of method names; each is a variant named after the method with method.name=<it>",
    "variants": "mapping name -> overrides ({key: value}); method.name defaults to cma",
    "overrides": "overrides for every run ({key: value})",
    "grid": "mapping key -> list of values; every combination is run, and named in the run name",
    "tuned": "a YAML written by `mmcl tune`: per-method settings applied before the run's own overrides",
    "resources": "submitit parameters per job (timeout_min, cpus_per_task, mem_gb, gpus_per_node, "
                 "slurm_partition, slurm_array_parallelism, slurm_additional_parameters, ...)",
}


class SpecError(ValueError):
    """A sweep spec that cannot be run; the message names the file and the key."""


@dataclass
class SweepRun:
    preset: str
    variant: str
    seed: int
    name: str
    run_dir: str
    overrides: list[str] = field(default_factory=list)
    status: str = "todo"     # todo | done | ran | failed | busy (another process holds its lock) | stopped
    wall_s: float = 0.0
    log: str = ""

    def command(self, threads: int | None = None) -> list[str]:
        extra = [f"run.threads={threads}"] if threads else []
        return [sys.executable, "-m", "mmcl", "run", self.preset, *self.overrides, *extra,
                "--run-dir", self.run_dir]


def _mapping(spec: dict, key: str, where: str) -> dict:
    v = spec.get(key) or {}
    if not isinstance(v, dict):
        raise SpecError(f"{where}: '{key}' must be a mapping (key: value), got {type(v).__name__}")
    return v


def load_spec(path: str | Path) -> dict:
    """The spec at ``path`` as a dict with every key filled in (see SPEC_KEYS); unknown keys,
    wrong types and an empty product fail with a SpecError naming the file and the key."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise SpecError(f"sweep spec {path} does not exist") from None
    except yaml.YAMLError as e:
        raise SpecError(f"sweep spec {path} is not valid YAML: {e}") from None
    where = f"sweep spec {path}"
    if not isinstance(spec, dict):
        raise SpecError(f"{where}: must be a mapping of {', '.join(SPEC_KEYS)}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(SPEC_KEYS)}")
    out: dict[str, Any] = {"path": str(path)}
    for key in ("presets", "seeds", "methods"):
        v = spec.get(key) or []
        if not isinstance(v, list):
            raise SpecError(f"{where}: '{key}' must be a list, got {v!r}")
        out[key] = v
    if not out["presets"]:
        raise SpecError(f"{where}: 'presets' is missing or empty (e.g. presets: [tuxpaint])")
    presets: dict[str, dict] = {}
    for item in out["presets"]:  # a name, or {name: {overrides for this preset}}
        if isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item.values())) or {}, dict):
            name, over = next(iter(item.items()))
            presets[str(name)] = dict(over or {})
        elif isinstance(item, str):
            presets[item] = {}
        else:
            raise SpecError(f"{where}: each of 'presets' is a name or {{name: {{key: value}}}}, got {item!r}")
    out["presets"] = presets
    if not out["seeds"] or not all(isinstance(s, int) and not isinstance(s, bool) for s in out["seeds"]):
        raise SpecError(f"{where}: 'seeds' must be a non-empty list of integers, got {spec.get('seeds')!r}")
    variants: dict[str, dict] = {str(m): {"method.name": str(m)} for m in out["methods"]}
    for name, over in _mapping(spec, "variants", where).items():
        if over is not None and not isinstance(over, dict):
            raise SpecError(f"{where}: variants.{name} must be a mapping of overrides, got {over!r}")
        if str(name) in variants:
            raise SpecError(f"{where}: variant '{name}' is also in 'methods'")
        variants[str(name)] = {"method.name": "cma", **(over or {})}
    if not variants:
        raise SpecError(f"{where}: neither 'methods' nor 'variants' names a run (e.g. methods: [cma, er])")
    out["variants"] = variants
    out["overrides"] = _mapping(spec, "overrides", where)
    grid = _mapping(spec, "grid", where)
    for k, vals in grid.items():
        if not isinstance(vals, list) or not vals:
            raise SpecError(f"{where}: grid.{k} must be a non-empty list of values, got {vals!r}")
    out["grid"] = grid
    out["resources"] = _mapping(spec, "resources", where)
    base = path.resolve().parent
    out["out_dir"] = str(Path(spec["out_dir"]) if spec.get("out_dir") else Path("runs") / path.stem)
    out["tuned"] = load_tuned(base / spec["tuned"]) if spec.get("tuned") else {}
    return out


def load_tuned(path: str | Path) -> dict[str, dict]:
    """The settings file of ``mmcl tune``: {"methods": {method: {key: value}}} as {method: {...}}."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise SpecError(f"tuned settings file {path} does not exist") from None
    methods = data.get("methods") if isinstance(data, dict) else None
    if not isinstance(methods, dict) or not all(isinstance(v, dict) for v in methods.values()):
        raise SpecError(f"tuned settings file {path}: expected 'methods: {{<method>: {{<key>: <value>}}}}'")
    return {str(k): dict(v) for k, v in methods.items()}


def plan(spec: dict) -> list[SweepRun]:
    """Every run of the spec, seed-major (seed, preset, variant, grid point), with its status:
    'done' when its results.json exists. Run names are unique (checked)."""
    out_dir = Path(spec["out_dir"])
    grid_keys = list(spec["grid"])
    points = [dict(zip(grid_keys, vals)) for vals in itertools.product(*(spec["grid"][k] for k in grid_keys))]
    runs, seen = [], {}
    for seed in spec["seeds"]:
        for preset, pover in spec["presets"].items():
            label_preset = Path(preset).stem if str(preset).endswith((".yaml", ".yml")) else str(preset)
            for variant, vover in spec["variants"].items():
                method = str(vover.get("method.name", "cma"))
                for point in points:
                    over = {**spec["tuned"].get(method, {}), **spec["overrides"], **pover, **vover, **point,
                            "run.seed": seed}
                    name = run_name(label_preset, variant, seed, point)
                    if name in seen:
                        raise SpecError(f"sweep spec {spec['path']}: runs {seen[name]} and {variant} {point} "
                                        f"would share the run folder {name}")
                    seen[name] = f"{variant} {point}"
                    run_dir = out_dir / name
                    runs.append(SweepRun(str(preset), variant, seed, name, str(run_dir),
                                         [f"{k}={format_value(v)}" for k, v in over.items()],
                                         "done" if (run_dir / "results.json").is_file() else "todo"))
    return runs


def available_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def execute(run: SweepRun | dict, threads: int | None = None, cores: Sequence[int] | None = None) -> dict:
    """Make one run as its own ``python -m mmcl run`` process (log: ``.<name>.log`` beside the run
    folder) unless its results.json exists; ``threads`` sets run.threads and OMP_NUM_THREADS,
    ``cores`` pins the process to those cores (Linux). A lock file (``.<name>.lock``) keeps a
    second sweep off a folder in use: that run is reported 'busy'. Returns the run as a dict
    with status ran / failed / done / busy. Top-level so that submitit can pickle it."""
    from filelock import FileLock, Timeout

    r = SweepRun(**run) if isinstance(run, dict) else run
    if STOP.is_set():
        r.status = "stopped"
        return asdict(r)
    run_dir = Path(r.run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    if (run_dir / "results.json").is_file():
        r.status = "done"
        return asdict(r)
    lock = FileLock(str(run_dir.parent / f".{r.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        r.status = "busy"
        return asdict(r)
    try:
        if (run_dir / "results.json").is_file():  # finished by another process meanwhile
            r.status = "done"
            return asdict(r)
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        pin = (lambda: os.sched_setaffinity(0, set(cores))) if cores and hasattr(os, "sched_setaffinity") else None
        r.log = str(run_dir.parent / f".{r.name}.log")
        t0 = time.perf_counter()
        with open(r.log, "a", encoding="utf-8") as f:
            f.write(f"$ {' '.join(r.command(threads))}\n")
            f.flush()
            with subprocess.Popen(r.command(threads), stdout=f, stderr=subprocess.STDOUT, env=env,
                                  preexec_fn=pin) as proc:
                RUNNING.add(proc)
                try:
                    rc = proc.wait()
                finally:
                    RUNNING.discard(proc)
        r.wall_s = time.perf_counter() - t0
        r.status = ("ran" if rc == 0 and (run_dir / "results.json").is_file() else
                    "stopped" if STOP.is_set() else "failed")
    finally:
        lock.release()
    return asdict(r)


# The local executor's stop flag and its running `mmcl run` processes: SIGTERM (or Ctrl-C) stops
# the sweep: the running runs get SIGTERM (they write a checkpoint and exit), no new run starts.
STOP = threading.Event()
RUNNING: set = set()


def _on_term(signum, frame) -> None:
    STOP.set()
    for proc in list(RUNNING):
        with contextlib.suppress(OSError):
            proc.send_signal(signal.SIGTERM)


def _run_local(todo: list[SweepRun], jobs: int, report: Callable[[dict], None]) -> list[dict]:
    """``jobs`` runs at a time, each pinned to its own share of the cores, torch threads = that share."""
    import concurrent.futures as cf

    STOP.clear()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_term)

    cores = available_cores()
    jobs = max(1, min(jobs, len(todo) or 1))
    share = max(1, len(cores) // jobs)
    slots: queue.Queue = queue.Queue()
    for i in range(jobs):
        slots.put(cores[i * share:(i + 1) * share] if len(cores) >= jobs else cores)

    def one(r: SweepRun) -> dict:
        mine = slots.get()
        try:
            return execute(r, threads=len(mine), cores=mine)
        finally:
            slots.put(mine)

    out = []
    try:
        with cf.ThreadPoolExecutor(max_workers=jobs) as pool:
            try:
                for res in pool.map(one, todo):
                    if res["status"] != "stopped" or res["wall_s"]:
                        report(res)
                    out.append(res)
            except KeyboardInterrupt:  # Ctrl-C reached the runs too (one process group)
                _on_term(signal.SIGINT, None)
                raise
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return out


def _run_submitit(todo: list[SweepRun], spec: dict, cluster: str, wait: bool,
                  report: Callable[[dict], None]) -> list[dict]:
    try:
        import submitit
    except ImportError:
        raise SpecError("--executor slurm needs submitit: pip install 'mmcl[cluster]'") from None
    folder = Path(spec["out_dir"]) / ".submitit"
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    resources = dict(spec["resources"])
    resources.setdefault("name", f"mmcl-{Path(spec['path']).stem}")
    executor.update_parameters(**resources)
    threads = int(resources.get("cpus_per_task") or 0) or None
    jobs = executor.map_array(execute, [asdict(r) for r in todo], [threads] * len(todo))
    log.info("submitted %d runs as %s (logs in %s)", len(jobs), jobs[0].job_id.split("_")[0] if jobs else "-", folder)
    if not wait:
        return []
    out = []
    for j, r in zip(jobs, todo):
        try:
            res = j.result()
        except Exception as e:  # noqa: BLE001 - the job's own error, reported with its run
            res = {**asdict(r), "status": "failed", "log": f"{j.paths.stderr} ({type(e).__name__})"}
        report(res)
        out.append(res)
    return out


def run_sweep(spec: dict, jobs: int = 1, executor: str = "local", wait: bool = True,
              report: Callable[[dict], None] | None = None) -> list[dict]:
    """Run what is missing of ``spec``'s plan; returns one dict per run made (status ran /
    failed / busy / done). ``executor``: 'local' (``jobs`` at a time here), 'slurm' or
    'submitit-local' (submitit's local executor, for testing the cluster path)."""
    todo = [r for r in plan(spec) if r.status == "todo"]
    report = report or (lambda res: None)
    if not todo:
        return []
    if executor == "local":
        return _run_local(todo, jobs, report)
    if executor in ("slurm", "submitit-local"):
        return _run_submitit(todo, spec, "slurm" if executor == "slurm" else "local", wait, report)
    raise SpecError(f"unknown executor {executor!r}; use local, slurm or submitit-local")
