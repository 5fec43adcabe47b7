"""Dashboard benchmarks: how fast a recorded step reaches the screen, what watching costs the
run, and whether the runs page stays responsive on a 1,000,000-step run.

Prints (figures and method: docs/benchmarks.md):

    screen_lag        seconds from a step's commit to the run store until the live page's
                      loss chart draws it (Debian chromium via Playwright; target <= 1 s):
                      median, 90th percentile and worst over the steps the page showed
    metric_lag        the same until the page's Step metric shows that step or a later one
    watched_vs_cli    training throughput of a dashboard run while its live page refreshes,
                      over the same run trained by `python -m nlviz train` (same config,
                      the dashboard's recording cadence), one after the other
    runs_page_1m      seconds for the runs page to draw a 1,000,000-step run, and to move its
                      time cursor, over the same for the 1,000-step run it was made from

The 1,000,000-step run is a real 1,000-step CLI run whose records are repeated 1,000 times at
later steps (SQL INSERT ... SELECT), so every table has the size and the shape of a real
one at the CLI's default cadence; it takes about a minute to build.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "app")]

from appserver import WATCH_PLOTTED_STEPS, launch, open_live_page, serve_app  # noqa: E402

from nlviz import TrainConfig, open_run  # noqa: E402
from nlviz.store import LOD_WIDTH, index_scalars  # noqa: E402


def screen_lag(seconds: float, work: Path) -> tuple[list[float], list[float], float]:
    """(chart lags, Step metric lags, in seconds; steps per second of the watched run). A lag is
    the time from a reader first seeing a step in the store to the page first showing it."""
    from playwright.sync_api import sync_playwright

    runs = work / "runs"
    committed: dict[int, float] = {}  # step -> epoch seconds when a reader first saw it in the store
    done = threading.Event()

    def watch_store() -> None:
        while not done.is_set():
            found = list(runs.glob("*/run.sqlite")) if runs.is_dir() else []
            if found:
                try:
                    run = open_run(found[0])
                    last = run.last_step()
                    run.close()
                except Exception:  # the tables are not there yet
                    last = 0
                now = time.time()
                for s in range(max(committed, default=0) + 1, last + 1):
                    committed[s] = now
            time.sleep(0.02)

    with serve_app(runs, work / "streamlit.log") as url, sync_playwright() as p:
        browser = launch(p)
        page, start = open_live_page(browser, url)
        page.evaluate(WATCH_PLOTTED_STEPS)
        poller = threading.Thread(target=watch_store)
        poller.start()
        start.click()
        page.wait_for_timeout(seconds * 1000)
        shown = page.evaluate("() => window.nlvizShown")
        counted = page.evaluate("() => window.nlvizMetric")
        first, last = min(committed), max(committed)
        rate = (last - first) / (committed[last] - committed[first])
        page.locator(".stButton").get_by_role("button", name="Stop", exact=True).click()
        page.wait_for_timeout(1000)
        browser.close()
        done.set()
        poller.join()
    # The metric counts steps the worker has taken, usually before the store has them: its
    # lag for a recorded step s is when it first showed s or more.
    metric = [min((t for t, c in counted if c >= s), default=None) for s in sorted(committed)]
    metric_lags = [t / 1000 - committed[s] for t, s in zip(metric, sorted(committed)) if t is not None]
    return [t / 1000 - committed[s] for t, s in shown if s in committed], metric_lags, rate


def cli_rate(work: Path, steps: int) -> float:
    """Steps per second of the same run from the command line, recorded at the dashboard's cadence."""
    import common

    out = work / "cli"
    opts = common.WRITER_OPTIONS
    subprocess.run([sys.executable, "-m", "nlviz", "train", "--steps", str(steps), "--no-progress", "--device", "cpu",
                    "--scalars-every", str(opts["scalars_every"]), "--tensors-every", str(opts["tensors_every"]),
                    "--memory-every", str(opts["memory_every"]), "--threads", "1", "--out", str(out)],
                   check=True, cwd=ROOT, capture_output=True)
    return json.loads((out / "summary.json").read_text())["steps_per_second"]


