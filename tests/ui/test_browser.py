"""A real browser (Debian's chromium, driven by Playwright) on the app: train, watch, reload.

Screenshots go to test-artifacts/ for a person to look at.
"""

import os
import re
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("RADIAL_STUDIO_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-test.txt)")
if not shutil.which(CHROMIUM) and not Path(CHROMIUM).is_file():
    pytest.skip(f"no chromium at {CHROMIUM}: install Debian's chromium package (.ci/run does)", allow_module_level=True)


@pytest.fixture(scope="module")
def page(app_url):
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        yield page
        browser.close()


def _status_text(page) -> str:
    return page.locator("#train-status").inner_text()


def _show_run(page, url, run_id):
    """The Length extension tab with `run_id` typed into the run list (as a user picks a past run)."""
    page.goto(url)
    page.get_by_role("tab", name="Length extension").click()
    box = page.get_by_role("combobox", name="Run")
    box.fill(run_id)
    box.press("Enter")


def _type(page, label, value):
    field = page.get_by_label(label, exact=True).locator("visible=true").first
    field.fill(value)
    field.press("Tab")


@pytest.mark.slow
def test_browser_starts_training_sees_losses_and_reattaches_after_reload(page, app_url):
    url, _ = app_url
    page.goto(url)
    page.get_by_role("tab", name="Length extension").click()
    page.get_by_role("button", name="Start", exact=True).click()
    # The status line names the run and counts steps; wait for a few.
    page.wait_for_function(
        "() => { const t = document.querySelector('#train-status')?.innerText || '';"
        " const m = t.match(/step (\\d+)\\/(\\d+)/); return m && Number(m[1]) >= 3; }", timeout=180_000)
    run_id = re.search(r"(\d{8}-\d{6}-[0-9a-f]{6})", _status_text(page)).group(1)
    # The loss plot draws its lines once loss points arrive: line marks with a colour, and a legend
    # naming the series (paths alone are not enough: without a colour scale they are invisible).
    page.wait_for_function(
        "() => { const lines = [...document.querySelectorAll('#loss-plot .mark-line path')];"
        " const labels = [...document.querySelectorAll('#loss-plot .role-legend-label text')].map(t => t.textContent);"
        " return lines.length > 0 && lines.every(p => (p.getAttribute('stroke') || 'none') !== 'none')"
        " && labels.includes('total') && labels.includes('validation'); }", timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "train-running.png"), full_page=True)

    page.reload()
    page.wait_for_function(
        f"() => (document.querySelector('#train-status')?.innerText || '').includes('{run_id}')", timeout=60_000)
    assert run_id in _status_text(page)
    page.screenshot(path=str(ARTIFACTS / "train-after-reload.png"), full_page=True)
    page.get_by_role("button", name="Stop", exact=True).click()
    page.wait_for_function(
        "() => /stopped|finished/.test(document.querySelector('#train-status')?.innerText || '')", timeout=180_000)
    page.screenshot(path=str(ARTIFACTS / "train-stopped.png"), full_page=True)


@pytest.mark.slow
@pytest.mark.parametrize("tab", ["Compare", "Hub"])
def test_an_adapter_finished_after_the_page_loaded_is_offered_when_its_tab_opens(page, app_url, tiny_preset, tab):
    from tests.run_factory import make_finished_run

    url, root = app_url
    page.goto(url)
    page.get_by_role("tab", name="Length extension").click()
    run_id = f"20261202-0000{'01' if tab == 'Compare' else '02'}-abcdef"
    make_finished_run(root / "runs" / run_id, tiny_preset)  # finished while the page was open
    page.get_by_role("tab", name=tab).click()
    # The adapter dropdown (a combobox named by its label): its options are the finished adapters.
    page.get_by_role("combobox", name=re.compile(r"^Adapter")).locator("visible=true").first.click()
    page.get_by_role("option", name=f"run {run_id} (final)").wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / f"{tab.lower()}-adapters.png"), full_page=True)


_LEGEND_INSIDE = """() => {
  const box = document.querySelector('#loss-plot')?.getBoundingClientRect();
  const labels = [...document.querySelectorAll('#loss-plot .role-legend-label text')];
  if (!box || labels.length === 0) return null;
  return labels.map(t => { const r = t.getBoundingClientRect();
    return {name: t.textContent, inside: r.height > 0 && r.top >= box.top && r.bottom <= box.bottom}; });
}"""
_STROKES = "() => [...document.querySelectorAll('#loss-plot .mark-line path')].map(p => p.getAttribute('stroke') || 'none')"


@pytest.mark.slow
def test_the_loss_legend_shows_every_series_inside_the_plot_even_when_validation_comes_first(page, app_url):
    """Issue 16 defects 1 and 2: the legend fell below the plot box (only its title showed), and a plot whose
    first points were a run's step-0 validation kept a one-entry legend and colourless lines for the rest."""
    from engine.jobs import RunDir, atomic_write_json

    url, root = app_url
    run_id = "20261202-000003-abcdef"
    run = RunDir(root / "runs" / run_id)
    run.path.mkdir(parents=True)
    atomic_write_json(run.config_path, {"preset": "tiny-wan", "max_steps": 6})
    run.update_status(state="stopped", step=0, total_steps=6)
    run.append_event({"type": "validation", "step": 0, "val_loss": 0.6})  # what a run shows first
    _show_run(page, url, run_id)
    page.wait_for_function("() => document.querySelectorAll('#loss-plot .role-legend-label text').length > 0",
                           timeout=60_000)
    for s in range(1, 7):  # the run goes on: its training terms arrive at the next polls
        run.append_event({"type": "train", "step": s, "loss": 1.0 / s, "loss_base": 0.5 / s,
                          "loss_extended": 0.5 / s, "loss_consistency": 0.01 / s})
    run.update_status(state="stopped", step=6, total_steps=6)
    page.wait_for_function("() => document.querySelectorAll('#loss-plot .mark-line path').length >= 5",
                           timeout=60_000)
    page.wait_for_timeout(2500)
    legend = page.evaluate(_LEGEND_INSIDE)
    assert sorted(e["name"] for e in legend) == ["base", "consistency", "extended", "total", "validation"]
    assert all(e["inside"] for e in legend), legend  # defect 1: entries below the box
    strokes = page.evaluate(_STROKES)
    assert len(strokes) == 5 and "none" not in strokes and len(set(strokes)) == 5, strokes
    page.locator("#loss-plot").screenshot(path=str(ARTIFACTS / "train-loss-legend.png"))


