"""The review gallery in a real headless Chromium (the system's, driven by Playwright): the page loads,
filters and sorting work, rejections are saved (click, keyboard, many at once), and the same generate
command then replaces exactly the rejected rows.

Set FACESYNTH_SCREENSHOTS=DIR to keep the screenshots (the README's come from here).
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import rows, shard_bytes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytest.importorskip("starlette", reason="the review extra (starlette, uvicorn) is not installed")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")]

from facesynth.generation import GenerateConfig, generate  # noqa: E402
from facesynth.review.server import ReviewServer  # noqa: E402
from facesynth.review.verdicts import read_verdicts  # noqa: E402

# Offline and quiet: no background requests to Google's hosts, no GPU, no sandbox (CI runs as root).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions"]
DEMO = dict(recipe="emotions", num_samples=24, model="tiny", quiet=True, rows_per_shard=8, batch_size=12)


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield chromium
        chromium.close()


def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("FACESYNTH_SCREENSHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_ready(page, seq):
    """The gallery has drawn the answer to request ``seq`` and every visible thumbnail has loaded."""
    page.wait_for_selector(f"body[data-ready='{seq}']")
    page.wait_for_function("Array.from(document.querySelectorAll('.tile img')).every(i => i.complete && "
                           "i.naturalWidth > 0)")


def tiles(page):
    return page.locator(".tile").evaluate_all(
        "els => els.map(e => ({sid: e.dataset.sid, label: e.closest('section').dataset.label, "
        "rejected: e.classList.contains('rejected')}))")


def test_review_in_the_browser_then_regenerate_exactly_the_rejected_rows(browser, demo_copy, tmp_path):
    server = ReviewServer(demo_copy, 0).start()
    folder = shots(tmp_path)
    before = shard_bytes(demo_copy)
    errors = []
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url)
        wait_ready(page, 0)
        shown = tiles(page)
        assert len(shown) == 24 and not errors
        assert page.locator("section h2").all_inner_texts() == [f"emotion: {e} (6 rows)" for e in
                                                                 ("happy", "sad", "angry", "surprised")]
        page.screenshot(path=str(folder / "review-gallery.png"))

        # filters: one emotion, then one split too; every tile shown matches
        page.select_option("#f-emotion", "sad")
        wait_ready(page, 1)
        sad = tiles(page)
        stored = {r["sample_id"]: r for r in rows(demo_copy, ["sample_id", "emotion", "clip_score"])}
        assert len(sad) == 6 and {t["label"] for t in sad} == {"sad"}
        assert all(stored[t["sid"]]["emotion"] == 1 for t in sad)
        page.select_option("#f-sort", "clip_score:asc")
        wait_ready(page, 2)
        scores = [stored[t["sid"]]["clip_score"] for t in tiles(page)]
        assert scores == sorted(scores)
        page.select_option("#f-split", "train")
        wait_ready(page, 3)
        assert len(tiles(page)) == 4

        # open one: the full image and its columns; reject it from the keyboard, with a reason
        page.fill("#reason", "six fingers")
        first = page.locator(".tile").first
        target = first.get_attribute("data-sid")
        first.click()
        page.wait_for_selector("dialog[open] #d-columns tr")
        assert page.locator("#d-title").inner_text().startswith(target)
        page.wait_for_function("document.getElementById('full').complete && "
                               "document.getElementById('full').naturalWidth > 0")
        page.screenshot(path=str(folder / "review-detail.png"))
        page.keyboard.press("x")
        page.wait_for_selector("body[data-saved='1']")
        assert page.locator("#d-state").inner_text() == "rejected: six fingers"
        page.keyboard.press("Escape")
        assert [(v.sample_id, v.reason) for v in read_verdicts(demo_copy)] == [(target, "six fingers")]

        # select many (a checkbox, then shift-click for the range) and reject them at once
        page.select_option("#f-split", "")
        page.select_option("#f-emotion", "happy")
        wait_ready(page, 5)
        page.fill("#reason", "")
        boxes = page.locator(".tile input[type=checkbox]")
        boxes.nth(0).click()
        boxes.nth(2).click(modifiers=["Shift"])
        many = [t["sid"] for t in tiles(page)][:3]
        assert page.locator("#nsel").inner_text() == "3"
        page.click("#reject-selected")
        page.wait_for_selector("body[data-saved='4']")
        assert [t["rejected"] for t in tiles(page)][:4] == [True, True, True, False]
        # change of mind: restore one with the keyboard
        page.locator(".tile").nth(1).focus()
        page.click("#clear-selection")
        page.locator(".tile").nth(1).focus()
        page.keyboard.press("u")
        page.wait_for_selector("body[data-saved='5']")
        page.select_option("#f-emotion", "")
        page.select_option("#f-status", "rejected")
        wait_ready(page, 7)
        rejected = [t["sid"] for t in tiles(page)]
        page.screenshot(path=str(folder / "review-rejected.png"))
        assert sorted(rejected) == sorted([target, many[0], many[2]])
        assert not errors
    finally:
        server.stop()
    assert shard_bytes(demo_copy) == before  # review never writes the shards

    old = {r["sample_id"]: r for r in rows(demo_copy, ["sample_id", "seed", "attempt"])}
    result = generate(GenerateConfig(out=demo_copy, **DEMO))
    assert result.replaced == 3
    new = {r["sample_id"]: r for r in rows(demo_copy, ["sample_id", "seed", "attempt"])}
    assert {sid for sid in old if old[sid] != new[sid]} == set(rejected)
    manifest = json.loads((demo_copy / "manifest.json").read_text())
    assert manifest["review"]["rejected"] == 3 and manifest["version"] == "1.1.0"


def test_an_odd_folder_name_is_shown_as_text(browser, demo_dataset, tmp_path):
    odd = tmp_path / 'faces <!-- "x" <script>alert(1)<\\script> ü'
    shutil.copytree(demo_dataset, odd)
    server = ReviewServer(odd, 0).start()
    errors, dialogs = [], []
    try:
        page = browser.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(server.url)
        wait_ready(page, 0)
        assert page.locator("#name").inner_text().startswith(odd.name + " (emotions")
        assert len(tiles(page)) == 24 and not errors and not dialogs
    finally:
        server.stop()


def test_a_verdict_that_cannot_be_saved_is_said_on_the_page(browser, demo_dataset, tmp_path):
    """On a read-only folder (a real tmpfs remounted read-only) the page shows why nothing was saved; the tile
    stays as it was."""
    from conftest import remount, tmpfs

    with tmpfs(tmp_path / "disk", size="8m") as disk:
        folder = disk / "demo"
        shutil.copytree(demo_dataset, folder)
        remount(disk, "ro")
        server = ReviewServer(folder, 0).start()
        errors = []
        try:
            page = browser.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.url)
            wait_ready(page, 0)
            page.locator(".tile").nth(0).focus()
            page.keyboard.press("x")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('not saved')")
            status = page.locator("#status").inner_text()
            assert "Read-only file system" in status and "the verdict was not saved" in status
            assert not any(t["rejected"] for t in tiles(page)) and not errors
        finally:
            server.stop()
            remount(disk, "rw")
        assert not (folder / "verdicts.jsonl").exists()
