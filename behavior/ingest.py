"""Ingest a file into a workspace: read with an adapter, sessionize, store atomically, report."""

from __future__ import annotations

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
    tz: str = "UTC",
    encoding: str = "utf-8",
) -> tuple[pd.DataFrame, IngestReport]:
    """Validate ``path`` as ``fmt``, sessionize, and replace the workspace's events.

    ``path`` may be None for a data set a package ships (e.g. ``--format cdnow``).
    Rows that could not be used are written to ``rejected/<file>.csv`` with their reason.
    """
    adapter = get_adapter(fmt)
    if path is None:
        if adapter.packaged_path is None or adapter.packaged_path() is None:
            raise ValueError(f"format '{fmt}' has no packaged data set; give the FILE to ingest")
        path = adapter.packaged_path()
    options: dict = {"strict": strict, "tz": tz}
    if mapping:
        options["mapping"] = mapping
    if fmt == "canonical":
        options["encoding"] = encoding
    events, report = adapter.read(path, **options)
    events = sessionize(events)
    if report.rejected is not None and len(report.rejected):
        write_parquet_atomic(
            workspace.rejected_dir / f"{Path(str(path)).name}.parquet", report.rejected.astype("string")
        )
    workspace.save_events(events)
    workspace.write_manifest(
        {
            "dataset": fmt,
            "source": str(path),
            "ingest": report.to_dict(),
            "summary": summarize_events(events),
        }
    )
    return events, report
