"""The live page in a real browser: Debian's chromium, driven by Playwright, against
`streamlit run` on a free local port. Start a run, watch the Step metric advance and the
plotly charts render, and keep a screenshot in the test's temporary directory."""

from __future__ import annotations

import time

from playwright.sync_api import expect, sync_playwright

from appserver import LAST_PLOTTED_STEP, launch, open_live_page, serve_app


def _step(page) -> int:
    metric = page.locator('[data-testid="stMetric"]').filter(has_text="Step").first
    return int(metric.locator('[data-testid="stMetricValue"]').inner_text().strip())


def test_start_a_run_and_watch_it_live(tmp_path):
    with serve_app(tmp_path / "runs", tmp_path / "streamlit.log") as url, sync_playwright() as p:
        browser = launch(p)
        try:
            # Long enough to be still running when Pause is clicked below: 3000 steps (the
            # default) can end first on a fast machine, or while the charts render on a slow one.
            page, start = open_live_page(browser, url, steps=100_000, viewport=(1400, 1100))
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
    assert "Traceback" not in (tmp_path / "streamlit.log").read_text()
