"""Every user's features and scores for the intent, churn and risk models (`shopsight score`), written
as one Parquet table per model@version under ``workspace/scores/`` for top_users, the query tool and the agent.

One function scores a group of users, :func:`score_group`: the local engine runs it over chunks of
the users of the one event table it holds, or over groups of users that DuckDB partitioned on disk
for a table bigger than the memory (:func:`score_local`); Spark runs it in executors per group of
users (``behavior/spark.py``). A run is written in a hidden staging folder, renamed into
``scores/run-<id>/`` and then published by replacing ``scores/current.json`` (one atomic rename),
so a reader finds the previous complete run or the new complete run, never a partial table.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from shopsight.behavior.events import MUST_PROVIDE, OPTIONAL_COLUMNS, REQUIRED_COLUMNS, STRING_COLUMNS
from shopsight.behavior.workspace import Workspace, WorkspaceError, write_json_atomic, writing_in

SCORES_DIR = "scores"
CURRENT = "current.json"
SCORE_PART = "scores"  # <run>/<model>@<version>/scores/part-*.parquet
FEATURE_PART = "features"  # <run>/<model>@<version>/features/part-*.parquet
CANONICAL_COLUMNS: tuple[str, ...] = tuple(REQUIRED_COLUMNS) + tuple(OPTIONAL_COLUMNS)
# A deterministic order of a group's rows, whatever order an engine hands them in: events with
# the same user and time (the lines of one order) are then tokenized in the same order everywhere.
ROW_ORDER: tuple[str, ...] = ("user_id", "ts", "session_id", "event", "item_id", "category", "price", "quantity",
                              "order_id", "device", "country", "payment", "ip", "text")
SEP = "."  # wide-table column names: "<model>.s.<score column>", "<model>.f.<feature column>"


class ScoringError(WorkspaceError):
    """Scoring cannot run or did not finish: bad events path, unreadable or mismatched shard, failed
    job. The message names the file or the step and the fix; nothing was published."""


# --- the models ---------------------------------------------------------------------------


@dataclass
class ScoringModels:
    """The loaded latest version of each model to score with."""

    models: dict[str, Any]

    @classmethod
    def load(cls, ws: Workspace, names: Sequence[str] | None = None) -> "ScoringModels":
        """The latest version of each of ``names`` (default: intent, churn, risk); ``ModelError`` naming the one not trained."""
        from shopsight.behavior.models import MODEL_NAMES, load_model

        return cls({n: load_model(ws, n) for n in (names or MODEL_NAMES)})

    @property
    def refs(self) -> dict[str, str]:
        """``{"churn": "churn@v3", ...}``: what each table is cited as."""
        return {n: m.label for n, m in self.models.items()}

    @property
    def risk_thresholds(self) -> Any:
        from shopsight.behavior.models.rules import RuleThresholds

        risk = self.models.get("risk")
        return risk.thresholds if risk is not None else RuleThresholds()


# --- one group of users -------------------------------------------------------------------


def canonical_group(events: pd.DataFrame, order: Sequence[str] = ROW_ORDER) -> pd.DataFrame:
    """A group's events in the canonical dtypes and sorted by ``order``, sessionized where ids are missing.

    Engines hand rows over differently (Spark: strings of another storage, times as nanoseconds,
    rows in shuffle order); after this every engine's frame of the same events is the same frame.
    ``order`` may name columns beyond the canonical ones (Spark's file and row position, which
    put rows in the order ``Workspace.load_events`` gives); they are dropped after sorting.
    """
    from shopsight.behavior.features import sessionize

    keys = [c for c in order if c in events.columns]
    df = events[list(dict.fromkeys([*[c for c in CANONICAL_COLUMNS if c in events.columns], *keys]))].copy()
    for col in STRING_COLUMNS:
        if col in df.columns:
            df[col] = df[col].astype("string")
    for col in ("item_id", "category", "session_id"):
        if col not in df.columns:
            df[col] = pd.Series(pd.NA, index=df.index, dtype="string")
    ts = df["ts"]
    if pd.api.types.is_integer_dtype(ts):  # nanoseconds since the epoch (Spark reads Parquet nanos as long)
        df["ts"] = pd.to_datetime(ts.to_numpy(dtype="int64"), unit="ns", utc=True)
    else:
        df["ts"] = pd.to_datetime(ts, utc=True)
    df["ts"] = df["ts"].astype("datetime64[ns, UTC]")
    df["price"] = pd.to_numeric(df["price"], errors="coerce").astype("float64") if "price" in df.columns else np.nan
    df["quantity"] = (pd.to_numeric(df["quantity"], errors="coerce").fillna(1).round().astype("int64")
                      if "quantity" in df.columns else np.int64(1))
    df = df.sort_values(keys, kind="stable", na_position="last").reset_index(drop=True)
    df = df.drop(columns=[c for c in keys if c not in CANONICAL_COLUMNS])
    if df["session_id"].isna().any():
        df = sessionize(df)
    return df


def score_group(
    models: ScoringModels,
    events: pd.DataFrame,
    asof: pd.Timestamp,
    linked_for: Callable[[pd.DataFrame], Any],
) -> pd.DataFrame:
    """Every model's scores and features for the users of ``events`` (all of their events): one wide frame.

    The one per-group function both engines run. ``asof`` is the whole table's (``end_of_events``
    of every event), not this group's; ``linked_for(group_events)`` gives the ``linked_accounts``
    verdicts of the group's users (the one rule that reads other accounts: the local engine reads
    them from the table it holds, Spark from a join). Columns: ``user_id``, then per model
    ``<model>.s.<score column>`` and ``<model>.f.<feature>``; one row per user, sorted by id.
    """
    from shopsight.behavior.models.evaluation import score_table
    from shopsight.behavior.models.rules import evaluate_rules_for_users

    events = canonical_group(events)
    users = pd.Index(sorted(events["user_id"].dropna().unique()), name="user_id")
    out = pd.DataFrame({"user_id": users.astype(str)})
    for name, model in models.models.items():
        rules = None
        if name == "risk":
            rules = evaluate_rules_for_users(events, list(users), model.thresholds,
                                             rows=np.ones(len(events), dtype=bool), linked=linked_for(events))
        scores, feats = score_table(model, events, asof=asof, rules=rules)
        scores = scores.set_index(scores["user_id"].astype(str)).reindex(out["user_id"])
        feats = feats.set_axis(feats.index.astype(str)).reindex(out["user_id"])
        cols = {f"{name}{SEP}s{SEP}{c}": scores[c].to_numpy() for c in scores.columns if c != "user_id"}
        cols.update({f"{name}{SEP}f{SEP}{c}": feats[c].to_numpy(dtype="float64", na_value=np.nan) for c in feats.columns})
        out = pd.concat([out, pd.DataFrame(cols, index=out.index)], axis=1)
    return normalize_wide(out)


def normalize_wide(df: pd.DataFrame) -> pd.DataFrame:
    """One dtype per column whatever the group held: features float64, flags bool, text string, times UTC."""
    for col in df.columns:
        s = df[col]
        if col == "user_id" or pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s):
            df[col] = s.astype("string")
        elif pd.api.types.is_bool_dtype(s):
            df[col] = s.astype(bool)
        elif isinstance(s.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(s):
            df[col] = pd.to_datetime(s, utc=True).astype("datetime64[us, UTC]")
        else:
            df[col] = s.astype("float64")
    return df


def split_wide(wide: pd.DataFrame, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores, features) of model ``name`` from a wide frame; both with a ``user_id`` column."""
    return _part_of(wide, name, "s"), _part_of(wide, name, "f")


