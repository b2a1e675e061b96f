"""A real browser on the Dataset and Presets tabs, and a screenshot of every tab (issue 16).

Screenshots go to test-artifacts/; with RADIAL_STUDIO_SCREENSHOTS=1 the per-tab ones are also
written to docs/screenshots/<tab>.png for the README (1280x800, PNG).
"""

import os
import re
from pathlib import Path

import pytest

from tests.data.test_dataset_view import snapshot
from tests.data.test_mixed_dataset import write_mixed_folder

from tests.ui.test_browser import ARTIFACTS, CHROMIUM, playwright_api  # skips this module where test_browser does

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "screenshots"
TABS = ["Length extension", "Dataset", "Test-time adaptation", "Compare", "Generate", "Hub", "Presets"]


@pytest.fixture(scope="module")
def page(app_url):
    ARTIFACTS.mkdir(exist_ok=True)
    _, root = app_url
    (root / "data" / "clips").mkdir()
    write_mixed_folder(root / "data" / "clips")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        yield page
        browser.close()


def _show_dataset(page, url, folder="clips"):
    page.goto(url)
    page.get_by_role("tab", name="Dataset").click()
    box = page.get_by_role("combobox", name="Dataset folder (under the data root)")
    box.fill(folder)
    box.press("Enter")
    page.get_by_role("button", name="Show", exact=True).click()


_THUMBNAILS_LOADED = """() => { const imgs = [...document.querySelectorAll('#dataset-gallery img')];
  return imgs.length >= 5 && imgs.every(i => i.complete && i.naturalWidth > 0); }"""


@pytest.mark.slow
def test_the_dataset_tab_shows_clips_and_saves_an_edited_caption(page, app_url):
    url, root = app_url
    _show_dataset(page, url)
    page.wait_for_function(_THUMBNAILS_LOADED, timeout=60_000)  # served PNGs, decoded by the browser
    table = page.locator("#dataset-table")
    assert "48x80" in table.inner_text() and "too short: 20 frames" in table.inner_text()
    assert "5 clips, 3 used, 2 skipped" in page.locator("#dataset-summary").inner_text()
    page.screenshot(path=str(ARTIFACTS / "dataset-view.png"), full_page=True)

    table.get_by_text("tall.mp4", exact=True).first.click()  # a row picks its clip
    caption = page.get_by_label("Caption", exact=True)
    page.wait_for_function("() => [...document.querySelectorAll('textarea')].some("
                           "t => t.value === 'a tall clip, moving right')", timeout=30_000)
    before = snapshot(root / "data")
    caption.fill("a tall clip, now edited in the browser")
    page.get_by_role("button", name="Save caption").click()
    page.locator("#dataset-message", has_text="Saved the caption of tall.mp4").wait_for(timeout=30_000)
    after = snapshot(root / "data")
    assert after.pop("clips/tall.txt")[0] == b"a tall clip, now edited in the browser\n"
    assert after == {k: v for k, v in before.items() if k != "clips/tall.txt"}
    page.wait_for_function("() => (document.querySelector('#dataset-table')?.innerText || '')"
                           ".includes('now edited in the browser')", timeout=30_000)  # the view refreshed
    page.screenshot(path=str(ARTIFACTS / "dataset-caption-saved.png"), full_page=True)


@pytest.mark.slow
def test_a_folder_outside_the_data_root_is_refused_with_a_message_and_the_tab_keeps_working(page, app_url):
    url, root = app_url
    _show_dataset(page, url, "../outside")
    message = page.locator(".toast-message-text", has_text="contains '..'").first
    message.wait_for(timeout=30_000)
    assert str(root) not in message.inner_text()
    page.screenshot(path=str(ARTIFACTS / "dataset-refused.png"), full_page=True)
    box = page.get_by_role("combobox", name="Dataset folder (under the data root)")
    box.fill("clips")
    box.press("Enter")
    page.get_by_role("button", name="Show", exact=True).click()
    page.locator("#dataset-table", has_text="ucf.mp4").wait_for(timeout=60_000)


@pytest.mark.slow
def test_the_presets_tab_groups_presets_by_task_with_their_needs(page, app_url):
    url, _ = app_url
    page.goto(url)
    page.get_by_role("tab", name="Presets").click()
    extension = page.locator("#presets-length_extension")
    extension.get_by_text("wan2.1-t2v-1.3b", exact=True).wait_for(timeout=30_000)
    assert "16.5 GiB" in extension.inner_text() and "tiny-opensora2" not in extension.inner_text()
    page.get_by_role("button", name=re.compile(r"^Test-time adaptation \(\d+\)")).click()
    page.locator("#presets-tta").get_by_text("tiny-opensora2", exact=True).wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "presets-guide.png"), full_page=True)


def _slug(tab: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", tab.lower()).strip("-")


@pytest.mark.slow
def test_a_screenshot_of_every_tab(page, app_url):
    """README screenshots: 1280x800 viewport shots, the Dataset tab showing a folder."""
    url, _ = app_url
    for tab in TABS:
        if tab == "Dataset":
            _show_dataset(page, url)
            page.wait_for_function(_THUMBNAILS_LOADED, timeout=60_000)
        else:
            page.goto(url)
            page.get_by_role("tab", name=tab).click()
        page.wait_for_timeout(1_000)  # let plots and accordions settle
        shot = ARTIFACTS / f"tab-{_slug(tab)}.png"
        page.screenshot(path=str(shot))
        if os.environ.get("RADIAL_STUDIO_SCREENSHOTS") == "1":
            _save_small(shot, SCREENSHOTS / f"{_slug(tab)}.png")


def _save_small(shot: Path, out: Path) -> None:
    """A 256-colour PNG: a UI screenshot loses nothing visible and shrinks to a third or less (the README's)."""
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(shot) as im:
        im.convert("RGB").quantize(colors=256).save(out, format="PNG", optimize=True)
