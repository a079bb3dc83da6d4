"""Run ``mmcl`` commands in child processes forked from a warm server.

A fresh ``python -m mmcl`` spends ~5 s importing torch, torch._dynamo (pulled in by the
optimiser), transformers and matplotlib before a tiny run's one second of work. The kill tests
start a dozen runs, so they fork each one from a multiprocessing forkserver that imported all
of that once. Each run is still its own process, entered through ``mmcl.cli.main`` exactly as
the command is, and killed with a real signal; its exit status is what a shell would see.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from dataclasses import dataclass
from pathlib import Path

# Imported once, in the forkserver (by name: the server does not see the tests folder).
PRELOAD = ["torch", "torch._dynamo", "torch.distributed", "torch.optim", "mmcl.cli", "mmcl.engine",
           "mmcl.report", "mmcl.compare", "mmcl.methods", "mmcl.encoders", "mmcl.data", "matplotlib.pyplot",
           "safetensors.torch"]

_CTX = None


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def _context():
    global _CTX
    if _CTX is None:
        os.environ.setdefault("MPLBACKEND", "Agg")
        _CTX = multiprocessing.get_context("forkserver")
        _CTX.set_forkserver_preload(PRELOAD)
    return _CTX


def _child(argv: list[str], env: dict, log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.environ.update(env)
    import logging
    logging.getLogger().handlers.clear()
    from mmcl.cli import main
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - report like the interpreter would
        import traceback
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_forked(argv: list[str], env: dict | None = None, timeout: float = 120, log_dir=None) -> Result:
    """``mmcl ARGV`` in a forked child; output (stdout and stderr together) in .stderr."""
    log_dir = Path(log_dir or os.environ.get("TMPDIR", "/tmp"))
    log_path = log_dir / f"mmcl-child-{os.getpid()}-{id(argv)}.log"
    proc = _context().Process(target=_child, args=(list(argv), dict(env or {}), str(log_path)))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        raise TimeoutError(f"mmcl {' '.join(argv[:2])} did not finish in {timeout} s")
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    log_path.unlink(missing_ok=True)
    return Result(proc.exitcode, text, text)
