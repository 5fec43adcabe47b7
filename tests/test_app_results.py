"""The dashboard's Results page under AppTest: its empty state, and results made by --quick runs."""

from __future__ import annotations

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
