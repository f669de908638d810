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
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from shopsight.behavior.adapters import canonical_reader, get_adapter
from shopsight.behavior.batches import IDENTITY, stage_chunks, summarize_files, write_batch
from shopsight.behavior.events import (
    CHUNK_ROWS,
    REQUIRED_COLUMNS,
    EventDataError,
    IngestLimits,
    IngestReport,
    _no_usable_rows,
    check_ingest_limits,
    iter_events,
    single_chunk_strings,
    table_files,
    to_canonical,
)
from shopsight.behavior.privacy import mask_table, protect_events
from shopsight.behavior.workspace import (
    LOCK_TIMEOUT_S,
    Workspace,
    WorkspaceError,
    atomic_path,
    remove_unlisted_batch_files,
    staging,
)

KEY_FILE = "privacy.key"
REJECTED_MASKED_NOTE = "rejected rows: personal data masked (cells)"
__all__ = ["IDENTITY", "append_batch", "batch_list", "ingest_database", "ingest_file", "undo_batch", "workspace_key"]


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


def _read_parts(
    adapter: Any, files: list[Path], options: dict, total_rows: int, on_progress: Callable[[int, int, Path], None] | None,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[tuple[str, pd.DataFrame, IngestReport]]:
    """(file, events, report) for each chunk of ``files``, read one after another with ``adapter``:
    the canonical reader goes chunk by chunk, any other format a file at a time."""
    done = 0
    for file in files:
        if on_progress is not None:
            on_progress(done, total_rows, file)

        def advance(rows: int, _file: Path = file) -> None:
            nonlocal done
            done += rows
            if on_progress is not None:
                on_progress(done, total_rows, _file)

        if adapter.read is canonical_reader:
            for events, report in iter_events(file, **options, on_rows=advance, chunk_rows=chunk_rows):
                yield str(file), events, report
        else:
            events, report = adapter.read(file, **options)
            advance(report.rows_read)
            yield str(file), events, report


def files_source(files: list[Path]) -> str:
    """How a batch's source reads in the manifest: the file, or how many files and the first names."""
    if len(files) == 1:
        return str(files[0])
    return f"{len(files)} files: {', '.join(f.name for f in files[:5])}{' …' if len(files) > 5 else ''}"


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
    return_events: bool = True,
    chunk_rows: int = CHUNK_ROWS,
    source_label: str | None = None,
    update_summary: bool = True,
) -> tuple[pd.DataFrame | None, IngestReport]:
    """Validate ``path`` as ``fmt``, protect personal data, and append it to the workspace's events as one batch.

    ``path`` may be a file, a folder of CSV/Parquet files, a glob (``'exports/*.csv'``), or None
    for a data set a package ships (e.g. ``--format cdnow``). Rows equal in identity to stored
    events are counted (``report.already_stored``), not stored again: the same file twice adds
    nothing. Rows that could not be used are written to ``rejected/batch-<id>.csv`` with their
    reason (masked), so nothing is lost. Labels from an earlier data set are removed. What
    protection changed (masked fields, cut texts, pseudonymized ids) is counted in ``report.notes``.
    Canonical files are read in chunks of ``CHUNK_ROWS`` rows and never held whole (see
    ``behavior.batches``); other formats are read a file at a time.

    Args:
        limits: Row, memory and text-length bounds; default ``IngestLimits()`` (the CLI passes the settings').
        replace: Start over: the new batch replaces every stored event (``report.replaced_events`` says how many).
        lock_timeout: Seconds to wait for another writer of the workspace.
        on_progress: Called as ``on_progress(rows_read, rows_estimated, file)`` before each file and after
            each chunk of a canonical file (or each file of another format).
        return_events: Read the batch's events back to return them (False: return None, and hold nothing).
        chunk_rows: Rows read, validated, and later sessionized at once: what bounds the memory.
        source_label: What the batch's manifest entry names as its source (default: the files read);
            ``shopsight watch`` names the stream and the byte range a chunk came from.
        update_summary: Recompute the manifest's summary over every event (False: keep the old one,
            for a caller that refreshes it itself, as ``shopsight watch`` does every few seconds).

    Returns:
        The events the batch added (sessionized; None unless ``return_events``) and the report, with
        ``report.batch`` its id.

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
    chunked = adapter.read is canonical_reader
    estimate = check_ingest_limits(adapter.input_files(Path(path)) if adapter.input_files else files, limits,
                                   chunk_rows=chunk_rows if chunked else None)
    # tz None: the format's own default (Online Retail is UK time, most others UTC).
    options: dict = {"strict": strict, "encoding": encoding}
    if tz is not None:
        options["tz"] = tz
    if mapping:
        if fmt != "canonical":
            raise ValueError(f"--map applies to --format canonical only; the '{fmt}' reader knows its own columns")
        options["mapping"] = mapping
    catalogue = None if adapter.catalogue is None else (lambda: adapter.catalogue(path, encoding=encoding))
    return append_batch(
        workspace, _read_parts(adapter, files, options, estimate.rows, on_progress, chunk_rows), source=source_label or files_source(files),
        fmt=fmt, limits=limits, strict=strict, replace=replace, lock_timeout=lock_timeout, name_files=len(files) > 1,
        catalogue=catalogue, return_events=return_events, chunk_rows=chunk_rows, update_summary=update_summary,
    )


def ingest_database(
    workspace: Workspace,
    url: str,
    *,
    table: str | None = None,
    query: str | None = None,
    since_column: str | None = None,
    mapping: Mapping[str, str] | None = None,
    strict: bool = False,
    tz: str = "UTC",
    limits: IngestLimits | None = None,
    replace: bool = False,
    lock_timeout: float = LOCK_TIMEOUT_S,
    on_progress: Callable[[int, int, str], None] | None = None,
    return_events: bool = True,
    chunk_rows: int = CHUNK_ROWS,
) -> tuple[pd.DataFrame | None, IngestReport]:
    """Pull a PostgreSQL table or read-only query into the workspace as one batch (see ``behavior.database``).

    With ``since_column`` the pull is incremental: it reads the rows at or past the watermark the
    source's last batch stored, and its own batch stores the new one. The rows go through the same
    validation, protection, dedupe and atomic publish as a file's; the source is stored without
    the URL's password.

    Raises:
        DatabaseSourceError: a bad URL, a server that cannot be reached, a missing table or column, a
            column whose type cannot be the canonical column (each naming what is wrong).
    """
    from shopsight.behavior.database import DatabasePull, DatabaseSource, stored_watermark

    source = DatabaseSource(url, table=table, query=query, since_column=since_column)
    previous = None if replace else stored_watermark(_batches_with_legacy(workspace, workspace.read_manifest()), source)
    pull = DatabasePull(source, previous=previous, mapping=mapping, strict=strict, tz=tz, on_progress=on_progress,
                        chunk_rows=chunk_rows)

    def entry(report: IngestReport) -> dict[str, Any]:
        report.notes.update(pull.notes)
        return {"watermark": pull.watermark} if pull.watermark else {}

    return append_batch(
        workspace, pull.parts(), source=source.name, fmt="canonical", limits=limits or IngestLimits(), strict=strict,
        replace=replace, lock_timeout=lock_timeout, record=entry, return_events=return_events, chunk_rows=chunk_rows,
    )


def append_batch(
    workspace: Workspace,
    parts: Iterable[tuple[str, pd.DataFrame, IngestReport]],
    *,
    source: str,
    fmt: str,
    limits: IngestLimits,
    strict: bool = False,
    replace: bool = False,
    lock_timeout: float = LOCK_TIMEOUT_S,
    name_files: bool = False,
    catalogue: Callable[[], pd.DataFrame] | None = None,
    record: Callable[[IngestReport], dict[str, Any]] | None = None,
    return_events: bool = True,
    chunk_rows: int = CHUNK_ROWS,
    update_summary: bool = True,
) -> tuple[pd.DataFrame | None, IngestReport]:
    """Append validated chunks, ``(part name, canonical events, its report)``, to the workspace as one batch.

    The one way events get in, from files and databases alike: each chunk is protected and staged
    as it arrives (outside the lock), then, under the writer lock, deduplicated against the stored
    events, sessionized and published (``behavior.batches``).

    Args:
        source: The batch's source as the manifest and ``shopsight batches`` show it (no secrets in it).
        name_files: The parts are different files: rejected reasons say which one.
        catalogue: Item names of this data set, saved with the batch.
        record: Extra fields for the batch's manifest entry (e.g. a database source's watermark),
            asked with the report (to add notes to) once all parts are read.
        update_summary: Recompute the manifest's summary over every event file (False: keep the old one
            where there is one).

    Raises:
        EventDataError: a part with no usable row, or (strict) a row repeating an earlier one.
    """
    key = workspace_key(workspace)
    reports: dict[str, list[IngestReport]] = {}
    notes: dict[str, int] = {}
    with staging(workspace) as folder:
        staged = stage_chunks(folder, _protected(parts, key, limits, reports, notes))
        per_part = [IngestReport.combine(rs, name) for name, rs in reports.items()]
        for part in per_part:
            if part.rows_kept == 0:
                raise _no_usable_rows(part, part.source)
        report = IngestReport.combine(per_part, source, name_files=name_files)
        report.source = source
        report.notes.update(notes)
        if report.rejected is not None and len(report.rejected):
            rejected, masked_cells = mask_table(report.rejected.astype("string"))
            report.rejected = rejected
            if masked_cells:
                report.notes[REJECTED_MASKED_NOTE] = masked_cells
        extra = record(report) if record is not None else {}
        with workspace.writer("ingest", timeout=lock_timeout):
            manifest = workspace.read_manifest()
            batches = [] if replace else _batches_with_legacy(workspace, manifest)
            old_files = workspace.event_files(manifest)
            stored_files = [] if replace else old_files
            if replace:
                report.replaced_events = _count_rows(old_files)
            batch_id = int(manifest.get("next_batch", 1 + max((b["id"] for b in batches), default=0)))
            file = f"events/batch-{batch_id:06d}.parquet"
            done = write_batch(staged, stored_files, workspace.root / file, strict=strict, chunk_rows=chunk_rows)
            report.duplicates += done.duplicates  # repeats across a file's chunks (those within one are counted already)
            report.already_stored = done.already_stored
            report.rows_kept = done.kept  # read = kept + duplicates + already stored + rejected
            entry: dict[str, Any] = {
                "id": batch_id,
                "source": source,
                "format": fmt,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "accepted": done.kept,
                "rejected": report.rows_rejected,
                "duplicate": report.duplicates + report.already_stored,
                **extra,
            }
            if done.kept:
                entry["file"] = file
            if report.rejected is not None and len(report.rejected):
                entry["rejected_file"] = f"rejected/batch-{batch_id:06d}.csv"
                with atomic_path(workspace.root / entry["rejected_file"]) as tmp:
                    report.rejected.to_csv(tmp, index=False)
            report.batch = batch_id
            visible = [*stored_files, *([workspace.root / file] if done.kept else [])]
            # Canonical rows appended to a data set (a day's export, `shopsight watch`) are more of it; a
            # file of another public format, or --replace, starts another data set.
            dataset = manifest.get("dataset")
            same_dataset = bool(old_files) and not replace and (fmt == dataset or (fmt == "canonical" and dataset is not None))
            workspace.write_manifest(  # the moment the batch becomes visible
                {
                    **({} if replace else manifest),
                    "dataset": dataset if same_dataset else fmt,
                    "source": source,
                    "ingest": report.to_dict(),
                    "batches": [*batches, entry],
                    "next_batch": batch_id + 1,
                    "summary": summarize_files(visible) if update_summary or not manifest.get("summary") else manifest["summary"],
                }
            )
            remove_unlisted_batch_files(workspace)
            # Item names belong to the data set: a catalogue from an earlier one (another format) would misname items.
            if catalogue is not None:
                workspace.save_catalogue(catalogue())
            elif not same_dataset and workspace.catalogue_path.exists():
                workspace.catalogue_path.unlink()
            # Ground truth belongs to the data set it was generated with: another data set (or --replace)
            # makes it wrong. More events of the same one leave it true for the users and orders it lists
            # (risk training reads an unlisted user as not fraud, as it reads any user the labels omit).
            if workspace.labels_dir.exists() and done.kept and not same_dataset:
                shutil.rmtree(workspace.labels_dir)
    if not return_events:
        return None, report
    if done.kept:
        return single_chunk_strings(pd.read_parquet(workspace.root / file)), report
    return to_canonical(pd.DataFrame({c: pd.Series(dtype="float64" if c in ("price", "quantity") else "string") for c in REQUIRED_COLUMNS}
                                     | {"ts": pd.Series(dtype="datetime64[ns, UTC]")})), report


def _protected(parts: Iterable[tuple[str, pd.DataFrame, IngestReport]], key: bytes, limits: IngestLimits,
               reports: dict[str, list[IngestReport]], notes: dict[str, int]) -> Iterator[tuple[str, pd.DataFrame]]:
    """Each part's events with personal data protected (``protect_events``); its report and the notes collected."""
    for name, events, report in parts:
        reports.setdefault(name, []).append(report)
        events, privacy_notes = protect_events(events, key=key, max_text_chars=limits.max_text_chars)
        for note, count in privacy_notes.items():
            notes[note] = notes.get(note, 0) + count
        yield name, events


