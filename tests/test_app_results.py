"""The dashboard's Results page under AppTest: its empty state, and results made by --quick runs."""

from __future__ import annotations

import math

import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from nlviz.experiments import figures, load_result, run_experiment

APP = Path(__file__).resolve().parents[1] / "app"
sys.path.insert(0, str(APP))  # the pages import app/common.py, as `streamlit run` arranges


def _results_page() -> AppTest:
    at = AppTest.from_file(str(APP / "streamlit_app.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    at.switch_page("views/results.py").run()
    assert not at.exception, at.exception
    return at


def test_without_results_the_page_says_how_to_make_them(tmp_path, monkeypatch):
    monkeypatch.setenv("NLVIZ_RESULTS", str(tmp_path / "nothing here"))
    at = _results_page()
    (info,) = at.info
    assert "No results yet" in info.value and "python -m nlviz.experiments" in info.value
    assert not at.get("plotly_chart") and not at.dataframe


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    parent = tmp_path_factory.mktemp("results")
    for name in ("capacity", "co2"):
        run_experiment(name, quick=True, out=parent / name, progress=False)
    return parent


def test_the_page_lists_results_and_draws_each_from_its_json(results, monkeypatch):
    monkeypatch.setenv("NLVIZ_RESULTS", str(results))
    at = _results_page()
    listing = at.dataframe[0].value
    assert sorted(listing.experiment) == ["capacity", "co2"] and listing.quick.all()
    for name in ("capacity", "co2"):
        box = at.selectbox(key="results_experiment")
        box.select_index(next(i for i, label in enumerate(box.options) if label.startswith(f"{name} ("))).run()
        assert not at.exception, at.exception
        result = load_result(results / name)
        assert at.subheader[0].value == result["title"] and at.query_params["experiment"] == name
        summary = at.dataframe[1].value  # [0] is the listing
        assert list(summary.condition) == [row["condition"] for row in result["summary"]]
        assert summary["mean"].tolist() == pytest.approx([row["mean"] for row in result["summary"]])
        charts = at.get("plotly_chart")
        assert len(charts) == len(figures.build(result)) == len(result["files"]["html"])
        assert all(finding in at.markdown[-1].value for finding in result["findings"])
        assert at.query_params["experiment"] == name  # shareable: the URL names the experiment


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """Results over 2 seeds, whose 95% t intervals (12.7 standard errors wide) reach past what
    an error or an accuracy can be."""
    parent = tmp_path_factory.mktemp("two-seeds")
    for name in ("capacity", "continual"):
        run_experiment(name, seeds=(0, 1), quick=True, out=parent / name, progress=False)
    return parent


def _bands(fig) -> list:
    return [t for t in fig.data if t.name.endswith("95% interval")]


def test_intervals_are_drawn_clipped_to_what_the_quantity_can_be(two_seeds):
    capacity = load_result(two_seeds / "capacity")
    assert any(lo < 0 for curve in capacity["data"]["by_pairs"].values() for lo in curve["lo"])  # result.json keeps it
    for stem, fig in figures.build(capacity).items():
        assert "95% t interval, clipped at 0" in fig.layout.title.text, stem
        for band in _bands(fig):
            assert min(band.y) >= 0, (stem, band.name)  # a recall error is never negative
            if fig.layout.yaxis.type == "log" and min(band.y) == 0:  # clipped to 0: off the bottom of a log axis,
                assert all(math.isfinite(r) for r in fig.layout.yaxis.range), stem  # whose range stays finite
    continual = load_result(two_seeds / "continual")
    built = figures.build(continual)
    for stem, (lo, hi) in (("average_accuracy", (0, 1)), ("forgetting", (-1, 1))):
        assert f"clipped to [{lo}, {hi}]" in built[stem].layout.title.text
        assert all(lo <= v <= hi for band in _bands(built[stem]) for v in band.y), stem
    for bar in built["final"].data:  # accuracy, then forgetting: each error bar stays in its range
        for mean, up, down, (lo, hi) in zip(bar.y, bar.error_y.array, bar.error_y.arrayminus, [(0, 1), (-1, 1)]):
            assert lo - 1e-12 <= mean - down and mean + up <= hi + 1e-12
    rows = [r for r in continual["summary"] if r["metric"] == "final average accuracy"]
    assert any(r["lo"] < 0 or r["hi"] > 1 for r in rows)  # so the clipping above was needed


def test_the_summary_table_gives_names_room_and_numbers_four_digits(results, monkeypatch):
    import json

    monkeypatch.setenv("NLVIZ_RESULTS", str(results))
    at = _results_page()
    columns = json.loads(at.dataframe[1].proto.columns)
    summary = at.dataframe[1].value
    for name in ("condition", "metric"):  # wide enough for the longest entry at 7 px a character, up to 320 px
        assert columns[name]["width"] >= min(7 * summary[name].str.len().max(), 320), name
    assert columns["condition"]["pinned"] is True  # in view while the numbers scroll on a narrow screen
    for name in ("mean", "ci95", "std"):
        assert columns[name]["type_config"]["format"] == "%.4g", name
    listing = json.loads(at.dataframe[0].proto.columns)
    assert listing["directory"]["width"] >= min(7 * at.dataframe[0].value.directory.str.len().max(), 320)
    assert "clipped" in at.caption[-1].value