def million_step_run(work: Path) -> tuple[Path, Path]:
    """(a real 1,000-step CLI run, the same records repeated up to step 1,000,000)."""
    small, big = work / "small", work / "big"
    subprocess.run([sys.executable, "-m", "nlviz", "train", "--steps", "1000", "--no-progress", "--device", "cpu",
                    "--out", str(small)], check=True, cwd=ROOT, capture_output=True)
    big.mkdir()
    shutil.copy(small / "run.sqlite", big / "run.sqlite")
    con = sqlite3.connect(big / "run.sqlite")
    with con:
        for k in range(1, 1000):
            off = 1000 * k
            con.execute(f"INSERT INTO scalars SELECT step + {off}, level, name, value FROM scalars WHERE step <= 1000")
            con.execute(f"INSERT INTO level_updates SELECT step + {off}, level FROM level_updates WHERE step <= 1000")
            con.execute(f"INSERT INTO tensors SELECT step + {off}, level, kind, mean, std, min, max, norm, hist, sample, "
                        f"sample_rows, sample_cols FROM tensors WHERE step <= 1000")
            con.execute(f"INSERT INTO memory SELECT step + {off}, level, batch, d_out, d_in, rows, out_cols, in_cols, "
                        f"x, u, wx, x_sq, weight, outer, grad FROM memory WHERE step <= 1000")
        con.execute("DELETE FROM scalar_lod")
        index_scalars(con)
        config = json.loads(con.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()[0])
        config["steps"] = 1_000_000
        con.execute("UPDATE meta SET value = ? WHERE key = 'config'", [json.dumps(config)])
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return small, big


def runs_page_times(run_dir: Path, rounds: int) -> tuple[float, float]:
    """Median seconds of the runs page opening `run_dir`, and of moving its cursor (AppTest)."""
    from streamlit.testing.v1 import AppTest

    os.environ["NLVIZ_RUNS"] = str(run_dir.parent)
    last = open_run(run_dir).last_step()
    opens, moves = [], []
    for r in range(rounds):
        at = AppTest.from_file(str(ROOT / "app" / "streamlit_app.py"), default_timeout=120)
        at.query_params["run"] = run_dir.name
        at.run()
        t = time.perf_counter()
        at.switch_page("views/runs.py").run()
        opens.append(time.perf_counter() - t)
        assert not at.exception, at.exception
        t = time.perf_counter()
        at.slider(key="runs_step").set_value(last // 3 + r).run()
        moves.append(time.perf_counter() - t)
        assert not at.exception, at.exception
    return statistics.median(opens), statistics.median(moves)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to watch the live page (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="runs page loads per size (default 5)")
    args = parser.parse_args()
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, date {time.strftime('%Y-%m-%d')}")
    print(f"run: the dashboard's default ({TrainConfig().model.periods} periods), on the CPU, one thread")
    work = Path(tempfile.mkdtemp(prefix="nlviz-dash-"))
    try:
        lags, metric_lags, watched = screen_lag(args.seconds, work)
        for name, values, what in (("screen_lag", lags, "loss-chart updates"),
                                   ("metric_lag", metric_lags, "recorded steps, Step metric")):
            values.sort()
            print(f"{name}: median {statistics.median(values):.2f} s, p90 {values[int(0.9 * (len(values) - 1))]:.2f} s, "
                  f"worst {values[-1]:.2f} s over {len(values)} {what} (target <= 1 s)")
        cli = cli_rate(work, 3000)
        print(f"watched_vs_cli: {watched / cli:.2f} ({watched:.0f} steps/s watched, {cli:.0f} steps/s from the CLI)")
        small, big = million_step_run(work)
        size = (big / "run.sqlite").stat().st_size / 1e6
        s_open, s_move = runs_page_times(small, args.rounds)
        b_open, b_move = runs_page_times(big, args.rounds)
        print(f"runs_page_1m: open {b_open:.2f} s against {s_open:.2f} s ({b_open / s_open:.2f}x), cursor move "
              f"{b_move:.2f} s against {s_move:.2f} s ({b_move / s_move:.2f}x); store {size:.0f} MB, "
              f"level-of-detail buckets of {LOD_WIDTH} steps")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
