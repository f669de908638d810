"""Append one batch of validated events to a workspace in memory bounded by the chunk size.

The rows of a batch never sit in memory together: each validated chunk is protected and
written to a staging folder inside the workspace; under the writer lock DuckDB (its memory
capped, spilling to the staging folder) finds the repeats, the rows already stored and the
stored sessions to continue, and the result is streamed back in user-ordered chunks,
sessionized, and written to the batch's Parquet file. Only the stored sessions of the
batch's own users (one row per user) are held in pandas.

Dedupe is exact: rows are compared on their values (timestamps as integer nanoseconds, with
NULL equal to NULL), not on hashes.
- a row equal in every column to an earlier row of the same file is a *duplicate*;
- a row equal in identity (user, time, event, item, session, order) to an earlier row of the
  batch, or to a stored event, is *already stored*. A row without a source session id is
  matched on the other five (its session id is made afterwards, from the stored sessions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shopsight.behavior.events import (
    CHUNK_ROWS,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    EventDataError,
    set_canonical_dtypes,
)
from shopsight.behavior.features import made_sessions, sessionize
from shopsight.behavior.workspace import atomic_path

# What makes two events the same event, whichever batch each came in.
IDENTITY: tuple[str, ...] = ("user_id", "ts", "event", "item_id", "session_id", "order_id")
# DuckDB's share of an ingest: its hash tables and sorts spill to the staging folder past this.
DUCKDB_MEMORY_LIMIT = "512MB"
# Staged rows deduplicated in one pass at most: past it, the rows go in passes by a hash of the user id (a
# repeat is always of the same user). DuckDB 1.5's hash aggregate did not spill enough for 88M rows in 1 GB.
DEDUPE_ROWS_PER_PASS = 8_000_000
# Stored events stream into DuckDB this many rows at a time (its Arrow scan holds a few batches per thread).
STORED_BATCH_ROWS = 65_536
CANONICAL_ORDER = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)


@dataclass
class StagedBatch:
    """The validated, protected rows of one batch on disk (not yet deduplicated or sessionized)."""

    folder: Path
    rows: int
    files: list[str]  # the source file (or query) each ``_file`` number stands for
    columns: list[str]  # canonical columns present in any chunk
    rows_per_file: list[int]  # staged rows of each of ``files``


def stage_chunks(folder: Path, chunks: Iterable[tuple[str, pd.DataFrame]]) -> StagedBatch:
    """Write each (source name, canonical events) chunk to ``folder`` as one Parquet part.

    Each part carries ``_file`` (which source) and ``_ord`` (the row's place in the batch, so the
    first of repeated rows is the one kept), and ``ts`` as integer nanoseconds (DuckDB's
    timestamps stop at microseconds; comparing those could merge two events).
    """
    files: list[str] = []
    per_file: list[int] = []
    columns: dict[str, None] = {}
    rows = 0
    for n, (name, events) in enumerate(chunks):
        if name not in files:
            files.append(name)
            per_file.append(0)
        if not len(events):
            continue
        per_file[files.index(name)] += len(events)
        part = events.copy()
        part["ts"] = part["ts"].astype("datetime64[ns, UTC]").astype("int64")
        part["_file"] = files.index(name)
        part["_ord"] = pd.RangeIndex(rows, rows + len(part))
        columns.update(dict.fromkeys(c for c in events.columns))
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), folder / f"part-{n:06d}.parquet")
        rows += len(part)
    return StagedBatch(folder=folder, rows=rows, files=files, columns=[c for c in CANONICAL_ORDER if c in columns],
                       rows_per_file=per_file)


@dataclass
class Deduped:
    """What :func:`write_batch` did: rows kept (written), repeated within a file, and equal to stored or earlier rows."""

    kept: int
    duplicates: int
    already_stored: int


STORE_THREADS: int | None = None  # DuckDB threads of a batch write when the caller names none (``shopsight watch``'s store: 1)


def _connect(folder: Path, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(folder / "dedupe.duckdb"))  # on disk: the batch's tables need not fit the memory cap
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
    con.execute(f"SET temp_directory = '{folder / 'spill'}'")
    con.execute("SET preserve_insertion_order = false")
    threads = threads or STORE_THREADS
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def stored_reader(files: list[Path], columns: tuple[str, ...]) -> pa.RecordBatchReader:
    """The stored events' ``columns`` as one stream of record batches, ``ts`` as integer nanoseconds.

    A column a file lacks (an optional one) reads as nulls. Streamed: DuckDB reads it once.
    """
    schema = pa.schema([(c, pa.int64() if c == "ts" else pa.large_string()) for c in columns])

    def batches() -> Iterator[pa.RecordBatch]:
        for path in files:
            pf = pq.ParquetFile(path)
            have = [c for c in columns if c in pf.schema_arrow.names]
            for batch in pf.iter_batches(batch_size=STORED_BATCH_ROWS, columns=have):
                arrays = []
                for c in columns:
                    if c not in have:
                        arrays.append(pa.nulls(batch.num_rows, schema.field(c).type))
                        continue
                    col = batch.column(c)
                    if c == "ts":
                        col = col.cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64())
                    else:
                        col = col.cast(pa.large_string())
                    arrays.append(col)
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)

    return pa.RecordBatchReader.from_batches(schema, batches())


def write_batch(
    staged: StagedBatch,
    stored_files: list[Path],
    target: Path,
    *,
    strict: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    threads: int | None = None,
) -> Deduped:
    """Drop the staged rows that repeat or are stored, sessionize the rest, write them to ``target`` (atomically).

    ``target`` is written only when rows remain. The file is sorted by user, then time (ties in
    batch order), as every reader expects.

    Raises:
        EventDataError: with ``strict``, a row repeating an earlier row of its file (in another chunk).
    """
    con = _connect(staged.folder, threads)
    try:
        present = set(staged.columns)
        cols = [c for c in CANONICAL_ORDER if c in present]
        parts = {"parts": str(staged.folder / "part-*.parquet")}
        source = "read_parquet($parts, union_by_name = true)"
        ident = ", ".join(c if c in present else "NULL" for c in IDENTITY)
        # Repeats are of one user: big batches go in passes over a hash of the user id, each pass's groups fitting the cap.
        passes = max(1, -(-staged.rows // DEDUPE_ROWS_PER_PASS))
        slices = [""] if passes == 1 else [f" WHERE coalesce(hash(user_id) % {passes}, 0) = {i}" for i in range(passes)]
        # A row repeating an earlier row of its file exactly is a duplicate: each file's rows less its distinct rows.
        distinct: dict[int, int] = {}
        for where in slices:
            for f, n in con.execute(f"SELECT _file, count(*) FROM (SELECT DISTINCT _file, {', '.join(cols)} FROM {source}{where}) "
                                    "GROUP BY _file", parts).fetchall():
                distinct[f] = distinct.get(f, 0) + int(n)
        repeats = [(f, n - int(distinct.get(f, 0))) for f, n in enumerate(staged.rows_per_file) if n - int(distinct.get(f, 0)) > 0]
        if strict and repeats:
            file, count = repeats[0]
            raise EventDataError(
                "a row repeats an earlier one", source=staged.files[file],
                hint=f"{count} such rows; without --strict duplicates are counted and dropped",
            )
        duplicates = sum(n for _, n in repeats)
        # Of each identity, the first row in batch order; a full repeat is never first (its original comes
        # before it), so the rest are the duplicates and the rows repeating an earlier row's identity.
        # (A hash aggregate and a semi-join: both spill past the memory cap, where a window over 10M rows did not.)
        for i, where in enumerate(slices):
            into = "CREATE TABLE firsts AS" if i == 0 else "INSERT INTO firsts"
            con.execute(f"CREATE TABLE keep AS SELECT min(_ord) AS _ord FROM {source}{where} GROUP BY {ident}", parts)
            con.execute(f"{into} SELECT * FROM (SELECT * FROM {source}{where}) s SEMI JOIN keep k ON s._ord = k._ord", parts)
            con.execute("DROP TABLE keep")
        for c in IDENTITY:
            if c not in present:
                con.execute(f"ALTER TABLE firsts ADD COLUMN {c} VARCHAR")
        if stored_files:
            _drop_stored(con, stored_files)
        prior = _stored_sessions(con, stored_files) if stored_files else None
        kept = _write_sessionized(con, cols, target, prior, chunk_rows)
    finally:
        con.close()
    return Deduped(kept=kept, duplicates=duplicates, already_stored=staged.rows - duplicates - kept)


# Null-safe equality of two identity columns (item and order may be missing; missing equals missing).
def _same(column: str) -> str:
    return f"f.{column} IS NOT DISTINCT FROM s.{column}"


def _drop_stored(con: duckdb.DuckDBPyConnection, stored_files: list[Path]) -> None:
    """Delete from ``firsts`` the rows equal in identity to a stored event (session ignored where the row has none)."""
    five = [c for c in IDENTITY if c != "session_id"]
    on5 = " AND ".join(_same(c) for c in five)
    con.register("stored_rows", stored_reader(stored_files, IDENTITY))
    # One pass over the stored events: the identities that match a staged row, on five columns or six.
    con.execute(
        f"CREATE TABLE matched AS SELECT DISTINCT f._ord FROM firsts f JOIN stored_rows s ON {on5} "
        f"WHERE f.session_id IS NULL OR f.session_id = s.session_id"
    )
    con.unregister("stored_rows")
    con.execute("DELETE FROM firsts WHERE _ord IN (SELECT _ord FROM matched)")
    con.execute("DROP TABLE matched")


def _stored_sessions(con: duckdb.DuckDBPyConnection, stored_files: list[Path]) -> pd.DataFrame | None:
    """Per user of the batch without source session ids, the sessions :func:`sessionize` made in stored batches:
    the highest number (``k``) and when that session ended (``last_ts``), as ``made_sessions`` gives them."""
    users = con.execute("SELECT count(*) FROM firsts WHERE session_id IS NULL").fetchone()[0]
    if not users:
        return None
    con.register("stored_rows", stored_reader(stored_files, ("user_id", "ts", "session_id")))
    result = con.execute(
        "SELECT s.user_id, s.ts, s.session_id FROM stored_rows s "
        "SEMI JOIN (SELECT DISTINCT user_id FROM firsts WHERE session_id IS NULL) u ON s.user_id = u.user_id"
    )
    partial = []
    reader = result.to_arrow_reader(CHUNK_ROWS)
    for batch in reader:
        part = batch.to_pandas()
        if len(part):
            part["ts"] = pd.to_datetime(part["ts"], utc=True)
            made = made_sessions(part)
            if len(made):  # (none when the stored sessions all came from the source)
                partial.append(made.reset_index())
    con.unregister("stored_rows")
    if not partial:
        return None
    # The same reduction made_sessions does, over its per-chunk answers: each user's highest k, and the
    # latest end among that session's rows.
    both = pd.concat(partial, ignore_index=True)
    top = both.groupby("user_id")["k"].transform("max")
    return both[both["k"] == top].groupby("user_id").agg(k=("k", "max"), last_ts=("last_ts", "max"))


def _write_sessionized(con: duckdb.DuckDBPyConnection, cols: list[str], target: Path, prior: pd.DataFrame | None,
                       chunk_rows: int) -> int:
    """Stream ``firsts`` in user, time order, sessionize chunk by chunk (cut between users), write to ``target``."""
    if not con.execute("SELECT count(*) FROM firsts").fetchone()[0]:
        return 0
    reader = con.execute(f"SELECT {', '.join(cols)} FROM firsts ORDER BY user_id, ts, _ord").to_arrow_reader(chunk_rows)
    written = 0
    with atomic_path(target) as tmp:
        writer: pq.ParquetWriter | None = None
        try:
            for chunk in _whole_users(reader):
                table = _sessionized(chunk, cols, prior)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table.cast(writer.schema))
                written += len(chunk)
        finally:
            if writer is not None:
                writer.close()
    return written


def _whole_users(reader: pa.RecordBatchReader) -> Iterator[pd.DataFrame]:
    """The reader's rows (sorted by user) as frames that never split one user's rows."""
    carry: pd.DataFrame | None = None
    for batch in reader:
        chunk = batch.to_pandas()
        if carry is not None:
            chunk = pd.concat([carry, chunk], ignore_index=True)
        other = (chunk["user_id"] != chunk["user_id"].iloc[-1]).to_numpy().nonzero()[0]
        cut = int(other[-1]) + 1 if len(other) else 0
        if cut == 0:  # one user so far: read on
            carry = chunk
            continue
        carry = chunk.iloc[cut:].reset_index(drop=True)
        yield chunk.iloc[:cut].reset_index(drop=True)
    if carry is not None and len(carry):
        yield carry


def as_stored(chunk: pd.DataFrame, after: pd.DataFrame | None) -> pd.DataFrame:
    """Rows (whole users, each user's in time order, ties in batch order) as a batch file stores them: the
    canonical dtypes, session ids made where the source gave none, continuing ``after`` (the users' stored
    rows, or one row per user standing for their stored sessions).

    The one way stored rows are made: :func:`write_batch` calls it per chunk, ``shopsight watch`` per poll
    (:func:`new_rows`) to decide from the rows exactly as they will be stored.
    """
    set_canonical_dtypes(chunk)
    if chunk["quantity"].dtype != "int64":
        chunk["quantity"] = chunk["quantity"].astype("int64")
    return sessionize(chunk, after=after)


def _identity_tuples(events: pd.DataFrame) -> tuple[list[tuple], list[tuple]]:
    """Each row's identity as tuples, on all of :data:`IDENTITY` and on :data:`_FIVE` (``ts`` as integer
    nanoseconds, a missing value as None): the equality :func:`write_batch` tests in SQL (``IS NOT
    DISTINCT FROM``), in Python. Each column is read once for both."""
    arrays: dict[str, list] = {}
    for c in IDENTITY:
        if c not in events.columns:
            arrays[c] = [None] * len(events)
        elif c == "ts":
            arrays[c] = pd.to_datetime(events["ts"], utc=True).astype("datetime64[ns, UTC]").astype("int64").tolist()
        else:
            arrays[c] = events[c].to_numpy(dtype=object, na_value=None).tolist()
    return list(zip(*(arrays[c] for c in IDENTITY))), list(zip(*(arrays[c] for c in _FIVE)))


_FIVE = tuple(c for c in IDENTITY if c != "session_id")


class KnownIdentities:
    """The identities of every event stored or about to be (``shopsight watch``'s landed rows), as :func:`write_batch`
    matches them: on all of :data:`IDENTITY`, and on the five without the session for a row that has none."""

    def __init__(self, events: pd.DataFrame | None = None) -> None:
        self.six: set[tuple] = set()
        self.five: set[tuple] = set()
        if events is not None:
            self.add(events)

    def add(self, events: pd.DataFrame) -> None:
        if len(events):
            six, five = _identity_tuples(events)
            self.six.update(six)
            self.five.update(five)


def new_rows(events: pd.DataFrame, known: KnownIdentities,
             history: Callable[[list[str]], pd.DataFrame | None]) -> tuple[pd.DataFrame, int]:
    """``events`` (validated, protected) as :func:`write_batch` will store them after the events ``known`` holds:
    the first of each identity, those equal in identity to a known event left out, the rest :func:`as_stored`
    after ``history(users)`` (those users' known rows); and how many were left out.

    What ``shopsight watch`` decides from, poll by poll, before the batch is written: the same rows the
    ingest writes when the landed rows are in time order per user (a row landing before a later-landed
    earlier row of its user could be sessionized differently; the replayed stream is in time order).
    """
    if not len(events):
        return events, 0
    six, five = _identity_tuples(events)
    given = events["session_id"].notna().to_numpy() if "session_id" in events.columns else np.zeros(len(events), bool)
    seen: set[tuple] = set()
    keep = np.zeros(len(events), dtype=bool)
    for i, (k6, k5, g) in enumerate(zip(six, five, given)):
        if k6 in seen:
            continue  # a repeat of an earlier row of the batch
        seen.add(k6)
        keep[i] = not (k6 in known.six if g else k5 in known.five)
    rows = events[keep].reset_index(drop=True)
    if not len(rows):
        return rows, len(events)
    order = np.lexsort((np.arange(len(rows)), rows["ts"].to_numpy(), rows["user_id"].astype(str).to_numpy()))
    rows = rows.iloc[order].reset_index(drop=True)
    after = history(list(dict.fromkeys(rows["user_id"].astype(str)))) if rows["session_id"].isna().any() else None
    return as_stored(rows, None if after is None else after[["user_id", "ts", "session_id"]]), int(len(events) - keep.sum())


def _sessionized(chunk: pd.DataFrame, cols: list[str], prior: pd.DataFrame | None) -> pa.Table:
    """One chunk (whole users, sorted) as stored (:func:`as_stored`), continuing the users' stored sessions."""
    after = None
    if prior is not None:
        mine = prior[prior.index.isin(chunk["user_id"].unique())]
        if len(mine):
            # One stored row per user stands for their stored sessions: made_sessions reads it back as (k, last_ts).
            users = mine.index.astype(str).to_numpy()
            after = pd.DataFrame({"user_id": users, "ts": mine["last_ts"].to_numpy(),
                                  "session_id": users + "-s" + mine["k"].astype(str).to_numpy()})
    out = as_stored(chunk, after)[cols]
    return pa.Table.from_pandas(out, preserve_index=False)


def summarize_files(files: list[Path]) -> dict[str, Any] | None:
    """``behavior.features.summarize_events`` of the union of ``files``, computed by DuckDB without loading them."""
    if not files:
        return None
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
        src = "read_parquet($files, union_by_name = true)"
        args = {"files": [str(f) for f in files]}
        row = con.execute(
            f"SELECT count(*), count(DISTINCT user_id), count(DISTINCT session_id), count(DISTINCT item_id), "
            f"count(DISTINCT category), sum(CASE WHEN event = 'purchase' THEN coalesce(price, 0) * quantity ELSE 0 END) "
            f"FROM {src}", args,
        ).fetchone()
        counts = con.execute(f"SELECT event, count(*) AS n FROM {src} GROUP BY event ORDER BY n DESC, event", args).fetchall()
    finally:
        con.close()
    if not row[0]:
        return None
    first = last = None
    for path in files:  # exact to the nanosecond, from each file's own column (DuckDB's stop at microseconds)
        for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS, columns=["ts"]):
            ns = batch.column(0).cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64())
            bounds = pc.min_max(ns)
            lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
            if lo is not None:
                first = lo if first is None or lo < first else first
                last = hi if last is None or hi > last else last
    return {
        "events": int(row[0]),
        "users": int(row[1]),
        "sessions": int(row[2]),
        "items": int(row[3]),
        "categories": int(row[4]),
        "first_event": pd.Timestamp(first, tz="UTC").isoformat(),
        "last_event": pd.Timestamp(last, tz="UTC").isoformat(),
        "event_counts": {str(k): int(v) for k, v in counts},
        "revenue": round(float(row[5] or 0.0), 2),
    }


