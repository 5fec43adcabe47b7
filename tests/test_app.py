"""The dashboard's pages under Streamlit's AppTest: each loads without exception, shows its
controls, and drives real runs through the worker (the live fragment's timer is not run by
AppTest, so the panels are checked by rerunning the page)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from nlviz import LevelClock, TrainConfig, Trainer, open_run
from nlviz.store import RunWriter

from conftest import tiny_config

APP = Path(__file__).resolve().parents[1] / "app"
sys.path.insert(0, str(APP))  # the pages import app/common.py, as `streamlit run` arranges


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("NLVIZ_RUNS", str(tmp_path / "runs"))
    yield tmp_path / "runs"
    import common

    common.registry().stop_all()  # never leave a worker training after a test


def _app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP / "streamlit_app.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, at.exception
    return at


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _recorded(runs_dir: Path, steps: int = 40, periods=(1, 4), name: str = "recorded") -> Path:
    out = runs_dir / name
    Trainer(tiny_config(periods, steps=steps), [RunWriter(out, scalars_every=1, tensors_every=10, memory_every=10)]).run()
    return out


def test_home_explains_and_starts_the_default_run_in_one_click(runs):
    at = _app()
    assert "nested" in at.title[0].value.lower()
    button = at.button(key="start_default")
    assert "periods 1, 8, 64" in button.label
    button.click().run()
    assert not at.exception and not at.error
    import common

    (run,) = common.registry().runs()
    assert run.config == TrainConfig(steps=3000) and run.state in ("running", "finished")
    run.pause() if run.state == "running" else None
    assert run.directory.parent == runs.resolve()


def test_live_page_has_its_controls_and_a_run_steps_through_them(runs):
    at = _app("live")
    assert {"Start", "Pause", "Step", "Step to next update of level", "Stop"} <= {b.label for b in at.button}
    assert at.button(key="pause").disabled and at.button(key="step").disabled  # nothing to pause yet
    at.number_input(key="live_steps").set_value(300).run()
    at.button(key="start").click().run()
    assert not at.exception and not at.error
    at.button(key="pause").click().run()
    assert _metric(at, "State") == "paused"
    before = int(_metric(at, "Step"))
    at.button(key="step").click().run()
    assert int(_metric(at, "Step")) == before + 1
    at.selectbox(key="target_level").set_value(3).run()  # the default run's level 3 has C = 64
    at.button(key="step_to_update").click().run()
    import common

    common.registry().runs()[0].wait(timeout=120)  # the page waits a moment only, then shows "running"
    at.run()
    now = int(_metric(at, "Step"))
    assert now % 64 == 0 and before + 1 < now <= before + 65
    assert len(at.get("plotly_chart")) >= 4 and not at.exception
    at.button(key="stop").click().run()
    assert _metric(at, "State") == "stopped"
    run = open_run(next(runs.iterdir()))
    assert run.status == "interrupted" and run.last_step() == now
    assert run.level_updates().values.tolist() == [[t, l + 1] for t, l in LevelClock((1, 8, 64)).updates_between(1, now)]


def test_live_page_shows_validation_errors_not_tracebacks(runs):
    at = _app("live")
    at.selectbox(key="live_variant").set_value("independent").run()
    assert not at.error  # every default level is 64 wide
    # Independent levels are summed, so their widths must agree: a mismatch is a message.
    at.session_state["live_levels"] = {"edited_rows": {1: {"width": 8}}, "added_rows": [], "deleted_rows": []}
    at.run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "levels.width: the independent variant sums level outputs, so all widths must be equal; got [8, 64]"]
    assert at.button(key="start").disabled


def test_a_second_run_on_a_busy_device_is_refused_with_a_message(runs):
    first = _app("live")
    first.number_input(key="live_steps").set_value(100_000).run()
    first.button(key="start").click().run()
    import common

    common.registry().runs()[0].pause()
    # A second tab asks for a new run while the first holds the CPU (paused counts).
    common.registry().runs()[0].stop()
    second = _app("live")
    second.number_input(key="live_steps").set_value(100_000).run()
    second.button(key="start").click().run()
    third = _app("live")
    third.query_params["run"] = "no-such-run"
    third.run()
    assert third.button(key="start").disabled  # the newest run is running: Start is not offered twice
    busy = common.registry().runs()[0]
    busy.pause()
    third.run()
    third.button(key="start").click().run()  # continues the paused run, no second one
    assert len([r for r in common.registry().runs() if r.state in ("running", "paused")]) == 1
    from nlviz.live import RunBusyError

    with pytest.raises(RunBusyError, match="busy"):
        common.registry().create(TrainConfig(steps=10))


def test_equations_page_shows_eq25_to_29_from_a_recorded_run(runs):
    out = _recorded(runs)
    at = _app("equations")
    assert not at.exception
    assert [s.label for s in at.selectbox] == ["Run", "Level", "Example"]
    assert len(at.get("plotly_chart")) == 3  # Eq 25, Eq 26-27, Eq 28-29
    assert any("sign slip" in i.value for i in at.info)
    assert len(at.latex) >= 4
    at.select_slider(key="eq_lr").set_value(100.0).run()
    at.selectbox(key="eq_level").set_value(2).run()
    assert not at.exception
    assert at.query_params["level"] in ("2", ["2"])
    assert open_run(out).memory_steps(level=2).step.tolist() == [10, 20, 30, 40]


def test_runs_page_replays_with_one_cursor_and_compares_two_runs(runs):
    _recorded(runs, name="cms", periods=(1, 4))
    _recorded(runs, name="one-level", periods=(1,))
    at = _app("runs")
    assert not at.exception
    assert sorted(at.dataframe[0].value.run.tolist()) == ["cms", "one-level"]
    at.selectbox(key="runs_run").set_value("cms").run()
    at.slider(key="runs_step").set_value(25).run()
    assert not at.exception
    at.selectbox(key="runs_compare").set_value("one-level").run()
    assert not at.exception
    charts = at.get("plotly_chart")
    assert len(charts) >= 7  # four time panels, two heatmaps, the comparison
    assert at.query_params["step"] in ("25", ["25"]) and at.query_params["compare"] in ("one-level", ["one-level"])


def test_runs_page_opens_at_the_state_in_its_url(runs):
    _recorded(runs, name="cms", periods=(1, 4))
    at = AppTest.from_file(str(APP / "streamlit_app.py"), default_timeout=60)
    at.query_params["run"] = "cms"
    at.query_params["step"] = "17"
    at.run()
    at.switch_page("views/runs.py").run()
    assert at.slider(key="runs_step").value == 17 and at.selectbox(key="runs_run").value == "cms"


def test_a_diverged_run_shows_where_and_why_and_keeps_its_data(runs):
    from test_trainer import _PoisonedTask

    from nlviz import DivergenceError

    cfg = tiny_config((1, 2), steps=20, norm=False)
    trainer = Trainer(cfg, [RunWriter(runs / "bad", scalars_every=1)], task=_PoisonedTask(cfg.task_options, "cpu", 0))
    with pytest.raises(DivergenceError):
        trainer.run()
    at = _app("runs")
    assert not at.exception
    (error,) = at.error
    assert error.value.startswith("This run diverged: loss became non-finite at step 5")
    assert at.slider(key="runs_step").max == 5 and len(at.get("plotly_chart")) >= 4  # its data up to there


@pytest.mark.parametrize("value", ["abc", "25", "-1"])
def test_a_bad_training_niceness_is_one_line_on_the_page(runs, monkeypatch, value):
    import common

    monkeypatch.setenv("NLVIZ_TRAIN_NICE", value)
    with pytest.raises(ValueError, match=rf"^NLVIZ_TRAIN_NICE: must be an integer from 0 to 19, got '{value}'$"):
        common.train_nice()
    at = _app("live")
    assert not at.exception
    assert any("NLVIZ_TRAIN_NICE: must be an integer from 0 to 19" in e.value for e in at.error)
    monkeypatch.delenv("NLVIZ_TRAIN_NICE")  # so the fixture can stop the (absent) runs


def test_the_training_niceness_defaults_to_ten_and_follows_the_variable(monkeypatch):
    import common

    monkeypatch.delenv("NLVIZ_TRAIN_NICE", raising=False)
    assert common.train_nice() == 10
    monkeypatch.setenv("NLVIZ_TRAIN_NICE", "0")
    assert common.train_nice() == 0


def test_the_form_can_run_the_forward_pass_in_bf16(runs):
    at = _app("live")
    at.number_input(key="live_steps").set_value(5).run()
    at.selectbox(key="live_autocast").set_value("bf16").run()
    at.button(key="start").click().run()
    assert not at.exception and not at.error
    import common

    run = common.registry().runs()[0]
    assert run.config.autocast == "bf16"
    assert run.wait(timeout=120) == "finished"
    assert open_run(run.directory).last_step() == 5
