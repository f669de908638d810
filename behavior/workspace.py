"""The workspace: one folder holding everything one dataset needs, written atomically.

Layout::

    workspace/
      manifest.json        what is here: dataset name, source, counts, time span, and the
                           batches of events that are visible (the one list readers trust)
      events/batch-<id>.parquet   one file per ingest batch (canonical, sessionized events)
      events.parquet       the events of a workspace written whole (demo, or before batches)
      labels/              ground truth beside the events (synthetic data only)
      rejected/            rows ingest could not use, with the reason (batch-<id>.csv)
      .lock                held by the one writer (ingest, train, index build, watch)
      models/<name>/<version>/
      index/               the chromadb store
      runs/                conversations and eval reports
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow.parquet as pq

from shopsight.behavior.events import MUST_PROVIDE, single_chunk_strings

DEFAULT_WORKSPACE = Path("workspace")
MANIFEST = "manifest.json"
LOCK_FILE = ".lock"
# Where an ingest stages its validated chunks before the batch is written: .staging/<pid>-<random>/.
STAGING_DIR = ".staging"
# How long a second writer waits for the first before giving up (SHOPSIGHT_LOCK_TIMEOUT_S).
LOCK_TIMEOUT_S = 30.0


class WorkspaceError(RuntimeError):
    """The workspace is missing something a command needs; the message says how to fix it."""


class WorkspaceBusyError(WorkspaceError):
    """Another process holds the workspace's writer lock; the message names it (pid, command)."""


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
        _fsync(tmp_path)  # the bytes are on disk before the name points at them
        os.replace(tmp_path, target)
        _fsync(target.parent)  # and the rename itself survives a power cut
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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

    @property
    def events_dir(self) -> Path:
        return self.root / "events"

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_FILE

    def exists(self) -> bool:
        return bool(self.event_files())

    # --- events ----------------------------------------------------------------------
    def batches(self) -> list[dict[str, Any]]:
        """The visible ingest batches, oldest first (empty for a workspace written whole or before batches)."""
        return list(self.read_manifest().get("batches") or [])

    def event_files(self, manifest: dict[str, Any] | None = None) -> list[Path]:
        """The Parquet files that hold the workspace's events now: the one function every reader goes through.

        The manifest's batch list decides what is visible, so a batch file being written (or
        left by a killed ingest) is never read; a workspace without batches (the demo's, or
        one from before batches) is its ``events.parquet``.
        """
        manifest = self.read_manifest() if manifest is None else manifest
        if "batches" in manifest:
            # A batch whose rows were all stored already has no file.
            return [self.root / b["file"] for b in manifest["batches"] if b.get("file")]
        return [self.events_path] if self.events_path.exists() else []

    def require_events(self) -> list[Path]:
        files = self.event_files()
        if not files:
            raise WorkspaceError(
                f"no events in workspace '{self.root}': run `shopsight demo` or "
                f"`shopsight ingest FILE --format NAME --workspace {self.root}` first"
            )
        return files

    def load_events(self, columns: list[str] | None = None) -> pd.DataFrame:
        """The canonical events (``columns`` only, if given): the union of every visible batch.

        Raises:
            WorkspaceError: there are none, a file is unreadable, or it lacks canonical columns
                (naming them, the columns found, and the ``shopsight ingest --map`` that fixes it).
        """
        for attempt in range(3):
            files = self.require_events()
            try:
                return self.read_event_files(files, columns)
            except FileNotFoundError:
                # A writer replaced or undid a batch between reading the manifest and the file:
                # the manifest it published names the files to read now.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def read_event_files(self, files: list[Path], columns: list[str] | None = None) -> pd.DataFrame:
        """The events in ``files`` (a manifest's list, see :meth:`event_files`), sorted by user and time.

        Raises:
            FileNotFoundError: a file is gone (a writer undid or replaced its batch meanwhile).
            WorkspaceError: a file is unreadable or lacks canonical columns.
        """
        schemas: list[list[str]] = []
        for path in files:
            if not path.exists():
                raise FileNotFoundError(path)
            try:
                schemas.append(pq.read_schema(path).names)
            except FileNotFoundError:
                raise
            except Exception as exc:
                raise WorkspaceError(f"cannot read {path}: {exc}; re-create it with `shopsight ingest` or `shopsight demo`") from exc
        anywhere = {name for names in schemas for name in names}
        for path, found in zip(files, schemas):
            # The columns every reader needs, and those asked for: a file copied in by hand fails
            # here, by name, rather than as a KeyError deep in a feature builder. An optional column
            # one batch lacks and another has is read as missing values there.
            missing = [c for c in dict.fromkeys([*MUST_PROVIDE, *(columns or [])])
                       if c not in found and (c in MUST_PROVIDE or c not in anywhere)]
            if missing:
                maps = " ".join(f"--map {c}=YOUR_COLUMN" for c in missing if c in MUST_PROVIDE)
                raise WorkspaceError(
                    f"{path} is not a ShopSight events file: it lacks the column{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(missing)} (found: {', '.join(found) or 'none'}). Ingest the source data instead, which "
                    f"writes this file: `shopsight ingest FILE {maps + ' ' if maps else ''}--workspace {self.root}`"
                    + ("" if maps else " (use --map CANONICAL=YOUR_COLUMN for any column named differently)")
                )
        frames = []
        for path, found in zip(files, schemas):
            try:
                frames.append(pd.read_parquet(path, columns=None if columns is None else [c for c in columns if c in found]))
            except FileNotFoundError:
                raise
            except Exception as exc:
                raise WorkspaceError(f"cannot read {path}: {exc}; re-create it with `shopsight ingest` or `shopsight demo`") from exc
        if len(frames) == 1:
            return single_chunk_strings(frames[0])
        events = pd.concat(frames, ignore_index=True)
        if columns is not None:
            events = events[list(columns)]
        if "user_id" in events.columns and "ts" in events.columns:
            # Each batch is sorted by user and time; so is their union, as every reader expects.
            events = events.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
        return single_chunk_strings(events)

    def save_events(self, events: pd.DataFrame) -> None:
        """Replace all events with ``events`` (one file, no batches): the demo's and the tests' way in."""
        write_parquet_atomic(self.events_path, events)
        manifest = self.read_manifest()
        if "batches" in manifest:
            manifest.pop("batches")
            self.write_manifest(manifest)
            remove_unlisted_batch_files(self)

    # --- the writer lock -------------------------------------------------------------
    @contextmanager
    def writer(self, command: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Hold the workspace's writer lock for the block: one ingest, train, index build or watch at a time.

        Waits up to ``timeout`` seconds for another writer to finish. Reentrant within a process
        (an ingest called from a locked command does not wait for itself). The lock is an
        ``fcntl.flock`` on ``.lock``, so the OS releases it when its holder dies, however it dies;
        the file says who holds it (pid, command, since). Leftovers of a killed writer (``*.tmp``
        files, batch files no manifest lists) are removed once the lock is taken.

        Raises:
            WorkspaceBusyError: another process still holds it after ``timeout``, naming that process.
        """
        key = str(self.root.resolve())
        if key in _HELD:
            _HELD[key] += 1
            try:
                yield
            finally:
                _HELD[key] -= 1
            return
        with writing_in(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno not in NOT_WRITABLE:
                raise
            # A workspace no one may write needs no lock: the write itself fails, naming the folder
            # it needed (models/, index/, ...), which says more than the lock file would.
            yield
            return
        try:
            deadline = time.monotonic() + max(timeout, 0.0)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise WorkspaceBusyError(
                            f"workspace '{self.root}' is being written by {self.lock_holder() or 'another process'}; "
                            f"waited {timeout:g} s. Try again when it finishes, or wait longer with "
                            "SHOPSIGHT_LOCK_TIMEOUT_S"
                        ) from None
                    time.sleep(0.05)
            holder = {"pid": os.getpid(), "command": command, "argv": masked_argv(sys.argv),
                      "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            _HELD[key] = 1
            try:
                remove_leftovers(self)
                yield
            finally:
                del _HELD[key]
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def lock_holder(self) -> str | None:
        """Who holds (or last held) the writer lock, e.g. "pid 4242 (shopsight ingest day2.csv)"."""
        try:
            info = json.loads(self.lock_path.read_text() or "null")
        except (OSError, ValueError):
            return None
        if not info:
            return None
        return f"pid {info.get('pid')} ({info.get('command')}, since {info.get('since')}: {info.get('argv')})"

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


# The password of a URL in a command line (`ingest --from postgresql://shop:PASSWORD@db/shop`).
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s]+):[^@\s]*@")


def masked_argv(argv: list[str]) -> str:
    """The command line as the lock file and "is being written by" messages show it: URL passwords left out."""
    return " ".join(_URL_PASSWORD.sub(r"\1@", arg) for arg in argv)


# Roots whose writer lock this process holds, with the depth of nesting (the lock is per process).
_HELD: dict[str, int] = {}


def remove_unlisted_batch_files(ws: Workspace) -> list[Path]:
    """Delete batch files (events and rejected rows) the manifest does not list: a killed ingest's,
    an undone or replaced batch's. Call under the writer lock."""
    manifest = ws.read_manifest()
    listed = {p.resolve() for p in ws.event_files(manifest)}
    listed |= {(ws.root / b["rejected_file"]).resolve() for b in manifest.get("batches") or [] if b.get("rejected_file")}
    candidates = list(ws.events_dir.glob("batch-*.parquet")) if ws.events_dir.exists() else []
    candidates += list(ws.rejected_dir.glob("batch-*.csv")) if ws.rejected_dir.exists() else []
    if "batches" in manifest and ws.events_path.exists():
        candidates.append(ws.events_path)  # the file from before batches, once undone or replaced
    removed = [p for p in candidates if p.resolve() not in listed]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def remove_leftovers(ws: Workspace) -> None:
    """What a killed writer left: temp files of atomic writes, unlisted batch files, and the staging
    folders of ingests whose process is gone (under the lock)."""
    for folder in (ws.root, ws.events_dir, ws.rejected_dir):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
    remove_unlisted_batch_files(ws)
    staged = ws.root / STAGING_DIR
    if staged.is_dir():
        for folder in staged.iterdir():
            pid = folder.name.split("-", 1)[0]
            if not pid.isdigit() or not _alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)
        if not any(staged.iterdir()):
            staged.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@contextmanager
def staging(ws: Workspace) -> Iterator[Path]:
    """A new folder ``.staging/<pid>-<random>`` in the workspace for an ingest's chunks, removed on exit.

    A killed ingest's folder stays until the next writer removes it (:func:`remove_leftovers`),
    which knows it is dead by its pid. In the workspace rather than /tmp: the same disk as the
    batch file it becomes.

    Raises:
        WorkspaceError: the workspace cannot be written.
    """
    with writing_in(ws.root):
        folder = ws.root / STAGING_DIR / f"{os.getpid()}-{os.urandom(4).hex()}"
        folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.parent.rmdir()  # the last one out
        except OSError:
            pass
