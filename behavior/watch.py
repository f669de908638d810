"""``shopsight watch``: follow a folder of new event files (or one file being appended to), append what
lands to the workspace through the lifecycle ingest, and decide every new order as it arrives.

One poll, under the workspace's writer lock:

1. decide any batch of this stream that was ingested but not decided (a watcher killed between
   the two), so a restart decides it;
2. per file, read the complete lines past the checkpoint's offset; lines that are not CSV rows
   of the header's width are rejected with their cause into ``rejected/watch-*.csv`` and the
   stream goes on; the rest go through :func:`behavior.ingest.ingest_file` as one batch, whose
   manifest entry names the stream and the byte range (a range already ingested is skipped);
3. score the batch's new orders (and its users without an order) with the risk model, decide
   with the thresholds in force, and write the decisions (``decisions/batch-<id>.parquet``);
4. write the checkpoint (``watch/checkpoint-<key>.json``) atomically, after the decisions.

A kill anywhere leaves the events, the decisions and the checkpoint such that the next run
decides every order once: an ingested batch without decisions is decided by step 1, a byte
range already ingested is skipped in step 2, and an order id already decided is never decided
again (an order whose lines straddle two polls is decided when its first line lands).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd

from shopsight.behavior.decisions import decided_batches, load_decisions, write_decisions, write_user_decisions
from shopsight.behavior.ingest import ingest_file
from shopsight.behavior.privacy import mask_table
from shopsight.behavior.workspace import LOCK_TIMEOUT_S, Workspace, WorkspaceError, atomic_path, write_json_atomic

log = logging.getLogger(__name__)

WATCH_DIR = "watch"
SOURCE_PREFIX = "watch:"
STREAM_SUFFIXES = (".csv",)  # appendable, one event per line
WHOLE_SUFFIXES = (".parquet",)  # read whole, once, when it lands
MAX_READ_BYTES = 8 << 20  # one poll reads at most this much of a file; the rest waits for the next
MAX_REASONS = 4


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

    def counts(self) -> dict[str, int]:
        out = {d: 0 for d in ("allow", "review", "block")}
        for d in self.decisions:
            out[str(d["decision"])] = out.get(str(d["decision"]), 0) + 1
        return out


def stream_key(path: Path) -> str:
    """A short stable name for a watched path (its checkpoint and its batches' sources carry it)."""
    return hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]


