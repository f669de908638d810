"""Ingest files into a workspace as append-only batches: check their size, read them with an
adapter, protect personal data, drop what is already stored, sessionize, publish atomically, report.

Each ingest is one batch: one Parquet file ``events/batch-<id>.parquet`` and one entry in the
manifest (source, accepted / rejected / duplicate rows, time). The batch file is written and
renamed into place first; the manifest, replaced atomically after it, is what makes the batch
visible, so a killed ingest leaves the workspace as it was (its file is removed by the next
writer). Events are identified by user, time, event, item, session and order: a row equal in
those to a stored event is counted as already stored, never stored twice.

Nothing personal is stored raw: before events reach a batch file their free-text
columns are masked and bounded and identifiers holding an e-mail or phone number are
replaced by keyed pseudonyms (``behavior.privacy.protect_events``); rejected rows are
masked too. The pseudonym key is made once per workspace (``privacy.key``), so the same
address maps to the same pseudonym in every later ingest into that workspace; delete the
key and later ingests can no longer be joined to earlier ones.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from shopsight.behavior.adapters import canonical_reader, get_adapter
from shopsight.behavior.events import (
    EventDataError,
    IngestLimits,
    IngestReport,
    check_ingest_limits,
    table_files,
)
from shopsight.behavior.features import sessionize, summarize_events
from shopsight.behavior.privacy import mask_table, protect_events
from shopsight.behavior.workspace import (
    LOCK_TIMEOUT_S,
    Workspace,
    WorkspaceError,
    atomic_path,
    remove_unlisted_batch_files,
    write_parquet_atomic,
)

KEY_FILE = "privacy.key"
REJECTED_MASKED_NOTE = "rejected rows: personal data masked (cells)"
# What makes two events the same event, whichever batch each came in.
IDENTITY: tuple[str, ...] = ("user_id", "ts", "event", "item_id", "session_id", "order_id")
# A stand-in for a missing value in identity hashes (NUL bytes are refused inside fields).
_ABSENT = "\x00"


class PrivacyKeyError(RuntimeError):
    """The workspace's pseudonym key exists but cannot be used; the message says which file."""


def workspace_key(workspace: Workspace) -> bytes:
    """The workspace's secret pseudonym key, created on first use.

    32 random bytes, stored hex-encoded in ``<workspace>/privacy.key`` with owner-only
    permissions. Created with a hard link from a private temp file, so two ingests racing
    to create it both end with the one key that won.

    Raises:
        PrivacyKeyError: if the key file exists but is not a key.
    """
    path = workspace.root / KEY_FILE
    if not path.exists():
        workspace.root.mkdir(parents=True, exist_ok=True)
        # Not "*.tmp": the writer lock's cleanup of killed writers' temp files must not take this one,
        # which an ingest makes before it waits for the lock.
        tmp = workspace.root / f".{KEY_FILE}.{secrets.token_hex(6)}.new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another ingest made it first: use theirs
        finally:
            tmp.unlink(missing_ok=True)
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise PrivacyKeyError(
            f"{path} is not a pseudonym key (expected 64 hex digits); restore it from a backup, "
            "or delete it to start new pseudonyms (earlier ones will no longer match)"
        )
    return key


def source_files(path: str | Path) -> list[Path]:
    """The files ``path`` names: itself, the CSV/Parquet files in a folder, or a glob's matches (sorted).

    Raises:
        EventDataError: nothing there, or a folder or glob without CSV/Parquet files.
    """
    text = str(path)
    p = Path(text).expanduser()
    if not p.exists() and glob.has_magic(text):
        matches = [Path(m) for m in sorted(glob.glob(os.path.expanduser(text)))]
        files = [m for m in matches if m.is_file() and table_files([m])]
        if not files:
            raise EventDataError(
                "the pattern matches no CSV or Parquet file" + (f" ({len(matches)} other paths)" if matches else ""),
                source=text, hint="quote the pattern so the shell does not expand it, e.g. 'exports/*.csv'",
            )
        return files
    if p.is_dir():
        files = table_files(sorted(p.iterdir()))
        if not files:
            raise EventDataError(
                "the folder holds no CSV, TSV or Parquet file", source=text,
                hint="give a file, a folder of such files, or a glob like 'exports/*.csv'",
            )
        return files
    return [p]


