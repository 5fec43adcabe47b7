"""The trainer: events, checkpoints that resume bit-for-bit, divergence, devices."""

from __future__ import annotations

import pytest
import torch

from nlviz import (
    ConfigError,
    DivergenceError,
    LevelClock,
    LevelSpec,
    ModelConfig,
    Subscriber,
    SurpriseConfig,
    Trainer,
    TrainConfig,
    resolve_device,
)
from nlviz.tasks import MultiscaleTask

from conftest import tiny_config


class Recorder(Subscriber):
    def __init__(self):
        self.calls, self.updates, self.norms = [], [], []

    def on_start(self, trainer):
        self.calls.append("start")

    def on_step(self, event):
        self.calls.append(event.step)

    def on_level_update(self, event):
        self.updates.append((event.step, event.level))
        self.norms.append(event.update_norm)

    def on_end(self, trainer, status, error=None):
        self.calls.append(status)


def test_events_follow_the_clock_and_update_norms_are_the_parameter_change():
    rec = Recorder()
    trainer = Trainer(tiny_config((1, 3, 4), steps=12), [rec], measure_updates=1)
    level2 = trainer.model.levels[1]
    before = torch.cat([p.detach().flatten().clone() for p in level2.parameters()])
    trainer.run(steps=3)
    after = torch.cat([p.detach().flatten() for p in level2.parameters()])
    assert rec.updates[-1] == (3, 1)
    torch.testing.assert_close(rec.norms[-1], (after - before).norm())
    result = trainer.run()
    assert result.status == "finished" and result.steps == 12
    assert rec.calls == ["start", *range(1, 13), "finished"]
    assert rec.updates == LevelClock((1, 3, 4)).updates_between(1, 12)
    assert set(result.metrics) == {"mse", "mse_vs_slow_only", "mse_vs_fast_only"}


def _resume_config():
    levels = (
        LevelSpec(kind="lstm", width=8, period=1, optimizer="adam", lr=1e-2),
        LevelSpec(width=8, hidden=16, period=4, optimizer="dgd", lr=1e-3),
        LevelSpec(width=8, hidden=16, period=3, optimizer="sgd", lr=1e-2),
    )
    return TrainConfig(
        task="recall",
        model=ModelConfig(levels=levels),
        surprise=SurpriseConfig(enabled=True, weights=(0.1,), every=2),
        accumulate="mean",
        steps=20,
        batch_size=4,
        device="cpu",
    )


def test_checkpoint_resumes_bit_for_bit(tmp_path):
    straight = Trainer(_resume_config())
    straight.run()

    first = Trainer(_resume_config())
    first.run(steps=9)  # mid-chunk for the period-4 and period-3 levels
    path = first.save_checkpoint(tmp_path / "ck.pt")
    assert not (tmp_path / "ck.pt.tmp").exists()
    torch.load(path, weights_only=True)  # loads without unpickling arbitrary objects
    resumed = Trainer.from_checkpoint(path)
    assert resumed.clock.t == 9
    resumed.run()
    for (n, p), (_, q) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(p, q), n
    assert torch.equal(straight.model.levels[0].state[0], resumed.model.levels[0].state[0])


