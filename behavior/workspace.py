"""The workspace: one folder holding everything one dataset needs, written atomically.

Layout::

    workspace/
      manifest.json        what is here: dataset name, source, counts, time span
      events.parquet       canonical events (sessionized)
      labels/              ground truth beside the events (synthetic data only)
      rejected/            rows ingest could not use, with the reason
      models/<name>/<version>/
      index/               the chromadb store
      runs/                conversations and eval reports
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from behavior.events import single_chunk_strings

DEFAULT_WORKSPACE = Path("workspace")
MANIFEST = "manifest.json"


class WorkspaceError(RuntimeError):
    """The workspace is missing something a command needs; the message says how to fix it."""


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``target``; rename it over ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(target: str | Path, obj: Any) -> None:
    write_bytes_atomic(target, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def write_parquet_atomic(target: str | Path, df: pd.DataFrame) -> None:
    with atomic_path(target) as tmp:
        df.to_parquet(tmp, index=False)


@dataclass(frozen=True)
class Workspace:
    """A workspace folder. Cheap to create; nothing is read until asked."""

    root: Path

    @classmethod
    def at(cls, path: str | Path | None = None) -> "Workspace":
        """The workspace at ``path``, else ``./workspace`` (the CLI passes ``$SHOPSIGHT_HOME`` from its settings)."""
        if path is None:
            path = DEFAULT_WORKSPACE
        return cls(Path(path).expanduser())

    # --- paths -----------------------------------------------------------------------
    @property
    def events_path(self) -> Path:
        return self.root / "events.parquet"

    @property
    def labels_dir(self) -> Path:
        return self.root / "labels"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def rejected_dir(self) -> Path:
        return self.root / "rejected"

    @property
    def catalogue_path(self) -> Path:
        return self.root / "catalogue.parquet"

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def exists(self) -> bool:
        return self.events_path.exists()

    # --- events ----------------------------------------------------------------------
    def require_events(self) -> Path:
        if not self.events_path.exists():
            raise WorkspaceError(
                f"no events in workspace '{self.root}': run `shopsight demo` or "
                f"`shopsight ingest FILE --format NAME --workspace {self.root}` first"
            )
        return self.events_path

    def load_events(self, columns: list[str] | None = None) -> pd.DataFrame:
        path = self.require_events()
        try:
            return single_chunk_strings(pd.read_parquet(path, columns=columns))
        except Exception as exc:
            raise WorkspaceError(f"cannot read {path}: {exc}; re-create it with `shopsight ingest` or `shopsight demo`") from exc

    def save_events(self, events: pd.DataFrame) -> None:
        write_parquet_atomic(self.events_path, events)

    # --- catalogue (optional: item names and prices, where the data set has them) ------
    def save_catalogue(self, catalogue: pd.DataFrame) -> None:
        write_parquet_atomic(self.catalogue_path, catalogue)

    def load_catalogue(self) -> pd.DataFrame | None:
        if not self.catalogue_path.exists():
            return None
        return pd.read_parquet(self.catalogue_path)

    # --- labels ----------------------------------------------------------------------
    def save_labels(self, name: str, labels: pd.DataFrame) -> None:
        write_parquet_atomic(self.labels_dir / f"{name}.parquet", labels)

    def load_labels(self, name: str) -> pd.DataFrame:
        path = self.labels_dir / f"{name}.parquet"
        if not path.exists():
            raise WorkspaceError(f"no '{name}' labels in workspace '{self.root}' (only the synthetic demo data has ground truth)")
        return pd.read_parquet(path)

    def label_names(self) -> list[str]:
        if not self.labels_dir.exists():
            return []
        return sorted(p.stem for p in self.labels_dir.glob("*.parquet"))

    # --- manifest --------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {}
        return json.loads(self.manifest_path.read_text())

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json_atomic(self.manifest_path, manifest)

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        manifest = self.read_manifest()
        manifest.update(fields)
        self.write_manifest(manifest)
        return manifest
