"""The HTML report in a real headless browser (benchmarks/report_in_browser.py): it renders and
every image loads. Skipped where no Chromium/Chrome is installed."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import report_in_browser as rib
from mmcl.report import write_report
from mmcl.representations import save_representations
from test_report import _results

BROWSER = rib.find_browser()
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium/Chrome installed (apt-get install chromium, "
                                                        "or set MMCL_BROWSER): the browser check needs one")


@pytest.fixture()
def report_dir(tmp_path):
    res = _results(T=3)
    res["config"]["report"] = {"tsne": True}
    (tmp_path / "results.json").write_text(json.dumps(res))
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 8)
    z = rng.normal(size=(6, 16))[labels] + 0.3 * rng.normal(size=(48, 16))
    save_representations(tmp_path, 3, {"joint": z, "image": z + 0.1, "text": z - 0.1}, labels, labels // 2 + 1,
                         [f"class {c}" for c in range(6)], ["image", "text"])
    write_report(tmp_path)
    return tmp_path


def test_report_renders_and_every_image_loads(report_dir):
    r = rib.check_report(report_dir, BROWSER)
    assert r["h1"].startswith("Run report: ")
    assert {"Metrics", "Accuracy matrix", "Tasks", "Expert usage and freezing",
            "Representations (t-SNE)"} <= set(r["h2"])
    assert r["tables"] >= 4
    assert [i["src"] for i in r["images"]] == ["accuracy_matrix.png", "expert_usage.png", "tsne.png"]
    assert all(i["ok"] and i["width"] > 100 and i["height"] > 100 for i in r["images"])
    assert rib.problems(r) == []


def test_a_missing_image_is_reported(report_dir):
    (report_dir / "expert_usage.png").unlink()
    r = rib.check_report(report_dir, BROWSER)
    assert [i["src"] for i in r["images"] if not i["ok"]] == ["expert_usage.png"]
    assert rib.problems(r) == ["image expert_usage.png did not load"]
    assert rib.main([str(report_dir)]) == 1


def test_screenshot_is_a_small_png(report_dir, tmp_path):
    out = rib.screenshot(report_dir, tmp_path / "shot.png", BROWSER, height=900)
    from PIL import Image
    with Image.open(out) as im:
        assert im.size == (900, 675)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 10  # the page, not a blank shot
    assert out.stat().st_size < 300_000