def identity_hashes(events: pd.DataFrame, *, with_session: bool | np.ndarray = True) -> np.ndarray:
    """One 64-bit hash per event of its identity (user, time, event, item, session, order).

    Args:
        with_session: False (or False per row): leave the session out, for rows whose source
            gave none (their session id is made later, so it cannot identify them yet).
    """
    n = len(events)
    parts: dict[str, Any] = {}
    for col in IDENTITY:
        if col == "ts":
            parts[col] = pd.to_datetime(events["ts"], utc=True).astype("datetime64[ns, UTC]").astype("int64").to_numpy()
        elif col in events.columns:
            parts[col] = events[col].astype("string").fillna(_ABSENT).astype(object).to_numpy()
        else:
            parts[col] = np.full(n, _ABSENT, dtype=object)
    keep = np.broadcast_to(np.asarray(with_session, dtype=bool), (n,))
    parts["session_id"] = np.where(keep, parts["session_id"], _ABSENT)
    return pd.util.hash_pandas_object(pd.DataFrame(parts), index=False).to_numpy()


def drop_stored(events: pd.DataFrame, stored: pd.DataFrame | None) -> tuple[pd.DataFrame, int]:
    """``events`` less those already in ``stored`` or earlier in ``events`` itself, and how many that was.

    A row whose source gave a session id is matched on all six identity columns; a row without
    one on the other five (its session id is made after this, from the stored sessions).
    """
    given = events["session_id"].notna().to_numpy()
    mine = identity_hashes(events, with_session=given)
    seen = pd.Series(mine).duplicated().to_numpy()
    if stored is not None and len(stored):
        full = identity_hashes(stored)
        sessionless = identity_hashes(stored, with_session=False)
        seen = seen | np.where(given, np.isin(mine, full), np.isin(mine, sessionless))
    return events[~seen].reset_index(drop=True), int(seen.sum())


def _read_all(
    adapter: Any, files: list[Path], options: dict, total_rows: int, on_progress: Callable[[int, int, Path], None] | None,
) -> tuple[pd.DataFrame, IngestReport, str]:
    """Read ``files`` one after another with ``adapter``; the canonical reader goes chunk by chunk."""
    parts, reports = [], []
    done = 0
    for file in files:
        if on_progress is not None:
            on_progress(done, total_rows, file)

        def advance(rows: int, _file: Path = file) -> None:
            nonlocal done
            done += rows
            if on_progress is not None:
                on_progress(done, total_rows, _file)

        chunked = {"on_rows": advance} if adapter.read is canonical_reader else {}
        events, report = adapter.read(file, **options, **chunked)
        if not chunked:
            advance(report.rows_read)
        parts.append(events)
        reports.append(report)
    source = str(files[0]) if len(files) == 1 else f"{len(files)} files: {', '.join(f.name for f in files[:5])}{' …' if len(files) > 5 else ''}"
    events = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
    return events, IngestReport.combine(reports, source, name_files=True), source


