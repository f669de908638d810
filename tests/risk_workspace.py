"""A small demo shop with a trained risk model, built once per test process and copied (no tests here)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd

from shopsight.behavior.workspace import Workspace

_CACHE: dict[str, Path] = {}
USERS, DAYS, SEED = 800, 60, 11


def risk_shop():
    from shopsight.behavior.synthetic import generate_shop

    return generate_shop(users=USERS, days=DAYS, seed=SEED)


def trained_risk_workspace(dest: Path) -> Workspace:
    """A copy, at ``dest``, of a workspace holding the small shop's events, labels and a trained risk model."""
    if "root" not in _CACHE:
        from shopsight.behavior.models import train_model
        from shopsight.behavior.models.common import TrainSettings

        root = Path(tempfile.mkdtemp(prefix="risk-ws-cache-")) / "ws"
        ws = Workspace(root)
        shop = risk_shop()
        ws.save_events(shop.events)
        for name, table in shop.labels.items():
            ws.save_labels(name, table)
        tiny = TrainSettings(epochs=8, patience=3, max_len=16, emb_dim=8, hidden=16, batch_size=128, max_seconds=60.0)
        train_model(ws, "risk", settings=tiny, ae_epochs=30)
        _CACHE["root"] = root
    shutil.copytree(_CACHE["root"], dest)
    return Workspace(dest)


def card_testing_order(events: pd.DataFrame) -> str:
    """An order the card-testing-burst rule fires on."""
    from shopsight.behavior.models.rules import evaluate_rules

    orders = evaluate_rules(events)["card_testing_burst"].orders
    return str(orders[orders["fired"]].index[0])
