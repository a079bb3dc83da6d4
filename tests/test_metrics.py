"""Metrics against hand computations (the arithmetic is spelled out next to each number)."""
import json
import math

import numpy as np
import pytest

from mmcl.metrics import DEFINITIONS, SCALAR_METRICS, accuracy_matrix_from_counts, summarize

G = "garbage"  # entries above the diagonal must be ignored, whatever they hold

# 3 tasks. Row t = after training task t, column i = task i.
R3 = [[0.9, G, 123.0],
      [0.6, 0.8, -5],
      [0.5, 0.7, 0.9]]

# 4 tasks; task 0 *improves* after task 1 (0.80 -> 0.90), so its best earlier accuracy
# (0.90, row 1) differs from its diagonal entry (0.80, row 0).
R4 = [[0.80, None, None, None],
      [0.90, 0.70, float("nan"), G],
      [0.60, 0.75, 0.85, 7],
      [0.50, 0.65, 0.70, 0.95]]


def assert_same_metrics(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k]), k


def test_3x3_equal_weights():
    m = summarize(R3)
    # seen-data accuracy after each task (equal weights):
    #   t0: 0.9
    #   t1: (0.6 + 0.8) / 2       = 0.7
    #   t2: (0.5 + 0.7 + 0.9) / 3 = 2.1 / 3 = 0.7
    assert m["acc_seen_per_task"] == pytest.approx([0.9, 0.7, 0.7])
    assert m["acc_last"] == pytest.approx(0.7)
    # (0.9 + 0.7 + 0.7) / 3 = 2.3 / 3
    assert m["acc_avg_incremental"] == pytest.approx(2.3 / 3)
    # (0.5 + 0.7 + 0.9) / 3 = 0.7
    assert m["acc_mean_final"] == pytest.approx(0.7)
    # forgetting: task 0: max(0.9, 0.6) - 0.5 = 0.4 ; task 1: max(0.8) - 0.7 = 0.1
    #   mean = (0.4 + 0.1) / 2 = 0.25
    assert m["forgetting"] == pytest.approx(0.25)
    assert m["forgetting_per_task"] == pytest.approx([0.4, 0.1])
    # bwt: task 0: 0.5 - 0.9 = -0.4 ; task 1: 0.7 - 0.8 = -0.1 ; mean = -0.25
    assert m["bwt"] == pytest.approx(-0.25)
    assert m["num_tasks"] == 3


def test_4x4_forgetting_uses_max_over_earlier_rows():
    m = summarize(R4)
    # forgetting (max over rows i .. T-2 = 2, then minus the final row):
    #   task 0: max(0.80, 0.90, 0.60) - 0.50 = 0.90 - 0.50 = 0.40
    #   task 1: max(0.70, 0.75)       - 0.65 = 0.75 - 0.65 = 0.10
    #   task 2: max(0.85)             - 0.70              = 0.15
    #   mean over the 3 non-final tasks = 0.65 / 3
    assert m["forgetting"] == pytest.approx(0.65 / 3)
    # Using the diagonal instead would give (0.30 + 0.05 + 0.15) / 3 = 0.5 / 3: must differ.
    assert m["forgetting"] != pytest.approx(0.5 / 3)
    # Averaging over all 4 tasks (last one included as 0) would give 0.65 / 4: must differ.
    assert m["forgetting"] != pytest.approx(0.65 / 4)
    # bwt: (0.50-0.80) + (0.65-0.70) + (0.70-0.85) = -0.30 - 0.05 - 0.15 = -0.50 ; / 3
    assert m["bwt"] == pytest.approx(-0.5 / 3)
    # seen: t0 0.80 ; t1 (0.90+0.70)/2 = 0.80 ; t2 (0.60+0.75+0.85)/3 = 2.20/3 ;
    #       t3 (0.50+0.65+0.70+0.95)/4 = 2.80/4 = 0.70
    assert m["acc_seen_per_task"] == pytest.approx([0.80, 0.80, 2.2 / 3, 0.70])
    assert m["acc_last"] == pytest.approx(0.70)
    # (0.80 + 0.80 + 2.2/3 + 0.70) / 4
    assert m["acc_avg_incremental"] == pytest.approx((2.3 + 2.2 / 3) / 4)
    assert m["acc_mean_final"] == pytest.approx(0.70)


def test_final_row_is_not_part_of_the_max():
    # Task 1 ends *better* than ever before (0.95 > 0.8): its forgetting is negative,
    # 0.8 - 0.95 = -0.15 (a max including the final row would clamp it to 0).
    R = [[0.9, None, None],
         [0.6, 0.8, None],
         [0.5, 0.95, 0.9]]
    m = summarize(R)
    # task 0: 0.9 - 0.5 = 0.4 ; task 1: 0.8 - 0.95 = -0.15 ; mean = 0.25 / 2 = 0.125
    assert m["forgetting_per_task"] == pytest.approx([0.4, -0.15])
    assert m["forgetting"] == pytest.approx(0.125)