def ingest_file(
    workspace: Workspace,
    path: str | Path | None,
    *,
    fmt: str = "canonical",
    mapping: Mapping[str, str] | None = None,
    strict: bool = False,
    tz: str | None = None,
    encoding: str = "utf-8",
    limits: IngestLimits | None = None,
    replace: bool = False,
    lock_timeout: float = LOCK_TIMEOUT_S,
    on_progress: Callable[[int, int, Path], None] | None = None,
    source_label: str | None = None,
    stored_events: pd.DataFrame | None = None,
    update_summary: bool = True,
) -> tuple[pd.DataFrame, IngestReport]:
    """Validate ``path`` as ``fmt``, protect personal data, and append it to the workspace's events as one batch.

    ``path`` may be a file, a folder of CSV/Parquet files, a glob (``'exports/*.csv'``), or None
    for a data set a package ships (e.g. ``--format cdnow``). Rows equal in identity to stored
    events are counted (``report.already_stored``), not stored again: the same file twice adds
    nothing. Rows that could not be used are written to ``rejected/batch-<id>.csv`` with their
    reason (masked), so nothing is lost. Labels from an earlier data set are removed. What
    protection changed (masked fields, cut texts, pseudonymized ids) is counted in ``report.notes``.

    Args:
        limits: Row, memory and text-length bounds; default ``IngestLimits()`` (the CLI passes the settings').
        replace: Start over: the new batch replaces every stored event (``report.replaced_events`` says how many).
        lock_timeout: Seconds to wait for another writer of the workspace.
        on_progress: Called as ``on_progress(rows_read, rows_estimated, file)`` before each file and after
            each chunk of a canonical file (or each file of another format).
        source_label: What the batch's manifest entry names as its source (default: the files read);
            ``shopsight watch`` names the stream and the byte range a chunk came from.
        stored_events: The workspace's events as the caller already holds them (``shopsight watch``
            keeps them in memory under the writer lock), saving a read of every batch; they must be
            what ``load_events()`` returns now.
        update_summary: Recompute the manifest's summary over every event (False: keep the old one,
            for a caller that refreshes it itself, as ``shopsight watch`` does every few seconds).

    Returns:
        The events the batch added (sessionized) and the report, with ``report.batch`` its id.

    Raises:
        IngestLimitError: before reading, when the input is over a row or memory limit.
        WorkspaceBusyError: another writer holds the workspace longer than ``lock_timeout``.
    """
    adapter = get_adapter(fmt)
    if path is None:
        if adapter.packaged_path is None or adapter.packaged_path() is None:
            raise ValueError(f"format '{fmt}' has no packaged data set; give the FILE to ingest")
        path = adapter.packaged_path()
    # A format that reads a folder as one data set (Complete Journey) gets the folder; any other
    # reads each CSV/Parquet file of a folder or glob in turn, into the one batch.
    files = [Path(path)] if adapter.input_files else source_files(path)
    limits = limits or IngestLimits()
    estimate = check_ingest_limits(adapter.input_files(Path(path)) if adapter.input_files else files, limits)
    # tz None: the format's own default (Online Retail is UK time, most others UTC).
    options: dict = {"strict": strict, "encoding": encoding}
    if tz is not None:
        options["tz"] = tz
    if mapping:
        if fmt != "canonical":
            raise ValueError(f"--map applies to --format canonical only; the '{fmt}' reader knows its own columns")
        options["mapping"] = mapping
    events, report, source = _read_all(adapter, files, options, estimate.rows, on_progress)
    events, privacy_notes = protect_events(events, key=workspace_key(workspace), max_text_chars=limits.max_text_chars)
    report.notes.update(privacy_notes)
    if report.rejected is not None and len(report.rejected):
        rejected, masked_cells = mask_table(report.rejected.astype("string"))
        report.rejected = rejected
        if masked_cells:
            report.notes[REJECTED_MASKED_NOTE] = masked_cells
    with workspace.writer("ingest", timeout=lock_timeout):
        manifest = workspace.read_manifest()
        batches = [] if replace else _batches_with_legacy(workspace, manifest)
        old_files = workspace.event_files(manifest)
        stored = None if replace or not old_files else (workspace.load_events() if stored_events is None else stored_events)
        if replace:
            report.replaced_events = _count_rows(old_files)
        # Identity and sessions are per user: only the stored events of this batch's users can match or continue.
        theirs = None if stored is None else stored[stored["user_id"].isin(events["user_id"].unique())]
        events, report.already_stored = drop_stored(events, None if theirs is None else theirs[_present(theirs, IDENTITY)])
        report.rows_kept = len(events)  # read = kept + duplicates + already stored + rejected
        events = sessionize(events, after=None if theirs is None else theirs[["user_id", "ts", "session_id"]])
        batch_id = int(manifest.get("next_batch", 1 + max((b["id"] for b in batches), default=0)))
        record: dict[str, Any] = {
            "id": batch_id,
            "source": source_label or source,
            "format": fmt,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "accepted": len(events),
            "rejected": report.rows_rejected,
            "duplicate": report.duplicates + report.already_stored,
        }
        if len(events):
            record["file"] = f"events/batch-{batch_id:06d}.parquet"
            write_parquet_atomic(workspace.root / record["file"], events)
        if report.rejected is not None and len(report.rejected):
            record["rejected_file"] = f"rejected/batch-{batch_id:06d}.csv"
            with atomic_path(workspace.root / record["rejected_file"]) as tmp:
                report.rejected.to_csv(tmp, index=False)
        report.batch = batch_id
        if update_summary or stored is None:
            union = events if stored is None else pd.concat([stored, events], ignore_index=True)
            summary = summarize_events(union) if len(union) else None
        else:
            summary = manifest.get("summary")
        workspace.write_manifest(  # the moment the batch becomes visible
            {
                **({} if replace else manifest),
                "dataset": fmt,
                "source": source_label or source,
                "ingest": report.to_dict(),
                "batches": [*batches, record],
                "next_batch": batch_id + 1,
                "summary": summary,
            }
        )
        remove_unlisted_batch_files(workspace)
        # Item names belong to the data set: a catalogue from an earlier one (another format) would misname items.
        if adapter.catalogue is not None:
            workspace.save_catalogue(adapter.catalogue(path, encoding=encoding))
        elif (replace or stored is None or manifest.get("dataset") != fmt) and workspace.catalogue_path.exists():
            workspace.catalogue_path.unlink()
        # Ground truth belongs to the events it was generated with; new events make it wrong.
        if workspace.labels_dir.exists() and len(events):
            shutil.rmtree(workspace.labels_dir)
    return events, report


