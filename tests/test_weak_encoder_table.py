"""benchmarks/weak_encoder_table.py pairs each method's pre-trained and random-encoder runs on
the seeds both have, and each method with cma under the random encoder."""
import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "weak_encoder_table", Path(__file__).parent.parent / "benchmarks" / "weak_encoder_table.py")
wet = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wet)


def write(folder, variant, seed, acc, without=None, alone=None):
    d = folder / f"tuxpaint-{variant}-s{seed}"
    d.mkdir(parents=True)
    rob = {"accuracy": acc, "without": {"image": {"accuracy": without, "samples": 4}},
           "alone": {"image": {"accuracy": alone, "samples": 4}}} if without is not None else None
    (d / "results.json").write_text(json.dumps({"seed": seed, "preset": "tuxpaint", "metrics": {"acc_last": acc},
                                                **({"modality_robustness": rob} if rob else {})}))


def test_pairs_on_shared_seeds_and_against_cma(tmp_path):
    pre, weak = tmp_path / "pre", tmp_path / "weak"
    for s, (c, e) in enumerate([(0.80, 0.82), (0.70, 0.76), (0.75, 0.78)]):
        write(pre, "cma", s, c)
        write(pre, "er", s, e)
    for s, (c, e) in enumerate([(0.40, 0.50), (0.30, 0.42)]):  # seed 2 not run with the random encoder
        write(weak, "cma", s, c, without=0.3, alone=0.1)
        write(weak, "er", s, e, without=0.5, alone=0.2)
    lines = wet.table(wet.load(pre), wet.load(weak), "image").splitlines()
    assert lines[2].startswith("| cma | 0 1 | 75.00 | 35.00 | -40.00 [")
    er = lines[3].split(" | ")
    assert er[:4] == ["| er", "0 1", "79.00", "46.00"]
    assert er[4].startswith("-33.00 [") and er[5].startswith("+11.00 [")  # both seeds +10 and +12
    assert er[6:] == ["50.00", "20.00 |"]