def test_weighting_by_task_sizes():
    m = summarize(R3, task_sizes=[100, 50, 50])
    #   t0: 0.9
    #   t1: (100*0.6 + 50*0.8) / 150           = (60 + 40) / 150      = 100/150
    #   t2: (100*0.5 + 50*0.7 + 50*0.9) / 200  = (50 + 35 + 45) / 200 = 130/200 = 0.65
    assert m["acc_seen_per_task"] == pytest.approx([0.9, 100 / 150, 0.65])
    assert m["acc_last"] == pytest.approx(0.65)
    assert m["acc_avg_incremental"] == pytest.approx((0.9 + 100 / 150 + 0.65) / 3)
    # unweighted and per-task metrics do not depend on sizes
    assert m["acc_mean_final"] == pytest.approx(0.7)
    assert m["forgetting"] == pytest.approx(0.25)
    assert m["bwt"] == pytest.approx(-0.25)
    # equal sizes are the same as no sizes
    assert_same_metrics(summarize(R3, [7, 7, 7]), summarize(R3))


def test_entries_above_diagonal_ignored():
    clean = [[0.9, None, None], [0.6, 0.8, None], [0.5, 0.7, 0.9]]
    assert_same_metrics(summarize(R3), summarize(clean))
    # numpy input with NaN above the diagonal
    A = np.array([[0.9, np.nan, np.nan], [0.6, 0.8, np.nan], [0.5, 0.7, 0.9]])
    assert_same_metrics(summarize(A), summarize(clean))


def test_single_task():
    m = summarize([[0.42]], task_sizes=[10])
    assert m["num_tasks"] == 1
    assert m["acc_last"] == pytest.approx(0.42)
    assert m["acc_avg_incremental"] == pytest.approx(0.42)
    assert m["acc_mean_final"] == pytest.approx(0.42)
    assert m["forgetting"] is None and m["bwt"] is None
    assert m["acc_seen_per_task"] == pytest.approx([0.42])


def test_output_is_json_serializable():
    m = summarize(np.array([[0.5, 0.0], [0.25, 1.0]]), task_sizes=np.array([3, 4]))
    assert json.loads(json.dumps(m))["acc_last"] == pytest.approx((3 * 0.25 + 4 * 1.0) / 7)


@pytest.mark.parametrize("R, match", [
    ([[0.9, None], [0.8]], r"row 1 has 1 entries, expected 2"),
    ([[0.9, None, None], [0.8, 0.7, None]], r"row 0 has 3 entries, expected 2"),
    ([[0.9, None], [None, 0.8]], r"R\[1\]\[0\]"),
    ([[0.9, None], [0.7, float("nan")]], r"R\[1\]\[1\]"),
    ([[0.9, None], ["x", 0.8]], r"R\[1\]\[0\]"),
    ([[90.0, None], [80.0, 85.0]], r"R\[0\]\[0\].*\[0, 1\]"),
    ([], r"empty"),
    (np.zeros(3), r"2-D"),
])
def test_invalid_matrix(R, match):
    with pytest.raises(ValueError, match=match):
        summarize(R)


@pytest.mark.parametrize("sizes, match", [
    ([10, 20], r"2 entries, expected 3"),
    ([10, 0, 5], r"task_sizes\[1\]"),
    ([10, -3, 5], r"task_sizes\[1\]"),
])
def test_invalid_task_sizes(sizes, match):
    with pytest.raises(ValueError, match=match):
        summarize(R3, task_sizes=sizes)


def test_definitions_cover_every_metric():
    m = summarize(R3)
    for key in SCALAR_METRICS:
        assert key in m
        assert isinstance(DEFINITIONS[key], str) and len(DEFINITIONS[key]) > 20


def test_accuracy_matrix_from_counts():
    R = accuracy_matrix_from_counts([[9, None], [6, 4]], [10, 5])
    # 9/10 ; 6/10, 4/5
    assert R[0][0] == pytest.approx(0.9) and R[0][1] is None
    assert R[1] == pytest.approx([0.6, 0.8])
    R2 = accuracy_matrix_from_counts([[1, 99], [2, 3]], [[4, None], [8, 6]])
    assert R2 == [[0.25, None], [0.25, 0.5]]
    with pytest.raises(ValueError, match=r"correct\[1\]\[1\]"):
        accuracy_matrix_from_counts([[1, None], [2, 9]], [4, 6])
    with pytest.raises(ValueError, match="expected 2"):
        accuracy_matrix_from_counts([[1, None], [2, 3]], [4])
    assert not any(math.isnan(v) for row in R for v in row if v is not None)
