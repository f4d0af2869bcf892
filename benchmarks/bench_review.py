"""How responsive ``facesynth review`` is on a large dataset, measured in the system's headless Chromium.

    python benchmarks/bench_review.py                      # makes /tmp/review-30k first (about 10 minutes)
    python benchmarks/bench_review.py --folder DIR --repeat 7

The dataset is 30,000 rows of the tiny preset (1 candidate, 1 step, 32x32 px, so that it can be made on a
CPU); every row is a real row of a real shard. Measured:

- server start: reading the label and score columns of every shard into memory;
- first paint: from navigation to the first page of tiles drawn with every thumbnail loaded, and the
  browser's own first-contentful-paint;
- filter change: from changing a filter to the new tiles drawn with their thumbnails (median of ``--repeat``);
- the server's ``/api/rows`` time for the same queries, and its memory after loading;
- one thumbnail of a 512x512 PNG (what an SD 1.5 dataset's tiles cost; the 30k rows here are smaller).

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
MAKE = ["generate", "emotions", "--model", "tiny", "-n", "30000", "--candidates", "1", "--steps", "1", "--width", "32",
        "--height", "32", "--batch-size", "64", "--quiet"]
CHANGES = [("#f-emotion", "sad"), ("#f-gender", "female"), ("#f-ethnicity", "east_asian"), ("#f-split", "test"),
           ("#f-sort", "label_confidence:asc"), ("#f-status", "kept")]


def make(folder: Path) -> None:
    if not (folder / "manifest.json").exists():
        print(f"making {folder} (30,000 tiny rows)...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "facesynth.cli", *MAKE, "--out", str(folder)], check=True)


def ready(page, seq: int) -> None:
    page.wait_for_selector(f"body[data-ready='{seq}']", timeout=120_000)
    page.wait_for_function("Array.from(document.querySelectorAll('.tile img')).filter(i => { const r = "
                           "i.getBoundingClientRect(); return r.top < innerHeight && r.bottom > 0; })"
                           ".every(i => i.complete && i.naturalWidth > 0)", timeout=120_000)


def api_ms(url: str, query: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        with urllib.request.urlopen(url + "api/rows?" + query) as response:
            response.read()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def thumbnail_512_ms(repeat: int) -> float:
    from facesynth.review.gallery import THUMB

    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).resize((512, 512), Image.BICUBIC)
    buf = io.BytesIO()
    smooth.save(buf, format="PNG")
    png = buf.getvalue()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        image = Image.open(io.BytesIO(png)).convert("RGB")
        image.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=85)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/review-30k"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    make(args.folder)
    from playwright.sync_api import sync_playwright

    from facesynth.review.server import ReviewServer

    start = time.perf_counter()
    server = ReviewServer(args.folder, 0).start()
    start_s = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = len(server.gallery)
    result: dict = {"rows": rows, "server_start_s": round(start_s, 2), "server_peak_rss_mb": round(rss_mb)}
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=FLAGS, headless=True)
            first, fcp = [], []
            for _ in range(args.repeat):
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                begin = time.perf_counter()
                page.goto(server.url)
                ready(page, 0)
                first.append((time.perf_counter() - begin) * 1000)
                fcp.append(page.evaluate("performance.getEntriesByName('first-contentful-paint')[0].startTime"))
                page.close()
            result["first_paint_ms"] = round(statistics.median(first))
            result["first_contentful_paint_ms"] = round(statistics.median(fcp))
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server.url)
            ready(page, 0)
            seq, changes = 0, {}
            for selector, value in CHANGES:
                times = []
                for k in range(args.repeat):
                    target = value if k % 2 == 0 else ""
                    if selector == "#f-sort":
                        target = value if k % 2 == 0 else "clip_score:desc"
                    elif selector == "#f-status":
                        target = value if k % 2 == 0 else "all"
                    begin = time.perf_counter()
                    page.select_option(selector, target)
                    seq += 1
                    ready(page, seq)
                    times.append((time.perf_counter() - begin) * 1000)
                page.select_option(selector, value)  # the filters add up, as a reviewer narrows down
                seq += 1
                ready(page, seq)
                changes[f"{selector[3:]}={value}"] = round(statistics.median(times))
            result["filter_change_ms"] = changes
            page.goto(server.url)  # all rows again
            ready(page, 0)
            begin = time.perf_counter()
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            page.wait_for_function(f"document.querySelectorAll('.tile').length > {min(rows, 240)}", timeout=60_000)
            result["next_page_on_scroll_ms"] = round((time.perf_counter() - begin) * 1000)
            browser.close()
        result["api_rows_ms"] = {q: round(api_ms(server.url, q, args.repeat), 1) for q in
                                 ("", "emotion=sad", "emotion=sad&gender=female&ethnicity=east_asian",
                                  "status=rejected", "sort=label_confidence&order=asc")}
    finally:
        server.stop()
    result["thumbnail_512px_ms"] = round(thumbnail_512_ms(args.repeat * 4), 1)
    print(f"{rows} rows: server start {result['server_start_s']} s (peak RSS {result['server_peak_rss_mb']} MB), "
          f"first paint {result['first_paint_ms']} ms (FCP {result['first_contentful_paint_ms']} ms)")
    for name, ms in result["filter_change_ms"].items():
        print(f"  filter {name}: {ms} ms")
    for name, ms in result["api_rows_ms"].items():
        print(f"  /api/rows?{name}: {ms} ms")
    print(f"  next page on scroll: {result['next_page_on_scroll_ms']} ms; "
          f"one 512 px thumbnail: {result['thumbnail_512px_ms']} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