def _part_of(wide: pd.DataFrame, name: str, kind: str) -> pd.DataFrame:
    prefix = f"{name}{SEP}{kind}{SEP}"
    cols = [c for c in wide.columns if c.startswith(prefix)]
    return wide[["user_id", *cols]].rename(columns={c: c[len(prefix):] for c in cols})


def end_of(ts_max: pd.Timestamp) -> pd.Timestamp:
    """``end_of_events`` of a table whose last event is at ``ts_max`` (an engine finds the max itself)."""
    from shopsight.behavior.models.churn import end_of_events

    return end_of_events(pd.DataFrame({"ts": pd.Series([pd.Timestamp(ts_max)], dtype="datetime64[ns, UTC]")}))


# --- the events to score ------------------------------------------------------------------


def event_files(ws: Workspace, events: str | Path | None = None) -> list[Path]:
    """The Parquet files to score: the workspace's visible batches, or those of ``events`` (a
    Parquet file, a folder of them, or a glob), sorted.

    Raises:
        ScoringError: the path does not exist or holds no Parquet file.
    """
    if events is None:
        return [Path(p) for p in ws.require_events()]
    text = str(events)
    if any(ch in text for ch in "*?["):
        found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not found:
            raise ScoringError(f"--events {text}: the pattern matches no file; give a Parquet file, a folder of them, or a glob such as 'shards/*.parquet'")
        return found
    path = Path(text)
    if not path.exists():
        raise ScoringError(f"--events {text}: no such file or folder; give a Parquet file, a folder of them, or a glob such as 'shards/*.parquet'")
    if path.is_file():
        return [path]
    found = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "_")) and not p.name.endswith(".crc"))
    if not found:
        raise ScoringError(f"--events {text}: the folder holds no file; put the events' Parquet shards in it")
    return found


