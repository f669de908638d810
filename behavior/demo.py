"""Build the demo workspace: a synthetic shop with its ground truth, ready for the other steps."""

from __future__ import annotations

from typing import Any

import pandas as pd

from shopsight.behavior.features import summarize_events
from shopsight.behavior.synthetic import SyntheticShop, write_shop
from shopsight.behavior.workspace import Workspace, remove_unlisted_batch_files


def build_demo_workspace(
    ws: Workspace, *, users: int = 5000, days: int = 120, seed: int = 7, progress: bool = True
) -> dict[str, Any]:
    """Generate the synthetic shop and write its events, labels, catalogue and manifest into ``ws``.

    The shop is streamed to disk block by block, so a million users fit in bounded memory.
    Only the data is written; training and indexing are separate steps that read it.

    Args:
        ws: the workspace to fill (created if missing; existing events and labels are replaced).
        users: number of synthetic users.
        days: days of history.
        seed: random seed; the same seed gives the same workspace.
        progress: show a Rich progress bar (on stderr) while generating.

    Returns:
        ``{"summary": summarize_events(events), "label_rates": {"dropout", "fraud_users", "purchase_sessions"}}``.
    """
    from shopsight.behavior.ingest import workspace_key

    ws.root.mkdir(parents=True, exist_ok=True)
    with ws.writer("demo"):
        return _build(ws, users=users, days=days, seed=seed, progress=progress, key=workspace_key(ws))


def _build(ws: Workspace, *, users: int, days: int, seed: int, progress: bool, key: bytes) -> dict[str, Any]:
    from shopsight.behavior.privacy import protect_events

    def protect(events: pd.DataFrame) -> pd.DataFrame:  # the shop's planted e-mails and phones are masked before storage
        return protect_events(events, key=key, max_text_chars=2000)[0]

    tally = _Tally()
    if progress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("Simulating the demo shop"), BarColumn(), MofNCompleteColumn(), TextColumn("users"),
            TimeElapsedColumn(), console=Console(stderr=True), transient=True,
        ) as bar:
            task = bar.add_task("users", total=users)
            write_shop(ws.root, users=users, days=days, seed=seed, on_shop=tally.add, protect=protect,
                       on_block=lambda done, total: bar.update(task, completed=done))
    else:
        write_shop(ws.root, users=users, days=days, seed=seed, on_shop=tally.add, protect=protect)
    result = {"summary": tally.summary(), "label_rates": tally.label_rates()}
    ws.write_manifest(
        {
            "dataset": "demo",
            "source": "shopsight.behavior.synthetic",
            "seed": seed,
            "users": users,
            "days": days,
            **result,
        }
    )
    remove_unlisted_batch_files(ws)  # the batches of an earlier data set, replaced by the shop's one file
    return result


def label_rates(labels: dict[str, pd.DataFrame]) -> dict[str, float]:
    """Base rates of the ground truth: dropout and fraud share of users, purchase share of sessions."""
    tally = _Tally()
    tally.add_labels(labels)
    return tally.label_rates()


class _Tally:
    """Adds up per-block summaries so that the total equals ``summarize_events`` of the whole shop."""

    def __init__(self) -> None:
        self.parts: list[dict[str, Any]] = []
        self.items: set[str] = set()
        self.categories: set[str] = set()
        self.users = self.dropouts = self.fraud = self.sessions = self.purchased = 0

    def add(self, shop: SyntheticShop) -> None:
        events = shop.events
        self.parts.append(summarize_events(events))
        self.items.update(events["item_id"].dropna().unique().tolist())
        self.categories.update(events["category"].dropna().unique().tolist())
        self.add_labels(shop.labels)

    def add_labels(self, labels: dict[str, pd.DataFrame]) -> None:
        users, sessions = labels["users"], labels["sessions"]
        self.users += len(users)
        self.dropouts += int(users["dropout_ts"].notna().sum())
        self.fraud += int(users["is_fraud"].sum())
        self.sessions += len(sessions)
        self.purchased += int(sessions["purchased"].sum())

    def summary(self) -> dict[str, Any]:
        parts = self.parts
        counts: dict[str, int] = {}
        for p in parts:
            for k, v in p["event_counts"].items():
                counts[k] = counts.get(k, 0) + v
        return {
            # Blocks hold disjoint users and sessions, so their counts add up.
            "events": sum(p["events"] for p in parts),
            "users": sum(p["users"] for p in parts),
            "sessions": sum(p["sessions"] for p in parts),
            "items": len(self.items),
            "categories": len(self.categories),
            "first_event": min(pd.Timestamp(p["first_event"]) for p in parts).isoformat(),
            "last_event": max(pd.Timestamp(p["last_event"]) for p in parts).isoformat(),
            "event_counts": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
            "revenue": round(sum(p["revenue"] for p in parts), 2),
        }

    def label_rates(self) -> dict[str, float]:
        return {
            "dropout": round(self.dropouts / max(self.users, 1), 4),
            "fraud_users": round(self.fraud / max(self.users, 1), 4),
            "purchase_sessions": round(self.purchased / max(self.sessions, 1), 4),
        }
