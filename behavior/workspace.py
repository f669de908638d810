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

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow.parquet as pq

from behavior.events import MUST_PROVIDE, single_chunk_strings

DEFAULT_WORKSPACE = Path("workspace")
MANIFEST = "manifest.json"


class WorkspaceError(RuntimeError):
    """The workspace is missing something a command needs; the message says how to fix it."""


# What the OS answers for a folder this process may not write: permissions, `chattr +i`, a read-only disk.
NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


@contextmanager
def writing_in(folder: str | Path) -> Iterator[None]:
    """Around a write in ``folder``: the OS refusing it becomes a WorkspaceError naming the folder and the fix."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in NOT_WRITABLE:
            raise
        raise WorkspaceError(
            f"cannot write {folder} ({exc.strerror or exc}): the workspace must be writable; "
            "fix its permissions, or pass another folder with --workspace"
        ) from exc


def is_writable(folder: str | Path) -> bool:
    """True when files can be created in ``folder`` (an existing folder; root's bypass of the mode bits included)."""
    return os.access(folder, os.W_OK | os.X_OK)


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``target``; rename it over ``target`` only if the block succeeds.

    Raises:
        WorkspaceError: the folder cannot be written (naming it and the fix).
    """
    target = Path(target)
    with writing_in(target.parent):
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


def staging_folder(target: str | Path) -> Path:
    """A new, empty, hidden folder beside ``target`` in which to build its replacement.

    Raises:
        WorkspaceError: the parent folder cannot be written.
    """
    target = Path(target)
    with writing_in(target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{target.name}-building-", dir=target.parent))


def swap_in_folder(new: str | Path, target: str | Path) -> None:
    """Put the finished folder ``new`` where ``target`` is; the old ``target`` is renamed aside, then deleted.

    Folders cannot be renamed over each other, so between the two renames ``target`` is absent
    for an instant: a reader then finds no folder, never a half-built one. If the second rename
    fails, the old folder is put back.
    """
    new, target = Path(new), Path(target)
    old: Path | None = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
        target.replace(old)  # over the empty placeholder
    try:
        new.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old)


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
        """The workspace at ``path``, else ``./workspace`` (the CLI passes ``$SHOPSIGHT_HOME`` from its settings).

        Raises:
            WorkspaceError: ``path`` is an existing file, not a folder.
        """
        if path is None:
            path = DEFAULT_WORKSPACE
        root = Path(path).expanduser()
        if root.exists() and not root.is_dir():
            raise WorkspaceError(
                f"the workspace {root} is a file, not a folder: pass a folder with --workspace "
                "(a new one is created on first use)"
            )
        return cls(root)

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
        """The canonical events (``columns`` only, if given).

        Raises:
            WorkspaceError: there are none, the file is unreadable, or it lacks canonical columns
                (naming them, the columns found, and the ``shopsight ingest --map`` that fixes it).
        """
        path = self.require_events()
        try:
            found = pq.read_schema(path).names
            # The columns every reader needs, and those asked for: a file copied in by hand fails
            # here, by name, rather than as a KeyError deep in a feature builder.
            missing = [c for c in dict.fromkeys([*MUST_PROVIDE, *(columns or [])]) if c not in found]
            if not missing:
                return single_chunk_strings(pd.read_parquet(path, columns=columns))
        except Exception as exc:
            raise WorkspaceError(f"cannot read {path}: {exc}; re-create it with `shopsight ingest` or `shopsight demo`") from exc
        maps = " ".join(f"--map {c}=YOUR_COLUMN" for c in missing if c in MUST_PROVIDE)
        raise WorkspaceError(
            f"{path} is not a ShopSight events file: it lacks the column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} (found: {', '.join(found) or 'none'}). Ingest the source data instead, which "
            f"writes this file: `shopsight ingest FILE {maps + ' ' if maps else ''}--workspace {self.root}`"
            + ("" if maps else " (use --map CANONICAL=YOUR_COLUMN for any column named differently)")
        )

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
