"""The run store: what the writer records equals what the trainer computed; the reader's
filters, decimation, liveness and errors."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from nlviz import DivergenceError, LevelClock, Subscriber, Trainer, TrainConfig, rules
from nlviz.store import LOD_WIDTH, SCHEMA, STALE_S, RunStoreError, RunWriter, index_scalars, open_run

from conftest import reference_step, tiny_config, wait_for


class Keep(Subscriber):
    """Keeps host copies of what the writer should have recorded."""

    def __init__(self, model):
        self.model, self.rows = model, {}

    def on_step(self, event):
        if event.step % 5:
            return
        self.rows[(event.step, 0, "loss")] = float(event.loss)
        for l, (tr, u) in enumerate(zip(event.traces, event.surprise)):
            self.rows[(event.step, l + 1, "surprise_norm")] = float(u.norm())
            self.rows[(event.step, l + 1, "activation_norm")] = float(tr.y.detach().norm())
            W = self.model.levels[l].fc2.weight.detach()
            x, g = tr.linear_inputs[1].detach(), event.linear_grads[l][1]
            self.rows[(event.step, l + 1, "dot_objective")] = float(rules.dot_objective(W, x, g))
            self.rows[(event.step, l + 1, "l2_objective")] = float(rules.l2_objective(W, x, g))
            if event.step % 10 == 0:
                self.rows[(event.step, l + 1, "u")] = u.detach().clone()


def test_round_trip_of_every_record_kind(tmp_path):
    periods = (1, 2, 3)
    trainer = Trainer(tiny_config(periods, steps=30))
    keep = Keep(trainer.model)
    trainer.subscribers += [keep, RunWriter(tmp_path, scalars_every=5, tensors_every=10)]
    trainer.run()
    run = open_run(tmp_path)
    assert run.status == "finished" and TrainConfig.from_dict(run.config) == trainer.config
    df = run.scalars()
    for (step, level, name), value in keep.rows.items():
        if name == "u":
            continue
        got = df[(df.step == step) & (df.level == level) & (df.name == name)].value
        assert len(got) == 1 and got.iloc[0] == pytest.approx(value, rel=1e-5, abs=1e-7), (step, level, name)
    assert run.level_updates().values.tolist() == [[t, l + 1] for t, l in LevelClock(periods).updates_between(1, 30)]
    measured = [(t, l + 1) for t, l in LevelClock(periods).updates_between(1, 30) if t % 5 == 0 or periods[l] >= 5]
    assert sorted(map(tuple, df[df.name == "update_norm"][["step", "level"]].values.tolist())) == sorted(measured)
    stats = run.tensor_stats(kind="surprise")
    assert sorted(set(stats.step)) == [10, 20, 30] and set(stats.level) == {1, 2, 3}
    u = keep.rows[(20, 2, "u")]
    row = stats[(stats.step == 20) & (stats.level == 2)].iloc[0]
    for key, ref in (("mean", u.mean()), ("std", u.std(unbiased=False)), ("min", u.min()), ("max", u.max()), ("norm", u.norm())):
        assert row[key] == pytest.approx(float(ref), rel=1e-5, abs=1e-8)
    hist, sample = run.tensor(20, 2, "surprise")
    assert hist.sum() == u.numel() and len(hist) == 32
    np.testing.assert_array_equal(sample, u[:4, :64].half().numpy())
    assert set(run.tensor_stats().kind) == {"activation", "surprise", "input"}


@pytest.mark.parametrize("periods, memory_cols", [((1, 3), 32), ((2, 5), 4)])
def test_memory_records_show_eq25_from_data_against_autograd(tmp_path, periods, memory_cols):
    trainer = Trainer(tiny_config(periods, steps=20), [RunWriter(tmp_path, memory_every=5, memory_cols=memory_cols)])
    refs = {}
    for t in range(1, 21):
        if t % 5 == 0:  # plain autograd on a copy, before the trainer takes step t
            ref, loss, _, traces = reference_step(trainer)
            Ws = [lv.fc2.weight for lv in ref.levels]
            grads = torch.autograd.grad(loss, Ws + [tr.y for tr in traces])
            refs[t] = [(W.detach(), gW, u, tr.linear_inputs[1].detach())
                       for W, gW, u, tr in zip(Ws, grads[: len(Ws)], grads[len(Ws) :], traces)]
        trainer.step()
    trainer.end("finished")
    run = open_run(tmp_path)
    assert run.memory_steps().values.tolist() == [[t, l] for t in (5, 10, 15, 20) for l in (1, 2)]
    for t, levels in refs.items():
        for l, (W, gW, u, x) in enumerate(levels, start=1):
            m = run.memory(t, l)
            r, c = m.weight.shape
            assert (r, c) == (min(memory_cols, 8), min(memory_cols, 16)) and m.shape == (8, 16) and m.batch == 4
            # this step's own gradient, although slow levels hold a chunk's sum in .grad
            np.testing.assert_allclose(m.grad, gW[:r, :c].numpy(), rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(m.outer, m.grad, rtol=1e-5, atol=1e-7)  # Eq 25 from recorded data
            np.testing.assert_array_equal(m.weight, W[:r, :c].numpy())
            np.testing.assert_allclose(m.u, u[:4, :r].numpy(), rtol=1e-5, atol=1e-8)
            np.testing.assert_allclose(m.x, x[:4, :c].numpy(), rtol=1e-6)
            np.testing.assert_allclose(m.wx, (x[:4] @ W.T)[:, :r].numpy(), rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(m.x_sq, x[:4].pow(2).sum(1).numpy(), rtol=1e-5)
    with pytest.raises(KeyError, match="no memory record for level 1 at step 6"):
        run.memory(6, 1)


def test_memory_cadence_must_fit_the_linear_records(tmp_path):
    trainer = Trainer(tiny_config(steps=4, linears_every=2), [RunWriter(tmp_path, memory_every=5)])
    with pytest.raises(RunStoreError, match=r"^memory_every: must be a multiple of linears_every \(2\), got 5$"):
        trainer.step()
    assert not (tmp_path / "run.sqlite").exists()  # refused before anything was written


def test_since_returns_only_newer_records(tmp_path):
    trainer = Trainer(tiny_config(steps=20), [RunWriter(tmp_path, scalars_every=2, tensors_every=4)])
    trainer.run()
    run = open_run(tmp_path)
    assert run.scalars(since=14).step.min() == 15 and run.scalars("loss", since=14).step.min() == 16
    assert run.level_updates(since=18).step.min() == 19
    assert run.level_updates(since=4, until=12, level=3).step.tolist() == [6, 9, 12]
    assert run.level_updates(since=4, until=12).values.tolist() == [
        [t, l + 1] for t, l in LevelClock((1, 2, 3)).updates_between(5, 12)]
    assert len(run.level_updates(level=1, limit=7)) == 7
    events, busy = run.clock_events(3, limit=7)  # levels past the limit come as (count, first, last)
    assert busy == {1: (20, 1, 20), 2: (10, 2, 20)} and events.values.tolist() == [[t, 3] for t in range(3, 19, 3)]
    assert run.update_extent(3) == (6, 3, 18) and run.update_extent(1) == (20, 1, 20) and run.update_extent(9) == (0, 0, 0)
    assert run.tensor_steps() == [4, 8, 12, 16, 20] and run.tensor_steps("surprise", 2) == [4, 8, 12, 16, 20]
    assert run.tensor_stats(since=12).step.min() == 16


def _store_with(path, values):
    con = sqlite3.connect(path)
    con.executescript(SCHEMA)
    con.executemany("INSERT INTO meta VALUES (?, ?)", [("status", json.dumps("finished")), ("config", "{}")])
    con.executemany("INSERT INTO scalars VALUES (?, 0, 'loss', ?)", [(i + 1, float(v)) for i, v in enumerate(values)])
    con.execute("INSERT INTO series VALUES ('loss', 0)")
    index_scalars(con)
    con.commit()
    con.close()


@pytest.mark.parametrize("max_points", [10, 51, 400])
def test_decimation_keeps_at_most_n_points_and_every_extreme(tmp_path, max_points):
    rng = np.random.default_rng(0)
    values = rng.normal(size=20_000)
    values[1234], values[17_001] = 50.0, -40.0  # single-step spikes
    _store_with(tmp_path / "run.sqlite", values)
    df = open_run(tmp_path).scalars("loss", max_points=max_points)
    assert 0 < len(df) <= max_points
    assert df.value.max() == 50.0 and df.value.min() == -40.0
    assert df.step.is_monotonic_increasing
    full = open_run(tmp_path).scalars("loss", since=19_990, max_points=max_points)
    assert full.step.tolist() == list(range(19_991, 20_001))  # few enough: every point


def test_a_series_shorter_than_the_plot_wants_buckets_is_decimated_finely(tmp_path):
    values = np.sin(np.arange(1_500) / 50.0)  # 1,500 steps: fewer than 6 level-of-detail buckets
    _store_with(tmp_path / "run.sqlite", values)
    df = open_run(tmp_path).scalars("loss", max_points=1000)
    assert 900 <= len(df) <= 1000  # the plot gets the detail it asked for, not 12 bucket extremes
    np.testing.assert_array_equal(df.value.to_numpy(), values[df.step.to_numpy() - 1])


@pytest.mark.parametrize("since", [None, 300, 5_017, 19_000])
def test_decimation_from_any_step_returns_real_points_and_that_ranges_extremes(tmp_path, since):
    rng = np.random.default_rng(1)
    values = rng.normal(size=20_000)
    values[[400, 5_500, 19_500]] = [30.0, -30.0, 25.0]
    values[7_000:7_600] = np.nan  # non-finite values are stored as NULL
    _store_with(tmp_path / "run.sqlite", values)
    df = open_run(tmp_path).scalars("loss", since=since, max_points=100)
    first = 1 if since is None else since + 1
    window = values[first - 1 :]
    assert 0 < len(df) <= 100 and df.step.is_monotonic_increasing and df.step.min() >= first
    finite = df.dropna()
    np.testing.assert_array_equal(finite.value.to_numpy(), values[finite.step.to_numpy() - 1])  # real points only
    assert finite.value.max() == np.nanmax(window) and finite.value.min() == np.nanmin(window)


def test_the_writers_level_of_detail_rows_equal_a_rebuild_from_the_raw_rows(tmp_path):
    trainer = Trainer(tiny_config((1, 4), steps=3 * LOD_WIDTH + 17), [RunWriter(tmp_path, scalars_every=1)])
    trainer.run()
    con = sqlite3.connect(tmp_path / "run.sqlite")
    query = "SELECT * FROM scalar_lod ORDER BY name, level, bucket"
    live = con.execute(query).fetchall()
    con.execute("DELETE FROM scalar_lod")
    index_scalars(con)
    assert live == con.execute(query).fetchall() and len(live) == 4 * len({r[:2] for r in live})


def test_a_diverged_run_keeps_its_data_and_says_where(tmp_path):
    from test_trainer import _PoisonedTask

    cfg = tiny_config((1, 2), steps=20, norm=False)
    trainer = Trainer(cfg, [RunWriter(tmp_path, scalars_every=1)], task=_PoisonedTask(cfg.task_options, "cpu", 0))
    with pytest.raises(DivergenceError):
        trainer.run()
    run = open_run(tmp_path)
    assert run.status == "diverged"
    assert run.meta["diverged_step"] == 5 and "step 5" in run.meta["message"]
    assert run.scalars("loss").step.tolist() == [1, 2, 3, 4, 5]


def test_a_stale_heartbeat_reads_as_interrupted_and_a_live_writer_blocks_a_second(tmp_path):
    trainer = Trainer(tiny_config(steps=4), [RunWriter(tmp_path)])
    trainer.run()
    con = sqlite3.connect(tmp_path / "run.sqlite")
    con.execute("UPDATE meta SET value = ? WHERE key = 'status'", [json.dumps("running")])
    con.execute("UPDATE meta SET value = ? WHERE key = 'heartbeat'", [json.dumps(time.time() - 60)])
    con.commit()
    assert open_run(tmp_path).status == "interrupted"
    second = Trainer(tiny_config(steps=4), [RunWriter(tmp_path)])  # built first: the heartbeat below stays fresh
    con.execute("UPDATE meta SET value = ? WHERE key = 'heartbeat'", [json.dumps(time.time())])
    con.execute("UPDATE meta SET value = ? WHERE key = 'writer_pid'", [json.dumps(os.getppid())])
    con.commit()
    con.close()
    with pytest.raises(RunStoreError, match="^run: .* another process"):
        second.run()


def test_paths_that_are_not_runs_give_clear_errors(tmp_path):
    with pytest.raises(RunStoreError, match="^path: .* is not an nlviz run"):
        open_run(tmp_path)
    (tmp_path / "run.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(RunStoreError, match="^path: .* damaged"):
        open_run(tmp_path)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(RunStoreError, match="not an nlviz run store"):
        open_run(other)


def _read(out):
    """(status, last step) of the run in `out`, or None while its writer has not created the store."""
    try:
        run = open_run(out)
    except RunStoreError:
        return None
    try:
        return run.status, run.last_step()
    finally:
        run.close()


def _train(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "nlviz", "train", "--no-progress", "--device", "cpu", *args],
                            stderr=subprocess.PIPE, text=True, **kw)


# One training thread: with torch's default of two, on a 2-core machine that others are using
# too, the default model was measured training at 8-20 steps/s instead of about 590.
ONE_THREAD = ("--threads", "1")


def test_another_process_sees_a_live_run_grow(tmp_path):
    """Every read from the moment the store exists, the newborn one included, says running, and
    the reads see the last step grow twice. The reads follow each other closely until then: the
    test waits for what the store shows, not for a time this machine may need to train."""
    out = tmp_path / "run"
    proc = _train("--steps", str(10**6), *ONE_THREAD, "--scalars-every", "5", "--out", str(out))
    seen = []  # each (status, last step) the reads returned, in order, repeats collapsed

    def grown_twice():
        read = _read(out) if (out / "run.sqlite").exists() else None
        if read is not None and (not seen or seen[-1] != read):
            seen.append(read)
        return len({step for _, step in seen}) >= 3

    try:
        wait_for(grown_twice, "the reader seeing the last step grow twice", proc=proc, detail=lambda: f"reads: {seen}")
        assert all(status == "running" for status, _ in seen), f"(status, last step) of the reads: {seen}"
        assert [s for _, s in seen] == sorted(s for _, s in seen), f"the last step went back: {seen}"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert open_run(out).status == "interrupted"


KILL_STEPS = 3000  # the run's length; it is killed once the store holds step 1000


def test_kill_9_leaves_a_sound_store_that_reads_interrupted_and_resumes_without_duplicates(tmp_path):
    out = tmp_path / "run"
    proc = _train("--steps", str(KILL_STEPS), *ONE_THREAD, "--checkpoint-every", "200", "--scalars-every", "5",
                  "--out", str(out))
    beats = set()  # heartbeats a reader saw while the writer lived

    def far_enough():
        try:
            run = open_run(out)
        except RunStoreError:
            return False
        try:
            beats.add(run.meta.get("heartbeat"))
            return run.last_step() >= 1000 and len(beats - {None}) >= 2
        finally:
            run.close()

    wait_for(far_enough, "the store holding step 1000 and a refreshed heartbeat", proc=proc)
    proc.kill()
    killed_at = time.time()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed (exit {proc.returncode}): {err}"

    con = sqlite3.connect(out / "run.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    meta = open_run(out).meta
    beat = meta["heartbeat"]
    # What a reader relies on: a writer alive until the kill had refreshed its heartbeat recently
    # enough to read as running (a bound in seconds below STALE_S would measure the machine's load).
    assert meta["status"] == "running" and killed_at - beat < STALE_S, (meta["status"], killed_at - beat)
    reads = []  # (time before the read, time after it, status)

    def interrupted():
        before = time.time()
        status = _read(out)[0]
        reads.append((before, time.time(), status))
        return status == "interrupted"

    wait_for(interrupted, "the killed run reading interrupted", timeout=STALE_S + 60)
    # The rule, exactly, whatever the machine's speed: running while the heartbeat is at most
    # STALE_S old, interrupted once it is older.
    for before, after, status in reads:
        if after - beat <= STALE_S:
            assert status == "running", f"read {after - beat:.2f} s after the last heartbeat: {status}"
        if before - beat > STALE_S:
            assert status == "interrupted", f"read {before - beat:.2f} s after the last heartbeat: {status}"

    resumed = _train("--resume", str(out), *ONE_THREAD)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    run = open_run(out)
    assert run.status == "finished"
    assert run.scalars("loss").step.tolist() == list(range(5, KILL_STEPS + 1, 5))  # nothing missing, nothing twice
    updates = run.level_updates()
    assert not updates.duplicated().any() and len(updates) == sum(KILL_STEPS // p for p in (1, 8, 64))
    con = sqlite3.connect(out / "run.sqlite")  # the level-of-detail rows were mended too
    kept = con.execute("SELECT * FROM scalar_lod ORDER BY name, level, bucket").fetchall()
    con.execute("DELETE FROM scalar_lod")
    index_scalars(con)
    assert kept == con.execute("SELECT * FROM scalar_lod ORDER BY name, level, bucket").fetchall()


def test_resume_refuses_what_cannot_resume_and_runs_lists_runs(tmp_path):
    done = tmp_path / "done"
    assert _train("--steps", "20", "--out", str(done)).wait(timeout=120) == 0
    proc = _train("--resume", str(done))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and err.strip() == f"nlviz: error: --resume: {done} is finished; only an interrupted, failed or diverged run resumes"
    proc = _train("--resume", str(tmp_path / "nothing"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "--resume:" in err and "not an nlviz run" in err
    (tmp_path / "notes").mkdir()
    listing = subprocess.run([sys.executable, "-m", "nlviz", "runs", str(tmp_path)], capture_output=True, text=True)
    lines = listing.stdout.strip().splitlines()
    assert listing.returncode == 0 and lines[0].split() == ["run", "status", "steps", "last", "seen", "task"]
    assert lines[1].split()[:3] == ["done", "finished", "20/20"] and len(lines) == 2


def test_run_names_cannot_leave_their_parent(tmp_path):
    from nlviz.store import run_directory

    assert run_directory(tmp_path, "cms-1_8_64.v2") == (tmp_path / "cms-1_8_64.v2").resolve()
    for bad in ["..", "../x", "a/b", "/etc", ".hidden", "", "a" * 101, "x..y", "a b", "~root"]:
        with pytest.raises(RunStoreError, match="^name: "):
            run_directory(tmp_path, bad)


def test_a_failing_writer_thread_is_reported_not_swallowed(tmp_path):
    writer = RunWriter(tmp_path)
    trainer = Trainer(tiny_config(steps=10), [writer])
    trainer.step()
    writer._put(("scalars", 1, [(0, "loss")], "not a tensor"))  # makes the thread's flush fail
    with pytest.raises(RunStoreError, match="^run store: writing .* failed"):
        writer.sync()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; CI has no GPU")
def test_recording_a_cuda_run_never_waits_for_the_device_and_stores_every_step(tmp_path):
    """On CUDA the writer starts its copies to the host without waiting for them and its thread
    waits on an event: under set_sync_debug_mode('error') neither thread synchronises (an error
    in the writer's thread would come back from close), and the store holds what happened."""
    from nlviz import Subscriber, Trainer, TrainConfig

    class Losses(Subscriber):
        def __init__(self):
            self.values = []

        def on_step(self, event):
            self.values.append(event.loss.detach().clone())  # stays on the device

    writer, losses = RunWriter(tmp_path / "r", scalars_every=1, tensors_every=10, memory_every=10), Losses()
    trainer = Trainer(TrainConfig(steps=10**6, device="cuda", sync_every=50), [writer, losses])
    trainer.run(steps=50)
    writer.sync()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(49):  # steps 51..99, none a sync step; summaries and memory records at 60, 70, 80, 90
            trainer.step()
        writer.sync()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    writer.on_end(trainer, "interrupted")
    run = open_run(tmp_path / "r")
    stored = run.scalars("loss", level=0)
    assert stored.step.tolist() == list(range(1, 100))
    np.testing.assert_allclose(stored.value.to_numpy(), torch.stack(losses.values).cpu().numpy(), rtol=1e-6)
    assert run.tensor_steps("surprise") == list(range(10, 100, 10))
    assert {90} <= set(run.memory_steps().step)
