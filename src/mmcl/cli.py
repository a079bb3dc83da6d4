"""The `mmcl` command: run, prepare, report, compare, list, config."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap

from mmcl.config import ConfigError, build_config, config_reference, iter_keys, preset_names

log = logging.getLogger("mmcl")


def _keys_help() -> str:
    lines = ["config keys (key=value; see docs/config.md):"]
    for key, typ, default, text in iter_keys():
        lines.append(f"  {key} ({typ}, default {default!r})")
        lines.extend(textwrap.wrap(text, 88, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmcl", description="Multi-modal continual learning.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train and evaluate a preset", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a method on a task stream and evaluate after every task.\n"
                                   f"presets: {', '.join(preset_names())} (or a path to a YAML file)",
                       epilog=_keys_help())
    r.add_argument("preset")
    r.add_argument("overrides", nargs="*", metavar="key=value")
    r.add_argument("--run-dir", help="run folder (default: run.out_dir/run.name)")
    r.add_argument("--fresh", action="store_true",
                   help="start over in the run folder instead of resuming from its last checkpoint")
    r.add_argument("--tuned", metavar="FILE", help="settings chosen by `mmcl tune` (the run's method's entry; "
                                                   "the overrides given here win)")
    r.add_argument("-v", "--verbose", action="store_true")
    tu = sub.add_parser("tune", help="the same Optuna budget per method on validation accuracy; writes a settings YAML",
                        description="N trials per method (TPE, seeded) over train.lr and the method's declared "
                                    "search space, scored by the validation accuracy after the last task; the "
                                    "studies are stored in STUDY_DIR (resumable). docs/tuning.md.")
    tu.add_argument("preset")
    tu.add_argument("overrides", nargs="*", metavar="key=value")
    tu.add_argument("--methods", nargs="+", required=True)
    tu.add_argument("--trials", type=int, default=20, help="trials per method (default 20)")
    tu.add_argument("--study-dir", default="runs/tune", help="studies (SQLite) and trial runs (default runs/tune)")
    tu.add_argument("--out", default="tuned.yaml", help="the settings YAML to write (default tuned.yaml)")
    tu.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="SEED",
                    help="run.seed of every trial's runs: a trial's objective is the mean validation accuracy "
                         "over these seeds (default 0); the first also seeds the sampler")
    pr = sub.add_parser("prepare", help="decode and cache a preset's data (run does it too)",
                        description="Decode every file of a preset's data set once into the cache "
                                    "(data.cache_dir); interrupted, it resumes with the files not yet written. "
                                    "With --root, the data set's folder is remembered: later `mmcl run` "
                                    "calls find it without data.root.")
    pr.add_argument("preset")
    pr.add_argument("overrides", nargs="*", metavar="key=value")
    pr.add_argument("--root", help="the data set's folder (its official release layout; docs/datasets.md)")
    pr.add_argument("--workers", type=int, default=None, help="decoding processes (default: one per core, at most 8)")
    rep = sub.add_parser("report", help="(re)write a run folder's plots and report")
    rep.add_argument("run_dir")
    rep.add_argument("--tsne", action="store_true",
                     help="also draw the t-SNE of the stored representations (tsne.png; needs scikit-learn), "
                          "whatever the run's report.tsne")
    cmp_ = sub.add_parser("compare", help="table of several runs: mean ± std over seeds per method/variant",
                          description="Group finished runs across seeds and print a Markdown table "
                                      "(acc_last, acc_avg_incremental, forgetting, bwt as mean ± std over "
                                      "seeds in %, mean training time); also write PREFIX.md and PREFIX.csv. "
                                      "A folder that is not a run folder stands for its sub-folders. Runs "
                                      "without results.json are listed as skipped.")
    cmp_.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    cmp_.add_argument("--out", default="comparison", metavar="PATH_PREFIX",
                      help="write PATH_PREFIX.md and PATH_PREFIX.csv (default: ./comparison)")
    cmp_.add_argument("--group-by", choices=("name", "method"), default="name",
                      help="name: run name without its trailing -s<seed> (default; one row per "
                           "variant); method: the run's method")
    sw = sub.add_parser("sweep", help="presets x methods/variants x overrides x seeds, resumable, local or slurm",
                        description="Make every run of a sweep spec (docs/sweep.md) that has no results.json "
                                    "yet, each in its own run folder named after its variant, grid point and "
                                    "seed; unfinished runs resume from their checkpoints. Then compare with "
                                    "`mmcl compare OUT_DIR --reference NAME`.")
    sw.add_argument("spec", metavar="SPEC.yaml")
    sw.add_argument("--jobs", type=int, default=1,
                    help="local runs at a time; each is pinned to cores/N cores with that many torch threads")
    sw.add_argument("--executor", choices=("local", "slurm", "submitit-local"), default="local",
                    help="local (default), slurm (a job array through submitit; resources from the spec), "
                         "submitit-local (submitit's local executor)")
    sw.add_argument("--no-wait", action="store_true", help="with slurm: submit and return")
    sw.add_argument("--dry-run", action="store_true", help="print the runs and their status; run nothing")
    cmp_.add_argument("--reference", metavar="NAME",
                      help="also the paired differences of every other method/variant minus NAME on shared "
                           "seeds (mean, 95 %% t-interval; PREFIX.paired.md/.csv) and the paper's claims "
                           "(PREFIX.claims.md/.csv)")
    sub.add_parser("list", help="presets, methods, data sets and encoders")
    c = sub.add_parser("config", help="print the resolved config of a preset, or the key reference")
    c.add_argument("preset", nargs="?")
    c.add_argument("overrides", nargs="*", metavar="key=value")
    c.add_argument("--reference", action="store_true", help="print every key as a Markdown table")
    p.subcommands = sub.choices  # name -> its parser (parse_args)
    return p


def parse_args(argv: list[str] | None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Options, positionals and key=value overrides in any order for every subcommand
    (``mmcl prepare ave --root DIR data.on_missing=skip``): the subcommand's own parser reads
    the rest of the line with parse_intermixed_args."""
    parser = parser or _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in parser.subcommands:
        args = parser.subcommands[argv[0]].parse_intermixed_args(argv[1:])
        args.command = argv[0]
        return args
    return parser.parse_args(argv)  # (help, or an unknown subcommand's error)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    level = logging.DEBUG if getattr(args, "verbose", False) else logging.INFO
    if _rank() != 0:  # under torchrun only rank 0 reports progress
        level = logging.WARNING
    logging.basicConfig(level=level, format=("%(asctime)s %(levelname)s " + (f"[rank {_rank()}] " if _rank() else "")
                                             + "%(message)s"), datefmt="%H:%M:%S")
    try:
        return _dispatch(args)
    except ConfigError as e:
        print(f"mmcl: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        from mmcl.engine import Interrupted
        if isinstance(e, Interrupted):
            if _rank() == 0:
                print(f"mmcl: {e.message}", file=sys.stderr)
            return 128 + e.signum
        print("mmcl: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        from mmcl.io import WriteError
        if not isinstance(e, WriteError) and not isinstance(e, FileNotFoundError):
            raise
        if getattr(args, "verbose", False):
            raise
        print(f"mmcl: error: {e.strerror if isinstance(e, WriteError) else e}", file=sys.stderr)
        return 1
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        # User-facing errors (data, checkpoints, training) carry their own explanation.
        if getattr(args, "verbose", False):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"mmcl: error: {msg}", file=sys.stderr)
        return 1


def _dispatch(args) -> int:
    if args.command == "list":
        from mmcl import plugins, registry
        plugins.load_all()
        print("presets:", ", ".join(preset_names()))
        for kind in ("method", "dataset", "encoder"):
            print(f"{kind}s:")
            for name, text in registry.describe(kind):
                print(f"  {name:14s} {text}")
        return 0
    if args.command == "config":
        if args.reference or not args.preset:
            print(config_reference(), end="")
        else:
            from mmcl.config import to_yaml
            print(to_yaml(build_config(args.preset, args.overrides)), end="")
        return 0
    if args.command == "report":
        from mmcl.report import write_report
        for path in write_report(args.run_dir, tsne=True if args.tsne else None):
            print(path)
        return 0
    if args.command == "compare":
        from mmcl.compare import compare_runs, format_comparison_markdown, skipped_runs, write_comparison
        rows = compare_runs(args.run_dirs, group_by=args.group_by)
        skipped = skipped_runs(args.run_dirs)
        if not rows:
            print(format_comparison_markdown(rows, skipped), end="")
            print("mmcl: error: no finished run (results.json) among the folders given", file=sys.stderr)
            return 1
        print(format_comparison_markdown(rows, skipped), end="")
        paths = write_comparison(rows, args.out, skipped)
        if args.reference:
            from mmcl.claims import check_claims, format_claims_markdown, write_claims
            from mmcl.paired import format_paired_markdown, load_groups, paired_differences, write_paired
            groups = load_groups(args.run_dirs, group_by=args.group_by)
            paired = paired_differences(groups, args.reference)
            claims = check_claims(groups, args.reference)
            print("\n" + format_paired_markdown(paired) + "\n" + format_claims_markdown(claims, args.reference), end="")
            paths += write_paired(paired, args.out) + write_claims(claims, args.out, args.reference)
        for path in paths:
            print(path)
        return 0
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "tune":
        from mmcl.tune import tune, write_tuned
        best = tune(args.preset, args.methods, args.trials, args.study_dir, args.overrides, seeds=args.seeds)
        print(write_tuned(best, args.out, args.preset, args.trials, args.overrides, args.seeds))
        return 0
    overrides = list(args.overrides)
    if args.command == "run" and args.tuned:
        from mmcl.naming import format_value
        from mmcl.sweep import load_tuned
        method = build_config(args.preset, overrides).method.name
        tuned = load_tuned(args.tuned).get(method, {})
        overrides = [f"{k}={format_value(v)}" for k, v in tuned.items()] + overrides
        args.overrides = overrides
    if args.command == "prepare" and args.root:
        overrides.append(f"data.root={args.root}")
    cfg = build_config(args.preset, overrides)
    if args.command == "prepare":
        from mmcl.data.prepared import prepare
        from mmcl.data.roots import remember_root
        from mmcl.encoders import build_encoder
        data = prepare(cfg, {m: build_encoder(m, cfg) for m in cfg.data.modalities},
                       progress=sys.stderr.isatty(), workers=args.workers)
        if args.root:
            remember_root(cfg.data.cache_dir, cfg.data.dataset, args.root)
        left = f", {len(data.excluded)} left out for unreadable files" if data.excluded else ""
        gaps = {m: int((~p).sum()) for m, p in data.present.items() if not bool(p.all())}
        left += "".join(f", {n} without {m} (masked)" for m, n in gaps.items())
        print(f"prepared {len(data)} samples of {cfg.data.dataset}{left} in {data.folder}")
        return 0
    from mmcl.engine import Experiment
    from mmcl.report import format_metrics_table
    run_dir = args.run_dir
    if not run_dir and not cfg.run.name:
        from mmcl.naming import parse_override_list, run_name
        run_dir = os.path.join(cfg.run.out_dir, run_name(cfg.preset, cfg.method.name, cfg.run.seed,
                                                         parse_override_list(args.overrides)))
    exp = Experiment(cfg, run_dir)
    results = exp.run(fresh=args.fresh)
    if _rank() == 0:
        print(format_metrics_table(results))
        report = exp.run_dir / "report.html"
        print(f"run folder: {exp.run_dir}" + (f" (report: {report})" if report.exists() else ""))
    return 0


def _sweep(args) -> int:
    from mmcl.sweep import load_spec, plan, run_sweep
    spec = load_spec(args.spec)
    runs = plan(spec)
    todo = [r for r in runs if r.status == "todo"]
    print(f"{len(runs)} runs in {spec['out_dir']}: {len(runs) - len(todo)} done, {len(todo)} to make "
          f"({args.executor}" + (f", {args.jobs} at a time" if args.executor == "local" else "") + ")", flush=True)
    if args.dry_run:
        for r in runs:
            print(f"[{r.status}] {r.name}: mmcl run {r.preset} {' '.join(r.overrides)}")
        return 0
    t0, n = __import__("time").perf_counter(), [0]

    def report(res: dict) -> None:
        n[0] += 1
        print(f"[{n[0]}/{len(todo)}] {res['name']}: {res['status']}"
              + (f" in {res['wall_s']:.0f} s" if res["wall_s"] else "")
              + (f" (log: {res['log']})" if res["status"] == "failed" else "")
              + f"; {__import__('time').perf_counter() - t0:.0f} s so far", flush=True)

    results = run_sweep(spec, jobs=args.jobs, executor=args.executor, wait=not args.no_wait, report=report)
    if any(r["status"] == "stopped" for r in results):
        later = sum(r["status"] == "stopped" and not r["wall_s"] for r in results)
        print(f"stopped: {later} run(s) not started; run the same command again to go on", flush=True)
        return 143
    failed = [r for r in results if r["status"] in ("failed", "busy")]
    if args.no_wait and args.executor != "local":
        print("submitted; run the same command again later to resubmit what did not finish")
        return 0
    print(f"compare: mmcl compare {spec['out_dir']} --reference <variant>")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
