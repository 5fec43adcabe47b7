"""The Runs and Equations pages under Streamlit's AppTest, on runs recorded by the trainer:
a shared URL opens the view it names, and the figures the pages draw are the package's (two
runs in two colours, numbers as powers of ten, layouts with fixed heights)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from nlviz import Trainer, figures
from nlviz.store import RunWriter

from conftest import tiny_config

APP = Path(__file__).resolve().parents[1] / "app"
sys.path.insert(0, str(APP))  # the pages import app/common.py, as `streamlit run` arranges


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two recorded runs: a 3-level CMS and a 2-level one, both with Eq 25-29 memory records."""
    parent = tmp_path_factory.mktemp("runs")
    for name, periods in (("cms", (1, 2, 4)), ("pair", (1, 2))):
        writer = RunWriter(parent / name, scalars_every=1, tensors_every=10, memory_every=10)
        Trainer(tiny_config(periods, steps=40), [writer]).run()
    return parent


def _page(runs: Path, monkeypatch, page: str, **query: str) -> AppTest:
    monkeypatch.setenv("NLVIZ_RUNS", str(runs))
    at = AppTest.from_file(str(APP / "streamlit_app.py"), default_timeout=60)
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, at.exception
    return at


def _param(at: AppTest, key: str) -> str | None:
    value = at.query_params.get(key)
    return value[0] if isinstance(value, list) else value


def _chart(at: AppTest, key: str) -> dict:
    (chart,) = [c for c in at.get("plotly_chart") if c.proto.id.endswith(f"-{key}")]  # "$$ID-<hash>-<key>"
    return json.loads(chart.proto.spec)


def test_a_shared_runs_url_restores_the_compared_series_and_its_level(runs, monkeypatch):
    at = _page(runs, monkeypatch, "runs", run="cms", compare="pair", step="17", series="surprise_norm", level="2")
    assert at.selectbox(key="runs_run").value == "cms" and at.selectbox(key="runs_compare").value == "pair"
    assert at.selectbox(key="runs_series").value == "surprise_norm"
    assert at.selectbox(key="runs_compare_level").value == 2
    assert at.slider(key="runs_step").value == 17
    spec = _chart(at, "runs_compare_fig")
    assert "of level 2" in spec["layout"]["title"]["text"]
    assert [t["name"] for t in spec["data"]] == ["cms: level 2 (C=2)", "pair: level 2 (C=2)"]
    assert (_param(at, "series"), _param(at, "level")) == ("surprise_norm", "2")  # and it stays in the URL
    at.selectbox(key="runs_series").set_value("update_norm").run()
    at.selectbox(key="runs_compare_level").set_value(1).run()
    assert (_param(at, "series"), _param(at, "level")) == ("update_norm", "1")
    at.selectbox(key="runs_compare").set_value("(none)").run()
    assert _param(at, "series") is None and _param(at, "level") is None  # nothing compared, nothing in the URL


def test_a_url_naming_a_series_or_level_the_runs_lack_falls_back(runs, monkeypatch):
    at = _page(runs, monkeypatch, "runs", run="cms", compare="pair", series="no_such_series", level="9")
    assert at.selectbox(key="runs_series").value == "loss" and not at.exception
    at = _page(runs, monkeypatch, "runs", run="cms", compare="pair", series="surprise_norm", level="9")
    assert at.selectbox(key="runs_compare_level").value == 1


def test_the_two_compared_runs_have_two_colours_two_dashes_and_a_legend(runs, monkeypatch):
    at = _page(runs, monkeypatch, "runs", run="cms", compare="pair", series="loss")
    spec = _chart(at, "runs_compare_fig")
    lines = [(t["line"]["color"], t["line"]["dash"]) for t in spec["data"]]
    assert lines[0][0] != lines[1][0], "told apart by colour, not by dashing alone"
    assert lines == [(figures.RUN_COLOURS[0], "solid"), (figures.RUN_COLOURS[1], "dash")]
    assert spec["layout"]["legend"]["orientation"] == "h" and spec["layout"].get("showlegend") is not False


def test_the_equations_page_draws_fixed_layouts_with_powers_of_ten(runs, monkeypatch):
    at = _page(runs, monkeypatch, "equations", run="cms", level="3", step="40")
    assert at.selectbox(key="eq_level").value == 3
    for key in ("eq25", "objectives", "eq2829"):
        layout = _chart(at, key)["layout"]
        assert layout["height"] and layout["margin"]["t"], key  # laid out in pixels, not left to plotly's defaults
        template = layout["template"]["layout"]
        assert template["xaxis"]["exponentformat"] == template["yaxis"]["exponentformat"] == "power", key


def test_the_runs_page_shows_a_diverging_run_as_such(tmp_path, monkeypatch):
    from nlviz import LevelSpec, ModelConfig, TrainConfig

    levels = (LevelSpec(period=1), LevelSpec(period=8, lr=100.0), LevelSpec(period=64, lr=100.0))
    trainer = Trainer(TrainConfig(steps=20, device="cpu", model=ModelConfig(levels=levels)),
                      [RunWriter(tmp_path / "blowup", scalars_every=1)])
    trainer.run()
    at = _page(tmp_path, monkeypatch, "runs", run="blowup")
    assert at.dataframe[0].value["status"].tolist() == ["finished (diverging)"]
    (warning,) = [w.value for w in at.warning]
    assert warning == f"This run was flagged as {trainer.diverging.message}"
