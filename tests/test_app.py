"""The dashboard's pages under Streamlit's AppTest: each loads without exception, shows its
controls, and drives real runs through the worker (the live fragment's timer is not run by
AppTest, so the panels are checked by rerunning the page)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from nlviz import LevelClock, LevelSpec, ModelConfig, SurpriseConfig, TrainConfig, Trainer, open_run
from nlviz.config import ConfigError
from nlviz.store import RunWriter

from conftest import tiny_config, wait_for

APP = Path(__file__).resolve().parents[1] / "app"
LONG = 10**6  # steps of a run that is still running whenever a test looks
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
    assert run.directory.parent == runs.resolve()


def test_live_page_has_its_controls_and_a_run_steps_through_them(runs):
    at = _app("live")
    assert {"Start", "Pause", "Step", "Step to next update of level", "Stop"} <= {b.label for b in at.button}
    assert at.button(key="pause").disabled and at.button(key="step").disabled  # nothing to pause yet
    at.number_input(key="live_steps").set_value(LONG).run()  # still running when Pause lands, however fast the machine
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
    assert _metric(at, "State") == "interrupted"  # the store's word, as on the Runs page
    assert any(f"This run was stopped by the user at step {now}." in i.value for i in at.info)
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


# ---------------------------------------------------------------------- what runs is what the page shows
def _library_message(make) -> str:
    """The library's own message for a bad value: the page must show it, not a restatement."""
    with pytest.raises(ConfigError) as caught:
        make()
    return str(caught.value)


@pytest.mark.parametrize("widget, value, make", [
    ("live_steps", 0, lambda: TrainConfig(steps=0)),
    ("live_steps", -5, lambda: TrainConfig(steps=-5)),
    ("live_batch", 0, lambda: TrainConfig(batch_size=0)),
    ("live_seed", -1, lambda: TrainConfig(seed=-1)),
])
def test_a_number_the_config_refuses_is_shown_as_typed_and_start_is_disabled(runs, widget, value, make):
    at = _app("live")
    at.number_input(key=widget).set_value(value).run()
    assert not at.exception
    assert at.number_input(key=widget).value == value  # kept as typed, neither clamped nor reverted
    assert [e.value for e in at.error] == [_library_message(make)]
    assert at.button(key="start").disabled
    assert not any(c.value.startswith("**Start** trains") for c in at.caption)  # no summary of a run that cannot start


def test_a_negative_surprise_weight_is_refused_with_the_librarys_message(runs):
    at = _app("live")
    at.toggle(key="live_surprise").set_value(True).run()
    at.number_input(key="live_weight").set_value(-0.5).run()
    assert [e.value for e in at.error] == [_library_message(lambda: SurpriseConfig(enabled=True, weights=(-0.5,)))]
    assert at.button(key="start").disabled
    at.toggle(key="live_surprise").set_value(False).run()  # the weight box is disabled now: not this run's
    assert not at.error and not at.button(key="start").disabled


def test_the_diverging_rule_is_set_on_the_form_and_checked_by_the_library(runs):
    at = _app("live")
    at.toggle(key="live_diverging_stop").set_value(True).run()
    at.number_input(key="live_diverging").set_value(100.0).run()
    import common

    shown = TrainConfig(steps=common.DEFAULT_STEPS, diverging_factor=100.0, diverging_stop=True)
    assert f"**Start** trains: {common.run_summary(shown)}." in [c.value for c in at.caption]
    at.number_input(key="live_diverging").set_value(0.0).run()  # off, yet asked to stop at it
    assert [e.value for e in at.error] == [_library_message(lambda: TrainConfig(diverging_factor=0, diverging_stop=True))]
    assert at.button(key="start").disabled


