"""The risk audit trail: the ``decisions`` table (one row per decided order, or per user whose behaviour
changed) and the analysts' labels on them, both append-only Parquet in the workspace, written atomically.

Layout::

    workspace/
      decisions/batch-<id>.parquet     the decisions made on event batch <id> (one file per batch,
                                       written once: its presence says the batch was decided)
      decisions/users-<id>-<ns>.parquet  a pass over the users whose behaviour changed (no new order)
      analyst_labels/label-*.parquet   one file per analyst click ("confirm fraud" / "false alarm")

Columns of a decision: ``order_id`` (None for a user-level decision), ``user_id``, ``decision``
(allow / review / block), ``score`` (P(fraud)), ``reasons`` (JSON list of sentences), ``rules``
(JSON list of the fired rules with their evidence), ``forced_by`` (the hard rule, or None),
``threshold``, ``expected_precision``, ``model`` (``risk@v3``), ``order_ts``, ``landed_at`` (when
its batch was read from the stream), ``decided_at``, ``source`` (the stream), ``batch``.

The analysts' labels sit apart from ``labels/`` (the demo's ground truth, which an ingest of new
events removes): they are about these events and stay. ``analyst_user_labels`` folds them into
the per-user ``is_fraud`` the next risk training reads.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from shopsight.behavior.workspace import Workspace, WorkspaceError, write_parquet_atomic

DECISIONS_DIR = "decisions"
LABELS_DIR = "analyst_labels"
LABELS = {"fraud": True, "false_alarm": False}  # what an analyst's click says about the account
COLUMNS = ("order_id", "user_id", "decision", "score", "reasons", "rules", "forced_by", "threshold", "expected_precision",
           "model", "order_ts", "landed_at", "decided_at", "source", "batch")
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
    for c in ("order_ts", "landed_at", "decided_at"):
        df[c] = pd.to_datetime(df[c], utc=True)
    df["batch"] = pd.to_numeric(df["batch"]).astype("int64")
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


def load_decisions(ws: Workspace) -> pd.DataFrame:
    """Every decision, oldest first (an empty table with the columns when there are none).

    Raises:
        WorkspaceError: a decisions file cannot be read (naming it).
    """
    folder = decisions_dir(ws)
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []  # batch-* (orders) and users-* (user passes)
    frames = []
    for f in files:
        try:
            frames.append(pd.read_parquet(f))
        except Exception as exc:  # a file this module wrote atomically: unreadable means damaged by hand
            raise WorkspaceError(f"cannot read the decisions file {f}: {exc}; restore it or delete it (its batch will be decided again)") from exc
    frames = [f for f in frames if len(f)]
    if not frames:
        return decision_frame([])
    df = pd.concat(frames, ignore_index=True)
    return df.sort_values(["decided_at", "batch"], kind="stable").reset_index(drop=True)


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