@pytest.mark.slow
def test_the_run_list_label_follows_the_run_to_its_end(page, app_url):
    """Issue 16 defect 5: the run dropdown kept the label it had at Start ("running, 0/40")."""
    url, _ = app_url
    page.goto(url)
    page.get_by_role("tab", name="Length extension").click()
    before = _status_text(page)
    page.get_by_role("button", name="Start", exact=True).click()
    page.wait_for_function(
        "before => { const t = document.querySelector('#train-status')?.innerText || '';"
        " return t !== before && /finished/.test(t); }", arg=before, timeout=240_000)
    run_id = re.search(r"(\d{8}-\d{6}-[0-9a-f]{6}): finished", _status_text(page)).group(1)
    box = page.get_by_role("combobox", name="Run")
    page.wait_for_function(
        "([el, id]) => el.value.includes(id) && /finished, (\\d+)\\/\\1\\)/.test(el.value)",
        arg=[box.element_handle(), run_id], timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "train-run-label.png"), full_page=True)


@pytest.mark.slow
def test_the_form_shows_the_settings_of_the_run_on_display(page, app_url, tiny_preset):
    """Issue 16 defect 5: the form showed the preset's defaults whatever run was on display."""
    from engine.config import read_config_file
    from tests.run_factory import make_finished_run

    url, root = app_url
    run_id = "20261202-000004-abcdef"
    make_finished_run(root / "runs" / run_id, tiny_preset)  # max_steps 10 (the preset says 40)
    config = read_config_file(root / "runs" / run_id / "config.json")
    _show_run(page, url, run_id)
    steps = page.get_by_label("Steps", exact=True)
    page.wait_for_function("el => el.value === '10'", arg=steps.element_handle(), timeout=30_000)
    assert float(page.get_by_label("Learning rate", exact=True).input_value()) == config["learning_rate"]
    assert page.get_by_label("LoRA rank", exact=True).input_value() == str(config["lora_rank"])
    page.screenshot(path=str(ARTIFACTS / "train-run-settings.png"), full_page=True)


@pytest.mark.slow
def test_compare_shows_a_readable_summary_not_a_raw_json_block(page, app_url):
    """Issue 16 defect 8 (second half): Compare's results were a raw JSON block of server paths."""
    url, root = app_url
    page.goto(url)
    page.get_by_role("tab", name="Compare").click()
    for label, value in (("Base frames", "5"), ("Extended frames", "9"), ("Steps", "1")):
        _type(page, label, value)
    page.get_by_role("button", name="Compare", exact=True).click()
    page.wait_for_function("() => (document.querySelector('#compare-summary')?.innerText || '').includes('radial')",
                           timeout=180_000)
    text = page.locator("#compare-summary").inner_text()
    assert "dense" in text and "per frame" in text and "1.8x as long" in text  # 9 frames vs 5
    assert str(root) not in page.content()  # no server path on the page
    assert page.get_by_label("Timings and settings").count() == 0 or not page.get_by_label(
        "Timings and settings").first.is_visible()
    page.screenshot(path=str(ARTIFACTS / "compare-summary.png"), full_page=True)


@pytest.mark.slow
def test_an_error_message_stays_until_the_user_closes_it(page, app_url):
    """Issue 16 defect 10: error toasts vanished after ~10 s, leaving a bare "Error" badge."""
    url, _ = app_url
    page.goto(url)
    page.get_by_role("tab", name="Length extension").click()
    # A server folder outside the data root: refused with a clear message. (Not a bad frame count: the form
    # takes the settings of the run on display once the page has loaded, which could undo a typed value.)
    page.get_by_label("folder", exact=True).check()
    _type(page, "Server folder (relative to the data root)", "../outside")
    page.get_by_role("button", name="Start", exact=True).click()
    message = page.locator(".toast-message-text", has_text="outside").first  # the toast itself
    message.wait_for(timeout=30_000)
    page.wait_for_timeout(13_000)  # past Gradio's default 10 s
    assert message.is_visible()
    page.screenshot(path=str(ARTIFACTS / "error-stays.png"), full_page=True)


@pytest.mark.slow
def test_generate_shows_its_history_in_a_gallery(page, app_url):
    url, _ = app_url
    page.goto(url)
    page.get_by_role("tab", name="Generate").click()
    _type(page, "Steps", "1")
    page.get_by_role("button", name="Generate", exact=True).click()
    page.locator("#generate-history video").first.wait_for(timeout=120_000)
    caption = page.locator("#generate-history").inner_text()
    assert "a red circle moves left" in caption and "seed 0" in caption
    page.screenshot(path=str(ARTIFACTS / "generate-history.png"), full_page=True)
