"""``shopsight watch``: follow a folder of new event files (or one file being appended to), decide every new
order the moment its lines land, and append the events to the workspace through the lifecycle ingest.

The decision path (every poll; no workspace lock, no Parquet write):

1. per file, read the complete lines past the position reached; lines that are not CSV rows of the
   header's width are rejected with their cause into ``rejected/watch-*.csv`` and the stream goes on;
   the rest are read, validated and protected as the ingest stages them
   (:func:`behavior.ingest.read_protected`; a row with a bad value goes to ``rejected/batch-*.csv``
   when the batch is stored), and made the rows they will be stored as
   (:func:`behavior.batches.new_rows`: rows already known left out, sessions continued) against the
   watcher's in-memory state: every user's history, loaded once at start and grown as lines land, and
   an :class:`~behavior.models.rules.IdentityIndex` of who used which device and IP since when;
2. each new order is scored from its buyer's history alone, as of the order's own instant (the rows
   up to its time, the linked-accounts rule from the index as of then): what
   :meth:`RiskModel.score_order` gives on the same events, a few buyers in one pass;
3. the decisions are appended to the journal (``watch/journal-<key>-<n>.jsonl``) with one fsync: from
   then on they count; then the alert callback gets them.

Off the decision path (every ``flush_every`` seconds or ``flush_events`` events, in a child process so it
never holds the interpreter against the decisions; inline at the end of :meth:`poll` called on its own,
and when the watcher stops), under the writer lock (:func:`store_landed`):

4. the journal segment is sealed, and the byte ranges landed since the last store are appended through
   :func:`behavior.ingest.ingest_file` as one batch per file (the manifest entry names the stream and
   the range; the child reads, validates and dedupes the lines again, as any ingest does);
5. the sealed segment's decisions are written to ``decisions/batch-<id>.parquet`` (orders, by the
   batch their lines went into) and ``decisions/users-seq*.parquet`` (users);
6. the checkpoint (``watch/checkpoint-<key>.json``: the byte offsets stored, the last folded segment)
   is written atomically; then the folded segments are deleted.

Killed anywhere (the watcher or its child), a restart gives every order one decision and every event one
stored row: it reads the journal (a line cut short never counted), takes the orders there and in
``decisions/`` as decided, folds the decisions of a batch stored before the kill into its decisions file
(deciding any order of it that has none), skips a byte range already stored, and reads the rest of the
stream again from the checkpoint (its orders already in the journal are not decided again). An order
whose lines straddle two polls is decided when its first line lands; alerts are sent at least once
(again after a kill between the journal and the alert).

Every decision carries the event time it judged (``event_ts``: the order's time; for a user, their
latest event judged) beside the wall clock it was made at (``decided_at``).
"""

from __future__ import annotations

import csv
import gc
import hashlib
import io
import json
import logging
import multiprocessing
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from shopsight.behavior.batches import KnownIdentities, new_rows
from shopsight.behavior.decisions import (
    DecisionJournal,
    decided_batches,
    decisions_dir,
    folded_user_seqs,
    load_decisions,
    write_decisions,
    write_user_decisions_named,
)
from shopsight.behavior.events import EventDataError
from shopsight.behavior.ingest import ingest_file, read_protected
from shopsight.behavior.models.rules import IdentityIndex, rules_for_order, rules_for_user
from shopsight.behavior.privacy import mask_table
from shopsight.behavior.workspace import LOCK_TIMEOUT_S, Workspace, WorkspaceError, atomic_path, write_json_atomic, write_parquet_atomic

log = logging.getLogger(__name__)

WATCH_DIR = "watch"
SOURCE_PREFIX = "watch:"
STREAM_SUFFIXES = (".csv",)  # appendable, one event per line
WHOLE_SUFFIXES = (".parquet",)  # read whole, once, when it lands
MAX_READ_BYTES = 8 << 20  # one poll reads at most this much of a file; the rest waits for the next
MAX_REASONS = 4
USERS_PER_PASS = 4  # users judged in one model pass of the users' decisions (an order landing meanwhile waits for it: ~15 ms)
USERS_BUDGET_S = 0.05  # in the run loop, the users' passes of one poll stop after about this long
# In the run loop the users' passes use the poll interval's slack (what is left of it after the poll's orders)
# and, while the loop is behind (no slack), at most this share of its time: orders first, users not starved.
USERS_SHARE = 0.1
USERS_MIN_SLICE_S = 0.01  # a users' pass starts only with at least this much slack or credit
FREEZE_EVERY_S = 1.0  # how often a poll moves the state grown since into the collector's permanent generation


class WatchError(WorkspaceError):
    """The path to watch cannot be watched, or the workspace lacks what deciding needs; the message says why."""


@dataclass
class PollReport:
    """What one poll did."""

    batches: list[int] = field(default_factory=list)
    events_added: int = 0
    already_stored: int = 0
    rejected_lines: int = 0
    rejected_rows: int = 0
    decisions: list[dict[str, Any]] = field(default_factory=list)
    recovered_batches: list[int] = field(default_factory=list)
    skipped_ranges: int = 0

    def merge(self, other: "PollReport") -> None:
        """Add ``other``'s counts and lists to this one (a summary over several polls)."""
        self.batches += other.batches
        self.events_added += other.events_added
        self.already_stored += other.already_stored
        self.rejected_lines += other.rejected_lines
        self.rejected_rows += other.rejected_rows
        self.decisions += other.decisions
        self.recovered_batches += other.recovered_batches
        self.skipped_ranges += other.skipped_ranges

    def empty(self) -> bool:
        return not (self.batches or self.events_added or self.decisions or self.rejected_lines or self.rejected_rows
                    or self.recovered_batches or self.skipped_ranges)

    def counts(self) -> dict[str, int]:
        out = {d: 0 for d in ("allow", "review", "block")}
        for d in self.decisions:
            out[str(d["decision"])] = out.get(str(d["decision"]), 0) + 1
        return out


@dataclass
class _Landed:
    """One read of one file (or one whole file), decided, kept until a store appends its lines."""

    name: str
    path: str
    start: int
    end: int  # byte offset after the read (a whole file: -1)
    header: str | None
    first_line: int  # the file's line number of the read's first line
    lines: int = 0  # newline count of the read (the checkpoint counts lines for rejected line numbers)
    rows: int = 0  # rows it added to the state


