"""The model registry: ``workspace/models/<name>/<version>/`` with weights, feature spec, card and scores.

A version folder holds ``weights.safetensors`` (tensors only, no pickles), ``spec.json`` (what
inference needs to rebuild features and the net; carries ``schema_version``), ``card.json``
(data window, metrics beside the baselines', calibration, training time; carries the sha256
of the weights) and optionally ``scores.parquet`` (every user's probability as of the end of
the training events, so cohort questions need no inference). A version is written in a
temporary folder and renamed into place: a crash never leaves a half-written version.

It stores any torch state (the router's too) and imports nothing of the models built on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

from typing import TYPE_CHECKING

import pandas as pd
from safetensors import SafetensorError

if TYPE_CHECKING:  # torch is imported when weights are saved or loaded as tensors, not with this module
    import torch

from shopsight.behavior.workspace import Workspace, WorkspaceError, writing_in

SPEC_SCHEMA_VERSION = 1  # a spec of another schema is refused at load: retrain
WEIGHTS = "weights.safetensors"
SPEC = "spec.json"
CARD = "card.json"
SCORES = "scores.parquet"
_VERSION = re.compile(r"^v(\d+)$")


class ModelError(WorkspaceError):
    """A model is missing, corrupted, incompatible or used wrongly; the message says how to fix it."""


class SavedModel(NamedTuple):
    """A loaded version: unpack as ``state_dict, spec, card = registry.load(ws, name)``."""

    state_dict: dict[str, torch.Tensor]
    spec: dict[str, Any]
    card: dict[str, Any]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions(ws: Workspace, name: str) -> list[str]:
    """Saved versions of ``name``, oldest first (``["v1", "v2", ...]``)."""
    folder = ws.models_dir / name
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p.name) for p in folder.iterdir() if p.is_dir() and (m := _VERSION.match(p.name))]
    return [v for _, v in sorted(found)]


def latest_version(ws: Workspace, name: str) -> str | None:
    """The newest version of ``name``, or None if none is saved."""
    vs = versions(ws, name)
    return vs[-1] if vs else None


def model_dir(ws: Workspace, name: str, version: str | None = None) -> Path:
    """The folder of a saved version (default: latest); raises ``ModelError`` if there is none."""
    v = version or latest_version(ws, name)
    if v is None:
        raise ModelError(f"no '{name}' model in workspace '{ws.root}': train one with `shopsight train {name}`")
    path = ws.models_dir / name / v
    if not path.is_dir():
        have = ", ".join(versions(ws, name)) or "none"
        raise ModelError(f"no version '{v}' of the '{name}' model in '{ws.root}' (saved: {have})")
    return path


def save_model(
    ws: Workspace,
    name: str,
    *,
    state_dict: dict[str, torch.Tensor],
    spec: dict[str, Any],
    card: dict[str, Any],
    scores: pd.DataFrame | None = None,
) -> str:
    """Save a new version of model ``name`` atomically and return its version string ("v1", "v2", …).

    Args:
        ws: the workspace.
        name: model name (``intent``, ``churn``, ``risk``, …).
        state_dict: tensors only; saved with safetensors.
        spec: JSON-able feature spec; ``schema_version`` is added.
        card: JSON-able model card; ``name``, ``version``, ``created`` and ``weights_sha256`` are added.
        scores: optional per-user scores (``user_id``, ``probability``, …) as of the end of the events.
    """
    parent = ws.models_dir / name
    with writing_in(parent):
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".saving-", dir=parent))
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        from safetensors.torch import save_file

        save_file(tensors, str(tmp / WEIGHTS))
        spec = {**spec, "schema_version": SPEC_SCHEMA_VERSION, "name": name}
        (tmp / SPEC).write_text(json.dumps(spec, indent=2, sort_keys=True, default=str) + "\n")
        if scores is not None:
            scores.to_parquet(tmp / SCORES, index=False)
        for _ in range(100):  # another process may take the same number: try the next one
            latest = latest_version(ws, name)
            version = f"v{int(latest[1:]) + 1 if latest else 1}"
            full_card = {
                **card,
                "name": name,
                "version": version,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "weights_sha256": _sha256(tmp / WEIGHTS),
            }
            (tmp / CARD).write_text(json.dumps(full_card, indent=2, sort_keys=True, default=str) + "\n")
            try:
                os.rename(tmp, parent / version)  # atomic; fails if the version exists (non-empty)
                return version
            except OSError:
                if not (parent / version).exists():
                    raise
        raise ModelError(f"could not allocate a new version for '{name}' in {parent}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _read_json(path: Path, what: str, name: str) -> dict[str, Any]:
    """A model file that must hold one JSON object; ``ModelError`` naming the file and the fix otherwise."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{what} missing in {path.parent}: the '{name}' model is incomplete; retrain with `shopsight train {name}`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is corrupted ({exc}); retrain with `shopsight train {name}`") from exc
    if not isinstance(value, dict):
        # Valid JSON of the wrong shape (`[]`, `null`): every reader below would fail on .get().
        raise ModelError(
            f"{path} is corrupted: it holds a JSON {_json_kind(value)}, not the object {what} should be; "
            f"retrain with `shopsight train {name}`"
        )
    return value


