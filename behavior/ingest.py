"""Ingest a file into a workspace: read with an adapter, sessionize, store atomically, report."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Mapping

import pandas as pd

from behavior.adapters import get_adapter
from behavior.events import IngestReport
from behavior.features import sessionize, summarize_events
from behavior.workspace import Workspace, write_parquet_atomic


def ingest_file(
    workspace: Workspace,
    path: str | Path | None,
    *,
    fmt: str = "canonical",
    mapping: Mapping[str, str] | None = None,
    strict: bool = False,
    tz: str | None = None,
    encoding: str = "utf-8",
) -> tuple[pd.DataFrame, IngestReport]:
    """Validate ``path`` as ``fmt``, sessionize, and replace the workspace's events.

    ``path`` may be None for a data set a package ships (e.g. ``--format cdnow``).
    Rows that could not be used are written to ``rejected/<file>.parquet`` with their
    reason, so nothing is lost. Labels from an earlier data set are removed.
    """
    adapter = get_adapter(fmt)
    if path is None:
        if adapter.packaged_path is None or adapter.packaged_path() is None:
            raise ValueError(f"format '{fmt}' has no packaged data set; give the FILE to ingest")
        path = adapter.packaged_path()
    # tz None: the format's own default (Online Retail is UK time, most others UTC).
    options: dict = {"strict": strict, "encoding": encoding}
    if tz is not None:
        options["tz"] = tz
    if mapping:
        if fmt != "canonical":
            raise ValueError(f"--map applies to --format canonical only; the '{fmt}' reader knows its own columns")
        options["mapping"] = mapping
    events, report = adapter.read(path, **options)
    events = sessionize(events)
    if report.rejected is not None and len(report.rejected):
        write_parquet_atomic(
            workspace.rejected_dir / f"{Path(str(path)).name}.parquet", report.rejected.astype("string")
        )
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
