"""Ingest a file into a workspace: check its size, read it with an adapter, protect personal
data, sessionize, store atomically, report.

Nothing personal is stored raw: before events reach ``events.parquet`` their free-text
columns are masked and bounded and identifiers holding an e-mail or phone number are
replaced by keyed pseudonyms (``behavior.privacy.protect_events``); rejected rows are
masked too. The pseudonym key is made once per workspace (``privacy.key``), so the same
address maps to the same pseudonym in every later ingest into that workspace; delete the
key and later ingests can no longer be joined to earlier ones.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Mapping

import pandas as pd

from behavior.adapters import get_adapter
from behavior.events import IngestLimits, IngestReport, check_ingest_limits
from behavior.features import sessionize, summarize_events
from behavior.privacy import mask_table, protect_events
from behavior.workspace import Workspace, write_parquet_atomic

KEY_FILE = "privacy.key"
REJECTED_MASKED_NOTE = "rejected rows: personal data masked (cells)"


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
        tmp = workspace.root / f".{KEY_FILE}.{secrets.token_hex(6)}.tmp"
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
) -> tuple[pd.DataFrame, IngestReport]:
    """Validate ``path`` as ``fmt``, protect personal data, sessionize, and replace the workspace's events.

    ``path`` may be None for a data set a package ships (e.g. ``--format cdnow``).
    Rows that could not be used are written to ``rejected/<file>.parquet`` with their
    reason (masked), so nothing is lost. Labels from an earlier data set are removed.
    What protection changed (masked fields, cut texts, pseudonymized ids) is counted in
    ``report.notes``.

    Args:
        limits: Row, memory and text-length bounds; default ``IngestLimits()`` (the CLI passes the settings').

    Raises:
        IngestLimitError: before reading, when the file is over a row or memory limit.
    """
    adapter = get_adapter(fmt)
    if path is None:
        if adapter.packaged_path is None or adapter.packaged_path() is None:
            raise ValueError(f"format '{fmt}' has no packaged data set; give the FILE to ingest")
        path = adapter.packaged_path()
    limits = limits or IngestLimits()
    check_ingest_limits(adapter.input_files(Path(path)) if adapter.input_files else path, limits)
    # tz None: the format's own default (Online Retail is UK time, most others UTC).
    options: dict = {"strict": strict, "encoding": encoding}
    if tz is not None:
        options["tz"] = tz
    if mapping:
        if fmt != "canonical":
            raise ValueError(f"--map applies to --format canonical only; the '{fmt}' reader knows its own columns")
        options["mapping"] = mapping
    events, report = adapter.read(path, **options)
    events, privacy_notes = protect_events(events, key=workspace_key(workspace), max_text_chars=limits.max_text_chars)
    report.notes.update(privacy_notes)
    events = sessionize(events)
    if report.rejected is not None and len(report.rejected):
        rejected, masked_cells = mask_table(report.rejected.astype("string"))
        report.rejected = rejected
        if masked_cells:
            report.notes[REJECTED_MASKED_NOTE] = masked_cells
        write_parquet_atomic(workspace.rejected_dir / f"{Path(str(path)).name}.parquet", rejected)
    workspace.save_events(events)
    # Item names belong to the data set: a catalogue from an earlier one would misname items.
    if adapter.catalogue is not None:
        workspace.save_catalogue(adapter.catalogue(path, encoding=encoding))
    elif workspace.catalogue_path.exists():
        workspace.catalogue_path.unlink()
    # Ground truth belongs to the events it was generated with; new events make it wrong.
    if workspace.labels_dir.exists():
        shutil.rmtree(workspace.labels_dir)
    workspace.write_manifest(
        {
            "dataset": fmt,
            "source": str(path),
            "ingest": report.to_dict(),
            "summary": summarize_events(events),
        }
    )
    return events, report