def _json_kind(value: Any) -> str:
    """JSON's name for the type of a parsed value (for messages; no brackets, which Rich would read as markup)."""
    kinds = {list: "array", type(None): "null", str: "string", bool: "boolean", int: "number", float: "number"}
    return kinds.get(type(value), type(value).__name__)


def load(ws: Workspace, name: str, version: str | None = None, *, arrays: str = "torch") -> SavedModel:
    """Load a saved version (default: latest), checking integrity and compatibility.

    ``arrays="numpy"`` reads the weights as numpy arrays, without importing torch (the router's
    small head runs in numpy, so a one-shot question need not pay torch's import).

    Raises:
        ModelError: no such model or version; a file missing or corrupted (weights checksum,
            unreadable JSON); a spec written by an incompatible version of the code.
    """
    path = model_dir(ws, name, version)
    spec = _read_json(path / SPEC, "spec.json", name)
    card = _read_json(path / CARD, "card.json", name)
    got = spec.get("schema_version")
    if got != SPEC_SCHEMA_VERSION:
        raise ModelError(
            f"the '{name}' model {path.name} has feature-spec schema {got}, this code reads schema "
            f"{SPEC_SCHEMA_VERSION}: retrain it with `shopsight train {name}`"
        )
    weights = path / WEIGHTS
    if not weights.exists():
        raise ModelError(f"weights missing in {path}; retrain with `shopsight train {name}`")
    expected = card.get("weights_sha256")
    if expected and _sha256(weights) != expected:
        raise ModelError(f"{weights} is corrupted (checksum mismatch); retrain with `shopsight train {name}`")
    try:
        if arrays == "numpy":
            from safetensors.numpy import load_file
        else:
            from safetensors.torch import load_file
        state_dict = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{weights} is corrupted ({exc}); retrain with `shopsight train {name}`") from exc
    return SavedModel(state_dict, spec, card)


def score_path(ws: Workspace, name: str, version: str | None = None) -> Path:
    """Where the per-user scores of ``name@version`` (default: latest) are read from.

    The table `shopsight score` published for that version (a folder of Parquet part files,
    ``scores/run-…/<name>@<version>/scores/``) when there is one, else the ``scores.parquet``
    written at training time. Raises ``ModelError`` if the model or version does not exist.
    """
    from shopsight.behavior.scoring import published_table

    folder = model_dir(ws, name, version)
    return published_table(ws, name, folder.name) or folder / SCORES


def load_scores(ws: Workspace, name: str, version: str | None = None) -> pd.DataFrame:
    """The per-user scores (``user_id``, ``probability``, …): :func:`score_path`'s table."""
    path = score_path(ws, name, version)
    if path.is_dir():
        from shopsight.behavior.scoring import read_table

        return read_table(path)
    if not path.exists():
        raise ModelError(f"no scores saved with the '{name}' model {path.parent.name}; retrain with `shopsight train {name}` or run `shopsight score`")
    return pd.read_parquet(path)


