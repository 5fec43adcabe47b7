"""A notebook in real JupyterLab: Debian's chromium, driven by Playwright, against
`python -m jupyterlab` on a free local port. Open the notebook, Run > Run All Cells, check that
no cell raised and that the live plotly FigureWidget is drawn, press the notebook's Step button
(ipywidgets) and watch the figure change. A screenshot is kept in the test's temporary directory.

The notebook is copied into the temporary directory first: JupyterLab autosaves, and neither
outputs nor widget state may reach the repository."""

from __future__ import annotations

import re
import shutil
import time

from playwright.sync_api import expect, sync_playwright

from appserver import ROOT, launch
from labserver import serve_lab

NOTEBOOK = ROOT / "notebooks" / "03_continuum_memory_system.ipynb"
RUN_ALL_TIMEOUT = 300  # seconds; about 40 on a quiet 2-core machine (it trains 8 small CMS runs)

# Prompts of the code cells: "[ ]:" not run, "[*]:" queued or running, "[7]:" done.
_PROMPTS = "() => Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt'), e => e.textContent.trim())"

# What an exception looks like in JupyterLab 4: an output rendered as stderr holding the traceback.
_TRACEBACKS = """() => Array.from(
  document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'),
  e => e.textContent).filter(t => t.includes('Traceback'))"""

# A plotly graph drawn by a widget (FigureWidget). A static `fig.show()` output is a graph too,
# rendered by jupyterlab-plotly with the class jp-RenderedPlotly.
_WIDGET_GRAPH = ".jp-OutputArea-output .js-plotly-plot:not(.jp-RenderedPlotly)"

# Each widget graph: its traces' data and title, and how many traces its SVG draws.
_WIDGET_FIGURES = """() => Array.from(document.querySelectorAll('%s'))
  .map(gd => ({
    state: JSON.stringify([(gd.data || []).map(t => [t.x, t.y, t.z]), gd.layout && gd.layout.title]),
    traces: (gd.data || []).length,
    drawn: gd.querySelectorAll('.main-svg .trace, .main-svg .hm').length,
  }))""" % _WIDGET_GRAPH


def _wait(page, what: str, check, timeout: float, detail=lambda: ""):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f} s. {detail()}")
        page.wait_for_timeout(250)


def _menu(page, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{menu}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{item}$")).click()


def test_jupyterlab_runs_the_notebook_and_draws_the_live_figure(tmp_path):
    assert NOTEBOOK.exists(), f"{NOTEBOOK.relative_to(ROOT)} is missing"
    (tmp_path / "root").mkdir()
    shutil.copy(NOTEBOOK, tmp_path / "root" / NOTEBOOK.name)

    with serve_lab(tmp_path) as url, sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            js_errors = []
            page.on("pageerror", lambda e: js_errors.append(str(e)))
            page.goto(f"{url}/lab/tree/{NOTEBOOK.name}?reset")
            expect(page.locator(".jp-NotebookPanel .jp-CodeCell").first).to_be_visible(timeout=60_000)
            # The status bar reads "Python 3 (ipykernel) | Idle" once the kernel is up.
            kernel = page.locator("#jp-main-statusbar").get_by_text(re.compile(r"\| Idle$"))
            expect(kernel).to_be_visible(timeout=60_000)

            def prompts():
                return page.evaluate(_PROMPTS)

            # The notebook is committed executed: clear its outputs and execution counts first,
            # so that nothing below can be a stored output.
            _menu(page, "Edit", "Clear Outputs of All Cells")
            _wait(page, "the outputs clearing", lambda: all(p == "[ ]:" for p in prompts()), 30,
                  lambda: f"prompts: {prompts()}")
            assert page.locator(".jp-OutputArea-output").count() == 0
            _menu(page, "Run", "Run All Cells")
            # Run All queues every code cell at once ("[*]"); it is over when none is left
            # queued. A cell that raises stops the run and leaves the later prompts blank.
            _wait(page, "Run All starting", lambda: any(p != "[ ]:" for p in prompts()), 30)
            _wait(page, "Run All finishing", lambda: not any("*" in p for p in prompts()), RUN_ALL_TIMEOUT,
                  lambda: f"prompts: {prompts()}")
            tracebacks = page.evaluate(_TRACEBACKS)
            assert not tracebacks, "a cell raised:\n" + "\n\n".join(tracebacks)
            assert all(re.fullmatch(r"\[\d+\]:", p) for p in prompts()), f"cells not run: {prompts()}"
            expect(kernel).to_be_visible(timeout=30_000)

            def figures():
                return page.evaluate(_WIDGET_FIGURES)

            _wait(page, "the FigureWidget rendering", lambda: any(f["traces"] for f in figures()), 30,
                  lambda: f"figures: {figures()}; JS errors: {js_errors}")
            graph = page.locator(_WIDGET_GRAPH).first
            graph.scroll_into_view_if_needed()

            # Found by its text: its icon, a CSS glyph, is part of the button's accessible name.
            step = page.locator(".jp-OutputArea-output button", has_text=re.compile(r"^\s*Step\s*$")).first
            expect(step).to_be_enabled(timeout=30_000)
            shown = [f["state"] for f in figures()]
            step.click()
            _wait(page, "the figure changing after Step", lambda: [f["state"] for f in figures()] != shown, 60,
                  lambda: f"JS errors: {js_errors}")
            expect(kernel).to_be_visible(timeout=60_000)  # the Step callback has returned
            _wait(page, "a trace being drawn", lambda: any(f["drawn"] for f in figures()), 30,
                  lambda: f"figures: {figures()}")

            graph.scroll_into_view_if_needed()
            shot = tmp_path / "jupyterlab.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 20_000
        finally:
            browser.close()

    assert "Traceback" not in (tmp_path / "jupyterlab.log").read_text()
