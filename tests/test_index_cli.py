"""`shopsight index build|query|stats` on a tiny workspace, through the real CLI."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from shopsight.behavior.workspace import Workspace
from shopsight.cli import app
from test_index import SECRETS, make_events  # tests/ is on sys.path (no __init__.py)

runner = CliRunner()


def test_index_commands_build_query_and_report(workspace: Workspace, monkeypatch) -> None:
    monkeypatch.delenv("SHOPSIGHT_CHROMA_URL", raising=False)
    events = make_events(users=4, seed=21)
    workspace.save_events(events)
    ws = ["--workspace", str(workspace.root)]

    built = runner.invoke(app, ["index", "build", *ws, "--json"])
    assert built.exit_code == 0, built.output
    n = events["session_id"].nunique()
    assert json.loads(built.output)["embedded"] == n
    again = runner.invoke(app, ["index", "build", *ws, "--json"])
    assert json.loads(again.output)["embedded"] == 0

    user = events["user_id"].iloc[0]
    history = runner.invoke(app, ["index", "query", "--user", user, *ws, "--json"])
    assert history.exit_code == 0, history.output
    rows = json.loads(history.output)
    assert rows and all(r["user_id"] == user and r["score"] is None for r in rows)

    found = runner.invoke(app, ["index", "query", f"garden hose {SECRETS['email']}", "--no-purchase", "-k", "2", *ws, "--json"])
    assert found.exit_code == 0, found.output
    hits = json.loads(found.output)
    assert 0 < len(hits) <= 2 and all(h["metadata"]["purchased"] is False and h["score"] is not None for h in hits)

    stats = runner.invoke(app, ["index", "stats", *ws, "--json"])
    assert json.loads(stats.output)["sessions"] == n


def test_index_query_errors_are_one_line_with_a_fix(workspace: Workspace, monkeypatch) -> None:
    monkeypatch.delenv("SHOPSIGHT_CHROMA_URL", raising=False)
    ws = ["--workspace", str(workspace.root)]
    empty = runner.invoke(app, ["index", "query", "--user", "u001", *ws])
    assert empty.exit_code == 2
    assert "is empty" in empty.output and "shopsight index build" in empty.output
    assert not (workspace.index_dir / "chroma").exists()
    missing = runner.invoke(app, ["index", "build", *ws])
    assert missing.exit_code == 2 and "shopsight demo" in missing.output