@pytest.mark.parametrize("edit, level, make", [
    ({1: {"lr": -1}}, 2, lambda: LevelSpec(lr=-1.0)),
    ({1: {"lr": -0.5}}, 2, lambda: LevelSpec(lr=-0.5)),
    ({2: {"period": 0}}, 3, lambda: LevelSpec(period=0)),
    ({0: {"period": 1.5}}, 1, lambda: LevelSpec(period=1.5)),  # not rounded to 1 or 2 on its way
    ({0: {"width": 0}}, 1, lambda: LevelSpec(width=0)),
])
def test_a_levels_table_value_the_config_refuses_names_its_level_and_disables_start(runs, edit, level, make):
    at = _app("live")
    at.session_state["live_levels"] = {"edited_rows": edit, "added_rows": [], "deleted_rows": []}
    at.run()
    assert not at.exception
    assert [e.value for e in at.error] == [f"level {level} {_library_message(make)}"]
    assert at.button(key="start").disabled


def test_an_empty_cell_of_a_new_level_is_named(runs):
    at = _app("live")
    at.session_state["live_levels"] = {"edited_rows": {}, "added_rows": [{"period": 512}], "deleted_rows": []}
    at.run()
    assert [e.value for e in at.error] == ["level 4 width: needs a value"]
    assert at.button(key="start").disabled


def test_level_specs_keep_what_the_table_holds():
    """The rows as st.data_editor gives them: numpy floats (the table's columns are floats, so a
    typed 1.5 arrives as 1.5), NaN for an empty cell."""
    import numpy as np

    import common

    rows = [{"period": np.float64(1.0), "width": np.float64(64.0), "hidden": np.float64(256.0), "optimizer": "adam",
             "lr": np.float64(1e-3)},
            {"period": 8.0, "width": 64.0, "hidden": 100.0, "optimizer": "dgd", "lr": np.float64(2.5e-7)}]
    assert common.level_specs(rows) == (LevelSpec(period=1), LevelSpec(period=8, hidden=100, optimizer="dgd", lr=2.5e-7))
    assert all(type(lv.period) is int and type(lv.lr) is float for lv in common.level_specs(rows))
    for column, bad, make in (("period", 2.5, lambda: LevelSpec(period=2.5)), ("lr", 0.0, lambda: LevelSpec(lr=0.0)),
                              ("optimizer", "lbfgs", lambda: LevelSpec(optimizer="lbfgs"))):
        with pytest.raises(ConfigError) as caught:
            common.level_specs([rows[0], {**rows[1], column: bad}])
        assert str(caught.value) == f"level 2 {_library_message(make)}"
    with pytest.raises(ConfigError, match=r"^level 1 hidden: needs a value$"):
        common.level_specs([{**rows[0], "hidden": np.nan}])


def test_the_form_says_which_run_start_trains_and_that_run_trains(runs):
    at = _app("live")
    at.number_input(key="live_steps").set_value(40).run()
    at.session_state["live_levels"] = {"edited_rows": {1: {"optimizer": "sgd", "lr": 0.005}, 2: {"period": 16}},
                                       "added_rows": [], "deleted_rows": []}
    at.selectbox(key="live_accumulate").set_value("mean").run()
    expected = TrainConfig(steps=40, accumulate="mean", model=ModelConfig(
        levels=(LevelSpec(period=1), LevelSpec(period=8, optimizer="sgd", lr=0.005), LevelSpec(period=16))))
    import common

    summary = common.run_summary(expected)
    assert summary == f"{expected.describe()}; on {common.default_device()}"
    assert "C=8 mlp width 64 hidden 256 sgd lr 0.005" in summary and "40 steps" in summary and "chunk mean" in summary
    assert common.default_device() in summary
    assert f"**Start** trains: {summary}." in [c.value for c in at.caption]
    at.button(key="start").click().run()
    assert not at.exception and not at.error
    (run,) = common.registry().runs()
    assert run.config == expected
    assert run.wait(timeout=120) == "finished" and open_run(run.directory).last_step() == 40


def test_home_page_names_the_device_the_run_gets(runs):
    import common
    from nlviz.live import run_device

    at = _app()
    button = at.button(key="start_default")
    assert f"on {run_device('auto')})" in button.label
    button.click().run()
    (run,) = common.registry().runs()
    assert run.device == run_device("auto")  # the Live page's Device metric says the same words