def test_from_checkpoint_rejects_a_file_that_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "x.pt"
    torch.save({"hello": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not an nlviz checkpoint"):
        Trainer.from_checkpoint(bad)


class _PoisonedTask(MultiscaleTask):
    """Feeds an infinite input at one step."""

    bad_step = 5

    def batch(self, t, batch_size):
        x, y = super().batch(t, batch_size)
        if t == self.bad_step:
            x = x.clone()
            x[0, 0] = float("inf")
        return x, y


@pytest.mark.parametrize("sync_every", [1, 4])
def test_non_finite_input_stops_with_the_step_and_where_it_started(sync_every):
    cfg = tiny_config((1, 2, 3), steps=20, sync_every=sync_every, norm=False)
    rec = Recorder()
    trainer = Trainer(cfg, [rec], task=_PoisonedTask(cfg.task_options, "cpu", 0))
    with pytest.raises(DivergenceError) as info:
        trainer.run()
    err = info.value
    assert err.step == 5 and str(err).startswith("loss became non-finite at step 5")
    assert err.level == 3  # NaN everywhere: backprop meets it first at the top level
    assert "activations first non-finite at level 1" in str(err)  # the forward pass shows the origin
    if sync_every == 1:
        assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # the bad step did not update
    else:
        assert "(detected at step 8)" in str(err)
    assert rec.calls[-1] == "diverged"


@pytest.mark.parametrize("sync_every", [1, 4])
def test_surprise_blowing_up_inside_backprop_names_that_level(sync_every):
    """A non-finite gradient injected inside level 2's backward, loss finite: u_3 and u_2 stay
    finite, u_1 (level 2's input gradient) is the first non-finite surprise."""
    trainer = Trainer(tiny_config((1, 1, 1), steps=20, sync_every=sync_every))

    def poison(module, args, output):
        if trainer.clock.t == 6:
            output.register_hook(lambda g: torch.full_like(g, float("nan")))

    trainer.model.levels[1].fc1.register_forward_hook(poison)
    with pytest.raises(DivergenceError) as info:
        trainer.run()
    err = info.value
    assert err.step == 6 and err.level == 1
    assert str(err).startswith("surprise became non-finite (the loss was still finite) at step 6")
    assert "activations" not in str(err)


def test_device_resolution(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="^device: cuda was requested"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="^device: mps"):
        resolve_device("mps")
    with pytest.raises(ConfigError, match="^device:"):
        Trainer(tiny_config(device="cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"


def test_same_seed_same_run_other_seed_other_run():
    a, b, c = (Trainer(tiny_config(seed=s, steps=10)) for s in (3, 3, 4))
    for t in (a, b, c):
        t.run()
    pa, pb, pc = (torch.cat([p.flatten() for p in t.model.parameters()]) for t in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_a_stop_requested_before_run_is_honoured_once():
    trainer = Trainer(tiny_config(steps=10))
    trainer.request_stop()
    assert trainer.run().steps == 0
    assert trainer.run().status == "finished"


def test_periodic_checkpoint_from_on_step_end_resumes_exactly(tmp_path):
    class Saver(Subscriber):
        def on_step_end(self, trainer, step):
            if step == 7:
                trainer.save_checkpoint(tmp_path / "ck.pt")

    straight = Trainer(_resume_config())
    straight.run()
    Trainer(_resume_config(), [Saver()]).run()
    resumed = Trainer.from_checkpoint(tmp_path / "ck.pt")
    assert resumed.clock.t == 7
    resumed.run()
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_request_stop_returns_early_without_ending():
    rec = Recorder()

    class StopAt(Subscriber):
        def on_step(self, event):
            if event.step == 4:
                trainer.request_stop()

    trainer = Trainer(tiny_config(steps=10), [rec, StopAt()])
    result = trainer.run()
    assert result.status == "stopped" and result.steps == 4 and rec.calls[-1] == 4
    assert trainer.run().status == "finished" and rec.calls[-1] == "finished"


def test_a_checkpoint_resumes_only_on_its_device_type(tmp_path):
    trainer = Trainer(tiny_config())
    trainer.run(steps=2)
    state = trainer.state_dict()
    state["device_type"] = "cuda"
    torch.save(state, tmp_path / "ck.pt")
    with pytest.raises(ValueError, match="^checkpoint: written on cuda"):
        Trainer.from_checkpoint(tmp_path / "ck.pt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; CI has no GPU")
def test_cuda_training_follows_the_cpu_run_and_resumes(tmp_path):
    """Same init, same Eq 31 schedule: the CUDA run tracks the CPU run closely (the task
    streams differ by device, so both use one fixed batch), and an LSTM level resumes."""
    levels = (LevelSpec(kind="lstm", width=8), LevelSpec(width=8, hidden=16, period=2, optimizer="dgd", lr=1e-3))
    cfg = TrainConfig(model=ModelConfig(levels=levels), steps=10, batch_size=4, device="cuda")
    gpu = Trainer(cfg)
    cpu = Trainer(TrainConfig.from_dict({**cfg.to_dict(), "device": "cpu"}))
    x, y = cpu.task.batch(1, 4)
    for tr in (gpu, cpu):
        tr.task.batch = lambda t, b, tr=tr: (x.to(tr.device), y.to(tr.device))
        tr.run()
    for p, q in zip(gpu.model.parameters(), cpu.model.parameters()):
        torch.testing.assert_close(p.cpu(), q, rtol=1e-3, atol=1e-4)
    gpu.save_checkpoint(tmp_path / "ck.pt")
    resumed = Trainer.from_checkpoint(tmp_path / "ck.pt")
    assert resumed.model.levels[0].state[0].is_cuda


def test_a_level_outside_the_loss_graph_has_no_surprise_and_does_not_break_the_step():
    from nlviz import CMS

    class Detached(CMS):  # level 2's output is computed but never used
        def forward(self, x, return_internals=False):
            h = self.stem(x)
            h, tr1 = self.levels[0](h, trace=return_internals)
            _, tr2 = self.levels[1](h, trace=return_internals)
            out = self.head(h)
            return (out, [tr1, tr2]) if return_internals else out

    cfg = tiny_config((1, 1), steps=4)
    trainer = Trainer(cfg, model=Detached(cfg.model, 5, 5))
    event = trainer.step()
    assert event.surprise[0] is not None and event.surprise[1] is None
    assert trainer.run().status == "finished"


def test_a_large_but_finite_surprise_is_not_divergence():
    trainer = Trainer(tiny_config((1, 1), steps=6))

    def amplify(module, args, output):
        if trainer.clock.t == 3:
            output.register_hook(lambda g: g * 1e30)  # ||u|| overflows float32, every entry is finite

    trainer.model.levels[1].fc1.register_forward_hook(amplify)
    trainer.run(steps=3)
    assert trainer.clock.t == 3  # no DivergenceError


def test_with_a_slow_sync_no_checkpoint_is_written_after_a_non_finite_step(tmp_path):
    class Saver(Subscriber):
        def on_step_end(self, trainer, step):
            if step == 6:
                trainer.save_checkpoint(tmp_path / "ck.pt")

    cfg = tiny_config((1, 2), steps=20, sync_every=4, norm=False)
    trainer = Trainer(cfg, [Saver()], task=_PoisonedTask(cfg.task_options, "cpu", 0))
    with pytest.raises(DivergenceError) as info:
        trainer.run()
    assert info.value.step == 5 and "(detected at step 6)" in str(info.value)
    assert not (tmp_path / "ck.pt").exists()
    stopped = Trainer(cfg, task=_PoisonedTask(cfg.task_options, "cpu", 0))
    with pytest.raises(DivergenceError):  # run(steps=...) ending between syncs still checks
        stopped.run(steps=6)


def test_independent_levels_are_reported_side_by_side():
    cfg = tiny_config((1, 1, 1), steps=10, variant="independent", norm=False)
    trainer = Trainer(cfg, task=_PoisonedTask(cfg.task_options, "cpu", 0))
    with pytest.raises(DivergenceError) as info:
        trainer.run()
    assert "non-finite surprise at level(s) 1, 2, 3" in str(info.value) and info.value.level == 1


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA; CI has no GPU"))])
def test_bf16_autocast_follows_float32_and_keeps_float32_state(tmp_path, device):
    """autocast='bf16' runs the forward pass in bfloat16: the surprises come out in bf16, the
    parameters, their gradients and the optimizer stay float32, the store records the run, and
    the losses follow the float32 run's closely."""
    from nlviz import RunWriter, open_run

    runs = {}
    for autocast in ("none", "bf16"):
        cfg = tiny_config(optimizer="adam", lr=1e-2, steps=40, device=device, autocast=autocast,
                          surprise=SurpriseConfig(enabled=True))
        trainer = Trainer(cfg, [RunWriter(tmp_path / autocast, scalars_every=1, tensors_every=10, memory_every=10)])
        event = trainer.step()
        want = torch.bfloat16 if autocast == "bf16" else torch.float32
        assert event.surprise[0].dtype == want and event.loss.dtype == torch.float32
        trainer.run()
        assert all(p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32)
                   for p in trainer.model.parameters())
        run = open_run(tmp_path / autocast)
        loss = run.scalars("loss", level=0)
        assert run.last_step() == 40 and len(loss) == 40 and loss.value.notna().all()
        runs[autocast] = loss.value.to_numpy()
        run.close()
    rel = abs(runs["bf16"] - runs["none"]) / runs["none"]
    assert rel[:5].max() < 0.02 and rel.mean() < 0.05  # bf16 keeps about 3 significant digits


def test_autocast_names_what_is_allowed():
    with pytest.raises(ConfigError, match=r"^autocast: must be one of none, bf16; got 'fp16'$"):
        tiny_config(autocast="fp16")


SYNC_SETUPS = {
    "defaults": {},
    "dgd+surprise+mean": dict(
        model=ModelConfig(levels=(LevelSpec(period=1, optimizer="dgd", lr=1e-3), LevelSpec(period=4, optimizer="sgd", lr=1e-2))),
        surprise=SurpriseConfig(enabled=True), accumulate="mean", linears_every=1),
    "independent": dict(model=ModelConfig(variant="independent")),
}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; CI has no GPU")
@pytest.mark.parametrize("setup", list(SYNC_SETUPS))
@pytest.mark.parametrize("autocast", ["none", "bf16"])
def test_cuda_steps_between_syncs_never_wait_for_the_host(autocast, setup):
    """On CUDA the trainer reads the device only every sync_every steps: with
    torch.cuda.set_sync_debug_mode('error') any other host synchronisation raises."""
    cfg = TrainConfig(steps=10**6, device="cuda", sync_every=50, autocast=autocast, **SYNC_SETUPS[setup])
    trainer = Trainer(cfg)
    trainer.run(steps=50)  # warm-up, ends on a sync step
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(49):  # steps 51..99: none of them is a sync step
            trainer.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer.clock.t == 99