class StreamWatcher:
    """Follows ``path`` for ``ws``; :meth:`poll` once, or :meth:`run` until stopped.

    Args:
        ws: the workspace (it must hold a trained risk model).
        path: a folder (its ``.csv`` files are followed as they grow, its ``.parquet`` files read
            once each) or one CSV file being appended to. The CSV's first line is its header.
        on_decisions: called with each batch's decisions after they are written (Slack alerts).
        lock_timeout: seconds to wait for another writer.
        summary_every: seconds between refreshes of the manifest's summary (the ingest skips it).
        score_users: also decide users with new events but no new order (written only when their
            decision rises above allow or changes).
        users_every: seconds between those user passes: they are kept off the orders' path (an
            order is decided in the poll it lands in; a changed user within this many seconds).
    """

    def __init__(self, ws: Workspace, path: str | Path, *, on_decisions: Callable[[list[dict[str, Any]]], None] | None = None,
                 lock_timeout: float = LOCK_TIMEOUT_S, summary_every: float = 10.0, score_users: bool = True,
                 users_every: float = 5.0) -> None:
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
        self._pending_users: dict[str, None] = {}
        self._last_users = time.monotonic()
        self.events: pd.DataFrame | None = None
        self._known_batches: list[int] | None = None
        self._model: Any = None
        self._decided: set[str] | None = None
        self._user_last: dict[str, str] = {}
        self._last_summary = time.monotonic()
        self.checkpoint = self._read_checkpoint()

    # --- the checkpoint ---------------------------------------------------------------
    def _read_checkpoint(self) -> dict[str, Any]:
        if not self.checkpoint_path.exists():
            return {"path": str(self.path.resolve()), "files": {}, "alerted_through": 0}
        try:
            cp = json.loads(self.checkpoint_path.read_text())
        except ValueError as exc:
            raise WatchError(f"the watch checkpoint {self.checkpoint_path} is not JSON ({exc}); delete it to start the stream "
                             "again from the beginning (events already stored are recognised and not stored twice)") from exc
        cp.setdefault("files", {})
        cp.setdefault("alerted_through", 0)
        return cp

    def _write_checkpoint(self) -> None:
        self.checkpoint["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json_atomic(self.checkpoint_path, self.checkpoint)

    # --- what deciding needs ----------------------------------------------------------
    def _sync(self) -> None:
        """Load the events (again, if another writer added batches since), the latest risk model, the decided orders."""
        from shopsight.behavior.models import load_model, registry

        manifest = self.ws.read_manifest()
        ids = [int(b["id"]) for b in manifest.get("batches") or []] if "batches" in manifest else [-1]
        if self._known_batches != ids:
            self.events = self.ws.load_events() if self.ws.event_files(manifest) else None
            self._known_batches = ids
        latest = registry.latest_version(self.ws, "risk")
        if latest is None:
            raise WatchError(f"no risk model in {self.ws.root}: train one with `shopsight train risk --workspace {self.ws.root}` before watching")
        if self._model is None or self._model.version_ != latest:
            self._model = load_model(self.ws, "risk", latest)
        if self._decided is None:
            table = load_decisions(self.ws)
            self._decided = set(table["order_id"].dropna().astype(str))
            users = table[table["order_id"].isna()]
            self._user_last = dict(zip(users["user_id"].astype(str), users["decision"].astype(str)))

    def _policy(self) -> Any:
        from shopsight.behavior.models.decision import load_policy

        policy = load_policy(self.ws, self._model.card_)
        if policy is None:
            raise WatchError(f"{self._model.label} has no decision thresholds (trained before them): retrain it with "
                             f"`shopsight train risk`, or set them with `shopsight risk thresholds --review 0.3 --block 0.9`")
        return policy

    # --- one poll ---------------------------------------------------------------------
    def poll(self) -> PollReport:
        """Recover, read what landed, ingest, decide, checkpoint; returns what it did."""
        report = PollReport()
        with self.ws.writer("watch", timeout=self.lock_timeout):
            self._sync()
            self._recover(report)
            for name, file in self._files():
                self._follow(name, file, report)
            if self._pending_users and time.monotonic() - self._last_users >= self.users_every:
                report.decisions += self.decide_pending_users()
            if report.batches and time.monotonic() - self._last_summary >= self.summary_every:
                self.refresh_summary()
        return report

    def decide_pending_users(self) -> list[dict[str, Any]]:
        """Decide the users with new events but no new order since the last pass; write those above allow that changed."""
        users, self._pending_users = list(self._pending_users), {}
        self._last_users = time.monotonic()
        if not users or self.events is None:
            return []
        rows = decide_users(self._model, self._policy(), self.events, users, user_last=self._user_last)
        if not rows:
            return []
        now = pd.Timestamp.now(tz="UTC")
        batch = max(self._known_batches or [0])
        for r in rows:
            r.update(landed_at=None, decided_at=now, source=f"{self.prefix}users", batch=batch)
            self._user_last[str(r["user_id"])] = str(r["decision"])
        write_user_decisions(self.ws, batch, rows)
        if self.on_decisions is not None:
            self.on_decisions(rows)
        return rows

    def refresh_summary(self) -> None:
        """Recompute the manifest's summary over every event (the per-batch ingest skips it to stay fast)."""
        from shopsight.behavior.features import summarize_events

        if self.events is not None and len(self.events):
            with self.ws.writer("watch", timeout=self.lock_timeout):
                self.ws.update_manifest(summary=summarize_events(self.events))
        self._last_summary = time.monotonic()

    def run(self, *, once: bool = False, poll_seconds: float = 1.0, max_polls: int | None = None,
            on_poll: Callable[[PollReport], None] | None = None, should_stop: Callable[[], bool] | None = None) -> int:
        """Poll until stopped (``once``: one poll of what is there, then return); returns the polls made."""
        polls = 0
        try:
            while True:
                started = time.monotonic()
                report = self.poll()
                polls += 1
                if on_poll is not None:
                    on_poll(report)
                if once or (max_polls is not None and polls >= max_polls) or (should_stop is not None and should_stop()):
                    return polls
                time.sleep(max(0.0, poll_seconds - (time.monotonic() - started)))
        finally:
            if polls:
                if self._pending_users:
                    with self.ws.writer("watch", timeout=self.lock_timeout):
                        self.decide_pending_users()
                self.refresh_summary()

    def _files(self) -> Iterator[tuple[str, Path]]:
        if self.path.is_file():
            yield self.path.name, self.path
            return
        for p in sorted(self.path.iterdir()):
            if p.name.startswith(".") or not p.is_file() or not p.name.endswith(STREAM_SUFFIXES + WHOLE_SUFFIXES):
                continue
            yield p.name, p

    def _batches(self) -> list[dict[str, Any]]:
        return [b for b in self.ws.read_manifest().get("batches") or [] if str(b.get("source", "")).startswith(self.prefix)]

    def _recover(self, report: PollReport) -> None:
        """Decide this stream's batches that were ingested but not decided; re-send alerts not sent."""
        decided = decided_batches(self.ws)
        for b in self._batches():
            bid = int(b["id"])
            if b.get("file") and bid not in decided:
                new = pd.read_parquet(self.ws.root / b["file"])
                report.decisions += self._decide(bid, new, str(b["source"]), landed_at=pd.Timestamp.now(tz="UTC"))
                report.recovered_batches.append(bid)
        through = int(self.checkpoint.get("alerted_through", 0))
        if self.on_decisions is not None:
            mine = {int(b["id"]) for b in self._batches()}
            table = load_decisions(self.ws)
            late = table[table["batch"].isin([i for i in mine if i > through]) & ~table["batch"].isin(report.recovered_batches)]
            if len(late):
                self.on_decisions([_row_dict(r) for _, r in late.iterrows()])
                self.checkpoint["alerted_through"] = int(late["batch"].max())
                self._write_checkpoint()

    def _follow(self, name: str, file: Path, report: PollReport) -> None:
        state = self.checkpoint["files"].setdefault(name, {"offset": 0, "header": None, "done": False})
        if state.get("done"):
            return
        if file.name.endswith(WHOLE_SUFFIXES):
            self._ingest_whole(name, file, state, report)
            return
        size = file.stat().st_size
        if size < state["offset"]:  # truncated or replaced: read it again from the start (stored events are recognised)
            log.warning("%s shrank from %d to %d bytes: reading it again from the start", file, state["offset"], size)
            state.update(offset=0, header=None)
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
        label = f"{self.prefix}{name}@{start}-{end}"
        done = next((b for b in self._batches() if str(b["source"]).startswith(f"{self.prefix}{name}@{start}-")), None)
        if done is not None:  # a range ingested before a kill: skip to its end (its decisions were recovered)
            end = int(str(done["source"]).rsplit("-", 1)[1])
            with open(file, "rb") as fh:
                fh.seek(start)
                body_done = fh.read(end - start)
            state.update(offset=end, lines=int(state.get("lines", 0)) + body_done.count(b"\n"))
            self._write_checkpoint()
            report.skipped_ranges += 1
            return
        good, rejected = split_lines(body, state["header"], first_line=first_line, source=str(file))
        if rejected:
            self._write_rejected(name, start, rejected)
            report.rejected_lines += len(rejected)
        if good:
            chunk = self.ws.root / WATCH_DIR / "chunks" / f"{self.key}-{name}-{start}.csv"
            with atomic_path(chunk) as tmp:
                tmp.write_text(state["header"] + "\n" + "\n".join(good) + "\n", encoding="utf-8")
            try:
                self._ingest(chunk, label, report)
            finally:
                chunk.unlink(missing_ok=True)
        state.update(offset=end, lines=int(state.get("lines", 0)) + body.count(b"\n") + (1 if start == 0 else 0))
        self._write_checkpoint()

    def _ingest_whole(self, name: str, file: Path, state: dict[str, Any], report: PollReport) -> None:
        label = f"{self.prefix}{name}@whole"
        if not any(str(b["source"]) == label for b in self._batches()):
            try:
                self._ingest(file, label, report)
            except Exception as exc:  # a Parquet file still being copied in reads as damaged: try again next poll
                if isinstance(exc, WorkspaceError):
                    raise
                log.warning("cannot read %s yet (%s): trying again next poll", file, exc)
                return
        state["done"] = True
        self._write_checkpoint()

    def _ingest(self, file: Path, label: str, report: PollReport) -> None:
        landed = pd.Timestamp.now(tz="UTC")
        new, rep = ingest_file(self.ws, file, fmt="canonical", source_label=label, update_summary=False,
                               lock_timeout=self.lock_timeout)
        report.rejected_rows += rep.rows_rejected
        report.already_stored += rep.already_stored + rep.duplicates
        manifest_ids = [int(b["id"]) for b in self.ws.read_manifest().get("batches") or []]
        self._known_batches = manifest_ids
        if not len(new):
            return
        self.events = new if self.events is None else pd.concat([self.events, new], ignore_index=True)
        report.batches.append(int(rep.batch))
        report.events_added += len(new)
        decisions = self._decide(int(rep.batch), new, label, landed_at=landed)
        report.decisions += decisions

    def _write_rejected(self, name: str, start: int, rejected: list[dict[str, Any]]) -> None:
        table, _ = mask_table(pd.DataFrame(rejected).astype("string"))
        path = self.ws.rejected_dir / f"watch-{self.key}-{Path(name).stem}-{start}.csv"
        with atomic_path(path) as tmp:  # named by the byte range: a replay after a kill rewrites the same file
            table.to_csv(tmp, index=False)

    # --- deciding -----------------------------------------------------------------------
    def _decide(self, batch: int, new: pd.DataFrame, source: str, *, landed_at: pd.Timestamp) -> list[dict[str, Any]]:
        rows = decide_batch(self._model, self._policy(), self.events, new, decided=self._decided, user_last=self._user_last,
                            score_users=False)
        if self.score_users:
            buyers = set(new.loc[new["event"].astype(str) == "purchase", "user_id"].astype(str))
            self._pending_users.update(dict.fromkeys(u for u in new["user_id"].astype(str) if u not in buyers))
        now = pd.Timestamp.now(tz="UTC")
        for r in rows:
            r.update(landed_at=landed_at, decided_at=now, source=source, batch=batch)
        write_decisions(self.ws, batch, rows)
        for r in rows:
            if r["order_id"] is not None:
                self._decided.add(str(r["order_id"]))
            else:
                self._user_last[str(r["user_id"])] = str(r["decision"])
        if self.on_decisions is not None and rows:
            self.on_decisions(rows)
        self.checkpoint["alerted_through"] = max(int(self.checkpoint.get("alerted_through", 0)), batch)
        return rows


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


def decide_batch(model: Any, policy: Any, events: pd.DataFrame, new: pd.DataFrame, *, decided: set[str],
                 user_last: dict[str, str], score_users: bool = True, users: list[str] | None = None) -> list[dict[str, Any]]:
    """The decisions for one batch of new events: every new order not decided before, and every user with new
    events but no new order whose decision rose above allow (and differs from their last one)."""
    purchases = new[(new["event"].astype(str) == "purchase") & new["order_id"].notna()]
    orders = purchases[["order_id", "user_id"]].astype(str).drop_duplicates("order_id")
    orders = orders[~orders["order_id"].isin(decided)]
    buyers = set(orders["user_id"])
    others = [u for u in dict.fromkeys(new["user_id"].astype(str)) if u not in buyers] if score_users else []
    if users is not None:
        others = [u for u in users if u not in buyers]
    scored = model.score_orders(events, orders, users=others)
    out: list[dict[str, Any]] = []
    for s in scored:
        d = policy.decide(s["probability"], s["rules"])
        if s["order_id"] is None and (d.decision == "allow" or user_last.get(s["user_id"]) == d.decision):
            continue  # a user-level decision is news only when it rises above allow, or changes
        reasons = decision_reasons(d, policy)
        if d.decision != "allow" and d.decided_by == "model":
            reasons += [str(x["sentence"]) for x in model.order_reasons(events, s["user_id"])[:MAX_REASONS - 1] if x.get("sentence")]
        out.append({
            "order_id": s["order_id"], "user_id": s["user_id"], "decision": d.decision, "score": d.probability,
            "reasons": reasons, "rules": d.rules_fired, "forced_by": d.forced_by, "threshold": d.threshold,
            "expected_precision": d.expected_precision, "model": policy.model, "order_ts": s.get("ts"),
        })
    return out


def decide_users(model: Any, policy: Any, events: pd.DataFrame, users: list[str], *, user_last: dict[str, str]) -> list[dict[str, Any]]:
    """User-level decisions for ``users`` (new events, no new order): only those above allow that changed."""
    return decide_batch(model, policy, events, events.iloc[:0], decided=set(), user_last=user_last, users=users) if users else []


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


def _row_dict(r: pd.Series) -> dict[str, Any]:
    out = {k: (None if (not isinstance(v, (list, dict)) and pd.isna(v)) else v) for k, v in r.to_dict().items()}
    for c in ("reasons", "rules", "forced_by"):
        if isinstance(out.get(c), str):
            out[c] = json.loads(out[c])
    return out
