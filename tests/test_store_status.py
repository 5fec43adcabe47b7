"""A newborn run's status: a reader that looks while the writer is creating the store never
reads `interrupted` (it sees no store yet, or a running run with a fresh heartbeat).

Deterministic: the reader looks from inside the writer's start-up, at the moment the old
code had committed its tables but not yet its meta rows."""

from __future__ import annotations

import json
import os
import sqlite3
import time

import pytest

from nlviz import TrainConfig
from nlviz.store import SCHEMA, STALE_S, STATUSES, RunStoreError, RunWriter, list_runs, open_run
from nlviz.trainer import Trainer


def _look(directory):
    try:
        run = open_run(directory)
    except RunStoreError as e:
        return "no store yet", str(e)
    try:
        return run.status, run.last_step()
    finally:
        run.close()


def test_a_reader_during_the_writers_start_up_never_reads_interrupted(tmp_path, monkeypatch):
    seen = []
    check = RunWriter._refuse_second_writer

    def look_then_check(self, con):  # runs inside on_start, between creating the tables and the meta rows
        seen.append(_look(self.directory))
        seen.append(tuple((i.status, i.last_step) for i in list_runs(self.directory.parent)))
        check(self, con)

    monkeypatch.setattr(RunWriter, "_refuse_second_writer", look_then_check)
    writer = RunWriter(tmp_path / "run", scalars_every=1)
    trainer = Trainer(TrainConfig(steps=3, device="cpu"), [writer])
    trainer.step()
    inside, listing = seen
    assert inside[0] == "no store yet" and "is being created by its run (starting)" in inside[1]
    assert listing == (("starting", 0),)
    assert _look(tmp_path / "run")[0] == "running"  # and from its first step on, running
    trainer.run()
    assert _look(tmp_path / "run") == ("finished", 3)


def test_a_store_without_meta_rows_reads_starting(tmp_path):
    db = tmp_path / "run.sqlite"
    con = sqlite3.connect(db)
    con.executescript(SCHEMA)
    con.close()
    run = open_run(db)
    assert run.status == "starting"  # the file is fresh: its writer may be about to write them
    run.close()
    con = sqlite3.connect(db)
    with con:  # a status with a heartbeat long gone: interrupted, as before
        con.executemany("INSERT INTO meta VALUES (?, ?)", [("status", json.dumps("running")), ("heartbeat", "0")])
    con.close()
    assert open_run(db).status == "interrupted"


def test_a_store_left_without_meta_rows_long_ago_reads_interrupted(tmp_path):
    db = tmp_path / "run.sqlite"
    con = sqlite3.connect(db)
    con.executescript(SCHEMA)
    con.close()
    old = time.time() - 10 * STALE_S
    os.utime(db, (old, old))
    assert open_run(db).status == "interrupted"
    empty = tmp_path / "empty" / "run.sqlite"
    empty.parent.mkdir()
    sqlite3.connect(empty).close()  # a file with no tables: fresh, then old
    with pytest.raises(RunStoreError, match="is being created by its run"):
        open_run(empty)
    os.utime(empty, (old, old))
    with pytest.raises(RunStoreError, match=r"is not an nlviz run store \(tables \[\]\)"):
        open_run(empty)


def test_a_run_can_only_end_with_a_status_readers_know(tmp_path):
    writer = RunWriter(tmp_path / "run")
    trainer = Trainer(TrainConfig(steps=2, device="cpu"), [writer])
    trainer.step()
    with pytest.raises(RunStoreError, match="^status: a run ends finished, interrupted, failed, diverged; got 'stopped'$"):
        writer.on_end(trainer, "stopped")
    writer.on_end(trainer, "interrupted")
    assert open_run(tmp_path / "run").status == "interrupted" and set(STATUSES) >= {"starting", "interrupted"}