def stream_key(path: Path) -> str:
    """A short stable name for a watched path (its checkpoint and its batches' sources carry it)."""
    return hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]


class UserHistories:
    """Every user's events as the watcher knows them: the stored table (indexed once) plus what landed since."""

    def __init__(self, stored: pd.DataFrame | None) -> None:
        self._base = stored
        self._codes: dict[str, int] = {}
        if stored is not None and len(stored):
            codes, uniques = pd.factorize(stored["user_id"].astype(str))
            self._order = np.argsort(codes, kind="stable")
            self._bounds = np.concatenate([[0], np.cumsum(np.bincount(codes[codes >= 0], minlength=len(uniques)))])
            self._codes = {str(u): i for i, u in enumerate(uniques)}
        self._new: dict[str, list[pd.DataFrame]] = {}  # per user: the frames landed since their history was last read
        self._read: dict[str, pd.DataFrame] = {}  # per user read before: their rows then, in one frame
        self.end: pd.Timestamp | None = None if stored is None or not len(stored) else stored["ts"].max()

    def add(self, rows: pd.DataFrame) -> None:
        if rows.empty:
            return
        for u, part in rows.groupby(rows["user_id"].astype(str), sort=False):
            self._new.setdefault(str(u), []).append(part)
        top = rows["ts"].max()
        self.end = top if self.end is None or top > self.end else self.end

    def of_users(self, users: list[str]) -> pd.DataFrame | None:
        """The rows of ``users``, each user's together (stored, then as landed), in one frame.

        Each user's rows are kept in one frame once read, for the next read: a buyer's history is read at each of their
        orders, and building it from the stored table and every poll's frame each time cost ~20 ms a pass of ten
        buyers. The stored rows of users not read before are taken in one ``iloc`` for all of them.
        """
        fresh = [u for u in dict.fromkeys(users) if u not in self._read and u in self._codes]
        if fresh:
            spans = [self._order[self._bounds[c]:self._bounds[c + 1]] for c in (self._codes[u] for u in fresh)]
            block = self._base.iloc[np.concatenate(spans)]
            at = 0
            for u, span in zip(fresh, spans):
                self._read[u] = block.iloc[at:at + len(span)]
                at += len(span)
        parts: list[pd.DataFrame] = []
        where: list[tuple[str, int, int]] = []  # each user's rows in the frame returned
        at = 0
        for u in dict.fromkeys(users):
            have, new = self._read.get(u), self._new.pop(u, None) or []
            frames = ([have] if have is not None else []) + new
            n = sum(len(f) for f in frames)
            parts += frames
            where.append((u, at, at + n))
            at += n
        if not parts:
            return None
        out = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)  # one concatenation for the pass
        for u, a, b in where:
            if b > a:
                self._read[u] = out.iloc[a:b]
        return out


class _StoreWorker:
    """A child process that runs :func:`store_landed` jobs one at a time; its own interpreter, so a store never holds
    the decision loop's GIL. Forked when the watcher starts (before it loads any state; a spawned child would
    import ``cli.py`` again as its main module), so it starts at once; it shares nothing but the workspace."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_store_worker_loop, args=(child, self._conn), name="shopsight-watch-store", daemon=True)
        self._proc.start()
        child.close()
        self.busy = False

    def send(self, job: dict[str, Any]) -> None:
        self._conn.send(job)
        self.busy = True

    def result(self, wait: bool) -> dict[str, Any] | None:
        """The finished job's result (``wait``: block until there is one); raises what the job raised."""
        if not self.busy or (not wait and not self._conn.poll()):
            return None
        try:
            status, value = self._conn.recv()
        except EOFError as exc:
            self.busy = False
            raise WatchError(f"the watcher's store process died (exit code {self._proc.exitcode}); restart `shopsight watch`: "
                             "it resumes from the checkpoint and the journal") from exc
        self.busy = False
        if status == "error":
            raise WatchError(f"storing the watched events failed in the store process:\n{value}")
        return value

    def close(self) -> None:
        try:
            self._conn.close()
        finally:
            self._proc.join(timeout=30)
            if self._proc.is_alive():
                self._proc.terminate()


def _store_worker_loop(conn: Any, parents_end: Any) -> None:
    parents_end.close()  # forked with it: closed here, the watcher's exit (or death) reads as the end of the pipe
    # Ctrl-C in a terminal reaches the whole process group: the store under way finishes, and the watcher, which
    # stops on it, ends this process by closing the pipe (killed instead, the next run recovers either way)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(10)  # on 2 cores the store's DuckDB threads would take the core the decisions need: it runs when they wait
    from shopsight.behavior import batches

    batches.STORE_THREADS = 1  # and on one core of the two: the other stays the decisions' (this process only)
    import pyarrow

    pyarrow.set_cpu_count(1)  # its Parquet reads and writes too
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the watcher is gone (stopped, or killed): nothing more to do
            return
        try:
            conn.send(("ok", store_landed(job)))
        except BaseException:  # the traceback goes to the watcher, which raises it in its next poll
            conn.send(("error", traceback.format_exc()))


