"""The experiments: every --quick run through the command line, their numbers against references.

References: closed forms (Student's t interval, the Fisher of softmax regression, the EWC
penalty and its autograd gradient, a sine's and a ramp's spectrum), plain-torch
recomputations (a capacity point, accuracy and forgetting from the stored matrices), the
CMS's own parameter count, and a rerun of one seed (determinism).
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nlviz import CMS, DigitsConfig, LevelSpec, ModelConfig, TrainConfig, Trainer, make_pairs
from nlviz.experiments import EXPERIMENTS, figures, main, run_experiment, spread
from nlviz.experiments import ablation, capacity, co2, continual, levels
from nlviz.experiments.ewc import EWC, fisher_diagonal
from nlviz.experiments.series import WindowTask
from nlviz.experiments.streams import geometric_periods, matched_levels, parameter_count
from nlviz.trainer import Subscriber

T_975_3 = 3.182446305284263  # Student's t, 97.5% quantile, 3 degrees of freedom (tables)
T_975_1 = 12.706204736174698  # the same with 1 degree of freedom (two seeds)


def _strict(path: Path) -> dict:
    """result.json, refusing NaN and infinities (not JSON)."""
    def refuse(token: str):
        raise ValueError(f"{path}: {token} is not valid JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    """Every experiment's --quick run, through main(); capacity into the default place ($NLVIZ_RESULTS/NAME)."""
    parent = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NLVIZ_RESULTS", str(parent))
        for name in EXPERIMENTS:
            out = [] if name == "capacity" else ["--out", str(parent / name)]
            assert main([name, "--quick", "--no-progress", *out]) == 0
    return parent


def _result(quick: Path, name: str) -> dict:
    return _strict(quick / name / "result.json")


# ---------------------------------------------------------------------------- every experiment
@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_quick_run_writes_valid_json_and_html(quick, name):
    r = _result(quick, name)
    assert r["experiment"] == name and r["quick"] is True and r["seeds"] == [0, 1]
    assert r["settings"] == json.loads(json.dumps(dataclasses.asdict(EXPERIMENTS[name].quick)))
    assert [rec["seed"] for rec in r["per_seed"]] == [0, 1]
    assert r["machine"]["torch"] == torch.__version__ and r["machine"]["device"] == "cpu" and r["wall_s"] > 0
    assert r["summary"] and all({"condition", "metric", "mean", "ci95", "n"} <= set(row) for row in r["summary"])
    assert r["findings"] and all(isinstance(line, str) for line in r["findings"])
    stems = set(figures.build(r))
    assert {Path(p).stem for p in r["files"]["html"]} == stems
    for rel in r["files"]["html"]:
        html = (quick / name / rel).read_text()
        assert "plotly" in html and len(html) < 1_000_000
    assert (quick / name / "figures" / "plotly.min.js").exists()  # the figures open offline
    try:
        import kaleido  # noqa: F401
    except ImportError:
        assert r["png"] is False and r["files"]["png"] == [] and "kaleido is not installed" in r["png_note"]
    else:
        assert r["png"] == bool(r["files"]["png"])


def test_spread_is_the_t_interval():
    s = spread([1.0, 2.0, 3.0, 4.0])
    std = math.sqrt(5 / 3)  # sample standard deviation of 1, 2, 3, 4
    assert s["mean"] == 2.5 and s["std"] == pytest.approx(std)
    assert s["ci95"] == pytest.approx(T_975_3 * std / 2) and s["lo"] == pytest.approx(2.5 - s["ci95"])
    assert spread([0.7])["ci95"] is None and spread([0.7])["mean"] == 0.7


