"""The risk audit trail: the ``decisions`` table (one row per decided order, or per user whose behaviour
changed) and the analysts' labels on them, both append-only Parquet in the workspace, written atomically.

Layout::

    workspace/
      decisions/batch-<id>.parquet     the decisions made on event batch <id> (one file per batch,
                                       written once: its presence says the batch was decided)
      decisions/users-<id>-<ns>.parquet  a pass over the users whose behaviour changed (no new order)
      analyst_labels/label-*.parquet   one file per analyst click ("confirm fraud" / "false alarm")
      watch/journal-<key>-<seq>.jsonl  ``shopsight watch``'s decisions as they are made (one JSON line each,
                                       fsynced before the decision counts), folded into the Parquet files above
                                       when their events are stored, then deleted (see :class:`DecisionJournal`)

Columns of a decision: ``order_id`` (None for a user-level decision), ``user_id``, ``decision``
(allow / review / block), ``score`` (P(fraud)), ``reasons`` (JSON list of sentences), ``rules``
(JSON list of the fired rules with their evidence), ``forced_by`` (the hard rule, or None),
``threshold``, ``expected_precision``, ``model`` (``risk@v3``), ``order_ts``, ``event_ts`` (the event
time the decision judged: the order's time, or for a user the time of their latest event judged; the
periods and dates of ``risk_decisions`` are read from it, so a replay of old events is dated by its
events, not by the day it ran), ``landed_at`` (when its lines were read from the stream),
``decided_at`` (the wall clock when it was made: the latency and the audit), ``source`` (the stream), ``batch``.

The analysts' labels sit apart from ``labels/`` (the demo's ground truth, which an ingest of new
events removes): they are about these events and stay. ``analyst_user_labels`` folds them into
the per-user ``is_fraud`` the next risk training reads.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from shopsight.behavior.workspace import Workspace, WorkspaceError, write_parquet_atomic

DECISIONS_DIR = "decisions"
JOURNAL_DIR = "watch"  # shopsight watch's journal segments
LABELS_DIR = "analyst_labels"
LABELS = {"fraud": True, "false_alarm": False}  # what an analyst's click says about the account
COLUMNS = ("order_id", "user_id", "decision", "score", "reasons", "rules", "forced_by", "threshold", "expected_precision",
           "model", "order_ts", "event_ts", "landed_at", "decided_at", "source", "batch")
LABEL_COLUMNS = ("order_id", "user_id", "label", "analyst", "decision", "model", "labelled_at", "via")


def decisions_dir(ws: Workspace) -> Path:
    return ws.root / DECISIONS_DIR


def decisions_file(ws: Workspace, batch: int) -> Path:
    return decisions_dir(ws) / f"batch-{int(batch):06d}.parquet"


def decision_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Decision rows as the table's typed frame (lists and dicts as JSON text)."""
    records = []
    for r in rows:
        rec = {c: r.get(c) for c in COLUMNS}
        for c in ("reasons", "rules", "forced_by"):
            if rec[c] is not None and not isinstance(rec[c], str):
                rec[c] = json.dumps(rec[c], default=str)
        records.append(rec)
    df = pd.DataFrame(records, columns=list(COLUMNS))
    for c in ("order_id", "user_id", "decision", "reasons", "rules", "forced_by", "model", "source"):
        df[c] = df[c].astype("string")
    for c in ("score", "threshold", "expected_precision"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in ("order_ts", "event_ts", "landed_at", "decided_at"):
        df[c] = pd.to_datetime(df[c], utc=True)
    df["event_ts"] = df["event_ts"].where(df["event_ts"].notna(), df["order_ts"])  # an order judged its own time
    batch = pd.to_numeric(df["batch"])
    df["batch"] = batch.astype("int64" if batch.notna().all() else "Int64")  # None: journaled, not folded yet
    return df


def write_decisions(ws: Workspace, batch: int, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write the decisions of event batch ``batch`` (possibly none: the file still marks the batch decided)."""
    path = decisions_file(ws, batch)
    write_parquet_atomic(path, decision_frame(rows))
    return path


def write_user_decisions(ws: Workspace, batch: int, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write one pass of user-level decisions (users whose behaviour changed), named by the latest batch and the time."""
    path = decisions_dir(ws) / f"users-{int(batch):06d}-{time.time_ns()}.parquet"
    write_parquet_atomic(path, decision_frame(rows))
    return path


def decided_batches(ws: Workspace) -> set[int]:
    folder = decisions_dir(ws)
    if not folder.is_dir():
        return set()
    return {int(p.stem.split("-")[1]) for p in folder.glob("batch-*.parquet")}


def load_decisions(ws: Workspace, *, journal: bool = True) -> pd.DataFrame:
    """Every decision, oldest first (an empty table with the columns when there are none).

    ``journal``: also those ``shopsight watch`` made durable in its journal and has not folded into the
    Parquet files yet (a few seconds' worth; their ``batch`` is None until then).

    Raises:
        WorkspaceError: a decisions file cannot be read (naming it).
    """
    folder = decisions_dir(ws)
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []  # batch-* (orders), users-* (user passes), late-*
    frames = []
    for f in files:
        try:
            frames.append(pd.read_parquet(f))
        except Exception as exc:  # a file this module wrote atomically: unreadable means damaged by hand
            raise WorkspaceError(f"cannot read the decisions file {f}: {exc}; restore it or delete it (its batch will be decided again)") from exc
    frames = [f for f in frames if len(f)]
    if journal:
        folded = set(pd.concat(frames)["order_id"].dropna().astype(str)) if frames else set()
        users_folded = folded_user_seqs(ws)
        rows = [r["row"] for _, r in journal_records(ws) if (r["row"].get("order_id") is not None and str(r["row"]["order_id"]) not in folded)
                or (r["row"].get("order_id") is None and int(r.get("seq", 0)) not in users_folded)]
        if rows:
            frames.append(decision_frame(rows))
    if not frames:
        return decision_frame([])
    df = pd.concat(frames, ignore_index=True)
    if "event_ts" in df:  # files from before event_ts: an order's is its time (a user's stays unknown)
        df["event_ts"] = df["event_ts"].where(df["event_ts"].notna(), df["order_ts"])
    else:
        df.insert(list(COLUMNS).index("event_ts"), "event_ts", df["order_ts"])
    return df.sort_values(["decided_at", "batch"], kind="stable").reset_index(drop=True)


def journal_records(ws: Workspace) -> list[tuple[int, dict[str, Any]]]:
    """The decision records of every watch journal in the workspace, read only (a line being written is skipped)."""
    folder = ws.root / JOURNAL_DIR
    out: list[tuple[int, dict[str, Any]]] = []
    for path in sorted(folder.glob("journal-*.jsonl")) if folder.is_dir() else []:
        try:
            seg = int(path.stem.rsplit("-", 1)[1])
            data = path.read_bytes()
        except (ValueError, OSError):
            continue  # deleted meanwhile: folded
        for line in data.split(b"\n")[:-1]:
            try:
                rec = json.loads(line)
            except ValueError:
                break
            if "row" in rec:
                out.append((seg, rec))
    return out


def write_user_decisions_named(ws: Workspace, first_seq: int, last_seq: int, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write user-level decisions folded from a watch journal, named by their journal numbers (written again: replaced)."""
    path = decisions_dir(ws) / f"users-seq{int(first_seq):09d}-{int(last_seq):09d}.parquet"
    write_parquet_atomic(path, decision_frame(rows))
    return path


def folded_user_seqs(ws: Workspace) -> set[int]:
    """The journal numbers of the user-level decisions already folded into ``users-seq*`` files."""
    out: set[int] = set()
    folder = decisions_dir(ws)
    for p in folder.glob("users-seq*.parquet") if folder.is_dir() else []:
        lo, hi = p.stem[len("users-seq"):].split("-")
        out.update(range(int(lo), int(hi) + 1))
    return out


class DecisionJournal:
    """Decisions made durable the moment they are made: JSON lines appended and fsynced, in numbered segments.

    ``shopsight watch`` appends each poll's decisions with one ``write`` and one ``fsync`` (a decision
    counts once its line is on disk), seals the segment when it stores the events they were made on,
    folds the sealed segments into ``decisions/*.parquet``, and deletes them once the checkpoint says
    so. A line cut short by a kill (no newline, or not JSON) was never acknowledged: :meth:`load`
    drops it and cuts the file back to the last whole line.

    Records: ``{"seq": n, "kind": "order" | "user", "file": …, "start": …, "row": {…}}`` (a decision)
    and ``{"alerted": n}`` (every decision up to ``seq`` n was handed to the alert callback).
    """

    def __init__(self, folder: Path, key: str) -> None:
        self.folder = folder
        self.key = key
        self._fd: int | None = None
        self._segment: int | None = None
        self.seq = 0  # the last decision record's number
        self.after = 0  # new segments are numbered above this (the checkpoint's last folded segment)
        self.fsync_seconds: list[float] = []  # how long each append's fsync took (the bench reports them)

    def segments(self) -> list[tuple[int, Path]]:
        if not self.folder.is_dir():
            return []
        out = []
        for p in self.folder.glob(f"journal-{self.key}-*.jsonl"):
            try:
                out.append((int(p.stem.rsplit("-", 1)[1]), p))
            except ValueError:
                continue
        return sorted(out)

    def load(self) -> list[tuple[int, dict[str, Any]]]:
        """Every record of every segment, oldest first, as (segment, record); torn tails cut off."""
        out: list[tuple[int, dict[str, Any]]] = []
        for seg, path in self.segments():
            data = path.read_bytes()
            good = 0
            for line in data.split(b"\n")[:-1]:  # the last part is empty, or a line cut short
                try:
                    rec = json.loads(line)
                except ValueError:
                    break
                out.append((seg, rec))
                good += len(line) + 1
                if "seq" in rec:
                    self.seq = max(self.seq, int(rec["seq"]))
            if good < len(data):
                with open(path, "r+b") as fh:  # a line cut short by a kill: it never counted
                    fh.truncate(good)
                    os.fsync(fh.fileno())
        return out

    def _open(self) -> int:
        if self._fd is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            have = self.segments()
            self._segment = max(have[-1][0] if have else 0, self.after) + 1
            path = self.folder / f"journal-{self.key}-{self._segment:08d}.jsonl"
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            dfd = os.open(self.folder, os.O_RDONLY)  # the new file's name must survive a crash too
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return self._fd

    @property
    def segment(self) -> int:
        self._open()
        return int(self._segment)  # type: ignore[arg-type]

    def append(self, records: list[dict[str, Any]], *, sync: bool = True) -> None:
        """Append ``records`` (decisions get their ``seq`` here) with one write; ``sync``: fsync before returning."""
        if not records:
            return
        for r in records:
            if "row" in r:
                self.seq += 1
                r["seq"] = self.seq
        data = b"".join(json.dumps(r, default=str, separators=(",", ":")).encode() + b"\n" for r in records)
        fd = self._open()
        os.write(fd, data)
        if sync:
            t0 = time.perf_counter()
            os.fsync(fd)
            self.fsync_seconds.append(time.perf_counter() - t0)

    def seal(self) -> int:
        """Close the current segment (later appends go to a new one); returns its number (0: none open)."""
        if self._fd is None:
            return 0
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        seg, self._segment = int(self._segment or 0), None
        return seg

    def drop_through(self, segment: int) -> None:
        """Delete the sealed segments up to ``segment`` (their decisions are in the Parquet files)."""
        for seg, path in self.segments():
            if seg <= segment and seg != self._segment:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None


# --- the analysts' labels ---------------------------------------------------------------------


def record_label(ws: Workspace, *, order_id: str | None, user_id: str, label: str, analyst: str, decision: str | None = None,
                 model: str | None = None, via: str = "slack") -> Path:
    """Append one analyst label ("fraud" or "false_alarm") on a decision; returns its file.

    Raises:
        ValueError: an unknown label (naming the ones there are).
    """
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}: use one of {', '.join(LABELS)}")
    now = pd.Timestamp.now(tz="UTC")
    df = pd.DataFrame([{"order_id": order_id, "user_id": user_id, "label": label, "analyst": analyst, "decision": decision,
                        "model": model, "labelled_at": now, "via": via}], columns=list(LABEL_COLUMNS))
    for c in ("order_id", "user_id", "label", "analyst", "decision", "model", "via"):
        df[c] = df[c].astype("string")
    path = ws.root / LABELS_DIR / f"label-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(4)}.parquet"
    write_parquet_atomic(path, df)
    return path


def load_labels(ws: Workspace) -> pd.DataFrame:
    """Every analyst label, oldest first (empty with the columns when there are none)."""
    folder = ws.root / LABELS_DIR
    files = sorted(folder.glob("label-*.parquet")) if folder.is_dir() else []
    if not files:
        return pd.DataFrame({c: pd.Series(dtype="string") for c in LABEL_COLUMNS})
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return df.sort_values("labelled_at", kind="stable").reset_index(drop=True)


def analyst_user_labels(ws: Workspace) -> pd.DataFrame:
    """Per user, the analysts' latest word: ``user_id``, ``is_fraud`` (confirmed fraud True, false alarm False)."""
    labels = load_labels(ws)
    if labels.empty:
        return pd.DataFrame({"user_id": pd.Series(dtype="string"), "is_fraud": pd.Series(dtype="bool")})
    last = labels.drop_duplicates("user_id", keep="last")
    return pd.DataFrame({"user_id": last["user_id"].astype("string").to_numpy(),
                         "is_fraud": last["label"].map(LABELS).astype(bool).to_numpy()})


def with_analyst_labels(ground_truth: pd.DataFrame | None, analyst: pd.DataFrame) -> pd.DataFrame | None:
    """The fraud labels a risk training reads: ``ground_truth`` (``user_id``, ``is_fraud``, …) with the analysts'
    verdicts on top (an analyst who looked at the account outranks an older label); None when there are neither."""
    if analyst.empty:
        return ground_truth
    if ground_truth is None or "is_fraud" not in ground_truth.columns:
        return analyst.copy()
    base = ground_truth.copy()
    base["user_id"] = base["user_id"].astype(str)
    said = analyst.assign(user_id=analyst["user_id"].astype(str)).set_index("user_id")["is_fraud"]
    known = base["user_id"].isin(said.index)
    base.loc[known, "is_fraud"] = base.loc[known, "user_id"].map(said).astype(bool)
    extra = said[~said.index.isin(base["user_id"])]
    if len(extra):
        base = pd.concat([base, pd.DataFrame({"user_id": extra.index, "is_fraud": extra.to_numpy()})], ignore_index=True)
    return base
