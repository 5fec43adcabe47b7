"""The run store: one SQLite database per run, written while training, read while it grows.

SQLite in WAL mode is the embedded default: no server, in the standard library, one
writer and any number of concurrent readers. The schema (levels are numbered from 1;
level 0 is the whole model):

    meta(key, value)                     JSON values: config, device, versions, status, ...
    scalars(step, level, name, value)    long form, clustered by (name, level, step) so a
                                         series reads as one range (`series` lists them): loss,
                                         surprise_norm, activation_norm,
                                         dot_objective (Eq 26), l2_objective (Eq 27),
                                         update_norm
    scalar_lod(name, level, bucket, ...) each series' minimum and maximum (with their steps)
                                         per bucket of LOD_WIDTH steps, kept by the writer in
                                         the same transaction: a plot of a long run is
                                         decimated from these rows, not from every step
    level_updates(step, level)           every Eq 31 update, so the clock can be drawn exactly
    tensors(step, level, kind, ...)      per level and kind (activation y_l, surprise u_l,
                                         input of the output layer): mean, std, min, max,
                                         norm, a histogram over [min, max], and a float16
                                         sample of a few rows by up to 64 units

    memory(step, level, ...)             Eq 25-29 from data, per level's output layer W (the
                                         level's associative memory): a few rows of x, u, W x
                                         and ||x||^2, the block W[:r, :c], and for the whole
                                         batch the block of sum_b u_b x_b^T (nlviz) beside the
                                         block of autograd's gradient of W at that step

The decision to know: `RunWriter` computes every summary on the training device and hands
the tensors to a background thread, which alone reads them back to the host and commits
in batched transactions (at least once per second, with a heartbeat). Training never
waits on the store, and a reader sees a new step within about a second.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import platform
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import rules
from .diverging import DivergingEvent
from .trainer import DivergenceError, LevelUpdateEvent, StepEvent, Subscriber

__all__ = ["RunWriter", "RunReader", "MemoryRecord", "RunInfo", "list_runs", "RunStoreError", "open_run", "run_directory",
           "index_scalars", "STORE_NAME", "SCHEMA", "STATUSES"]

STORE_NAME = "run.sqlite"
HEARTBEAT_S = 1.0  # the writer refreshes its heartbeat at least this often
STALE_S = 5.0  # a running run whose heartbeat is older than this is reported interrupted

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scalars (
    step INTEGER NOT NULL, level INTEGER NOT NULL, name TEXT NOT NULL, value REAL,
    PRIMARY KEY (name, level, step)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series (name TEXT NOT NULL, level INTEGER NOT NULL, PRIMARY KEY (name, level)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scalar_lod (
    name TEXT NOT NULL, level INTEGER NOT NULL, bucket INTEGER NOT NULL,
    lo_step INTEGER NOT NULL, lo REAL, hi_step INTEGER NOT NULL, hi REAL, count INTEGER NOT NULL,
    PRIMARY KEY (name, level, bucket)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS level_updates (
    step INTEGER NOT NULL, level INTEGER NOT NULL, PRIMARY KEY (step, level)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS level_updates_by_level ON level_updates (level, step);
CREATE TABLE IF NOT EXISTS memory (
    step INTEGER NOT NULL, level INTEGER NOT NULL, batch INTEGER NOT NULL, d_out INTEGER NOT NULL, d_in INTEGER NOT NULL,
    rows INTEGER NOT NULL, out_cols INTEGER NOT NULL, in_cols INTEGER NOT NULL,
    x BLOB NOT NULL, u BLOB NOT NULL, wx BLOB NOT NULL, x_sq BLOB NOT NULL,
    weight BLOB NOT NULL, outer BLOB NOT NULL, grad BLOB NOT NULL,
    PRIMARY KEY (step, level)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tensors (
    step INTEGER NOT NULL, level INTEGER NOT NULL, kind TEXT NOT NULL,
    mean REAL, std REAL, min REAL, max REAL, norm REAL,
    hist BLOB NOT NULL, sample BLOB NOT NULL, sample_rows INTEGER NOT NULL, sample_cols INTEGER NOT NULL,
    PRIMARY KEY (step, level, kind)) WITHOUT ROWID;
"""
TABLES = ("meta", "scalars", "series", "scalar_lod", "level_updates", "tensors", "memory")
_MEMORY_BLOBS = ("x", "u", "wx", "x_sq", "weight", "outer", "grad")
LOD_WIDTH = 256  # steps per level-of-detail bucket: 1,000,000 steps are about 3,900 rows per series


STATUSES = ("starting", "running", "finished", "interrupted", "failed", "diverged")


def _status(meta: dict[str, Any], db: Path) -> str:
    status = meta.get("status")
    if status is None:  # no meta rows yet: its writer is creating it, or died doing so long ago
        return "starting" if _age(db) < STALE_S else "interrupted"
    if status == "running" and time.time() - meta.get("heartbeat", 0) > STALE_S:
        return "interrupted"
    return status