class StreamWatcher:
    """Follows ``path`` for ``ws``; :meth:`poll` once, or :meth:`run` until stopped.

    Args:
        ws: the workspace (it must hold a trained risk model).
        path: a folder (its ``.csv`` files are followed as they grow, its ``.parquet`` files read
            once each) or one CSV file being appended to. The CSV's first line is its header.
        on_decisions: called with each poll's decisions after they are journaled (Slack alerts).
        lock_timeout: seconds to wait for another writer.
        summary_every: seconds between refreshes of the manifest's summary (the ingest skips it).
        score_users: also decide users with new events but no new order (written only when their
            decision rises above allow or changes).
        users_every: seconds between those user passes: they are kept off the orders' path (an
            order is decided in the poll it lands in; a changed user within this many seconds).
        flush_every: in :meth:`run`, seconds between stores of the landed events (fewer, larger batches).
        flush_events: ... or as soon as this many events landed.
        store_process: in :meth:`run`, store in a child process (False: in this one, between polls).
    """

    def __init__(self, ws: Workspace, path: str | Path, *, on_decisions: Callable[[list[dict[str, Any]]], None] | None = None,
                 lock_timeout: float = LOCK_TIMEOUT_S, summary_every: float = 10.0, score_users: bool = True,
                 users_every: float = 5.0, flush_every: float = 5.0, flush_events: int = 50_000, store_process: bool = True) -> None:
        self.ws = ws
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise WatchError(f"nothing to watch at {self.path}: give a folder that new event files land in, or a CSV file being appended to")
        if self.path.is_file() and not self.path.name.endswith(STREAM_SUFFIXES):
            raise WatchError(f"{self.path} is not a CSV file: watch a folder of CSV/Parquet files, or one CSV file being appended to")
        self.key = stream_key(self.path)
        self.prefix = f"{SOURCE_PREFIX}{self.key}#"
        self.checkpoint_path = ws.root / WATCH_DIR / f"checkpoint-{self.key}.json"
        self.on_decisions = on_decisions
        self.lock_timeout = lock_timeout
        self.summary_every = summary_every
        self.score_users = score_users
        self.users_every = users_every
        self.flush_every = flush_every
        self.flush_events = flush_events
        self.store_process = store_process
        self.journal = DecisionJournal(ws.root / WATCH_DIR, self.key)
        self._pending_users: dict[str, None] = {}
        self._last_users = time.monotonic()
        self._users_credit = 0.0  # seconds of the loop's time the users' passes may take when there is no slack
        self._credit_at = time.monotonic()
        self.poll_seconds = 0.0  # run() sets its interval: a poll's slack is what is left of it
        self._last_summary = time.monotonic()
        self._last_flush = time.monotonic()
        self._last_freeze = time.monotonic()
        self._model: Any = None
        self._policy_cache: Any = None
        self._started = False
        self.checkpoint = _read_checkpoint(self.checkpoint_path, self.path)
        self._pos: dict[str, dict[str, Any]] = {}  # per file: how far the landing has read (ahead of the checkpoint)
        self._landed: list[_Landed] = []  # read, decided, not stored yet
        self._journaled: list[dict[str, Any]] = []  # decision records not folded into decisions/ yet
        self._worker: _StoreWorker | None = None
        self._pending_cp: dict[str, Any] | None = None  # the checkpoint the running store job writes

    # --- start: the model, the state, recovery ------------------------------------------
    def _load_model(self) -> None:
        from shopsight.behavior.models import load_model, registry

        latest = registry.latest_version(self.ws, "risk")
        if latest is None:
            raise WatchError(f"no risk model in {self.ws.root}: train one with `shopsight train risk --workspace {self.ws.root}` before watching")
        if self._model is None or self._model.version_ != latest:
            self._model = load_model(self.ws, "risk", latest)
            self._policy_cache = None

    def _policy(self) -> Any:
        from shopsight.behavior.models.decision import load_policy

        if self._policy_cache is None:
            policy = load_policy(self.ws, self._model.card_)
            if policy is None:
                raise WatchError(f"{self._model.label} has no decision thresholds (trained before them): retrain it with "
                                 f"`shopsight train risk`, or set them with `shopsight risk thresholds --review 0.3 --block 0.9`")
            self._policy_cache = policy
        return self._policy_cache

    def _start(self, report: PollReport) -> None:
        """Load what deciding needs (once), then recover what a kill left: journal, stored-but-unfolded batches, alerts."""
        with self.ws.writer("watch", timeout=self.lock_timeout):
            self._load_model()
            self._policy()
            self.checkpoint = _read_checkpoint(self.checkpoint_path, self.path)  # under the lock: a store killed with us may have moved it
            manifest = self.ws.read_manifest()
            stored = self.ws.load_events() if self.ws.event_files(manifest) else None
            # a workspace from before batches is adopted as batch 0 by the first store: known, not another writer's
            legacy = {0} if "batches" not in manifest and self.ws.events_path.exists() else set()
            self._known_ids = {int(b["id"]) for b in manifest.get("batches") or []} | legacy
            self.histories = UserHistories(stored)
            self.identities = IdentityIndex()
            self.known = KnownIdentities(stored)
            if stored is not None:
                self.identities.add(stored)
            table = load_decisions(self.ws, journal=False)
            self._decided = set(table["order_id"].dropna().astype(str))
            users = table[table["order_id"].isna()]
            self._user_last = dict(zip(users["user_id"].astype(str), users["decision"].astype(str)))
            self._pos = {name: dict(st) for name, st in self.checkpoint["files"].items()}
            folded = int(self.checkpoint.get("folded_segment", 0))
            self.journal.after = folded
            self.journal.seq = int(self.checkpoint.get("seq", 0))
            alerted = 0
            for seg, rec in self.journal.load():
                if seg <= folded:
                    continue  # folded before the kill; the segment was not deleted yet
                if "alerted" in rec:
                    alerted = max(alerted, int(rec["alerted"]))
                    continue
                row = rec["row"]
                if rec["kind"] == "order":
                    if str(row["order_id"]) in self._decided:
                        continue  # folded into decisions/ before the kill
                    self._decided.add(str(row["order_id"]))
                else:
                    self._user_last[str(row["user_id"])] = str(row["decision"])
                self._journaled.append(rec)
            self.journal.drop_through(folded)
            self._fold_stored_batches(report)
            self._started = True
        # The state is millions of long-lived objects (the identity tuples above all): left to the collector, each
        # full collection walks them all, a pause of hundreds of ms in the middle of a poll. Frozen, it skips them.
        self._freeze_state(generation=2)
        if self.on_decisions is not None:
            late = [r["row"] for r in self._journaled if int(r["seq"]) > alerted]
            if late:
                self.on_decisions(late)
                self.journal.append([{"alerted": self.journal.seq}])

    def _stream_batches(self) -> list[dict[str, Any]]:
        return [b for b in self.ws.read_manifest().get("batches") or [] if str(b.get("source", "")).startswith(self.prefix)]

    def _fold_stored_batches(self, report: PollReport) -> None:
        """A batch of this stream stored before a kill, without its decisions file: write it from the journal
        (deciding, as of their instant, any of its orders that has no decision)."""
        decided = decided_batches(self.ws)
        for b in self._stream_batches():
            bid = int(b["id"])
            if not b.get("file") or bid in decided:
                continue
            name, rng = str(b["source"])[len(self.prefix):].rsplit("@", 1)
            lo, hi = (0, -1) if rng == "whole" else (int(rng.split("-")[0]), int(rng.split("-")[1]))
            mine = [r for r in self._journaled if r["kind"] == "order" and r["file"] == name and (rng == "whole" or lo <= int(r["start"]) < hi)]
            rows = [dict(r["row"], batch=bid) for r in mine]
            new = pd.read_parquet(self.ws.root / b["file"])
            missing = self._new_orders(new)
            if missing:
                extra = self._decide_orders(missing, landed_at=pd.Timestamp.now(tz="UTC"), source=str(b["source"]))
                rows += [dict(r, batch=bid, decided_at=pd.Timestamp.now(tz="UTC")) for r in extra]
                report.decisions += extra
                for r in extra:
                    self._decided.add(str(r["order_id"]))
                if self.on_decisions is not None and extra:
                    self.on_decisions(extra)
            write_decisions(self.ws, bid, rows)
            taken = {id(r) for r in mine}
            self._journaled = [r for r in self._journaled if id(r) not in taken]
            report.recovered_batches.append(bid)

    # --- one poll ---------------------------------------------------------------------
    def poll(self, *, flush: bool = True) -> PollReport:
        """Read what landed, decide its orders, journal the decisions; ``flush``: also store the events and fold
        the decisions now, before returning (:meth:`run` leaves that to its background stores)."""
        report = PollReport()
        poll_started = time.monotonic()
        if not self._started:
            self._start(report)
        self._collect_store(report, wait=False)
        for name, file in self._files():
            self._follow(name, file, report)
        if time.monotonic() - self._last_freeze >= FREEZE_EVERY_S:
            self._freeze_state()
        if self._pending_users and time.monotonic() - self._last_users >= self.users_every:
            if flush:
                report.decisions += self.decide_pending_users()
            else:
                report.decisions += self._users_in_slack(poll_started)
        if flush:
            self.flush(wait=True, report=report)
        elif self._landed and (time.monotonic() - self._last_flush >= self.flush_every
                               or sum(x.rows for x in self._landed) >= self.flush_events):
            self.flush(wait=not self.store_process, report=report)
        return report

    def _freeze_state(self, generation: int = 1) -> None:
        """Collect the young garbage, then freeze what survives: the state grown since the last freeze.

        The state grows by tens of thousands of tracked objects a second at 50 orders/s (identity
        entries, history parts). Left in the oldest generation, every full collection walks them all, and
        finds nothing to free: measured on the demo replay, a pause that grew from 20 ms to 330 ms within
        25 s, in the middle of a poll. Frozen once a second, a full collection walks at most a second's
        growth. What becomes garbage after its freeze is not collected (a poll's frames are freed by
        reference counting, not the collector; the full collections above freed 0-31 objects each).
        """
        gc.collect(generation)
        gc.freeze()
        self._last_freeze = time.monotonic()

    def _users_in_slack(self, poll_started: float) -> list[dict[str, Any]]:
        """The users' passes of a poll in the run loop: in what is left of the poll interval, else on credit.

        The credit grows by ``USERS_SHARE`` of the time that passes (at most ``USERS_BUDGET_S``) and pays
        for passes made without slack, so a loop that is behind still judges its users, slowly, and an
        order waits for at most one pass of ``USERS_PER_PASS`` users. Measured on the demo replay at 50
        orders/s (2 cores): passes of 25 users every poll until none were pending took p99 from ~180 ms
        (orders only) to ~310 ms; with this credit, passes of 10 users 254 ms and of 4 users 225 ms (orders
        only: 182 ms, same run); three later runs of the same code, 188-195 ms against 146-192 ms. A loop that
        has no slack spends the credit's share on users, and an order landing during a pass waits for it.
        """
        now = time.monotonic()
        self._users_credit = min(USERS_BUDGET_S, self._users_credit + USERS_SHARE * (now - self._credit_at))
        self._credit_at = now
        slack = self.poll_seconds - (now - poll_started)
        budget = min(USERS_BUDGET_S, max(slack, self._users_credit))
        if budget < USERS_MIN_SLICE_S:
            return []
        out = self.decide_pending_users(budget_s=budget)
        if slack < USERS_MIN_SLICE_S:  # paid from the credit (it may go below zero: the next passes wait)
            self._users_credit -= time.monotonic() - now
        self._credit_at = time.monotonic()
        return out

    def decide_pending_users(self, budget_s: float | None = None) -> list[dict[str, Any]]:
        """Decide the users with new events but no new order since the last pass; journal those above allow that changed.

        ``budget_s``: stop after about this long (the rest stay pending for the next poll), so that a long
        pass does not hold up the orders landing meanwhile.
        """
        started = time.monotonic()
        out: list[dict[str, Any]] = []
        while self._pending_users:
            users = list(self._pending_users)[:USERS_PER_PASS]
            for u in users:
                self._pending_users.pop(u, None)
            out += self._decide_users(users)
            if budget_s is not None and time.monotonic() - started >= budget_s:
                break
        if not self._pending_users:
            self._last_users = time.monotonic()
        return out

    def _decide_users(self, users: list[str]) -> list[dict[str, Any]]:
        from shopsight.behavior.models.churn import end_of_events

        mine = self.histories.of_users(users)
        if mine is None or not users:
            return []
        policy = self._policy()
        asof = end_of_events(pd.DataFrame({"ts": [self.histories.end]}))  # as score_orders: the end of every event so far
        linked = self.identities.linked_accounts(mine, self._model.thresholds)
        prob, rules, table = self._model.score_from_rows(mine, users, asof=asof, linked=linked)
        latest = mine.groupby(mine["user_id"].astype(str))["ts"].max()
        rows = []
        for u in sorted(prob):
            d = policy.decide(prob[u], rules_for_user(rules, u))
            if d.decision == "allow" or self._user_last.get(u) == d.decision:
                continue  # a user-level decision is news only when it rises above allow, or changes
            reasons = decision_reasons(d, policy)
            if d.decided_by == "model":
                reasons += [str(x["sentence"]) for x in self._model.reasons_from_rows(mine, u, rules, table)[:MAX_REASONS - 1] if x.get("sentence")]
            rows.append(_decision_row(None, u, d, reasons, policy) | {
                "event_ts": latest[u], "landed_at": None, "decided_at": None, "source": f"{self.prefix}users", "batch": None})
        self._journal([{"kind": "user", "file": None, "start": None, "row": r} for r in rows])
        for r in rows:
            self._user_last[str(r["user_id"])] = str(r["decision"])
        return rows

    def _journal(self, records: list[dict[str, Any]]) -> None:
        """Make decisions durable (one write, one fsync), then hand them to the alert callback."""
        if not records:
            return
        now = pd.Timestamp.now(tz="UTC")
        for r in records:
            r["row"]["decided_at"] = now  # decided, and written from here on (fsync: see the checkpoint's journal_fsync_ms)
        self.journal.append(records)
        self._journaled += records
        if self.on_decisions is not None:
            self.on_decisions([r["row"] for r in records])
            self.journal.append([{"alerted": self.journal.seq}], sync=False)  # lost in a kill: the alerts go again

    def run(self, *, once: bool = False, poll_seconds: float = 1.0, max_polls: int | None = None,
            on_poll: Callable[[PollReport], None] | None = None, should_stop: Callable[[], bool] | None = None,
            on_stopping: Callable[[int], None] | None = None) -> int:
        """Poll until stopped (``once``: one poll of what is there, then return); returns the polls made.

        ``on_stopping``: called on Ctrl-C (KeyboardInterrupt, raised again afterwards) with the number of users
        still pending, before the stop decides them and stores what landed.
        """
        polls = 0
        if self.store_process and not once and self._worker is None:
            self._worker = _StoreWorker()  # started now: its imports are done before the first store
        self.poll_seconds = poll_seconds
        try:
            while True:
                started = time.monotonic()
                report = self.poll(flush=once)
                polls += 1
                if on_poll is not None:
                    on_poll(report)
                if once or (max_polls is not None and polls >= max_polls) or (should_stop is not None and should_stop()):
                    return polls
                time.sleep(max(0.0, poll_seconds - (time.monotonic() - started)))
        except KeyboardInterrupt:
            if on_stopping is not None:
                on_stopping(len(self._pending_users))
            raise
        finally:
            if polls:
                if self._pending_users:
                    self.decide_pending_users()
                self.flush(wait=True)
                self.refresh_summary()
            self.journal.close()
            if self._worker is not None:
                self._worker.close()
                self._worker = None

    def refresh_summary(self) -> None:
        """Recompute the manifest's summary over every stored event (the per-batch ingest skips it to stay fast)."""
        with self.ws.writer("watch", timeout=self.lock_timeout):
            _refresh_summary(self.ws)
        self._last_summary = time.monotonic()

    def _files(self) -> Iterator[tuple[str, Path]]:
        if self.path.is_file():
            yield self.path.name, self.path
            return
        for p in sorted(self.path.iterdir()):
            if p.name.startswith(".") or not p.is_file() or not p.name.endswith(STREAM_SUFFIXES + WHOLE_SUFFIXES):
                continue
            yield p.name, p

    # --- landing ------------------------------------------------------------------------
    def _follow(self, name: str, file: Path, report: PollReport) -> None:
        state = self._pos.setdefault(name, {"offset": 0, "header": None, "done": False})
        if state.get("done"):
            return
        if file.name.endswith(WHOLE_SUFFIXES):
            self._land_whole(name, file, state, report)
            return
        size = file.stat().st_size
        if size < state["offset"]:  # truncated or replaced: read it again from the start (stored events are recognised)
            log.warning("%s shrank from %d to %d bytes: reading it again from the start", file, state["offset"], size)
            state.update(offset=0, header=None, lines=0)
        if size == state["offset"]:
            return
        with open(file, "rb") as fh:
            fh.seek(state["offset"])
            data = fh.read(MAX_READ_BYTES)
        cut = data.rfind(b"\n")
        if cut < 0:
            return  # no complete line yet
        start = int(state["offset"])
        end = start + cut + 1
        body = data[: cut + 1]
        first_line = 1 + int(state.get("lines", 0))
        if state["header"] is None:
            head, _, body = body.partition(b"\n")
            state["header"] = head.decode("utf-8", errors="replace").rstrip("\r")
            first_line += 1
        done = next((b for b in self._stream_batches() if str(b["source"]).startswith(f"{self.prefix}{name}@{start}-")), None) \
            if not any(x.name == name for x in self._landed) else None
        if done is not None:  # a range stored before a kill (its decisions were folded at start): skip to its end
            end = int(str(done["source"]).rsplit("-", 1)[1])
            with open(file, "rb") as fh:
                fh.seek(start)
                body_done = fh.read(end - start)
            state.update(offset=end, lines=int(state.get("lines", 0)) + body_done.count(b"\n"))
            self.checkpoint["files"][name] = dict(state)  # stored: as durable as the checkpoint says
            report.skipped_ranges += 1
            return
        good, rejected = split_lines(body, state["header"], first_line=first_line, source=str(file))
        if rejected:
            self._write_rejected(name, start, rejected)
            report.rejected_lines += len(rejected)
        lines = body.count(b"\n") + (1 if start == 0 else 0)
        landed = _Landed(name, str(file), start, end, state["header"], first_line, lines)
        if good:
            chunk = self.ws.root / WATCH_DIR / "chunks" / f"{self.key}-{name}-{start}.csv"
            chunk.parent.mkdir(parents=True, exist_ok=True)
            chunk.write_text(state["header"] + "\n" + "\n".join(good) + "\n", encoding="utf-8")  # read back at once: no fsync
            try:
                self._land(landed, chunk, report)
            finally:
                chunk.unlink(missing_ok=True)
        self._landed.append(landed)
        state.update(offset=end, lines=int(state.get("lines", 0)) + lines)

    def _land_whole(self, name: str, file: Path, state: dict[str, Any], report: PollReport) -> None:
        label = f"{self.prefix}{name}@whole"
        if any(str(b["source"]) == label for b in self._stream_batches()):
            state["done"] = True
            self.checkpoint["files"][name] = dict(state)
            return
        landed = _Landed(name, str(file), 0, -1, None, 0)
        try:
            self._land(landed, file, report)
        except Exception as exc:  # a Parquet file still being copied in reads as damaged: try again next poll
            if isinstance(exc, WorkspaceError):
                raise
            log.warning("cannot read %s yet (%s): trying again next poll", file, exc)
            return
        self._landed.append(landed)
        state["done"] = True

    def _land(self, landed: _Landed, file: Path, report: PollReport) -> None:
        """Read, validate and protect ``file`` as the ingest does; keep its new rows; decide their new orders."""
        landed_at = pd.Timestamp.now(tz="UTC")
        rows, rep = read_protected(self.ws, file)
        rows, already = new_rows(rows, self.known, self.histories.of_users)
        report.rejected_rows += rep.rows_rejected
        report.already_stored += already + rep.duplicates
        if not len(rows):
            return
        self.histories.add(rows)
        self.identities.add(rows)
        self.known.add(rows)
        landed.rows = len(rows)
        report.events_added += len(rows)
        if self.score_users:
            buyers = set(rows.loc[rows["event"].astype(str) == "purchase", "user_id"].astype(str))
            self._pending_users.update(dict.fromkeys(u for u in rows["user_id"].astype(str) if u not in buyers))
        orders = self._new_orders(rows)
        if not orders:
            return
        source = f"{self.prefix}{landed.name}@{landed.start}-{landed.end}" if landed.end >= 0 else f"{self.prefix}{landed.name}@whole"
        decisions = self._decide_orders(orders, landed_at=landed_at, source=source)
        self._journal([{"kind": "order", "file": landed.name, "start": landed.start, "row": r} for r in decisions])
        for r in decisions:
            self._decided.add(str(r["order_id"]))
        report.decisions += decisions

    def _new_orders(self, rows: pd.DataFrame) -> list[tuple[str, str, pd.Timestamp]]:
        """(order id, buyer, the order's time: its latest line) of the orders in ``rows`` not decided before, in landing order."""
        is_buy = (rows["event"].to_numpy(dtype=object, na_value="") == "purchase") & rows["order_id"].notna().to_numpy(dtype=bool)
        if not is_buy.any():
            return []
        at: dict[str, tuple[str, int]] = {}  # order -> (its first line's buyer, its latest line's time), in landing order
        for o, u, t in zip(rows["order_id"].to_numpy(dtype=object)[is_buy].tolist(), rows["user_id"].to_numpy(dtype=object)[is_buy].tolist(),
                           rows["ts"].to_numpy(dtype="datetime64[ns]").astype("int64")[is_buy].tolist()):
            o = str(o)
            if o not in at:
                at[o] = (str(u), t)
            elif t > at[o][1]:
                at[o] = (at[o][0], t)
        return [(o, u, pd.Timestamp(t, tz="UTC")) for o, (u, t) in at.items() if o not in self._decided]

    def _write_rejected(self, name: str, start: int, rejected: list[dict[str, Any]]) -> None:
        table, _ = mask_table(pd.DataFrame(rejected).astype("string"))
        path = self.ws.rejected_dir / f"watch-{self.key}-{Path(name).stem}-{start}.csv"
        with atomic_path(path) as tmp:  # named by the byte range: a replay after a kill rewrites the same file
            table.to_csv(tmp, index=False)

    # --- deciding -----------------------------------------------------------------------
    def _decide_orders(self, orders: list[tuple[str, str, pd.Timestamp]], *, landed_at: pd.Timestamp, source: str) -> list[dict[str, Any]]:
        """Each order (id, buyer, its time) scored as of its own instant from its buyer's history, several per pass.

        A pass holds orders of one "as of" day (the model's ``end_of_events``), each buyer once; its rows are
        the buyers' histories cut at each one's order time, in one frame.
        """
        from shopsight.behavior.models.churn import DAY

        policy = self._policy()
        groups: list[dict[str, Any]] = []
        for oid, uid, at in orders:
            asof = at.floor("D") + DAY  # end_of_events of the buyer's rows up to the order
            # the first pass of the same "as of" day without this buyer (a second order of theirs needs its own rows)
            g = next((g for g in groups if g["asof"] == asof and uid not in g["users"]), None)
            if g is None:
                g = {"asof": asof, "users": {}, "orders": []}
                groups.append(g)
            g["users"][uid] = at
            g["orders"].append((oid, uid))
        out: list[dict[str, Any]] = []
        for g in groups:
            rows = self.histories.of_users(list(g["users"]))
            cut = rows["user_id"].astype(str).map(g["users"])
            mine = rows[(rows["ts"] <= cut).to_numpy(dtype=bool)]
            linked = self.identities.linked_accounts(mine, self._model.thresholds, asof=g["users"])
            prob, rules, table = self._model.score_from_rows(mine, list(g["users"]), asof=g["asof"], linked=linked)
            when = dict(zip(table.index.astype(str), table["ts"]))
            for oid, uid in g["orders"]:
                d = policy.decide(prob[uid], rules_for_order(rules, oid))
                reasons = decision_reasons(d, policy)
                if d.decision != "allow" and d.decided_by == "model":
                    reasons += [str(x["sentence"]) for x in self._model.reasons_from_rows(mine, uid, rules, table)[:MAX_REASONS - 1]
                                if x.get("sentence")]
                out.append(_decision_row(oid, uid, d, reasons, policy) | {
                    "order_ts": when[oid], "event_ts": g["users"][uid], "landed_at": landed_at, "decided_at": None, "source": source,
                    "batch": None})
        return out

    # --- storing the landed events, folding the journal (off the decision path) ----------------
    def flush(self, *, wait: bool = True, report: PollReport | None = None) -> None:
        """Store the events landed so far (one batch per file) and fold the journal's decisions into decisions/.

        ``wait``: here and now (after any store under way); otherwise hand it to the store process, unless
        a store is still running there (then nothing: a later poll tries again).
        """
        report = report if report is not None else PollReport()
        if self._worker is not None and self._worker.busy:
            if not wait:
                return
            self._collect_store(report, wait=True)
        if not self._started:
            return
        self._last_flush = time.monotonic()
        landed, self._landed = self._landed, []
        records, self._journaled = self._journaled, []
        if not landed and not records:
            return
        self.journal.seal()  # every segment on disk now holds only decisions in ``records`` or folded before
        segment = max((seg for seg, _ in self.journal.segments()), default=0)
        cp = json.loads(json.dumps(self.checkpoint))
        for name in dict.fromkeys(x.name for x in landed):
            parts = [x for x in landed if x.name == name]
            if parts[-1].end < 0:
                cp["files"][name] = {"offset": 0, "header": None, "done": True}
            else:
                old = self.checkpoint["files"].get(name) or {}
                cp["files"][name] = {"offset": parts[-1].end, "header": self._pos[name]["header"], "done": False,
                                     "lines": int(old.get("lines", 0)) + sum(x.lines for x in parts)}
        cp["seq"] = self.journal.seq
        cp["folded_segment"] = max(int(cp.get("folded_segment", 0)), segment)
        if self.journal.fsync_seconds:
            ms = np.asarray(self.journal.fsync_seconds[-5000:]) * 1000
            cp["journal_fsync_ms"] = {"p50": round(float(np.percentile(ms, 50)), 2), "p99": round(float(np.percentile(ms, 99)), 2),
                                      "max": round(float(ms.max()), 2), "n": int(len(ms))}
        job = {
            "root": str(self.ws.root), "prefix": self.prefix, "key": self.key, "lock_timeout": self.lock_timeout,
            "ranges": [x.__dict__ for x in landed], "records": records, "checkpoint": cp, "checkpoint_path": str(self.checkpoint_path),
            "segment": segment, "known_ids": sorted(self._known_ids),
            "summary": time.monotonic() - self._last_summary >= self.summary_every,
        }
        if job["summary"]:
            self._last_summary = time.monotonic()
        self._pending_cp = cp
        if wait or self._worker is None:
            self._took(store_landed(job), report)
        else:
            self._worker.send(job)

    def _collect_store(self, report: PollReport, *, wait: bool) -> None:
        """What a finished background store did (its batches; its error, raised here)."""
        if self._worker is None:
            return
        result = self._worker.result(wait)
        if result is not None:
            self._took(result, report)

    def _took(self, result: dict[str, Any], report: PollReport) -> None:
        """Take in a finished store: the checkpoint it wrote, its batches, other writers' events it found."""
        if self._pending_cp is not None:
            self.checkpoint = self._pending_cp
            self._pending_cp = None
        report.batches += result["batches"]
        self._known_ids.update(result["batches"])
        for bid, file in result["foreign"]:
            self._known_ids.add(int(bid))
            if file:  # events another writer stored meanwhile (`shopsight ingest` between two stores): into the state too
                rows = pd.read_parquet(self.ws.root / file)
                self.histories.add(rows)
                self.identities.add(rows)
                self.known.add(rows)
        if result["batches"] and self._model is not None:
            self._load_model()  # a model trained meanwhile decides from the next poll on


