"""Start the dashboard on a free local port and drive it with Debian's chromium (Playwright).

Shared by the browser test and bench/dashboard.py. Chromium comes from Debian
(`apt-get install chromium`, which .ci/run does); Playwright never downloads a browser here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
# Without the networking flags chromium keeps trying to reach the outside world, which this
# machine refuses; --no-sandbox because tests run as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_app(runs_dir: Path, log: Path) -> Iterator[str]:
    """`streamlit run app/streamlit_app.py` on 127.0.0.1:<free port>; yields its URL."""
    port = free_port()
    env = dict(os.environ, NLVIZ_RUNS=str(runs_dir))
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app/streamlit_app.py", "--server.headless", "true",
             "--server.port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/_stcore/health", proc, log, 60, "the dashboard")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float, what: str) -> None:
    """Poll url until it answers 200, or raise with the server's log if it exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {timeout:.0f} s; its log:\n{log.read_text()}")
        time.sleep(0.3)


def launch(playwright):
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def open_live_page(browser, url: str, steps: int = 100_000, viewport=(1280, 800)):
    """The live page with the run length set (long enough to still be running when a test
    pauses it); returns (page, its Start button, enabled)."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    page.goto(f"{url}/live")
    page.get_by_label("Steps").fill(str(steps))
    page.keyboard.press("Enter")
    start = page.get_by_role("button", name="Start", exact=True)
    expect(start).to_be_enabled(timeout=60_000)
    return page, start


# The largest step drawn in the loss chart (plotly keeps each graph's data on its element).
LAST_PLOTTED_STEP = """() => {
  for (const gd of document.querySelectorAll('.js-plotly-plot')) {
    const title = (gd.layout && gd.layout.title && gd.layout.title.text) || '';
    if (!title.toLowerCase().includes('loss')) continue;
    let last = 0;
    for (const trace of gd._fullData || []) {
      if (!trace.x || !String(trace.name).includes('loss')) continue;
      for (const v of Array.from(trace.x)) if (typeof v === 'number' && v > last) last = v;
    }
    return last;
  }
  return 0;
}"""

# The titles of the heatmaps drawn now, in page order (plotly keeps each graph's layout on its element),
# as one line: a half-width heatmap's title has its step on a second line ("...,<br>step 2180").
HEATMAP_TITLES = """() => Array.from(document.querySelectorAll('.js-plotly-plot'))
  .map(gd => (gd.layout && gd.layout.title && gd.layout.title.text) || '')
  .map(t => t.replace(/<br>/g, ' ').replace(/<[^>]*>/g, ''))
  .filter(t => t.startsWith('level ') && t.includes(', step '))"""

# The Step metric's value (the worker's step count), 0 before it is drawn.
_STEP_METRIC = """() => {
  for (const m of document.querySelectorAll('[data-testid="stMetric"]')) {
    if (!m.innerText.trim().startsWith('Step')) continue;
    const v = m.querySelector('[data-testid="stMetricValue"]');
    return v ? parseInt(v.innerText.replace(/[^0-9]/g, ''), 10) || 0 : 0;
  }
  return 0;
}"""

# Inside the page, every 20 ms: when the loss chart (or the Step metric) shows a new last step,
# note (epoch ms, step) in window.nlvizShown (window.nlvizMetric). Watching from inside costs
# the page far less than asking from outside.
WATCH_PLOTTED_STEPS = """() => {
  const plotted = %s, metric = %s;
  window.nlvizShown = []; window.nlvizMetric = [];
  let seen = 0, counted = 0;
  setInterval(() => {
    const now = performance.timeOrigin + performance.now();
    const step = plotted();
    if (step > seen) { seen = step; window.nlvizShown.push([now, step]); }
    const count = metric();
    if (count > counted) { counted = count; window.nlvizMetric.push([now, count]); }
  }, 20);
}""" % (LAST_PLOTTED_STEP, _STEP_METRIC)