def _age(db: Path) -> float:
    """Seconds since the store's file or its write-ahead log last changed (inf if both are gone)."""
    times = []
    for f in (db, db.with_name(db.name + "-wal")):
        try:
            times.append(f.stat().st_mtime)
        except OSError:
            pass
    return time.time() - max(times) if times else math.inf


class RunStoreError(ValueError):
    """A path that is not a run, a damaged store, or a second writer; the message says which."""


def _connect(db: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0, check_same_thread=False)
    else:
        con = sqlite3.connect(db, timeout=5.0, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a power cut loses at most the last commits
    return con


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _to_host(obj: Any) -> Any:
    """obj with every CUDA tensor in it replaced by a copy to (pinned) host memory that has been
    started, not finished: tuples, lists, dicts and the record dataclasses are walked."""
    if isinstance(obj, Tensor):
        return obj.to("cpu", non_blocking=True) if obj.is_cuda else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_host(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _to_host(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _to_host(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
    return obj


@dataclass
class _Summary:
    """One level's tensor summary, still on the device."""

    step: int
    level: int
    kind: str
    stats: Tensor  # (5,) mean, std, min, max, norm
    hist: Tensor  # (bins,) counts over [min, max]
    sample: Tensor  # (rows, cols) float16


@dataclass
class MemoryRecord:
    """Level `level`'s output layer y = W x + b at one step, read as an associative memory
    (Eq 25-29). Rows are the first `rows` examples of the batch; r = out_cols, c = in_cols
    are the first columns kept (float32 throughout)."""

    step: int
    level: int  # from 1
    batch: int  # B, the rows that `outer` and `grad` sum over
    shape: tuple[int, int]  # (d_out, d_in) of the whole layer
    x: np.ndarray  # (rows, c) the layer's input
    u: np.ndarray  # (rows, r) its surprise u = dL/dy (the level's u_l)
    wx: np.ndarray  # (rows, r) what W predicts for those rows, W x (no bias), over all d_in
    x_sq: np.ndarray  # (rows,) ||x||^2 over all d_in columns
    weight: np.ndarray  # (r, c) W[:r, :c] before this step's update
    outer: np.ndarray  # (r, c) [sum_b u_b x_b^T][:r, :c] over the whole batch, computed by nlviz (Eq 25)
    grad: np.ndarray  # (r, c) autograd's gradient dL/dW[:r, :c] of this step alone


@dataclass
class _Memory:
    """A MemoryRecord still on the device."""

    step: int
    level: int
    batch: int
    shape: tuple[int, int]
    tensors: dict[str, Tensor]


class RunWriter(Subscriber):
    """Records a run into `directory/run.sqlite`; subscribe it to a Trainer."""

    def __init__(self, directory: str | os.PathLike, scalars_every: int = 10, tensors_every: int = 100,
                 memory_every: int = 500, sample_rows: int = 4, sample_cols: int = 64, bins: int = 32,
                 memory_cols: int = 32, resume_after: int | None = None):
        """memory_every: steps between MemoryRecords (a multiple of the trainer's linears_every,
        whose steps keep the layer inputs they need). resume_after: continue an existing store
        from that step (its checkpoint): records of later steps are deleted first, so a resumed
        run has no duplicated steps."""
        for name, value in (("scalars_every", scalars_every), ("tensors_every", tensors_every),
                            ("memory_every", memory_every), ("sample_rows", sample_rows),
                            ("sample_cols", sample_cols), ("bins", bins), ("memory_cols", memory_cols)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RunStoreError(f"{name}: must be an integer >= 1, got {value!r}")
        self.directory = Path(directory)
        self.path = self.directory / STORE_NAME
        self.scalars_every, self.tensors_every = scalars_every, tensors_every
        self.sample_rows, self.sample_cols, self.bins = sample_rows, sample_cols, bins
        self.memory_every, self.memory_cols = memory_every, memory_cols
        self._grad_before: tuple[int, list[Tensor | None]] | None = None  # (step, W.grad blocks) for memory records
        self.resume_after = resume_after
        self._items: collections.deque = collections.deque()  # appended by training, drained by the thread
        self._wake = threading.Event()
        self._cuda = False  # training on CUDA: records go to the host by copies started in _put
        self._copied: Any = None  # a torch.cuda.Event after the newest of those copies
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._levels: list = []
        self._out_index: list[int | None] = []
        self._updates: list[tuple] = []

    # ------------------------------------------------------------------ trainer side
    def on_start(self, trainer) -> None:
        linears = trainer.config.linears_every if trainer.config.capture else 0
        if linears and self.memory_every % linears:  # checked before anything is written
            raise RunStoreError(f"memory_every: must be a multiple of linears_every ({linears}), got {self.memory_every}")
        self.directory.mkdir(parents=True, exist_ok=True)
        con = _connect(self.path)
        try:
            # The tables and the meta rows appear in one transaction: a reader that opens the
            # file meanwhile sees no tables (RunStoreError) or a run with a status and a fresh
            # heartbeat, never a run without either (which would read as interrupted).
            # BEGIN IMMEDIATE takes the write lock first, so checking for another writer and
            # claiming the store are one act.
            con.executescript("BEGIN IMMEDIATE;\n" + SCHEMA)
            self._refuse_second_writer(con)
            now = time.time()
            if self.resume_after is not None:
                for table in ("scalars", "level_updates", "tensors", "memory"):
                    con.execute(f"DELETE FROM {table} WHERE step > ?", [self.resume_after])
                con.execute("DELETE FROM scalar_lod WHERE bucket >= ?", [self.resume_after // LOD_WIDTH])
                index_scalars(con, self.resume_after)
                flag = con.execute("SELECT value FROM meta WHERE key = 'diverging'").fetchone()
                if flag is not None and json.loads(flag[0]).get("step", 0) > self.resume_after:
                    con.execute("DELETE FROM meta WHERE key = 'diverging'")  # flagged after the checkpoint
            meta = {
                "format": 1,
                "config": trainer.config.to_dict(),
                "device": trainer.device_name,
                "versions": {"nlviz": _version(), "torch": torch.__version__, "python": platform.python_version()},
                "start_time": now,
                "status": "running",
                "message": "",
                "writer_pid": os.getpid(),
                "heartbeat": now,
                "cadence": {"scalars_every": self.scalars_every, "tensors_every": self.tensors_every,
                            "memory_every": self.memory_every},
            }
            if self.resume_after is not None:
                del meta["start_time"]
                meta["resumed_at_step"] = self.resume_after
            con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
            con.commit()
        except BaseException:
            con.rollback()
            raise
        finally:
            con.close()
        trainer.measure_updates = self.scalars_every  # update_norm at the scalar cadence
        self._cuda = trainer.device.type == "cuda"
        self._levels = list(trainer.model.levels)
        # Where each level's output layer sits among its linears (None: it has none).
        self._out_index = [lv.linears.index(lv.output_layer) if getattr(lv, "output_layer", None) is not None
                           else None for lv in self._levels]
        self._thread = threading.Thread(target=self._drain, name="nlviz-run-writer", daemon=True)
        self._thread.start()

    def _refuse_second_writer(self, con: sqlite3.Connection) -> None:
        row = dict(con.execute("SELECT key, value FROM meta WHERE key IN ('status', 'writer_pid', 'heartbeat')"))
        if row.get("status") and json.loads(row["status"]) == "running":
            pid, beat = json.loads(row["writer_pid"]), json.loads(row["heartbeat"])
            if pid != os.getpid() and _pid_alive(pid) and time.time() - beat < STALE_S:
                raise RunStoreError(f"run: {self.directory} is being recorded by another process (pid {pid})")

    @torch.no_grad()
    def on_step(self, event: StepEvent) -> None:
        t = event.step
        if t % self.scalars_every == 0:
            self._put(("scalars", t, *self._scalars(event)))
        if t % self.tensors_every == 0 and event.surprise:
            for s in self._summaries(event):
                self._put(("tensor", s))
        if t % self.memory_every == 0 and event.surprise and self._grad_before and self._grad_before[0] == t - 1:
            for m in self._memories(event, self._grad_before[1]):
                self._put(("memory", m))

    def on_level_update(self, event: LevelUpdateEvent) -> None:
        self._updates.append((event.step, event.level + 1, event.update_norm))

    def on_step_end(self, trainer, step: int) -> None:
        if (step + 1) % self.memory_every == 0:
            # The next step's own gradient of W is what .grad will hold then minus this.
            self._grad_before = (step, [self._grad_block(l) for l in range(len(self._levels))])
        # Update events go to the writer thread in batches, once per scalar period.
        if self._updates and step % self.scalars_every == 0:
            self._put(("updates", self._updates))
            self._updates = []

    def on_diverging(self, event: DivergingEvent) -> None:
        self._put(("meta", {"diverging": event.to_dict()}))

    def on_end(self, trainer, status: str, error: BaseException | None = None) -> None:
        if status not in STATUSES[2:]:  # an ending is one of the statuses after starting and running
            raise RunStoreError(f"status: a run ends {', '.join(STATUSES[2:])}; got {status!r}")
        self._put(("updates", self._updates))
        self._updates = []
        extra: dict[str, Any] = {"message": str(error) if error else "", "end_time": time.time()}
        if isinstance(error, DivergenceError):
            extra.update(diverged_step=error.step, diverged_level=error.level)
        self._put(("status", status, extra))
        self.close()

    def sync(self, timeout: float = 60.0) -> None:
        """Block until everything recorded so far is committed. Call it before writing a
        checkpoint: a run resumed from that checkpoint then misses no earlier record."""
        if self._thread is not None:
            self._put(("updates", self._updates))
            self._updates = []
            done = threading.Event()
            self._items.append(("sync", done))
            self._wake.set()
            deadline = time.monotonic() + timeout
            while not done.wait(0.1):
                if not self._thread.is_alive():  # it failed: close() reports why
                    self.close()
                if time.monotonic() > deadline:
                    raise RunStoreError(f"run store: {self.path} did not commit within {timeout:.0f} s")

    def close(self) -> None:
        """Flush everything and stop the writer thread (idempotent)."""
        if self._thread is not None:
            self._items.append(None)
            self._wake.set()
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise RunStoreError(f"run store: writing {self.path} failed: {self._error}") from self._error

    def _put(self, item: tuple) -> None:
        if self._thread is None:
            return
        if self._cuda:
            # Start the copies to the host now, without waiting for them (a host read here would
            # stall the training loop), and mark where they end: the writer thread waits for
            # that mark, not for the device (see _drain). The mark is set before the item is
            # queued, so the newest mark always covers every item the writer has taken.
            item = _to_host(item)
            done = torch.cuda.Event()
            done.record()
            self._copied = done
        self._items.append(item)

    def _output_layer(self, event: StepEvent, l: int) -> tuple[Tensor, Tensor, Tensor] | None:
        """(W, x, u) of level l's output layer at this step, as (d_out, d_in), (rows, d_in),
        (rows, d_out); None when the level has none or this step kept no linear records."""
        j, tr = self._out_index[l], event.traces[l]
        if j is None or not tr.linear_inputs:
            return None
        x, g = tr.linear_inputs[j].detach(), event.linear_grads[l][j]
        W = self._levels[l].linears[j].weight.detach()
        # float32 like W (a no-op unless the forward pass ran under bf16 autocast)
        return W, x.reshape(-1, x.shape[-1]).float(), g.reshape(-1, g.shape[-1]).float()

    def _scalars(self, event: StepEvent) -> tuple[list[tuple[int, str]], Tensor]:
        """(level, name) keys and one stacked device tensor of their values."""
        keys, values = [(0, "loss")], [event.loss.float()]
        live = [(l, tr.y.detach(), u) for l, (tr, u) in enumerate(zip(event.traces, event.surprise)) if u is not None]
        if live:  # two fused norm calls for all levels
            unorm = torch._foreach_norm([u for _, _, u in live])
            ynorm = torch._foreach_norm([y for _, y, _ in live])
        for i, (l, _, _) in enumerate(live):
            keys += [(l + 1, "surprise_norm"), (l + 1, "activation_norm")]
            values += [unorm[i].float(), ynorm[i].float()]
            layer = self._output_layer(event, l)
            if layer is not None:
                keys += [(l + 1, "dot_objective"), (l + 1, "l2_objective")]
                values += [v.float() for v in rules.objectives(*layer)]
        return keys, torch.stack(values)

    def _grad_block(self, l: int) -> Tensor | None:
        j = self._out_index[l]
        if j is None:
            return None
        g = self._levels[l].linears[j].weight.grad
        r, c = (min(self.memory_cols, n) for n in self._levels[l].linears[j].weight.shape)
        return g[:r, :c].detach().clone() if g is not None else torch.zeros((), device=self._levels[l].linears[j].weight.device)

    def _memories(self, event: StepEvent, before: list[Tensor | None]) -> list[_Memory]:
        out = []
        for l in range(len(self._levels)):
            layer = self._output_layer(event, l)
            W = self._levels[l].linears[self._out_index[l]].weight if layer is not None else None
            if layer is None or W.grad is None or before[l] is None:
                continue
            _, x, u = layer  # (B, d_in), (B, d_out)
            (d_out, d_in), rows = W.shape, min(self.sample_rows, x.shape[0])
            r, c = min(self.memory_cols, d_out), min(self.memory_cols, d_in)
            w = W.detach()
            tensors = {
                "x": x[:rows, :c],
                "u": u[:rows, :r],
                "wx": (x[:rows] @ w.transpose(0, 1))[:, :r],
                "x_sq": x[:rows].pow(2).sum(1),
                "weight": w[:r, :c],
                "outer": rules.outer_sum(u[:, :r], x[:, :c]),  # the block of the full sum over the batch
                "grad": W.grad[:r, :c] - before[l],
            }
            out.append(_Memory(event.step, l + 1, x.shape[0], (d_out, d_in), {k: v.float().clone() for k, v in tensors.items()}))
        return out

    def _summaries(self, event: StepEvent) -> list[_Summary]:
        out = []
        for l, (tr, u) in enumerate(zip(event.traces, event.surprise)):
            kinds = [("activation", tr.y.detach()), ("surprise", u)]
            layer = self._output_layer(event, l)
            if layer is not None:
                kinds.append(("input", layer[1]))
            for kind, t in kinds:
                if t is None:
                    continue
                out.append(self._summary(event.step, l + 1, kind, t.reshape(-1, t.shape[-1]).float()))
        return out

    def _summary(self, step: int, level: int, kind: str, t: Tensor) -> _Summary:
        lo, hi = t.min(), t.max()
        stats = torch.stack([t.mean(), t.std(unbiased=False), lo, hi, t.norm()])
        # Fixed number of bins over [min, max], computed without reading min/max to the host.
        idx = ((t - lo) / (hi - lo).clamp_min(1e-12) * self.bins).long().clamp_(0, self.bins - 1)
        flat = idx.flatten()  # bincount would read its largest value to the host (a CUDA sync); this does not
        hist = torch.zeros(self.bins, dtype=torch.long, device=t.device).scatter_add_(0, flat, torch.ones_like(flat))
        sample = t[: self.sample_rows, : self.sample_cols].half()
        return _Summary(step, level, kind, stats, hist, sample)

    # ------------------------------------------------------------------ writer thread
    def _drain(self) -> None:
        con = _connect(self.path)
        pending: list[tuple] = []
        last = time.monotonic()
        try:
            while True:
                # Woken by sync and close only: items just accumulate, so recording a step
                # never wakes this thread (a wake-up per item cost the training thread ~2 %).
                self._wake.wait(0.25)
                self._wake.clear()
                stop, synced = False, []
                while self._items:
                    item = self._items.popleft()
                    if item is None:
                        stop = True
                    elif item[0] == "sync":
                        synced.append(item[1])
                    else:
                        pending.append(item)
                if stop or synced or time.monotonic() - last >= 0.5:  # batched commits, twice a second, with a heartbeat
                    copied = self._copied
                    while copied is not None and not copied.query():  # polling holds no lock the trainer needs
                        time.sleep(0.001)
                    self._flush(con, pending)
                    pending, last = [], time.monotonic()
                    for done in synced:
                        done.set()
                if stop:
                    return
        except BaseException as e:  # reported by close(); never kill the training thread
            self._error = e
        finally:
            con.close()

    def _flush(self, con: sqlite3.Connection, items: list[tuple]) -> None:
        scalars, updates, tensors, memories, meta = [], [], [], [], {"heartbeat": time.time()}
        for item in items:
            kind = item[0]
            if kind == "scalars":
                _, step, keys, values = item
                scalars += [(step, level, name, v if math.isfinite(v) else None)
                            for (level, name), v in zip(keys, values.tolist())]
            elif kind == "updates":
                for step, level, norm in item[1]:
                    updates.append((step, level))
                    if norm is not None:
                        scalars.append((step, level, "update_norm", float(norm)))
            elif kind == "tensor":
                s: _Summary = item[1]
                mean, std, lo, hi, norm = (v if math.isfinite(v) else None for v in s.stats.tolist())
                sample = s.sample.cpu().numpy()
                tensors.append((s.step, s.level, s.kind, mean, std, lo, hi, norm,
                                s.hist.cpu().numpy().astype(np.int32).tobytes(), sample.tobytes(), *sample.shape))
            elif kind == "memory":
                m: _Memory = item[1]
                arrays = {k: v.cpu().numpy() for k, v in m.tensors.items()}
                memories.append((m.step, m.level, m.batch, *m.shape, *arrays["x"].shape[:1], arrays["u"].shape[1],
                                 arrays["x"].shape[1], *(arrays[k].tobytes() for k in _MEMORY_BLOBS)))
            elif kind == "status":
                _, status, extra = item
                meta.update(status=status, **extra)
            elif kind == "meta":
                meta.update(item[1])
        with con:
            con.executemany("INSERT OR REPLACE INTO scalars VALUES (?, ?, ?, ?)", scalars)
            con.executemany("INSERT OR IGNORE INTO series VALUES (?, ?)", {(n, lv) for _, lv, n, _ in scalars})
            if scalars:
                index_scalars(con, min(step for step, *_ in scalars))
            con.executemany("INSERT OR IGNORE INTO level_updates VALUES (?, ?)", updates)
            con.executemany("INSERT OR REPLACE INTO tensors VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", tensors)
            con.executemany(f"INSERT OR REPLACE INTO memory VALUES ({', '.join('?' * 15)})", memories)
            con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])


def index_scalars(con: sqlite3.Connection, from_step: int = 0) -> None:
    """Recompute the level-of-detail rows of every bucket holding a step >= from_step, from
    the raw scalars (one range read per series). The writer calls it in each commit."""
    part = (f"SELECT c.name, c.level, c.step / {LOD_WIDTH} AS bucket, c.step, {{}}(c.value) AS v{{}} "
            "FROM series s JOIN scalars c ON c.name = s.name AND c.level = s.level AND c.step >= :start "
            "GROUP BY c.name, c.level, bucket")
    # A bare column beside a single MIN or MAX comes from the row that holds it (SQLite).
    con.execute(
        f"INSERT OR REPLACE INTO scalar_lod SELECT lo.name, lo.level, lo.bucket, lo.step, lo.v, hi.step, hi.v, lo.n "
        f"FROM ({part.format('MIN', ', COUNT(*) AS n')}) lo JOIN ({part.format('MAX', '')}) hi "
        "ON lo.name = hi.name AND lo.level = hi.level AND lo.bucket = hi.bucket",
        {"start": from_step // LOD_WIDTH * LOD_WIDTH},
    )


def _version() -> str:
    from . import __version__

    return __version__


class RunReader:
    """Read access to a run store, safe while a writer is still recording."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        db = path / STORE_NAME if path.is_dir() else path
        if not db.is_file():
            raise RunStoreError(f"path: {path} is not an nlviz run (no {STORE_NAME} in it)")
        self.path = db
        try:
            self._con = _connect(db, readonly=True)
            names = {r[0] for r in self._con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as e:
            raise RunStoreError(f"path: {db} is damaged or not a run store ({e})") from None
        if not names and _age(db) < STALE_S:
            raise RunStoreError(f"path: {db} is being created by its run (starting); it has no tables yet")
        if not set(TABLES) <= names:
            raise RunStoreError(f"path: {db} is not an nlviz run store (tables {sorted(names)})")

    def _meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._con.execute("SELECT key, value FROM meta")}

    @property
    def meta(self) -> dict[str, Any]:
        return self._meta()

    @property
    def config(self) -> dict[str, Any]:
        return self._meta()["config"]

    @property
    def status(self) -> str:
        """One of STATUSES: running, finished, interrupted, failed or diverged; starting for a
        store whose writer has not written its first meta rows yet. A running run whose writer
        stopped refreshing its heartbeat (killed, power cut) reads as interrupted, and so does
        a store without meta rows whose file has not changed for STALE_S."""
        return _status(self._meta(), self.path)

    @property
    def diverging(self) -> dict[str, Any] | None:
        """None, or where the run began to diverge (`nlviz.diverging`: its loss grew past the
        rule's factor times its early minimum while still finite): step, level (from 1, or None),
        loss, reference, reference_step, factor, growth, message. A diverging run goes on
        training unless it was asked to stop; its status says whether it did."""
        return self._meta().get("diverging")

    def last_step(self) -> int:
        row = self._con.execute("SELECT MAX(step) FROM scalars").fetchone()
        return int(row[0] or 0)

    def series(self) -> list[tuple[str, int]]:
        """Every (name, level) that has scalars."""
        return self._con.execute("SELECT name, level FROM series ORDER BY name, level").fetchall()

    def scalars(self, name: str | None = None, level: int | None = None, since: int | None = None,
                max_points: int | None = None):
        """DataFrame step, level, name, value; only steps > since; at most max_points rows per
        series, keeping each bucket's minimum and maximum so no spike disappears."""
        import pandas as pd

        rows = []
        for n, lv in self._con.execute(
            "SELECT name, level FROM series WHERE (? IS NULL OR name = ?) AND (? IS NULL OR level = ?) ORDER BY name, level",
            [name, name, level, level],
        ).fetchall():
            if max_points is None:
                rows += self._con.execute(
                    "SELECT step, level, name, value FROM scalars WHERE name = ? AND level = ? AND step > ? ORDER BY step",
                    [n, lv, -1 if since is None else since],
                ).fetchall()
            else:
                rows += self._decimated(n, lv, since, max_points)
        return pd.DataFrame(rows, columns=["step", "level", "name", "value"])

    def _decimated(self, name: str, level: int, since: int | None, max_points: int) -> list[tuple]:
        """At most max_points rows: each bucket's minimum and maximum, read from the
        level-of-detail rows (and the raw rows of a partial first bucket), not every step;
        from the raw rows when the series has too few level-of-detail buckets to fill the plot."""
        if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 2:
            raise ValueError(f"max_points: must be an integer >= 2, got {max_points!r}")
        first = 0 if since is None else since + 1
        edge = -(-first // LOD_WIDTH) * LOD_WIDTH  # the first bucket boundary at or after `first`
        key = [name, level]
        (head,) = self._con.execute(
            "SELECT COUNT(*) FROM scalars WHERE name = ? AND level = ? AND step >= ? AND step < ?",
            key + [first, edge]).fetchone()
        lod = self._con.execute(
            "SELECT lo_step, lo, hi_step, hi, count FROM scalar_lod WHERE name = ? AND level = ? AND bucket >= ? "
            "ORDER BY bucket", key + [edge // LOD_WIDTH]).fetchall()
        if head + sum(r[4] for r in lod) <= max_points:
            return self._con.execute("SELECT step, level, name, value FROM scalars WHERE name = ? AND level = ? "
                                     "AND step >= ? ORDER BY step", key + [first]).fetchall()
        if len(lod) + 1 < max_points // 2:  # too few buckets for the points asked: group the raw rows
            raw = self._con.execute("SELECT step, value FROM scalars WHERE name = ? AND level = ? AND step >= ? "
                                    "ORDER BY step", key + [first]).fetchall()  # < max_points / 2 * LOD_WIDTH rows
            items = [(s, v, s, v, 1) for s, v in raw]
        elif head:  # the partial first bucket, summarised like the others
            lo = self._con.execute("SELECT step, MIN(value) FROM scalars WHERE name = ? AND level = ? AND step >= ? "
                                   "AND step < ?", key + [first, edge]).fetchone()
            hi = self._con.execute("SELECT step, MAX(value) FROM scalars WHERE name = ? AND level = ? AND step >= ? "
                                   "AND step < ?", key + [first, edge]).fetchone()
            items = [(lo[0], lo[1], hi[0], hi[1], head)] + lod
        else:
            items = lod
        per = -(-len(items) // (max_points // 2))  # buckets of the answer, at most max_points // 2
        rows = []
        for i in range(0, len(items), per):
            group = items[i : i + per]
            lows = [(v, s) for s, v, *_ in group if v is not None]
            highs = [(v, s) for _, _, s, v, _ in group if v is not None]
            if not lows:  # every value non-finite (stored as NULL): keep one gap marker
                rows.append((group[0][0], level, name, None))
                continue
            (lo_v, lo_s), (hi_v, hi_s) = min(lows), max(highs)
            rows += [(s, level, name, v) for s, v in sorted({lo_s: lo_v, hi_s: hi_v}.items())]
        return rows

    def level_updates(self, since: int | None = None, until: int | None = None, level: int | None = None,
                      limit: int | None = None):
        """DataFrame step, level of the Eq 31 updates recorded with since < step <= until, in
        time order; at most `limit` rows (a plot asks for one more than it will draw)."""
        import pandas as pd

        rows = self._con.execute(
            "SELECT step, level FROM level_updates WHERE step > ? AND (? IS NULL OR step <= ?) "
            "AND (? IS NULL OR level = ?) ORDER BY step, level LIMIT ?",
            [-1 if since is None else since, until, until, level, level, -1 if limit is None else limit]).fetchall()
        return pd.DataFrame(rows, columns=["step", "level"])

    def clock_events(self, levels: int, limit: int):
        """(events, busy) for drawing the level clock of levels 1..levels: a level's update
        events when it has at most `limit`, else only its (count, first, last) in `busy`
        (figures draw such a level as one band), so a long run costs a bounded read."""
        import pandas as pd

        parts, busy = [], {}
        for level in range(1, levels + 1):
            events = self.level_updates(level=level, limit=limit + 1)
            if len(events) > limit:
                busy[level] = self.update_extent(level)
            else:
                parts.append(events)
        return (pd.concat(parts, ignore_index=True) if parts else self.level_updates(limit=0)), busy

    def update_extent(self, level: int) -> tuple[int, int, int]:
        """(count, first step, last step) of a level's recorded updates; (0, 0, 0) when none."""
        count, first, last = self._con.execute(
            "SELECT COUNT(*), MIN(step), MAX(step) FROM level_updates WHERE level = ?", [level]).fetchone()
        return count, first or 0, last or 0

    def tensor_steps(self, kind: str | None = None, level: int | None = None) -> list[int]:
        """The steps that have tensor summaries (of that kind and level), in order."""
        return [r[0] for r in self._con.execute(
            "SELECT DISTINCT step FROM tensors WHERE (? IS NULL OR kind = ?) AND (? IS NULL OR level = ?) ORDER BY step",
            [kind, kind, level, level])]

    def tensor_stats(self, kind: str | None = None, level: int | None = None, since: int | None = None):
        """DataFrame step, level, kind, mean, std, min, max, norm."""
        import pandas as pd

        rows = self._con.execute(
            "SELECT step, level, kind, mean, std, min, max, norm FROM tensors "
            "WHERE (? IS NULL OR kind = ?) AND (? IS NULL OR level = ?) AND step > ? ORDER BY step, level, kind",
            [kind, kind, level, level, -1 if since is None else since]).fetchall()
        return pd.DataFrame(rows, columns=["step", "level", "kind", "mean", "std", "min", "max", "norm"])

    def tensor(self, step: int, level: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(histogram counts, float16 sample of shape (rows, cols)) of one recorded summary."""
        row = self._con.execute("SELECT hist, sample, sample_rows, sample_cols FROM tensors "
                                "WHERE step = ? AND level = ? AND kind = ?", [step, level, kind]).fetchone()
        if row is None:
            raise KeyError(f"no {kind} summary for level {level} at step {step}")
        hist, sample, rows, cols = row
        return np.frombuffer(hist, dtype=np.int32), np.frombuffer(sample, dtype=np.float16).reshape(rows, cols)

    def memory_steps(self, level: int | None = None, since: int | None = None):
        """DataFrame step, level of every MemoryRecord (Eq 25-29 data) recorded so far."""
        import pandas as pd

        rows = self._con.execute("SELECT step, level FROM memory WHERE (? IS NULL OR level = ?) AND step > ? "
                                 "ORDER BY step, level", [level, level, -1 if since is None else since]).fetchall()
        return pd.DataFrame(rows, columns=["step", "level"])

    def memory(self, step: int, level: int) -> MemoryRecord:
        """Level `level`'s output layer at `step`, read as an associative memory (Eq 25-29)."""
        row = self._con.execute(f"SELECT batch, d_out, d_in, rows, out_cols, in_cols, {', '.join(_MEMORY_BLOBS)} "
                                "FROM memory WHERE step = ? AND level = ?", [step, level]).fetchone()
        if row is None:
            raise KeyError(f"no memory record for level {level} at step {step}")
        batch, d_out, d_in, rows, r, c, *blobs = row
        shapes = {"x": (rows, c), "u": (rows, r), "wx": (rows, r), "x_sq": (rows,), "weight": (r, c),
                  "outer": (r, c), "grad": (r, c)}
        arrays = {k: np.frombuffer(b, dtype=np.float32).reshape(shapes[k]) for k, b in zip(_MEMORY_BLOBS, blobs)}
        return MemoryRecord(step=step, level=level, batch=batch, shape=(d_out, d_in), **arrays)

    def close(self) -> None:
        self._con.close()


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def run_directory(parent: str | os.PathLike, name: str) -> Path:
    """parent/name for a new run, refusing any name that could leave parent."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise RunStoreError(
            f"name: a run name is 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit; got {name!r}"
        )
    parent = Path(parent).resolve()
    path = (parent / name).resolve()
    if path.parent != parent:  # belt and braces: the pattern already rules this out
        raise RunStoreError(f"name: {name!r} leaves {parent}")
    return path


@dataclass
class RunInfo:
    """One line of a listing of runs (`list_runs`)."""

    name: str
    path: Path
    status: str  # a RunReader status, or "unreadable" (then `message` says why)
    last_step: int
    total: int | None  # the configured steps
    task: str
    periods: tuple[int, ...]  # C(l) of each level
    age_s: float  # seconds since the writer was last heard from
    message: str = ""
    diverging: str = ""  # RunReader.diverging's message, when the run was flagged as diverging

    @property
    def shown_status(self) -> str:
        """The status as listings show it: "(diverging)" added to a run flagged as diverging."""
        return f"{self.status} (diverging)" if self.diverging else self.status


def list_runs(parent: str | os.PathLike) -> list[RunInfo]:
    """Every run directly inside `parent` (a folder holding run.sqlite), newest first."""
    infos = []
    for d in (p for p in Path(parent).iterdir() if (p / STORE_NAME).is_file()):
        try:
            run = open_run(d)
            try:
                meta, last = run.meta, run.last_step()
            finally:
                run.close()
        except (RunStoreError, sqlite3.Error, KeyError, ValueError) as e:
            age = _age(d / STORE_NAME)
            if age < STALE_S and _no_tables(d / STORE_NAME):  # its writer is creating it right now
                infos.append(RunInfo(d.name, d, "starting", 0, None, "?", (), age))
            else:
                infos.append(RunInfo(d.name, d, "unreadable", 0, None, "?", (), math.inf, str(e)))
            continue
        config = meta.get("config", {})
        periods = tuple(lv.get("period", 1) for lv in config.get("model", {}).get("levels", ()))
        seen = meta.get("heartbeat", meta.get("start_time", 0.0))
        infos.append(RunInfo(d.name, d, _status(meta, d / STORE_NAME), last, config.get("steps"), config.get("task", "?"), periods,
                             time.time() - seen, meta.get("message", ""), (meta.get("diverging") or {}).get("message", "")))
    return sorted(infos, key=lambda i: i.age_s)


def _no_tables(db: Path) -> bool:
    try:
        con = _connect(db, readonly=True)
        try:
            return con.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0] == 0
        finally:
            con.close()
    except sqlite3.Error:
        return False


def open_run(path: str | os.PathLike) -> RunReader:
    """Open a recorded (or still recording) run: a run directory or its run.sqlite."""
    return RunReader(path)
