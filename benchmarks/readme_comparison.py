"""The README's comparison tables (issue 19), built from the files `mmcl compare --reference cma
--out PREFIX` commits under benchmarks/results/ (PREFIX.csv, PREFIX.paired.csv,
PREFIX.claims.csv), so they are regenerated without the runs:

    python benchmarks/readme_comparison.py benchmarks/results/comparison_tuxpaint \
        benchmarks/results/comparison_tuxpaint_large benchmarks/results/comparison_tuxpaint_shift \
        --out benchmarks/results/comparison_readme.md --readme README.md

Per preset: the table (acc_last, acc_avg_incremental, forgetting, training time; the reference,
then its ablations, then the other methods, each by acc_last) with its compute (runs, summed
training time), the paired differences against
the reference (acc_last and forgetting, 95 % intervals, bold where the interval excludes 0) and
the claims' verdicts (per baseline claim, the baselines that break it). ``--readme`` replaces
what lies between the markers BEGIN and END in that file; the explanations stay hand-written
outside them.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

BEGIN = "<!-- comparison-tables:begin (benchmarks/readme_comparison.py writes this part) -->"
END = "<!-- comparison-tables:end -->"


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; write it with `mmcl compare RUNS --reference cma --out "
                                f"{path.with_suffix('')}` (a .paired/.claims file needs --reference)")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _pm(row: dict, metric: str) -> str:
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    return "n/a" if mean == "" else mean if std == "" else f"{mean} ± {std}"


def _diff(row: dict | None) -> tuple[str, str]:
    """(mean, interval) of one paired row in pp; bold with * when the interval excludes 0."""
    if row is None or row["mean_diff"] == "":
        return "n/a", "n/a"
    mean = f"{float(row['mean_diff']):+.2f}"
    if row["ci_low"] == "":
        return mean, "n/a"
    lo, hi = float(row["ci_low"]), float(row["ci_high"])
    ci = f"[{lo:+.2f}, {hi:+.2f}]"
    return (f"**{mean}** *", f"**{ci}**") if lo > 0 or hi < 0 else (mean, ci)


def ordered(rows: list[dict], reference: str) -> list[dict]:
    """The reference, its ablations (rows of its method), then the others; each by acc_last."""
    def key(r: dict) -> float:                        # rows without acc_last go last
        return -float(r["acc_last_mean"] or "-inf")
    ref = [r for r in rows if r["variant"] == reference]
    method = ref[0]["method"] if ref else reference
    ablations = sorted((r for r in rows if r["method"] == method and r["variant"] != reference), key=key)
    others = sorted((r for r in rows if r["method"] != method), key=key)
    return ref + ablations + others


def compute_line(rows: list[dict]) -> str:
    """The compute behind a preset's table: its runs and their summed training time (the mean
    times the seeds of each row; train_time_s counts training only, not evaluation or the one-off
    feature caching)."""
    runs = sum(int(r["n_seeds"]) for r in rows)
    seconds = sum(float(r["train_time_s_mean"]) * int(r["n_seeds"]) for r in rows if r["train_time_s_mean"])
    return f"Compute: {runs} runs, {seconds / 3600:.2f} h of training summed over them (train_time_s)."


def preset_section(preset: str, rows: list[dict], paired: list[dict], claims: list[dict], reference: str) -> str:
    rows = ordered(rows, reference)
    out = [f"#### {preset}", "",
           "| method/variant | seeds | acc_last (%) | acc_avg_incremental (%) | forgetting (%) "
           "| train time (s, mean) |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        name = f"**{r['variant']}**" if r["variant"] == reference else r["variant"]
        out.append(f"| {name} | {r['n_seeds']} | {_pm(r, 'acc_last')} | {_pm(r, 'acc_avg_incremental')} | "
                   f"{_pm(r, 'forgetting')} | {r['train_time_s_mean'] or 'n/a'} |")
    out += ["", compute_line(rows)]
    by = {(p["metric"], p["method"]): p for p in paired if p["preset"] == preset}
    out += ["", f"Paired differences, method − {reference} on the same seeds (percentage points, 95 % "
            "Student-t interval; * the interval excludes 0):", "",
            f"| method/variant − {reference} | seeds | acc_last | 95 % CI | forgetting | 95 % CI |",
            "|---|---|---|---|---|---|"]
    for r in rows[1:]:
        acc, fgt = by.get(("acc_last", r["variant"])), by.get(("forgetting", r["variant"]))
        seeds = acc["n_seeds"] if acc else "0"
        out.append(f"| {r['variant']} | {seeds} | {' | '.join(_diff(acc))} | {' | '.join(_diff(fgt))} |")
    out += ["", "| claim | compared with | seeds | " + reference + " − other (pp) | 95 % CI | verdict |",
            "|---|---|---|---|---|---|"]
    mine = [c for c in claims if c["preset"] == preset]
    for c in mine:
        if c["other"] not in ("every baseline", "(no such variant)") and any(
                d["claim"] == c["claim"] and d["other"] == "every baseline" for d in mine):
            continue                                  # per-baseline rows: named in the summary row
        verdict = f"**{c['verdict']}**"
        if c["other"] == "every baseline":
            broken = sorted(d["other"] for d in mine if d["claim"] == c["claim"] and d["verdict"] == "does not hold"
                            and d["other"] != "every baseline")
            verdict += f" (against {', '.join(broken)})" if broken else ""
        mean = "" if c["mean"] == "" else f"{float(c['mean']):+.2f}"
        ci = "" if c["ci_low"] == "" else f"[{float(c['ci_low']):+.2f}, {float(c['ci_high']):+.2f}]"
        out.append(f"| {c['claim']} | {c['other']} | {c['n_seeds']} | {mean} | {ci} | {verdict} |")
    return "\n".join(out) + "\n"


def build(prefixes: list[Path], reference: str = "cma") -> str:
    sections = []
    for prefix in prefixes:
        rows = read_csv(prefix.with_name(prefix.name + ".csv"))
        paired = read_csv(prefix.with_name(prefix.name + ".paired.csv"))
        claims = read_csv(prefix.with_name(prefix.name + ".claims.csv"))
        for preset in dict.fromkeys(r["preset"] for r in rows):
            sections.append(preset_section(preset, [r for r in rows if r["preset"] == preset], paired, claims,
                                           reference))
    return "\n".join(sections)


def splice(readme: Path, body: str) -> None:
    """Replace what lies between BEGIN and END in ``readme`` with ``body``."""
    text = readme.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{readme}: needs exactly one line {BEGIN!r} followed by one line {END!r}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{body.rstrip()}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("prefixes", nargs="+", type=Path, help="the --out PREFIX of each `mmcl compare --reference`")
    ap.add_argument("--reference", default="cma")
    ap.add_argument("--out", type=Path, help="write the tables to this Markdown file")
    ap.add_argument("--readme", type=Path, help="replace the part between the markers of this file")
    args = ap.parse_args(argv)
    try:
        body = build(args.prefixes, args.reference)
        if args.out:
            args.out.write_text(body)
        if args.readme:
            splice(args.readme, body)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not args.out and not args.readme:
        print(body, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
