"""Open a run's HTML report in a real headless browser (Debian's chromium): check that it
renders and that every image loads, and optionally take a screenshot.

    .venv/bin/python benchmarks/report_in_browser.py RUN_DIR                 # check, print JSON
    .venv/bin/python benchmarks/report_in_browser.py RUN_DIR --screenshot docs/images/report.png

Needs a Chromium or Chrome binary (``apt-get install chromium``; or $MMCL_BROWSER). The check
loads a copy of report.html (in a temporary folder, with a <base> pointing at the run folder,
so the images are the run's own files) with a small script that, on the page's load event,
records every <img>'s ``complete`` / ``naturalWidth`` and the page's headings and tables in an
element that ``--dump-dom`` prints. Exit status 1 when an image did not load or the page has no
title heading. tests/test_browser.py runs it on a fixture report (skipped without a browser).
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# As Debian's chromium needs them here: no sandbox as root, no GPU, and no background
# connections (the network is closed; they only slow the start down).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-component-update", "--disable-sync", "--disable-quic", "--hide-scrollbars",
         "--allow-file-access-from-files"]

_PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.map.call(document.images, function (i) {
    return {src: i.getAttribute("src"), ok: i.complete && i.naturalWidth > 0,
            width: i.naturalWidth, height: i.naturalHeight};
  });
  var h1 = document.querySelector("h1");
  var r = {title: document.title, h1: h1 ? h1.textContent : "", h2: Array.prototype.map.call(
             document.querySelectorAll("h2"), function (h) { return h.textContent; }),
           tables: document.querySelectorAll("table").length, images: imgs,
           height: document.documentElement.scrollHeight};
  var pre = document.createElement("pre");
  pre.id = "mmcl-check";
  pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
});
</script>"""


def find_browser() -> str | None:
    """$MMCL_BROWSER, else chromium / chromium-browser / google-chrome on PATH, else None."""
    env = os.environ.get("MMCL_BROWSER")
    if env:
        return env if shutil.which(env) or Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run_browser(browser: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="mmcl-browser-") as profile:
        return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout, check=False)


def check_report(run_dir: str | Path, browser: str | None = None, timeout: float = 120) -> dict:
    """Load RUN_DIR/report.html in the browser; returns what the page's probe recorded
    (title, h1, h2 list, table count, images with ok/width/height, page height)."""
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium/Chrome found: apt-get install chromium, or set MMCL_BROWSER")
    run_dir = Path(run_dir).resolve()
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    base = f'<base href="{run_dir.as_uri()}/">'
    probed = page.replace("<head>", "<head>\n" + base, 1).replace("</body>", _PROBE + "\n</body>", 1)
    with tempfile.TemporaryDirectory(prefix="mmcl-report-") as tmp:
        copy = Path(tmp) / "report.html"
        copy.write_text(probed, encoding="utf-8")
        proc = _run_browser(browser, ["--virtual-time-budget=10000", "--dump-dom", copy.as_uri()], timeout)
    m = re.search(r'<pre id="mmcl-check">(.*?)</pre>', proc.stdout, re.S)
    if not m:
        raise RuntimeError(f"the browser printed no check result (exit {proc.returncode}); its stderr ends: "
                           f"{proc.stderr[-1500:]}")
    return json.loads(html.unescape(m.group(1)))


def screenshot(run_dir: str | Path, out: str | Path, browser: str | None = None, width: int = 1200,
               height: int | None = None, scale_to: int = 900, timeout: float = 120) -> Path:
    """A PNG of the report's first ``height`` pixels (default: the whole page), downscaled to
    ``scale_to`` pixels wide and reduced to 256 colours to stay small."""
    from PIL import Image
    browser = browser or find_browser()
    run_dir = Path(run_dir).resolve()
    if height is None:
        height = int(check_report(run_dir, browser, timeout)["height"]) + 20
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mmcl-shot-") as tmp:
        raw = Path(tmp) / "shot.png"
        proc = _run_browser(browser, [f"--screenshot={raw}", f"--window-size={width},{height}",
                                      "--virtual-time-budget=10000", (run_dir / "report.html").as_uri()], timeout)
        if not raw.exists():
            raise RuntimeError(f"no screenshot (exit {proc.returncode}): {proc.stderr[-1500:]}")
        with Image.open(raw) as im:
            im = im.convert("RGB")
            if im.width > scale_to:
                im = im.resize((scale_to, round(im.height * scale_to / im.width)), Image.LANCZOS)
            im.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return out


def problems(result: dict) -> list[str]:
    out = [f"image {i['src']} did not load" for i in result["images"] if not i["ok"]]
    if not result.get("h1"):
        out.append("the page has no title heading")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--screenshot", metavar="PNG", help="also write a screenshot of the whole page")
    ap.add_argument("--height", type=int, default=None, help="screenshot height in CSS pixels (default: whole page)")
    ap.add_argument("--browser", default=None, help="browser binary (default: $MMCL_BROWSER or chromium on PATH)")
    args = ap.parse_args(argv)
    browser = args.browser or find_browser()
    if browser is None:
        print("no Chromium/Chrome found: apt-get install chromium, or set MMCL_BROWSER", file=sys.stderr)
        return 2
    result = check_report(args.run_dir, browser)
    print(json.dumps(result, indent=1))
    if args.screenshot:
        print(screenshot(args.run_dir, args.screenshot, browser, height=args.height))
    bad = problems(result)
    for p in bad:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