# ---------------------------------------------------------------------- panels follow the step
def _heatmap_titles(at: AppTest) -> list[str]:
    """The heatmaps' titles as one line each (a half-width heatmap has its step on a second line)."""
    titles = []
    for chart in at.get("plotly_chart"):
        title = json.loads(chart.proto.spec)["layout"].get("title", {}).get("text", "").replace("<br>", " ")
        if title.startswith("level "):
            titles.append(title)
    return titles


def _newest_record(directory: Path, step: int) -> int:
    return max(s for s in open_run(directory).tensor_steps("activation") if s <= step)


def test_the_heatmaps_follow_step_and_step_to_update_while_paused(runs):
    at = _app("live")
    at.number_input(key="live_steps").set_value(LONG).run()
    at.button(key="start").click().run()
    import common

    run = common.registry().runs()[0]
    # two tensor records, so the slider is drawn; pausing commits them
    wait_for(lambda: run.step_count >= 20, "the run reaching step 20")
    at.button(key="pause").click().run()
    assert _metric(at, "State") == "paused"

    def shown():
        step = int(_metric(at, "Step"))
        record = _newest_record(run.directory, step)
        assert at.select_slider(key="live_heat_step").value == record, f"the heatmaps stayed behind step {step}"
        assert _heatmap_titles(at) == [f"level 1: activations y_l, step {record}",
                                       f"level 1: surprise u_l = dL/dy_l, step {record}"]
        return step, record

    shown()
    at.selectbox(key="target_level").set_value(3).run()  # C = 64: each update moves past several records
    for _ in range(2):
        before, record = shown()
        at.button(key="step_to_update").click().run()
        run.wait(timeout=120)
        at.run()
        after, moved = shown()
        assert after % 64 == 0 and after > before
    assert moved > record  # the second jump starts on a multiple of 64: it crosses a record

    # A step picked on the slider stays while the run stays; a Step moves the heatmaps on again.
    first = open_run(run.directory).tensor_steps("activation")[0]
    at.select_slider(key="live_heat_step").set_value(first).run()
    at.run()
    assert at.select_slider(key="live_heat_step").value == first and _heatmap_titles(at)[0].endswith(f"step {first}")
    at.button(key="step").click().run()
    run.wait(timeout=120)
    at.run()
    shown()


def test_a_diverging_run_is_flagged_on_the_live_page(runs):
    """Learning rate 100 on levels 2 and 3: the loss grows by orders of magnitude while it stays finite."""
    at = _app("live")
    at.number_input(key="live_steps").set_value(30).run()
    at.session_state["live_levels"] = {"edited_rows": {1: {"lr": 100.0}, 2: {"lr": 100.0}},
                                       "added_rows": [], "deleted_rows": []}
    at.run()
    at.button(key="start").click().run()
    import common

    run = common.registry().runs()[0]
    assert run.wait(timeout=120) == "finished"  # flagged, not stopped
    at.run()
    flag = open_run(run.directory).diverging
    assert flag is not None and [w.value for w in at.warning] == [flag["message"]]
    assert _metric(at, "State") == "finished"


# ---------------------------------------------------------------------- a run's process and the page
_AS_STREAMLIT_RUNS_IT = """
import sys, types
sys.path[:0] = [{tests!r}, {app!r}]
from conftest import tiny_config
from nlviz.live import RunRegistry

# What `streamlit run` does while a page runs: the entry point is a fresh module called
# __main__ with the script's __file__, and a Start on the page creates the run from there.
page = types.ModuleType("__main__")
page.__file__ = {entry!r}
sys.modules["__main__"] = page
run = RunRegistry(sys.argv[1]).create(tiny_config(steps=3))
run.start()
print(run.wait(timeout=120), flush=True)
"""


def test_a_runs_training_process_does_not_run_the_dashboard_page(tmp_path):
    """Each run's process re-runs the creating process's main script (multiprocessing's spawn
    preparation); the dashboard's entry point must do nothing there. Before, every run drew
    the page without a session: 6-8 'missing ScriptRunContext' warnings in the server's terminal."""
    import subprocess

    script = _AS_STREAMLIT_RUNS_IT.format(tests=str(Path(__file__).parent), app=str(APP),
                                          entry=str(APP / "streamlit_app.py"))
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "finished"
    assert "ScriptRunContext" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
