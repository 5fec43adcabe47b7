"""The live page in a real browser: Debian's chromium, driven by Playwright, against
`streamlit run` on a free local port. Start a run, watch the Step metric advance and the
plotly charts render, and keep a screenshot in the test's temporary directory; type values
the settings refuse; step a paused run and watch the heatmaps follow."""

from __future__ import annotations

import time

from playwright.sync_api import expect, sync_playwright

from appserver import HEATMAP_TITLES, LAST_PLOTTED_STEP, launch, open_live_page, serve_app
from nlviz import LevelSpec, TrainConfig, open_run
from nlviz.config import ConfigError

# Streamlit prints this when st.* runs outside a session: a run's process drawing the page.
NO_SESSION = "missing ScriptRunContext"


def _step(page) -> int:
    metric = page.locator('[data-testid="stMetric"]').filter(has_text="Step").first
    return int(metric.locator('[data-testid="stMetricValue"]').inner_text().strip())


def test_start_a_run_and_watch_it_live(tmp_path):
    with serve_app(tmp_path / "runs", tmp_path / "streamlit.log") as url, sync_playwright() as p:
        browser = launch(p)
        try:
            # The form's largest run, so that it is still running when Pause is clicked below on
            # any machine: 3000 steps (the default) can end first on a fast machine, or while the
            # charts render on a slow one; 100,000 last only about three minutes at this
            # machine's 590 steps/s, a margin a faster machine eats.
            page, start = open_live_page(browser, url, steps=10**7, viewport=(1400, 1100))
            start.click()
            metric = page.locator('[data-testid="stMetric"]').filter(has_text="Step").first
            expect(metric).to_be_visible(timeout=60_000)
            first = _step(page)
            deadline = time.monotonic() + 60
            while _step(page) <= first and time.monotonic() < deadline:
                page.wait_for_timeout(200)
            second = _step(page)
            assert second > first, f"the Step metric stayed at {first}"
            # every time panel drawn by plotly (loss, clock, surprise, update sizes)
            expect(page.locator(".js-plotly-plot .main-svg").nth(3)).to_be_visible(timeout=60_000)
            deadline = time.monotonic() + 60
            while page.evaluate(LAST_PLOTTED_STEP) < 1 and time.monotonic() < deadline:
                page.wait_for_timeout(200)
            assert page.evaluate(LAST_PLOTTED_STEP) >= 1  # the loss chart holds recorded steps
            shot = tmp_path / "live.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 20_000
            page.get_by_role("button", name="Pause", exact=True).click()
            expect(page.locator('[data-testid="stMetric"]').filter(has_text="paused")).to_be_visible(timeout=60_000)
        finally:
            browser.close()
    log = (tmp_path / "streamlit.log").read_text()
    assert "Traceback" not in log and NO_SESSION not in log, log


def _message(make) -> str:
    try:
        make()
    except ConfigError as e:
        return str(e)
    raise AssertionError("the library accepted it")


def _errors(page) -> list[str]:
    # st.error renders markdown, which shows ">=" as the sign; compare the library's text the same way
    return [e.inner_text().replace("\u2265", ">=") for e in page.locator('[data-testid="stAlertContentError"]').all()]


def _until(page, condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        page.wait_for_timeout(100)


def _type_in_last_column(page, row: int, holds: str, text: str) -> None:
    """Replace what a cell of the levels table's last column holds (`holds`, as the cell's editor
    shows it) by `text`. The table is a canvas: the cell is found by position, rows 35 px high
    under a 35 px header; its editor is an input of its own."""
    grid = page.locator('[data-testid="stDataFrame"] canvas').first
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    page.mouse.dblclick(box["x"] + box["width"] - 60, box["y"] + 35 * (row + 1) + 17)
    editor = page.locator("input.gdg-input")
    expect(editor).to_have_value(holds, timeout=10_000)  # the editor of that very cell
    editor.fill(text)
    expect(editor).to_have_value(text)
    editor.press("Enter")
    expect(editor).to_be_hidden(timeout=10_000)


def test_values_the_settings_refuse_are_shown_and_start_is_disabled(tmp_path):
    """The widgets pass what was typed to the config's validation: nothing is clamped, rounded
    or kept from before, the library's message names the field, and Start waits."""
    with serve_app(tmp_path / "runs", tmp_path / "streamlit.log") as url, sync_playwright() as p:
        browser = launch(p)
        try:
            page, start = open_live_page(browser, url, steps=40, viewport=(1400, 1100))
            steps = page.get_by_label("Steps")
            for typed, make in (("0", lambda: TrainConfig(steps=0)), ("1.5", lambda: TrainConfig(steps=1.5))):
                steps.fill(typed)
                page.keyboard.press("Enter")
                _until(page, lambda: _errors(page) == [_message(make)], f"the message for Steps {typed}")
                expect(start).to_be_disabled()
                assert steps.input_value() == typed
            steps.fill("40")
            page.keyboard.press("Enter")
            summary = page.locator('[data-testid="stCaptionContainer"]').filter(has_text="trains:")
            expect(summary).to_contain_text("40 steps", timeout=60_000)
            expect(start).to_be_enabled()
            _type_in_last_column(page, row=1, holds="0.001", text="-1")  # level 2's learning rate
            refused = f"level 2 {_message(lambda: LevelSpec(lr=-1.0))}"
            _until(page, lambda: _errors(page) == [refused], "the message for learning rate -1")
            expect(start).to_be_disabled()
            _type_in_last_column(page, row=1, holds="-1", text="0.00015")
            expect(summary).to_contain_text("C=8 mlp width 64 hidden 256 adam lr 0.00015", timeout=60_000)  # all its digits, as typed
            expect(start).to_be_enabled()
            page.screenshot(path=str(tmp_path / "form.png"), full_page=True)
        finally:
            browser.close()


def test_the_heatmaps_follow_a_paused_run_that_is_stepped(tmp_path):
    """Pause, then Step to the next update of level 3 (C = 64): the Step metric moves on, and
    each heatmap's title names the newest tensor record at or before it once the page is drawn."""
    runs = tmp_path / "runs"
    with serve_app(runs, tmp_path / "streamlit.log") as url, sync_playwright() as p:
        browser = launch(p)
        try:
            page, start = open_live_page(browser, url, steps=100_000, viewport=(1400, 1100))
            start.click()
            _until(page, lambda: _step(page) >= 30, "step 30")
            page.get_by_role("button", name="Pause", exact=True).click()
            expect(page.locator('[data-testid="stMetric"]').filter(has_text="paused")).to_be_visible(timeout=60_000)
            (directory,) = runs.iterdir()
            page.get_by_label("Level", exact=True).click()
            page.get_by_role("option", name="level 3 (C=64)").click()
            for _ in range(2):
                before = _step(page)
                page.get_by_role("button", name="Step to next update of level", exact=True).click()
                state = page.locator('[data-testid="stMetric"]').filter(has_text="State").first
                _until(page, lambda: _step(page) != before and "paused" in state.inner_text(), "the run to pause again")
                now = _step(page)
                assert now % 64 == 0 and now > before
                record = max(s for s in open_run(directory).tensor_steps("activation") if s <= now)
                wanted = [f"level 1: activations y_l, step {record}", f"level 1: surprise u_l = dL/dy_l, step {record}"]
                _until(page, lambda: page.evaluate(HEATMAP_TITLES) == wanted,
                       f"heatmap titles {wanted} at step {now}; shown: {page.evaluate(HEATMAP_TITLES)}")
            page.screenshot(path=str(tmp_path / "stepped.png"), full_page=True)
        finally:
            browser.close()
