"""Paired differences on shared seeds (mmcl.paired), the claims table (mmcl.claims) and
`mmcl compare --reference`, on run folders written here, against hand computations."""
import csv
import json
import math

import pytest

from mmcl.claims import check_claims
from mmcl.cli import main
from mmcl.paired import PAIRED_CSV_COLUMNS, load_groups, mean_ci, paired_differences, t_quantile

REF_CONFIG = {"method": {"name": "cma"}, "model": {"adapters": True}, "freeze": {"enabled": True},
              "loss": {"align_kind": "joint"}}


def write_run(root, name, method, seed, acc_last, forgetting, config=None):
    d = root / name
    d.mkdir(parents=True)
    cfg = json.loads(json.dumps(config or {"method": {"name": method}}))
    (d / "results.json").write_text(json.dumps({
        "name": name, "preset": "tuxpaint", "method": method, "seed": seed,
        "metrics": {"acc_last": acc_last, "acc_avg_incremental": 0.5, "forgetting": forgetting, "bwt": -forgetting},
        "config": cfg}))


def test_t_quantile_matches_tables():
    # Student-t 0.975 quantiles from any statistics table.
    for df, t in [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (9, 2.262), (30, 2.042)]:
        assert t_quantile(0.975, df) == pytest.approx(t, abs=5e-4)
    assert mean_ci([0.1]) == (0.1, None, None)
    assert mean_ci([]) == (None, None, None)


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    cma = [0.70, 0.72, 0.77, 0.75]
    for s, a in enumerate(cma):
        write_run(root, f"tuxpaint-cma-s{s}", "cma", s, a, 0.20, REF_CONFIG)
    # er: seeds 0, 1, 2 shared with cma; seed 4 is not, and must be left out.
    for s, a in [(0, 0.60), (1, 0.70), (2, 0.71), (4, 0.99)]:
        write_run(root, f"tuxpaint-er-s{s}", "er", s, a, 0.30)
    for s, a in enumerate([0.30, 0.40, 0.45, 0.40]):
        write_run(root, f"tuxpaint-finetune-s{s}", "finetune", s, a, 0.60)
    return root


def test_paired_differences_by_hand(runs):
    rows = paired_differences(load_groups([runs]), "cma", metrics=["acc_last"])
    by = {r["method"]: r for r in rows}
    er = by["er"]
    # d = er - cma on seeds 0, 1, 2: -0.10, -0.02, -0.06; mean -0.06; sd = sqrt((0.04^2 + 0.04^2 + 0) / 2) = 0.04
    assert er["seeds"] == [0, 1, 2] and er["n_seeds"] == 3
    assert er["mean_diff"] == pytest.approx(-0.06)
    half = 4.302653 * 0.04 / math.sqrt(3)
    assert er["ci_low"] == pytest.approx(-0.06 - half, abs=1e-6)
    assert er["ci_high"] == pytest.approx(-0.06 + half, abs=1e-6)
    ft = by["finetune"]
    # d = -0.40, -0.32, -0.32, -0.35: mean -0.3475; sum of squared deviations 0.004275
    sd = math.sqrt(0.004275 / 3)
    assert ft["n_seeds"] == 4 and ft["mean_diff"] == pytest.approx(-0.3475)
    assert ft["ci_high"] == pytest.approx(-0.3475 + 3.182446 * sd / 2, abs=1e-6)


def test_compare_reference_writes_csv_and_marks_intervals(runs, tmp_path, capsys):
    prefix = tmp_path / "out" / "cmp"
    assert main(["compare", str(runs), "--out", str(prefix), "--reference", "cma"]) == 0
    with open(prefix.with_name("cmp.paired.csv")) as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == PAIRED_CSV_COLUMNS
    got = {(r[1], r[2]): r for r in rows[1:]}
    er = got[("acc_last", "er")]
    assert er[0] == "tuxpaint" and er[3] == "cma" and er[4] == "3" and float(er[5]) == pytest.approx(-6.0)
    md = prefix.with_name("cmp.paired.md").read_text()
    ft_line = next(line for line in md.splitlines() if "| finetune |" in line and line.startswith("| acc_last"))
    er_line = next(line for line in md.splitlines() if "| er |" in line and line.startswith("| acc_last"))
    assert "**-34.75** *" in ft_line      # interval excludes 0
    assert "*" not in er_line.replace("| acc_last |", "")  # contains 0: not marked
    assert prefix.with_name("cmp.claims.md").is_file()
    with open(prefix.with_name("cmp.claims.csv")) as f:
        claims = list(csv.DictReader(f))
    every = next(r for r in claims if r["other"] == "every baseline" and "above" in r["claim"])
    assert every["verdict"] in ("holds", "does not hold", "inconclusive") and every["mean"] == ""
    er_claim = next(r for r in claims if r["other"] == "er" and "above" in r["claim"])
    assert float(er_claim["mean"]) == pytest.approx(6.0)  # cma − er, the sign opposite the paired csv
    assert main(["compare", str(runs), "--out", str(prefix), "--reference", "nope"]) == 1
    assert "'nope' is not among" in capsys.readouterr().err


