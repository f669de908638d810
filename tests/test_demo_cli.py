"""`shopsight demo` and build_demo_workspace: the files, the manifest, and the streamed summary."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from typer.testing import CliRunner

import shopsight.behavior.synthetic as synthetic
from shopsight.behavior.demo import build_demo_workspace, label_rates
from shopsight.behavior.features import summarize_events
from shopsight.behavior.workspace import Workspace
from shopsight.cli import app


def test_demo_command_writes_the_workspace_and_prints_a_summary(tmp_path):
    root = tmp_path / "shop"
    # Index and models are other steps with their own tests; this checks the data the demo writes.
    result = CliRunner().invoke(
        app, ["demo", "--users", "300", "--days", "60", "--no-index", "--no-train", "--workspace", str(root)]
    )
    assert result.exit_code == 0, result.output
    ws = Workspace(root)
    assert ws.events_path.exists() and ws.catalogue_path.exists()
    assert ws.label_names() == ["orders", "sessions", "users"]
    manifest = ws.read_manifest()
    assert manifest["dataset"] == "demo" and manifest["seed"] == 7 and manifest["users"] == 300
    events = ws.load_events()
    assert manifest["summary"] == summarize_events(events)
    assert events["user_id"].nunique() == 300
    assert f"{len(events):,}" in result.output
    assert "Ground-truth labels" in result.output and "of users drop out" in result.output


def test_demo_command_json_is_machine_readable(tmp_path):
    result = CliRunner().invoke(
        app, ["demo", "--users", "200", "--days", "30", "--json", "--no-index", "--no-train", "--workspace", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert {"summary", "label_rates"} <= set(out)
    assert out["summary"]["users"] == 200
    assert set(out["label_rates"]) == {"dropout", "fraud_users", "purchase_sessions"}


def test_streamed_workspace_equals_the_in_memory_shop(workspace: Workspace, monkeypatch):
    # Small blocks force several of them, as a million users would.
    monkeypatch.setattr(synthetic, "BLOCK_USERS", 120)
    result = build_demo_workspace(workspace, users=300, days=40, seed=9, progress=False)
    shop = synthetic.generate_shop(users=300, days=40, seed=9)
    events = workspace.load_events()
    # what is stored is the shop with the personal data it plants in texts masked, as an ingest stores it
    from shopsight.behavior.ingest import workspace_key
    from shopsight.behavior.privacy import mask_pii, protect_events

    protected, _ = protect_events(shop.events, key=workspace_key(workspace), max_text_chars=2000)
    pd.testing.assert_frame_equal(events, protected)
    texts = shop.events["text"].dropna()
    assert (texts.map(mask_pii) != texts).any()  # the shop did plant some
    stored = events["text"].dropna()
    assert (stored.map(mask_pii) == stored).all()  # none is stored
    assert result["summary"] == summarize_events(shop.events)
    assert result["label_rates"] == label_rates(shop.labels)
    for name in ("users", "sessions", "orders"):
        _assert_same_table(workspace.load_labels(name), shop.labels[name])
    assert events["user_id"].is_monotonic_increasing
    orders = workspace.load_labels("orders")["order_id"]
    assert orders.is_unique and np.array_equal(orders.to_numpy(), np.sort(orders.to_numpy()))


def _assert_same_table(stored: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Equal cell by cell; a missing value may come back from Parquet as NaN instead of None."""
    assert list(stored.columns) == list(expected.columns) and len(stored) == len(expected)
    for col in expected.columns:
        missing = expected[col].isna().to_numpy()
        assert np.array_equal(stored[col].isna().to_numpy(), missing), col
        assert stored[col][~missing].tolist() == expected[col][~missing].tolist(), col


def test_demo_replaces_an_earlier_demo(workspace: Workspace):
    build_demo_workspace(workspace, users=150, days=30, seed=1, progress=False)
    first = workspace.load_events()
    build_demo_workspace(workspace, users=120, days=30, seed=2, progress=False)
    assert workspace.load_events()["user_id"].nunique() == 120
    assert workspace.read_manifest()["seed"] == 2
    assert len(workspace.load_labels("users")) == 120 != first["user_id"].nunique()