def _read_checkpoint(path: Path, watched: Path) -> dict[str, Any]:
    if not path.exists():
        return {"path": str(watched.resolve()), "files": {}, "folded_segment": 0}
    try:
        cp = json.loads(path.read_text())
    except ValueError as exc:
        raise WatchError(f"the watch checkpoint {path} is not JSON ({exc}); delete it to start the stream "
                         "again from the beginning (events already stored are recognised and not stored twice)") from exc
    cp.setdefault("files", {})
    cp.setdefault("folded_segment", 0)
    return cp


def write_checkpoint(path: Path, cp: dict[str, Any]) -> None:
    cp["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json_atomic(path, cp)


def _refresh_summary(ws: Workspace) -> None:
    from shopsight.behavior.batches import summarize_files

    files = ws.event_files(ws.read_manifest())
    if files:
        ws.update_manifest(summary=summarize_files(files))


def store_landed(job: dict[str, Any]) -> dict[str, Any]:
    """Steps 4–6 of the module's docstring, for one store job (:meth:`StreamWatcher.flush` makes it).

    Runs in the store process (or inline), under the writer lock: each file's landed byte ranges are
    appended through :func:`ingest_file` as one batch, the journal's decisions are written beside the
    batches their lines went into, the checkpoint is written, the folded journal segments deleted.
    Returns the batches stored and the batches other writers stored meanwhile (id, file).
    """
    ws = Workspace(Path(job["root"]))
    prefix = job["prefix"]
    known = set(job["known_ids"])
    out: dict[str, Any] = {"batches": [], "foreign": []}
    with ws.writer("watch", timeout=float(job["lock_timeout"])):
        for b in ws.read_manifest().get("batches") or []:  # another writer's batches since the last store
            if int(b["id"]) not in known and not str(b.get("source", "")).startswith(prefix):
                out["foreign"].append((int(b["id"]), b.get("file")))
                known.add(int(b["id"]))
        orders = [r for r in job["records"] if r["kind"] == "order"]
        placed: set[int] = set()
        for run in _contiguous_runs(job["ranges"]):
            name, whole = run[0]["name"], run[0]["end"] < 0
            lo, hi = run[0]["start"], run[-1]["end"]
            label = f"{prefix}{name}@whole" if whole else f"{prefix}{name}@{lo}-{hi}"
            rep = _store_range(ws, run, label, job)
            if rep is None:
                continue
            bid = int(rep.batch)
            known.add(bid)
            out["batches"].append(bid)
            mine = [r for r in orders if r["file"] == name and (whole or lo <= int(r["start"]) < hi)]
            placed.update(id(r) for r in mine)
            write_decisions(ws, bid, [dict(r["row"], batch=bid) for r in mine])
        latest = max(known, default=0)
        late = [r for r in orders if id(r) not in placed]  # their events were stored by another writer meanwhile
        if late:
            write_parquet_atomic(decisions_dir(ws) / f"late-{int(job['segment']):08d}.parquet",
                                 _frame([dict(r["row"], batch=latest) for r in late]))
        folded = folded_user_seqs(ws)
        users = [r for r in job["records"] if r["kind"] == "user" and int(r["seq"]) not in folded]  # not folded before a kill
        if users:  # the latest batch: their events are in it or before it
            write_user_decisions_named(ws, int(users[0]["seq"]), int(users[-1]["seq"]), [dict(r["row"], batch=latest) for r in users])
        if job.get("summary"):
            _refresh_summary(ws)
        write_checkpoint(Path(job["checkpoint_path"]), job["checkpoint"])
    DecisionJournal(ws.root / WATCH_DIR, job["key"]).drop_through(int(job["segment"]))
    return out


def _contiguous_runs(ranges: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Per file, the landed reads in runs of adjoining byte ranges (a whole file alone): one batch each."""
    runs: list[list[dict[str, Any]]] = []
    by_file: dict[str, list[dict[str, Any]]] = {}
    for x in ranges:
        by_file.setdefault(x["name"], []).append(x)
    for parts in by_file.values():
        for x in parts:
            if runs and runs[-1][0]["name"] == x["name"] and x["end"] >= 0 and runs[-1][-1]["end"] == x["start"]:
                runs[-1].append(x)
            else:
                runs.append([x])
    return runs


def _store_range(ws: Workspace, run: list[dict[str, Any]], label: str, job: dict[str, Any]) -> Any:
    """Append one run of landed reads (or one whole file) through the ingest, as one batch; its report."""
    first = run[0]
    if first["end"] < 0:
        _, rep = ingest_file(ws, first["path"], fmt="canonical", source_label=label, update_summary=False,
                             lock_timeout=float(job["lock_timeout"]), return_events=False)
        return rep
    with open(first["path"], "rb") as fh:
        fh.seek(first["start"])
        body = fh.read(run[-1]["end"] - first["start"])
    if first["start"] == 0:
        body = body.partition(b"\n")[2]
    good, _ = split_lines(body, first["header"], first_line=first["first_line"], source=first["path"])  # rejected at landing
    if not good:
        return None
    chunk = ws.root / WATCH_DIR / "chunks" / f"{job['key']}-{first['name']}-{first['start']}-store.csv"
    chunk.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(chunk) as tmp:
        tmp.write_text(first["header"] + "\n" + "\n".join(good) + "\n", encoding="utf-8")
    try:
        _, rep = ingest_file(ws, chunk, fmt="canonical", source_label=label, update_summary=False,
                             lock_timeout=float(job["lock_timeout"]), return_events=False)
    except EventDataError as exc:  # no usable row in the whole range (every value bad): rejected with the cause, the stream goes on
        table, _ = mask_table(pd.DataFrame([{"file": first["path"], "line": first["first_line"], "reason": str(exc),
                                             "raw": f"bytes {first['start']}-{run[-1]['end']}"}]).astype("string"))
        with atomic_path(ws.rejected_dir / f"watch-{job['key']}-{Path(first['name']).stem}-{first['start']}-rows.csv") as tmp:
            table.to_csv(tmp, index=False)
        return None
    finally:
        chunk.unlink(missing_ok=True)
    return rep


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    from shopsight.behavior.decisions import decision_frame

    return decision_frame(rows)


def _decision_row(order_id: str | None, user_id: str, d: Any, reasons: list[str], policy: Any) -> dict[str, Any]:
    return {"order_id": order_id, "user_id": user_id, "decision": d.decision, "score": d.probability, "reasons": reasons,
            "rules": d.rules_fired, "forced_by": d.forced_by, "threshold": d.threshold, "expected_precision": d.expected_precision,
            "model": policy.model, "order_ts": None}


def split_lines(body: bytes, header: str, *, first_line: int, source: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The lines of a chunk that are CSV rows as wide as the header, and the others with their cause.

    Blank lines are skipped. A rejected line names its file, its line number and what is wrong.
    """
    width = len(next(csv.reader([header])))
    good: list[str] = []
    rejected: list[dict[str, Any]] = []
    for i, raw in enumerate(body.split(b"\n")[:-1] if body.endswith(b"\n") else body.split(b"\n")):
        line_no = first_line + i
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            rejected.append({"file": source, "line": line_no, "reason": f"not UTF-8 text ({exc.reason} at byte {exc.start})",
                             "raw": raw.decode("utf-8", errors="replace")[:500]})
            continue
        if not line.strip():
            continue
        try:
            fields = next(csv.reader(io.StringIO(line), strict=True))
        except (csv.Error, StopIteration) as exc:
            rejected.append({"file": source, "line": line_no, "reason": f"not a CSV row ({exc})", "raw": line[:500]})
            continue
        if len(fields) != width:
            rejected.append({"file": source, "line": line_no,
                             "reason": f"expected {width} fields as in the header, found {len(fields)}", "raw": line[:500]})
            continue
        good.append(line)
    return good, rejected


def decision_reasons(d: Any, policy: Any) -> list[str]:
    """Why, in sentences: the hard rule that forced it, the threshold crossed (with its validation precision), the fired rules."""
    out: list[str] = []
    if d.forced_by:
        f = d.forced_by
        out.append(f"the {f['name'].replace('_', ' ')} rule forces {d.decision} whatever the model says: {f['detail']}"
                   + (f" (evidence: {', '.join(f['evidence'][:5])})" if f.get("evidence") else ""))
    elif d.decision != "allow":
        prec = f", where {d.expected_precision:.0%} of flagged validation accounts were fraud" if d.expected_precision is not None else ""
        out.append(f"fraud probability {d.probability:.1%} is at or above the {d.decision} threshold {d.threshold:.1%}{prec}")
    else:
        out.append(f"fraud probability {d.probability:.1%} is below the review threshold {policy.review:.1%}")
    for r in d.rules_fired:
        if not d.forced_by or r["name"] != d.forced_by["name"]:
            out.append(f"the {r['name'].replace('_', ' ')} rule fired: {r['detail']}")
    return out