def claim_runs(root, noise_seed_diffs):
    """cma clearly above er (acc_last, forgetting), no-adapters clearly above cma, no-freeze's
    forgetting within noise of cma's."""
    for s in range(5):
        write_run(root, f"tuxpaint-cma-s{s}", "cma", s, 0.70 + 0.01 * s, 0.20, REF_CONFIG)
        write_run(root, f"tuxpaint-er-s{s}", "er", s, 0.50 + 0.012 * s, 0.40 + 0.01 * s)
        write_run(root, f"tuxpaint-joint-s{s}", "joint", s, 0.90, 0.05)
        write_run(root, f"tuxpaint-no-adapters-s{s}", "cma", s, 0.80 + 0.011 * s, 0.20,
                  {**REF_CONFIG, "model": {"adapters": False}})
        write_run(root, f"tuxpaint-no-freeze-s{s}", "cma", s, 0.70, 0.20 + noise_seed_diffs[s],
                  {**REF_CONFIG, "freeze": {"enabled": False}})
        # a combined ablation: no adapters and no alignment; not the claim's "no adapters"
        write_run(root, f"tuxpaint-no-adapters-no-align-s{s}", "cma", s, 0.60, 0.20,
                  {**REF_CONFIG, "model": {"adapters": False}, "loss": {"align_kind": "joint", "align": 0}})


def test_claims_holds_does_not_hold_inconclusive(tmp_path):
    claim_runs(tmp_path, [0.05, -0.04, 0.03, -0.05, 0.02])
    rows = check_claims(load_groups([tmp_path]), "cma")
    v = {(r["claim"], r["other"]): r for r in rows}
    acc = "the method above every baseline in acc_last"
    assert v[(acc, "er")]["verdict"] == "holds"
    assert v[(acc, "er")]["mean"] == pytest.approx(0.20 - 0.002 * 2)  # cma - er, mean over s = 0..4
    assert (acc, "joint") not in v                   # an upper bound, not a baseline
    assert v[(acc, "every baseline")]["verdict"] == "holds"
    assert v[("the method forgets less than every baseline", "er")]["verdict"] == "holds"
    ad = v[("adapters above no adapters (acc_last)", "no-adapters")]
    assert ("adapters above no adapters (acc_last)", "no-adapters-no-align") not in v
    assert ad["verdict"] == "does not hold" and ad["ci_high"] < 0
    fr = v[("expert freezing lowers forgetting", "no-freeze")]
    assert fr["verdict"] == "inconclusive" and fr["ci_low"] < 0 < fr["ci_high"]
    pw = v[("joint-representation alignment above pairwise contrastive (acc_last)", "(no such variant)")]
    assert pw["verdict"] == "not measured"


def test_claim_fails_against_one_baseline(tmp_path):
    claim_runs(tmp_path, [0.0] * 5)
    for s in range(5):  # icarl forgets less than cma on every seed
        write_run(tmp_path, f"tuxpaint-icarl-s{s}", "icarl", s, 0.60, 0.10 - 0.005 * s)
    rows = check_claims(load_groups([tmp_path]), "cma")
    v = {(r["claim"], r["other"]): r["verdict"] for r in rows}
    forget = "the method forgets less than every baseline"
    assert v[(forget, "er")] == "holds" and v[(forget, "icarl")] == "does not hold"
    assert v[(forget, "every baseline")] == "does not hold"
    # forgetting identical on every seed: sd 0, the interval is the point 0: inconclusive
    assert v[("expert freezing lowers forgetting", "no-freeze")] == "inconclusive"