def list_models(ws: Workspace) -> list[dict[str, Any]]:
    """Every saved version in ``ws``: name, version, created, data window, headline metrics, path.

    A version whose card cannot be read is listed with ``error`` instead of failing the list.
    """
    rows: list[dict[str, Any]] = []
    if not ws.models_dir.is_dir():
        return rows
    for folder in sorted(p for p in ws.models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for v in versions(ws, folder.name):
            path = folder / v
            row: dict[str, Any] = {"name": folder.name, "version": v, "path": str(path)}
            try:
                card = _read_json(path / CARD, "card.json", folder.name)
            except ModelError as exc:
                row["error"] = str(exc)
                rows.append(row)
                continue
            except OSError as exc:
                row["error"] = f"cannot read {path / CARD}: {exc.strerror or type(exc).__name__}"
                rows.append(row)
                continue
            row.update(
                created=card.get("created"),
                data_window=card.get("data_window"),
                data_cutoff=card.get("data_cutoff"),
                feature_profile=card.get("feature_profile"),
                metrics=card.get("metrics", {}),
                baselines=card.get("baselines", {}),
                train_seconds=card.get("train_seconds"),
            )
            rows.append(row)
    return rows


def data_cutoff(card: dict[str, Any]) -> pd.Timestamp | None:
    """The last event time a model was trained on: the card's ``data_cutoff`` (older cards: their data window's end)."""
    value = card.get("data_cutoff") or (card.get("data_window") or {}).get("last_event")
    return pd.Timestamp(value) if value else None


def add_freshness(ws: Workspace, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add to each :func:`list_models` row how old its data is: ``freshness = {data_cutoff, newer_events,
    days_since_cutoff}``, the events stored after the model's cutoff and the days from the cutoff to
    the workspace's last event (0 and 0.0 for a model trained on all of today's events); and, for a
    card with a feature profile, ``drift = {feature: {psi, verdict}}`` against today's events."""
    cutoffs = {id(r): data_cutoff(r) for r in rows}  # a row carries its card's data_cutoff and data_window
    if not any(c is not None for c in cutoffs.values()) or not ws.exists():
        return rows
    profiled = [r for r in rows if r.get("feature_profile")]
    if profiled:
        from shopsight.behavior.drift import drift_report
        from shopsight.behavior.features import user_features

        events = ws.load_events()
        table = user_features(events)
        for r in profiled:
            r["drift"] = drift_report(r.pop("feature_profile"), table)  # the profile itself is the card's
        ts = events["ts"]
    else:
        ts = ws.load_events(columns=["ts"])["ts"]
    last = ts.max()
    for r in rows:
        cutoff = cutoffs[id(r)]
        if cutoff is None:
            continue
        cutoff = cutoff.tz_localize("UTC") if cutoff.tzinfo is None else cutoff
        r["freshness"] = {
            "data_cutoff": cutoff.isoformat(),
            "newer_events": int((ts > cutoff).sum()),
            "days_since_cutoff": round(max((last - cutoff).total_seconds(), 0.0) / 86400, 1),
        }
    return rows


def stale_models(ws: Workspace, names: list[str]) -> dict[str, str]:
    """Which of ``names`` need training, with why: never trained, or events newer than the latest version's cutoff."""
    latest = {n: latest_version(ws, n) for n in names}
    rows = [r for r in list_models(ws) if r["name"] in names and r["version"] == latest[r["name"]]]
    by_name = {r["name"]: r for r in add_freshness(ws, rows)}
    out: dict[str, str] = {}
    for name in names:
        row = by_name.get(name)
        fresh = (row or {}).get("freshness")
        if row is None or "error" in row:
            out[name] = "not trained" if row is None else "its latest version cannot be read"
        elif fresh is None:
            out[name] = f"{name}@{row['version']} has no data cutoff in its card"
        elif fresh["newer_events"]:
            out[name] = (f"{name}@{row['version']} was trained on data to {fresh['data_cutoff'][:10]}; "
                         f"{fresh['newer_events']:,} newer events since")
    return out


def stale_note(ws: Workspace, ref: str, ts: pd.Series) -> str | None:
    """One line for an answer that used model ``ref`` ("churn@v1") when ``ts`` (the events the answer
    read) holds events newer than its data cutoff, e.g. "churn@v1 was trained on data to 4 May 2026;
    12,400 newer events since."; None when it is fresh or its card says nothing of its cutoff."""
    name, _, version = ref.partition("@")
    if not version or not _VERSION.match(version):
        return None
    try:
        card = _read_json(ws.models_dir / name / version / CARD, "card.json", name)
    except (ModelError, OSError):
        return None  # a missing or broken card is reported where the model is loaded
    cutoff = data_cutoff(card)
    if cutoff is None:
        return None
    cutoff = cutoff.tz_localize("UTC") if cutoff.tzinfo is None else cutoff
    newer = int((ts > cutoff).sum())
    if not newer:
        return None
    return f"{ref} was trained on data to {cutoff.day} {cutoff:%b %Y}; {newer:,} newer events since."