def check_shards(files: Sequence[Path]) -> pa.Schema:
    """Read every shard's schema; the canonical columns they share, as one schema.

    Raises:
        ScoringError: a shard cannot be read as Parquet (naming it); a shard lacks a column the
            scores need; two shards disagree on a column's type (naming both files and the types).
    """
    first: dict[str, tuple[pa.DataType, Path]] = {}
    present: list[set[str]] = []
    for path in files:
        try:
            schema = pq.read_schema(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, … for a file that is not Parquet
            raise ScoringError(f"cannot read the events shard {path}: {exc}; replace or remove it and run again (nothing was scored)") from exc
        names = set(schema.names)
        missing = [c for c in MUST_PROVIDE if c not in names]
        if missing:
            raise ScoringError(f"the events shard {path} lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                               f"(found: {', '.join(schema.names) or 'none'}); every shard needs {', '.join(MUST_PROVIDE)}")
        present.append(names)
        for col in CANONICAL_COLUMNS:
            if col not in names:
                continue
            t = _comparable(schema.field(col).type)
            if col not in first:
                first[col] = (t, path)
            elif first[col][0] != t:
                raise ScoringError(f"the events shards disagree on column '{col}': {first[col][1]} has {first[col][0]}, "
                                   f"{path} has {t}; rewrite one so that every shard has the same schema (nothing was scored)")
    return pa.schema([pa.field(c, first[c][0]) for c in CANONICAL_COLUMNS if c in first])


def _comparable(t: pa.DataType) -> pa.DataType:
    """A column's type for comparing shards: string and large_string (and dictionary-encoded text) are one type."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    return t


def read_events(files: Sequence[Path], schema: pa.Schema) -> pd.DataFrame:
    """The shards as one frame in the canonical dtypes, holding one copy of the table.

    Converted shard by shard into the frame (an Arrow table of every shard converted at once
    would be a second copy while it lasts).
    """
    from shopsight.behavior.events import single_chunk_strings

    frames = []
    for path in files:
        try:
            table = pq.read_table(path, columns=[c for c in schema.names if c in pq.read_schema(path).names])
        except Exception as exc:
            raise ScoringError(f"cannot read the events shard {path}: {exc}; replace or remove it and run again (nothing was scored)") from exc
        frames.append(table.to_pandas(self_destruct=True, split_blocks=True))
        del table
    # one chunk per string column, as Workspace.load_events gives: the rules take many small subsets
    # of rows, and a take on a many-chunk pyarrow column costs time in the whole column's length
    if len(frames) == 1:
        return single_chunk_strings(frames[0])
    return single_chunk_strings(pd.concat(frames, ignore_index=True))


# --- a run: staging, parts, publishing ----------------------------------------------------


def scores_dir(ws: Workspace) -> Path:
    return ws.root / SCORES_DIR


@dataclass
class ScoreRun:
    """A run being written: ``staging/<model>@<version>/{scores,features}/part-*.parquet``; :meth:`publish` makes it current."""

    ws: Workspace
    refs: dict[str, str]
    engine: str
    staging: Path
    run_id: str
    parts: int = 0
    rows: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, ws: Workspace, refs: Mapping[str, str], engine: str) -> "ScoreRun":
        root = scores_dir(ws)
        with writing_in(root):
            root.mkdir(parents=True, exist_ok=True)
            run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
            staging = Path(tempfile.mkdtemp(prefix=f".run-{run_id}-staging-", dir=root))
        return cls(ws, dict(refs), engine, staging, run_id)

    def table_dir(self, name: str, kind: str) -> Path:
        return self.staging / self.refs[name] / kind

    def write_wide(self, wide: pd.DataFrame) -> None:
        """Append one group's wide frame (:func:`score_group`) as a part file of every model's tables."""
        n = self.parts
        for name in self.refs:
            for kind, table in zip((SCORE_PART, FEATURE_PART), split_wide(wide, name)):
                folder = self.table_dir(name, kind)
                folder.mkdir(parents=True, exist_ok=True)
                table.to_parquet(folder / f"part-{n:05d}.parquet", index=False)
        self.parts += 1
        self.rows += len(wide)

    def publish(self, *, users: int, asof: pd.Timestamp, source: str) -> dict[str, Any]:
        """Check the run is whole, rename it into place and point ``current.json`` at it; return the manifest.

        Raises:
            ScoringError: a model's table holds another number of users than ``users`` (nothing is published).
        """
        counts = {}
        for name, ref in self.refs.items():
            for kind in (SCORE_PART, FEATURE_PART):
                folder = self.table_dir(name, kind)
                files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
                counts[f"{ref}/{kind}"] = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        short = {k: v for k, v in counts.items() if v != users}
        if short:
            self.abandon()
            raise ScoringError(f"the score run is incomplete ({', '.join(f'{k}: {v:,} rows' for k, v in short.items())} "
                               f"of {users:,} users); nothing was published — run `shopsight score` again")
        manifest = {
            "run": f"run-{self.run_id}",
            "engine": self.engine,
            "tables": self.refs,
            "users": int(users),
            "asof": pd.Timestamp(asof).isoformat(),
            "events": source,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **self.extra,
        }
        (self.staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        root = scores_dir(self.ws)
        final = root / manifest["run"]
        os.rename(self.staging, final)  # a new name: atomic, and no reader knows it yet
        write_json_atomic(root / CURRENT, manifest)  # the one switch readers follow
        _remove_old_runs(root, keep={final.name, *_previous(root, final.name)})
        return manifest

    def abandon(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def _previous(root: Path, current: str) -> list[str]:
    """The newest run before ``current``: kept one publish longer, for a reader that resolved it just before."""
    runs = sorted(p.name for p in root.glob("run-*") if p.is_dir() and p.name != current)
    return runs[-1:]


def _remove_old_runs(root: Path, keep: set[str]) -> None:
    for p in root.iterdir():
        if p.is_dir() and p.name not in keep and (p.name.startswith("run-") or (p.name.startswith(".run-") and _stale(p))):
            shutil.rmtree(p, ignore_errors=True)


def _stale(p: Path, hours: float = 24.0) -> bool:
    """A staging folder left by a crashed run (older than ``hours``; a newer one may be another run's)."""
    return time.time() - p.stat().st_mtime > hours * 3600


def current_run(ws: Workspace) -> dict[str, Any] | None:
    """The published run's manifest, or None when nothing was scored with `shopsight score`."""
    path = scores_dir(ws) / CURRENT
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ScoringError(f"{path} is corrupted ({exc}); run `shopsight score` again") from exc
    return manifest if isinstance(manifest, dict) else None


def published_table(ws: Workspace, name: str, version: str, kind: str = SCORE_PART) -> Path | None:
    """The folder of the published ``name@version`` table (``scores`` or ``features``), or None."""
    manifest = current_run(ws)
    ref = f"{name}@{version}"
    if not manifest or (manifest.get("tables") or {}).get(name) != ref:
        return None
    folder = scores_dir(ws) / str(manifest["run"]) / ref / kind
    return folder if folder.is_dir() else None


def read_table(folder: Path) -> pd.DataFrame:
    """A published table (a folder of part files) as one frame."""
    files = sorted(folder.glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


# --- the local engine ---------------------------------------------------------------------


# Above this much Parquet (on disk) the local engine streams groups of users from disk instead of
# holding the table: the table in memory is ~9x its compressed size (1M demo users: ~1.6 GB on disk, ~14 GB held).
STREAM_ABOVE_BYTES = 512 * 2**20
STREAM_DUCKDB_MEMORY = "1GB"  # DuckDB's share while it partitions the events by user (it spills past this)


def score_local(
    ws: Workspace,
    events: str | Path | None = None,
    *,
    chunk_users: int = 20_000,
    progress: Callable[[int, int], None] | None = None,
    memory: str = "auto",
) -> dict[str, Any]:
    """Score every user in one process, a group of users at a time.

    Two ways to get the groups, the same scores (tested to 1e-6):

    * ``memory="table"``: the event table is held once and each group is a slice of it;
    * ``memory="stream"``: DuckDB writes the events to disk partitioned by a hash of the user id,
      finds who holds each specific device and IP (the one rule that reads other accounts, as the
      Spark engine does), and each group is read back alone: memory is one group, not the table.

    Args:
        ws: the workspace whose latest intent, churn and risk models score, and where the tables go.
        events: a Parquet file, folder or glob (default: the workspace's events).
        chunk_users: users per call of :func:`score_group` (bounds the working memory).
        progress: called as ``progress(users_done, users_total)``.
        memory: ``table``, ``stream``, or ``auto`` (stream when the Parquet files pass
            :data:`STREAM_ABOVE_BYTES`).

    Returns:
        The published run's manifest (``current.json``).
    """
    if memory not in ("auto", "table", "stream"):
        raise ScoringError(f"unknown memory mode '{memory}': choose auto, table or stream")
    models = ScoringModels.load(ws)
    files = event_files(ws, events)
    if memory == "auto":
        memory = "stream" if sum(f.stat().st_size for f in files) > STREAM_ABOVE_BYTES else "table"
    if memory == "stream":
        return _score_streamed(ws, models, files, events, chunk_users, progress)
    from shopsight.behavior.models.rules import _linked_accounts_for

    if events is None:
        table = ws.load_events()
    else:
        table = read_events(files, check_shards(files))
    if table.empty:
        raise ScoringError(f"no events to score in {events or ws.root}")
    asof = end_of(table["ts"].max())
    codes, users = pd.factorize(table["user_id"], sort=True)
    if (codes < 0).any():
        raise ScoringError(_no_user_message(int((codes < 0).sum()), events or ws.root))
    order = np.argsort(codes, kind="stable")  # rows by user, each user's rows in table order
    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(users)))])
    thresholds = models.risk_thresholds
    run = ScoreRun.start(ws, models.refs, "local")
    try:
        for first in range(0, len(users), chunk_users):
            last = min(first + chunk_users, len(users))
            mine = table.iloc[np.sort(order[bounds[first]:bounds[last]])]
            wide = score_group(models, mine, asof, lambda group: _linked_accounts_for(table, group, thresholds))
            run.write_wide(wide)
            if progress:
                progress(last, len(users))
        return run.publish(users=len(users), asof=asof, source=_source(ws, events, files))
    except BaseException:
        run.abandon()
        raise