def test_summaries_are_the_spread_of_the_per_seed_numbers(quick):
    r = _result(quick, "continual")
    for row in r["summary"]:
        key = "average_accuracy" if row["metric"] == "final average accuracy" else "forgetting"
        values = [rec["models"][row["condition"]][key][-1] for rec in r["per_seed"]]
        assert row["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert row["ci95"] == pytest.approx(T_975_1 * np.std(values, ddof=1) / math.sqrt(2), abs=1e-12)


def test_one_seed_reruns_bit_for_bit(quick, tmp_path):
    _, again = run_experiment("levels", seeds=[1], quick=True, out=tmp_path / "levels", progress=False)
    assert again["per_seed"][0] == _result(quick, "levels")["per_seed"][1]


# ---------------------------------------------------------------------------- bad arguments
BAD = [
    (["nope"], "NAME"),
    (["capacity", "--seeds", "0"], "--seeds"),
    (["capacity", "--seeds", "two"], "--seeds"),
    (["capacity", "--seeds", "101"], "--seeds"),
    (["capacity", "--out", "FILE"], "--out"),
    (["capacity", "--colour", "red"], "--colour"),
]


@pytest.mark.parametrize("argv,field", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(tmp_path, monkeypatch, capsys, argv, field):
    monkeypatch.setenv("NLVIZ_RESULTS", str(tmp_path / "results"))
    (tmp_path / "FILE").write_text("not a directory")
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors (an unknown option)
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and field in err[0] and "Traceback" not in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]
    assert (tmp_path / "FILE").read_text() == "not a directory"


def test_the_module_entry_point_reports_a_bad_argument(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nlviz.experiments", "capacity", "--seeds", "0", "--out",
                           str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and not (tmp_path / "r").exists()
    expected = "python -m nlviz.experiments: error: --seeds: must be an integer between 1 and 100, got '0'"
    assert proc.stderr.strip() == expected


# ---------------------------------------------------------------------------- capacity
def test_capacity_delta_is_exact_below_the_width_and_hebbian_grows_with_correlation(quick):
    r = _result(quick, "capacity")
    d, pairs = r["settings"]["width"], r["data"]["pairs"]
    for rec in r["per_seed"]:
        assert all(e < 1e-3 for n, e in zip(pairs, rec["by_pairs"]["delta"]) if n <= d // 2)
        assert all(dl <= hb for dl, hb in zip(rec["by_pairs"]["delta"], rec["by_pairs"]["hebbian"]))
        assert rec["by_correlation"]["hebbian"][-1] > rec["by_correlation"]["hebbian"][0]
        assert rec["by_pairs"]["least_squares"][pairs.index(d)] < 1e-6  # d keys: a linear memory can be exact
    assert np.all(np.diff(r["data"]["by_correlation"]["hebbian"]["mean"]) > 0)
    assert r["data"]["delta_by_sweeps"]["mean"][-1] < r["data"]["delta_by_sweeps"]["mean"][0]  # more passes help


def test_capacity_point_recomputed_by_plain_torch(quick):
    r = _result(quick, "capacity")
    s, seed, n = r["settings"], 1, 8
    keys, values = make_pairs(n, s["width"], s["value_dim"], 0.0, torch.Generator().manual_seed(seed))
    hebbian = values.T @ keys  # sweeps passes of lr = 1/sweeps: W = sum_i v_i k_i^T
    W = torch.zeros(s["value_dim"], s["width"], dtype=torch.float64)
    k64, v64 = keys.double(), values.double()
    for _ in range(s["sweeps"]):
        for k, v in zip(k64, v64):
            a = s["delta_lr"] / (1 + s["delta_lr"] * float(k @ k))
            W = W - a * torch.outer(W @ k - v, k)  # erase what W says at k, write v

    def error(M, K, V):
        return float((K @ M.T - V).pow(2).sum(1).mean() / V.pow(2).sum(1).mean())

    j = r["data"]["pairs"].index(n)
    stored = r["per_seed"][seed]["by_pairs"]
    assert stored["hebbian"][j] == pytest.approx(error(hebbian, keys, values), rel=1e-4)
    assert stored["delta"][j] == pytest.approx(error(W, k64, v64), rel=1e-3, abs=1e-9)


# ---------------------------------------------------------------------------- continual and EWC
@pytest.mark.parametrize("width,total_hidden", [(64, 384), (16, 48)])
@pytest.mark.parametrize("periods", [(1,), (1, 64), (1, 8, 64), (1, 4, 16, 64)])
def test_matched_levels_keep_the_parameter_count(width, total_hidden, periods):
    one = parameter_count(ModelConfig(levels=(LevelSpec(width=width, hidden=total_hidden),)), 64, 10)
    cms = CMS(ModelConfig(levels=matched_levels(periods, total_hidden, width)), 64, 10)
    assert abs(sum(p.numel() for p in cms.parameters()) / one - 1) < 0.03


def test_continual_models_are_the_same_size_within_tolerance():
    s = continual.ContinualSettings()
    sizes = continual.sizes(s)
    assert len(sizes) == 5 and all(abs(v / sizes["one level"] - 1) < s.tolerance for v in sizes.values())
    assert any("C=1, 4, 16, 64" in name for name in sizes) and any(name.startswith("EWC") for name in sizes)


def test_continual_accuracy_and_forgetting_recomputed_from_the_matrices(quick):
    r = _result(quick, "continual")
    for rec in r["per_seed"]:
        for run in rec["models"].values():
            acc = np.array([[np.nan if a is None else a for a in row] for row in run["acc"]])
            assert run["average_accuracy"] == pytest.approx([np.nanmean(acc[k, : k + 1]) for k in range(5)])
            expected = [max(acc[j, i] for j in range(i, k)) - acc[k, i] for k in range(1, 5) for i in range(k)]
            per_task = [np.mean(expected[k * (k - 1) // 2 : k * (k + 1) // 2]) for k in range(1, 5)]
            assert run["forgetting"][0] is None and run["forgetting"][1:] == pytest.approx(per_task)
            assert np.isnan(acc[0, 1]) and 0 <= np.nanmin(acc) and np.nanmax(acc) <= 1


def test_fisher_of_softmax_regression_is_its_closed_form():
    torch.manual_seed(0)
    model, X = nn.Linear(5, 3), torch.randn(20, 5)
    F = fisher_diagonal(model, X, chunk=7)
    p = torch.softmax(model(X), dim=-1).detach()  # (20, 3)
    var = p * (1 - p)  # sum_c p_c (1[c = i] - p_i)^2 = p_i (1 - p_i)
    assert torch.allclose(F["weight"], (var[:, :, None] * X[:, None, :].pow(2)).mean(0), atol=1e-6)
    assert torch.allclose(F["bias"], var.mean(0), atol=1e-6)


def test_ewc_penalty_and_the_gradient_it_adds_match_the_closed_form():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    ewc = EWC(strength=7.0)
    ewc.consolidate(model, torch.randn(10, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ewc.consolidate(model, torch.randn(10, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    names = dict(model.named_parameters())
    expected = 0.5 * 7.0 * sum(float((f[n] * (names[n].detach() - a[n]).pow(2)).sum())
                               for a, f in zip(ewc.anchors, ewc.fishers) for n in names)
    penalty = ewc.penalty()
    assert float(penalty.detach()) == pytest.approx(expected, rel=1e-6) and expected > 0
    reference = torch.autograd.grad(penalty, list(names.values()))
    before = {n: torch.randn_like(p) for n, p in names.items()}
    for n, p in names.items():
        p.grad = before[n].clone()
    ewc.on_step(None)
    for (n, p), g in zip(names.items(), reference):
        assert torch.allclose(p.grad, before[n] + g, atol=1e-6)


class _Distance(Subscriber):
    def on_start(self, trainer):
        self.start = [p.detach().clone() for p in trainer.model.parameters()]
        self.model = trainer.model

    def moved(self) -> float:
        return float(sum((p.detach() - s).pow(2).sum() for p, s in zip(self.model.parameters(), self.start)).sqrt())


def test_ewc_in_the_trainer_holds_the_weights_near_their_anchor():
    def moved(strength: float | None) -> float:
        config = TrainConfig(task="digits", task_options=DigitsConfig(steps_per_task=20),
                             model=ModelConfig(levels=(LevelSpec(width=8, hidden=8),)), steps=100, batch_size=8,
                             device="cpu", capture=False)
        distance = _Distance()
        subscribers = [distance]
        if strength is not None:
            ewc = EWC(strength)
            subscribers.insert(0, ewc)
        trainer = Trainer(config, subscribers)
        if strength is not None:
            ewc.params = dict(trainer.model.named_parameters())
            ewc.anchors = [{n: p.detach().clone() for n, p in ewc.params.items()}]
            ewc.fishers = [{n: torch.ones_like(p) for n, p in ewc.params.items()}]
        trainer.run(steps=40)
        return distance.moved()

    assert moved(1e4) < 0.1 * moved(None)


# ---------------------------------------------------------------------------- levels, ablation
def test_levels_grid_spreads_periods_geometrically(quick):
    assert geometric_periods(1, 64) == (1,) and geometric_periods(4, 64) == (1, 4, 16, 64)
    assert geometric_periods(3, 512) == (1, 23, 512) and geometric_periods(2, 8) == (1, 8)
    assert len(levels.conditions(levels.LevelsSettings())) == 1 + 3 * 3
    r = _result(quick, "levels")
    labels = [c["label"] for c in r["data"]["conditions"]]
    assert len(r["summary"]) == len(labels) * len(r["data"]["metrics"])
    assert all(row["n"] == 2 and row["mean"] is not None for row in r["summary"])
    assert all(rec["conditions"][lab]["mse"] > 0 for rec in r["per_seed"] for lab in labels)


def test_ablation_findings_survive_a_full_model_that_diverged_on_every_seed():
    from nlviz.experiments.common import spread

    metric = "multiscale MSE (2nd half)"
    summary = [{"condition": ablation.FULL, "metric": metric, "diverged_seeds": 3, **spread([])},
               {"condition": "without CMS", "metric": metric, "diverged_seeds": 0, **spread([0.1, 0.2, 0.15])}]
    assert ablation._findings(summary) == ["Full model: diverged on every seed, so no row is compared with it."]
    summary[0].update(diverged_seeds=0, **spread([0.3, 0.32, 0.31]))
    lines = ablation._findings(summary)
    assert lines[0].startswith("Full model: multiscale MSE 0.31") and "better than the full model" in lines[1]


def test_each_ablation_changes_exactly_one_thing(quick):
    s = ablation.AblationSettings()
    full, *rest = ablation.variants(s)
    assert full == ablation.Variant("full model", s.periods)
    for v in rest:
        changed = [f.name for f in dataclasses.fields(v)
                   if f.name != "name" and getattr(v, f.name) != getattr(full, f.name)]
        assert len(changed) == 1, (v.name, changed)
    r = _result(quick, "ablation")
    for rec in r["per_seed"]:
        assert list(rec["variants"]) == [v.name for v in ablation.variants(ablation.EXPERIMENT.quick)]
        assert all((run["mse"] is None) == (run["diverged"] is not None) for run in rec["variants"].values())


# ---------------------------------------------------------------------------- co2
def test_window_task_streams_the_most_recent_windows_in_time_order():
    task = WindowTask(torch.arange(20.0), window=4, horizon=2)
    assert task.n_windows == 20 - 4 - 2 + 1
    x, y = task.batch(t=6, batch_size=3)  # newest window starts at 5
    assert x.tolist() == [[3, 4, 5, 6], [4, 5, 6, 7], [5, 6, 7, 8]] and y.flatten().tolist() == [8, 9, 10]
    x, _ = task.batch(t=1, batch_size=2)
    assert x.tolist() == [[0, 1, 2, 3]] * 2  # before the start: the first window repeated
    assert task.position(task.n_windows + 1) == 0  # another pass
    assert task.target_index(5) == 10


def test_co2_data_is_the_bundled_weekly_record():
    dates, values = co2.load_co2()
    assert len(values) == 2284 and dates[0] == "1958-03-29" and dates[-1] == "2001-12-29"
    assert np.isfinite(values).all() and abs(values.mean()) < 1e-9 and values.std() == pytest.approx(1.0)


def test_band_shares_tell_a_season_from_a_trend():
    weeks = np.arange(40 * 52)
    season = co2.band_shares(np.sin(2 * np.pi * weeks / co2.WEEKS_PER_YEAR), 0.15, 0.5)
    trend = co2.band_shares(weeks / weeks.size, 0.15, 0.5)
    assert season["seasonal"] > 0.95 and season["low"] < 0.01
    assert trend["low"] > 0.95 and trend["seasonal"] < 0.01


def test_carried_shares_recover_a_known_mixture_of_trend_and_season():
    _, values = co2.load_co2()
    trend, seasonal = co2.decompose(values)
    assert np.sqrt(np.mean((values - trend - seasonal) ** 2)) < 0.05  # the remainder is small (series std 1)
    mixture = 0.7 * trend + 0.2 * seasonal + 3.0
    assert co2.carried(mixture, trend, seasonal) == pytest.approx({"trend": 0.7, "season": 0.2}, abs=1e-9)


class _Explained(Subscriber):
    """The model's prediction for the newest window minus the head's bias, before the step's update."""

    def __init__(self, task: WindowTask):
        self.task, self.values = task, []

    def on_start(self, trainer):
        self.model = trainer.model

    @torch.no_grad()
    def on_step(self, event):
        x = self.task.X[self.task.position(event.step)][None]  # (1, window)
        self.values.append(float(self.model(x)) - float(self.model.head.bias))


def test_level_contributions_add_up_to_the_prediction():
    task = WindowTask(torch.sin(torch.arange(120.0) / 5), window=8, horizon=1)
    s = dataclasses.replace(co2.EXPERIMENT.quick, width=4, hidden=8, batch_size=4, slow_period=5)
    record, explained = co2.Contributions(start=1), _Explained(task)
    Trainer(co2._config(s, (1, 5), seed=0, steps=60), [record, explained], task=task).run()
    total = record.array().sum(0)  # (steps,): sum_l mix_l head.W y_l at each step
    assert record.array().shape == (2, 60) and np.abs(record.array()).min() > 0
    assert np.allclose(total, explained.values, atol=1e-5)


def test_writing_a_result_again_leaves_no_figure_of_the_earlier_one(tmp_path):
    import plotly.graph_objects as go

    from nlviz.experiments.common import load_result, write_result

    out = tmp_path / "r"
    write_result(out, {"experiment": "x"}, {"a": go.Figure(), "b": go.Figure()})
    written = write_result(out, {"experiment": "x", "run": 2}, {"b": go.Figure()})
    assert sorted(p.name for p in (out / "figures").glob("*.html")) == ["b.html"]
    assert written["files"]["html"] == ["figures/b.html"] and load_result(out)["run"] == 2
    assert not list(out.glob("*.tmp"))


@pytest.mark.parametrize("make, match", [
    (lambda: capacity.CapacitySettings(width=30), r"^CapacitySettings.pair_step: must divide width \(30\), got 4$"),
    (lambda: capacity.CapacitySettings(correlations=(0.0, 1.0)), r"^CapacitySettings.correlations: must hold numbers from 0"),
    (lambda: capacity.CapacitySettings(long_sweeps=(20, 5)), r"^CapacitySettings.long_sweeps: must increase"),
    (lambda: capacity.CapacitySettings(sweeps=0), r"^CapacitySettings.sweeps: must be an integer >= 1, got 0$"),
    (lambda: capacity.CapacitySettings(delta_lr=float("nan")), r"^CapacitySettings.delta_lr: must hold positive numbers"),
    (lambda: continual.ContinualSettings(cms_levels=(1, 3)), r"^ContinualSettings.cms_levels: a CMS has 2 levels"),
    (lambda: continual.ContinualSettings(tolerance=1.5), r"^ContinualSettings.tolerance: must hold numbers from 0"),
    (lambda: levels.LevelsSettings(level_counts=()), r"^LevelsSettings.level_counts: must be a non-empty tuple"),
    (lambda: ablation.AblationSettings(surprise_weight=-0.1), r"^AblationSettings.surprise_weight: must hold non-negative"),
    (lambda: co2.CO2Settings(weeks=-1), r"^CO2Settings.weeks: must be an integer >= 0, got -1$"),
    (lambda: co2.CO2Settings(weeks=10), r"^CO2Settings.weeks: must be 0 \(all\) or more than window \+ horizon \(56\)"),
])
def test_bad_settings_name_the_field(make, match):
    from nlviz import ConfigError

    with pytest.raises(ConfigError, match=match):
        make()



def test_check_settings_reads_real_types_and_refuses_unknown_ones():
    import dataclasses

    from nlviz import ConfigError
    from nlviz.experiments.common import check_settings

    Typed = dataclasses.make_dataclass("Typed", [("n", int), ("xs", tuple[int, ...])])  # types, not strings
    check_settings(Typed(3, (1, 2)))
    with pytest.raises(ConfigError, match=r"^Typed.n: must be an integer >= 1, got 0$"):
        check_settings(Typed(0, (1,)))
    with pytest.raises(ConfigError, match=r"^Typed.xs: must be a non-empty tuple of integers >= 1"):
        check_settings(Typed(1, ()))
    Odd = dataclasses.make_dataclass("Odd", [("items", list)])
    with pytest.raises(TypeError, match="Odd.items has a type it does not check"):
        check_settings(Odd([]))


def test_compare_and_curve_read_the_intervals():
    from nlviz.experiments.common import compare, curve

    low, high, wide, one = spread([1.0, 1.1, 0.9]), spread([5.0, 5.1, 4.9]), spread([0.0, 6.0, 3.0]), spread([2.0])
    assert compare(high, low) == "above" and compare(low, high) == "below"
    assert compare(wide, low) == "overlap" and compare(one, low) is None
    c = curve([[1.0, 1.1, 0.9], [], [5.0, 5.1, 4.9]])
    assert c["mean"][0] == pytest.approx(1.0) and c["mean"][1] is None and c["lo"][2] == pytest.approx(high["lo"])