def read_protected(workspace: Workspace, path: Path, *, limits: IngestLimits | None = None) -> tuple[pd.DataFrame, IngestReport]:
    """A canonical CSV read, validated and protected exactly as :func:`ingest_file` stages it; nothing is written.

    ``shopsight watch`` decides from these rows (made into the rows to store by
    :func:`behavior.batches.new_rows`) before the batch is stored. A file with no usable row gives
    no events (its report says why), not an error.
    """
    limits = limits or IngestLimits()
    reports: dict[str, list[IngestReport]] = {}
    notes: dict[str, int] = {}
    parts = _read_parts(get_adapter("canonical"), [Path(path)], {"strict": False, "encoding": "utf-8"}, 0, None)
    frames = [events for _, events in _protected(parts, workspace_key(workspace), limits, reports, notes)]
    report = IngestReport.combine(reports.get(str(path), []), str(path))
    report.notes.update(notes)
    events = frames[0] if len(frames) == 1 else pd.concat([f for f in frames if len(f)], ignore_index=True) if frames else None
    if events is None or not len(events):
        return to_canonical(pd.DataFrame({c: pd.Series(dtype="float64" if c in ("price", "quantity") else "string") for c in REQUIRED_COLUMNS}
                                         | {"ts": pd.Series(dtype="datetime64[ns, UTC]")})), report
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
        manifest["summary"] = summarize_files(files)
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