def _no_user_message(n: int, where: object) -> str:
    return f"{n:,} events have no user_id in {where}: ingest them through `shopsight ingest`, which rejects them"


def _score_streamed(
    ws: Workspace,
    models: ScoringModels,
    files: list[Path],
    events: str | Path | None,
    chunk_users: int,
    progress: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    """:func:`score_local` without holding the table: groups of users partitioned on disk by DuckDB."""
    import duckdb

    from shopsight.behavior.models.rules import LINK_COLUMNS, common_cap, linked_accounts_shared

    schema = check_shards(files)
    cols = [c for c in CANONICAL_COLUMNS if c in schema.names]
    run = ScoreRun.start(ws, models.refs, "local")
    work = run.staging / "_events"
    try:
        work.mkdir()
        con = duckdb.connect(str(work / "groups.duckdb"))
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.execute(f"SET memory_limit = '{STREAM_DUCKDB_MEMORY}'")
            con.execute(f"SET temp_directory = '{work / 'spill'}'")
            con.execute("SET preserve_insertion_order = false")
            listed = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
            try:
                # ts as integer nanoseconds, as the Spark engine hands it over (canonical_group reads both)
                select = ", ".join("epoch_ns(ts) AS ts" if c == "ts" else _q(c) for c in cols)
                con.execute(f"CREATE VIEW ev AS SELECT {select} FROM read_parquet([{listed}], union_by_name = true)")
                n_rows, n_users, no_user, ts_max = con.execute(
                    "SELECT count(*), count(DISTINCT user_id), count(*) - count(user_id), max(ts) FROM ev").fetchone()
            except duckdb.Error as exc:
                raise ScoringError(f"cannot read the events ({exc}); nothing was scored") from exc
            if not n_users:
                raise ScoringError(f"no events to score in {events or ws.root}")
            if no_user:
                raise ScoringError(_no_user_message(int(no_user), events or ws.root))
            asof = end_of(pd.Timestamp(int(ts_max), unit="ns", tz="UTC"))
            thresholds = models.risk_thresholds
            n_groups = max(1, -(-int(n_users) // max(chunk_users, 1)))
            bucket = f"(hash(user_id) % {n_groups})"
            # Who holds each specific identifier (2..cap users), per group of its holders: Spark's join, in DuckDB.
            links = [c for c in LINK_COLUMNS if c in cols]
            cap = common_cap(thresholds, int(n_users))
            if links:
                ids = " UNION ".join(f"SELECT DISTINCT user_id, '{c}' AS col, CAST({_q(c)} AS VARCHAR) AS value FROM ev WHERE {_q(c)} IS NOT NULL"
                                     for c in links)
                con.execute(f"CREATE TABLE ids AS {ids}")
                con.execute("CREATE TABLE specific AS SELECT col, value, list_sort(list(user_id)) AS holders FROM ids "
                            f"GROUP BY col, value HAVING count(*) > 1 AND count(*) <= {int(cap)}")
                con.execute(f"CREATE TABLE shared AS SELECT DISTINCT {bucket} AS g, col, value FROM ids JOIN specific USING (col, value)")
            con.execute(f"COPY (SELECT *, {bucket} AS g FROM ev) TO '{work / 'groups'}' (FORMAT parquet, PARTITION_BY (g))")
            done = 0
            for g in range(n_groups):
                folder = work / "groups" / f"g={g}"
                parts = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
                if not parts:
                    continue
                group = pd.concat([pq.read_table(f).to_pandas() for f in parts], ignore_index=True)
                group = group.drop(columns=[c for c in ("g",) if c in group.columns])
                holders: dict[tuple[str, object], list[str]] = {}
                if links:
                    for col, value, held in con.execute(
                            "SELECT s.col, s.value, p.holders FROM shared s JOIN specific p USING (col, value) WHERE s.g = ?", [g]).fetchall():
                        holders[(str(col), str(value))] = list(held)
                wide = score_group(models, group, asof, lambda rows: linked_accounts_shared(rows, holders, thresholds))
                run.write_wide(wide)
                done += len(wide)
                shutil.rmtree(folder)  # the disk holds each event once at a time
                if progress:
                    progress(done, int(n_users))
        finally:
            con.close()
        shutil.rmtree(work)
        return run.publish(users=int(n_users), asof=asof, source=_source(ws, events, files))
    except BaseException:
        run.abandon()
        raise


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _source(ws: Workspace, events: str | Path | None, files: Iterable[Path]) -> str:
    return f"workspace {ws.root}" if events is None else f"{events} ({len(list(files))} files)"