def undo_batch(workspace: Workspace, batch_id: int, *, lock_timeout: float = LOCK_TIMEOUT_S) -> dict[str, Any]:
    """Remove one batch's events (and its rejected rows) from the workspace; return its manifest entry.

    Raises:
        WorkspaceError: no batch with that id, naming the ids there are.
    """
    with workspace.writer("batches undo", timeout=lock_timeout):
        manifest = workspace.read_manifest()
        batches = _batches_with_legacy(workspace, manifest)
        record = next((b for b in batches if int(b["id"]) == int(batch_id)), None)
        if record is None:
            have = ", ".join(str(b["id"]) for b in batches) or "none"
            raise WorkspaceError(f"no batch {batch_id} in workspace '{workspace.root}' (batches: {have}); see `shopsight batches`")
        kept = [b for b in batches if b is not record]
        manifest = {**manifest, "batches": kept, "next_batch": int(manifest.get("next_batch", int(batch_id) + 1))}
        files = workspace.event_files(manifest)
        manifest["summary"] = summarize_events(workspace.read_event_files(files)) if files else None
        workspace.write_manifest(manifest)
        remove_unlisted_batch_files(workspace)  # its events file and its rejected rows
    return record


def batch_list(workspace: Workspace) -> list[dict[str, Any]]:
    """The workspace's batches as ``shopsight batches`` lists them (one written whole shows as batch 0)."""
    return _batches_with_legacy(workspace, workspace.read_manifest())


def _batches_with_legacy(workspace: Workspace, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's batches; a workspace from before batches (one ``events.parquet``) is adopted as batch 0."""
    if "batches" in manifest:
        return list(manifest["batches"])
    if not workspace.events_path.exists():
        return []
    ingest = manifest.get("ingest") or {}
    return [{
        "id": 0,
        "source": manifest.get("source") or workspace.events_path.name,
        "format": manifest.get("dataset"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(workspace.events_path.stat().st_mtime)),
        "accepted": _count_rows([workspace.events_path]),
        "rejected": ingest.get("rows_rejected", 0),
        "duplicate": ingest.get("duplicates", 0),
        "file": workspace.events_path.name,
    }]


def _count_rows(files: list[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def _present(df: pd.DataFrame, columns: tuple[str, ...]) -> list[str]:
    return [c for c in columns if c in df.columns]
